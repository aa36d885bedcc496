// mxpress/engine/core_routing.hpp — the delivery core's routing: a
// recipient to its domain's next target (resolving first: resolve_mx, or a
// --route), the MX answer turned into pools with their connection limits,
// and the way into a pool's work queue, paced by max_message_rate (domain,
// then provider). Included by core.hpp; not meant to be included alone.
// A file of its own: one topic, from a recipient to a queue; what takes the
// queued work is core_schedule.hpp's.
#pragma once

#include "mxpress/engine/core.hpp"

namespace mxpress::engine {

// ---- routing and MX answers -----------------------------------------------

// Sends a recipient towards its next target, resolving first if needed.
inline void delivery_core::dispatch(std::unique_ptr<recipient> r) {
    if (_draining) {
        leave_unfinished(std::move(r), _now, false);
        return;
    }
    domain_state& d = *r->domain;
    if (!r->started) {
        r->started = true;
        r->first_attempt = _now;
    }
    if (d.state == domain_state::status::ready && d.expires <= _now) {
        d.state = domain_state::status::unresolved;
    }
    if (d.state == domain_state::status::ready) {
        enqueue(std::move(r));
        return;
    }
    d.waiting.push_back(std::move(r));
    if (d.state == domain_state::status::resolving) {
        return;
    }
    d.state = domain_state::status::resolving;
    d.rt = find_route(_o.routes, d.name);
    if (d.rt == nullptr) {
        command c;
        c.kind = command_kind::resolve_mx;
        c.name = d.name;
        _commands.push_back(std::move(c));
        return;
    }
    net::ip_address a;
    if (net::ip_address::parse(d.rt->address.empty() ? d.rt->host : d.rt->address, a)) {
        net::mx_answer ans;
        ans.status = net::dns_status::ok;
        ans.targets.push_back(net::mx_target{d.rt->host, 0, {a}});
        resolved(d, ans);
        return;
    }
    command c;
    c.kind = command_kind::resolve_host;
    c.name = d.name;
    c.host = d.rt->host;
    _commands.push_back(std::move(c));
}

inline void delivery_core::resolved(domain_state& d, const net::mx_answer& ans) {
    std::vector<std::unique_ptr<recipient>> waiting;
    waiting.swap(d.waiting);
    if (ans.status != net::dns_status::ok) {
        d.state = domain_state::status::unresolved;
        smtp::reply rep;
        rep.code = 0;
        rep.enhanced = ans.enhanced;
        rep.text = ans.reason;
        for (auto& r : waiting) {
            if (ans.status == net::dns_status::permanent) {
                final_outcome(std::move(r), outcome_status::bounced, rep, "");
            } else {
                defer(std::move(r), rep, "");
            }
        }
        return;
    }
    release_targets(d);
    const route* rt = d.rt;
    const std::uint16_t port = rt != nullptr ? rt->port : _o.mx_port;
    for (const net::mx_target& t : ans.targets) {
        const tls_policy tls = rt != nullptr && rt->tls ? *rt->tls : _cfg->tls_for(d.name, t.host);
        const bool implicit = rt != nullptr && rt->implicit_tls;
        for (const net::ip_address& a : t.addresses) {
            d.targets.push_back(&pool_for(d, a, port, t.host, tls, implicit));
        }
    }
    d.provider = d.targets.empty() ? nullptr : d.targets.front()->provider;
    for (const mx_pool* p : d.targets) {
        if (p->provider != d.provider) {
            d.provider = nullptr;  // hosts of several providers, or some of none
        }
    }
    d.state = domain_state::status::ready;
    d.expires = _now + _cfg->mx_cache_ttl;
    for (auto& r : waiting) {
        enqueue(std::move(r));
    }
}

// The pool of `d` at an address (counted in its domain_refs). A domain
// whose section sets connection limits has pools of its own: its limits
// hold exactly, and other domains on the same host keep [defaults].
inline mx_pool& delivery_core::pool_for(const domain_state& d, const net::ip_address& a, std::uint16_t port,
                                        const std::string& host, tls_policy tls, bool implicit) {
    mx_pool& p = _pools.get(a, port, host, tls, implicit, d.own_pools ? d.name : std::string_view());
    if (p.connections_max == 0) {  // new
        p.connect_pace = gcra(_cfg->max_connection_rate);
        p.provider = _o.providers != nullptr ? _o.providers->for_host(host) : nullptr;
        set_pool_limits(p, d);
    }
    ++p.domain_refs;
    return p;
}

inline void delivery_core::release_targets(domain_state& d) {
    for (mx_pool* p : d.targets) {
        assert(p->domain_refs > 0);
        --p->domain_refs;
    }
    d.targets.clear();
}

// A pool's connection limits: its domains' (a pool of its own, or
// [defaults] for a shared one), and its provider's messages per connection.
inline void delivery_core::set_pool_limits(mx_pool& p, const domain_state& d) {
    p.connections_max = d.connections_max;
    p.messages_per_connection_max = d.messages_per_connection_max;
    if (p.provider != nullptr && p.provider->messages_per_connection_max() != 0) {
        p.messages_per_connection_max =
            std::min<std::uint64_t>(p.messages_per_connection_max, p.provider->messages_per_connection_max());
    }
}

// A domain's limits, from its [domain."…"] section over [defaults]
// (again after a reload: the paces keep what they booked).
inline void delivery_core::set_limits(domain_state& d) {
    const domain_limits lim = _cfg->limits_for(d.name);
    d.configured_rate = lim.max_message_rate ? per_second(*lim.max_message_rate) : 0.0;
    d.connections_max = std::max<std::uint32_t>(1, lim.connections_max);
    d.messages_per_connection_max = std::max<std::uint32_t>(1, lim.messages_per_connection_max);
    // Keyed by whether the section sets connection limits, not by their
    // values: a reload that changes them keeps the domain's pools.
    d.own_pools = lim.own_connection_limits;
    refresh_pace(d);
}

inline void delivery_core::apply_limits(domain_state& d) {
    set_limits(d);
    if (!_o.rule_restore.empty()) {
        if (auto it = _o.rule_restore.find("domain:" + d.name); it != _o.rule_restore.end()) {
            restore_throttle(d.adapt, it->second, _cfg->rules, _now, std::chrono::system_clock::now());
            refresh_pace(d);
        }
    }
}

// Puts a recipient in the work queue of its current target when its
// domain's max_message_rate allows one more now. Otherwise it books the
// domain's next slot and waits for it parked in the retry queue (so a
// slow domain holds no merge fields and does not count against
// pending_max: the others keep flowing); when the slot comes it goes
// on without asking again. Each attempt at a host takes one slot.
inline void delivery_core::enqueue(std::unique_ptr<recipient> r) {
    if (_draining) {
        leave_unfinished(std::move(r), _now, false);  // its next MX, at the next run
        return;
    }
    if (hold_back(r)) {
        return;  // a rule suspended or stopped its destination
    }
    domain_state& d = *r->domain;
    if (r->paced) {
        r->paced = false;  // its slot came
    } else if (!d.pace.unlimited() || (d.provider != nullptr && !d.provider->pace().unlimited())) {
        // When the domain could go, then the provider's first slot from
        // then on (booked: it is shared), then the domain's at that very
        // time. Booking the domain first would let a busy provider push
        // several of the domain's slots together (seen in the simulator).
        clock::time_point slot = d.pace.next_free(_now);
        if (d.provider != nullptr) {
            slot = d.provider->pace().reserve(slot);
        }
        slot = d.pace.reserve(slot);
        if (slot > _now) {
            const auto wait_ms =
                static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(slot - _now).count());
            shard_stats::add(_stats.throttled);
            shard_stats::add(_stats.throttle_wait_ms, wait_ms);
            if (d.provider != nullptr) {
                d.provider->note_wait(wait_ms);
            }
            r->paced = true;
            r->not_before = slot;
            park(*r);
            _retries.push(slot, std::move(r));
            return;
        }
    }
    enqueue_now(std::move(r));
}

// Puts a recipient in the work queue of its current target, skipping
// targets known to be down; when none is left, defers it.
inline void delivery_core::enqueue_now(std::unique_ptr<recipient> r) {
    domain_state& d = *r->domain;
    while (r->mx_index < d.targets.size() && d.targets[r->mx_index]->down_until > _now) {
        ++r->mx_index;
    }
    if (r->mx_index >= d.targets.size()) {
        smtp::reply rep = r->last_reply;
        if (rep.code == 0 && rep.text.empty()) {
            rep.enhanced = "4.4.1";
            rep.text = "no MX host of " + d.name + " answered";
        }
        const std::string mx = r->last_mx;
        defer(std::move(r), rep, mx);
        return;
    }
    mx_pool& p = *d.targets[r->mx_index];
    p.work.push_back(std::move(r));
    mark_dirty(p);
}

inline void delivery_core::mark_dirty(mx_pool& p) {
    if (!p.dirty) {
        p.dirty = true;
        _dirty.push_back(&p);
    }
}

}  // namespace mxpress::engine
