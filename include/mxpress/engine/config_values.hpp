// mxpress/engine/config_values.hpp — the run configuration's value types:
// the TLS policy, host patterns, durations (durations.hpp: "500ms", "1h30m",
// bounded so no deadline overflows a clock) and `config`, the effective
// settings. Which keys fill them, their defaults and how a file is read are
// config.hpp's.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <optional>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/engine/dkim_config.hpp"
#include "mxpress/engine/durations.hpp"
#include "mxpress/engine/rate.hpp"
#include "mxpress/engine/rules.hpp"
#include "mxpress/engine/sequence.hpp"
#include "mxpress/smtp/client.hpp"

namespace mxpress::engine {

enum class tls_policy : std::uint8_t { disabled, opportunistic, required, verify };

inline const char* to_string(tls_policy p) noexcept {
    switch (p) {
        case tls_policy::disabled: return "disabled";
        case tls_policy::opportunistic: return "opportunistic";
        case tls_policy::required: return "required";
        case tls_policy::verify: return "verify";
    }
    return "?";
}

inline bool parse_tls_policy(std::string_view s, tls_policy& out) {
    for (tls_policy p : {tls_policy::disabled, tls_policy::opportunistic, tls_policy::required, tls_policy::verify}) {
        if (s == to_string(p)) {
            out = p;
            return true;
        }
    }
    return false;
}

// "*.example.net" matches every name ending in ".example.net"; anything else
// matches itself. Both sides are compared in lowercase.
inline bool host_pattern_matches(std::string_view pattern, std::string_view host) {
    if (pattern.starts_with("*.")) {
        const std::string_view suffix = pattern.substr(1);
        return host.size() > suffix.size() && detail::iequals(host.substr(host.size() - suffix.size()), suffix);
    }
    return detail::iequals(pattern, host);
}

inline std::string default_helo_name() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') {
        return "localhost";
    }
    return buf;
}

// A [domain."…"] section's limits; unset ones (nullopt, 0) take [defaults].
struct domain_limits {
    std::string name;  // lowercase
    std::optional<rate> max_message_rate;
    std::uint32_t connections_max = 0;
    std::uint32_t messages_per_connection_max = 0;
    // limits_for(): the domain's section sets connections_max or
    // messages_per_connection_max (its pools are its own).
    bool own_connection_limits = false;
};

// A [provider."…"] section: every MX host whose name matches one of
// `match` belongs to the provider; its limits are one budget for all of
// them, across every shard (engine/provider.hpp). A domain is the
// provider's for max_message_rate when all its MX hosts are.
struct provider_config {
    std::string name;
    std::vector<std::string> match;  // host patterns: exact, or "*." and a suffix
    std::optional<rate> max_message_rate;
    std::uint32_t connections_max = 0;  // 0: no provider-wide limit
    std::uint32_t messages_per_connection_max = 0;
    std::optional<tls_policy> tls;

    bool matches(std::string_view host) const {
        return std::any_of(match.begin(), match.end(),
                           [&](const std::string& p) { return host_pattern_matches(p, host); });
    }
};

// The effective settings. The defaults, limits and docs of the key = value
// fields are in config_keys (one row each); a default-constructed config
// holds those defaults.
struct config {
    config();

    // [defaults]
    std::string helo_name;
    milliseconds retry_initial{};
    milliseconds retry_max{};
    milliseconds max_age{};
    std::uint32_t connections_max = 0;
    std::uint32_t messages_per_connection_max = 0;
    rate max_message_rate;     // per domain
    rate max_connection_rate;  // new connections per MX address
    milliseconds connect_timeout{};
    milliseconds idle_timeout{};
    std::uint32_t pending_max = 0;
    milliseconds host_skip_max{};
    std::uint32_t in_doubt_retries = 0;
    tls_policy tls = tls_policy::opportunistic;
    bool tls_set = false;     // [defaults] tls was given (relays default to verify otherwise)
    std::string tls_ca_file;  // empty: the system's CAs
    std::uint32_t tls_sessions_max = 0;
    milliseconds tls_plaintext_after_failure{};
    bool chunking = true;  // BDAT when the server offers CHUNKING
    // [timeouts]
    smtp::timeouts smtp_timeouts{};
    milliseconds tls_handshake_timeout{};
    // [dns]
    milliseconds dns_timeout{};
    std::uint32_t dns_tries = 0;
    std::uint32_t dns_queries_in_flight_max = 0;
    milliseconds mx_cache_ttl{};
    milliseconds dns_failure_cache_ttl{};
    // [domain."…"] and [mx."…"]
    std::vector<std::pair<std::string, tls_policy>> domain_tls;  // lowercase domain
    std::vector<domain_limits> domain_limit;                     // lowercase domain; those with a limit set
    std::vector<provider_config> providers;                      // in file order: the first match wins
    std::vector<std::pair<std::string, tls_policy>> mx_tls;      // pattern, in file order
    mail::dkim::settings dkim;                                   // [dkim]; no keys: unsigned
    rule_set rules;                                              // [[rule]] then the built-ins ([rules])
    std::vector<sequence_config> sequences;                      // [sequence."…"]: step mail (mxpress steps)

    // Which rows of config_keys the file set (bit i: row i).
    std::uint64_t keys_set = 0;
    bool is_set(std::string_view section, std::string_view name) const;

    // The TLS policy for mail to `domain` through the MX host `mx_host`.
    tls_policy tls_for(std::string_view domain, std::string_view mx_host) const {
        for (const auto& [d, p] : domain_tls) {
            if (detail::iequals(d, domain)) {
                return p;
            }
        }
        if (const provider_config* pc = provider_for(mx_host); pc != nullptr && pc->tls) {
            return *pc->tls;
        }
        for (const auto& [pattern, p] : mx_tls) {
            if (host_pattern_matches(pattern, mx_host)) {
                return p;
            }
        }
        return tls;
    }

    // The provider an MX host belongs to (the first whose match does), or null.
    const provider_config* provider_for(std::string_view mx_host) const {
        for (const provider_config& pc : providers) {
            if (pc.matches(mx_host)) {
                return &pc;
            }
        }
        return nullptr;
    }

    // The limits of mail to `domain`: its [domain."…"] section over [defaults].
    domain_limits limits_for(std::string_view domain) const {
        domain_limits out;
        out.max_message_rate = max_message_rate;
        out.connections_max = connections_max;
        out.messages_per_connection_max = messages_per_connection_max;
        for (const domain_limits& d : domain_limit) {
            if (detail::iequals(d.name, domain)) {
                out.name = d.name;
                if (d.max_message_rate) {
                    out.max_message_rate = d.max_message_rate;
                }
                if (d.connections_max != 0) {
                    out.connections_max = d.connections_max;
                }
                if (d.messages_per_connection_max != 0) {
                    out.messages_per_connection_max = d.messages_per_connection_max;
                }
                out.own_connection_limits = d.connections_max != 0 || d.messages_per_connection_max != 0;
                break;
            }
        }
        return out;
    }
};

}  // namespace mxpress::engine
