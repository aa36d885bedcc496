// tests/sim/recovery.hpp — the --recovery scenario (declared in
// simulator.hpp; not meant to be included alone): what a rule did to a
// destination's rate undone over simulated time, measured at its receivers.
//
// The world: four domains with a max_message_rate of their own and healthy
// hosts, each with a backlog that lasts the whole run. Five minutes in, a
// host of each answers one RCPT with a reply that a rule of the scenario's
// fires on at once: two domains get `scale` (factor 0.5), two `suspend`
// (ten minutes, restarting at 0.5 of the rate). Both recover "+10%/5m".
// Every other reply is good, so throttle.hpp's ramp is exact:
//   scale:   from the firing, step k (k-th five minutes) runs at
//            base x min(1, 0.5 + 0.1k): 0.5, 0.6, ... 1.0 from step 5 on;
//   suspend: nothing during the ten minutes, then the same ramp from the
//            moment it lifts.
// Checked over each five-minute step, at the receivers (what they took,
// not what was started): the count is the ramp's rate times the window,
// within recovery_window_slack of it plus the burst and what may be in
// flight at either edge. Nothing arrives while suspended but what was in
// flight, and the first minute after a suspension lifts holds no more than
// the restart rate allows (no stampede of the held mail).
#pragma once

#include <cassert>

#include "sim/simulator.hpp"

namespace mxpress::sim {

// The scenario's rules, ahead of the built-ins (whose texts the hosts never
// send). Replies are matched as "code enhanced text".
inline constexpr std::string_view recovery_rules_toml = R"(
[[rule]]
name = "sim-scale"
match = 'sim: slow down'
trigger = "immediate"
action = "scale"
factor = 0.5
recover = "+10%/5m"

[[rule]]
name = "sim-suspend"
match = 'sim: go away'
trigger = "immediate"
action = "suspend"
factor = 0.5
duration = "10m"
recover = "+10%/5m"
)";

// What a five-minute window may differ from the ramp by, as a share of the
// expected count. The pace books a slot per message and a slot booked at
// the old rate is kept (gcra::set_rate), so each step begins up to one old
// interval late; a transaction takes a few round trips (1-20 ms each) and
// starts on a 50 ms tick, which moves a message across a window's edge.
// Against >= 150 messages a window (0.5/s x 300 s) those are a message or
// two at each edge: 3% plus the burst and in-flight allowance covers them,
// while a ramp that is a step off (10% of the base rate) does not fit.
inline constexpr double recovery_window_slack = 0.03;
inline constexpr auto recovery_refuse_after = std::chrono::minutes(5);
inline constexpr std::size_t recovery_domains = 4;  // the first half scale, the rest suspend

inline void simulator::build_recovery_world() {
    engine::config& c = _o.cfg;
    c.max_age = std::chrono::hours(6);  // a backlog of an hour must not expire
    const engine::config extra = engine::parse_config(recovery_rules_toml, "recovery.toml");
    c.rules.rules.insert(c.rules.rules.begin(), extra.rules.rules.begin(), extra.rules.rules.begin() + 2);
    std::size_t total = 0;
    for (std::size_t d = 0; d < recovery_domains; ++d) {
        domain dom;
        dom.name = fmt::format("d{}.sim", d);
        recovery_domain rd;
        rd.suspend = d >= recovery_domains / 2;
        const std::uint32_t per_minute = 60 + pick(121);  // 1 to 3 a second
        engine::parse_rate(fmt::format("{}/min,burst={}", per_minute, 1 + pick(4)), rd.limit);
        rd.connections_max = 1 + pick(3);
        // Busy for the run: the refusal, a suspension, the ramp and more.
        rd.quota = std::size_t(per_minute) * (rd.suspend ? 55 : 45);
        total += rd.quota;
        rd.refusal = std::make_unique<one_refusal>();
        rd.refusal->at_ms =
            std::chrono::duration_cast<milliseconds>((_start + recovery_refuse_after).time_since_epoch()).count();
        rd.refusal->text = rd.suspend ? "421 4.7.1 sim: go away for a while\r\n" : "421 4.7.1 sim: slow down\r\n";
        rd.refusal->now_ms = [this] {
            return std::chrono::duration_cast<milliseconds>(_core->now().time_since_epoch()).count();
        };
        engine::domain_limits dl;
        dl.name = dom.name;
        dl.max_message_rate = rd.limit;
        dl.connections_max = rd.connections_max;
        c.domain_limit.push_back(std::move(dl));
        const std::uint32_t mx_count = 1 + pick(2);
        for (std::uint32_t m = 0; m < mx_count; ++m) {
            host h;
            h.name = fmt::format("mx{}.d{}.sim", m, d);
            const std::size_t index = _hosts.size();
            net::ip_address::parse(fmt::format("127.{}.{}.{}", 1 + index / 65536, (index / 256) % 256, index % 256),
                                   h.addr);
            h.policy = c.tls_for(dom.name, h.name);
            h.sessions_max = rd.connections_max;
            h.profile.refusal = rd.refusal.get();
            _host_by_name[h.name] = index;
            _hosts.push_back(std::move(h));
            dom.hosts.push_back(index);
        }
        rd.hosts = mx_count;
        _recovery.emplace(dom.name, std::move(rd));
        _domains.push_back(std::move(dom));
    }
    _w.recipients = total;
    _w.domains = recovery_domains;
}

// --recovery: the next domain in turn that has recipients left to get.
inline std::size_t simulator::next_recovery_domain() {
    for (std::size_t k = 0; k < _domains.size(); ++k) {
        const std::size_t d = (_fed + k) % _domains.size();
        recovery_domain& rd = _recovery.at(_domains[d].name);
        if (rd.fed < rd.quota) {
            ++rd.fed;
            return d;
        }
    }
    assert(false && "fed no more than the quotas' total");
    return 0;
}

inline void simulator::check_recovery() {
    using seconds_d = std::chrono::duration<double>;
    for (const auto& [name, rd] : _recovery) {
        if (!_report.violation.empty()) {
            return;
        }
        if (rd.firings.size() != 1) {
            violation(fmt::format("{}: its rule fired {} times (one refusal: once)", name, rd.firings.size()));
            return;
        }
        const auto& [fired_at, f] = rd.firings.front();
        const auto r = std::find_if(_o.cfg.rules.rules.begin(), _o.cfg.rules.rules.end(),
                                    [&](const engine::rule& x) { return x.name == f.rule; });
        assert(r != _o.cfg.rules.rules.end());
        const double base = per_second(rd.limit);
        if (f.rule != (rd.suspend ? "sim-suspend" : "sim-scale") || std::abs(f.base_per_s - base) > 1e-9 ||
            std::abs(f.rate_per_s - r->factor * base) > 1e-9) {
            violation(fmt::format("{}: {} fired at {:.4f}/s from {:.4f}/s (the base is {:.4f}/s, the factor {})", name,
                                  f.rule, f.rate_per_s, f.base_per_s, base, r->factor));
            return;
        }
        auto count = [&](clock::time_point from, clock::time_point to) {
            return static_cast<double>(std::count_if(rd.accepted.begin(), rd.accepted.end(),
                                                     [&](clock::time_point t) { return t >= from && t < to; }));
        };
        const double in_flight = double(rd.hosts * rd.connections_max * 2);
        const double allowance = double(rd.limit.burst) + in_flight;
        const clock::time_point ramp_from = rd.suspend ? f.until : fired_at;
        if (rd.suspend) {
            // Held: what was in flight when it fired, then nothing.
            const double during = count(fired_at, f.until);
            _report.recovery_windows += 1;
            if (during > in_flight) {
                violation(
                    fmt::format("{}: suspended at {:.0f} s, yet its receivers took {} messages before it "
                                "lifted",
                                name, seconds_d(fired_at - _start).count(), during));
                return;
            }
            // No stampede: the first minute after the lift holds the restart
            // rate's cells, its burst and the send pace's slack (provider.hpp:
            // send_slack), and no more: nothing was in flight while it was held,
            // so the held mail is all that could crowd in.
            constexpr auto first = std::chrono::seconds(60);
            const double interval = 1.0 / f.rate_per_s;
            const double most =
                f.rate_per_s * seconds_d(first).count() + double(rd.limit.burst) + std::ceil(0.1 / interval) + 1;
            const double n = count(f.until, f.until + first);
            if (_w.verbose) {
                std::printf("%s: %.0f messages while suspended, %.0f in the first %lld s after (at most %.1f)\n",
                            name.c_str(), during, n, static_cast<long long>(first.count()), most);
            }
            if (n > most) {
                violation(
                    fmt::format("{}: {} messages in the first {} s after its suspension lifted (at most {:.1f} "
                                "at {:.3f}/s): a stampede",
                                name, n, first.count(), most, f.rate_per_s));
                return;
            }
        }
        // Each step of the ramp, and one at the base rate after it.
        const auto every = r->recover_every;
        const double window_s = seconds_d(every).count();
        const int steps = static_cast<int>(std::ceil((1.0 - r->factor) / r->recover_step - 1e-9));
        for (int k = 0; k <= steps + 1; ++k) {
            const clock::time_point from = ramp_from + k * every;
            const double expected_rate = std::min(base, f.rate_per_s + r->recover_step * k * base);
            const double expected = expected_rate * window_s;
            const double measured = count(from, from + every);
            const double off = expected * recovery_window_slack + allowance;
            if (_w.verbose) {
                std::printf("%s step %d: %.0f messages, ramp %.1f (+-%.1f)\n", name.c_str(), k, measured, expected,
                            off);
            }
            ++_report.recovery_windows;
            if (std::abs(measured - expected) > off) {
                violation(fmt::format(
                    "{}: {} step {} (from {:.0f} s): its receivers took {} messages in {:.0f} s, "
                    "the ramp says {:.1f} ({:.3f}/s of {:.3f}/s) +-{:.1f}",
                    name, rd.suspend ? "after the suspension," : "after the scale,", k,
                    seconds_d(from - _start).count(), measured, window_s, expected, expected_rate, base, off));
                return;
            }
        }
    }
}

}  // namespace mxpress::sim
