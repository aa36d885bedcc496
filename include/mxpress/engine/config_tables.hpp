// mxpress/engine/config_tables.hpp — the configuration's sections that are
// not plain key = value tables, each one's reader and its printer:
// [domain."…"] (tls and limits), [mx."…"] (tls), [provider."…"] and [rules].
// config.hpp's config_sections row of each points here. A file of its own:
// one topic, these tables, apart from the key rows (config.hpp) and
// check-config's output (config_describe.hpp).
//
// Included by config.hpp, after the key errors its readers reuse
// (range_of, rate_error) and before config_sections, which names them; not
// meant to be included alone.
#pragma once

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/engine/config_keys.hpp"
#include "mxpress/engine/config_values.hpp"
#include "mxpress/engine/toml_errors.hpp"

namespace mxpress::engine::detail_config {

using namespace toml_errors;

// A [domain."…"] limit key, or false when `key` is not one.
inline bool get_domain_limit(const std::string& file, const std::string& table, std::string_view key,
                             const toml::node& value, domain_limits& out) {
    if (key == "max_message_rate") {
        const auto* s = value.as_string();
        rate r;
        if (s == nullptr || !parse_rate(s->get(), r)) {
            fail(file, value, rate_error(fmt::format("[{}] {}", table, key)));
        }
        out.max_message_rate = r;
        return true;
    }
    const bool conns = key == "connections_max";
    if (!conns && key != "messages_per_connection_max") {
        return false;
    }
    // The same limits as the [defaults] rows of the same name.
    const config_key* k = nullptr;
    for (const config_key& row : config_keys) {
        if (row.section == "defaults" && row.name == key) {
            k = &row;
        }
    }
    assert(k != nullptr);
    const auto* v = value.as_integer();
    if (v == nullptr || v->get() < k->min || v->get() > k->max) {
        fail(file, value, fmt::format("[{}] {} must be an integer in {}", table, key, range_of(*k)));
    }
    (conns ? out.connections_max : out.messages_per_connection_max) = static_cast<std::uint32_t>(v->get());
    return true;
}

// [domain."x"] (tls and limits) or [mx."pattern"] (tls): a table of tables.
inline void get_tls_entries(const std::string& file, std::string_view kind, const toml::node& node,
                            std::vector<std::pair<std::string, tls_policy>>& out,
                            std::vector<domain_limits>* limits = nullptr) {
    const auto* t = node.as_table();
    if (t == nullptr) {
        fail(file, node, fmt::format("'{}' must be a table of tables: [{}.\"name\"]", kind, kind));
    }
    for (auto&& [name_key, entry] : *t) {
        std::string name(name_key.str());
        for (char& ch : name) {
            ch = detail::to_lower(ch);
        }
        const std::string table = fmt::format("{}.\"{}\"", kind, name);
        if (name.empty() || name.find_first_of(" \t\r\n") != std::string::npos ||
            (kind == "domain" && name.find('*') != std::string::npos) ||
            (kind == "mx" && name.find('*') != std::string::npos &&
             !(name.starts_with("*.") && name.size() > 2 && name.find('*', 1) == std::string::npos))) {
            fail(file, entry,
                 kind == "domain" ? fmt::format("[{}]: a domain name, without wildcards", table)
                                  : fmt::format("[{}]: a host name, or \"*.\" and a suffix", table));
        }
        const auto* et = entry.as_table();
        if (et == nullptr) {
            fail(file, entry, fmt::format("[{}] must be a table", table));
        }
        domain_limits dl;
        dl.name = name;
        for (auto&& [key, value] : *et) {
            if (limits != nullptr && get_domain_limit(file, table, key.str(), value, dl)) {
                continue;
            }
            if (key.str() != "tls") {
                fail_unknown_key(file, value, key.str(), fmt::format("[{}]", table),
                                 fmt::format("{}; quote a dotted name: [{}.\"example.com\"]",
                                             limits != nullptr
                                                 ? "tls, max_message_rate, connections_max, messages_per_connection_max"
                                                 : "tls",
                                             kind));
            }
            const auto* s = value.as_string();
            tls_policy p{};
            if (s == nullptr || !parse_tls_policy(s->get(), p)) {
                fail(
                    file, value,
                    fmt::format("[{}] tls must be \"disabled\", \"opportunistic\", \"required\" or \"verify\"", table));
            }
            out.emplace_back(name, p);
        }
        if (limits != nullptr &&
            (dl.max_message_rate || dl.connections_max != 0 || dl.messages_per_connection_max != 0)) {
            limits->push_back(std::move(dl));
        }
    }
}

inline void describe_limits(std::string& out, const domain_limits& d) {
    if (d.max_message_rate) {
        out += fmt::format("max_message_rate = \"{}\"\n", d.max_message_rate->text);
    }
    if (d.connections_max != 0) {
        out += fmt::format("connections_max = {}\n", d.connections_max);
    }
    if (d.messages_per_connection_max != 0) {
        out += fmt::format("messages_per_connection_max = {}\n", d.messages_per_connection_max);
    }
}

// Each name once: one table with its tls and its limits (valid TOML).
inline void describe_tls_entries(std::string& out, std::string_view kind,
                                 const std::vector<std::pair<std::string, tls_policy>>& entries,
                                 const std::vector<domain_limits>* limits = nullptr) {
    const std::vector<domain_limits> none;
    const std::vector<domain_limits>& ls = limits != nullptr ? *limits : none;
    auto limits_of = [&](const std::string& name) -> const domain_limits* {
        for (const domain_limits& d : ls) {
            if (d.name == name) {
                return &d;
            }
        }
        return nullptr;
    };
    for (const auto& [name, p] : entries) {
        out += fmt::format("\n[{}.\"{}\"]\ntls = \"{}\"\n", kind, name, to_string(p));
        if (const domain_limits* d = limits_of(name)) {
            describe_limits(out, *d);
        }
    }
    for (const domain_limits& d : ls) {
        if (std::none_of(entries.begin(), entries.end(), [&](const auto& e) { return e.first == d.name; })) {
            out += fmt::format("\n[{}.\"{}\"]\n", kind, d.name);
            describe_limits(out, d);
        }
    }
}

// [provider."name"]: match (required), max_message_rate, connections_max,
// messages_per_connection_max, tls.
inline void get_providers(const std::string& file, const toml::node& node, std::vector<provider_config>& out) {
    const auto* t = node.as_table();
    if (t == nullptr) {
        fail(file, node, "'provider' must be a table of tables: [provider.\"name\"]");
    }
    for (auto&& [name_key, entry] : *t) {
        provider_config pc;
        pc.name = std::string(name_key.str());
        const std::string table = fmt::format("provider.\"{}\"", pc.name);
        const auto* et = entry.as_table();
        if (et == nullptr) {
            fail(file, entry, fmt::format("[{}] must be a table", table));
        }
        domain_limits dl;
        for (auto&& [key, value] : *et) {
            if (key.str() == "match") {
                const auto* a = value.as_array();
                if (a == nullptr || a->empty()) {
                    fail(file, value, fmt::format("[{}] match must be a non-empty array of host patterns", table));
                }
                for (const toml::node& m : *a) {
                    const auto* s = m.as_string();
                    std::string pattern = s != nullptr ? std::string(s->get()) : std::string();
                    for (char& ch : pattern) {
                        ch = detail::to_lower(ch);
                    }
                    const std::size_t star = pattern.find('*');
                    if (pattern.empty() || pattern.find_first_of(" \t\r\n") != std::string::npos ||
                        (star != std::string::npos && !(star == 0 && pattern.starts_with("*.") && pattern.size() > 2 &&
                                                        pattern.find('*', 1) == std::string::npos))) {
                        fail(file, m, fmt::format("[{}] match: each entry a host name, or \"*.\" and a suffix", table));
                    }
                    pc.match.push_back(std::move(pattern));
                }
            } else if (key.str() == "tls") {
                const auto* s = value.as_string();
                tls_policy p{};
                if (s == nullptr || !parse_tls_policy(s->get(), p)) {
                    fail(file, value,
                         fmt::format("[{}] tls must be \"disabled\", \"opportunistic\", \"required\" or \"verify\"",
                                     table));
                }
                pc.tls = p;
            } else if (!get_domain_limit(file, table, key.str(), value, dl)) {
                fail_unknown_key(file, value, key.str(), fmt::format("[{}]", table),
                                 "match, max_message_rate, connections_max, messages_per_connection_max, tls");
            }
        }
        if (pc.match.empty()) {
            fail(file, entry, fmt::format("[{}] needs match = [\"*.example.com\", …]: the MX hosts it covers", table));
        }
        pc.max_message_rate = dl.max_message_rate;
        pc.connections_max = dl.connections_max;
        pc.messages_per_connection_max = dl.messages_per_connection_max;
        out.push_back(std::move(pc));
    }
}

// [rules]: builtin = true|false.
inline void get_rules_table(const std::string& file, const toml::node& node, rule_set& out) {
    const auto* t = node.as_table();
    for (auto&& [key, value] : *t) {
        if (key.str() != "builtin") {
            fail_unknown_key(file, value, key.str(), "[rules]", "builtin");
        }
        out.builtin = get_bool(file, "[rules]", "builtin", value);
    }
}

inline void describe_providers(std::string& out, const std::vector<provider_config>& providers) {
    for (const provider_config& pc : providers) {
        out += fmt::format("\n[provider.\"{}\"]\nmatch = [", pc.name);
        for (std::size_t k = 0; k < pc.match.size(); ++k) {
            out += fmt::format("{}\"{}\"", k == 0 ? "" : ", ", pc.match[k]);
        }
        out += "]\n";
        domain_limits dl;
        dl.max_message_rate = pc.max_message_rate;
        dl.connections_max = pc.connections_max;
        dl.messages_per_connection_max = pc.messages_per_connection_max;
        describe_limits(out, dl);
        if (pc.tls) {
            out += fmt::format("tls = \"{}\"\n", to_string(*pc.tls));
        }
    }
}
}  // namespace mxpress::engine::detail_config
