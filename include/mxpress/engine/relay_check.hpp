// mxpress/engine/relay_check.hpp — one blocking session with the relay
// before a run: connect, TLS as the policy says (STARTTLS or implicit),
// EHLO, AUTH, QUIT.
//
// Wrong credentials, an untrusted certificate or a relay without TLS under
// a policy that needs it are run-level errors: the runner reports them and
// exits before the first message, instead of deferring every recipient
// until they expire. What the engine would accept, the check accepts: TLS
// is decided by the same decide_tls() (engine/tls_decision.hpp), so
// `disabled` talks plaintext and `opportunistic` goes on in plaintext when
// the relay offers no STARTTLS, refuses it, or fails the handshake (the
// check then runs a second, plaintext session, as the engine would).
//
// Blocking on purpose (poll with one deadline for the whole check): it runs
// once, before the shards start. It drives the same smtp::client and
// net::tls_channel as the engine.
#pragma once

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "mxpress/engine/config.hpp"
#include "mxpress/engine/tls_decision.hpp"
#include "mxpress/net/tls_channel.hpp"
#include "mxpress/smtp/client.hpp"
#include "mxpress/io/unique_fd.hpp"

namespace mxpress::engine {

struct relay_check_options {
    std::string host;
    std::uint16_t port = 587;
    bool implicit_tls = false;
    tls_policy tls = tls_policy::verify;
    std::string ca_file;
    std::string helo_name;
    std::string user;  // empty: no AUTH
    std::string password;
    std::chrono::milliseconds timeout{std::chrono::seconds(30)};
};

struct relay_check_result {
    bool ok = false;
    std::string error;        // what failed, for the user
    std::string tls_version;  // "TLSv1.3" when it got that far; empty in plaintext
    std::string address;      // the IP literal that answered: the run uses it too
};

namespace detail_relay {

using clock_t = std::chrono::steady_clock;

inline int ms_left(clock_t::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_t::now()).count();
    return static_cast<int>(std::max<long long>(0, left));
}

// Connects to the first address of host:port that answers. Returns the
// error ("" on success); `address` is the IP literal that answered.
inline std::string connect_to(const relay_check_options& o, clock_t::time_point deadline, io::unique_fd& sock,
                              std::string& address) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* ai = nullptr;
    const std::string port = std::to_string(o.port);
    if (const int rc = ::getaddrinfo(o.host.c_str(), port.c_str(), &hints, &ai); rc != 0) {
        return fmt::format("cannot resolve: {}", ::gai_strerror(rc));
    }
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> ai_guard(ai, &::freeaddrinfo);
    std::string connect_error = "no address";
    for (addrinfo* a = ai; a != nullptr && !sock; a = a->ai_next) {
        io::unique_fd candidate(::socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        const int fd = candidate.get();
        if (!candidate) {
            continue;
        }
        if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            connect_error = std::strerror(errno);
            continue;
        }
        pollfd p{fd, POLLOUT, 0};
        int err = 0;
        socklen_t len = sizeof err;
        if (::poll(&p, 1, ms_left(deadline)) != 1 || ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
            err != 0) {
            connect_error = err != 0 ? std::strerror(err) : "timed out";
            continue;
        }
        sock = std::move(candidate);
        char host[NI_MAXHOST];
        if (::getnameinfo(a->ai_addr, a->ai_addrlen, host, sizeof host, nullptr, 0, NI_NUMERICHOST) == 0) {
            address = host;
        }
    }
    return sock ? std::string() : "cannot connect: " + connect_error;
}

// How one session ended.
enum class session_end : std::uint8_t { ok, failed, retry_plaintext };

// One session on a connected socket. `plaintext_window`: an opportunistic
// handshake already failed, so this session stays in plaintext.
inline session_end run_session(const relay_check_options& o, clock_t::time_point deadline, int fd,
                               bool plaintext_window, net::tls_context& ctx, relay_check_result& res,
                               std::string& error) {
    tls_situation situation;
    situation.policy = o.tls;
    situation.implicit_tls = o.implicit_tls;
    situation.credentials = !o.user.empty();
    situation.plaintext_window = plaintext_window;
    situation.peer = "the relay";
    const auto decide = [&](tls_step step, std::string_view detail = {}) {
        situation.step = step;
        situation.detail = detail;
        return decide_tls(situation);
    };
    // A TLS failure: the next session goes in plaintext, or the check fails.
    const auto tls_failed = [&](const std::string& why) {
        const tls_decision d = decide(tls_step::handshake_failed, why);
        if (d.action == tls_action::reconnect_plaintext) {
            return session_end::retry_plaintext;
        }
        error = d.reason;
        return session_end::failed;
    };

    std::unique_ptr<net::tls_channel> tls;
    smtp::client client(o.helo_name);
    if (!o.user.empty()) {
        client.set_credentials(o.user, o.password);
    }
    const auto start_tls = [&]() {
        tls = std::make_unique<net::tls_channel>(ctx.get(), net::tls_stream::role::client);
        tls->stream().set_server_name(o.host);
        if (o.tls == tls_policy::verify) {
            tls->stream().verify_peer(o.host);
        }
        return tls->start().now != net::tls_channel::state::failed;
    };
    if (const tls_decision d = decide(tls_step::connect); d.action == tls_action::fail) {
        error = d.reason;
        return session_end::failed;
    } else if (d.action == tls_action::start_tls) {
        client.implicit_tls();
        if (!start_tls()) {
            return tls_failed(tls->error());
        }
    }

    std::string wire;
    std::string plain;
    char buf[16 * 1024];
    bool quitting = false;
    for (;;) {
        // Everything pending goes out first (blocking, within the deadline).
        if (tls) {
            if (client.has_output()) {
                client.take_output(plain);
                if (!tls->send(plain)) {
                    return tls_failed(tls->error());
                }
            }
            tls->take_output(wire);
        } else {
            client.take_output(wire);
        }
        for (std::size_t off = 0; off < wire.size();) {
            const ssize_t n = ::send(fd, wire.data() + off, wire.size() - off, MSG_NOSIGNAL);
            if (n > 0) {
                off += static_cast<std::size_t>(n);
                continue;
            }
            pollfd p{fd, POLLOUT, 0};
            if ((n < 0 && errno != EAGAIN) || ::poll(&p, 1, ms_left(deadline)) != 1) {
                error = n < 0 && errno != EAGAIN ? std::string("send: ") + std::strerror(errno) : "timed out";
                return session_end::failed;
            }
        }
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, ms_left(deadline)) != 1) {
            if (tls && tls->handshaking()) {
                return tls_failed(fmt::format("handshake timed out after {} ms", o.timeout.count()));
            }
            error = fmt::format("timed out after {} ms", o.timeout.count());
            return session_end::failed;
        }
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EAGAIN) {
            continue;
        }
        if (n <= 0) {
            if (quitting) {
                return session_end::ok;
            }
            if ((tls && tls->handshaking()) || client.tls_handshake_pending()) {
                return tls_failed("connection closed during the TLS handshake");
            }
            error = "connection closed";
            return session_end::failed;
        }
        std::string_view bytes(buf, static_cast<std::size_t>(n));
        if (tls) {
            plain.clear();
            const net::tls_channel::progress pr = tls->receive(bytes, plain);
            if (pr.now == net::tls_channel::state::failed) {
                return tls_failed(tls->error());
            }
            if (pr.established_now) {
                res.tls_version = tls->stream().version();
                if (!o.implicit_tls) {
                    client.tls_established();
                }
            }
            client.receive(plain);
        } else {
            client.receive(bytes);
        }
        while (auto e = client.next_event()) {
            switch (e->kind) {
                case smtp::event_kind::ready: {
                    if (!client.tls_active()) {
                        situation.starttls_offered = client.caps().starttls;
                        const tls_decision d = decide(tls_step::ehlo);
                        if (d.action == tls_action::start_tls) {
                            client.starttls();
                            break;
                        }
                        if (d.action != tls_action::proceed_plaintext) {
                            error = d.reason;
                            return session_end::failed;
                        }
                    }
                    if (!o.user.empty() && !client.authenticated()) {
                        error = "does not offer AUTH after TLS; the credentials cannot be used";
                        return session_end::failed;
                    }
                    quitting = true;
                    client.quit();
                    break;
                }
                case smtp::event_kind::tls_start:
                    if (!start_tls()) {
                        return tls_failed(tls->error());
                    }
                    break;
                case smtp::event_kind::tls_refused: {
                    const tls_decision d = decide(tls_step::starttls_refused, e->last_reply.one_line());
                    if (d.action != tls_action::proceed_plaintext) {
                        error = d.reason;
                        return session_end::failed;
                    }
                    quitting = true;
                    client.quit();
                    break;
                }
                case smtp::event_kind::closed:
                    if (quitting) {
                        return session_end::ok;
                    }
                    if (client.tls_handshake_pending()) {
                        return tls_failed(e->last_reply.one_line());
                    }
                    error = e->last_reply.code == 535 || e->last_reply.code == 534 || e->last_reply.code == 530
                                ? "AUTH failed: " + e->last_reply.one_line()
                                : "session failed: " + e->last_reply.one_line();
                    return session_end::failed;
                case smtp::event_kind::transaction_done: break;
            }
        }
    }
}

}  // namespace detail_relay

inline relay_check_result check_relay(const relay_check_options& o) {
    const auto deadline = detail_relay::clock_t::now() + o.timeout;
    relay_check_result res;
    net::tls_context ctx = net::tls_context::client(o.ca_file);
    // A second session only when an opportunistic handshake failed: the
    // engine would then deliver in plaintext on a new connection.
    bool plaintext_window = false;
    for (;;) {
        io::unique_fd sock;
        std::string error = detail_relay::connect_to(o, deadline, sock, res.address);
        detail_relay::session_end end = detail_relay::session_end::failed;
        if (error.empty()) {
            res.tls_version.clear();
            end = detail_relay::run_session(o, deadline, sock.get(), plaintext_window, ctx, res, error);
        }
        if (end == detail_relay::session_end::retry_plaintext && !plaintext_window) {
            plaintext_window = true;
            continue;
        }
        res.ok = end == detail_relay::session_end::ok;
        if (!res.ok) {
            res.error = fmt::format("relay {}:{}: {}", o.host, o.port, error);
        }
        return res;
    }
}

}  // namespace mxpress::engine
