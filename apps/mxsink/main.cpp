// apps/mxsink/main.cpp — a fast SMTP sink for tests and benchmarks.
//
// Accepts any number of connections on every --listen address, answers
// SMTP with PIPELINING (every complete command in a read is answered in one
// write) and CHUNKING (BDAT, RFC 3030; --no-chunking offers DATA only),
// discards message data, and counts connections, messages (and those that
// came by BDAT), recipients and bytes. Thread-per-core: each --threads worker has its own
// io_uring and its own SO_REUSEPORT listening sockets, so the kernel spreads
// connections over workers and nothing is shared but the counters.
//
// Receives are multishot, into the worker's provided-buffer ring
// (io/buffer_ring.hpp, --recv-buffers of 16 KiB): an idle session holds no
// receive buffer, and each buffer goes back to the kernel as soon as its
// completion is handled (the parser copies what it keeps: a partial command
// line, at most 4 KiB, and --record's message). TLS sessions read the same
// way (the channel copies the ciphertext). --recv-buffers 0, or a kernel
// without provided-buffer rings or without multishot recv (probed once at
// start, io/recv_multishot.hpp), gives the old path: one 64 KiB buffer per
// session and a single-shot recv per read.
//
// With --tls-cert/--tls-key it offers STARTTLS on every --listen address and
// speaks implicit TLS on every --listen-tls address (one SSL_CTX for the
// process, so a session ticket from one worker resumes on any other), and
// counts handshakes and resumed sessions. --fault makes STARTTLS fail on
// purpose, for the client's fallback paths.
//
// With --record FILE it also writes one JSON line per message it accepts
// (see message_recorder), so that tests check at the receiver that each
// recipient got exactly one message, carrying its own fields.
//
//   mxsink --listen 127.0.0.2:2525 [--listen ...] [--threads N]
//          [--tls-cert F --tls-key F] [--listen-tls ADDR:PORT ...]
//          [--fault tls-garbage|tls-drop|tls-stall] [--record FILE]
//          [--stats-json FILE] [--max-seconds S] [--exit-after-messages N]
//          [--profile FILE.toml [--seed N]] [--no-chunking] [--recv-buffers N]
//
// With --profile it plays a provider (see profile.hpp): per-domain accept
// rates with the provider's throttling reply beyond them, a connection cap
// per client address, seeded fractions of refusals and drops, and delays;
// --stats-json then has "refused", what it refused and why.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <string>
#include <thread>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <unordered_set>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/detail/json.hpp"
#include "mxpress/io/buffer_ring.hpp"
#include "mxpress/io/recv_multishot.hpp"
#include "mxpress/io/ring.hpp"
#include "mxpress/net/tls.hpp"
#include "mxpress/net/tls_channel.hpp"
#include "profile.hpp"

namespace {

std::atomic<bool> g_stop{false};
// Messages whose 250 has been sent in full (or that get none: drop_after_dot),
// across the workers: what --exit-after-messages counts.
std::atomic<std::uint64_t> g_acked{0};
std::uint64_t g_exit_after = 0;

// `n` more messages answered: stop once --exit-after-messages have been.
void acked(std::uint64_t n) {
    if (g_acked.fetch_add(n, std::memory_order_relaxed) + n >= g_exit_after && g_exit_after != 0) {
        g_stop.store(true);
    }
}

using mxpress::net::tls_channel;
using mxpress::net::tls_stream;

// --record FILE: one JSON object per line for each message accepted, written
// before its 250 reply is queued:
//   {"rcpt":["a@x.test"],"size":1234,"sha256":"…","to":"…","code":"…","t":1795000000.123456}
// size and sha256 are of the message as the client meant it (dots
// un-stuffed, CRLF line ends, without the final "."; a BDAT message's
// chunks as they came), so a test can compare
// them with `mxpress render`; "to" and "code" are the unfolded values of the
// To: and X-Row-Code: headers ("" when absent), the recipient's own fields;
// "t" is when the final dot arrived (Unix time, microseconds), so a test
// can measure the pace a destination was sent at.
// Shared by every worker (a mutex per line). Each line is flushed before
// its 250 is queued, so a test may read the file while the sink runs (a
// run of `mxpress steps` at a time) and see every message acknowledged.
class message_recorder {
public:
    static constexpr std::string_view code_header = "X-Row-Code";

    explicit message_recorder(const std::string& path) : _file(std::fopen(path.c_str(), "w"), &std::fclose) {
        if (!_file) {
            throw std::invalid_argument(fmt::format("--record {}: {}", path, std::strerror(errno)));
        }
    }

    void record(const std::vector<std::string>& rcpts, std::string_view message) {
        std::string line = "{\"rcpt\":[";
        for (std::size_t k = 0; k < rcpts.size(); ++k) {
            if (k > 0) {
                line += ',';
            }
            mxpress::detail::append_json_string(line, rcpts[k]);
        }
        line += fmt::format("],\"size\":{},\"sha256\":\"{}\",\"to\":", message.size(), sha256_hex(message));
        mxpress::detail::append_json_string(line, header_value(message, "To"));
        line += ",\"code\":";
        mxpress::detail::append_json_string(line, header_value(message, code_header));
        timespec now{};
        ::clock_gettime(CLOCK_REALTIME, &now);
        line += fmt::format(",\"t\":{}.{:06}}}\n", now.tv_sec, now.tv_nsec / 1000);
        const std::lock_guard<std::mutex> lock(_mutex);
        std::fwrite(line.data(), 1, line.size(), _file.get());
        std::fflush(_file.get());
    }

    // The message from DATA's bytes up to and including the final ".\r\n":
    // the terminator dropped and each line's leading dot removed (RFC 5321
    // §4.5.2).
    static std::string unstuff(std::string_view data) {
        if (data.ends_with(".\r\n")) {
            data.remove_suffix(3);
        }
        std::string out;
        out.reserve(data.size());
        bool line_start = true;
        for (const char ch : data) {
            if (!(line_start && ch == '.')) {
                out += ch;
            }
            line_start = ch == '\n';
        }
        return out;
    }

private:
    static std::string sha256_hex(std::string_view data) {
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        if (EVP_Digest(data.data(), data.size(), digest, &n, EVP_sha256(), nullptr) != 1) {
            throw std::runtime_error("SHA-256 failed");
        }
        std::string hex;
        for (unsigned int k = 0; k < n; ++k) {
            hex += fmt::format("{:02x}", digest[k]);
        }
        return hex;
    }

    // The unfolded value of the first header called `name` (any case), trimmed.
    static std::string header_value(std::string_view message, std::string_view name) {
        std::string value;
        bool in_wanted = false;
        std::size_t pos = 0;
        while (pos < message.size()) {
            std::size_t end = message.find("\r\n", pos);
            if (end == std::string_view::npos) {
                end = message.size();
            }
            const std::string_view line = message.substr(pos, end - pos);
            pos = end + 2;
            if (line.empty()) {
                break;  // end of the headers
            }
            if (line.front() == ' ' || line.front() == '\t') {
                if (in_wanted) {
                    value += line;
                }
                continue;
            }
            if (in_wanted) {
                break;
            }
            const std::size_t colon = line.find(':');
            if (colon != std::string_view::npos && mxpress::detail::iequals(line.substr(0, colon), name)) {
                in_wanted = true;
                value = line.substr(colon + 1);
            }
        }
        const std::size_t b = value.find_first_not_of(" \t");
        const std::size_t e = value.find_last_not_of(" \t");
        return b == std::string::npos ? std::string() : value.substr(b, e - b + 1);
    }

    std::mutex _mutex;
    std::unique_ptr<FILE, decltype(&std::fclose)> _file;
};

// What every worker shares: TLS context and the fault to inject.
struct sink_settings {
    SSL_CTX* tls = nullptr;  // null: no STARTTLS offered, no TLS listeners
    enum class fault { none, tls_garbage, tls_drop, tls_stall } fault = fault::none;
    message_recorder* recorder = nullptr;  // null: no --record
    mxsink::provider* provider = nullptr;  // null: no --profile
    bool chunking = true;                  // offer CHUNKING (BDAT)
    std::uint32_t recv_buffers = 512;      // per worker's provided-buffer ring (0: a buffer per session)
};

// The size of each provided receive buffer.
constexpr std::uint32_t recv_buffer_bytes = 16 * 1024;

void on_signal(int) {
    g_stop.store(true);
}

struct counters {
    std::atomic<std::uint64_t> connections{0};
    std::atomic<std::uint64_t> messages{0};
    std::atomic<std::uint64_t> bdat_messages{0};  // of messages: those sent with BDAT
    std::atomic<std::uint64_t> recipients{0};
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<std::uint64_t> tls_handshakes{0};
    std::atomic<std::uint64_t> tls_resumed{0};
    std::atomic<std::uint64_t> tls_failures{0};
    std::atomic<std::uint64_t> recv_enobufs{0};  // recvs that found the buffer ring empty (armed again)
};

constexpr std::string_view greeting = "220 mxsink ESMTP ready\r\n";
constexpr std::string_view ehlo_reply =
    "250-mxsink\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    "250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n";
constexpr std::string_view ehlo_reply_starttls =
    "250-mxsink\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    "250-CHUNKING\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n";

// The EHLO reply: STARTTLS when it can still be started, CHUNKING unless
// --no-chunking.
std::string ehlo_for(bool starttls, bool chunking) {
    std::string r(starttls ? ehlo_reply_starttls : ehlo_reply);
    if (!chunking) {
        r.erase(r.find("250-CHUNKING\r\n"), 14);
    }
    return r;
}

class worker;

struct session {
    struct op : mxpress::io::completion {
        session* s = nullptr;
    };
    worker* owner = nullptr;
    int fd = -1;
    op recv_op;
    op send_op;
    unsigned in_flight = 0;
    bool sending = false;
    bool closing = false;           // close after the pending output is sent
    std::uint32_t unsent_acks = 0;  // 250s for messages queued in `out` or in the send in flight
    bool dead = false;
    bool recv_cancelled = false;  // the multishot recv was cancelled: closing, nothing more is read
    bool recv_multishot = false;  // the recv in flight is the multishot one
    std::vector<char> buf;        // without a buffer ring only: what each recv reads into
    std::string line;             // partial command line
    std::string out;              // plaintext replies not yet handed to TLS or the socket
    std::string sending_buf;      // bytes of the send in flight (ciphertext under TLS)
    std::size_t send_off = 0;
    std::string plain_first;           // sent before anything else: the 220 to STARTTLS
    std::unique_ptr<tls_channel> tls;  // STARTTLS or implicit TLS, once it began
    bool stalled = false;              // --fault tls-stall: input is ignored from now on
    std::string plain;                 // decrypted input
    bool in_data = false;
    int data_match = 0;  // how much of "\r\n.\r\n" was seen
    // BDAT: octets of the current chunk still to read, whether it is the
    // LAST one, whether it is thrown away (refused), and whether the
    // transaction's data came by BDAT (raw, not dot-stuffed).
    std::uint64_t chunk_left = 0;
    bool chunk_last = false;
    bool chunk_refused = false;
    bool bdat = false;
    std::uint32_t rcpts = 0;
    std::uint64_t messages_sent_counted = 0;
    // --record only: the transaction's recipients and DATA bytes so far.
    std::vector<std::string> rcpt_addrs;
    std::string data;
    // --profile only: the client's address (counted against connections_max
    // while `counted`), the fate of the message in DATA, and the delay the
    // next write of replies waits (delay_ms).
    std::uint32_t client = 0;
    bool counted = false;
    mxsink::fate data_fate = mxsink::fate::none;
    std::uint32_t delay_ms = 0;
    bool delaying = false;
    op delay_op;
    __kernel_timespec delay_ts{};
};

// Owns every session and listener of a worker. Declared before the ring in
// worker, so it is destroyed after it: the ring's teardown cancels the
// operations that still point into these objects, then they are freed.
struct registry {
    std::unordered_set<session*> sessions;
    std::vector<int> listen_fds;
    ~registry() {
        for (session* s : sessions) {
            ::close(s->fd);
            delete s;
        }
        for (int fd : listen_fds) {
            ::close(fd);
        }
    }
};

class worker {
public:
    worker(const std::vector<sockaddr_in>& addrs, const std::vector<sockaddr_in>& tls_addrs, counters& c,
           const sink_settings& settings)
        : _ring(4096), _buffers(open_buffers(_ring, settings.recv_buffers)), _counters(c), _settings(settings) {
        std::vector<std::pair<sockaddr_in, bool>> all;
        for (const sockaddr_in& a : addrs) {
            all.emplace_back(a, false);
        }
        for (const sockaddr_in& a : tls_addrs) {
            all.emplace_back(a, true);
        }
        for (const auto& [a, implicit_tls] : all) {
            const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            const int one = 1;
            ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
            if (::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 4096) != 0) {
                char ip[INET_ADDRSTRLEN];
                inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
                throw std::runtime_error(
                    fmt::format("cannot listen on {}:{}: {}", ip, ntohs(a.sin_port), std::strerror(errno)));
            }
            _registry.listen_fds.push_back(fd);
            _listeners.push_back(std::make_unique<listener>());
            listener* l = _listeners.back().get();
            l->fd = fd;
            l->implicit_tls = implicit_tls;
            l->w = this;
            l->fn = &worker::on_accept;
            arm_accept(l);
        }
        _tick.fn = &worker::on_tick;
        _tick.w = this;
        arm_tick();
    }

    void run() {
        while (!g_stop.load(std::memory_order_relaxed)) {
            _ring.run(1);
        }
    }

private:
    struct listener : mxpress::io::completion {
        int fd = -1;
        bool implicit_tls = false;
        worker* w = nullptr;
    };
    struct tick : mxpress::io::completion {
        worker* w = nullptr;
    };

    void arm_accept(listener* l) {
        io_uring_prep_multishot_accept(_ring.sqe(l), l->fd, nullptr, nullptr, SOCK_CLOEXEC);
    }

    void arm_tick() {
        _tick_ts = mxpress::io::timespec_ms(100);
        io_uring_prep_timeout(_ring.sqe(&_tick), &_tick_ts, 0, 0);
    }

    static void on_tick(mxpress::io::completion* c, int, unsigned) { static_cast<tick*>(c)->w->arm_tick(); }

    static void on_accept(mxpress::io::completion* c, int res, unsigned flags) {
        auto* l = static_cast<listener*>(c);
        worker* w = l->w;
        if (!(flags & IORING_CQE_F_MORE)) {
            w->arm_accept(l);  // multishot ended: re-arm
        }
        if (res < 0) {
            return;
        }
        const int one = 1;
        ::setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        auto* s = new session;
        w->_registry.sessions.insert(s);
        s->owner = w;
        s->fd = res;
        s->recv_op.fn = &worker::on_recv;
        s->recv_op.s = s;
        s->send_op.fn = &worker::on_send;
        s->send_op.s = s;
        s->delay_op.fn = &worker::on_delay;
        s->delay_op.s = s;
        w->_counters.connections.fetch_add(1, std::memory_order_relaxed);
        s->out = greeting;
        if (mxsink::provider* p = w->_settings.provider) {
            sockaddr_in peer{};
            socklen_t len = sizeof peer;
            if (::getpeername(res, reinterpret_cast<sockaddr*>(&peer), &len) == 0) {
                s->client = peer.sin_addr.s_addr;
            }
            s->delay_ms = p->config().defaults.delay_ms;
            s->counted = p->open(s->client);
            if (!s->counted) {
                s->out = p->config().connections_reply + "\r\n";
                s->closing = true;
            }
        }
        if (l->implicit_tls) {
            s->tls = std::make_unique<tls_channel>(w->_settings.tls, tls_stream::role::server);
            s->tls->start();
        }
        if (!s->closing) {
            w->arm_recv(s);
        }
        w->pump(s);
    }

    // Multishot from the buffer ring (one SQE for the session's life, until
    // ENOBUFS or the end), else one recv into the session's own buffer.
    void arm_recv(session* s) {
        ++s->in_flight;
        s->recv_multishot = _buffers && _multishot;
        if (s->recv_multishot) {
            mxpress::io::prep_recv_multishot(_ring.sqe(&s->recv_op), s->fd, _buffers->group());
            return;
        }
        if (s->buf.empty()) {
            s->buf.resize(64 * 1024);
        }
        io_uring_prep_recv(_ring.sqe(&s->recv_op), s->fd, s->buf.data(), s->buf.size(), 0);
    }

    // One send in flight per session; a short send resumes from send_off,
    // so ciphertext is never reordered.
    void pump(session* s) {
        if (s->sending || s->dead || s->delaying) {
            return;
        }
        if (s->send_off >= s->sending_buf.size()) {
            s->sending_buf.clear();
            s->send_off = 0;
            if (s->delay_ms > 0 && (!s->out.empty() || !s->plain_first.empty())) {
                // --profile delay_ms: these replies wait, then go in one write.
                s->delaying = true;
                ++s->in_flight;
                s->delay_ts = mxpress::io::timespec_ms(s->delay_ms);
                s->delay_ms = 0;
                io_uring_prep_timeout(_ring.sqe(&s->delay_op), &s->delay_ts, 0, 0);
                return;
            }
            if (!s->plain_first.empty()) {
                s->sending_buf.swap(s->plain_first);
            } else if (s->tls) {
                // Replies written during the handshake wait in the channel.
                if (!s->out.empty()) {
                    if (!s->tls->send(s->out)) {
                        kill(s);
                        return;
                    }
                    s->out.clear();
                }
                if (s->tls->has_output()) {
                    s->tls->take_output(s->sending_buf);
                }
            } else {
                s->sending_buf.swap(s->out);
                s->out.clear();
            }
            if (s->sending_buf.empty()) {
                if (s->closing) {
                    kill(s);
                }
                return;
            }
        }
        s->sending = true;
        ++s->in_flight;
        io_uring_prep_send(_ring.sqe(&s->send_op), s->fd, s->sending_buf.data() + s->send_off,
                           s->sending_buf.size() - s->send_off, MSG_NOSIGNAL);
    }

    static void on_delay(mxpress::io::completion* c, int, unsigned) {
        session* s = static_cast<session::op*>(c)->s;
        worker* w = s->owner;
        --s->in_flight;
        s->delaying = false;
        if (s->dead) {
            w->maybe_free(s);
            return;
        }
        w->pump(s);
    }

    static void on_send(mxpress::io::completion* c, int res, unsigned) {
        session* s = static_cast<session::op*>(c)->s;
        worker* w = s->owner;
        --s->in_flight;
        s->sending = false;
        if (s->dead) {
            w->maybe_free(s);
            return;
        }
        if (res < 0) {
            w->kill(s);
            return;
        }
        s->send_off += static_cast<std::size_t>(res);
        if (s->unsent_acks != 0 && s->out.empty() && s->send_off >= s->sending_buf.size()) {
            // Every reply queued so far is out, the 250s among them too. (The
            // check was once "this session's output is out and the count of
            // messages reached N": with two workers, another session's last
            // 250s were still unsent, and the client saw its connection reset.)
            acked(std::exchange(s->unsent_acks, 0));
        }
        w->pump(s);
    }

    // One CQE of the session's recv. The recv counts in in_flight until its
    // last CQE (no F_MORE) has been handled, so a kill() below never frees
    // the session under this function.
    static void on_recv(mxpress::io::completion* c, int res, unsigned flags) {
        session* s = static_cast<session::op*>(c)->s;
        worker* w = s->owner;
        const bool more = (flags & IORING_CQE_F_MORE) != 0;  // the multishot recv is still armed
        const bool provided = (flags & IORING_CQE_F_BUFFER) != 0;
        // The kernel refused the multishot recv though the probe passed:
        // said once, and the worker reads with a plain recv from now on.
        const bool refused = res == -EINVAL && s->recv_multishot;
        if (refused) {
            w->multishot_refused();
        }
        // After QUIT, a 421 or a --profile drop, what the client sends is
        // not read (the old single-shot recv was not re-armed).
        if (res > 0 && !s->dead && !s->closing) {
            const std::string_view data = provided ? w->_buffers->data(flags, res)
                                                   : std::string_view(s->buf.data(), static_cast<std::size_t>(res));
            if (s->stalled) {
                // --fault tls-stall: read and ignore until the client gives up.
            } else if (s->tls) {
                w->consume_tls(s, data);
            } else {
                w->consume(s, data);
            }
        }
        if (provided) {
            // Every byte was parsed, or copied where it must outlive this
            // call (the line, --record's data, the TLS channel's input).
            w->_buffers->recycle(flags);
        }
        if (!s->dead) {
            if (res == -ENOBUFS) {
                w->_counters.recv_enobufs.fetch_add(1, std::memory_order_relaxed);
            }
            if (res == -ENOBUFS || refused || (res <= 0 && s->closing)) {
                // ENOBUFS: every buffer was taken when data came. They come
                // back as each CQE is handled; the recv armed again below is
                // submitted by the next run(), after this batch.
                // Closing: the recv was cancelled or the client closed
                // first; pump() closes once the replies are out.
            } else if (res <= 0) {
                w->kill(s);
            } else {
                w->pump(s);
            }
        }
        if (more) {
            if (s->closing && !s->dead && !s->recv_cancelled) {
                s->recv_cancelled = true;
                // By the address the recv was submitted under (its completion).
                io_uring_prep_cancel(w->_ring.sqe(nullptr), static_cast<mxpress::io::completion*>(&s->recv_op), 0);
            }
            return;
        }
        --s->in_flight;
        if (s->dead) {
            w->maybe_free(s);
        } else if (!s->closing && (res > 0 || res == -ENOBUFS || refused)) {
            w->arm_recv(s);
        }
    }

    void consume_tls(session* s, std::string_view in) {
        s->plain.clear();
        const tls_channel::progress p = s->tls->receive(in, s->plain);
        if (p.established_now) {
            _counters.tls_handshakes.fetch_add(1, std::memory_order_relaxed);
            if (s->tls->stream().resumed()) {
                _counters.tls_resumed.fetch_add(1, std::memory_order_relaxed);
            }
        }
        if (p.now == tls_channel::state::handshaking) {
            return;
        }
        if (p.now == tls_channel::state::failed && !s->tls->stream().established()) {
            _counters.tls_failures.fetch_add(1, std::memory_order_relaxed);
            kill(s);
            return;
        }
        consume(s, s->plain);
        if (p.now != tls_channel::state::open) {
            s->closing = true;  // close_notify or a broken record
        }
    }

    void consume(session* s, std::string_view in) {
        std::size_t i = 0;
        while (i < in.size()) {
            if (s->in_data) {
                i = scan_data(s, in, i);
                if (s->closing) {
                    return;  // --profile drop_after_dot
                }
                continue;
            }
            if (s->chunk_left > 0) {
                i = read_chunk(s, in, i);
                if (s->closing) {
                    return;  // --profile drop_after_dot
                }
                continue;
            }
            const std::size_t nl = in.find('\n', i);
            if (nl == std::string_view::npos) {
                s->line.append(in.substr(i));
                if (s->line.size() > 4096) {
                    s->out += "500 5.5.2 line too long\r\n";
                    s->closing = true;
                }
                return;
            }
            s->line.append(in.substr(i, nl - i));
            i = nl + 1;
            if (!s->line.empty() && s->line.back() == '\r') {
                s->line.pop_back();
            }
            command(s, s->line);
            s->line.clear();
            if (s->closing || (s->tls && s->tls->handshaking())) {
                // After the 220 to STARTTLS, plaintext that came with the
                // command is dropped (RFC 3207 §5: it must not be trusted).
                return;
            }
        }
    }

    // Skips message data up to and including "\r\n.\r\n"; returns the index
    // after what was used.
    std::size_t scan_data(session* s, std::string_view in, std::size_t i) {
        static constexpr char end_marker[] = "\r\n.\r\n";
        const std::size_t start = i;
        bool complete = false;
        while (i < in.size()) {
            if (s->data_match == 0) {
                const void* p = std::memchr(in.data() + i, '\r', in.size() - i);
                if (p == nullptr) {
                    i = in.size();
                    break;
                }
                i = static_cast<std::size_t>(static_cast<const char*>(p) - in.data());
            }
            const char ch = in[i++];
            if (ch == end_marker[s->data_match]) {
                if (++s->data_match == 5) {
                    s->in_data = false;
                    s->data_match = 0;
                    s->rcpts = 0;
                    complete = true;
                    break;
                }
            } else {
                s->data_match = (ch == '\r') ? 1 : 0;
            }
        }
        _counters.bytes.fetch_add(i - start, std::memory_order_relaxed);
        if (_settings.recorder != nullptr) {
            s->data.append(in.substr(start, i - start));
        }
        if (complete) {
            end_of_data(s);
        }
        return i;
    }

    // BDAT: takes up to chunk_left octets of the chunk; returns the index
    // after what was used.
    std::size_t read_chunk(session* s, std::string_view in, std::size_t i) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(s->chunk_left, in.size() - i));
        _counters.bytes.fetch_add(n, std::memory_order_relaxed);
        if (_settings.recorder != nullptr && !s->chunk_refused) {
            s->data.append(in.substr(i, n));
        }
        s->chunk_left -= n;
        if (s->chunk_left == 0) {
            end_of_chunk(s);
        }
        return i + n;
    }

    // A whole chunk arrived: 250 for a middle one; after the LAST one, the
    // message as after DATA's final dot. A refused chunk gets its error now
    // (RFC 3030 §2: the octets are read first).
    void end_of_chunk(session* s) {
        if (s->chunk_refused) {
            s->out += "554 5.5.1 Error: no valid recipients\r\n";
            s->chunk_refused = false;
            if (s->chunk_last) {
                s->bdat = false;
                s->data.clear();
            }
            return;
        }
        if (!s->chunk_last) {
            s->out += "250 2.0.0 Ok: chunk\r\n";
            return;
        }
        s->rcpts = 0;
        _counters.bdat_messages.fetch_add(1, std::memory_order_relaxed);
        end_of_data(s);
        s->bdat = false;
    }

    // "BDAT <n> [LAST]" (RFC 3030 §2). A size that cannot be read leaves the
    // chunk's end unknown: the connection closes.
    void bdat_command(session* s, std::string_view line) {
        std::string_view rest = line.substr(4);
        while (rest.starts_with(' ')) {
            rest.remove_prefix(1);
        }
        const std::size_t sp = rest.find(' ');
        const std::string_view size = rest.substr(0, sp);
        std::string_view flag = sp == std::string_view::npos ? std::string_view{} : rest.substr(sp + 1);
        while (flag.ends_with(' ')) {
            flag.remove_suffix(1);
        }
        std::uint64_t n = 0;
        const auto [end, ec] = std::from_chars(size.data(), size.data() + size.size(), n);
        if (!_settings.chunking) {
            s->out += "502 5.5.1 Error: command not recognized\r\n";
            s->closing = true;  // its octets would read as commands
            return;
        }
        if (size.empty() || ec != std::errc() || end != size.data() + size.size() ||
            !(flag.empty() || mxpress::detail::iequals(flag, "LAST"))) {
            s->out += "501 5.5.4 Syntax: BDAT count [LAST]\r\n";
            s->closing = true;
            return;
        }
        s->chunk_last = !flag.empty();
        s->chunk_refused = s->rcpts == 0;
        mxsink::provider* const p = _settings.provider;
        if (!s->chunk_refused && !s->bdat) {
            // The transaction's first chunk: where DATA would say 354.
            s->bdat = true;
            if (p != nullptr) {
                s->data_fate = p->data(s->rcpt_addrs);
                s->delay_ms = std::max(
                    s->delay_ms, p->config().for_domain(mxsink::provider::domain_of(s->rcpt_addrs.front())).delay_ms);
                if (s->data_fate == mxsink::fate::drop_before_dot) {
                    s->closing = true;  // the chunk finds a closed socket
                    return;
                }
            }
        }
        s->chunk_left = n;
        if (n == 0) {
            end_of_chunk(s);
        }
    }

    // The final dot arrived: the message is accepted (recorded, counted,
    // 250), or refused or dropped as the --profile decided at DATA.
    void end_of_data(session* s) {
        const mxsink::fate f = s->data_fate;
        s->data_fate = mxsink::fate::none;
        if (f == mxsink::fate::data_4xx || f == mxsink::fate::data_5xx) {
            reply(s, _settings.provider->reply(f, mxsink::provider::domain_of(s->rcpt_addrs.front())));
        } else {
            _counters.messages.fetch_add(1, std::memory_order_relaxed);
            if (_settings.recorder != nullptr) {
                _settings.recorder->record(s->rcpt_addrs, s->bdat ? s->data : message_recorder::unstuff(s->data));
            }
            if (f == mxsink::fate::drop_after_dot) {
                s->closing = true;  // kept, but the client never hears so
                acked(1);
            } else {
                s->out += "250 2.0.0 Ok: queued\r\n";
                ++s->unsent_acks;
            }
        }
        s->data.clear();
        s->rcpt_addrs.clear();
    }

    // A --profile refusal: its text, and a 421 closes the connection.
    static void reply(session* s, std::string_view text) {
        s->out += text;
        s->out += "\r\n";
        if (text.starts_with("421")) {
            s->closing = true;
        }
    }

    void command(session* s, std::string_view line) {
        using mxpress::detail::iequals;
        const std::string_view verb = line.substr(0, 4);
        mxsink::provider* const p = _settings.provider;
        if (p != nullptr) {
            s->delay_ms = std::max(s->delay_ms, p->config().defaults.delay_ms);
        }
        if (iequals(verb, "EHLO")) {
            s->out += ehlo_for(_settings.tls != nullptr && !s->tls, _settings.chunking);
        } else if (iequals(verb, "HELO")) {
            s->out += "250 mxsink\r\n";
        } else if (iequals(verb, "MAIL")) {
            s->rcpts = 0;
            s->rcpt_addrs.clear();
            s->bdat = false;
            s->data.clear();
            s->out += "250 2.1.0 Ok\r\n";
        } else if (iequals(verb, "RCPT")) {
            if (p != nullptr) {
                std::string addr = rcpt_address(line);
                const std::string domain = mxsink::provider::domain_of(addr);
                s->delay_ms = std::max(s->delay_ms, p->config().for_domain(domain).delay_ms);
                const mxsink::fate f = p->rcpt(addr, std::chrono::steady_clock::now(), s->client);
                if (f != mxsink::fate::none) {
                    reply(s, p->reply(f, domain));
                    return;
                }
                s->rcpt_addrs.push_back(std::move(addr));
            } else if (_settings.recorder != nullptr) {
                s->rcpt_addrs.emplace_back(rcpt_address(line));
            }
            ++s->rcpts;
            _counters.recipients.fetch_add(1, std::memory_order_relaxed);
            s->out += "250 2.1.5 Ok\r\n";
        } else if (iequals(verb, "BDAT")) {
            bdat_command(s, line);
        } else if (iequals(verb, "DATA")) {
            if (s->rcpts == 0) {
                s->out += "554 5.5.1 Error: no valid recipients\r\n";
            } else {
                s->in_data = true;
                s->data_match = 2;  // at the start of a line: ".\r\n" alone ends the data
                s->out += "354 End data with <CR><LF>.<CR><LF>\r\n";
                if (p != nullptr) {
                    s->data_fate = p->data(s->rcpt_addrs);
                    s->delay_ms =
                        std::max(s->delay_ms,
                                 p->config().for_domain(mxsink::provider::domain_of(s->rcpt_addrs.front())).delay_ms);
                    if (s->data_fate == mxsink::fate::drop_before_dot) {
                        s->closing = true;  // the client's data finds a closed socket
                    }
                }
            }
        } else if (iequals(verb, "RSET")) {
            s->rcpts = 0;
            s->rcpt_addrs.clear();
            s->bdat = false;
            s->data.clear();
            s->data_fate = mxsink::fate::none;
            s->out += "250 2.0.0 Ok\r\n";
        } else if (iequals(verb, "NOOP")) {
            s->out += "250 2.0.0 Ok\r\n";
        } else if (iequals(verb, "QUIT")) {
            s->out += "221 2.0.0 Bye\r\n";
            s->closing = true;
        } else if (iequals(verb, "STAR")) {
            starttls(s);
        } else {
            s->out += "502 5.5.2 Error: command not recognized\r\n";
        }
    }

    // The address of "RCPT TO:<addr> params" (what follows "TO:" without <>).
    static std::string rcpt_address(std::string_view line) {
        const std::size_t lt = line.find('<');
        const std::size_t gt = line.find('>', lt == std::string_view::npos ? 0 : lt);
        if (lt != std::string_view::npos && gt != std::string_view::npos) {
            return std::string(line.substr(lt + 1, gt - lt - 1));
        }
        const std::size_t colon = line.find(':');
        return std::string(colon == std::string_view::npos ? line : line.substr(colon + 1));
    }

    void starttls(session* s) {
        if (_settings.tls == nullptr || s->tls) {
            s->out += "454 4.7.0 TLS not available\r\n";
            return;
        }
        // Replies before this one and the 220 itself go in plaintext.
        s->plain_first = std::move(s->out);
        s->out.clear();
        s->plain_first += "220 2.0.0 Ready to start TLS\r\n";
        switch (_settings.fault) {
            case sink_settings::fault::tls_garbage:
                s->plain_first += "this is not a TLS record\r\n";
                s->closing = true;
                return;
            case sink_settings::fault::tls_drop:
                s->closing = true;  // the client's ClientHello finds a closed socket
                return;
            case sink_settings::fault::tls_stall:
                s->stalled = true;  // the ClientHello is never answered
                return;
            case sink_settings::fault::none: break;
        }
        s->tls = std::make_unique<tls_channel>(_settings.tls, tls_stream::role::server);
        s->tls->start();
        s->in_data = false;
        s->chunk_left = 0;
        s->rcpts = 0;
    }

    void kill(session* s) {
        if (s->dead) {
            return;
        }
        s->dead = true;
        ::shutdown(s->fd, SHUT_RDWR);
        maybe_free(s);
    }

    void maybe_free(session* s) {
        if (s->in_flight == 0) {
            if (s->counted) {
                _settings.provider->close(s->client);
            }
            ::close(s->fd);
            _registry.sessions.erase(s);
            delete s;
        }
    }

    void multishot_refused() {
        _multishot = false;
        mxpress::io::say_multishot_refused("mxsink: ");
    }

    // The worker's provided-buffer ring of `count` buffers, or none: with
    // --recv-buffers 0, or on a kernel without buffer rings or without
    // multishot recv (io/recv_multishot.hpp: said once), each session
    // gets a buffer of its own and a recv per read. (Built in place and
    // returned, not emplaced into the member: GCC's -O1 flow analysis took
    // emplace's reset of a never-engaged optional for a use of garbage.)
    static std::optional<mxpress::io::buffer_ring> open_buffers(mxpress::io::ring& r, std::uint32_t count) {
        if (count == 0) {
            return std::nullopt;
        }
        if (const mxpress::io::recv_multishot_answer& ms = mxpress::io::recv_multishot_support(); !ms.supported) {
            static std::once_flag said;
            std::call_once(said, [&ms] {
                std::fprintf(stderr, "mxsink: receiving with a 64 KiB buffer per session: %s\n", ms.why.c_str());
            });
            return std::nullopt;
        }
        try {
            return std::optional<mxpress::io::buffer_ring>(std::in_place, r, 0, count, recv_buffer_bytes);
        } catch (const std::system_error&) {
            return std::nullopt;
        }
    }

    registry _registry;  // destroyed after _ring (see registry)
    mxpress::io::ring _ring;
    std::optional<mxpress::io::buffer_ring> _buffers;  // after _ring: unregistered first
    bool _multishot = true;                            // with _buffers; false once the kernel refused one
    counters& _counters;
    const sink_settings& _settings;
    std::vector<std::unique_ptr<listener>> _listeners;
    tick _tick;
    __kernel_timespec _tick_ts{};
};

sockaddr_in parse_listen(const std::string& spec) {
    const std::size_t colon = spec.rfind(':');
    if (colon == std::string::npos) {
        throw std::invalid_argument("--listen '" + spec + "': expected ADDR:PORT");
    }
    sockaddr_in a{};
    a.sin_family = AF_INET;
    const std::string host = spec.substr(0, colon);
    if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) {
        throw std::invalid_argument("--listen '" + spec + "': not an IPv4 address");
    }
    const long port = std::strtol(spec.c_str() + colon + 1, nullptr, 10);
    if (port < 1 || port > 65535) {
        throw std::invalid_argument("--listen '" + spec + "': bad port");
    }
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    return a;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"mxsink — a fast SMTP sink: accepts, answers and discards mail, and counts it."};
    std::vector<std::string> listen;
    unsigned threads = 1;
    std::string stats_json;
    double max_seconds = 0;
    std::uint64_t exit_after = 0;
    std::vector<std::string> listen_tls;
    std::string tls_cert;
    std::string tls_key;
    std::string fault = "none";
    std::string record_path;
    std::string profile_path;
    std::uint64_t seed = 1;
    bool no_chunking = false;
    std::uint32_t recv_buffers = 512;
    app.add_option("--listen", listen, "ADDR:PORT to listen on (repeatable); offers STARTTLS with --tls-cert");
    app.add_option("--listen-tls", listen_tls, "ADDR:PORT for implicit TLS (like port 465; needs --tls-cert)");
    app.add_option("--tls-cert", tls_cert, "PEM certificate chain for STARTTLS and --listen-tls");
    app.add_option("--tls-key", tls_key, "PEM private key of --tls-cert");
    app.add_option("--fault", fault,
                   "tls-garbage: answer STARTTLS then send plaintext; tls-drop: answer STARTTLS then close; "
                   "tls-stall: answer STARTTLS then never answer the handshake")
        ->check(CLI::IsMember({"none", "tls-garbage", "tls-drop", "tls-stall"}))
        ->capture_default_str();
    app.add_option("--record", record_path,
                   "Write one JSON line per message: recipients, size, SHA-256 and the To: and X-Row-Code: values");
    app.add_option("--profile", profile_path,
                   "Play a provider (TOML): accept rates, connection cap, refusals, drops, delays");
    app.add_option("--seed", seed, "Seed of the --profile's refusals and drops (same seed, same refusals)")
        ->capture_default_str();
    app.add_flag("--no-chunking", no_chunking, "Do not offer CHUNKING: clients send DATA (BDAT is refused)");
    app.add_option("--recv-buffers", recv_buffers,
                   "Receive buffers of 16 KiB in each worker's io_uring buffer ring, shared by its sessions "
                   "(a power of two up to 32768; 0: a 64 KiB buffer per session)")
        ->capture_default_str();
    app.add_option("--threads", threads, "Worker threads, each with its own io_uring")->default_val(1);
    app.add_option("--stats-json", stats_json, "Write counters here on exit");
    app.add_option("--max-seconds", max_seconds, "Exit after this many seconds");
    app.add_option("--exit-after-messages", exit_after, "Exit once the reply to the Nth message has been sent");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    }
    std::vector<sockaddr_in> addrs;
    std::vector<sockaddr_in> tls_addrs;
    std::optional<mxpress::net::tls_context> tls;
    std::optional<message_recorder> recorder;
    std::optional<mxsink::provider> provider;
    sink_settings settings;
    try {
        if (listen.empty() && listen_tls.empty()) {
            throw std::invalid_argument("--listen or --listen-tls is required");
        }
        for (const std::string& l : listen) {
            addrs.push_back(parse_listen(l));
        }
        for (const std::string& l : listen_tls) {
            tls_addrs.push_back(parse_listen(l));
        }
        if (tls_cert.empty() != tls_key.empty()) {
            throw std::invalid_argument("--tls-cert and --tls-key go together");
        }
        if (!tls_addrs.empty() && tls_cert.empty()) {
            throw std::invalid_argument("--listen-tls needs --tls-cert and --tls-key");
        }
        if (!tls_cert.empty()) {
            tls.emplace(mxpress::net::tls_context::server(tls_cert, tls_key));
            settings.tls = tls->get();
        }
        settings.fault = fault == "tls-garbage" ? sink_settings::fault::tls_garbage
                         : fault == "tls-drop"  ? sink_settings::fault::tls_drop
                         : fault == "tls-stall" ? sink_settings::fault::tls_stall
                                                : sink_settings::fault::none;
        if (settings.fault != sink_settings::fault::none && settings.tls == nullptr) {
            throw std::invalid_argument("--fault " + fault + " needs --tls-cert and --tls-key (STARTTLS)");
        }
        settings.chunking = !no_chunking;
        if (recv_buffers > 32768 || (recv_buffers & (recv_buffers - 1)) != 0) {
            throw std::invalid_argument("--recv-buffers: a power of two up to 32768, or 0");
        }
        settings.recv_buffers = recv_buffers;
        if (!record_path.empty()) {
            recorder.emplace(record_path);
            settings.recorder = &*recorder;
        }
        if (!profile_path.empty()) {
            provider.emplace(mxsink::load_profile(profile_path), seed);
            settings.provider = &*provider;
        }
    } catch (const mxpress::mail::input_error& e) {
        std::fprintf(stderr, "mxsink: %s\n", e.describe().c_str());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mxsink: %s\n", e.what());
        return 2;
    }
    g_exit_after = exit_after;
    ::signal(SIGINT, on_signal);
    ::signal(SIGTERM, on_signal);
    ::signal(SIGPIPE, SIG_IGN);
    counters c;
    std::vector<std::thread> workers;
    std::atomic<int> failed{0};
    const auto start = std::chrono::steady_clock::now();
    for (unsigned i = 0; i < std::max(1u, threads); ++i) {
        workers.emplace_back([&]() {
            try {
                worker w(addrs, tls_addrs, c, settings);
                w.run();
            } catch (const std::exception& e) {
                std::fprintf(stderr, "mxsink: %s\n", e.what());
                failed.store(1);
                g_stop.store(true);
            }
        });
    }
    while (!g_stop.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        if (max_seconds > 0 &&
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >= max_seconds) {
            g_stop.store(true);
        }
    }
    for (std::thread& t : workers) {
        t.join();
    }
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    const double cpu =
        double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    const std::string stats = fmt::format(
        "{{\"connections\":{},\"messages\":{},\"bdat_messages\":{},\"recipients\":{},\"bytes\":{},"
        "\"tls_handshakes\":{},\"tls_resumed\":{},\"tls_failures\":{},\"recv_enobufs\":{},{}\"cpu_seconds\":{:.3f},"
        "\"seconds\":{:.3f}}}\n",
        c.connections.load(), c.messages.load(), c.bdat_messages.load(), c.recipients.load(), c.bytes.load(),
        c.tls_handshakes.load(), c.tls_resumed.load(), c.tls_failures.load(), c.recv_enobufs.load(),
        provider ? fmt::format("\"refused\":{},", provider->refused_json()) : std::string(), cpu,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    if (!stats_json.empty()) {
        std::ofstream(stats_json) << stats;
    }
    return failed.load() ? 1 : 0;
}
