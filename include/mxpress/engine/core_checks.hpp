// mxpress/engine/core_checks.hpp — the delivery core's self-checks:
// check_invariants() (every recipient in exactly one place, connection
// limits) and describe_holdings() (where the recipients are), for the
// simulator and tests. Included by core.hpp; not meant to be included alone.
#pragma once

#include "mxpress/engine/core.hpp"

namespace mxpress::engine {

// ---- invariants ---------------------------------------------------------------------

inline std::string delivery_core::check_invariants() const {
    std::string problems;
    std::size_t held = 0;
    std::size_t held_by_domains = 0;
    _domains.for_each([&](const domain_state& d) {
        held += d.waiting.size();
        held_by_domains += d.held;
        if (!d.waiting.empty() && d.state != domain_state::status::resolving) {
            problems += fmt::format("domain {} has waiting recipients but no lookup under way; ", d.name);
        }
    });
    _pools.for_each([&](const mx_pool& p) {
        const std::size_t limit = std::max<std::size_t>({1, p.connections_max, p.shrinking_from});
        held += p.work.size();
        std::size_t live = 0;
        for (const connection* c : p.conns) {
            live += c->state == conn_state::ended ? 0 : 1;
        }
        if (live > (p.proven ? limit : 1)) {
            problems +=
                fmt::format("pool {} has {} connections (limit {}); ", p.session_key, live, p.proven ? limit : 1);
        }
    });
    for (const auto& [id, c] : _conns) {
        for (const connection::slot& sl : c->slots) {
            held += sl.r != nullptr ? 1 : 0;
        }
        if (std::find(c->pool->conns.begin(), c->pool->conns.end(), c.get()) == c->pool->conns.end()) {
            problems += fmt::format("connection {} is missing from its pool; ", id);
        }
    }
    held += _retries.size();
    if (held != _pending) {
        problems += fmt::format("{} recipients held in queues, {} pending; ", held, _pending);
    }
    if (held_by_domains != _pending) {
        problems += fmt::format("domains count {} recipients, {} pending; ", held_by_domains, _pending);
    }
    return problems;
}

inline std::string delivery_core::describe_holdings() const {
    std::string out;
    _domains.for_each([&](const domain_state& d) {
        if (!d.waiting.empty()) {
            out += fmt::format("domain {} ({}): {} waiting for a lookup; ", d.name, static_cast<int>(d.state),
                               d.waiting.size());
        }
    });
    _pools.for_each([&](const mx_pool& p) {
        if (!p.work.empty() || !p.conns.empty()) {
            out += fmt::format("pool {}: {} queued, {} connections, dirty {}, proven {}, down for {} ms; ",
                               p.session_key, p.work.size(), p.conns.size(), p.dirty, p.proven,
                               std::chrono::duration_cast<std::chrono::milliseconds>(p.down_until - _now).count());
        }
    });
    for (const auto& [id, c] : _conns) {
        out += fmt::format("connection {} ({}) busy {}; ", id, to_string(c->state), c->busy());
    }
    if (!_retries.empty()) {
        out += fmt::format("{} in the retry queue; ", _retries.size());
    }
    return out;
}

}  // namespace mxpress::engine
