// mxpress/engine/throttle.hpp — what the adaptive rules (rules.hpp) did to
// one destination: a domain (one shard's) or a provider (every shard's,
// behind provider_state's lock).
//
// One state machine, a transition per event:
//   normal    --hit fires scale-->    scaled (rate = old × factor, >= floor)
//   normal    --hit fires suspend-->  suspended until now + duration
//   any       --hit fires stop-->     stopped (for the rest of the run)
//   scaled    --hit fires scale-->    scaled (× factor again: AIMD)
//   suspended --until passes-->       scaled (old × factor, >= floor): a ramp, not a stampede
//   scaled    --each `recover_every` without a hit--> rate += step × old;
//                                     back to normal once it reaches the old rate
// "The old rate" (base) is the configured max_message_rate, or, when the
// destination has none, the rate it was sending at (rate_meter) when the
// first rule fired. A hit that does not fire (trigger "3/10m" counts) only
// holds recovery back.
//
// A measurement too thin to scale from: with no configured rate, a scale
// rule whose trigger is met while the destination has had fewer than
// throttle::base_messages_min messages started does not fire yet; its hits
// stay counted (within the trigger's span) and the first hit once the meter
// has seen enough fires it. Why wait rather than guess: before that, the
// meter's figure is a count over a window clamped to a second (the first
// message in flight reads as 1/s), and a factor of it held a domain that
// takes hundreds a second at 0.7/s while refusals kept recovery back. Mail the
// receiver defers meanwhile is retried with the usual backoff. Messages
// started, not delivered, are counted: the rate the receiver complains
// about includes what it deferred, and a receiver that defers everything
// could otherwise never be slowed. suspend and stop fire at once whatever
// was measured (a block or an authentication failure needs no rate); a
// suspension's restart rate is then at least the rule's floor.
//
// Nothing here reads the clock or locks: callers pass now and own the object.
#pragma once

#include <algorithm>
#include <atomic>
#include <cassert>
#include <chrono>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "mxpress/engine/rate.hpp"
#include "mxpress/engine/rules.hpp"

namespace mxpress::engine {

// What a rate_meter says at one time: the rate, and how many messages it
// has seen in all (what the rate rests on).
struct measured_rate {
    double per_second = 0;
    std::uint64_t messages = 0;
};

// Messages started at a destination over the last window or so; lock-free,
// so every shard can count a provider's (a race on the roll loses a count
// or two, which an estimate can afford).
class rate_meter {
public:
    static constexpr std::chrono::seconds window{10};

    void note(clock::time_point now) noexcept {
        const std::int64_t n = now.time_since_epoch().count();
        std::int64_t start = _start.load(std::memory_order_relaxed);
        if (start == 0) {
            _start.compare_exchange_strong(start, n, std::memory_order_relaxed);
        } else if (n - start >= std::chrono::nanoseconds(window).count() &&
                   _start.compare_exchange_strong(start, n, std::memory_order_relaxed)) {
            const std::uint64_t c = _count.exchange(0, std::memory_order_relaxed);
            _last.store(static_cast<double>(c) * 1e9 / static_cast<double>(n - start), std::memory_order_relaxed);
        }
        _count.fetch_add(1, std::memory_order_relaxed);
        _total.fetch_add(1, std::memory_order_relaxed);
    }

    // Per second: the last full window's rate, or the current one's when
    // it is higher (a destination that just started).
    double per_second(clock::time_point now) const noexcept {
        const std::int64_t n = now.time_since_epoch().count();
        const std::int64_t start = _start.load(std::memory_order_relaxed);
        const double elapsed = static_cast<double>(std::max<std::int64_t>(n - start, 1'000'000'000));
        const double current =
            start == 0 ? 0.0 : static_cast<double>(_count.load(std::memory_order_relaxed)) * 1e9 / elapsed;
        return std::max(_last.load(std::memory_order_relaxed), current);
    }

    // Every message noted so far.
    std::uint64_t messages() const noexcept { return _total.load(std::memory_order_relaxed); }

    measured_rate measure(clock::time_point now) const noexcept { return {per_second(now), messages()}; }

private:
    std::atomic<std::int64_t> _start{0};
    std::atomic<std::uint64_t> _count{0};
    std::atomic<double> _last{0.0};
    std::atomic<std::uint64_t> _total{0};
};

// A rate of `per_second` as rate.hpp writes one (burst 1).
inline rate rate_per_second(double per_second) {
    rate r;
    per_second = std::clamp(per_second, 1e-6, 1e9);
    r.count = 1;
    r.period = std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 / per_second));
    r.text = per_second >= 1.0 ? fmt::format("{:.4g}/s", per_second) : fmt::format("{:.4g}/min", per_second * 60);
    return r;
}

inline double per_second(const rate& r) {
    return r.unlimited() ? 0.0 : static_cast<double>(r.count) * 1e9 / static_cast<double>(r.period.count());
}

// What a firing did, for the journal, the summary and the metrics.
struct rule_firing {
    std::string rule;
    std::string scope;  // "provider:NAME" or "domain:NAME"
    rule_action action = rule_action::scale;
    double rate_per_s = 0;      // scale: the new rate; suspend: the rate it restarts at
    double base_per_s = 0;      // the rate recovery climbs back to
    clock::time_point until{};  // suspend: when it lifts
    std::string reply;          // the reply that fired it, on one line
};

class throttle {
public:
    enum class state : std::uint8_t { normal, scaled, suspended, stopped };

    // Messages a measured rate must rest on before a scale rule takes it as
    // the old rate (see the header): a count of 20 is known to about a
    // fifth (1/sqrt(20)), finer than the factors rules scale by.
    static constexpr std::uint64_t base_messages_min = 20;

    state current() const noexcept { return _state; }
    double rate_per_s() const noexcept { return _rate; }  // scaled: the rate in force
    clock::time_point until() const noexcept { return _until; }
    const std::string& by() const noexcept { return _by; }  // the rule behind the state

    // A reply matched rule `r`, the `index`th of the rule set. Returns true
    // when this hit fires it (then `out` says what it did). `configured`:
    // the destination's max_message_rate (0: unlimited); `observed`: its
    // recent rate and what that rests on (rate_meter).
    // `sent`: when the transaction the reply answers started. A reply to
    // mail sent before the last firing does not count: the burst of replies
    // to what was in flight then is one signal, not several.
    bool hit(const rule& r, std::size_t index, clock::time_point now, double configured, measured_rate observed,
             rule_firing& out, clock::time_point sent) {
        if (_state == state::stopped) {
            return false;
        }
        _quiet_since = now;  // recovery starts over
        if (sent < _fired_at) {
            return false;
        }
        if (_hits.size() <= index) {
            _hits.resize(index + 1);
        }
        std::deque<clock::time_point>& h = _hits[index];
        h.push_back(now);
        while (!h.empty() && now - h.front() > r.trigger_span) {
            h.pop_front();
        }
        while (h.size() > r.trigger_count) {
            h.pop_front();  // bounded: the last trigger_count hits are all it needs
        }
        if (h.size() < r.trigger_count) {
            return false;
        }
        if (r.action == rule_action::scale && _state == state::normal && configured <= 0 &&
            observed.messages < base_messages_min) {
            return false;  // no old rate to scale yet: the hits wait for one (the header)
        }
        h.clear();
        _fired_at = now;
        if (_state == state::normal) {
            _base = configured > 0 ? configured : std::max(observed.per_second, per_second(r.floor));
        }
        assert(_base > 0);
        const double floor = per_second(r.floor);
        out.rule = r.name;
        out.action = r.action;
        out.base_per_s = _base;
        _by = r.name;
        switch (r.action) {
            case rule_action::scale:
                _rate = std::max(floor, (_state == state::scaled ? _rate : _base) * r.factor);
                _state = state::scaled;
                _step = r.recover_step;
                _every = r.recover_every;
                out.rate_per_s = _rate;
                break;
            case rule_action::suspend:
                _state = state::suspended;
                _until = now + r.duration;
                _quiet_since = _until;
                _rate = std::max(floor, _base * r.factor);  // from when it lifts
                _step = r.recover_step;
                _every = r.recover_every;
                out.rate_per_s = _rate;
                out.until = _until;
                break;
            case rule_action::stop: _state = state::stopped; break;
        }
        return true;
    }

    // Time passed: a suspension lifts, a scaled rate recovers a step per
    // quiet `every`. Returns true when the rate in force changed.
    bool advance(clock::time_point now) {
        bool changed = false;
        if (_state == state::suspended && now >= _until) {
            _state = state::scaled;
            _quiet_since = now;
            changed = true;
        }
        if (_state == state::scaled && _every.count() > 0 && now - _quiet_since >= _every) {
            const auto steps = (now - _quiet_since) / _every;  // > 0
            _quiet_since += steps * _every;
            _rate += static_cast<double>(steps) * _step * _base;
            if (_rate >= _base) {
                _state = state::normal;
                _rate = 0;
                _hits.clear();
            }
            changed = true;
        }
        return changed;
    }

    // What it does to its destination now, for the progress line:
    // "scaled to 1.50/s by gmail-rate", "suspended 3h59m by ms-block",
    // "stopped by gmail-auth"; empty when normal.
    std::string describe(clock::time_point now) const {
        switch (_state) {
            case state::normal: return {};
            case state::scaled: return fmt::format("scaled to {:.2f}/s by {}", _rate, _by);
            case state::suspended: {
                const auto left =
                    std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::seconds>(_until - now).count());
                const std::string t = left < 60     ? fmt::format("{}s", left)
                                      : left < 3600 ? fmt::format("{}m{:02}s", left / 60, left % 60)
                                                    : fmt::format("{}h{:02}m", left / 3600, left % 3600 / 60);
                return fmt::format("suspended {} more by {}", t, _by);
            }
            case state::stopped: return "stopped by " + _by;
        }
        return {};
    }

    // A reloaded configuration (SIGHUP) may number its rules differently:
    // the hits counted toward triggers start over. The state in force stays.
    void forget_hits() noexcept { _hits.clear(); }

    // A resumed run takes over what the last one left (journal event lines).
    void restore_scaled(double rate, double base, double step, std::chrono::milliseconds every, clock::time_point now,
                        const std::string& by) {
        _state = state::scaled;
        _rate = rate;
        _base = std::max(base, rate);
        _step = step;
        _every = every;
        _quiet_since = now;
        _by = by;
    }
    void restore_suspended(clock::time_point until, double rate_after, double base, double step,
                           std::chrono::milliseconds every, const std::string& by) {
        restore_scaled(rate_after, base, step, every, until, by);
        _state = state::suspended;
        _until = until;
    }

private:
    state _state = state::normal;
    double _rate = 0;  // scaled (and after a suspension): messages per second
    double _base = 0;  // what recovery climbs back to
    double _step = 0;  // of _base, per quiet _every
    std::chrono::milliseconds _every{0};
    clock::time_point _quiet_since{};  // no hit since
    clock::time_point _until{};
    clock::time_point _fired_at{};  // the last firing
    std::string _by;
    std::vector<std::deque<clock::time_point>> _hits;  // per rule index, the recent hits (at most trigger_count)
};

}  // namespace mxpress::engine
