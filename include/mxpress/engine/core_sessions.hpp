// mxpress/engine/core_sessions.hpp — the delivery core's connections: one
// SMTP session's life from connect to close (states in connection.hpp).
// Included by core.hpp; not meant to be included alone. The driver's
// events that enter a session (connected, received, input_lost,
// send_done) and the scheduler that opens, fills and closes connections
// are core_schedule.hpp's: this file is what happens inside one.
//
// Promises:
// - A connection has at most one send in flight; the client's output (or,
//   with TLS, its records) waits until that send is done.
// - TLS: the client's bytes go through the connection's channel; under
//   `required` and `verify` the session carries no mail until TLS is up,
//   and a failure moves the work on (next MX, then a retry) with the reason;
//   under `opportunistic` a failed handshake gives that host plaintext for
//   tls_plaintext_after_failure. What each policy means is decide_tls()'s
//   (tls_decision.hpp), the one function the relay pre-flight uses too.
// - A connection torn down during an event is freed (reap()) only when that
//   event returns, so nothing below ever touches a freed connection.
#pragma once

#include "mxpress/engine/core.hpp"

namespace mxpress::engine {

// ---- bytes and SMTP events ------------------------------------------------------

// Bytes from the socket: through TLS when it is on, then to the client.
inline void delivery_core::receive_bytes(connection& c, std::string_view bytes) {
    if (!c.tls) {
        c.client.receive(bytes);
        return;
    }
    c.plain.clear();
    const net::secure_channel::progress p = c.tls->receive(bytes, c.plain);
    if (c.state == conn_state::tls_handshake) {
        handshake_progress(c, p);
        if (c.state == conn_state::ended || c.state == conn_state::tls_handshake) {
            return;
        }
    }
    _tls.keep_sessions(c.pool->session_key, *c.tls);
    if (!c.plain.empty()) {
        c.client.receive(c.plain);
    }
    if (p.now == net::secure_channel::state::closed) {
        c.client.connection_lost("the server ended TLS");
    } else if (p.now == net::secure_channel::state::failed) {
        c.client.connection_lost("TLS: " + c.tls->error());
    }
}

inline void delivery_core::after_client_input(connection& c) {
    if (c.state == conn_state::ended) {
        return;
    }
    while (auto e = c.client.next_event()) {
        handle_event(c, *e);
        if (c.state == conn_state::ended) {
            return;
        }
    }
    fill(c);
    update_deadline(c);
    if (c.client.current_state() == smtp::client::state::closed) {
        teardown(c);
        return;
    }
    pump(c);
}

inline void delivery_core::handle_event(connection& c, const smtp::event& e) {
    mx_pool& p = *c.pool;
    switch (e.kind) {
        case smtp::event_kind::ready: {
            if (c.state != conn_state::opening) {
                break;  // after RSET: fill() gives it work
            }
            if (c.client.tls_active()) {
                session_works(c);  // the EHLO after the handshake (or implicit TLS)
                break;
            }
            const tls_decision d = decide(c, tls_step::ehlo);
            switch (d.action) {
                case tls_action::start_tls: c.client.starttls(); break;
                case tls_action::proceed_tls:
                case tls_action::proceed_plaintext: session_works(c); break;
                default: tls_unavailable(c, d); break;
            }
            break;
        }
        case smtp::event_kind::transaction_done: transaction_done(c, e); break;
        case smtp::event_kind::closed:
            if (c.client.tls_handshake_pending() && c.state != conn_state::closing) {
                // The session ended between STARTTLS and TLS (the client
                // refuses plaintext that follows the 220): a TLS failure.
                note_tls_failure(c, e.last_reply.one_line());
            } else if (c.state == conn_state::opening) {
                // Greeting or EHLO failed: this host is not taking mail now,
                // or (others carry mail) not one more session. The reply
                // counts for the host's provider, or the domain of the mail
                // queued there; a connection limit not toward a scale rule
                // (core_rules.hpp).
                apply_rules(p.work.empty() ? nullptr : p.work.front()->domain, p.provider, e.last_reply, _now,
                            others_carry_mail(p));
                host_failed(p, e.last_reply);
            }
            break;
        case smtp::event_kind::tls_start: start_tls(c); break;
        case smtp::event_kind::tls_refused: {
            const tls_decision d = decide(c, tls_step::starttls_refused, e.last_reply.one_line());
            if (d.action == tls_action::proceed_plaintext) {
                session_works(c);
            } else {
                tls_unavailable(c, d);
            }
            break;
        }
    }
}

inline void delivery_core::transaction_done(connection& c, const smtp::event& e) {
    connection::slot& sl = c.slots[e.tag & 1];
    std::unique_ptr<recipient> r = std::move(sl.r);
    if (r == nullptr) {
        return;
    }
    mx_pool& p = *c.pool;
    _stats.in_flight.fetch_sub(1, std::memory_order_relaxed);
    r->last_tls = c.tls_version();
    r->last_ip = p.key;
    const smtp::reply& rep = e.result->recipients.at(0);
    switch (rep.code / 100) {  // 0: no reply (the session ended first)
        case 2: shard_stats::add(_stats.replies_2xx); break;
        case 4: shard_stats::add(_stats.replies_4xx); break;
        case 5: shard_stats::add(_stats.replies_5xx); break;
        default: break;
    }
    if (e.result->data_sent) {
        r->last_transfer = e.result->bdat ? "BDAT" : "DATA";
        shard_stats::add(e.result->bdat ? _stats.sent_bdat : _stats.sent_data);
    }
    if (p.provider != nullptr) {
        p.provider->note_reply(rep.code);
    }
    const bool closed = c.client.current_state() == smtp::client::state::closed;
    const rule* matched = e.result->in_doubt ? nullptr : apply_rules(r->domain, r->domain->provider, rep, r->sent_at);
    if (matched != nullptr && matched->action != rule_action::scale) {
        // A block or an authentication failure: about the sender, not this
        // address. Held back if the rule fired; retried as usual if not yet.
        r->last_reply = rep;
        r->last_mx = p.mx_name;
        if (!hold_back(r)) {
            defer(std::move(r), rep, p.mx_name);
        }
    } else if (e.result->in_doubt && ++r->in_doubt > _cfg->in_doubt_retries) {
        // The server may hold copies already: another attempt could be one
        // more duplicate in the recipient's mailbox. Say so and stop.
        smtp::reply why = rep;
        why.text = fmt::format(
            "the session ended after the message was sent, before the server's reply, {} time{}: "
            "it may have arrived ({})",
            r->in_doubt, r->in_doubt == 1 ? "" : "s", rep.one_line());
        final_outcome(std::move(r), outcome_status::in_doubt, why, p.mx_name);
    } else if (rep.positive()) {
        final_outcome(std::move(r), outcome_status::delivered, rep, p.mx_name);
    } else if (rep.permanent()) {
        final_outcome(std::move(r), outcome_status::bounced, rep, p.mx_name);
    } else if (closed && c.client.transactions_completed() > 0 && !r->retried_fresh && !_draining) {
        // A reused session ended under this message (the server dropped it
        // while idle, or said 421): once, a new connection to the same host
        // takes it first.
        r->retried_fresh = true;
        p.work.push_front(std::move(r));
        mark_dirty(p);
    } else if (closed) {
        // The session broke: try the next MX host now.
        r->last_reply = rep;
        r->last_mx = p.mx_name;
        ++r->mx_index;
        enqueue(std::move(r));
    } else {
        defer(std::move(r), rep, p.mx_name);
    }
}

// The session can carry mail (TLS as the policy wants, or plaintext allowed).
inline void delivery_core::session_works(connection& c) {
    mx_pool& p = *c.pool;
    c.state = conn_state::open;
    p.down_until = {};
    if (p.ceiling != 0) {
        std::size_t working = 0;
        for (const connection* o : p.conns) {
            working += o->took_mail() ? 1 : 0;
        }
        if (working > p.ceiling) {
            // A probe got a session: the limit is higher than learned.
            p.ceiling = working;
            p.probe_wait = probe_wait_first;
            if (p.ceiling >= p.connections_max) {
                p.ceiling = 0;
                p.probe_wait = {};
            } else {
                plan_probe(p);
            }
        }
    }
    if (!p.proven) {
        p.proven = true;
        mark_dirty(p);  // open the rest now
    }
}

// The second half of max_message_rate: the rate at which transactions
// start. Entry to a host's queue is paced already (enqueue), but what queued
// while the host's connections were busy (a provider's connections_max, a
// slow host) would otherwise leave back to back. Takes a cell of the
// domain's and the provider's send pace, or says when both will have one.
// The send pace has provider_state::send_slack of extra burst, so that
// starting late (a tick, a round trip) does not slow the rate down.
inline bool delivery_core::may_send(const recipient& r, clock::time_point& when) {
    domain_state& d = *r.domain;
    const bool provider = d.provider != nullptr && !d.provider->send_pace().unlimited();
    if (d.send_pace.unlimited() && !provider) {
        return true;
    }
    if (const clock::time_point t = d.send_pace.next_free(_now); t > _now) {
        when = t;
        return false;
    }
    if (provider && !d.provider->send_pace().take(_now, when)) {
        return false;
    }
    const bool took = d.send_pace.take(_now, when);
    assert(took);
    (void)took;
    return true;
}

// Connections of `p` not on their way out.
inline std::size_t delivery_core::staying(const mx_pool& p) noexcept {
    return static_cast<std::size_t>(std::count_if(p.conns.begin(), p.conns.end(), [](const connection* c) {
        return c->state != conn_state::closing && c->state != conn_state::ended;
    }));
}

// Gives the connection work while its session can take a transaction: one
// when ready, a second one back to back once the first body is out. Without
// work it goes idle (or says QUIT when the run is over).
inline void delivery_core::fill(connection& c) {
    mx_pool& p = *c.pool;
    while ((c.state == conn_state::open || c.state == conn_state::idle) && c.client.can_start_transaction()) {
        const bool ready = c.client.current_state() == smtp::client::state::ready;
        // A reload lowered connections_max: the extra ones close between transactions.
        const bool surplus = (p.shrinking_from != 0 && staying(p) > std::max<std::size_t>(1, p.connections_max)) ||
                             (p.provider != nullptr && p.provider->connections_max() != 0 &&
                              p.provider->connections() > p.provider->connections_max());
        const bool used_up = c.messages >= p.messages_per_connection_max || surplus;
        // Another shard waits for a place under the provider's
        // connections_max and this one holds more than its share: give one back.
        const bool yield = ready && c.holds_provider_place && p.provider->should_yield(_o.shard_index, _now);
        if (used_up || yield || p.work.empty()) {
            if (ready) {
                if (used_up || yield || run_over() || _draining) {
                    c.state = conn_state::closing;
                    c.client.quit();
                } else if (c.state != conn_state::idle) {
                    c.state = conn_state::idle;
                    c.idle_since = _now;
                }
            }
            return;
        }
        if (held(*p.work.front()).state != throttle::state::normal) {
            hold_back_queue(p);  // queued before a rule suspended or stopped its destination
            continue;
        }
        if (clock::time_point when{}; !may_send(*p.work.front(), when)) {
            if (domain_state& d = *p.work.front()->domain; scaled(d) && p.work.size() > 1) {
                rebook_scaled(p, d, when);  // a rule slowed it after it queued: do not hold the others up
                continue;
            }
            // Over its domain's or provider's rate right now (mail that
            // queued while the host was busy): wait, and look again then.
            if (ready && c.state != conn_state::idle) {
                c.state = conn_state::idle;
                c.idle_since = _now;
            }
            if (!p.send_wake_armed) {
                p.send_wake_armed = true;
                _probes.emplace(when, p.session_key);
            }
            return;
        }
        const unsigned k = c.slots[0].r == nullptr ? 0 : 1;
        assert(c.slots[k].r == nullptr);
        connection::slot& sl = c.slots[k];
        std::unique_ptr<recipient> r = std::move(p.work.front());
        p.work.pop_front();
        c.state = conn_state::open;
        ++r->attempts;
        r->fields(_fields);
        // Rendered for this session: without 8BITMIME an 8-bit body goes
        // quoted-printable (RFC 6152 forbids raw 8-bit to such a server).
        _renderer.allow_eight_bit(c.client.caps().eight_bit_mime);
        if (sl.message.use_count() > 1) {
            // A send still holds the last body (its transaction ended before
            // the send did: a connection torn down): render into a new one.
            sl.message = std::make_shared<std::string>();
        }
        const mail::render_result rr = _renderer.render(_fields, *sl.message, r->line);
        if (!rr.ok()) {
            smtp::reply rep;
            if (rr.needs_8bitmime) {
                rep.code = 554;
                rep.enhanced = "5.6.3";
                rep.text = rr.error;
                final_outcome(std::move(r), outcome_status::bounced, rep, p.mx_name);
            } else {
                rep.text = "cannot render: " + rr.error;
                final_outcome(std::move(r), outcome_status::invalid, rep, "");
            }
            continue;
        }
        smtp::envelope env;
        env.mail_from = _o.from;
        env.rcpt_to.push_back(r->email);
        env.eight_bit = rr.eight_bit;
        env.smtputf8 = r->smtputf8 || rr.needs_smtputf8;
        r->sent_at = _now;
        r->domain->meter.note(_now);  // what a rule scales from when no rate is configured
        if (r->domain->provider != nullptr) {
            r->domain->provider->note_sent(_now);
        }
        sl.r = std::move(r);
        ++c.messages;
        shard_stats::add(_stats.attempts);
        shard_stats::add(_stats.in_flight);
        // Only this shard's thread writes both: a plain load and store.
        if (const std::uint64_t now = _stats.in_flight.load(std::memory_order_relaxed);
            now > _stats.in_flight_peak.load(std::memory_order_relaxed)) {
            _stats.in_flight_peak.store(now, std::memory_order_relaxed);
        }
        if (_o.gather_sends && c.tls == nullptr) {
            c.client.start_transaction(env, std::shared_ptr<const std::string>(sl.message), k);
        } else {
            c.client.start_transaction(env, std::string_view(*sl.message), k);
        }
        // A transaction refused locally (SIZE, SMTPUTF8) completes at once.
        while (auto e = c.client.next_event()) {
            handle_event(c, *e);
        }
    }
}

// Starts a send when none is in flight and there is something to send.
inline void delivery_core::pump(connection& c) {
    if (c.state == conn_state::ended || c.state == conn_state::connecting || c.send_in_flight) {
        return;
    }
    std::string& out = c.spare;
    out.clear();
    std::vector<smtp::body_piece> pieces;
    if (c.tls) {
        // Everything the client wrote since the last send becomes records
        // behind whatever the handshake queued (held until it completes).
        if (c.client.has_output()) {
            c.client.take_output(c.plain_out);
            if (!c.tls->send(c.plain_out)) {
                teardown(c);
                return;
            }
        }
        if (!c.tls->has_output()) {
            return;
        }
        c.tls->take_output(out);
    } else {
        if (!c.client.has_output()) {
            return;
        }
        c.client.take_output(out, pieces);  // a swap, not a copy; bodies as pieces
        if (pieces.size() > send_pieces_max) {
            smtp::flatten(out, pieces);
        }
    }
    c.send_in_flight = true;
    command cmd;
    cmd.kind = command_kind::send;
    cmd.conn = c.id;
    cmd.data = std::move(out);
    cmd.pieces = std::move(pieces);
    _commands.push_back(std::move(cmd));
}

inline void delivery_core::update_deadline(connection& c) {
    switch (c.state) {
        case conn_state::connecting:
        case conn_state::ended: return;  // the connect deadline stands
        case conn_state::tls_handshake: c.deadline = c.tls_deadline; return;
        default: {
            const auto t = c.client.timeout();
            c.deadline = t ? _now + *t : clock::time_point::max();
        }
    }
}

// ---- failures and the end of a connection ------------------------------------------------

// Connect failure or a refused session: mark the host down for a while and
// move its queued work to each recipient's next MX. `force`: the failure is
// the host's whatever other connections did (TLS).
inline void delivery_core::host_failed(mx_pool& p, const smtp::reply& why, bool force) {
    if (others_carry_mail(p) && !force) {
        // The host works but refused one more session: it limits
        // connections (Postfix's smtpd_client_connection_count_limit, the big
        // providers' 421 4.7.0). Stay at what works; probe again later.
        learn_ceiling(p);
        return;
    }
    p.down_until = _now + std::min<std::chrono::milliseconds>(_cfg->retry_initial, _cfg->host_skip_max);
    std::deque<std::unique_ptr<recipient>> work;
    work.swap(p.work);
    for (auto& r : work) {
        ++r->attempts;  // this host was tried for it
        r->last_reply = why;
        r->last_mx = p.mx_name;
        r->last_ip = p.key;
        ++r->mx_index;
        enqueue(std::move(r));
    }
}

// Another session of this shard's to `p` carries mail (or waits for more):
// a session refused now is the host's connection limit, not the host down.
inline bool delivery_core::others_carry_mail(const mx_pool& p) noexcept {
    return std::any_of(p.conns.begin(), p.conns.end(), [](const connection* c) { return c->took_mail(); });
}

inline void delivery_core::learn_ceiling(mx_pool& p) {
    std::size_t working = 0;
    for (const connection* c : p.conns) {
        working += c->took_mail() ? 1 : 0;
    }
    assert(working > 0);
    const bool waiting = p.ceiling != 0 && _now < p.probe_after;
    p.ceiling = working;
    if (waiting) {
        return;  // one more of the burst that opened before the first refusal
    }
    p.probe_wait = p.probe_wait.count() == 0 ? probe_wait_first : std::min(p.probe_wait * 2, probe_wait_max);
    plan_probe(p);
}

inline void delivery_core::plan_probe(mx_pool& p) {
    p.probe_after = _now + p.probe_wait;
    _probes.emplace(p.probe_after, p.session_key);
}

inline void delivery_core::connection_failed(connection& c, const std::string& why) {
    smtp::reply rep;
    rep.code = 0;
    rep.enhanced = "4.4.1";
    rep.text = why;
    host_failed(*c.pool, rep);
    teardown(c);
}

// Ends a connection: a close command goes out; the core forgets it when the
// current event returns (reap).
inline void delivery_core::teardown(connection& c) {
    if (c.state == conn_state::ended) {
        return;
    }
    c.state = conn_state::ended;
    shard_stats::add(_stats.connections_closed);
    if (c.holds_provider_place) {
        c.holds_provider_place = false;
        c.pool->provider->closed(_o.shard_index);
    }
    for (connection::slot& sl : c.slots) {
        if (sl.r != nullptr) {
            // Not expected (the client reports every transaction first),
            // but never lose a recipient.
            _stats.in_flight.fetch_sub(1, std::memory_order_relaxed);
            smtp::reply rep;
            rep.enhanced = "4.4.2";
            rep.text = "connection ended";
            defer(std::move(sl.r), rep, c.pool->mx_name);
        }
    }
    command cmd;
    cmd.kind = command_kind::close;
    cmd.conn = c.id;
    _commands.push_back(std::move(cmd));
    _ended.push_back(c.id);
}

inline void delivery_core::reap() {
    for (conn_id id : _ended) {
        auto it = _conns.find(id);
        if (it == _conns.end()) {
            continue;
        }
        mx_pool& p = *it->second->pool;
        auto& v = p.conns;
        v.erase(std::remove(v.begin(), v.end(), it->second.get()), v.end());
        if (p.shrinking_from != 0 && v.size() <= std::max<std::size_t>(1, p.connections_max)) {
            p.shrinking_from = 0;  // back within the reloaded limit
        }
        mark_dirty(p);
        _conns.erase(it);
    }
    _ended.clear();
}

}  // namespace mxpress::engine
