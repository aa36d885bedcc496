// mxpress/engine/run_metrics.hpp — the metrics file of a `send` run
// (--metrics-textfile): the shards' and the reader's counters summed into
// one snapshot, and the reporter that writes it every metrics_interval from
// the runner's sampler thread, then once more at the end (runner.hpp).
// The exposition format itself is metrics.hpp's.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <utility>

#include "mxpress/engine/metrics.hpp"
#include "mxpress/engine/provider.hpp"
#include "mxpress/engine/shard_threads.hpp"

namespace mxpress::engine {

// The counters now, summed over the shards. Relaxed loads: each counter is
// exact, their sum a view of a moment (the final one, after the shards
// ended, is exact).
inline metrics_snapshot sample_metrics(const shard_threads& shards, const reader_counts& rc,
                                       const provider_table* providers = nullptr) {
    auto get = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    metrics_snapshot m;
    m.rows = get(rc.rows);
    m.skipped = get(rc.skipped);
    m.invalid = get(rc.invalid);
    m.suppressed = get(rc.suppressed);
    m.late = get(rc.late);
    for (unsigned i = 0; i < shards.size(); ++i) {
        const shard_stats& s = shards.stats(i);
        m.delivered += get(s.delivered);
        m.bounced += get(s.bounced);
        m.expired += get(s.expired);
        m.in_doubt += get(s.in_doubt);
        m.invalid += get(s.invalid);
        m.attempts += get(s.attempts);
        m.throttled += get(s.throttled);
        m.throttle_wait_ms += get(s.throttle_wait_ms);
        m.rule_scaled += get(s.rule_scaled);
        m.rule_suspended += get(s.rule_suspended);
        m.rule_stopped += get(s.rule_stopped);
        m.deferrals += get(s.deferred);
        m.replies_2xx += get(s.replies_2xx);
        m.replies_4xx += get(s.replies_4xx);
        m.replies_5xx += get(s.replies_5xx);
        m.sent_bdat += get(s.sent_bdat);
        m.sent_data += get(s.sent_data);
        m.in_flight += get(s.in_flight);
        const std::uint64_t opened = get(s.connections_opened);
        const std::uint64_t closed = get(s.connections_closed);  // read after: may pass `opened`
        m.connections_opened += opened;
        m.connections_open += opened > closed ? opened - closed : 0;
        m.tls_handshakes += get(s.tls_handshakes);
        m.tls_resumed += get(s.tls_resumed);
        m.tls_failures += get(s.tls_failures);
        m.sent_bytes += get(s.sent_bytes);
    }
    if (providers != nullptr) {
        providers->for_each([&](const provider_state& p) {
            metrics_snapshot::provider_sample ps;
            ps.name = p.config().name;
            ps.replies_2xx = get(p.stats().replies_2xx);
            ps.replies_4xx = get(p.stats().replies_4xx);
            ps.replies_5xx = get(p.stats().replies_5xx);
            ps.throttle_wait_ms = get(p.stats().throttle_wait_ms);
            ps.connections_open = p.connections();
            m.providers.push_back(std::move(ps));
        });
    }
    return m;
}

// The metrics file of one run: sampled by the runner's sampler thread, then
// once more (final) by the reader after that thread ended. A write that
// fails is reported once on stderr and never stops the run.
class metrics_reporter {
public:
    metrics_reporter(std::string dir, std::chrono::milliseconds interval, std::string run_id, std::string version,
                     std::chrono::system_clock::time_point start)
        : _dir(std::move(dir)), _interval(interval) {
        _base.run = std::move(run_id);
        _base.version = std::move(version);
        _base.start_time = unix_seconds(start);
        _base.last_progress_time = _base.start_time;
    }

    // How often the sampler looks: progress is timed to this, at worst.
    std::chrono::milliseconds sample_period() const noexcept {
        return std::min<std::chrono::milliseconds>(_interval, progress_resolution);
    }

    // Notes progress; writes the file when the interval has passed (always when final).
    void sample(const shard_threads& shards, const reader_counts& rc, bool final,
                const provider_table* providers = nullptr) {
        const auto now = std::chrono::steady_clock::now();
        metrics_snapshot m = sample_metrics(shards, rc, providers);
        const std::uint64_t progress =
            m.delivered + m.bounced + m.expired + m.in_doubt + m.invalid + m.suppressed + m.late + m.deferrals;
        if (progress != _progress) {
            _progress = progress;
            _base.last_progress_time = unix_seconds(std::chrono::system_clock::now());
        }
        if (!final && _written && now - _last_write < _interval) {
            return;
        }
        _written = true;
        _last_write = now;
        m.run = _base.run;
        m.version = _base.version;
        m.start_time = _base.start_time;
        m.last_progress_time = _base.last_progress_time;
        m.ended = final;
        try {
            write_textfile(_dir, m.run, exposition(m));
        } catch (const std::exception& e) {
            if (!_warned) {
                _warned = true;
                std::fprintf(stderr, "\nmxpress: metrics not written (the run goes on): %s\n", e.what());
            }
        }
    }

private:
    static constexpr std::chrono::milliseconds progress_resolution{1000};
    static double unix_seconds(std::chrono::system_clock::time_point t) {
        return std::chrono::duration<double>(t.time_since_epoch()).count();
    }

    std::string _dir;
    std::chrono::milliseconds _interval;
    metrics_snapshot _base;  // run, version and times
    std::uint64_t _progress = 0;
    bool _written = false;
    bool _warned = false;
    std::chrono::steady_clock::time_point _last_write;
};

}  // namespace mxpress::engine
