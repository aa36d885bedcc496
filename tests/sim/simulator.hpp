// tests/sim/simulator.hpp — deterministic simulation of the delivery core.
//
// One seed builds a world (domains, their MX hosts, DNS behaviour, each
// host's faults), feeds recipients to a real engine::delivery_core, plays
// DNS and SMTP servers against its commands on a simulated clock, and checks
// the invariants after every step. The same seed replays the same run.
//
// Invariants checked (a violation stops the run and names seed and step):
// - the core's own bookkeeping (delivery_core::check_invariants: every
//   recipient in exactly one place, connection limits) — every
//   full_check_every steps and at the end;
// - each recipient ends with exactly one final outcome, and only once;
// - a delivered outcome was accepted by a server, carrying its own
//   recipient (no mixed-up messages);
// - no MAIL reaches a server in plaintext when its policy is required or
//   verify;
// - no server ever holds more sessions from us than connections_max;
// - no recipient's message is taken by servers more than 1 + in_doubt_retries
//   times (a server that drops the session after the final "." gets at most
//   one retry; then the row is in-doubt);
// - a host at its session limit (421 at the greeting) is not hammered: a
//   few refusals a minute beyond the first burst (refusals_over_burst_max);
// - no connection's deadline is missed by more than one tick;
// - the run ends (bounded steps and simulated time: nothing waits forever);
// - --recovery (recovery.hpp): after a rule scales or suspends a domain, its
//   receivers see the rate ramp back step by step as the rule's recover
//   says, and no stampede when a suspension lifts.
//
// Extending it: a new limit (rates, providers) adds its fault to
// server_profile, its knob to world_options, and its check to full_check() or
// check_deadlines() (after each tick).
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <set>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "mxpress/engine/core.hpp"
#include "mxpress/mail/message_template.hpp"
#include "sim/sim_server.hpp"

namespace mxpress::sim {

using engine::clock;
using std::chrono::milliseconds;

struct world_options {
    std::uint64_t seed = 1;
    std::size_t recipients = 10'000;
    std::size_t domains = 100;
    double faulty_hosts = 0.3;  // share of MX hosts with a fault profile
    double faulty_dns = 0.1;    // share of domains with a DNS fault
    std::size_t pending_max = 5'000;
    std::uint64_t steps_max = 50'000'000;
    std::size_t full_check_every = 256;
    // > 0: the run is stopped (delivery_core::drain(), as SIGTERM does) this
    // many simulated seconds after its start; then every recipient fed ends
    // with exactly one outcome, final or unfinished, and no transaction
    // starts after the drain.
    double drain_after_seconds = 0;
    // A quarter of the domains get a [domain."…"] section (max_message_rate,
    // connections_max) and healthy hosts; each is checked at its receivers:
    // never faster than the rate allows, and within 2% of it over the run.
    bool shaped = false;
    // A quarter of the other domains have healthy hosts that take at most
    // N messages a minute and answer Gmail's "421 4.7.28 ... unusual rate"
    // beyond it; the built-in rule gmail-rate must fire exactly where three
    // such replies came within 10 minutes, and every recipient still ends.
    bool rules = false;
    // > 0 (with --shaped): this many simulated seconds in, the configuration
    // is reloaded (SIGHUP) with new rates and connections_max for every
    // shaped domain and the provider; from then on the new limits are
    // checked at the receivers, and still nothing is lost.
    double reload_after_seconds = 0;
    // A world of its own (recovery.hpp; --recipients and --domains do not
    // apply): rules scale and suspend four domains once each, and their
    // receivers must see the rate ramp back as the rules' recover says.
    bool recovery = false;
    bool verbose = false;
};

struct run_report {
    std::uint64_t steps = 0;
    std::uint64_t delivered = 0, bounced = 0, expired = 0, invalid = 0, in_doubt = 0, unfinished = 0;
    std::uint64_t connections = 0, tls_handshakes = 0, tls_failures = 0, accepted_without_reply = 0;
    std::uint64_t accepted_by_bdat = 0;  // messages servers took by BDAT (hosts that offer CHUNKING)
    double simulated_seconds = 0;
    std::size_t shaped_checked = 0;                             // shaped domains with enough mail to check their rate
    std::size_t rules_fired = 0;                                // throttled domains the rule fired on (--rules)
    std::uint64_t throttle_refused = 0, throttle_accepted = 0;  // at those hosts
    std::size_t recovery_windows = 0;                           // --recovery: windows checked against the ramp
    std::string violation;                                      // empty: every invariant held
};

// TLS as identity: the handshake is decided by the server's profile.
class sim_tls_channel final : public net::secure_channel {
public:
    enum class mode { ok, fail, stall };
    explicit sim_tls_channel(mode m) : _mode(m) {}
    progress start() override {
        switch (_mode) {
            case mode::ok:
                _state = state::open;
                _out.append(_held);
                _held.clear();
                return {_state, true};
            case mode::fail:
                _state = state::failed;
                _error = "sim: handshake failure";
                return {_state, false};
            case mode::stall: return {_state, false};
        }
        return {_state, false};
    }
    progress receive(std::string_view ciphertext, std::string& plain) override {
        if (_state == state::open) {
            plain.append(ciphertext);
        }
        return {_state, false};
    }
    bool send(std::string_view plain) override {
        if (_state == state::handshaking) {
            _held.append(plain);
            return true;
        }
        if (_state != state::open) {
            return false;
        }
        _out.append(plain);
        return true;
    }
    bool has_output() const noexcept override { return !_out.empty(); }
    void take_output(std::string& dst) override {
        dst.clear();
        dst.swap(_out);
    }
    bool resumed() const noexcept override { return false; }
    const char* version() const noexcept override { return _state == state::open ? "TLSv1.3" : "none"; }
    const std::string& error() const noexcept override { return _error; }

private:
    mode _mode;
    state _state = state::handshaking;
    std::string _held, _out, _error;
};

class simulator final : private engine::outcome_sink, private net::secure_channel_factory {
public:
    explicit simulator(world_options w) : _w(w), _rng(w.seed), _start(clock::time_point{} + std::chrono::hours(1)) {
        build_config();
        build_world();
        _tmpl = mail::message_template::compile(
            "From: sender@sim.test\r\nTo: {{email}}\r\nSubject: hello {{name}}\r\n\r\nHello {{name}}, your code is "
            "{{code}}.\r\n.leading dot\r\n",
            "sim.eml", {"email", "name", "code"});
        mail::renderer_options ro;
        ro.from = "sender@sim.test";
        _renderer.emplace(_tmpl, ro);
        net::secure_channel_factory& tls = *this;
        engine::outcome_sink& sink = *this;
        _providers.emplace(_o.cfg);
        _o.providers = &*_providers;
        _core = std::make_unique<engine::delivery_core>(_o, *_renderer, tls, sink, _stats);
    }

    run_report run();

    const engine::shard_options& options() const noexcept { return _o; }
    const world_options& world() const noexcept { return _w; }  // as built (--recovery sets its own sizes)

private:
    struct host {
        std::string name;
        net::ip_address addr;
        server_profile profile;
        std::uint32_t sessions = 0;               // open now
        std::uint32_t sessions_max = 0;           // its domain's connections_max
        std::vector<clock::time_point> connects;  // when we opened each connection
        engine::tls_policy policy = engine::tls_policy::opportunistic;
        std::deque<clock::time_point> refused;    // sessions refused over max_sessions, last refusal_window
        std::unique_ptr<host_throttle> throttle;  // --rules: its per-minute limit
    };
    // A host at its session limit is not hammered: at most this many
    // refusals over max_sessions in any refusal_window (the first burst of
    // up to connections_max, then a few spaced probes).
    static constexpr auto refusal_window = std::chrono::seconds(60);
    static constexpr std::size_t refusals_over_burst_max = 6;
    enum class dns_kind { ok, nxdomain, null_mx, servfail_then_ok, timeout_then_ok };
    struct shaped_domain {
        engine::rate limit;
        std::size_t hosts = 0;
        std::uint32_t connections_max = 0;
        std::vector<clock::time_point> accepted;  // when its receivers took a message
        engine::rate limit_after;                 // --reload-after: the new limit
        std::uint32_t connections_max_after = 0;
    };
    struct recovery_domain {   // --recovery (recovery.hpp)
        bool suspend = false;  // its rule suspends it; else it scales it
        engine::rate limit;    // its max_message_rate
        std::uint32_t connections_max = 0;
        std::size_t hosts = 0;
        std::size_t quota = 0, fed = 0;  // recipients it gets, has got
        std::unique_ptr<one_refusal> refusal;
        std::vector<std::pair<clock::time_point, engine::rule_firing>> firings;
        std::vector<clock::time_point> accepted;  // when its receivers took a message
    };
    struct domain {
        std::string name;
        std::vector<std::size_t> hosts;  // indexes into _hosts, by preference
        dns_kind dns = dns_kind::ok;
        std::uint32_t dns_failures_left = 0;
    };
    struct sim_conn {
        std::size_t host = 0;
        std::unique_ptr<server_session> server;
        bool open = false;  // counted in the host's sessions
    };
    struct event {
        clock::time_point at;
        std::uint64_t seq;
        std::function<void()> fn;
        bool operator>(const event& o) const { return at != o.at ? at > o.at : seq > o.seq; }
    };

    // ---- world ----------------------------------------------------------------

    std::uint32_t pick(std::uint32_t n) { return std::uniform_int_distribution<std::uint32_t>(0, n - 1)(_rng); }
    double uniform() { return std::uniform_real_distribution<double>(0, 1)(_rng); }
    milliseconds latency() { return milliseconds(1 + pick(20)); }

    void build_config() {
        engine::config& c = _o.cfg;
        c.helo_name = "sim.test";
        c.retry_initial = milliseconds(30'000);
        c.retry_max = milliseconds(5 * 60'000);
        c.max_age = milliseconds(40 * 60'000);
        c.connections_max = 1 + pick(4);
        c.messages_per_connection_max = 20 + pick(200);
        c.connect_timeout = milliseconds(10'000);
        c.tls_handshake_timeout = milliseconds(10'000);
        smtp::timeouts t;
        t.greeting = t.ehlo = t.mail = t.rcpt = t.data_init = t.data_block = t.data_term = t.other = t.quit =
            std::chrono::seconds(20);
        c.smtp_timeouts = t;
        c.mx_tls.emplace_back("*.req.sim", engine::tls_policy::required);
        c.mx_tls.emplace_back("*.ver.sim", engine::tls_policy::verify);
        c.mx_tls.emplace_back("*.off.sim", engine::tls_policy::disabled);
        _o.from = "sender@sim.test";
        _o.mx_port = 25;
        _o.gather_sends = true;  // bodies come as pieces, held until send_done, as the shard does
        c.pending_max = static_cast<std::uint32_t>(_w.pending_max);
        c.idle_timeout = milliseconds(2000);
        _o.tick = milliseconds(50);
        if (_w.shaped) {
            engine::parse_rate(fmt::format("{}/min,burst={}", 20 + pick(200), 1 + pick(4)), c.max_connection_rate);
            // Every *.ver.sim host is one provider: one budget of messages
            // and of connections for all of them.
            engine::provider_config pc;
            pc.name = "ver";
            pc.match.push_back("*.ver.sim");
            engine::rate r;
            engine::parse_rate(fmt::format("{}/min,burst={}", 300 + pick(1200), 1 + pick(5)), r);
            pc.max_message_rate = r;
            pc.connections_max = 2 + pick(6);
            c.providers.push_back(std::move(pc));
        }
    }

    server_profile random_fault() {
        server_profile p;
        switch (pick(12)) {
            case 0: p.offers_starttls = false; break;
            case 1: p.starttls_refused = true; break;
            case 2: p.tls_handshake_fail = 0.5; break;
            case 3: p.tls_handshake_stalls = true; break;
            case 4: p.connect_blackhole = true; break;
            case 5: p.refuse_until_ms = 60'000 + pick(20 * 60'000); break;
            case 6: p.greeting_421 = 0.3; break;
            case 7:
                p.mail_4xx = 0.05;
                p.rcpt_4xx = 0.05;
                p.rcpt_5xx = 0.05;
                break;
            case 8:
                p.dot_4xx = 0.05;
                p.dot_5xx = 0.05;
                p.mid_421 = 0.02;
                break;
            case 9:
                p.drop_in_body = 0.02;
                p.drop_after_dot = 0.3;  // takes the message, drops before the reply
                break;
            case 10: p.stall = 0.01; break;
            default: p.max_sessions = 1; break;
        }
        return p;
    }

    void build_world() {
        if (_w.recovery) {
            build_recovery_world();
            return;
        }
        static const char* const suffixes[] = {"sim", "sim", "sim", "req.sim", "ver.sim", "off.sim"};
        for (std::size_t d = 0; d < _w.domains; ++d) {
            domain dom;
            const char* suffix = suffixes[pick(6)];
            dom.name = fmt::format("d{}.{}", d, suffix);
            const std::uint32_t mx_count = 1 + pick(3);
            const bool shaped = _w.shaped && pick(4) == 0;
            // (Not a domain of the --shaped provider: its rules act on the provider.)
            const bool throttled =
                _w.rules && !shaped && !(_w.shaped && std::string_view(suffix) == "ver.sim") && pick(4) == 0;
            std::uint32_t sessions_max = std::max<std::uint32_t>(1, _o.cfg.connections_max);
            if (shaped) {
                engine::domain_limits dl;
                dl.name = dom.name;
                engine::rate r;
                engine::parse_rate(fmt::format("{}/min,burst={}", 30 + pick(600), 1 + pick(5)), r);
                dl.max_message_rate = r;
                dl.connections_max = 1 + pick(3);
                sessions_max = dl.connections_max;
                _shaped[dom.name] = shaped_domain{r, mx_count, dl.connections_max, {}, {}, 0};
                _o.cfg.domain_limit.push_back(std::move(dl));
            }
            for (std::uint32_t m = 0; m < mx_count; ++m) {
                host h;
                h.name = fmt::format("mx{}.d{}.{}", m, d, suffix);
                const std::size_t index = _hosts.size();
                net::ip_address::parse(fmt::format("127.{}.{}.{}", 1 + index / 65536, (index / 256) % 256, index % 256),
                                       h.addr);
                h.policy = _o.cfg.tls_for(dom.name, h.name);
                h.sessions_max = sessions_max;
                if (throttled) {
                    h.throttle = std::make_unique<host_throttle>();
                    h.throttle->per_minute = 60 + pick(540);
                    h.throttle->now_ms = [this] {
                        return std::chrono::duration_cast<milliseconds>(_core->now().time_since_epoch()).count();
                    };
                    h.profile.throttle = h.throttle.get();
                    _throttled.push_back(dom.name);
                } else if (!shaped && uniform() < _w.faulty_hosts) {
                    h.profile = random_fault();
                }
                // From a generator of its own, so that the rest of the world
                // is the one this seed built before hosts offered CHUNKING.
                h.profile.offers_chunking = std::uniform_int_distribution<int>(0, 1)(_chunking_rng) == 0;
                _host_by_name[h.name] = index;
                _hosts.push_back(std::move(h));
                dom.hosts.push_back(index);
            }
            if (!shaped && uniform() < _w.faulty_dns) {
                dom.dns = static_cast<dns_kind>(1 + pick(4));
                dom.dns_failures_left = 1 + pick(3);
            }
            _domains.push_back(std::move(dom));
        }
    }

    // ---- the core's side ---------------------------------------------------------

    void final_outcome(const engine::recipient& r, engine::outcome_status st, const smtp::reply& rep,
                       std::string_view mx, std::string_view /*tls*/) override {
        std::uint32_t& n = _outcomes[r.line];
        if (++n > 1) {
            violation(fmt::format("recipient line {} ({}) got a second final outcome: {} {}", r.line, r.email,
                                  engine::to_string(st), rep.one_line()));
        }
        switch (st) {
            case engine::outcome_status::delivered:
                ++_report.delivered;
                if (_accepted_by_rcpt[r.email] == 0) {
                    violation(fmt::format("line {} ({}) journaled delivered via {}, but no server took it", r.line,
                                          r.email, mx));
                }
                break;
            case engine::outcome_status::bounced: ++_report.bounced; break;
            case engine::outcome_status::expired: ++_report.expired; break;
            case engine::outcome_status::invalid: ++_report.invalid; break;
            case engine::outcome_status::in_doubt: ++_report.in_doubt; break;
            default: break;
        }
    }

    void unfinished_outcome(const engine::recipient& r, clock::time_point next_attempt, bool in_doubt) override {
        if (!_drained) {
            violation(fmt::format("line {} ({}) left unfinished, but the run was not stopped", r.line, r.email));
        }
        if (in_doubt || next_attempt < _core->now()) {
            violation(fmt::format("line {} left {} with its next attempt in the past", r.line,
                                  in_doubt ? "in doubt (no abort was asked)" : "unfinished"));
        }
        if (++_outcomes[r.line] > 1) {
            violation(fmt::format("line {} ({}) left unfinished after an outcome", r.line, r.email));
        }
        ++_report.unfinished;
    }

    void rule_fired(const engine::rule_firing& f) override {
        if (auto it = _recovery.find(f.scope.substr(f.scope.find(':') + 1)); it != _recovery.end()) {
            it->second.firings.emplace_back(_core->now(), f);
        }
    }

    std::unique_ptr<net::secure_channel> open(const net::tls_peer& peer) override {
        const host& h = _hosts.at(_host_by_name.at(peer.server_name));
        auto m = sim_tls_channel::mode::ok;
        if (h.profile.tls_handshake_stalls) {
            m = sim_tls_channel::mode::stall;
        } else if (uniform() < h.profile.tls_handshake_fail) {
            m = sim_tls_channel::mode::fail;
        }
        return std::make_unique<sim_tls_channel>(m);
    }
    void keep_sessions(const std::string&, net::secure_channel&) override {}

    // ---- events ----------------------------------------------------------------------

    void at(clock::time_point t, std::function<void()> fn) { _events.push(event{t, _seq++, std::move(fn)}); }

    void execute_commands();
    void dns(const engine::command& c);
    void connect(const engine::command& c);
    void send(engine::command& c);
    void close(engine::conn_id id);
    void server_output(engine::conn_id id, const std::string& out, server_session::after a);
    void feed_recipients();
    void check_deadlines();
    void full_check();
    void violation(std::string what) {
        if (_report.violation.empty()) {
            _report.violation = fmt::format("step {}, t={:.3f}s: {}", _report.steps, seconds_since_start(), what);
        }
    }
    double seconds_since_start() const { return std::chrono::duration<double>(_core->now() - _start).count(); }

    world_options _w;
    std::mt19937_64 _rng;
    std::mt19937_64 _chunking_rng{_w.seed ^ 0xC4A2'71D6'5E3B'9F01ULL};  // which hosts offer CHUNKING
    clock::time_point _start;
    engine::shard_options _o;
    engine::shard_stats _stats;
    mail::message_template _tmpl;
    std::optional<mail::renderer> _renderer;
    std::unique_ptr<engine::delivery_core> _core;
    std::vector<host> _hosts;
    std::unordered_map<std::string, std::size_t> _host_by_name;
    std::vector<domain> _domains;
    std::unordered_map<engine::conn_id, sim_conn> _conns;
    std::priority_queue<event, std::vector<event>, std::greater<>> _events;
    std::uint64_t _seq = 0;
    std::size_t _fed = 0;
    bool _input_closed = false;
    bool _drained = false;
    std::uint64_t _in_flight_at_drain = 0;  // transactions may only end after the drain
    std::vector<engine::command> _commands;
    std::unordered_map<std::uint64_t, std::uint32_t> _outcomes;        // line -> outcomes (final or unfinished)
    std::unordered_map<std::string, std::uint32_t> _accepted_by_rcpt;  // address -> messages taken
    std::unordered_map<std::string, shaped_domain> _shaped;            // by domain name
    std::vector<std::string> _throttled;                               // --rules: names, once per host
    std::optional<engine::provider_table> _providers;
    std::vector<clock::time_point> _provider_accepted;          // messages the provider's hosts took
    std::uint32_t _provider_sessions = 0;                       // open at the provider's hosts now
    clock::time_point _reloaded_at = clock::time_point::max();  // --reload-after: when
    std::optional<engine::provider_config> _provider_after;     // the provider's section after it
    void check_shaping();
    void check_shaped(const std::string& name, const shaped_domain& s, const engine::rate& limit,
                      std::uint32_t connections_max, clock::time_point from, clock::time_point to);
    void reload_config();
    void check_rules();
    void check_window(const std::vector<clock::time_point>& t, const engine::rate& r, double in_flight,
                      double min_span_s, double slack, const std::string& what);
    void session_ended(host& h);
    std::unordered_map<std::string, recovery_domain> _recovery;  // --recovery: by domain name
    void build_recovery_world();
    std::size_t next_recovery_domain();
    void check_recovery();
    std::vector<accepted_message> _accepted;
    run_report _report;
};

}  // namespace mxpress::sim

#include "sim/simulator_run.hpp"
#include "sim/recovery.hpp"
