// mxpress/engine/core_schedule.hpp — the delivery core's entry points and
// its scheduler: the driver's connection events (connected, received,
// input_lost, send_done), tick() (retries due, probes, deadlines, idle
// connections), schedule(), and what it does per pool: work to idle
// connections, new connections within the limits (slow start, a learned
// ceiling, the provider's places, max_connection_rate), idle ones closed,
// deadlines acted on. Included by core.hpp; not meant to be included alone.
// A file of its own: one topic, when connections open, take work and close;
// what happens inside a session is core_sessions.hpp's.
#pragma once

#include <cstring>

#include "mxpress/engine/core.hpp"

namespace mxpress::engine {

// ---- events -------------------------------------------------------------------

inline void delivery_core::connected(conn_id id, int res) {
    if (connection* c = find(id); c != nullptr && c->state == conn_state::connecting) {
        if (res < 0) {
            connection_failed(*c, fmt::format("connect to {}: {}", c->pool->key, std::strerror(-res)));
        } else {
            c->state = conn_state::opening;
            if (c->pool->implicit_tls) {
                start_tls(*c);
            }
            if (c->state != conn_state::ended) {
                update_deadline(*c);
            }
        }
    }
    reap();
}

inline void delivery_core::received(conn_id id, std::string_view bytes) {
    if (connection* c = find(id)) {
        receive_bytes(*c, bytes);
        after_client_input(*c);
    }
    reap();
}

inline void delivery_core::input_lost(conn_id id, std::string_view why) {
    if (connection* c = find(id)) {
        if (c->state == conn_state::tls_handshake) {
            tls_failed(*c, fmt::format("connection lost during the TLS handshake: {}", why));
        } else {
            c->client.connection_lost(why);
            after_client_input(*c);
        }
    }
    reap();
}

inline void delivery_core::send_done(conn_id id, int res, std::string& buffer) {
    if (connection* c = find(id)) {
        assert(c->send_in_flight);
        c->send_in_flight = false;
        c->spare.swap(buffer);
        if (res < 0) {
            c->client.connection_lost(std::strerror(-res));
            after_client_input(*c);
        } else {
            shard_stats::add(_stats.sent_bytes, static_cast<std::uint64_t>(res));
            // The wait changes with the send: after the final dot went out,
            // RFC 5321's data_term (10 min), not data_block, runs.
            update_deadline(*c);
            pump(*c);
        }
    }
    reap();
}

// ---- scheduling ---------------------------------------------------------------

inline void delivery_core::tick() {
    std::vector<std::unique_ptr<recipient>> due;
    _retries.pop_due(_now, due);
    for (auto& r : due) {
        unpark(*r);
        dispatch(std::move(r));
    }
    while (!_probes.empty() && _probes.top().first <= _now) {
        if (mx_pool* p = _pools.find(_probes.top().second); p != nullptr) {
            p->send_wake_armed = false;
            if (!p->work.empty()) {
                mark_dirty(*p);
            }
        }
        _probes.pop();
    }

    check_deadlines();
    close_idle(false);
    if (_now - _last_eviction >= eviction_every) {
        _last_eviction = _now;
        evict_unused();
    }
}

inline void delivery_core::schedule() {
    while (!_dirty.empty()) {
        mx_pool* p = _dirty.back();
        _dirty.pop_back();
        p->dirty = false;
        schedule_pool(*p);
    }
    if (run_over()) {
        close_idle(true);
    }
}

inline void delivery_core::schedule_pool(mx_pool& p) {
    // Idle connections take work first.
    for (connection* c : p.conns) {
        if (p.work.empty()) {
            break;
        }
        if (c->state != conn_state::idle || c->client.current_state() != smtp::client::state::ready) {
            continue;
        }
        c->state = conn_state::open;
        if (_now - c->idle_since >= reuse_check_after) {
            // Idle a while: RSET checks the session still works; its ready
            // event puts the connection back to work.
            c->client.reset();
        } else {
            fill(*c);
        }
        update_deadline(*c);
        pump(*c);
    }
    if (p.work.empty()) {
        return;
    }
    if (p.down_until > _now) {
        if (p.conns.empty()) {
            // Work reached a host that went down (a requeue after its session
            // broke) and no connection here will take it: it moves on to the
            // next MX, or to a retry, now. (Found by the simulator: it waited
            // forever.)
            std::deque<std::unique_ptr<recipient>> work;
            work.swap(p.work);
            for (auto& r : work) {
                ++r->mx_index;
                enqueue(std::move(r));
            }
        }
        return;
    }
    // Connections about to take work: new ones, and reused ones checking
    // their session with RSET. One more opens only for work beyond them.
    std::size_t starting = 0;
    for (const connection* c : p.conns) {
        starting += c->state == conn_state::connecting || c->state == conn_state::tls_handshake ||
                            c->state == conn_state::opening ||
                            (c->state == conn_state::open && c->client.current_state() == smtp::client::state::rset)
                        ? 1
                        : 0;
    }
    std::size_t limit = p.proven ? std::max<std::size_t>(1, p.connections_max) : 1;
    if (p.ceiling != 0) {
        limit = std::min(limit, p.ceiling + (_now >= p.probe_after ? 1 : 0));
    }
    while (p.conns.size() < limit && starting < p.work.size()) {
        clock::time_point when{};
        if (p.provider != nullptr && !p.provider->try_open(_o.shard_index, _now)) {
            // The provider's connections_max, counted across shards: a place
            // freed by another shard cannot wake this one, so look again soon.
            _probes.emplace(_now + provider_state::recheck, p.session_key);
            return;
        }
        if (!p.connect_pace.take(_now, when)) {
            if (p.provider != nullptr) {
                p.provider->closed(_o.shard_index);  // the place taken just above
            }
            _probes.emplace(when, p.session_key);  // max_connection_rate: wake then
            return;
        }
        open_connection(p);
        p.conns.back()->holds_provider_place = p.provider != nullptr;
        ++starting;
    }
}

inline void delivery_core::open_connection(mx_pool& p) {
    const conn_id id = _next_conn_id++;
    auto c = std::make_unique<connection>(id, &p, _cfg->helo_name, _cfg->smtp_timeouts);
    c->client.set_chunking(_cfg->chunking);
    if (!_o.auth_user.empty()) {
        c->client.set_credentials(_o.auth_user, _o.auth_password);
    }
    if (p.implicit_tls) {
        c->client.implicit_tls();
    }
    c->deadline = _now + _cfg->connect_timeout;
    p.conns.push_back(c.get());
    shard_stats::add(_stats.connections_opened);
    command cmd;
    cmd.kind = command_kind::connect;
    cmd.conn = id;
    cmd.addr = p.addr;
    cmd.addr_len = p.addr_len;
    _commands.push_back(std::move(cmd));
    _conns.emplace(id, std::move(c));
}

// Closes the idle connections whose idle_timeout is over (all of them when
// the run is done), and those of a host with nothing queued whose
// provider's place another host waits for.
inline void delivery_core::close_idle(bool all_done) {
    for (auto& [id, cp] : _conns) {
        connection& c = *cp;
        if (c.state == conn_state::idle && c.client.current_state() == smtp::client::state::ready &&
            (all_done || _now - c.idle_since >= _cfg->idle_timeout ||
             (c.holds_provider_place && c.pool->work.empty() && c.pool->provider->wants_idle_place(_now)))) {
            c.state = conn_state::closing;
            c.client.quit();
            update_deadline(c);
            pump(c);
        }
    }
    reap();
}

inline void delivery_core::check_deadlines() {
    std::vector<conn_id> expired;
    for (const auto& [id, c] : _conns) {
        if (c->state != conn_state::ended && c->deadline <= _now) {
            expired.push_back(id);
        }
    }
    for (conn_id id : expired) {
        connection* c = find(id);
        if (c == nullptr) {
            continue;  // torn down by an earlier one's failure
        }
        switch (c->state) {
            case conn_state::tls_handshake:
                tls_failed(*c,
                           fmt::format("handshake timed out after {}", format_duration(_cfg->tls_handshake_timeout)));
                break;
            case conn_state::connecting:
                connection_failed(*c, fmt::format("connect to {}: timed out", c->pool->key));
                break;
            default:
                c->client.timed_out();
                after_client_input(*c);
                break;
        }
    }
    reap();
}

}  // namespace mxpress::engine
