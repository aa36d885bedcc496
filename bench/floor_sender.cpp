// bench/floor_sender.cpp — mxpress_floor: the cheapest honest SMTP sender we
// could write, the floor scripts/bench measures mxpress against (issue 13).
//
// It sends one pre-rendered message (a file: already dot-stuffed, CRLF line
// ends, without the final ".") --messages times over --connections
// connections, spread round-robin over the --connect addresses, from one
// io_uring per --threads thread:
//   - greeting, EHLO (with --tls: STARTTLS, the handshake, EHLO again), then
//     per message MAIL FROM, RCPT TO and DATA in one write (RFC 2920
//     pipelining), the body only after the 354, and the next transaction's
//     three commands on the same write as the body's final dot: one round
//     trip per message, as mxpress does. QUIT follows the last dot.
//   - Every reply is checked: 220 greeting, 250 EHLO, 220 STARTTLS, 250 MAIL,
//     250 RCPT, 354 DATA, 250 for the final dot, 221 QUIT. Anything else, a
//     connection the server closes early or a TLS failure ends the run: exit
//     1, the reply on stderr. A floor that counts bytes, not replies, would
//     not be honest.
//   - Message k (0-based over the run) goes to the --to pattern with "{}"
//     replaced by k, so a receiver can check that each arrived once.
//   - Plaintext bodies go out from the file's one buffer (sendmsg: body plus
//     a per-connection tail of ".\r\n" and the next commands); replies come
//     in through a multishot recv from a provided-buffer ring and are parsed
//     in place; every loop turn submits all queued work in one system call.
//     Nothing is allocated per message (with --tls, OpenSSL's record layer
//     aside: the body is copied once into the plaintext to encrypt, so that
//     body and tail go in one record).
//   - With --tls, a thread's first connection to an address does the full
//     handshake; the rest open after it and resume its session, as mxpress's
//     pools do. Nothing is verified (the sink's certificate is a test one).
//
// Deliberately omitted, because they are mxpress's job and not the wire's:
// reading a CSV, addresses, rendering, dot-stuffing, DKIM, DNS, the journal,
// retries, timeouts per command, reconnects, scheduling and shaping. Each is
// what "mxpress CPU ÷ floor CPU" prices.
//
//   mxpress_floor --connect 127.0.0.2:2525 [--connect ADDR:PORT ...]
//       --messages 100000 --connections 8 --message msg.eml
//       --from a@x.test --to 'r{}@y.test' [--tls] [--threads 1]
//       [--timeout SECONDS]
// Prints one line: {"messages":N,"seconds":S,"errors":0,"connections":C,...}
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "mxpress/io/buffer_ring.hpp"
#include "mxpress/io/ring.hpp"
#include "mxpress/net/tls.hpp"
#include "mxpress/net/tls_channel.hpp"

namespace {

using mxpress::io::tagged_completion;
using mxpress::net::tls_channel;

struct job {  // read-only once the threads start
    std::vector<sockaddr_in> addresses;
    std::string body;         // the message, dot-stuffed, CRLF, without the final "."
    std::string mail_prefix;  // "MAIL FROM:<from>\r\nRCPT TO:<" + the --to pattern before "{}"
    std::string rcpt_suffix;  // the pattern after "{}" + ">\r\nDATA\r\n"
    bool tls = false;
    std::chrono::steady_clock::time_point deadline;
};

// The reply each connection waits for, in order.
enum class step : std::uint8_t { greeting, ehlo, starttls, mail, rcpt, data, dot, quit };
constexpr std::array<int, 8> step_code = {220, 250, 220, 250, 250, 354, 250, 221};
constexpr std::array<const char*, 8> step_name = {"greeting", "EHLO", "STARTTLS",  "MAIL FROM",
                                                  "RCPT TO",  "DATA", "final dot", "QUIT"};

class worker;

struct connection {
    worker* w = nullptr;
    std::size_t host = 0;
    int fd = -1;
    sockaddr_in addr{};
    tagged_completion<connection> connect_op, recv_op, send_op;

    std::array<step, 8> expect{};  // replies awaited (a ring: at most 5 at once)
    unsigned head = 0, awaited = 0;
    std::array<char, 1024> line{};  // the reply line read so far
    std::size_t line_len = 0;

    // Plaintext staging, two buffers so one can fill while the other is on
    // the wire: the body (by reference) first, then the commands after it.
    struct stage {
        bool body = false;
        std::array<char, 1024> text{};
        std::size_t len = 0;
    };
    std::array<stage, 2> stages;
    unsigned fill = 0;
    bool sending = false;    // a send is in flight (its buffers are the kernel's)
    bool wire_send = false;  // ... and it is TLS ciphertext (else plaintext stages)
    std::array<iovec, 2> iov{};
    msghdr msg{};

    std::unique_ptr<tls_channel> tls;  // after the 220 to STARTTLS
    std::string plain_in, plain_out, wire;
    std::size_t wire_sent = 0;
    bool first_of_host = false, quitting = false, done = false;
};

class worker {
public:
    worker(const job& j, std::uint64_t first, std::uint64_t count, std::size_t connections)
        : _job(j), _ring(256), _buffers(_ring, 0, 128, 4096), _next(first), _end(first + count) {
        if (j.tls) {
            _ctx.emplace(mxpress::net::tls_context::client());
            _sessions.resize(j.addresses.size());
        }
        _conns.reserve(connections);
        for (std::size_t k = 0; k < connections; ++k) {
            auto c = std::make_unique<connection>();
            c->w = this;
            c->host = k % j.addresses.size();
            c->addr = j.addresses[c->host];
            c->first_of_host = k < j.addresses.size();
            c->connect_op.fn = &on_connect;
            c->recv_op.fn = &on_recv;
            c->send_op.fn = &on_send;
            c->connect_op.owner = c->recv_op.owner = c->send_op.owner = c.get();
            if (j.tls) {
                c->plain_out.reserve(j.body.size() + 1024);
            }
            _conns.push_back(std::move(c));
        }
    }

    // Runs until every connection said QUIT; throws on any failure.
    void run() {
        for (auto& c : _conns) {
            if (c->first_of_host) {
                open(*c);
            }
        }
        io_uring* r = _ring.raw();
        while (_live > 0) {
            __kernel_timespec ts = mxpress::io::timespec_ms(1000);
            io_uring_cqe* cqe = nullptr;
            const int rc = io_uring_submit_and_wait_timeout(r, &cqe, 1, &ts, nullptr);
            if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
                throw std::runtime_error(fmt::format("io_uring_submit_and_wait: {}", std::strerror(-rc)));
            }
            while (io_uring_peek_cqe(r, &cqe) == 0) {
                auto* op = static_cast<mxpress::io::completion*>(io_uring_cqe_get_data(cqe));
                const int res = cqe->res;
                const unsigned flags = cqe->flags;
                io_uring_cqe_seen(r, cqe);
                op->fn(op, res, flags);
            }
            if (std::chrono::steady_clock::now() > _job.deadline) {
                throw std::runtime_error(fmt::format("timed out with {} connections open", _live));
            }
        }
    }

    std::uint64_t delivered() const noexcept { return _delivered; }
    std::uint64_t handshakes() const noexcept { return _handshakes; }
    std::uint64_t resumed() const noexcept { return _resumed; }

private:
    static connection& owner(mxpress::io::completion* op) {
        return *static_cast<tagged_completion<connection>*>(op)->owner;
    }

    [[noreturn]] static void fail(const connection& c, std::string_view what) {
        char a[INET_ADDRSTRLEN] = "?";
        ::inet_ntop(AF_INET, &c.addr.sin_addr, a, sizeof a);
        throw std::runtime_error(fmt::format("{}:{}: {}", a, ntohs(c.addr.sin_port), what));
    }

    void open(connection& c) {
        c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c.fd < 0) {
            fail(c, fmt::format("socket: {}", std::strerror(errno)));
        }
        const int one = 1;
        ::setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        io_uring_prep_connect(_ring.sqe(&c.connect_op), c.fd, reinterpret_cast<const sockaddr*>(&c.addr),
                              sizeof c.addr);
        c.expect[0] = step::greeting;
        c.awaited = 1;
        ++_live;
    }

    void arm_recv(connection& c) {
        io_uring_sqe* s = _ring.sqe(&c.recv_op);
        io_uring_prep_recv_multishot(s, c.fd, nullptr, 0, 0);
        s->flags |= IOSQE_BUFFER_SELECT;
        s->buf_group = _buffers.group();
    }

    static void on_connect(mxpress::io::completion* op, int res, unsigned) {
        connection& c = owner(op);
        if (res < 0) {
            fail(c, fmt::format("connect: {}", std::strerror(-res)));
        }
        c.w->arm_recv(c);
    }

    static void on_recv(mxpress::io::completion* op, int res, unsigned flags) {
        connection& c = owner(op);
        worker& w = *c.w;
        if (res == -ENOBUFS) {  // the buffer ring ran dry for a moment
            w.arm_recv(c);
            return;
        }
        if (res < 0) {
            fail(c, fmt::format("recv: {}", std::strerror(-res)));
        }
        if (res == 0) {
            if (!c.quitting || c.awaited != 0) {
                fail(c, fmt::format("the server closed the connection while {} replies were awaited", c.awaited));
            }
            ::close(c.fd);
            c.done = true;
            --w._live;
            return;
        }
        const std::string_view bytes = w._buffers.data(flags, res);
        if (c.tls) {
            c.plain_in.clear();
            const tls_channel::progress p = c.tls->receive(bytes, c.plain_in);
            w._buffers.recycle(flags);
            if (p.now == tls_channel::state::failed || p.now == tls_channel::state::closed) {
                fail(c, "TLS: " + (c.tls->failed() ? c.tls->error() : std::string("closed by the server")));
            }
            if (p.established_now) {
                ++w._handshakes;
                w._resumed += c.tls->stream().resumed() ? 1 : 0;
                w.stage_text(c, "EHLO floor.test\r\n");
                w.push(c, step::ehlo);
            }
            w.parse(c, c.plain_in);
        } else {
            w.parse(c, bytes);
            w._buffers.recycle(flags);
        }
        w.flush(c);
        if ((flags & IORING_CQE_F_MORE) == 0) {
            w.arm_recv(c);
        }
    }

    static void on_send(mxpress::io::completion* op, int res, unsigned) {
        connection& c = owner(op);
        worker& w = *c.w;
        if (res < 0) {
            fail(c, fmt::format("send: {}", std::strerror(-res)));
        }
        auto n = static_cast<std::size_t>(res);
        if (c.wire_send) {
            c.wire_sent += n;
            if (c.wire_sent < c.wire.size()) {
                w.send_wire(c);
                return;
            }
        } else {
            // A short send: step over what went and send the rest.
            while (c.msg.msg_iovlen > 0 && n >= c.msg.msg_iov->iov_len) {
                n -= c.msg.msg_iov->iov_len;
                ++c.msg.msg_iov;
                --c.msg.msg_iovlen;
            }
            if (c.msg.msg_iovlen > 0) {
                c.msg.msg_iov->iov_base = static_cast<char*>(c.msg.msg_iov->iov_base) + n;
                c.msg.msg_iov->iov_len -= n;
                io_uring_prep_sendmsg(w._ring.sqe(&c.send_op), c.fd, &c.msg, MSG_NOSIGNAL);
                return;
            }
            connection::stage& sent = c.stages[c.fill ^ 1];
            sent.body = false;
            sent.len = 0;
        }
        c.sending = false;
        w.flush(c);
    }

    void push(connection& c, step s) {
        c.expect[(c.head + c.awaited) % c.expect.size()] = s;
        ++c.awaited;
    }

    // Appends commands to what goes out next; with the body, it goes first.
    void stage_text(connection& c, std::string_view text) {
        if (c.tls && c.tls->open()) {
            c.plain_out.append(text);
            return;
        }
        connection::stage& s = c.stages[c.fill];
        std::memcpy(s.text.data() + s.len, text.data(), text.size());
        s.len += text.size();
    }

    void stage_body(connection& c) {
        if (c.tls) {
            c.plain_out.append(_job.body);
            return;
        }
        connection::stage& s = c.stages[c.fill];
        if (s.body || s.len != 0) {
            fail(c, "a body after commands in one write (a reply out of order?)");
        }
        s.body = true;
    }

    // The next message's MAIL, RCPT and DATA, or QUIT when none is left.
    void stage_transaction(connection& c) {
        if (_next == _end) {
            stage_text(c, "QUIT\r\n");
            push(c, step::quit);
            c.quitting = true;
            return;
        }
        std::array<char, 1024> cmd;  // not zeroed: 1 KB of memset per message showed in perf
        char* p = std::copy(_job.mail_prefix.begin(), _job.mail_prefix.end(), cmd.data());
        p = std::to_chars(p, p + 24, _next++).ptr;
        p = std::copy(_job.rcpt_suffix.begin(), _job.rcpt_suffix.end(), p);
        stage_text(c, std::string_view(cmd.data(), static_cast<std::size_t>(p - cmd.data())));
        push(c, step::mail);
        push(c, step::rcpt);
        push(c, step::data);
    }

    // Puts what is staged on the wire unless a send is in flight (its
    // completion calls this again).
    void flush(connection& c) {
        if (c.tls) {
            if (!c.plain_out.empty()) {
                if (!c.tls->send(c.plain_out)) {
                    fail(c, "TLS: " + c.tls->error());
                }
                c.plain_out.clear();
            }
            if (!c.sending && c.tls->has_output()) {
                c.tls->take_output(c.wire);
                c.wire_sent = 0;
                send_wire(c);
            }
            return;
        }
        connection::stage& s = c.stages[c.fill];
        if (c.sending || (!s.body && s.len == 0)) {
            return;
        }
        c.iov[0] = {const_cast<char*>(_job.body.data()), _job.body.size()};
        c.iov[1] = {s.text.data(), s.len};
        c.msg.msg_iov = s.body ? &c.iov[0] : &c.iov[1];
        c.msg.msg_iovlen = s.body ? 2 : 1;
        io_uring_prep_sendmsg(_ring.sqe(&c.send_op), c.fd, &c.msg, MSG_NOSIGNAL);
        c.sending = true;
        c.wire_send = false;
        c.fill ^= 1;
    }

    void send_wire(connection& c) {
        io_uring_prep_send(_ring.sqe(&c.send_op), c.fd, c.wire.data() + c.wire_sent, c.wire.size() - c.wire_sent,
                           MSG_NOSIGNAL);
        c.sending = true;
        c.wire_send = true;
    }

    // Splits replies into lines; each final line answers the oldest step.
    void parse(connection& c, std::string_view bytes) {
        while (!bytes.empty()) {
            const std::size_t nl = bytes.find('\n');
            const std::size_t take = nl == std::string_view::npos ? bytes.size() : nl + 1;
            if (c.line_len + take > c.line.size()) {
                fail(c, "a reply line longer than 1024 bytes");
            }
            std::memcpy(c.line.data() + c.line_len, bytes.data(), take);
            c.line_len += take;
            bytes.remove_prefix(take);
            if (nl == std::string_view::npos) {
                return;
            }
            const std::string_view l(c.line.data(), c.line_len);
            c.line_len = 0;
            int code = 0;
            if (l.size() < 5 || std::from_chars(l.data(), l.data() + 3, code).ptr != l.data() + 3) {
                fail(c, fmt::format("not a reply: {:?}", l));
            }
            if (l[3] == '-') {
                continue;  // a continuation line: the last line has the code that counts
            }
            answer(c, code, l);
        }
    }

    void answer(connection& c, int code, std::string_view l) {
        if (c.awaited == 0) {
            fail(c, fmt::format("a reply nothing asked for: {:?}", l));
        }
        const step s = c.expect[c.head];
        c.head = (c.head + 1) % c.expect.size();
        --c.awaited;
        if (code != step_code[static_cast<std::size_t>(s)]) {
            fail(c, fmt::format("{} answered {:?}", step_name[static_cast<std::size_t>(s)], l));
        }
        switch (s) {
            case step::greeting:
                stage_text(c, "EHLO floor.test\r\n");
                push(c, step::ehlo);
                break;
            case step::ehlo:
                if (_job.tls && !c.tls) {
                    stage_text(c, "STARTTLS\r\n");
                    push(c, step::starttls);
                    break;
                }
                if (c.first_of_host) {  // its session (TLS) is known now: open the others
                    if (c.tls) {
                        _sessions[c.host] = c.tls->stream().take_new_session();
                    }
                    for (auto& o : _conns) {
                        if (o->host == c.host && !o->first_of_host) {
                            open(*o);
                        }
                    }
                }
                stage_transaction(c);
                break;
            case step::starttls:
                if (c.awaited != 0) {
                    fail(c, "replies awaited after the 220 to STARTTLS");
                }
                c.tls = std::make_unique<tls_channel>(_ctx->get(), mxpress::net::tls_stream::role::client);
                c.tls->stream().set_session(_sessions[c.host].get());
                if (c.tls->start().now == tls_channel::state::failed) {
                    fail(c, "TLS: " + c.tls->error());
                }
                break;
            case step::mail:
            case step::rcpt: break;
            case step::data:
                stage_body(c);
                stage_text(c, ".\r\n");
                push(c, step::dot);
                stage_transaction(c);
                break;
            case step::dot: ++_delivered; break;
            case step::quit: break;
        }
    }

    const job& _job;
    mxpress::io::ring _ring;
    mxpress::io::buffer_ring _buffers;
    std::optional<mxpress::net::tls_context> _ctx;
    std::vector<mxpress::net::ssl_session_ptr> _sessions;  // per address: the first connection's
    std::vector<std::unique_ptr<connection>> _conns;
    std::uint64_t _next, _end;  // the messages this thread sends: [_next, _end)
    std::uint64_t _delivered = 0, _handshakes = 0, _resumed = 0;
    std::size_t _live = 0;
};

sockaddr_in parse_address(const std::string& s) {
    const std::size_t colon = s.rfind(':');
    sockaddr_in a{};
    a.sin_family = AF_INET;
    int port = 0;
    if (colon == std::string::npos || ::inet_pton(AF_INET, s.substr(0, colon).c_str(), &a.sin_addr) != 1 ||
        std::from_chars(s.data() + colon + 1, s.data() + s.size(), port).ec != std::errc{} || port <= 0 ||
        port > 65535) {
        throw std::invalid_argument("--connect " + s + ": not IPV4:PORT");
    }
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    return a;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app("mxpress_floor: the cheapest pipelined SMTP sender, a reference for scripts/bench");
    std::vector<std::string> connect;
    std::uint64_t messages = 0;
    std::size_t connections = 4;
    std::size_t threads = 1;
    std::string message, from, to;
    bool tls = false;
    double timeout_s = 600;
    app.add_option("--connect", connect, "IPV4:PORT of the server (repeatable; connections go round-robin)")
        ->required();
    app.add_option("--messages", messages, "messages to send")->required();
    app.add_option("--connections", connections, "connections in all (at least one per thread)");
    app.add_option("--threads", threads, "threads, one io_uring each")->check(CLI::Range(1, 256));
    app.add_option("--message", message, "the message: dot-stuffed, CRLF, without the final '.'")->required();
    app.add_option("--from", from, "envelope sender")->required();
    app.add_option("--to", to, "envelope recipient; '{}' becomes the message's number (0-based)")->required();
    app.add_flag("--tls", tls, "STARTTLS on every connection");
    app.add_option("--timeout", timeout_s, "give up (exit 1) after this many seconds");
    CLI11_PARSE(app, argc, argv);

    job j;
    try {
        for (const auto& a : connect) {
            j.addresses.push_back(parse_address(a));
        }
        std::ifstream in(message, std::ios::binary);
        std::ostringstream body;
        body << in.rdbuf();
        if (!in) {
            throw std::invalid_argument("--message " + message + ": cannot read it");
        }
        j.body = body.str();
        if (!j.body.ends_with("\r\n") || j.body.starts_with(".\r\n") || j.body.find("\r\n.\r\n") != std::string::npos) {
            throw std::invalid_argument("--message " + message +
                                        ": must end with CRLF and hold no line of a lone '.' (dot-stuff it)");
        }
        const std::size_t braces = to.find("{}");
        if (braces == std::string::npos || from.size() > 400 || to.size() > 400) {
            throw std::invalid_argument("--to must hold '{}'; --from and --to at most 400 bytes");
        }
        j.mail_prefix = "MAIL FROM:<" + from + ">\r\nRCPT TO:<" + to.substr(0, braces);
        j.rcpt_suffix = to.substr(braces + 2) + ">\r\nDATA\r\n";
        j.tls = tls;
        connections = std::max(connections, threads);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mxpress_floor: %s\n", e.what());
        return 2;
    }

    const auto start = std::chrono::steady_clock::now();
    j.deadline = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                             std::chrono::duration<double>(timeout_s));
    // Each worker is built on its own thread: the ring is SINGLE_ISSUER.
    struct outcome {
        std::uint64_t delivered = 0, handshakes = 0, resumed = 0;
        std::string error;
    };
    std::vector<outcome> outcomes(threads);
    std::vector<std::thread> running;
    for (std::size_t t = 0; t < threads; ++t) {
        running.emplace_back([&, t] {
            const std::uint64_t first = messages * t / threads, last = messages * (t + 1) / threads;
            const std::size_t conns = connections * (t + 1) / threads - connections * t / threads;
            try {
                worker w(j, first, last - first, conns);
                try {
                    w.run();
                } catch (const std::exception& e) {
                    outcomes[t].error = e.what();
                }
                outcomes[t].delivered = w.delivered();
                outcomes[t].handshakes = w.handshakes();
                outcomes[t].resumed = w.resumed();
            } catch (const std::exception& e) {
                outcomes[t].error = e.what();
            }
        });
    }
    for (auto& t : running) {
        t.join();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::uint64_t delivered = 0, handshakes = 0, resumed = 0, failed = 0;
    for (std::size_t t = 0; t < threads; ++t) {
        delivered += outcomes[t].delivered;
        handshakes += outcomes[t].handshakes;
        resumed += outcomes[t].resumed;
        if (!outcomes[t].error.empty()) {
            ++failed;
            std::fprintf(stderr, "mxpress_floor: thread %zu: %s\n", t, outcomes[t].error.c_str());
        }
    }
    if (failed == 0 && delivered != messages) {
        ++failed;
        std::fprintf(stderr, "mxpress_floor: %llu of %llu messages got their 250\n",
                     static_cast<unsigned long long>(delivered), static_cast<unsigned long long>(messages));
    }
    std::printf(
        "{\"messages\":%llu,\"seconds\":%.6f,\"errors\":%llu,\"connections\":%zu,\"threads\":%zu,\"tls\":%s,"
        "\"tls_handshakes\":%llu,\"tls_resumed\":%llu}\n",
        static_cast<unsigned long long>(delivered), seconds, static_cast<unsigned long long>(failed), connections,
        threads, tls ? "true" : "false", static_cast<unsigned long long>(handshakes),
        static_cast<unsigned long long>(resumed));
    return failed == 0 ? 0 : 1;
}
