// mxpress/engine/rate.hpp — rate limits as operators write them ("10/s",
// "3000/min,burst=50", "unlimited") and the limiter that enforces them.
//
// The limiter is GCRA (the generic cell rate algorithm): one time point per
// limit, the theoretical arrival time (TAT) of the next cell. A rate of N
// per period P spaces cells T = P/N apart; a burst of B lets B cells go at
// once after a quiet spell, never more (tolerance (B-1)·T). So over any
// window of length W at most B + W/T cells pass, and a destination that
// always has work gets exactly N per P.
//
// Promises:
// - parse_rate() is strict: a positive integer, "/", a unit (s, min, h, d),
//   optionally ",burst=B" (1 <= B <= 1,000,000); anything else is false.
//   The default burst is 1: a written rate is smooth unless it says so.
// - gcra is for one thread (a shard's domain). shared_gcra keeps its TAT in
//   one atomic, so every shard taking from it draws on the same budget (a
//   provider's limit stays exact however its domains are placed on shards).
// - Neither allocates, blocks or reads the clock: the caller passes now.
// - set_rate() changes the rate from now on (the adaptive rules do).
#pragma once

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

namespace mxpress::engine {

using clock = std::chrono::steady_clock;  // as recipient.hpp

struct rate {
    static constexpr std::uint64_t burst_max = 1'000'000;
    static constexpr std::uint64_t count_max = 1'000'000'000;

    std::uint64_t count = 0;  // 0: unlimited
    std::chrono::nanoseconds period{};
    std::uint64_t burst = 1;
    std::string text;  // as written, for messages and check-config

    bool unlimited() const noexcept { return count == 0; }
    // The spacing between two cells (T).
    std::chrono::nanoseconds interval() const noexcept {
        return unlimited() ? std::chrono::nanoseconds(0) : period / static_cast<std::int64_t>(count);
    }
    // How far ahead of now the TAT may run (tau = (B-1)·T).
    std::chrono::nanoseconds tolerance() const noexcept { return interval() * static_cast<std::int64_t>(burst - 1); }
};

// The rate with room for `slack` of lateness: ceil(slack / T) more burst.
// A limiter taken late (a timer tick, a round trip) loses the time it was
// late for good; this lets the next cells make it up, no more.
inline rate with_slack(rate r, std::chrono::nanoseconds slack) {
    if (!r.unlimited()) {
        const auto t = r.interval().count();
        r.burst += static_cast<std::uint64_t>((slack.count() + t - 1) / t);
    }
    return r;
}

// "unlimited", "N/s", "N/min", "N/h", "N/d", each optionally ",burst=B".
inline bool parse_rate(std::string_view s, rate& out) {
    rate r;
    r.text = std::string(s);
    if (s == "unlimited") {
        out = r;
        return true;
    }
    auto number = [](std::string_view t, std::uint64_t max, std::uint64_t& n) {
        if (t.empty() || t.size() > 10 || t.front() == '0') {
            return false;
        }
        const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), n);
        return ec == std::errc{} && end == t.data() + t.size() && n >= 1 && n <= max;
    };
    const std::size_t slash = s.find('/');
    if (slash == std::string_view::npos || !number(s.substr(0, slash), rate::count_max, r.count)) {
        return false;
    }
    std::string_view unit = s.substr(slash + 1);
    const std::size_t comma = unit.find(',');
    if (comma != std::string_view::npos) {
        const std::string_view b = unit.substr(comma + 1);
        if (!b.starts_with("burst=") || !number(b.substr(6), rate::burst_max, r.burst)) {
            return false;
        }
        unit = unit.substr(0, comma);
    }
    using namespace std::chrono;
    if (unit == "s") {
        r.period = seconds(1);
    } else if (unit == "min") {
        r.period = minutes(1);
    } else if (unit == "h") {
        r.period = hours(1);
    } else if (unit == "d") {
        r.period = hours(24);
    } else {
        return false;
    }
    out = r;
    return true;
}

// One limit, one thread.
class gcra {
public:
    gcra() = default;
    explicit gcra(const rate& r) : _interval(r.interval()), _tolerance(r.tolerance()) {}

    bool unlimited() const noexcept { return _interval.count() == 0; }

    // A new rate from now on (a rule scaled it); cells booked stay booked.
    void set_rate(const rate& r) noexcept {
        _interval = r.interval();
        _tolerance = r.tolerance();
    }
    // Cells booked are forgotten (a reload books them again).
    void forget_bookings() noexcept { _tat = {}; }

    // Takes one cell if the limit allows it now; otherwise returns false and
    // sets `when` to the earliest time it will.
    bool take(clock::time_point now, clock::time_point& when) noexcept {
        if (unlimited()) {
            return true;
        }
        const clock::time_point tat = _tat > now ? _tat : now;
        if (tat - now > _tolerance) {
            when = tat - _tolerance;
            return false;
        }
        _tat = tat + _interval;
        return true;
    }

    // Books the next cell whatever the wait: returns when it conforms (now
    // or later). Cells booked in order conform in order, spaced by the rate.
    clock::time_point reserve(clock::time_point now) noexcept {
        if (unlimited()) {
            return now;
        }
        const clock::time_point tat = _tat > now ? _tat : now;
        _tat = tat + _interval;
        return tat - _tolerance > now ? tat - _tolerance : now;
    }

    // When take() would next succeed (now or later); takes nothing.
    clock::time_point next_free(clock::time_point now) const noexcept {
        if (unlimited() || _tat - now <= _tolerance) {
            return now;
        }
        return _tat - _tolerance;
    }

private:
    std::chrono::nanoseconds _interval{};
    std::chrono::nanoseconds _tolerance{};
    clock::time_point _tat{};
};

// One limit shared by every shard: the TAT in one atomic, updated by CAS.
class shared_gcra {
public:
    explicit shared_gcra(const rate& r) : _interval(r.interval().count()), _tolerance(r.tolerance().count()) {}
    shared_gcra(const shared_gcra&) = delete;
    shared_gcra& operator=(const shared_gcra&) = delete;

    bool unlimited() const noexcept { return _interval.load(std::memory_order_relaxed) == 0; }

    // A new rate from now on, for every shard (a rule scaled it). The two
    // stores are not one: a booking between them uses the old tolerance
    // with the new interval once, which is harmless.
    void set_rate(const rate& r) noexcept {
        _tolerance.store(r.tolerance().count(), std::memory_order_relaxed);
        _interval.store(r.interval().count(), std::memory_order_relaxed);
    }
    // Cells booked are forgotten: every shard books its own again (a reload).
    void forget_bookings() noexcept { _tat.store(0, std::memory_order_relaxed); }

    // As gcra::reserve: books the next cell, returns when it conforms.
    clock::time_point reserve(clock::time_point now) noexcept {
        const std::int64_t interval = _interval.load(std::memory_order_relaxed);
        const std::int64_t tolerance = _tolerance.load(std::memory_order_relaxed);
        if (interval == 0) {
            return now;
        }
        const std::int64_t n = now.time_since_epoch().count();
        std::int64_t seen = _tat.load(std::memory_order_relaxed);
        std::int64_t tat = 0;
        do {
            tat = seen > n ? seen : n;
        } while (!_tat.compare_exchange_weak(seen, tat + interval, std::memory_order_relaxed));
        return tat - tolerance > n ? clock::time_point(clock::duration(tat - tolerance)) : now;
    }

    bool take(clock::time_point now, clock::time_point& when) noexcept {
        const std::int64_t interval = _interval.load(std::memory_order_relaxed);
        const std::int64_t tolerance = _tolerance.load(std::memory_order_relaxed);
        if (interval == 0) {
            return true;
        }
        const std::int64_t n = now.time_since_epoch().count();
        std::int64_t seen = _tat.load(std::memory_order_relaxed);
        for (;;) {
            const std::int64_t tat = seen > n ? seen : n;
            if (tat - n > tolerance) {
                when = clock::time_point(clock::duration(tat - tolerance));
                return false;
            }
            if (_tat.compare_exchange_weak(seen, tat + interval, std::memory_order_relaxed)) {
                return true;
            }
        }
    }

private:
    static_assert(std::is_same_v<clock::duration, std::chrono::nanoseconds>, "TAT is kept in clock ticks");
    std::atomic<std::int64_t> _interval{0};
    std::atomic<std::int64_t> _tolerance{0};
    std::atomic<std::int64_t> _tat{0};
};

}  // namespace mxpress::engine
