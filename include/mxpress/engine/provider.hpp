// mxpress/engine/provider.hpp — the limits of a [provider."…"] section as
// the shards share them.
//
// Shards split recipients by domain (shard_router.hpp), so one provider's domains live on
// every shard; a per-shard budget would multiply its limits by the thread
// count. Here each provider is one object the runner creates before the
// shards start and every shard reads through shard_options::providers:
// - max_message_rate is two shared_gcras (one atomic TAT each): slots are
//   booked from one sequence whichever shard books them, so the provider
//   gets its rate, not the rate times the shards; the second is taken when
//   a transaction starts, so mail that queued at a busy host still leaves
//   at the rate (core_routing.hpp and core_sessions.hpp say where each is
//   used).
// - connections_max is one atomic count of open connections: a shard opens
//   one only when try_open() moved the count below the limit, and gives it
//   back when that connection ends. A shard refused here looks again after
//   `recheck` (a short timer, not a spin): the connection that would free a
//   place may be another shard's, which cannot wake it.
// - Places are shared fairly: a shard that was refused says so (the time
//   of its last refusal); while one wants, a shard holding more than its
//   share (connections_max split over the shards that hold or want places,
//   share_of) closes a connection between transactions and takes no new
//   place. Without this the first shard to fill the budget kept it while
//   the other shard's booked slots went by unused (seen: 43 of 50
//   messages/s, 19 under TSan).
// - Adaptive rules (rules.hpp) act on a provider as a whole: one throttle
//   behind a mutex taken only when a reply matches a rule or while a rule
//   holds the provider back; a lock-free flag says when none does.
// - A reloaded configuration (SIGHUP, config_reload.hpp) changes a
//   provider's max_message_rate, connections_max and
//   messages_per_connection_max in place (reload()); its name, match and
//   tls stay as the run started.
// Lock-free otherwise; the objects never move (the table holds them by pointer).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include "mxpress/engine/config_values.hpp"
#include "mxpress/engine/rate.hpp"
#include "mxpress/engine/throttle.hpp"

namespace mxpress::engine {

class provider_state {
public:
    static constexpr std::chrono::milliseconds recheck{100};
    // The send pace's room for lateness: a transaction starts up to a
    // shard tick (50 ms) and a round trip after its slot.
    static constexpr std::chrono::milliseconds send_slack{100};

    explicit provider_state(const provider_config& c)
        : _cfg(c),
          _pace(c.max_message_rate ? *c.max_message_rate : rate{}),
          _send_pace(with_slack(c.max_message_rate ? *c.max_message_rate : rate{}, send_slack)),
          _rate(c.max_message_rate),
          _connections_max(c.connections_max),
          _messages_per_connection_max(c.messages_per_connection_max) {}
    provider_state(const provider_state&) = delete;
    provider_state& operator=(const provider_state&) = delete;

    // name, match and tls; the limits below may change during a run (reload()).
    const provider_config& config() const noexcept { return _cfg; }
    std::uint32_t connections_max() const noexcept { return _connections_max.load(std::memory_order_relaxed); }
    std::uint32_t messages_per_connection_max() const noexcept {
        return _messages_per_connection_max.load(std::memory_order_relaxed);
    }

    // A reloaded section's limits: from now on, for every shard. Counts
    // toward rule triggers start over (the rules may be numbered anew).
    void reload(const provider_config& c) {
        const std::lock_guard<std::mutex> lock(_adapt_mutex);
        _rate = c.max_message_rate;
        _connections_max.store(c.connections_max, std::memory_order_relaxed);
        _messages_per_connection_max.store(c.messages_per_connection_max, std::memory_order_relaxed);
        _throttle.forget_hits();
        apply_locked();
        _pace.forget_bookings();  // each shard books what it parked again (delivery_core::reload)
        _send_pace.forget_bookings();
    }
    shared_gcra& pace() noexcept { return _pace; }            // booked on entry to a host's queue
    shared_gcra& send_pace() noexcept { return _send_pace; }  // taken when a transaction starts

    static constexpr unsigned shards_tracked = 64;  // shards beyond share the last slot

    // Takes a place for one more connection of `shard`; false at
    // connections_max, or when the shard has its share and another wants one.
    // Every place is counted, with a limit or without: a reload may set one.
    bool try_open(unsigned shard, clock::time_point now) noexcept {
        const unsigned s = slot(shard);
        const std::uint32_t max = connections_max();
        if (max == 0) {
            _connections.fetch_add(1, std::memory_order_relaxed);
            _held[s].fetch_add(1, std::memory_order_relaxed);
            return true;
        }
        if (over_share(s, now, 1)) {
            return false;
        }
        std::uint32_t n = _connections.load(std::memory_order_relaxed);
        do {
            if (n >= max) {
                _refused_at[s].store(now.time_since_epoch().count(), std::memory_order_relaxed);
                return false;
            }
        } while (!_connections.compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
        _held[s].fetch_add(1, std::memory_order_relaxed);
        _refused_at[s].store(0, std::memory_order_relaxed);
        return true;
    }
    void closed(unsigned shard) noexcept {
        _held[slot(shard)].fetch_sub(1, std::memory_order_relaxed);
        _connections.fetch_sub(1, std::memory_order_relaxed);
    }
    // Should a connection of `shard` give its place back (between
    // transactions)? When another shard wants one and this one holds more
    // than its share.
    bool should_yield(unsigned shard, clock::time_point now) const noexcept {
        return connections_max() != 0 && over_share(slot(shard), now, 0);
    }
    std::uint32_t connections() const noexcept { return _connections.load(std::memory_order_relaxed); }
    // Should an idle connection of the provider close now, before its
    // idle_timeout? When every place is taken and a shard (this one or
    // another) was refused one lately: its mail waits while the idle
    // connection's host has none. Kept, the idle connection held its place
    // for the whole idle_timeout, and with all the provider's mail queued
    // at hosts without a connection nothing was sent for 2 s.
    bool wants_idle_place(clock::time_point now) const noexcept {
        const std::uint32_t max = connections_max();
        if (max == 0 || connections() < max) {
            return false;
        }
        const std::int64_t fresh = (now - 2 * recheck).time_since_epoch().count();
        return std::any_of(_refused_at.begin(), _refused_at.end(),
                           [&](const auto& t) { return t.load(std::memory_order_relaxed) > fresh; });
    }

    // The places of the shard that comes `rank`th (from 0) of `sharing`
    // shards: connections_max split evenly, the remainder one each to the
    // lowest ranks, and never less than one. Every shard reckons the same
    // split, so the shares add up to the limit: with 3 places and 2 shards
    // one holds 2 and the other 1. (Rounding every share down left a place
    // that each shard took in turn and then had to give back: a connection
    // closed and opened again per turn, 36 in a 12 s run instead of 7, and
    // the connect rate ran out, stalling the provider for up to 0.8 s.)
    static std::uint32_t share_of(unsigned rank, unsigned sharing, std::uint32_t max) noexcept {
        const std::uint32_t n = std::max(1u, sharing);
        return std::max<std::uint32_t>(1, max / n + (rank < max % n ? 1 : 0));
    }

    // ---- counters for the metrics file (relaxed; summed by every shard) -----
    struct counters {
        std::atomic<std::uint64_t> replies_2xx{0};  // replies of its hosts that ended a transaction
        std::atomic<std::uint64_t> replies_4xx{0};
        std::atomic<std::uint64_t> replies_5xx{0};
        std::atomic<std::uint64_t> throttle_wait_ms{0};  // its domains' sends that waited for a slot
    };
    void note_reply(int code) noexcept {
        switch (code / 100) {
            case 2: _counters.replies_2xx.fetch_add(1, std::memory_order_relaxed); break;
            case 4: _counters.replies_4xx.fetch_add(1, std::memory_order_relaxed); break;
            case 5: _counters.replies_5xx.fetch_add(1, std::memory_order_relaxed); break;
            default: break;
        }
    }
    void note_wait(std::uint64_t ms) noexcept { _counters.throttle_wait_ms.fetch_add(ms, std::memory_order_relaxed); }
    const counters& stats() const noexcept { return _counters; }

    // ---- adaptive rules (throttle.hpp), one state for every shard ----------

    // Lock-free: normal for a provider no rule fired on (the common case).
    throttle::state adaptive() const noexcept { return _adaptive.load(std::memory_order_relaxed); }
    void note_sent(clock::time_point now) noexcept { _meter.note(now); }

    // A reply of one of its hosts matched rule `r` (the `index`th).
    bool rule_hit(const rule& r, std::size_t index, clock::time_point now, rule_firing& out, clock::time_point sent) {
        const std::lock_guard<std::mutex> lock(_adapt_mutex);
        const double configured = _rate ? per_second(*_rate) : 0.0;
        if (!_throttle.hit(r, index, now, configured, _meter.measure(now), out, sent)) {
            return false;
        }
        out.scope = "provider:" + _cfg.name;
        apply_locked();
        return true;
    }
    // Moves its throttle's time; returns its state, and the end of a suspension.
    throttle::state advance(clock::time_point now, clock::time_point& until) {
        const std::lock_guard<std::mutex> lock(_adapt_mutex);
        if (_throttle.advance(now)) {
            apply_locked();
        }
        until = _throttle.until();
        return _throttle.current();
    }
    // What a rule does to it now ("scaled to … by …"); empty: nothing.
    std::string describe_hold(clock::time_point now) {
        if (adaptive() == throttle::state::normal) {
            return {};
        }
        const std::lock_guard<std::mutex> lock(_adapt_mutex);
        return _throttle.describe(now);
    }
    template <class F>
    void with_throttle(F&& f) {
        const std::lock_guard<std::mutex> lock(_adapt_mutex);
        f(_throttle);
        apply_locked();
    }

private:
    // The pace the throttle's state means: its rate when scaled, else the configured one.
    void apply_locked() {
        const rate r =
            _throttle.current() == throttle::state::scaled || _throttle.current() == throttle::state::suspended
                ? rate_per_second(_throttle.rate_per_s())
                : (_rate ? *_rate : rate{});
        _pace.set_rate(r);
        _send_pace.set_rate(with_slack(r, send_slack));
        _adaptive.store(_throttle.current(), std::memory_order_relaxed);
    }

    static unsigned slot(unsigned shard) noexcept { return shard < shards_tracked ? shard : shards_tracked - 1; }

    // Would shard `s`, holding `extra` more places, hold more than its share
    // while another shard wants one? (A want is a refusal within 2 rechecks:
    // a shard that still wants asks again every `recheck`.)
    bool over_share(unsigned s, clock::time_point now, std::uint32_t extra) const noexcept {
        const std::int64_t fresh = (now - 2 * recheck).time_since_epoch().count();
        unsigned sharing = 0;
        unsigned before = 0;  // sharing shards in lower slots than s
        bool others_want = false;
        for (unsigned k = 0; k < shards_tracked; ++k) {
            const bool wants = _refused_at[k].load(std::memory_order_relaxed) > fresh;
            if (wants && k != s) {
                others_want = true;
            }
            const bool shares = wants || _held[k].load(std::memory_order_relaxed) > 0 || k == s;
            sharing += shares ? 1 : 0;
            before += (shares && k < s) ? 1 : 0;
        }
        if (!others_want) {
            return false;
        }
        return _held[s].load(std::memory_order_relaxed) + extra > share_of(before, sharing, connections_max());
    }

    const provider_config& _cfg;
    shared_gcra _pace;
    shared_gcra _send_pace;
    std::optional<rate> _rate;  // max_message_rate in force; guarded by _adapt_mutex
    std::atomic<std::uint32_t> _connections_max;
    std::atomic<std::uint32_t> _messages_per_connection_max;
    std::atomic<std::uint32_t> _connections{0};
    counters _counters;
    std::array<std::atomic<std::uint32_t>, shards_tracked> _held{};       // places each shard holds
    std::array<std::atomic<std::int64_t>, shards_tracked> _refused_at{};  // its last refusal (clock ticks); 0: none
    std::mutex _adapt_mutex;  // guards _throttle (taken only when a rule matches, or while one holds it back)
    throttle _throttle;
    std::atomic<throttle::state> _adaptive{throttle::state::normal};
    rate_meter _meter;
};

class provider_table {
public:
    // `c` must outlive the table.
    explicit provider_table(const config& c) {
        for (const provider_config& pc : c.providers) {
            _providers.push_back(std::make_unique<provider_state>(pc));
        }
    }

    // The provider of an MX host (the first section whose match does), or null.
    provider_state* for_host(std::string_view mx_host) const {
        for (const auto& p : _providers) {
            if (p->config().matches(mx_host)) {
                return p.get();
            }
        }
        return nullptr;
    }
    bool empty() const noexcept { return _providers.empty(); }
    provider_state* by_name(std::string_view name) const {
        for (const auto& p : _providers) {
            if (p->config().name == name) {
                return p.get();
            }
        }
        return nullptr;
    }
    template <class F>
    void for_each(F&& f) const {
        for (const auto& p : _providers) {
            f(*p);
        }
    }

private:
    std::vector<std::unique_ptr<provider_state>> _providers;
};

}  // namespace mxpress::engine
