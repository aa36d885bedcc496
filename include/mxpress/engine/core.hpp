// mxpress/engine/core.hpp — the delivery core: every delivery decision of a
// shard, with no I/O in it.
//
// Events in (recipient_arrived, dns_answer, connected, received, input_lost,
// send_done, tick), commands out (commands.hpp), outcomes to a sink, time
// from set_now(). The io_uring shard (shard.hpp) and the simulator
// (tests/sim) drive the same code. Which file owns which decision:
//   core.hpp           intake, outcomes, retries and expiry, stopping; the
//                      class, its state, and where each member is defined
//   core_routing.hpp   routing and MX answers, pools and their limits,
//                      queues (paced by max_message_rate)
//   core_schedule.hpp  the driver's connection events, the scheduler,
//                      timers: connections opened, given work, closed
//   core_sessions.hpp  one connection's life: SMTP events, filling it
//                      with transactions, failures and teardown
//   core_rules.hpp     the adaptive rules: replies counted, holds
//   core_tls.hpp       a connection's TLS: handshake, and the policy's word
//   core_checks.hpp    check_invariants() and describe_holdings()
//   tls_decision.hpp   what a TLS policy means for a session
//   retry.hpp          the backoff schedule
//   domain.hpp, pool.hpp, connection.hpp   the state each of them keeps
//
// Invariants (check_invariants() verifies them; the simulator calls it):
// - A recipient is owned by exactly one place: its domain's waiting list
//   (lookup under way), a pool's work queue, a connection's slot (in a
//   transaction), or the retry queue; it leaves only through the outcome
//   sink, once, with a final outcome. `_pending` counts them.
// - A pool never has more than connections_max connections, and one at a
//   time until a session there worked (slow start).
// - Every wait has a deadline; tick() acts on each one it finds passed.
// - Nothing here blocks, allocates per byte, or reads the system clock.
#pragma once

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "mxpress/engine/commands.hpp"
#include "mxpress/engine/connection.hpp"
#include "mxpress/engine/domain.hpp"
#include "mxpress/engine/options.hpp"
#include "mxpress/engine/pool.hpp"
#include "mxpress/engine/retry.hpp"
#include "mxpress/engine/tls_decision.hpp"
#include "mxpress/mail/message_template.hpp"
#include "mxpress/net/dns.hpp"
#include "mxpress/net/secure_channel.hpp"

namespace mxpress::engine {

// Failures of one domain with one reply code, for the summary. Keyed by
// code, not text (bounces quote addresses): memory follows domains × codes.
struct failure_count {
    std::uint64_t count = 0;
    std::string example;  // the first reply seen, on one line
};

// core_rules.hpp: a resumed run takes over the last run's rule state.
inline void restore_throttle(throttle& t, const journal_rule_event& ev, const rule_set& rules, clock::time_point now,
                             std::chrono::system_clock::time_point wall_now);

struct rule_tally {
    std::uint64_t count = 0;
    rule_firing last;
};

class delivery_core {
public:
    // Named limits (not worth a config key).
    static constexpr auto reuse_check_after = std::chrono::seconds(1);
    static constexpr auto eviction_every = std::chrono::seconds(30);
    // A host that refused a session beyond the ones it serves is asked for
    // one more after this, doubling while it keeps refusing.
    static constexpr std::chrono::milliseconds probe_wait_first = std::chrono::seconds(5);
    static constexpr std::chrono::milliseconds probe_wait_max = std::chrono::minutes(10);

    // Borrowed: everything passed here must outlive the core.
    delivery_core(const shard_options& options, mail::renderer& renderer, net::secure_channel_factory& tls,
                  outcome_sink& sink, shard_stats& stats)
        : _o(options), _renderer(renderer), _tls(tls), _sink(sink), _stats(stats) {}
    delivery_core(const delivery_core&) = delete;
    delivery_core& operator=(const delivery_core&) = delete;

    // ---- time and commands ------------------------------------------------

    void set_now(clock::time_point t) noexcept {
        assert(t >= _now || _now == clock::time_point{});
        _now = t;
    }
    clock::time_point now() const noexcept { return _now; }

    // Moves the commands made since the last call onto `out` (cleared first).
    void take_commands(std::vector<command>& out) {
        out.clear();
        out.swap(_commands);
    }

    // ---- events ---------------------------------------------------------------

    // A recipient for this shard. Precondition: accepting().
    void recipient_arrived(std::unique_ptr<recipient> r) {
        assert(r != nullptr);
        ++_pending;
        _held_bytes += r->values.size();
        domain_state& d = _domains.get(r->domain_name());
        if (d.connections_max == 0) {
            apply_limits(d);  // new in this shard
        }
        ++d.held;
        r->domain = &d;
        if (r->not_before > _now) {
            // Left deferred by a stopped run (--resume): due at its time.
            r->started = true;
            r->first_attempt = _now;
            park(*r);
            const auto due = r->not_before;
            _retries.push(due, std::move(r));
            return;
        }
        dispatch(std::move(r));
    }

    // No more recipients will arrive.
    void input_closed() noexcept { _input_closed = true; }

    // The answer to resolve_mx or resolve_host for `domain`.
    void dns_answer(const std::string& domain, const net::mx_answer& ans) {
        domain_state* d = _domains.find(domain);
        if (d == nullptr || d->state != domain_state::status::resolving) {
            return;  // not asked (a driver's duplicate): nothing waits for it
        }
        resolved(*d, ans);
    }

    // The following are in core_schedule.hpp.
    void connected(conn_id id, int res);
    void received(conn_id id, std::string_view bytes);
    void input_lost(conn_id id, std::string_view why);
    void send_done(conn_id id, int res, std::string& buffer);

    // The clock moved: retries due, deadlines passed, idle connections.
    // A reloaded configuration (SIGHUP; config_reload.hpp says what it may
    // change): limits, rules and timeouts from now on (core_rules.hpp).
    void reload(std::shared_ptr<const config> c);

    void tick();

    // Gives queued work to connections and opens new ones. Call after each
    // batch of events (the shard: once per loop turn).
    void schedule();

    // ---- stopping (SIGINT, SIGTERM) ---------------------------------------------

    // Stops taking work: no transaction starts from now on and nothing more
    // arrives; transactions in flight finish (their outcomes as usual), and
    // every recipient queued, waiting for a lookup or parked for a retry
    // leaves through unfinished_outcome() with its next attempt time.
    // finished() turns true once the connections closed (QUIT).
    void drain() {
        if (_draining) {
            return;
        }
        _draining = true;
        _input_closed = true;
        std::vector<std::unique_ptr<recipient>> out;
        _domains.for_each([&](domain_state& d) {
            for (auto& r : d.waiting) {
                out.push_back(std::move(r));
            }
            d.waiting.clear();
        });
        _pools.for_each([&](mx_pool& p) {
            for (auto& r : p.work) {
                out.push_back(std::move(r));
            }
            p.work.clear();
        });
        for (auto& r : out) {
            leave_unfinished(std::move(r), _now, false);
        }
        out.clear();
        _retries.pop_due(clock::time_point::max(), out);
        for (auto& r : out) {
            const auto due = r->not_before;
            leave_unfinished(std::move(r), due, false);
        }
        close_idle(true);
    }

    // The grace period is over (or a second signal came): every connection
    // is torn down now. A recipient in a transaction leaves in doubt (the
    // server may have taken it); returns how many did.
    std::size_t abort_connections() {
        drain();
        std::size_t doubtful = 0;
        for (auto& [id, cp] : _conns) {
            connection& c = *cp;
            for (connection::slot& sl : c.slots) {
                if (sl.r != nullptr) {
                    _stats.in_flight.fetch_sub(1, std::memory_order_relaxed);
                    sl.r->last_mx = c.pool->mx_name;
                    sl.r->last_ip = c.pool->key;
                    sl.r->last_tls = c.tls_version();
                    leave_unfinished(std::move(sl.r), _now, true);
                    ++doubtful;
                }
            }
            teardown(c);
        }
        reap();
        return doubtful;
    }

    bool draining() const noexcept { return _draining; }

    // ---- state ----------------------------------------------------------------

    // Room for more recipients (options.hpp: the intake bounds).
    bool accepting() const noexcept {
        return _pending - _retries.size() < _cfg->pending_max && _held_bytes < _o.pending_bytes_max &&
               _retries.size() < _o.deferred_max;
    }
    std::size_t held_bytes() const noexcept { return _held_bytes; }
    std::size_t pending() const noexcept { return _pending; }
    std::size_t connections() const noexcept { return _conns.size(); }
    bool finished() const noexcept { return _input_closed && _pending == 0 && _conns.empty(); }
    const std::map<std::pair<std::string, std::string>, failure_count>& failures() const noexcept { return _failures; }
    // Rule firings by (rule, scope): how many, and the last (core_rules.hpp).
    // Domains a rule holds back now (scaled, suspended or stopped), one of
    // them described; forgets those a rule let go. O(domains a rule fired on).
    struct held_summary {
        std::uint32_t count = 0;
        std::string example;  // "gmail.com: suspended 3h59m more by ms-block"
    };
    held_summary held_destinations();

    const std::map<std::pair<std::string, std::string>, rule_tally>& rule_tallies() const noexcept {
        return _rule_tallies;
    }

    // The earliest time tick() has something to do (max when nothing waits).
    clock::time_point next_wakeup() const {
        clock::time_point t = _retries.next_due();
        if (!_probes.empty()) {
            t = std::min(t, _probes.top().first);
        }

        for (const auto& [id, c] : _conns) {
            t = std::min(t, c->deadline);
            if (c->state == conn_state::idle) {
                t = std::min(t, c->idle_since + _cfg->idle_timeout);
            }
        }
        return t;
    }

    // Walks every place a recipient can be and checks the counts and limits;
    // returns what is wrong ("" when all holds). O(domains + pools + connections).
    std::string check_invariants() const;

    // Where the recipients are held right now, place by place (diagnostics
    // for the simulator and for tests).
    std::string describe_holdings() const;

    // Calls f(const connection&) for each connection (simulator checks).
    template <class F>
    void for_each_connection(F&& f) const {
        for (const auto& [id, c] : _conns) {
            f(*c);
        }
    }

private:
    bool run_over() const noexcept { return _input_closed && _pending == 0; }

    // ---- routing and MX answers (core_routing.hpp) ----------------------------

    void dispatch(std::unique_ptr<recipient> r);
    void resolved(domain_state& d, const net::mx_answer& ans);
    mx_pool& pool_for(const domain_state& d, const net::ip_address& a, std::uint16_t port, const std::string& host,
                      tls_policy tls, bool implicit);
    void release_targets(domain_state& d);
    static void set_pool_limits(mx_pool& p, const domain_state& d);
    void set_limits(domain_state& d);
    void apply_limits(domain_state& d);
    void enqueue(std::unique_ptr<recipient> r);
    void enqueue_now(std::unique_ptr<recipient> r);
    void mark_dirty(mx_pool& p);

    // ---- outcomes and retries -----------------------------------------------

    void final_outcome(std::unique_ptr<recipient> r, outcome_status st, const smtp::reply& rep, std::string_view mx) {
        _sink.final_outcome(*r, st, rep, mx, r->last_tls);
        switch (st) {
            case outcome_status::delivered: shard_stats::add(_stats.delivered); break;
            case outcome_status::bounced: shard_stats::add(_stats.bounced); break;
            case outcome_status::expired: shard_stats::add(_stats.expired); break;
            case outcome_status::invalid: shard_stats::add(_stats.invalid); break;
            case outcome_status::in_doubt: shard_stats::add(_stats.in_doubt); break;
            default: break;
        }
        if (st != outcome_status::delivered) {
            failure_count& f = _failures[{std::string(r->domain_name()), fmt::format("{} {}", rep.code, rep.enhanced)}];
            if (f.count++ == 0) {
                f.example = rep.one_line();
            }
        }
        assert(r->domain->held > 0);
        --r->domain->held;
        assert(_held_bytes >= r->values.size());
        _held_bytes -= r->values.size();
        assert(_pending > 0);
        --_pending;
    }

    // The run stops before this recipient's end: the sink records it as
    // not final, due again at `next`.
    void leave_unfinished(std::unique_ptr<recipient> r, clock::time_point next, bool in_doubt) {
        _sink.unfinished_outcome(*r, next, in_doubt);
        assert(r->domain->held > 0);
        --r->domain->held;
        assert(_held_bytes >= r->values.size());
        _held_bytes -= r->values.size();  // 0 when parked
        assert(_pending > 0);
        --_pending;
    }

    // A temporary failure: retry later with exponential backoff, or expire.
    void defer(std::unique_ptr<recipient> r, const smtp::reply& rep, std::string_view mx) {
        shard_stats::add(_stats.deferred);
        r->paced = false;  // a slot booked before is spent: the retry books its own
        r->last_reply = rep;
        r->last_mx = mx;
        const auto delay = retry_delay(*_cfg, r->attempts);
        if (_now + delay >= r->first_attempt + _cfg->max_age) {
            const smtp::reply last = r->last_reply;
            const std::string last_mx = r->last_mx;
            final_outcome(std::move(r), outcome_status::expired, last, last_mx);
            return;
        }
        r->not_before = _now + delay;
        r->mx_index = 0;
        if (_draining) {
            const auto due = r->not_before;
            leave_unfinished(std::move(r), due, false);
            return;
        }
        park(*r);
        const auto due = r->not_before;
        _retries.push(due, std::move(r));
    }

    // A recipient waiting for a retry keeps only what routes it; its merge
    // fields are read again from the file when it is due.
    void park(recipient& r) {
        if (_o.rows == nullptr || r.parked || r.row_size == 0) {
            return;
        }
        _held_bytes -= r.values.size();
        std::string().swap(r.values);
        std::vector<std::uint32_t>().swap(r.ends);
        r.parked = true;
    }

    // Throws std::runtime_error when the file changed under the run.
    void unpark(recipient& r) {
        if (!r.parked) {
            return;
        }
        _o.rows->read(r.row_offset, r.row_size, r.line, r.email, r.values, r.ends);
        r.parked = false;
        _held_bytes += r.values.size();
    }

    // ---- scheduling (core_schedule.hpp) ---------------------------------------

    void schedule_pool(mx_pool& p);
    void open_connection(mx_pool& p);
    void close_idle(bool all_done);
    void check_deadlines();

    // ---- connections (core_sessions.hpp) --------------------------------------

    connection* find(conn_id id) {
        auto it = _conns.find(id);
        return it == _conns.end() || it->second->state == conn_state::ended ? nullptr : it->second.get();
    }
    void receive_bytes(connection& c, std::string_view bytes);
    void after_client_input(connection& c);
    void handle_event(connection& c, const smtp::event& e);
    void transaction_done(connection& c, const smtp::event& e);
    void session_works(connection& c);
    void fill(connection& c);
    bool may_send(const recipient& r, clock::time_point& when);
    void pump(connection& c);
    void update_deadline(connection& c);
    void start_tls(connection& c);
    void handshake_progress(connection& c, net::secure_channel::progress p);
    tls_decision decide(const connection& c, tls_step step, std::string_view detail = {}) const;
    void tls_failed(connection& c, const std::string& why);
    void note_tls_failure(connection& c, const std::string& why);
    void tls_unavailable(connection& c, const tls_decision& d);
    void host_failed(mx_pool& p, const smtp::reply& why, bool force = false);
    void connection_failed(connection& c, const std::string& why);
    void learn_ceiling(mx_pool& p);
    static bool others_carry_mail(const mx_pool& p) noexcept;  // a refusal now is its connection limit
    void plan_probe(mx_pool& p);
    void teardown(connection& c);
    void reap();
    static std::size_t staying(const mx_pool& p) noexcept;

    // ---- adaptive rules (core_rules.hpp) ---------------------------------------

    struct hold {
        throttle::state state = throttle::state::normal;
        clock::time_point until{};  // suspended: when it lifts
    };
    const rule* apply_rules(domain_state* d, provider_state* prov, const smtp::reply& rep, clock::time_point sent,
                            bool connection_limit = false);
    bool scaled(const domain_state& d) const noexcept;
    void rebook_scaled(mx_pool& p, domain_state& d, clock::time_point when);
    void refresh_pace(domain_state& d);
    hold held(const recipient& r);
    bool hold_back(std::unique_ptr<recipient>& r);
    void hold_back_queue(mx_pool& p);
    void repool(domain_state& d);

    void evict_unused() {
        _domains.evict_unused([this](domain_state& d) { release_targets(d); });
        _pools.evict_unused(_now);
    }

    const shard_options& _o;
    // The configuration in force: _o.cfg, until a reload replaces it.
    const config* _cfg = &_o.cfg;
    std::shared_ptr<const config> _cfg_owner;
    mail::renderer& _renderer;
    net::secure_channel_factory& _tls;
    outcome_sink& _sink;
    shard_stats& _stats;

    clock::time_point _now{};
    clock::time_point _last_eviction{};
    bool _input_closed = false;
    bool _draining = false;  // drain(): no transaction starts, nothing queues
    std::size_t _pending = 0;
    std::size_t _held_bytes = 0;  // merge fields of the recipients held (not parked)
    conn_id _next_conn_id = 1;
    std::vector<command> _commands;
    domain_table _domains;
    pool_table _pools;
    std::unordered_map<conn_id, std::unique_ptr<connection>> _conns;
    std::vector<mx_pool*> _dirty;
    // Pools that wait to open a connection, by when they may: a learned
    // ceiling's probe, or max_connection_rate (a pool evicted meanwhile is
    // skipped: looked up by key).
    std::priority_queue<std::pair<clock::time_point, std::string>,
                        std::vector<std::pair<clock::time_point, std::string>>, std::greater<>>
        _probes;
    std::vector<conn_id> _ended;  // torn down during this event: freed by reap()
    retry_queue _retries;
    std::vector<std::string_view> _fields;  // reused for each render
    std::map<std::pair<std::string, std::string>, failure_count> _failures;
    std::map<std::pair<std::string, std::string>, rule_tally> _rule_tallies;
    std::set<std::string> _held_domains;  // a rule fired on each (held_destinations() forgets them)
};

}  // namespace mxpress::engine

#include "mxpress/engine/core_checks.hpp"
#include "mxpress/engine/core_routing.hpp"
#include "mxpress/engine/core_rules.hpp"
#include "mxpress/engine/core_schedule.hpp"
#include "mxpress/engine/core_sessions.hpp"
#include "mxpress/engine/core_tls.hpp"
