// mxpress/engine/domain.hpp — destination domains and where their mail goes.
//
// Promises:
// - A domain is resolved once and its targets (MX hosts by preference, each
//   address a pool) are kept until `expires`; recipients that arrive while a
//   lookup is under way wait in the domain, owned by it.
// - The table frees a domain only when nothing refers to it: no recipient
//   of it is held anywhere in the shard (`held` counts them) and no lookup
//   is under way. So memory follows the live domains, not every domain seen.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mxpress/engine/options.hpp"
#include "mxpress/engine/recipient.hpp"
#include "mxpress/engine/throttle.hpp"

namespace mxpress::engine {

struct mx_pool;

struct domain_state {
    enum class status : std::uint8_t { unresolved, resolving, ready };

    std::string name;
    status state = status::unresolved;
    const route* rt = nullptr;                        // borrowed from shard_options; null: MX lookup
    std::vector<mx_pool*> targets;                    // delivery order; each counted in its pool's domain_refs
    clock::time_point expires{};                      // targets are good until then
    std::vector<std::unique_ptr<recipient>> waiting;  // for the lookup under way
    std::size_t held = 0;                             // this domain's recipients the shard holds (any place)
    gcra pace;       // max_message_rate, booked when a recipient enters a host's queue (core_routing.hpp: enqueue)
    gcra send_pace;  // the same rate, taken when a transaction starts (core_sessions.hpp: fill)
    std::uint32_t connections_max = 0;  // [defaults], or the domain's section
    std::uint32_t messages_per_connection_max = 0;
    bool own_pools = false;  // its section sets connection limits: pools of its own
    // The provider every MX host of the domain belongs to (null: none, or
    // hosts of several): its max_message_rate applies too.
    provider_state* provider = nullptr;
    // Adaptive rules acting on the domain itself (throttle.hpp), and its
    // recent sending rate for them.
    throttle adapt;
    rate_meter meter;
    double configured_rate = 0;  // max_message_rate per second; 0: unlimited
};

class domain_table {
public:
    domain_state& get(std::string_view name) {
        auto [it, inserted] = _domains.try_emplace(std::string(name));
        if (inserted) {
            it->second = std::make_unique<domain_state>();
            it->second->name = it->first;
        }
        return *it->second;
    }

    domain_state* find(std::string_view name) {
        auto it = _domains.find(std::string(name));
        return it == _domains.end() ? nullptr : it->second.get();
    }

    // Frees every domain nothing refers to; `release` is called first with
    // each, so its pools can drop their references.
    template <class Release>
    void evict_unused(Release&& release) {
        for (auto it = _domains.begin(); it != _domains.end();) {
            domain_state& d = *it->second;
            // A domain a rule acts on stays: a stop must hold for the run.
            if (d.held == 0 && d.state != domain_state::status::resolving &&
                d.adapt.current() == throttle::state::normal) {
                release(d);
                it = _domains.erase(it);
            } else {
                ++it;
            }
        }
    }

    std::size_t size() const noexcept { return _domains.size(); }
    template <class F>
    void for_each(F&& f) const {
        for (const auto& [name, d] : _domains) {
            f(*d);
        }
    }

private:
    std::unordered_map<std::string, std::unique_ptr<domain_state>> _domains;
};

}  // namespace mxpress::engine
