// mxpress/engine/relay_check.hpp — one blocking session with the relay
// before a run: connect, TLS (STARTTLS or implicit), EHLO, AUTH, QUIT.
//
// Wrong credentials, an untrusted certificate or a relay without TLS are
// run-level errors: the runner reports them and exits before the first
// message, instead of deferring every recipient until they expire.
//
// Blocking on purpose (poll with one deadline for the whole check): it runs
// once, before the shards start. It drives the same smtp::client and
// net::tls_stream as the engine, so what it accepts the engine accepts.
#pragma once

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include "mxpress/engine/config.hpp"
#include "mxpress/net/tls.hpp"
#include "mxpress/smtp/client.hpp"

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
    std::string tls_version;  // "TLSv1.3" when it got that far
    std::string address;      // the IP literal that answered: the run uses it too
};

namespace detail_relay {

struct fd_closer {
    int fd = -1;
    ~fd_closer() {
        if (fd >= 0) {
            ::close(fd);
        }
    }
};

}  // namespace detail_relay

inline relay_check_result check_relay(const relay_check_options& o) {
    using clock_t = std::chrono::steady_clock;
    const auto deadline = clock_t::now() + o.timeout;
    const auto ms_left = [&]() {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_t::now()).count();
        return static_cast<int>(std::max<long long>(0, left));
    };
    relay_check_result res;
    const auto fail = [&](std::string why) {
        res.ok = false;
        res.error = fmt::format("relay {}:{}: {}", o.host, o.port, why);
        return res;
    };

    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* ai = nullptr;
    const std::string port = std::to_string(o.port);
    if (const int rc = ::getaddrinfo(o.host.c_str(), port.c_str(), &hints, &ai); rc != 0) {
        return fail(fmt::format("cannot resolve: {}", ::gai_strerror(rc)));
    }
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> ai_guard(ai, &::freeaddrinfo);
    detail_relay::fd_closer sock;
    std::string connect_error = "no address";
    for (addrinfo* a = ai; a != nullptr && sock.fd < 0; a = a->ai_next) {
        const int fd = ::socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            continue;
        }
        if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            connect_error = std::strerror(errno);
            ::close(fd);
            continue;
        }
        pollfd p{fd, POLLOUT, 0};
        int err = 0;
        socklen_t len = sizeof err;
        if (::poll(&p, 1, ms_left()) != 1 || ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            connect_error = err != 0 ? std::strerror(err) : "timed out";
            ::close(fd);
            continue;
        }
        sock.fd = fd;
        char host[NI_MAXHOST];
        if (::getnameinfo(a->ai_addr, a->ai_addrlen, host, sizeof host, nullptr, 0, NI_NUMERICHOST) == 0) {
            res.address = host;
        }
    }
    if (sock.fd < 0) {
        return fail("cannot connect: " + connect_error);
    }

    net::tls_context ctx = net::tls_context::client(o.ca_file);
    std::unique_ptr<net::tls_stream> tls;
    bool handshaking = false;
    smtp::client client(o.helo_name);
    if (!o.user.empty()) {
        client.set_credentials(o.user, o.password);
    }
    const auto start_tls = [&]() {
        tls = std::make_unique<net::tls_stream>(ctx.get(), net::tls_stream::role::client);
        tls->set_server_name(o.host);
        if (o.tls == tls_policy::verify) {
            tls->verify_peer(o.host);
        }
        handshaking = true;
        return tls->handshake() != net::tls_stream::result::failed;
    };
    if (o.implicit_tls) {
        client.implicit_tls();
        if (!start_tls()) {
            return fail("TLS: " + tls->error());
        }
    }

    std::string wire;
    std::string plain;
    char buf[16 * 1024];
    bool quitting = false;
    for (;;) {
        // Everything pending goes out first (blocking, within the deadline).
        if (tls) {
            if (!handshaking && client.has_output()) {
                client.take_output(plain);
                tls->write(plain);
            }
            tls->take_output(wire);
        } else {
            client.take_output(wire);
        }
        for (std::size_t off = 0; off < wire.size();) {
            const ssize_t n = ::send(sock.fd, wire.data() + off, wire.size() - off, MSG_NOSIGNAL);
            if (n > 0) {
                off += static_cast<std::size_t>(n);
                continue;
            }
            pollfd p{sock.fd, POLLOUT, 0};
            if ((n < 0 && errno != EAGAIN) || ::poll(&p, 1, ms_left()) != 1) {
                return fail(n < 0 && errno != EAGAIN ? std::string("send: ") + std::strerror(errno) : "timed out");
            }
        }
        pollfd p{sock.fd, POLLIN, 0};
        if (::poll(&p, 1, ms_left()) != 1) {
            return fail(fmt::format("timed out after {} ms", o.timeout.count()));
        }
        const ssize_t n = ::recv(sock.fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EAGAIN) {
            continue;
        }
        if (n <= 0) {
            if (quitting) {
                res.ok = true;
                return res;
            }
            return fail(handshaking ? "connection closed during the TLS handshake" : "connection closed");
        }
        std::string_view bytes(buf, static_cast<std::size_t>(n));
        if (tls) {
            tls->feed(bytes);
            if (handshaking) {
                const auto r = tls->handshake();
                if (r == net::tls_stream::result::failed) {
                    return fail("TLS: " + tls->error());
                }
                if (r == net::tls_stream::result::want_more) {
                    continue;
                }
                handshaking = false;
                res.tls_version = tls->version();
                if (!o.implicit_tls) {
                    client.tls_established();
                }
            }
            plain.clear();
            if (tls->read(plain) == net::tls_stream::result::failed) {
                return fail("TLS: " + tls->error());
            }
            client.receive(plain);
        } else {
            client.receive(bytes);
        }
        while (auto e = client.next_event()) {
            switch (e->kind) {
                case smtp::event_kind::ready:
                    if (!client.tls_active()) {
                        if (!client.caps().starttls) {
                            return fail("does not offer STARTTLS; credentials and mail need TLS");
                        }
                        client.starttls();
                        break;
                    }
                    if (!o.user.empty() && !client.authenticated()) {
                        return fail("does not offer AUTH after TLS; the credentials cannot be used");
                    }
                    quitting = true;
                    client.quit();
                    break;
                case smtp::event_kind::tls_start:
                    if (!start_tls()) {
                        return fail("TLS: " + tls->error());
                    }
                    break;
                case smtp::event_kind::tls_refused: return fail("refused STARTTLS: " + e->last_reply.one_line());
                case smtp::event_kind::closed:
                    if (quitting) {
                        res.ok = true;
                        return res;
                    }
                    return fail(e->last_reply.code == 535 || e->last_reply.code == 534 || e->last_reply.code == 530
                                    ? "AUTH failed: " + e->last_reply.one_line()
                                    : "session failed: " + e->last_reply.one_line());
                case smtp::event_kind::transaction_done: break;
            }
        }
    }
}

}  // namespace mxpress::engine
