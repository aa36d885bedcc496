// mxpress/engine/core_rules.hpp — the delivery core's side of the adaptive
// rules (rules.hpp, throttle.hpp): a reply that matches one counts toward
// it; a destination a rule suspended or stopped takes no transaction.
//
// - A reply counts for the scope rules.hpp describes: the domain, or its
//   provider (one throttle for every shard, provider.hpp).
// - scale leaves the reply its usual meaning (a 421 is a deferral); suspend
//   and stop take the recipient back whatever the code, since such a reply
//   is about the sender, not the address (a 5xx block does not bounce it).
// - A recipient of a suspended destination waits in the retry queue until
//   the suspension lifts, and the wait does not age it (first_attempt moves
//   on by as much), so a suspension never makes mail expire. One of a
//   stopped destination leaves unfinished (journaled `deferred`, due at
//   once): `--resume` after the fix sends it.
// - Checked where work is taken: enqueue() for what arrives or comes due,
//   fill() for what queued at a host before the rule fired.
// - A connection limit is not a rate limit. A reply that ends a session at
//   its greeting or EHLO while another session of this shard's to the same
//   host carries mail (others_carry_mail: what host_failed learns a
//   connection ceiling from, e.g. Exim's smtp_accept_max_per_host "421 Too
//   many concurrent SMTP connections …; please try again later.") counts
//   toward no scale rule: the learned ceiling is the answer to it, and the
//   message rate is not what the receiver refused. It still counts toward
//   suspend and stop rules (a block or an authentication failure is about
//   the sender whenever it comes), and a refusal with no other session
//   carrying mail (the host's only answer to us) counts toward all rules.
//   Only the rule that matched first is looked at: a scale rule that
//   matches such a refusal is skipped, not replaced by a later rule. Across
//   shards each pool is its own: with several threads, a shard whose own
//   sessions were all refused still counts the refusal.
#pragma once

#include <algorithm>
#include <unordered_map>

#include "mxpress/engine/core.hpp"

namespace mxpress::engine {

// Takes over what a stopped run's rule left on a destination (its journal
// event line), as if the time between had passed here: a suspension still
// on holds until it lifts; a scaled rate has recovered the steps since.
// A stop is not restored: the fix is why the run is resumed.
inline void restore_throttle(throttle& t, const journal_rule_event& ev, const rule_set& rules, clock::time_point now,
                             std::chrono::system_clock::time_point wall_now) {
    if (ev.rate <= 0 || (ev.action != "scale" && ev.action != "suspend")) {
        return;
    }
    double step = 0.10;
    std::chrono::milliseconds every = std::chrono::minutes(5);
    for (const rule& r : rules.rules) {
        if (r.name == ev.rule) {
            step = r.recover_step;
            every = r.recover_every;
        }
    }
    const std::int64_t wall_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(wall_now.time_since_epoch()).count();
    auto steady = [&](std::int64_t ms) { return now + std::chrono::milliseconds(ms - wall_ms); };
    if (ev.action == "suspend") {
        t.restore_suspended(steady(ev.until_ms), ev.rate, ev.base, step, every, ev.rule);
    } else {
        t.restore_scaled(ev.rate, ev.base, step, every, steady(ev.ts_ms), ev.rule);
    }
    t.advance(now);
}

// `connection_limit`: the reply refused one more session while others
// carry mail (the header): it counts toward no scale rule.
inline const rule* delivery_core::apply_rules(domain_state* d, provider_state* prov, const smtp::reply& rep,
                                              clock::time_point sent, bool connection_limit) {
    if (rep.code < 400 || (d == nullptr && prov == nullptr)) {
        return nullptr;
    }
    const rule_set& rules = _cfg->rules;
    const std::string line = rep.one_line();
    const rule* m = rules.match(rep.code, line, d != nullptr ? std::string_view(d->name) : std::string_view(),
                                prov != nullptr ? std::string_view(prov->config().name) : std::string_view());
    if (m == nullptr) {
        return nullptr;
    }
    if (connection_limit && m->action == rule_action::scale) {
        return m;  // a concurrency limit: the learned ceiling answers it, not the rate
    }
    const std::size_t index = static_cast<std::size_t>(m - rules.rules.data());
    rule_firing f;
    bool fired = false;
    if (prov != nullptr && (m->domain.empty() || d == nullptr)) {
        fired = prov->rule_hit(*m, index, _now, f, sent);
    } else {
        fired = d->adapt.hit(*m, index, _now, d->configured_rate, d->meter.measure(_now), f, sent);
        if (fired) {
            f.scope = "domain:" + d->name;
            refresh_pace(*d);
            _held_domains.insert(d->name);
        }
    }
    if (!fired) {
        return m;
    }
    f.reply = line;
    switch (f.action) {
        case rule_action::scale: shard_stats::add(_stats.rule_scaled); break;
        case rule_action::suspend: shard_stats::add(_stats.rule_suspended); break;
        case rule_action::stop: shard_stats::add(_stats.rule_stopped); break;
    }
    rule_tally& t = _rule_tallies[{f.rule, f.scope}];
    ++t.count;
    t.last = f;
    _sink.rule_fired(f);
    return m;
}

inline delivery_core::held_summary delivery_core::held_destinations() {
    held_summary out;
    for (auto it = _held_domains.begin(); it != _held_domains.end();) {
        domain_state* d = _domains.find(*it);
        if (d != nullptr && d->adapt.advance(_now)) {
            refresh_pace(*d);
        }
        if (d == nullptr || d->adapt.current() == throttle::state::normal) {
            it = _held_domains.erase(it);
            continue;
        }
        ++out.count;
        if (out.example.empty() || d->adapt.current() == throttle::state::stopped) {
            out.example = *it + ": " + d->adapt.describe(_now);
        }
        ++it;
    }
    return out;
}

// The domain's pace as its throttle says: the scaled rate, else its own.
inline void delivery_core::refresh_pace(domain_state& d) {
    const throttle::state st = d.adapt.current();
    rate r;
    if (st == throttle::state::scaled || st == throttle::state::suspended) {
        r = rate_per_second(d.adapt.rate_per_s());
    } else if (const auto lim = _cfg->limits_for(d.name).max_message_rate) {
        r = *lim;
    }
    d.pace.set_rate(r);
    d.send_pace.set_rate(with_slack(r, provider_state::send_slack));
}

// Is the recipient's destination suspended or stopped now? (Moves the
// throttles' time first: a suspension may have lifted, a rate recovered.)
inline delivery_core::hold delivery_core::held(const recipient& r) {
    domain_state& d = *r.domain;
    if (d.adapt.current() != throttle::state::normal) {
        if (d.adapt.advance(_now)) {
            refresh_pace(d);
        }
        if (d.adapt.current() == throttle::state::stopped) {
            return {throttle::state::stopped, {}};
        }
        if (d.adapt.current() == throttle::state::suspended) {
            return {throttle::state::suspended, d.adapt.until()};
        }
    }
    if (d.provider != nullptr && d.provider->adaptive() != throttle::state::normal) {
        clock::time_point until{};
        const throttle::state st = d.provider->advance(_now, until);
        if (st == throttle::state::stopped || st == throttle::state::suspended) {
            return {st, until};
        }
    }
    return {throttle::state::normal, {}};
}

// Takes the recipient when a rule holds its destination back: true then.
inline bool delivery_core::hold_back(std::unique_ptr<recipient>& r) {
    const hold h = held(*r);
    if (h.state == throttle::state::stopped) {
        shard_stats::add(_stats.rule_left);
        r->paced = false;
        leave_unfinished(std::move(r), _now, false);
        return true;
    }
    if (h.state != throttle::state::suspended) {
        return false;
    }
    shard_stats::add(_stats.rule_held);
    r->paced = false;
    if (r->started) {
        r->first_attempt += h.until - _now;  // a suspension does not age it
    }
    r->not_before = h.until;
    park(*r);
    _retries.push(h.until, std::move(r));
    return true;
}

// The front of `p`'s queue may not start a transaction yet and a rule
// scaled its destination down after it queued: its domain's queued mail is
// booked again at the scaled pace and waits parked, so it does not hold up
// the other domains sharing the host (each booking is a slot of its own, no
// earlier than `when`).
inline void delivery_core::rebook_scaled(mx_pool& p, domain_state& d, clock::time_point when) {
    std::deque<std::unique_ptr<recipient>> keep;
    std::deque<std::unique_ptr<recipient>> work;
    work.swap(p.work);
    for (auto& r : work) {
        if (r->domain != &d) {
            keep.push_back(std::move(r));
            continue;
        }
        clock::time_point slot = d.pace.next_free(when);
        if (d.provider != nullptr) {
            slot = d.provider->pace().reserve(slot);
        }
        slot = std::max(when, d.pace.reserve(slot));
        r->paced = true;
        r->not_before = slot;
        park(*r);
        _retries.push(slot, std::move(r));
    }
    p.work.swap(keep);
}

inline bool delivery_core::scaled(const domain_state& d) const noexcept {
    return d.adapt.current() == throttle::state::scaled ||
           (d.provider != nullptr && d.provider->adaptive() == throttle::state::scaled);
}

// What queued at `p` before a rule held its destination back leaves the queue.
inline void delivery_core::hold_back_queue(mx_pool& p) {
    std::deque<std::unique_ptr<recipient>> keep;
    std::deque<std::unique_ptr<recipient>> work;
    work.swap(p.work);
    for (auto& r : work) {
        if (!hold_back(r)) {
            keep.push_back(std::move(r));
        }
    }
    p.work.swap(keep);
}

// A reload gave `d` connection limits of its own or took them away
// (own_pools changed): each target moves to the pool of the same address,
// port, name and TLS policy under the new key, with the domain's mail queued
// at the old one, in order. Transactions under way finish on their
// connections; the old pool, when no domain is left there, is freed once
// they end. A domain without targets (unresolved, or a lookup under way)
// has nothing to move: resolved() keys its pools anew.
inline void delivery_core::repool(domain_state& d) {
    for (mx_pool*& old : d.targets) {
        mx_pool& p = pool_for(d, old->address, old->port, old->mx_name, old->tls, old->implicit_tls);
        assert(&p != old && "own_pools changed, so the key did");
        assert(old->domain_refs > 0);
        --old->domain_refs;
        std::deque<std::unique_ptr<recipient>> keep;
        for (auto& r : old->work) {
            (r->domain == &d ? p.work : keep).push_back(std::move(r));
        }
        old->work.swap(keep);
        mark_dirty(*old);
        mark_dirty(p);
        old = &p;
    }
}

// A reloaded configuration. What is read when it is needed (timeouts,
// retries, TLS policies of hosts routed from now on, the rules) takes
// effect with the swap; what the core derived from the old one is derived
// again here:
// - each domain's rates and connection limits;
// - paced mail is booked again at the rates now in force, once each, in
//   the order it was due: what queued at a host first, then what waits
//   parked (its old slot may be far off at a slower rate, or too soon at a
//   faster one);
// - a domain whose section now sets connection limits, or no longer does,
//   moves to the pools that key names at once (repool), so that its new
//   limits never become those of a pool it shared with other domains;
// - each pool's limits (the strictest of the domains routed to it) and
//   connection pace; connections over a lowered connections_max close as
//   their transactions end (shrinking_from);
// - counts toward rule triggers start over (rules may be numbered anew);
//   a throttle's state in force stays.
inline void delivery_core::reload(std::shared_ptr<const config> c) {
    assert(c != nullptr);
    _cfg_owner = std::move(c);
    _cfg = _cfg_owner.get();
    _domains.for_each([&](domain_state& d) {
        const bool own_pools = d.own_pools;
        set_limits(d);
        if (d.own_pools != own_pools) {
            repool(d);
        }
        d.adapt.forget_hits();
        d.pace.forget_bookings();
        d.send_pace.forget_bookings();
    });
    auto paced = [](const domain_state& d) {
        return !d.pace.unlimited() || (d.provider != nullptr && !d.provider->pace().unlimited());
    };
    // What queued at a host for a paced domain waits parked, due now: ahead
    // of what was parked already when all are booked below, in due order.
    _pools.for_each([&](mx_pool& p) {
        p.connect_pace.set_rate(_cfg->max_connection_rate);
        std::deque<std::unique_ptr<recipient>> keep;
        for (auto& r : p.work) {
            if (!paced(*r->domain)) {
                keep.push_back(std::move(r));
                continue;
            }
            r->paced = true;
            r->not_before = _now;
            park(*r);
            _retries.push(_now, std::move(r));
        }
        p.work.swap(keep);
        mark_dirty(p);
    });
    _retries.reschedule([](const recipient& r) { return r.paced; },
                        [&](recipient& r) {
                            domain_state& d = *r.domain;
                            clock::time_point slot = d.pace.next_free(_now);
                            if (d.provider != nullptr) {
                                slot = d.provider->pace().reserve(slot);
                            }
                            r.not_before = std::max(_now, d.pace.reserve(slot));
                            return r.not_before;
                        });
    std::unordered_map<mx_pool*, std::size_t> before;  // connections_max, for the pools domains route to
    _domains.for_each([&](domain_state& d) {
        for (mx_pool* p : d.targets) {
            if (before.try_emplace(p, p->connections_max).second) {
                set_pool_limits(*p, d);
            } else {
                p->connections_max = std::min<std::size_t>(p->connections_max, d.connections_max);
                p->messages_per_connection_max =
                    std::min<std::uint64_t>(p->messages_per_connection_max, d.messages_per_connection_max);
            }
        }
    });
    for (const auto& [p, was] : before) {
        if (p->connections_max < was && p->conns.size() > std::max<std::size_t>(1, p->connections_max)) {
            p->shrinking_from = std::max(p->shrinking_from, p->conns.size());
        }
    }
}

}  // namespace mxpress::engine
