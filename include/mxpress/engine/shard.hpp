// mxpress/engine/shard.hpp — one delivery shard: a thread, an io_uring, a
// c-ares channel, and the delivery core (core.hpp) for every domain whose
// name hashes to it. This file is only the driver: it turns completions into
// the core's events and the core's commands into SQEs and lookups.
//   shard.hpp     setup, the run loop, stopping, outcomes to the journal,
//                 mail intake, the core's commands turned into SQEs
//   shard_io.hpp  the io_uring completion handlers (on_*) and arm_recv
//
// Invariants:
// - Everything here runs on the shard's thread; nothing is shared with other
//   shards except the journal (one write(2) per loop turn under its lock)
//   and the stats counters (relaxed atomics the reader thread prints).
// - Memory is bounded: the shard takes new recipients from its mailbox only
//   while the core is accepting (options.hpp: the intake bounds).
// - A socket has at most one send in flight (the core asks for the next
//   only after send_done); a partial send is finished here before the core
//   hears of it.
// - A connection's I/O state (socket, operations in flight, the bytes of
//   its send) lives until its last operation completes, even after the core
//   closed it: the kernel never reads freed memory.
// - Journal lines are written at the end of every loop turn (and every
//   64 KiB), so an outcome reaches the file within the turn that read the
//   server's reply: kill -9 can lose only the transactions in flight.
// - The clock is read once per loop turn and handed to the core.
// - Stopping (request_stop(), from another thread; it only stores a level
//   and writes an eventfd the ring polls): level 1 drains the core
//   (delivery_core::drain(): nothing new starts, transactions in flight end,
//   the rest is journaled `deferred`); after stop_grace, or at level 2, the
//   connections are torn down and their rows journaled in doubt.
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <sys/eventfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <fmt/format.h>

#include "mxpress/engine/config_reload.hpp"
#include "mxpress/engine/core.hpp"
#include "mxpress/engine/journal.hpp"
#include "mxpress/engine/options.hpp"
#include "mxpress/engine/recipient.hpp"
#include "mxpress/engine/shared_journal.hpp"
#include "mxpress/io/buffer_ring.hpp"
#include "mxpress/io/mailbox.hpp"
#include "mxpress/io/recv_multishot.hpp"
#include "mxpress/io/ring.hpp"
#include "mxpress/io/unique_fd.hpp"
#include "mxpress/mail/message_template.hpp"
#include "mxpress/net/dns.hpp"
#include "mxpress/net/secure_channel.hpp"

namespace mxpress::engine {

class shard final : private outcome_sink {
public:
    using mail_batch = std::vector<std::unique_ptr<recipient>>;

    static constexpr std::size_t mailbox_batches_max = 64;
    static constexpr unsigned ring_entries = 4096;
    static constexpr std::uint32_t recv_buffers_count = 512;
    static constexpr std::uint32_t recv_buffer_bytes = 8 * 1024;
    static constexpr std::size_t journal_flush_bytes = 64 * 1024;

    shard(unsigned index, const shard_options& options, const mail::message_template& tmpl, shared_journal& journal,
          shard_stats& stats)
        : _index(index),
          _options(indexed(options, index)),
          _journal(journal),
          _mailbox(mailbox_batches_max),
          _ring(ring_entries),
          _resolver(_ring, resolver_options(options)),
          _renderer(tmpl, renderer_options(options)),
          _tls(options.cfg.tls_ca_file, options.cfg.tls_sessions_max),
          _core(_options, _renderer, _tls, *this, stats),
          _stats(stats) {
        // Multishot receive from one shared pool of buffers: one SQE per
        // connection instead of one per read, where the kernel takes it
        // (io/recv_multishot.hpp); else a plain recv per read.
        if (const io::recv_multishot_answer& ms = io::recv_multishot_support(); !ms.supported) {
            static std::once_flag said;
            std::call_once(said, [&ms] {
                std::fprintf(stderr, "\nmxpress: receiving with a plain recv per connection: %s\n", ms.why.c_str());
            });
        } else {
            try {
                _buffers.emplace(_ring, 0, recv_buffers_count, recv_buffer_bytes);
            } catch (const std::system_error&) {
                _buffers.reset();  // no buffer ring on this ring after all: a plain recv per read
            }
        }
        _eventfd_op.fn = &shard::on_mailbox;
        _eventfd_op.owner = this;
        _tick_op.fn = &shard::on_tick;
        _tick_op.owner = this;
        _stop_op.fn = &shard::on_stop;
        _stop_op.owner = this;
        _stop_fd = io::unique_fd(::eventfd(0, EFD_CLOEXEC));
        if (!_stop_fd) {
            throw std::system_error(errno, std::generic_category(), "eventfd");
        }
    }
    shard(const shard&) = delete;
    shard& operator=(const shard&) = delete;

    io::mailbox<std::unique_ptr<recipient>>& mailbox() noexcept { return _mailbox; }
    const delivery_core& core() const noexcept { return _core; }

    // Any thread (the signal watcher): 1 = drain, 2 = tear down now. Only an
    // atomic store and an eventfd write; the shard acts in its own loop.
    void request_stop(int level) noexcept {
        int cur = _stop_level.load();
        while (cur < level && !_stop_level.compare_exchange_weak(cur, level)) {
        }
        const std::uint64_t one = 1;
        [[maybe_unused]] const ssize_t n = ::write(_stop_fd.get(), &one, sizeof one);
    }

    // The shard's thread body. Returns when every recipient it received has
    // a final outcome (or, after a stop, an unfinished one) and every
    // connection is closed.
    void run() {
        _core.set_now(clock::now());
        arm_mailbox_read();
        arm_tick();
        arm_stop_read();
        while (!finished()) {
            _ring.run(1);
            _core.set_now(clock::now());
            _wall_now = std::chrono::system_clock::now();
            _ts.clear();
            apply_stop();
            take_mail();
            _core.schedule();
            execute_commands();
            flush_journal();  // every turn: outcomes reach the file within milliseconds
        }
        flush_journal();
        publish_dns_stats();
        publish_held();  // the final progress line reads what holds now, not a second ago
    }

private:
    using shard_op = io::tagged_completion<shard>;

    static shard_options indexed(shard_options o, unsigned index) {
        o.shard_index = index;
        o.gather_sends = true;  // start_send takes command::pieces
        return o;
    }

    // The I/O side of one connection.
    struct io_conn {
        struct op : io::completion {
            io_conn* conn = nullptr;
        };
        shard* owner = nullptr;
        conn_id id = 0;
        io::unique_fd fd;
        op connect_op;
        op recv_op;
        op send_op;
        unsigned ops_in_flight = 0;
        bool connected = false;
        bool closed = false;  // the core said close: no new I/O
        std::string send_buffer;
        std::vector<smtp::body_piece> send_pieces;  // bodies between send_buffer's bytes (command::pieces)
        std::size_t send_offset = 0;                // bytes of the send written so far
        std::size_t send_total = 0;                 // send_buffer and the pieces
        std::vector<iovec> send_iov;                // what is left, for sendmsg (the kernel reads it)
        msghdr send_msg{};
        bool recv_multishot = false;  // the recv in flight is the multishot one
        std::string recv_buffer;      // only without provided buffers (plain recv)
        sockaddr_storage addr{};      // the kernel may read it after submission
        socklen_t addr_len = 0;
    };

    // [dns] queries_in_flight_max is the run's: what the resolver sees at
    // once. Each shard gets its share, rounded up, and never fewer than
    // dns_queries_per_shard_min (so many shards still look up in parallel).
    static constexpr std::size_t dns_queries_per_shard_min = 4;
    static std::size_t dns_queries_in_flight(std::size_t run_max, unsigned shards) {
        const std::size_t n = std::max(1u, shards);
        return std::max(dns_queries_per_shard_min, (run_max + n - 1) / n);
    }

    static net::resolver::options resolver_options(const shard_options& o) {
        net::resolver::options r;
        r.servers = o.dns_servers;
        r.timeout_ms = static_cast<int>(o.cfg.dns_timeout.count());
        r.tries = static_cast<int>(o.cfg.dns_tries);
        r.queries_in_flight_max = dns_queries_in_flight(o.cfg.dns_queries_in_flight_max, o.shards);
        r.positive_ttl = o.cfg.mx_cache_ttl;
        r.negative_ttl = o.cfg.dns_failure_cache_ttl;
        return r;
    }
    static mail::renderer_options renderer_options(const shard_options& o) {
        mail::renderer_options r;
        r.from = o.from;
        r.dkim = o.dkim;
        r.message_id_run_key = o.message_id_run_key;
        return r;
    }

    // The resolver counts on this thread; the summary reads the copies.
    // Destinations a rule holds back, for the progress line (about once a second).
    static constexpr unsigned held_every_ticks = 20;
    void publish_held() {
        delivery_core::held_summary h = _core.held_destinations();
        _stats.held.store(h.count, std::memory_order_relaxed);
        const std::lock_guard<std::mutex> lock(_stats.held_mutex);
        _stats.held_example = std::move(h.example);
    }

    void publish_dns_stats() noexcept {
        const net::resolver::counters& c = _resolver.stats();
        _stats.dns_queries.store(c.queries, std::memory_order_relaxed);
        _stats.dns_retries.store(c.retries, std::memory_order_relaxed);
        _stats.dns_in_flight_peak.store(c.in_flight_peak, std::memory_order_relaxed);
    }

    bool finished() const {
        const bool intake_done = _core.draining() || (_input_closed && _incoming.empty());
        return intake_done && _core.finished() && _io.empty() && !_resolver.busy();
    }

    // ---- stopping -------------------------------------------------------------

    void arm_stop_read() {
        io_uring_prep_read(_ring.sqe(&_stop_op), _stop_fd.get(), &_stop_value, sizeof _stop_value, 0);
    }

    static void on_stop(io::completion* c, int /*res*/, unsigned /*flags*/);  // shard_io.hpp

    // Acts on the stop level: drain once, then tear down at level 2 or when
    // the grace period is over.
    void apply_stop() {
        const int level = _stop_level.load();
        if (level >= 1 && !_core.draining()) {
            _mailbox.abort();  // the reader stops; batches not taken were never started
            _incoming.clear();
            _core.drain();
            _grace_end = _core.now() + _options.stop_grace;
        }
        if (_core.draining() && !_aborted && (level >= 2 || _core.now() >= _grace_end)) {
            _aborted = true;
            _core.abort_connections();
            // Completes the armed read, which is not armed again.
            [[maybe_unused]] const ssize_t n = ::write(_stop_fd.get(), &_one, sizeof _one);
        }
    }

    // ---- outcomes (the core's sink) -------------------------------------------

    // This turn's wall-clock time, formatted once per turn.
    std::string_view timestamp() {
        if (_ts.empty()) {
            format_timestamp(_ts, _wall_now);
        }
        return _ts;
    }

    void unfinished_outcome(const recipient& r, clock::time_point next_attempt, bool in_doubt) override {
        journal_entry e;
        e.line = r.line;
        e.email = r.email;
        e.status = outcome_status::deferred;
        e.code = r.last_reply.code;
        e.enhanced = r.last_reply.enhanced;
        std::string text;
        if (in_doubt) {
            shard_stats::add(_stats.stopped_in_doubt);
            text = "in doubt: the run stopped during its transaction; the server may have taken it";
        } else if (_core.draining()) {
            shard_stats::add(_stats.left_deferred);  // else a rule stopped its destination (rule_left)
            text = r.last_reply.code == 0 && r.last_reply.text.empty() ? std::string("the run stopped before it")
                                                                       : r.last_reply.one_line();
        }
        e.reply = text;
        e.mx = r.last_mx;
        e.attempts = r.attempts;
        e.tls = r.last_tls;
        e.transfer = r.last_transfer;
        e.ts = timestamp();
        e.domain = r.domain_name();
        e.mx_ip = r.last_mx.empty() ? std::string_view() : std::string_view(r.last_ip);
        const std::string mid = _renderer.stable_message_id(r.line);
        e.message_id = r.attempts > 0 ? std::string_view(mid) : std::string_view();
        e.run = _options.run_id;
        std::string next;
        const auto wait = next_attempt > _core.now() ? next_attempt - _core.now() : clock::duration::zero();
        format_timestamp(next, _wall_now + std::chrono::duration_cast<std::chrono::system_clock::duration>(wait));
        e.next_attempt = next;
        e.in_doubt = in_doubt;
        append_journal_line(_journal_buffer, e);
        if (_journal_buffer.size() >= journal_flush_bytes) {
            flush_journal();
        }
    }

    void final_outcome(const recipient& r, outcome_status st, const smtp::reply& rep, std::string_view mx,
                       std::string_view tls) override {
        journal_entry e;
        e.line = r.line;
        e.email = r.email;
        e.status = st;
        e.code = rep.code;
        e.enhanced = rep.enhanced;
        const std::string text = rep.text.find('\n') == std::string::npos ? std::string() : rep.one_line();
        e.reply = text.empty() ? std::string_view(rep.text) : std::string_view(text);
        e.mx = mx;
        e.attempts = r.attempts;
        e.tls = tls;
        e.transfer = r.last_transfer;
        e.ts = timestamp();
        e.domain = r.domain_name();
        e.mx_ip = mx.empty() ? std::string_view() : std::string_view(r.last_ip);
        const std::string mid = _renderer.stable_message_id(r.line);
        e.message_id = r.attempts > 0 ? std::string_view(mid) : std::string_view();
        e.run = _options.run_id;
        append_journal_line(_journal_buffer, e);
        if (_journal_buffer.size() >= journal_flush_bytes) {
            flush_journal();
        }
    }

    // {"event":"rule","ts":…,"run":…,"rule":…,"scope":…,"action":…,
    //  "rate":per second,"base":per second,"until":RFC 3339,"reply":…}:
    // --resume restores the throttles from these (runner.hpp).
    void rule_fired(const rule_firing& f) override {
        std::string& j = _journal_buffer;
        j += "{\"event\":\"rule\",\"ts\":";
        detail::append_json_string(j, timestamp());
        j += ",\"run\":";
        detail::append_json_string(j, _options.run_id);
        j += ",\"rule\":";
        detail::append_json_string(j, f.rule);
        j += ",\"scope\":";
        detail::append_json_string(j, f.scope);
        fmt::format_to(std::back_inserter(j), ",\"action\":\"{}\"", to_string(f.action));
        if (f.action != rule_action::stop) {
            fmt::format_to(std::back_inserter(j), ",\"rate\":{:.6g},\"base\":{:.6g}", f.rate_per_s, f.base_per_s);
        }
        if (f.action == rule_action::suspend) {
            std::string until;
            const auto wait = f.until > _core.now() ? f.until - _core.now() : clock::duration::zero();
            format_timestamp(until, _wall_now + std::chrono::duration_cast<std::chrono::system_clock::duration>(wait));
            j += ",\"until\":";
            detail::append_json_string(j, until);
        }
        j += ",\"reply\":";
        detail::append_json_string(j, f.reply);
        j += "}\n";
    }

    void flush_journal() { _journal.write_batch(_journal_buffer); }

    // ---- mailbox --------------------------------------------------------------

    void arm_mailbox_read() {
        io_uring_prep_read(_ring.sqe(&_eventfd_op), _mailbox.eventfd(), &_eventfd_value, sizeof _eventfd_value, 0);
    }

    static void on_mailbox(io::completion* c, int /*res*/, unsigned /*flags*/);  // shard_io.hpp

    void take_mail() {
        if (_core.draining()) {
            return;  // stopping: nothing new is taken
        }
        // Take more only when what was taken is nearly used up: the mailbox,
        // not this shard, is where the reader's backpressure comes from.
        if (_mailbox_signaled && _incoming.size() < 2) {
            _mailbox_signaled = false;
            if (_mailbox.take_all(_incoming)) {
                _input_closed_seen = true;
            }
        }
        while (!_incoming.empty() && _core.accepting()) {
            for (auto& r : _incoming.front()) {
                _core.recipient_arrived(std::move(r));
            }
            _incoming.pop_front();
        }
        if (_input_closed_seen && _incoming.empty() && !_input_closed) {
            _input_closed = true;
            _core.input_closed();
        }
    }

    // ---- commands ---------------------------------------------------------------

    // Runs what the core asked for; lookups answered from the cache and
    // failed sockets report back at once, which may ask for more.
    void execute_commands() {
        for (;;) {
            _core.take_commands(_commands);
            if (_commands.empty()) {
                return;
            }
            for (command& c : _commands) {
                execute(c);
            }
        }
    }

    void execute(command& c) {
        switch (c.kind) {
            case command_kind::resolve_mx:
                _resolver.resolve_mx(c.name,
                                     [this, name = c.name](const net::mx_answer& a) { _core.dns_answer(name, a); });
                break;
            case command_kind::resolve_host:
                _resolver.resolve_host(c.host,
                                       [this, name = c.name](const net::mx_answer& a) { _core.dns_answer(name, a); });
                break;
            case command_kind::connect: start_connect(c); break;
            case command_kind::send: start_send(c); break;
            case command_kind::close: close_connection(c.conn); break;
        }
    }

    void start_connect(command& c) {
        auto io = std::make_unique<io_conn>();
        io->owner = this;
        io->id = c.conn;
        io->addr = c.addr;
        io->addr_len = c.addr_len;
        for (io_conn::op* op : {&io->connect_op, &io->recv_op, &io->send_op}) {
            op->conn = io.get();
        }
        io->connect_op.fn = &shard::on_connect;
        io->recv_op.fn = &shard::on_recv;
        io->send_op.fn = &shard::on_send;
        io->fd = io::unique_fd(::socket(c.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!io->fd) {
            _core.connected(c.conn, -errno);
            return;
        }
        const int one = 1;
        ::setsockopt(io->fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ++io->ops_in_flight;
        io_uring_prep_connect(_ring.sqe(&io->connect_op), io->fd.get(), reinterpret_cast<const sockaddr*>(&io->addr),
                              io->addr_len);
        _io.emplace(c.conn, std::move(io));
    }

    void start_send(command& c) {
        auto it = _io.find(c.conn);
        assert(it != _io.end() && !it->second->closed);
        io_conn& io = *it->second;
        io.send_buffer.swap(c.data);
        io.send_pieces.swap(c.pieces);
        io.send_offset = 0;
        io.send_total = io.send_buffer.size();
        for (const smtp::body_piece& p : io.send_pieces) {
            io.send_total += p.body->size();
        }
        submit_send(io);
    }

    // Bytes before, between and after at most send_pieces_max bodies; far
    // below the kernel's UIO_MAXIOV (1024).
    static constexpr std::size_t send_iov_max = 2 * send_pieces_max + 1;

    // One send, or with body pieces one sendmsg of the bytes and bodies in
    // order (no copy of a body into the buffer), from send_offset on (shard_io.hpp).
    void submit_send(io_conn& io);

    // The core forgot the connection: no new I/O; the socket closes when the
    // last operation in flight completes.
    void close_connection(conn_id id) {
        auto it = _io.find(id);
        if (it == _io.end()) {
            return;
        }
        io_conn& io = *it->second;
        io.closed = true;
        ::shutdown(io.fd.get(), SHUT_RDWR);  // completes a pending recv
        if (!io.connected && io.ops_in_flight > 0) {
            // A connect that timed out may not end by itself: cancel it.
            io_uring_prep_cancel(_ring.sqe(nullptr), &io.connect_op, 0);
        }
        maybe_destroy(io);
    }

    // ---- completions (shard_io.hpp) ----------------------------------------------

    static void on_connect(io::completion* op, int res, unsigned /*flags*/);
    void arm_recv(io_conn& io);
    static void on_recv(io::completion* op, int res, unsigned flags);
    static void on_send(io::completion* op, int res, unsigned /*flags*/);
    void multishot_refused();

    // An operation's completion is done with its io_conn: a closed one is
    // freed once nothing of it is in flight.
    void release(io_conn& io) {
        --io.ops_in_flight;
        if (io.closed) {
            maybe_destroy(io);
        }
    }

    void maybe_destroy(io_conn& io) {
        if (io.ops_in_flight == 0) {
            _io.erase(io.id);  // closes the socket
        }
    }

    // ---- timer tick ----------------------------------------------------------------

    void arm_tick() {
        _tick_ts = io::timespec_ms(_options.tick.count());
        io_uring_prep_timeout(_ring.sqe(&_tick_op), &_tick_ts, 0, 0);
    }

    static void on_tick(io::completion* c, int /*res*/, unsigned /*flags*/);  // shard_io.hpp

    [[maybe_unused]] unsigned _index;
    shard_options _options;
    shared_journal& _journal;
    io::mailbox<std::unique_ptr<recipient>> _mailbox;
    io::ring _ring;
    std::optional<io::buffer_ring> _buffers;  // after _ring: unregistered first
    bool _multishot = true;                   // with _buffers; false once the kernel refused one
    net::resolver _resolver;
    mail::renderer _renderer;
    net::openssl_channel_factory _tls;  // one per shard: sessions stay on their thread
    delivery_core _core;
    shard_stats& _stats;
    shard_op _eventfd_op;
    shard_op _tick_op;
    std::uint64_t _config_generation = 0;
    unsigned _ticks = 0;  // the reloader's, when the core last took it
    shard_op _stop_op;
    io::unique_fd _stop_fd;
    std::uint64_t _stop_value = 0;
    static constexpr std::uint64_t _one = 1;
    std::atomic<int> _stop_level{0};
    bool _aborted = false;
    clock::time_point _grace_end{};
    std::chrono::system_clock::time_point _wall_now = std::chrono::system_clock::now();
    std::string _ts;
    std::uint64_t _eventfd_value = 0;
    __kernel_timespec _tick_ts{};
    bool _mailbox_signaled = false;
    bool _input_closed = false;
    bool _input_closed_seen = false;
    std::deque<mail_batch> _incoming;
    std::unordered_map<conn_id, std::unique_ptr<io_conn>> _io;
    std::vector<command> _commands;
    std::string _journal_buffer;
};

}  // namespace mxpress::engine

#include "mxpress/engine/shard_io.hpp"
