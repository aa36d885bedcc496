// mxpress/engine/core_tls.hpp — the delivery core's TLS: starting and
// driving a connection's handshake, and what a policy says at each step
// (decide_tls, tls_decision.hpp). Included by core.hpp; not meant to be
// included alone.
//
// Promises:
// - Under `required` and `verify` no mail goes without TLS: a missing or
//   refused STARTTLS or a failed handshake moves the work on (next MX, then
//   a retry) with the reason.
// - Under `opportunistic` a failed handshake gives the host plaintext for
//   tls_plaintext_after_failure, and a new connection takes the work.
#pragma once

#include "mxpress/engine/core.hpp"

namespace mxpress::engine {

// ---- TLS ----------------------------------------------------------------------------

// Starts the handshake: after the 220 to STARTTLS, or on connect (implicit TLS).
inline void delivery_core::start_tls(connection& c) {
    mx_pool& p = *c.pool;
    try {
        c.tls = _tls.open(net::tls_peer{p.session_key, p.mx_name, p.tls == tls_policy::verify});
    } catch (const net::tls_error& e) {
        tls_failed(c, e.what());
        return;
    }
    c.state = conn_state::tls_handshake;
    c.tls_deadline = _now + _cfg->tls_handshake_timeout;
    handshake_progress(c, c.tls->start());
}

// After the channel moved the handshake on: done, failed, or still running.
inline void delivery_core::handshake_progress(connection& c, net::secure_channel::progress p) {
    using state = net::secure_channel::state;
    if (p.now == state::failed || p.now == state::closed) {
        tls_failed(c, c.tls->error().empty() ? "the server ended the connection" : c.tls->error());
        return;
    }
    if (!p.established_now) {
        update_deadline(c);
        pump(c);  // the handshake's next flight
        return;
    }
    c.state = conn_state::opening;
    shard_stats::add(_stats.tls_handshakes);
    if (c.tls->resumed()) {
        shard_stats::add(_stats.tls_resumed);
    }
    _tls.keep_sessions(c.pool->session_key, *c.tls);
    if (!c.pool->implicit_tls) {
        c.client.tls_established();  // EHLO again, encrypted
    }
    update_deadline(c);
    pump(c);
}

// The policy's word on this connection at `step` (tls_decision.hpp).
inline tls_decision delivery_core::decide(const connection& c, tls_step step, std::string_view detail) const {
    const mx_pool& p = *c.pool;
    const std::string peer = fmt::format("{} ({})", p.mx_name, p.key);
    tls_situation s;
    s.policy = p.tls;
    s.step = step;
    s.implicit_tls = p.implicit_tls;
    s.credentials = !_o.auth_user.empty();
    s.starttls_offered = c.client.caps().starttls;
    s.plaintext_window = _now < p.plaintext_until;
    s.peer = peer;
    s.detail = detail;
    return decide_tls(s);
}

// A handshake failed or timed out (see note_tls_failure); the connection ends.
inline void delivery_core::tls_failed(connection& c, const std::string& why) {
    note_tls_failure(c, why);
    teardown(c);
}

// What a TLS failure means for the pool. Opportunistic: this host gets
// plaintext for a while and a new connection takes the work. Required or
// verify: the work moves on (next MX, then a retry) with the reason.
inline void delivery_core::note_tls_failure(connection& c, const std::string& why) {
    shard_stats::add(_stats.tls_failures);
    mx_pool& p = *c.pool;
    const tls_decision d = decide(c, tls_step::handshake_failed, why);
    c.state = conn_state::closing;
    if (d.action == tls_action::reconnect_plaintext) {
        p.plaintext_until = _now + _cfg->tls_plaintext_after_failure;
        mark_dirty(p);
    } else {
        smtp::reply rep;
        rep.enhanced = std::string(d.enhanced);
        rep.text = d.reason;
        host_failed(p, rep, true);
    }
}

// The session cannot carry mail under its policy (no STARTTLS, or it was
// refused): no message goes; the work moves on with the reason.
inline void delivery_core::tls_unavailable(connection& c, const tls_decision& d) {
    smtp::reply rep;
    rep.enhanced = d.enhanced.empty() ? std::string("4.7.4") : std::string(d.enhanced);
    rep.text = d.reason;
    c.state = conn_state::closing;
    host_failed(*c.pool, rep, true);
    c.client.quit();
}

}  // namespace mxpress::engine
