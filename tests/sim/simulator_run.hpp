// tests/sim/simulator_run.hpp — the simulator's event loop and checks
// (declared in simulator.hpp; not meant to be included alone).
#pragma once

#include <cassert>

#include "sim/simulator.hpp"

namespace mxpress::sim {

inline run_report simulator::run() {
    _core->set_now(_start);
    feed_recipients();
    _core->schedule();
    execute_commands();
    const auto tick = std::chrono::duration_cast<clock::duration>(_o.tick);
    const auto time_limit = _start + _o.cfg.max_age + _o.cfg.retry_max + std::chrono::hours(1);
    clock::time_point last_tick = _start;
    while (!_core->finished() && _report.violation.empty()) {
        if (++_report.steps > _w.steps_max) {
            violation(fmt::format("not finished after {} steps", _w.steps_max));
            break;
        }
        const clock::time_point next_event = _events.empty() ? clock::time_point::max() : _events.top().at;
        // No tick comes before last_tick + tick: only then ask the core when
        // it needs one (an O(connections) question).
        const clock::time_point wake = next_event < last_tick + tick ? clock::time_point::max() : _core->next_wakeup();
        clock::time_point tick_at = clock::time_point::max();
        if (wake != clock::time_point::max()) {
            // Ticks fall every `tick` from the start, as the shard's ring timer.
            const auto k = (std::max(wake, last_tick + tick) - _start + tick - clock::duration(1)) / tick;
            tick_at = _start + k * tick;
        }
        if (next_event == clock::time_point::max() && tick_at == clock::time_point::max()) {
            violation(fmt::format("nothing left to happen, but the core holds {} recipients and {} connections: {}",
                                  _core->pending(), _core->connections(), _core->describe_holdings()));
            break;
        }
        if (tick_at <= next_event) {
            _core->set_now(tick_at);
            last_tick = tick_at;
            _core->tick();
            check_deadlines();
        } else {
            event e = _events.top();
            _events.pop();
            _core->set_now(e.at);
            e.fn();
        }
        if (_w.reload_after_seconds > 0 && _reloaded_at == clock::time_point::max() &&
            seconds_since_start() >= _w.reload_after_seconds) {
            reload_config();
        }
        if (_w.drain_after_seconds > 0 && !_drained && seconds_since_start() >= _w.drain_after_seconds) {
            _drained = true;
            _in_flight_at_drain = _stats.in_flight.load();
            _core->drain();
        }
        feed_recipients();
        _core->schedule();
        execute_commands();
        if (_drained) {
            const std::uint64_t now_in_flight = _stats.in_flight.load();
            if (now_in_flight > _in_flight_at_drain) {
                violation(fmt::format("a transaction started after the drain ({} in flight, {} at the drain)",
                                      now_in_flight, _in_flight_at_drain));
            }
            _in_flight_at_drain = now_in_flight;
        }
        if (_core->now() > time_limit) {
            violation("the run outlived max_age and every retry: something waits forever");
        }
        if (_report.steps % _w.full_check_every == 0) {
            full_check();
        }
    }
    full_check();
    check_shaping();
    check_rules();
    check_recovery();
    for (std::size_t i = 0; i < _fed && _report.violation.empty(); ++i) {
        const std::uint64_t line = i + 2;
        auto it = _outcomes.find(line);
        if (it == _outcomes.end() || it->second != 1) {
            violation(
                fmt::format("line {} ended with {} final outcomes", line, it == _outcomes.end() ? 0 : it->second));
        }
    }
    _report.connections = _stats.connections_opened.load();
    _report.tls_handshakes = _stats.tls_handshakes.load();
    _report.tls_failures = _stats.tls_failures.load();
    _report.simulated_seconds = seconds_since_start();
    return _report;
}

// max_message_rate seen from the receivers. A slot is booked when a
// recipient enters its host's queue, so what a host was slow to take can
// arrive back to back: short windows may hold a little more than the rate
// when connections are contended (a provider's connections_max, faulty
// hosts). So: over every window of at least a minute, at most 2% over
// burst + span/T plus what can be in flight; a shaped domain with healthy
// hosts of its own, over every window, at most burst + span/T plus what is
// in flight; and such a domain with a backlog gets its rate within 2%.
inline void simulator::check_window(const std::vector<clock::time_point>& t, const engine::rate& r, double in_flight,
                                    double min_span_s, double slack, const std::string& what) {
    const double interval = std::chrono::duration<double>(r.interval()).count();
    for (std::size_t j = 0; j < t.size() && _report.violation.empty(); ++j) {
        for (std::size_t i = 0; i <= j; ++i) {
            const double span = std::chrono::duration<double>(t[j] - t[i]).count();
            if (span < min_span_s) {
                break;
            }
            // The send pace's room for lateness (provider.hpp: send_slack).
            const double late = std::ceil(0.1 / interval);
            const double allowed = (double(r.burst) + late + span / interval) * slack + in_flight;
            if (double(j - i + 1) > allowed) {
                violation(fmt::format("{} (max_message_rate {}) took {} messages in {:.3f} s (at most {:.1f})", what,
                                      r.text, j - i + 1, span, allowed));
                break;
            }
        }
    }
}

// --rules: the built-in gmail-rate (3 within 10 minutes) fired on a
// throttled domain if and only if three of its hosts' refusals came within
// 10 minutes (a second of slack either way: the reply travels).
inline void simulator::check_rules() {
    std::sort(_throttled.begin(), _throttled.end());
    _throttled.erase(std::unique(_throttled.begin(), _throttled.end()), _throttled.end());
    for (const std::string& name : _throttled) {
        std::vector<std::int64_t> t;
        for (const domain& d : _domains) {
            if (d.name != name) {
                continue;
            }
            for (std::size_t hi : d.hosts) {
                const host_throttle& ht = *_hosts[hi].throttle;
                t.insert(t.end(), ht.refused_ms.begin(), ht.refused_ms.end());
                _report.throttle_refused += ht.refused;
                _report.throttle_accepted += ht.accepted;
            }
        }
        std::sort(t.begin(), t.end());
        std::int64_t closest = INT64_MAX;  // the shortest span holding three refusals
        for (std::size_t i = 0; i + 2 < t.size(); ++i) {
            closest = std::min(closest, t[i + 2] - t[i]);
        }
        const bool fired = _core->rule_tallies().count({"gmail-rate", "domain:" + name}) != 0;
        _report.rules_fired += fired ? 1 : 0;
        if (!fired && closest <= 600'000 - 1'000) {
            violation(fmt::format("{}: three 4.7.28 refusals within {} ms and gmail-rate never fired", name, closest));
        } else if (fired && closest > 600'000 + 1'000) {
            violation(fmt::format("{}: gmail-rate fired without three refusals within 10 minutes ({} refusals)", name,
                                  t.size()));
        }
    }
}

inline void simulator::check_shaping() {
    // max_connection_rate, at each host (one pool per host here: a host has
    // one address and one TLS policy, and serves one domain).
    const engine::rate& cr = _o.cfg.max_connection_rate;
    for (const host& h : _hosts) {
        if (cr.unlimited()) {
            break;
        }
        const double interval = std::chrono::duration<double>(cr.interval()).count();
        for (std::size_t j = 0; j < h.connects.size() && _report.violation.empty(); ++j) {
            for (std::size_t i = 0; i <= j; ++i) {
                const double span = std::chrono::duration<double>(h.connects[j] - h.connects[i]).count();
                if (double(j - i + 1) > double(cr.burst) + span / interval + 1e-9) {
                    violation(fmt::format("{} (max_connection_rate {}) got {} connections in {:.3f} s", h.name, cr.text,
                                          j - i + 1, span));
                    break;
                }
            }
        }
    }
    constexpr double minute = 60;
    if (!_o.cfg.providers.empty()) {
        const engine::provider_config& pc = _o.cfg.providers.front();
        std::vector<clock::time_point> before;
        std::vector<clock::time_point> after;
        for (clock::time_point t : _provider_accepted) {
            (t < _reloaded_at ? before : after).push_back(t);
        }
        check_window(before, *pc.max_message_rate, double(pc.connections_max * 2), minute, 1.02, "provider " + pc.name);
        if (_provider_after) {
            // What was in flight at the reload may still arrive: the larger count of either.
            const std::uint32_t in_flight = std::max(pc.connections_max, _provider_after->connections_max);
            check_window(after, *_provider_after->max_message_rate, double(in_flight * 2), minute, 1.02,
                         "provider " + pc.name + " after the reload");
        }
    }
    for (const auto& [name, s] : _shaped) {
        check_shaped(name, s, s.limit, s.connections_max, clock::time_point::min(), _reloaded_at);
        if (_reloaded_at != clock::time_point::max()) {
            check_shaped(name + " after the reload", s, s.limit_after,
                         std::max(s.connections_max, s.connections_max_after), _reloaded_at, clock::time_point::max());
        }
    }
}

// One shaped domain's arrivals in [from, to) against `limit`.
inline void simulator::check_shaped(const std::string& name, const shaped_domain& s, const engine::rate& limit,
                                    std::uint32_t connections_max, clock::time_point from, clock::time_point to) {
    constexpr double minute = 60;
    std::vector<clock::time_point> t;
    for (clock::time_point a : s.accepted) {
        if (a >= from && a < to) {
            t.push_back(a);
        }
    }
    const bool contended = !_o.cfg.providers.empty() && name.find(".ver.sim") != std::string::npos;
    const double in_flight = double(s.hosts * connections_max * 2);
    check_window(t, limit, in_flight, contended ? minute : 0, contended ? 1.02 : 1.0, name);
    constexpr std::size_t enough = 50;
    if (t.size() >= enough && !contended && _report.violation.empty()) {
        const double interval = std::chrono::duration<double>(limit.interval()).count();
        const double span = std::chrono::duration<double>(t.back() - t.front()).count();
        const double measured = double(t.size() - limit.burst) / span;
        const double ratio = measured * interval;
        if (ratio < 0.98 || ratio > 1.02) {
            violation(fmt::format("{} (max_message_rate {}) got {:.4f} messages/s over {:.0f} s: {:.3f} x the rate",
                                  name, limit.text, measured, span, ratio));
        }
        ++_report.shaped_checked;
    }
}

// --reload-after: what SIGHUP does in a run (runner.hpp), here at once: a
// new configuration with other limits for every shaped domain and the
// provider, taken by the provider's shared state and the core.
inline void simulator::reload_config() {
    _reloaded_at = _core->now();
    auto c = std::make_shared<engine::config>(_o.cfg);
    for (engine::domain_limits& dl : c->domain_limit) {
        auto s = _shaped.find(dl.name);
        if (s == _shaped.end()) {
            continue;
        }
        engine::rate r;
        engine::parse_rate(fmt::format("{}/min,burst={}", 30 + pick(600), 1 + pick(5)), r);
        dl.max_message_rate = r;
        dl.connections_max = 1 + pick(3);
        s->second.limit_after = r;
        s->second.connections_max_after = dl.connections_max;
        for (const domain& d : _domains) {
            if (d.name == dl.name) {
                for (std::size_t hi : d.hosts) {
                    // A lowered limit holds for new sessions at once; the
                    // ones over it end with their transactions.
                    _hosts[hi].sessions_max = dl.connections_max;
                }
            }
        }
    }
    if (!c->providers.empty()) {
        engine::provider_config& pc = c->providers.front();
        engine::rate r;
        engine::parse_rate(fmt::format("{}/min,burst={}", 300 + pick(1200), 1 + pick(5)), r);
        pc.max_message_rate = r;
        pc.connections_max = 2 + pick(6);
        _provider_after = pc;
        _providers->by_name(pc.name)->reload(pc);
    }
    _core->reload(std::move(c));
}

inline void simulator::feed_recipients() {
    while (!_drained && _fed < _w.recipients && _core->accepting()) {
        // Skewed like real lists: half the recipients on a tenth of the domains.
        const std::size_t n = _domains.size();
        const std::size_t d = _w.recovery       ? next_recovery_domain()
                              : uniform() < 0.5 ? pick(static_cast<std::uint32_t>(std::max<std::size_t>(1, n / 10)))
                                                : pick(static_cast<std::uint32_t>(n));
        auto r = std::make_unique<engine::recipient>();
        r->line = _fed + 2;
        r->email = fmt::format("user{}@{}", _fed, _domains[d].name);
        r->domain_at = static_cast<std::uint32_t>(r->email.find('@') + 1);
        for (const std::string& f : {r->email, fmt::format("Name {}", _fed), fmt::format("C{:08}", _fed)}) {
            r->values += f;
            r->ends.push_back(static_cast<std::uint32_t>(r->values.size()));
        }
        ++_fed;
        _core->recipient_arrived(std::move(r));
    }
    if (_fed == _w.recipients && !_input_closed) {
        _input_closed = true;
        _core->input_closed();
    }
}

inline void simulator::execute_commands() {
    for (;;) {
        _core->take_commands(_commands);
        if (_commands.empty()) {
            return;
        }
        for (engine::command& c : _commands) {
            switch (c.kind) {
                case engine::command_kind::resolve_mx:
                case engine::command_kind::resolve_host: dns(c); break;
                case engine::command_kind::connect: connect(c); break;
                case engine::command_kind::send: send(c); break;
                case engine::command_kind::close: close(c.conn); break;
            }
        }
    }
}

inline void simulator::dns(const engine::command& c) {
    auto it = std::find_if(_domains.begin(), _domains.end(), [&](const domain& d) { return d.name == c.name; });
    assert(it != _domains.end());
    domain& d = *it;
    net::mx_answer ans;
    milliseconds delay = latency();
    auto fail = [&](net::dns_status s, const char* enhanced, const char* why) {
        ans.status = s;
        ans.enhanced = enhanced;
        ans.reason = fmt::format("{}: {}", d.name, why);
    };
    if (d.dns == dns_kind::nxdomain) {
        fail(net::dns_status::permanent, "5.1.2", "sim: no such domain");
    } else if (d.dns == dns_kind::null_mx) {
        fail(net::dns_status::permanent, "5.1.10", "sim: null MX, accepts no mail");
    } else if (d.dns_failures_left > 0) {
        --d.dns_failures_left;
        if (d.dns == dns_kind::timeout_then_ok) {
            delay = milliseconds(5000);
            fail(net::dns_status::temporary, "4.4.3", "sim: lookup timed out");
        } else {
            fail(net::dns_status::temporary, "4.4.3", "sim: SERVFAIL");
        }
    } else {
        ans.status = net::dns_status::ok;
        std::uint16_t pref = 10;
        for (std::size_t h : d.hosts) {
            ans.targets.push_back(net::mx_target{_hosts[h].name, pref, {_hosts[h].addr}});
            pref = static_cast<std::uint16_t>(pref + 10);
        }
    }
    at(_core->now() + delay, [this, name = c.name, ans]() { _core->dns_answer(name, ans); });
}

inline void simulator::connect(const engine::command& c) {
    const auto* sa = reinterpret_cast<const sockaddr_in*>(&c.addr);
    const std::uint32_t a = ntohl(sa->sin_addr.s_addr);
    const std::size_t index = ((a >> 16) & 0xFF) * 65536 - 65536 + ((a >> 8) & 0xFF) * 256 + (a & 0xFF);
    assert(index < _hosts.size());
    host& h = _hosts[index];
    const engine::conn_id id = c.conn;
    h.connects.push_back(_core->now());
    if (h.profile.connect_blackhole) {
        return;  // the core's connect deadline must end it
    }
    const auto t = _core->now() + latency();
    if (_core->now() < _start + milliseconds(h.profile.refuse_until_ms)) {
        at(t, [this, id]() { _core->connected(id, -ECONNREFUSED); });
        return;
    }
    sim_conn& sc = _conns[id];
    sc.host = index;
    sc.server = std::make_unique<server_session>(h.profile, _rng, false);
    sc.open = true;
    ++h.sessions;
    if (!_o.cfg.providers.empty() && _o.cfg.providers.front().matches(h.name)) {
        const engine::provider_config& pc = _provider_after ? *_provider_after : _o.cfg.providers.front();
        if (++_provider_sessions > pc.connections_max) {
            violation(fmt::format("provider {} holds {} sessions from us (connections_max {})", pc.name,
                                  _provider_sessions, pc.connections_max));
        }
    }
    if (h.sessions > h.sessions_max) {
        violation(fmt::format("{} holds {} sessions from us (connections_max {})", h.name, h.sessions, h.sessions_max));
    }
    at(t, [this, id]() {
        _core->connected(id, 0);
        auto it = _conns.find(id);
        if (it == _conns.end()) {
            return;
        }
        host& hh = _hosts[it->second.host];
        std::string out;
        const bool over = hh.profile.max_sessions != 0 && hh.sessions > hh.profile.max_sessions;
        if (over) {
            hh.refused.push_back(_core->now());
            while (hh.refused.front() + refusal_window < _core->now()) {
                hh.refused.pop_front();
            }
            const std::size_t allowed = std::max<std::size_t>(1, _o.cfg.connections_max) + refusals_over_burst_max;
            if (hh.refused.size() > allowed) {
                violation(fmt::format("{} (max_sessions {}) refused {} sessions within {} s (at most {})", hh.name,
                                      hh.profile.max_sessions, hh.refused.size(), refusal_window.count(), allowed));
            }
        }
        const auto after = it->second.server->greet(out, over);
        server_output(id, out, after);
    });
}

inline void simulator::send(engine::command& c) {
    const engine::conn_id id = c.conn;
    std::size_t size = c.data.size();
    for (const smtp::body_piece& p : c.pieces) {
        size += p.body->size();
    }
    const int n = static_cast<int>(size);
    at(_core->now() + milliseconds(1), [this, id, n]() {
        std::string buffer;
        _core->send_done(id, n, buffer);
    });
    // The bodies are read when the bytes arrive, later than a kernel would
    // read them: a body the core rewrote after handing it over arrives as
    // another recipient's message, which the server side reports.
    at(_core->now() + latency(), [this, id, data = std::move(c.data), pieces = std::move(c.pieces)]() mutable {
        std::size_t from = 0;
        for (const smtp::body_piece& p : pieces) {
            if (p.at < from || p.at > data.size()) {
                violation(
                    fmt::format("a body piece at {} of {} bytes (the one before at {})", p.at, data.size(), from));
                return;
            }
            from = p.at;
        }
        smtp::flatten(data, pieces);
        auto it = _conns.find(id);
        if (it == _conns.end() || !it->second.open) {
            return;  // the server side is gone
        }
        sim_conn& sc = it->second;
        host& h = _hosts[sc.host];
        if (sc.server->tls_pending()) {
            sc.server->tls_started();  // the (simulated) handshake took no bytes
        }
        std::string out;
        std::vector<accepted_message> accepted;
        const auto after = sc.server->receive(data, out, accepted);
        for (const accepted_message& m : accepted) {
            if (m.rcpt.starts_with("<wrong")) {
                violation(fmt::format("{} received a message that does not carry its recipient: {}", h.name, m.rcpt));
            }
            if (++_accepted_by_rcpt[m.rcpt] > 1 + _o.cfg.in_doubt_retries) {
                violation(fmt::format("{} took the message for {} {} times (in_doubt_retries {})", h.name, m.rcpt,
                                      _accepted_by_rcpt[m.rcpt], _o.cfg.in_doubt_retries));
            }
            _report.accepted_without_reply += m.reply_sent ? 0 : 1;
            _report.accepted_by_bdat += m.bdat ? 1 : 0;
            if (!_o.cfg.providers.empty() && _o.cfg.providers.front().matches(h.name)) {
                _provider_accepted.push_back(_core->now());
            }
            if (auto s = _shaped.find(m.rcpt.substr(m.rcpt.find('@') + 1)); s != _shaped.end()) {
                s->second.accepted.push_back(_core->now());
            }
            if (auto rd = _recovery.find(m.rcpt.substr(m.rcpt.find('@') + 1)); rd != _recovery.end()) {
                rd->second.accepted.push_back(_core->now());
            }
        }
        if ((h.policy == engine::tls_policy::required || h.policy == engine::tls_policy::verify) &&
            sc.server->plaintext_mail() > 0) {
            violation(fmt::format("{} (policy {}) got MAIL FROM without TLS", h.name, engine::to_string(h.policy)));
        }
        server_output(id, out, after);
    });
}

inline void simulator::server_output(engine::conn_id id, const std::string& out, server_session::after a) {
    const auto t = _core->now() + latency();
    if (!out.empty()) {
        at(t, [this, id, out]() { _core->received(id, out); });
    }
    if (a == server_session::after::close) {
        auto it = _conns.find(id);
        if (it != _conns.end() && it->second.open) {
            it->second.open = false;
            session_ended(_hosts[it->second.host]);
        }
        at(t + milliseconds(1), [this, id]() { _core->input_lost(id, "closed by the server"); });
    }
}

inline void simulator::session_ended(host& h) {
    --h.sessions;
    if (!_o.cfg.providers.empty() && _o.cfg.providers.front().matches(h.name)) {
        assert(_provider_sessions > 0);
        --_provider_sessions;
    }
}

inline void simulator::close(engine::conn_id id) {
    auto it = _conns.find(id);
    if (it == _conns.end()) {
        return;
    }
    if (it->second.open) {
        session_ended(_hosts[it->second.host]);
    }
    _conns.erase(it);
}

// After a tick: every deadline that passed more than one tick ago was acted on.
inline void simulator::check_deadlines() {
    const auto tick = std::chrono::duration_cast<clock::duration>(_o.tick);
    const auto now = _core->now();
    _core->for_each_connection([&](const engine::connection& c) {
        if (c.state != engine::conn_state::ended && c.deadline != clock::time_point::max() && c.deadline + tick < now) {
            violation(fmt::format("connection {} ({}) missed its deadline by {} ms", c.id, engine::to_string(c.state),
                                  std::chrono::duration_cast<milliseconds>(now - c.deadline).count()));
        }
    });
}

inline void simulator::full_check() {
    if (const std::string p = _core->check_invariants(); !p.empty()) {
        violation("core invariants: " + p);
    }
}

}  // namespace mxpress::sim
