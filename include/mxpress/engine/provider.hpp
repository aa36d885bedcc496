// mxpress/engine/provider.hpp — the limits of a [provider."…"] section as
// the shards share them.
//
// Shards split recipients by domain hash, so one provider's domains live on
// every shard; a per-shard budget would multiply its limits by the thread
// count. Here each provider is one object the runner creates before the
// shards start and every shard reads through shard_options::providers:
// - max_message_rate is two shared_gcras (one atomic TAT each): slots are
//   booked from one sequence whichever shard books them, so the provider
//   gets its rate, not the rate times the shards; the second is taken when
//   a transaction starts, so mail that queued at a busy host still leaves
//   at the rate (core.hpp and core_sessions.hpp say where each is used).
// - connections_max is one atomic count of open connections: a shard opens
//   one only when try_open() moved the count below the limit, and gives it
//   back when that connection ends. A shard refused here looks again after
//   `recheck` (a short timer, not a spin): the connection that would free a
//   place may be another shard's, which cannot wake it.
// Lock-free; the objects never move (the table holds them by pointer).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "mxpress/engine/config_values.hpp"
#include "mxpress/engine/rate.hpp"

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
          _send_pace(with_slack(c.max_message_rate ? *c.max_message_rate : rate{}, send_slack)) {}
    provider_state(const provider_state&) = delete;
    provider_state& operator=(const provider_state&) = delete;

    const provider_config& config() const noexcept { return _cfg; }
    shared_gcra& pace() noexcept { return _pace; }            // booked on entry to a host's queue
    shared_gcra& send_pace() noexcept { return _send_pace; }  // taken when a transaction starts

    // Takes a place for one more connection; false at connections_max.
    bool try_open() noexcept {
        if (_cfg.connections_max == 0) {
            return true;
        }
        std::uint32_t n = _connections.load(std::memory_order_relaxed);
        do {
            if (n >= _cfg.connections_max) {
                return false;
            }
        } while (!_connections.compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
        return true;
    }
    void closed() noexcept {
        if (_cfg.connections_max != 0) {
            _connections.fetch_sub(1, std::memory_order_relaxed);
        }
    }
    std::uint32_t connections() const noexcept { return _connections.load(std::memory_order_relaxed); }

private:
    const provider_config& _cfg;
    shared_gcra _pace;
    shared_gcra _send_pace;
    std::atomic<std::uint32_t> _connections{0};
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

private:
    std::vector<std::unique_ptr<provider_state>> _providers;
};

}  // namespace mxpress::engine
