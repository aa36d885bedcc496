// mxpress/engine/shard.hpp — one delivery shard: a thread, an io_uring, a
// c-ares channel, and every domain whose name hashes to it.
//
// Invariants:
// - Everything here runs on the shard's thread; nothing is shared with other
//   shards except the journal (locked once per batch) and the stats
//   counters (relaxed atomics the reader thread prints).
// - A recipient is owned by exactly one place at a time: a domain's waiting
//   list (MX lookup under way), an MX pool's work queue, a connection (in
//   transaction), or the retry heap; it leaves the shard only with a final
//   journal line. `_pending` counts them; the shard ends when the reader is
//   done and `_pending` is zero.
// - Memory is bounded: the shard takes new recipients from its mailbox only
//   while `_pending < pending_max`.
// - Connections are keyed by MX address and port (pools), shared by every
//   domain that uses that MX. A connection has at most one send in flight;
//   its output is copied out of the SMTP client before each send, so the
//   client may append while a send is in flight.
// - Deadlines (connect, each SMTP phase, idle) are checked by a ring timer
//   tick every tick_ms while the shard has work.
// - TLS (STARTTLS or implicit) sits between the socket and the SMTP client:
//   received ciphertext goes through the connection's tls_stream before the
//   client sees it, and the client's output is encrypted before each send.
//   The single send in flight carries ciphertext, so records stay in order.
//   Pools are keyed by address, port and TLS policy (and the MX name when
//   it is verified); each pool keeps the last TLS session its server gave,
//   so the next connection resumes it.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <unordered_map>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include "mxpress/engine/config.hpp"
#include "mxpress/engine/journal.hpp"
#include "mxpress/engine/recipient.hpp"
#include "mxpress/io/buffer_ring.hpp"
#include "mxpress/io/mailbox.hpp"
#include "mxpress/io/ring.hpp"
#include "mxpress/mail/message_template.hpp"
#include "mxpress/net/dns.hpp"
#include "mxpress/net/tls.hpp"
#include "mxpress/smtp/client.hpp"

namespace mxpress::engine {

// A route that skips MX lookup: DOMAIN (or "*") delivered to HOST:PORT.
struct route {
    std::string domain;   // lowercase; "*" matches every domain
    std::string host;     // IP literal or host name (also the name TLS checks)
    std::string address;  // IP literal to use instead of resolving host (relays)
    std::uint16_t port = 25;
    bool implicit_tls = false;      // TLS from the first byte (port 465)
    std::optional<tls_policy> tls;  // overrides the configured policy (relays)
};

struct shard_options {
    config cfg;
    std::string dns_servers;  // c-ares CSV ("127.0.0.1:5353"); empty = resolv.conf
    std::uint16_t mx_port = 25;
    std::vector<route> routes;
    std::string from;       // envelope sender
    std::string auth_user;  // relay AUTH; empty: none
    std::string auth_password;
    std::size_t pending_max = 50'000;
    std::chrono::milliseconds idle_timeout{2000};
    std::chrono::milliseconds tick{50};
};

// Counters the reader thread reads while shards run.
struct shard_stats {
    std::atomic<std::uint64_t> delivered{0};
    std::atomic<std::uint64_t> bounced{0};
    std::atomic<std::uint64_t> expired{0};
    std::atomic<std::uint64_t> invalid{0};   // rendering failed in the shard
    std::atomic<std::uint64_t> deferred{0};  // temporary failures (each retry counts)
    std::atomic<std::uint64_t> in_flight{0};
    std::atomic<std::uint64_t> connections_opened{0};
    std::atomic<std::uint64_t> sent_bytes{0};
    std::atomic<std::uint64_t> tls_handshakes{0};  // completed
    std::atomic<std::uint64_t> tls_resumed{0};     // of those, resumed sessions
    std::atomic<std::uint64_t> tls_failures{0};    // handshakes that failed or timed out
};

struct domain_state {
    std::string name;
    enum class status { unresolved, resolving, ready } state = status::unresolved;
    std::vector<struct mx_pool*> targets;  // delivery order
    std::vector<std::string> target_names;
    clock::time_point expires{};
    std::vector<recipient*> waiting;  // recipients waiting for the lookup
};

struct connection;

struct mx_pool {
    std::string key;  // "127.0.0.2:25" or "[::1]:25", then "/" and the TLS policy
    sockaddr_storage addr{};
    socklen_t addr_len = 0;
    std::string mx_name;  // host name for the journal, SNI and verification
    tls_policy tls = tls_policy::opportunistic;
    bool implicit_tls = false;
    // Sessions the server handed out, newest last (at most sessions_max).
    // OpenSSL makes a TLS 1.3 session single-use once a resumption with it
    // completes, so new connections take the newest one still resumable;
    // connections started together may share it.
    std::deque<net::ssl_session_ptr> sessions;
    // Opportunistic TLS failed here: plaintext until then (as Postfix does).
    clock::time_point plaintext_until{};
    std::deque<recipient*> work;
    std::vector<connection*> conns;
    clock::time_point down_until{};
    bool dirty = false;
    // A session worked here once. Until then one connection at a time (slow
    // start): a dead host costs one connect, and the others resume the
    // first one's TLS session instead of each doing a full handshake.
    bool proven = false;
};

struct connection {
    struct op : io::completion {
        connection* conn = nullptr;
    };
    class shard* owner = nullptr;
    mx_pool* pool = nullptr;
    int fd = -1;
    smtp::client client;
    op connect_op;
    op recv_op;
    op send_op;
    unsigned ops_in_flight = 0;
    bool connected = false;
    bool shut = false;
    bool session_ready_once = false;  // the session took (or could take) mail once
    bool tls_decided = false;         // STARTTLS was sent, or found unneeded
    bool abandoned = false;           // given up for TLS reasons (the pool already knows)
    bool idle = false;
    bool sending = false;  // a send is in flight (at most one)
    clock::time_point idle_since{};
    clock::time_point deadline = clock::time_point::max();
    std::string send_buffer;
    std::size_t send_offset = 0;
    std::string recv_buffer;               // only without provided buffers (plain recv)
    std::unique_ptr<net::tls_stream> tls;  // set from tls_start (or connect, implicit TLS) on
    bool tls_handshaking = false;
    clock::time_point tls_deadline{};
    std::string tls_plain;  // decrypted input / plaintext output, reused
    // Transactions in flight (two when pipelined back to back); the slot
    // index is the client's tag. `message` is borrowed by the client until
    // the slot's transaction_done.
    struct slot {
        recipient* r = nullptr;
        std::string message;
    };
    slot slots[2];
    std::uint32_t messages = 0;  // transactions started on this connection

    bool busy() const noexcept { return slots[0].r != nullptr || slots[1].r != nullptr; }
    // "TLSv1.3" and such once the handshake is done; "none" otherwise (static strings).
    const char* tls_version() const noexcept { return tls ? tls->version() : "none"; }

    connection(class shard* s, mx_pool* p, const std::string& helo, const smtp::timeouts& t)
        : owner(s), pool(p), client(helo, t) {}
};

class shard {
public:
    shard(unsigned index, const shard_options& options, const mail::message_template& tmpl, shared_journal& journal,
          shard_stats& stats)
        : _index(index),
          _options(options),
          _journal(journal),
          _stats(stats),
          _mailbox(64),
          _ring(4096),
          _resolver(_ring, resolver_options(options)),
          _renderer(tmpl, renderer_options(options)),
          _tls_ctx(net::tls_context::client(options.cfg.tls_ca_file)) {
        try {
            // Multishot receive from one shared pool of buffers: one SQE per
            // connection instead of one per read.
            _buffers.emplace(_ring, 0, recv_buffers_count, recv_buffer_bytes);
        } catch (const std::system_error&) {
            _buffers.reset();  // older kernel: a plain recv per read
        }
        _eventfd_op.fn = &shard::on_mailbox;
        _eventfd_op.owner = this;
        _tick_op.fn = &shard::on_tick;
        _tick_op.owner = this;
    }
    shard(const shard&) = delete;
    shard& operator=(const shard&) = delete;
    ~shard() {
        for (auto& [k, d] : _domains) {
            delete d;
        }
        for (auto& [k, p] : _pools) {
            delete p;
        }
    }

    io::mailbox<recipient*>& mailbox() noexcept { return _mailbox; }

    // The shard's thread body. Returns when every recipient it received has
    // a final outcome and every connection is closed.
    void run() {
        arm_mailbox_read();
        arm_tick();
        while (!finished()) {
            _ring.run(1);
            take_mail();
            schedule();
        }
        flush_journal();
    }

private:
    using mailbox_op = io::tagged_completion<shard>;

    static net::resolver::options resolver_options(const shard_options& o) {
        net::resolver::options r;
        r.servers = o.dns_servers;
        return r;
    }
    static mail::renderer_options renderer_options(const shard_options& o) {
        mail::renderer_options r;
        r.from = o.from;
        return r;
    }

    bool finished() const {
        return _input_closed && _pending == 0 && _connections == 0 && _incoming.empty() && !_resolver.busy();
    }

    // ---- mailbox --------------------------------------------------------

    void arm_mailbox_read() {
        io_uring_prep_read(_ring.sqe(&_eventfd_op), _mailbox.eventfd(), &_eventfd_value, sizeof _eventfd_value, 0);
    }

    static void on_mailbox(io::completion* c, int /*res*/, unsigned /*flags*/) {
        shard* self = static_cast<mailbox_op*>(c)->owner;
        self->_mailbox_signaled = true;
        if (!self->_input_closed) {
            self->arm_mailbox_read();
        }
    }

    void take_mail() {
        // Take more only when what was taken is nearly used up: the mailbox,
        // not this shard, is where the reader's backpressure comes from.
        if (_mailbox_signaled && _incoming.size() < 2) {
            _mailbox_signaled = false;
            if (_mailbox.take_all(_incoming)) {
                _input_closed_seen = true;
            }
        }
        while (!_incoming.empty() && _pending < _options.pending_max) {
            std::vector<recipient*>& batch = _incoming.front();
            for (recipient* r : batch) {
                ++_pending;
                accept(r);
            }
            _incoming.pop_front();
        }
        if (_input_closed_seen && _incoming.empty()) {
            _input_closed = true;
        }
    }

    // ---- routing and DNS ------------------------------------------------

    const route* find_route(std::string_view domain) const {
        const route* star = nullptr;
        for (const route& r : _options.routes) {
            if (r.domain == domain) {
                return &r;
            }
            if (r.domain == "*") {
                star = &r;
            }
        }
        return star;
    }

    void accept(recipient* r) {
        const std::string name(r->domain_name());
        domain_state*& d = _domains[name];
        if (d == nullptr) {
            d = new domain_state;
            d->name = name;
        }
        r->domain = d;
        dispatch(r);
    }

    // Sends a recipient towards its next target, resolving first if needed.
    void dispatch(recipient* r) {
        domain_state* d = r->domain;
        const auto now = clock::now();
        if (!r->started) {
            r->started = true;
            r->first_attempt = now;
        }
        if (d->state == domain_state::status::ready && d->expires <= now) {
            d->state = domain_state::status::unresolved;
        }
        if (d->state == domain_state::status::ready) {
            enqueue(r);
            return;
        }
        d->waiting.push_back(r);
        if (d->state == domain_state::status::resolving) {
            return;
        }
        d->state = domain_state::status::resolving;
        if (const route* rt = find_route(d->name)) {
            net::ip_address a;
            if (net::ip_address::parse(rt->address.empty() ? rt->host : rt->address, a)) {
                net::mx_answer ans;
                ans.status = net::dns_status::ok;
                ans.targets.push_back(net::mx_target{rt->host, 0, {a}});
                resolved(d, ans, rt);
            } else {
                _resolver.resolve_host(rt->host, [this, d, rt](const net::mx_answer& ans) { resolved(d, ans, rt); });
            }
            return;
        }
        _resolver.resolve_mx(d->name, [this, d](const net::mx_answer& ans) { resolved(d, ans, nullptr); });
    }

    // `rt`: the route that named the target (borrowed from the options), or
    // null for MX delivery.
    void resolved(domain_state* d, const net::mx_answer& ans, const route* rt) {
        std::vector<recipient*> waiting;
        waiting.swap(d->waiting);
        if (ans.status != net::dns_status::ok) {
            d->state = domain_state::status::unresolved;
            smtp::reply rep;
            rep.code = 0;
            rep.enhanced = ans.enhanced;
            rep.text = ans.reason;
            for (recipient* r : waiting) {
                if (ans.status == net::dns_status::permanent) {
                    final_outcome(r, outcome_status::bounced, rep, "");
                } else {
                    defer(r, rep, "");
                }
            }
            return;
        }
        d->targets.clear();
        d->target_names.clear();
        const std::uint16_t port = rt != nullptr ? rt->port : _options.mx_port;
        for (const net::mx_target& t : ans.targets) {
            const tls_policy tls = rt != nullptr && rt->tls ? *rt->tls : _options.cfg.tls_for(d->name, t.host);
            const bool implicit = rt != nullptr && rt->implicit_tls;
            for (const net::ip_address& a : t.addresses) {
                d->targets.push_back(pool_for(a, port, t.host, tls, implicit));
                d->target_names.push_back(t.host);
            }
        }
        d->state = domain_state::status::ready;
        d->expires = clock::now() + std::chrono::minutes(5);
        for (recipient* r : waiting) {
            enqueue(r);
        }
    }

    // One pool per address, port and TLS policy, so that domains with
    // different policies never share a session. A verified pool also belongs
    // to one MX name: the name is what the certificate must show.
    mx_pool* pool_for(const net::ip_address& a, std::uint16_t port, const std::string& host, tls_policy tls,
                      bool implicit) {
        std::string key = a.with_port(port);
        key += '/';
        key += to_string(tls);
        if (implicit) {
            key += "/implicit";
        }
        if (tls == tls_policy::verify) {
            key += '/';
            key += host;
        }
        mx_pool*& p = _pools[key];
        if (p == nullptr) {
            p = new mx_pool;
            p->key = a.with_port(port);
            p->tls = tls;
            p->implicit_tls = implicit;
            if (a.family == AF_INET6) {
                auto* sa = reinterpret_cast<sockaddr_in6*>(&p->addr);
                sa->sin6_family = AF_INET6;
                sa->sin6_port = htons(port);
                sa->sin6_addr = a.v6;
                p->addr_len = sizeof(sockaddr_in6);
            } else {
                auto* sa = reinterpret_cast<sockaddr_in*>(&p->addr);
                sa->sin_family = AF_INET;
                sa->sin_port = htons(port);
                sa->sin_addr = a.v4;
                p->addr_len = sizeof(sockaddr_in);
            }
            p->mx_name = host;
        }
        return p;
    }

    // Puts a recipient in the work queue of its current target, skipping
    // targets known to be down; when none is left, defers it.
    void enqueue(recipient* r) {
        domain_state* d = r->domain;
        const auto now = clock::now();
        while (r->mx_index < d->targets.size() && d->targets[r->mx_index]->down_until > now) {
            ++r->mx_index;
        }
        if (r->mx_index >= d->targets.size()) {
            smtp::reply rep = r->last_reply;
            if (rep.code == 0 && rep.text.empty()) {
                rep.code = 0;
                rep.enhanced = "4.4.1";
                rep.text = "no MX host of " + d->name + " answered";
            }
            defer(r, rep, r->last_mx);
            return;
        }
        mx_pool* p = d->targets[r->mx_index];
        p->work.push_back(r);
        mark_dirty(p);
    }

    void mark_dirty(mx_pool* p) {
        if (!p->dirty) {
            p->dirty = true;
            _dirty.push_back(p);
        }
    }

    // ---- outcomes ----------------------------------------------------------

    void final_outcome(recipient* r, outcome_status st, const smtp::reply& rep, const std::string& mx) {
        journal_entry e;
        e.line = r->line;
        e.email = r->email;
        e.status = st;
        e.code = rep.code;
        e.enhanced = rep.enhanced;
        const std::string text = rep.text.find('\n') == std::string::npos ? std::string() : flatten(rep.text);
        e.reply = text.empty() ? std::string_view(rep.text) : std::string_view(text);
        e.mx = mx;
        e.attempts = r->attempts;
        e.tls = r->last_tls;
        append_journal_line(_journal_buffer, e);
        if (_journal_buffer.size() >= 64 * 1024) {
            flush_journal();
        }
        switch (st) {
            case outcome_status::delivered: _stats.delivered.fetch_add(1, std::memory_order_relaxed); break;
            case outcome_status::bounced: _stats.bounced.fetch_add(1, std::memory_order_relaxed); break;
            case outcome_status::expired: _stats.expired.fetch_add(1, std::memory_order_relaxed); break;
            case outcome_status::invalid: _stats.invalid.fetch_add(1, std::memory_order_relaxed); break;
            default: break;
        }
        if (st != outcome_status::delivered) {
            failure_counts[std::string(r->domain_name()) + "\t" + rep.one_line()]++;
        }
        delete r;
        --_pending;
    }

    static std::string flatten(const std::string& s) {
        std::string out = s;
        std::replace(out.begin(), out.end(), '\n', ' ');
        return out;
    }

    // A temporary failure: retry later with exponential backoff, or expire.
    void defer(recipient* r, const smtp::reply& rep, const std::string& mx) {
        _stats.deferred.fetch_add(1, std::memory_order_relaxed);
        r->last_reply = rep;
        r->last_mx = mx;
        const auto now = clock::now();
        const auto& cfg = _options.cfg;
        auto delay = cfg.retry_initial;
        for (std::uint32_t k = 1; k < r->attempts && delay < cfg.retry_max; ++k) {
            delay *= 2;
        }
        delay = std::min(delay, cfg.retry_max);
        if (now + delay >= r->first_attempt + cfg.max_age) {
            final_outcome(r, outcome_status::expired, rep, mx);
            return;
        }
        r->not_before = now + delay;
        r->mx_index = 0;
        _retries.push(retry_item{r->not_before, r});
    }

    void run_retries() {
        const auto now = clock::now();
        while (!_retries.empty() && _retries.top().due <= now) {
            recipient* r = _retries.top().r;
            _retries.pop();
            dispatch(r);
        }
    }

    // ---- scheduling ------------------------------------------------------

    void schedule() {
        while (!_dirty.empty()) {
            mx_pool* p = _dirty.back();
            _dirty.pop_back();
            p->dirty = false;
            // Idle connections take work first.
            for (connection* c : p->conns) {
                if (p->work.empty()) {
                    break;
                }
                if (c->idle && c->client.current_state() == smtp::client::state::ready) {
                    if (clock::now() - c->idle_since >= reuse_check_after) {
                        // Idle a while: RSET checks the session still works;
                        // its ready event puts the connection back to work.
                        c->idle = false;
                        c->client.reset();
                        update_deadline(c);
                        pump(c);
                        continue;
                    }
                    fill(c);
                    update_deadline(c);
                    pump(c);
                }
            }
            if (p->work.empty() || p->down_until > clock::now()) {
                continue;
            }
            std::size_t starting = 0;
            for (connection* c : p->conns) {
                starting += c->session_ready_once ? 0 : 1;
            }
            const std::size_t limit = p->proven ? _options.cfg.connections_max : 1;
            while (p->conns.size() < limit && starting < p->work.size()) {
                open_connection(p);
                ++starting;
            }
        }
        if (_input_closed && _pending == 0) {
            close_idle(true);
        }
    }

    void open_connection(mx_pool* p) {
        auto* c = new connection(this, p, _options.cfg.helo_name, _options.cfg.smtp_timeouts);
        if (!_options.auth_user.empty()) {
            c->client.set_credentials(_options.auth_user, _options.auth_password);
        }
        if (p->implicit_tls) {
            c->client.implicit_tls();
        }
        c->connect_op.fn = &shard::on_connect;
        c->connect_op.conn = c;
        c->recv_op.fn = &shard::on_recv;
        c->recv_op.conn = c;
        c->send_op.fn = &shard::on_send;
        c->send_op.conn = c;
        p->conns.push_back(c);
        ++_connections;
        _stats.connections_opened.fetch_add(1, std::memory_order_relaxed);
        c->fd = ::socket(p->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (c->fd < 0) {
            connection_failed(c, fmt::format("socket: {}", std::strerror(errno)));
            return;
        }
        const int one = 1;
        ::setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->deadline = clock::now() + _options.cfg.connect_timeout;
        ++c->ops_in_flight;
        io_uring_prep_connect(_ring.sqe(&c->connect_op), c->fd, reinterpret_cast<const sockaddr*>(&p->addr),
                              p->addr_len);
    }

    // Completion handlers keep their operation counted until they return, so
    // that nothing they call can free the connection under them; the last
    // step releases it and frees the connection if it was torn down.
    static void on_connect(io::completion* op, int res, unsigned /*flags*/) {
        connection* c = static_cast<connection::op*>(op)->conn;
        shard* self = c->owner;
        if (!c->shut) {
            if (res < 0) {
                self->connection_failed(c, fmt::format("connect to {}: {}", c->pool->key, std::strerror(-res)));
            } else {
                c->connected = true;
                self->arm_recv(c);
                if (c->pool->implicit_tls) {
                    self->start_tls(c);
                }
                if (!c->shut) {
                    self->update_deadline(c);
                }
            }
        }
        self->release(c);
    }

    void release(connection* c) {
        --c->ops_in_flight;
        if (c->shut) {
            maybe_destroy(c);
        }
    }

    static constexpr std::size_t sessions_max = 8;  // per pool
    static constexpr auto plaintext_after_tls_failure = std::chrono::minutes(10);
    static constexpr auto reuse_check_after = std::chrono::seconds(1);
    static constexpr std::uint32_t recv_buffers_count = 512;
    static constexpr std::uint32_t recv_buffer_bytes = 8 * 1024;

    void arm_recv(connection* c) {
        ++c->ops_in_flight;
        if (_buffers) {
            io_uring_sqe* sqe = _ring.sqe(&c->recv_op);
            io_uring_prep_recv_multishot(sqe, c->fd, nullptr, 0, 0);
            sqe->flags |= IOSQE_BUFFER_SELECT;
            sqe->buf_group = _buffers->group();
            return;
        }
        if (c->recv_buffer.empty()) {
            c->recv_buffer.resize(16 * 1024);
        }
        io_uring_prep_recv(_ring.sqe(&c->recv_op), c->fd, c->recv_buffer.data(), c->recv_buffer.size(), 0);
    }

    static void on_recv(io::completion* op, int res, unsigned flags) {
        connection* c = static_cast<connection::op*>(op)->conn;
        shard* self = c->owner;
        const bool more = (flags & IORING_CQE_F_MORE) != 0;  // multishot still armed
        if (res == -ENOBUFS && !c->shut) {
            // Every provided buffer is in use (they come back as soon as each
            // completion is handled): ask again.
            if (!more) {
                self->arm_recv(c);
                self->release(c);
            }
            return;
        }
        if (!c->shut) {
            if (res <= 0) {
                self->input_lost(c, res == 0 ? "closed by the server" : std::strerror(-res));
            } else if (self->_buffers && (flags & IORING_CQE_F_BUFFER)) {
                self->receive_bytes(c, self->_buffers->data(flags, res));
            } else {
                self->receive_bytes(c, std::string_view(c->recv_buffer.data(), static_cast<std::size_t>(res)));
            }
            if (res > 0 && self->_buffers && (flags & IORING_CQE_F_BUFFER)) {
                self->_buffers->recycle(flags);
            }
            self->after_client_input(c);
            if (!more && !c->shut && c->client.current_state() != smtp::client::state::closed) {
                self->arm_recv(c);
            }
        } else if (res > 0 && self->_buffers && (flags & IORING_CQE_F_BUFFER)) {
            self->_buffers->recycle(flags);
        }
        if (!more) {
            self->release(c);
        }
    }

    static void on_send(io::completion* op, int res, unsigned /*flags*/) {
        connection* c = static_cast<connection::op*>(op)->conn;
        shard* self = c->owner;
        c->sending = false;
        if (!c->shut) {
            if (res < 0) {
                c->client.connection_lost(std::strerror(-res));
                self->after_client_input(c);
            } else {
                self->_stats.sent_bytes.fetch_add(static_cast<std::uint64_t>(res), std::memory_order_relaxed);
                c->send_offset += static_cast<std::size_t>(res);
                self->pump(c);
            }
        }
        self->release(c);
    }

    // Starts a send when none is in flight and there is something to send.
    void pump(connection* c) {
        if (c->shut || !c->connected || c->sending) {
            return;
        }
        if (c->send_offset >= c->send_buffer.size()) {
            c->send_offset = 0;
            if (c->tls) {
                // Everything the client wrote since the last send becomes
                // records behind whatever the handshake queued.
                if (!c->tls_handshaking && c->client.has_output()) {
                    c->client.take_output(c->tls_plain);
                    if (c->tls->write(c->tls_plain) != net::tls_stream::result::ok) {
                        teardown(c);
                        return;
                    }
                }
                if (!c->tls->has_output()) {
                    c->send_buffer.clear();
                    return;
                }
                c->tls->take_output(c->send_buffer);
            } else {
                if (!c->client.has_output()) {
                    c->send_buffer.clear();
                    return;
                }
                c->client.take_output(c->send_buffer);  // a swap, not a copy
            }
        }
        c->sending = true;
        ++c->ops_in_flight;
        io_uring_prep_send(_ring.sqe(&c->send_op), c->fd, c->send_buffer.data() + c->send_offset,
                           c->send_buffer.size() - c->send_offset, MSG_NOSIGNAL);
    }

    // ---- TLS -----------------------------------------------------------------

    // Bytes from the socket: through TLS when it is on, then to the client.
    void receive_bytes(connection* c, std::string_view bytes) {
        if (!c->tls) {
            c->client.receive(bytes);
            return;
        }
        c->tls->feed(bytes);
        if (c->tls_handshaking) {
            advance_handshake(c);
            if (c->shut || c->tls_handshaking) {
                return;
            }
        }
        c->tls_plain.clear();
        const auto r = c->tls->read(c->tls_plain);
        keep_session(c);
        if (!c->tls_plain.empty()) {
            c->client.receive(c->tls_plain);
        }
        if (r == net::tls_stream::result::closed) {
            c->client.connection_lost("the server ended TLS");
        } else if (r == net::tls_stream::result::failed) {
            c->client.connection_lost("TLS: " + c->tls->error());
        }
    }

    // The socket ended (EOF or error).
    void input_lost(connection* c, const std::string& why) {
        if (c->tls_handshaking) {
            tls_failed(c, "connection lost during the TLS handshake: " + why);
            return;
        }
        c->client.connection_lost(why);
    }

    // Starts the handshake: after the 220 to STARTTLS, or on connect (implicit TLS).
    void start_tls(connection* c) {
        mx_pool* p = c->pool;
        try {
            c->tls = std::make_unique<net::tls_stream>(_tls_ctx.get(), net::tls_stream::role::client);
            c->tls->set_server_name(p->mx_name);
            if (p->tls == tls_policy::verify) {
                c->tls->verify_peer(p->mx_name);
            }
        } catch (const net::tls_error& e) {
            tls_failed(c, e.what());
            return;
        }
        while (!p->sessions.empty() && SSL_SESSION_is_resumable(p->sessions.back().get()) != 1) {
            p->sessions.pop_back();
        }
        if (!p->sessions.empty()) {
            c->tls->set_session(p->sessions.back().get());
        }
        c->tls_handshaking = true;
        c->tls_deadline = clock::now() + _options.cfg.tls_handshake_timeout;
        advance_handshake(c);
    }

    void advance_handshake(connection* c) {
        const auto r = c->tls->handshake();
        if (r == net::tls_stream::result::want_more) {
            pump(c);
            return;
        }
        if (r != net::tls_stream::result::ok) {
            tls_failed(c, c->tls->error());
            return;
        }
        c->tls_handshaking = false;
        _stats.tls_handshakes.fetch_add(1, std::memory_order_relaxed);
        if (c->tls->resumed()) {
            _stats.tls_resumed.fetch_add(1, std::memory_order_relaxed);
        }
        keep_session(c);
        if (!c->pool->implicit_tls) {
            c->client.tls_established();  // EHLO again, encrypted
        }
        update_deadline(c);
        pump(c);
    }

    // The pool keeps the newest sessions its server handed out.
    void keep_session(connection* c) {
        while (auto s = c->tls->take_new_session()) {
            auto& v = c->pool->sessions;
            v.push_back(std::move(s));
            if (v.size() > sessions_max) {
                v.pop_front();
            }
        }
    }

    // A handshake failed or timed out. Opportunistic: this host gets
    // plaintext for a while and a new connection takes the work. Required or
    // verify: the work moves on (next MX, then a retry) with the reason.
    void tls_failed(connection* c, const std::string& why) {
        note_tls_failure(c, why);
        teardown(c);
    }

    // What a TLS failure means for the pool (see tls_failed); the caller
    // ends the connection.
    void note_tls_failure(connection* c, const std::string& why) {
        _stats.tls_failures.fetch_add(1, std::memory_order_relaxed);
        mx_pool* p = c->pool;
        c->tls_handshaking = false;
        c->abandoned = true;
        if (p->tls == tls_policy::opportunistic && !p->implicit_tls) {
            p->plaintext_until = clock::now() + plaintext_after_tls_failure;
        } else {
            smtp::reply rep;
            rep.enhanced = "4.7.5";
            rep.text = fmt::format("TLS with {} ({}) failed: {}", p->mx_name, p->key, why);
            host_failed(p, rep, true);
        }
    }

    // The session cannot carry mail under its policy (no STARTTLS, or it
    // was refused): no message goes; the work moves on with the reason.
    void tls_unavailable(connection* c, const std::string& why) {
        smtp::reply rep;
        rep.enhanced = "4.7.4";
        rep.text = why;
        c->abandoned = true;
        host_failed(c->pool, rep, true);
        c->client.quit();
    }

    // After the first EHLO: STARTTLS now, or carry on in plaintext, or give up.
    // Returns true when the session may take mail as it is.
    bool decide_tls(connection* c) {
        c->tls_decided = true;
        if (c->client.tls_active()) {
            return true;
        }
        mx_pool* p = c->pool;
        const bool offered = c->client.caps().starttls;
        switch (p->tls) {
            case tls_policy::disabled: return true;
            case tls_policy::opportunistic:
                if (offered && clock::now() >= p->plaintext_until) {
                    c->client.starttls();
                    return false;
                }
                return true;
            case tls_policy::required:
            case tls_policy::verify:
                if (offered) {
                    c->client.starttls();
                } else {
                    tls_unavailable(c, fmt::format("TLS is required ({}), but {} ({}) does not offer STARTTLS",
                                                   to_string(p->tls), p->mx_name, p->key));
                }
                return false;
        }
        return false;
    }

    void after_client_input(connection* c) {
        if (c->shut) {
            return;
        }
        while (auto e = c->client.next_event()) {
            handle_event(c, *e);
            if (c->shut) {
                return;
            }
        }
        fill(c);
        update_deadline(c);
        if (c->client.current_state() == smtp::client::state::closed) {
            teardown(c);
            return;
        }
        pump(c);
    }

    void update_deadline(connection* c) {
        if (c->tls_handshaking) {
            c->deadline = c->tls_deadline;
            return;
        }
        const auto t = c->client.timeout();
        c->deadline = t ? clock::now() + *t : clock::time_point::max();
    }

    void handle_event(connection* c, const smtp::event& e) {
        switch (e.kind) {
            case smtp::event_kind::ready:
                if (!c->tls_decided && !decide_tls(c)) {
                    break;
                }
                c->session_ready_once = true;
                c->pool->down_until = {};
                if (!c->pool->proven) {
                    c->pool->proven = true;
                    mark_dirty(c->pool);  // open the rest now
                }
                break;
            case smtp::event_kind::transaction_done: {
                connection::slot& sl = c->slots[e.tag & 1];
                recipient* r = sl.r;
                sl.r = nullptr;
                if (r != nullptr) {
                    _stats.in_flight.fetch_sub(1, std::memory_order_relaxed);
                    r->last_tls = c->tls_version();
                    const smtp::reply& rep = e.result->recipients.at(0);
                    if (rep.positive()) {
                        final_outcome(r, outcome_status::delivered, rep, c->pool->mx_name);
                    } else if (rep.permanent()) {
                        final_outcome(r, outcome_status::bounced, rep, c->pool->mx_name);
                    } else if (c->client.current_state() == smtp::client::state::closed &&
                               c->client.transactions_completed() > 0 && !r->retried_fresh) {
                        // A reused session ended under this message (the server
                        // dropped it while idle, or said 421): once, a new
                        // connection to the same host takes it first.
                        r->retried_fresh = true;
                        c->pool->work.push_front(r);
                        mark_dirty(c->pool);
                    } else if (c->client.current_state() == smtp::client::state::closed) {
                        // The session broke: try the next MX host now.
                        r->last_reply = rep;
                        r->last_mx = c->pool->mx_name;
                        ++r->mx_index;
                        enqueue(r);
                    } else {
                        defer(r, rep, c->pool->mx_name);
                    }
                }
                break;
            }
            case smtp::event_kind::closed:
                if (c->client.tls_handshake_pending() && !c->abandoned) {
                    // The session ended between STARTTLS and TLS (the client
                    // refuses plaintext that follows the 220): a TLS failure.
                    note_tls_failure(c, e.last_reply.one_line());
                } else if (!c->session_ready_once && !c->abandoned) {
                    // Greeting or EHLO failed: this host is not taking mail now.
                    host_failed(c->pool, e.last_reply);
                }
                break;
            case smtp::event_kind::tls_start: start_tls(c); break;
            case smtp::event_kind::tls_refused:
                if (c->pool->tls == tls_policy::opportunistic) {
                    c->session_ready_once = true;  // plaintext it is
                    c->pool->down_until = {};
                } else {
                    tls_unavailable(c, fmt::format("TLS is required ({}), but {} ({}) refused STARTTLS: {}",
                                                   to_string(c->pool->tls), c->pool->mx_name, c->pool->key,
                                                   e.last_reply.one_line()));
                }
                break;
        }
    }

    // Gives the connection work while its session can take a transaction:
    // one when ready, a second one back to back once the first body is out.
    // Without work it goes idle (or says QUIT when the run is over).
    void fill(connection* c) {
        mx_pool* p = c->pool;
        while (!c->shut && c->client.can_start_transaction()) {
            const bool ready = c->client.current_state() == smtp::client::state::ready;
            if (c->messages >= _options.cfg.messages_per_connection_max || p->work.empty()) {
                if (ready) {
                    if (c->messages >= _options.cfg.messages_per_connection_max || (_input_closed && _pending == 0)) {
                        c->idle = false;
                        c->client.quit();
                    } else if (!c->idle) {
                        c->idle = true;
                        c->idle_since = clock::now();
                    }
                }
                return;
            }
            const unsigned k = c->slots[0].r == nullptr ? 0 : 1;
            connection::slot& sl = c->slots[k];
            recipient* r = p->work.front();
            p->work.pop_front();
            c->idle = false;
            ++r->attempts;
            r->fields(_fields);
            const mail::render_result rr = _renderer.render(_fields, sl.message);
            if (!rr.ok()) {
                smtp::reply rep;
                rep.text = "cannot render: " + rr.error;
                final_outcome(r, outcome_status::invalid, rep, "");
                continue;
            }
            smtp::envelope env;
            env.mail_from = _options.from;
            env.rcpt_to.push_back(r->email);
            env.eight_bit = rr.eight_bit;
            env.smtputf8 = r->smtputf8 || rr.needs_smtputf8;
            sl.r = r;
            ++c->messages;
            _stats.in_flight.fetch_add(1, std::memory_order_relaxed);
            c->client.start_transaction(env, sl.message, k);
            // A transaction refused locally (SIZE, SMTPUTF8) completes at once.
            while (auto e = c->client.next_event()) {
                handle_event(c, *e);
            }
        }
    }

    // Connect failure or a refused session: mark the host down for a while
    // and move its queued work to each recipient's next MX.
    // `force`: the failure is the host's whatever other connections did (TLS).
    void host_failed(mx_pool* p, const smtp::reply& why, bool force = false) {
        const auto now = clock::now();
        bool others_alive = false;
        for (connection* c : p->conns) {
            others_alive = others_alive || c->session_ready_once;
        }
        if (others_alive && !force) {
            return;  // one bad connection; the host itself works
        }
        p->down_until = now + std::min<std::chrono::milliseconds>(_options.cfg.retry_initial, std::chrono::seconds(60));
        std::deque<recipient*> work;
        work.swap(p->work);
        for (recipient* r : work) {
            ++r->attempts;  // this host was tried for it
            r->last_reply = why;
            r->last_mx = p->mx_name;
            ++r->mx_index;
            enqueue(r);
        }
    }

    void connection_failed(connection* c, const std::string& why) {
        smtp::reply rep;
        rep.code = 0;
        rep.enhanced = "4.4.1";
        rep.text = why;
        host_failed(c->pool, rep);
        teardown(c);
    }

    // Ends a connection: no more I/O is started; it is freed when the last
    // operation in flight completes.
    void teardown(connection* c) {
        if (c->shut) {
            return;
        }
        c->shut = true;
        for (connection::slot& sl : c->slots) {
            if (sl.r != nullptr) {
                // Not expected (the client reports every transaction first),
                // but never lose a recipient.
                recipient* r = sl.r;
                sl.r = nullptr;
                _stats.in_flight.fetch_sub(1, std::memory_order_relaxed);
                smtp::reply rep;
                rep.enhanced = "4.4.2";
                rep.text = "connection ended";
                defer(r, rep, c->pool->mx_name);
            }
        }
        if (c->fd >= 0) {
            ::shutdown(c->fd, SHUT_RDWR);  // completes a pending recv
        }
        if (!c->connected && c->ops_in_flight > 0) {
            // A connect that timed out may not end by itself: cancel it.
            io_uring_prep_cancel(_ring.sqe(nullptr), &c->connect_op, 0);
        }
        mark_dirty(c->pool);
        maybe_destroy(c);
    }

    void maybe_destroy(connection* c) {
        if (c->ops_in_flight > 0) {
            return;
        }
        if (c->fd >= 0) {
            ::close(c->fd);
        }
        auto& v = c->pool->conns;
        v.erase(std::remove(v.begin(), v.end(), c), v.end());
        mark_dirty(c->pool);
        --_connections;
        delete c;
    }

    void close_idle(bool all_done) {
        const auto now = clock::now();
        for (auto& [key, p] : _pools) {
            for (connection* c : p->conns) {
                if (c->idle && !c->shut && c->client.current_state() == smtp::client::state::ready &&
                    (all_done || now - c->idle_since >= _options.idle_timeout)) {
                    c->idle = false;
                    c->client.quit();
                    update_deadline(c);
                    pump(c);
                }
            }
        }
    }

    // ---- timer tick -------------------------------------------------------

    void arm_tick() {
        _tick_ts = io::timespec_ms(_options.tick.count());
        io_uring_prep_timeout(_ring.sqe(&_tick_op), &_tick_ts, 0, 0);
    }

    static void on_tick(io::completion* c, int /*res*/, unsigned /*flags*/) {
        shard* self = static_cast<mailbox_op*>(c)->owner;
        self->_resolver.tick();
        self->run_retries();
        self->check_deadlines();
        self->close_idle(false);
        if (!self->finished()) {
            self->arm_tick();
        }
    }

    void check_deadlines() {
        const auto now = clock::now();
        std::vector<connection*> expired;
        for (auto& [key, p] : _pools) {
            for (connection* c : p->conns) {
                if (!c->shut && c->deadline <= now) {
                    expired.push_back(c);
                }
            }
        }
        for (connection* c : expired) {
            if (c->shut) {
                continue;  // torn down by an earlier one's failure
            }
            if (c->tls_handshaking) {
                tls_failed(c, fmt::format("handshake timed out after {}",
                                          format_duration(_options.cfg.tls_handshake_timeout)));
                continue;
            }
            if (!c->connected) {
                connection_failed(c, fmt::format("connect to {}: timed out", c->pool->key));
                continue;
            }
            c->client.timed_out();
            after_client_input(c);
        }
    }

    void flush_journal() { _journal.write_batch(_journal_buffer); }

    struct retry_item {
        clock::time_point due;
        recipient* r;
        bool operator>(const retry_item& o) const { return due > o.due; }
    };

public:
    std::map<std::string, std::uint64_t> failure_counts;  // "domain\treply" -> count; read after run()

private:
    unsigned _index;
    shard_options _options;
    shared_journal& _journal;
    shard_stats& _stats;
    io::mailbox<recipient*> _mailbox;
    io::ring _ring;
    std::optional<io::buffer_ring> _buffers;  // after _ring: unregistered first
    net::resolver _resolver;
    mail::renderer _renderer;
    net::tls_context _tls_ctx;  // one per shard: sessions stay on their thread
    mailbox_op _eventfd_op;
    mailbox_op _tick_op;
    std::uint64_t _eventfd_value = 0;
    __kernel_timespec _tick_ts{};
    bool _mailbox_signaled = false;
    bool _input_closed = false;
    bool _input_closed_seen = false;
    std::deque<std::vector<recipient*>> _incoming;
    std::size_t _pending = 0;
    std::size_t _connections = 0;
    std::unordered_map<std::string, domain_state*> _domains;
    std::unordered_map<std::string, mx_pool*> _pools;
    std::vector<mx_pool*> _dirty;
    std::priority_queue<retry_item, std::vector<retry_item>, std::greater<>> _retries;
    std::vector<std::string_view> _fields;
    std::string _journal_buffer;
};

}  // namespace mxpress::engine
