// mxpress/engine/config.hpp — the run configuration (--config FILE.toml).
//
// Every `key = value` setting is one row of `config_keys` (config_keys.hpp): its section,
// name, type, default, limits, one-line doc and the field of `config` it
// fills. That one row drives everything a key needs: the default a
// `config{}` starts with, parsing and its errors, `mxpress check-config`
// output and the key table in README (`mxpress check-config --keys` prints
// it; a unit test checks that README's copy matches). Sections that are not
// plain key = value tables ([domain."…"], [mx."…"]) have one row each in
// `config_sections`, with their own parser and printer.
//
// Promises:
// - Safe defaults are built in; a file only overrides them.
// - Unknown tables or keys, wrong types and values out of a key's range are
//   errors naming the file, line and key (with the closest known key when a
//   name looks like a typo), so that a typo never leaves a default in force.
// - Durations are kept in milliseconds end to end ("500ms" stays 500 ms) and
//   are bounded per key, so no deadline computed from them overflows a clock.
//
// TLS policy of a delivery: the [domain."…"] entry of the recipient's
// domain, else the tls of the [provider."…"] the MX host belongs to, else
// the first [mx."…"] entry matching the MX host name (in file order), else
// [defaults] tls. What each one means:
//   disabled       never STARTTLS
//   opportunistic  STARTTLS when offered, certificate not checked (as MTAs do
//                  for MX delivery); a failed handshake is retried in
//                  plaintext on a new connection
//   required       no message data without TLS: defer (then expire) instead
//   verify         required, and the chain must be trusted and name the MX host
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/engine/config_keys.hpp"
#include "mxpress/engine/config_values.hpp"
#include "mxpress/engine/dkim_config.hpp"
#include "mxpress/engine/toml_errors.hpp"
#include "mxpress/mail/input_error.hpp"
#include "mxpress/smtp/client.hpp"

namespace mxpress::engine {
static_assert(std::size(config_keys) <= 64, "config::keys_set has one bit per row");

namespace detail_config {

using namespace toml_errors;

inline std::string range_of(const config_key& k) {
    if (k.type == key_type::duration) {
        return fmt::format("{}..{}", format_duration(milliseconds(k.min)), format_duration(milliseconds(k.max)));
    }
    return fmt::format("{}..{}", k.min, k.max);
}

// Levenshtein distance, for "did you mean": names are short, so O(n*m).
inline std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) {
        row[j] = j;
    }
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t above = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diagonal = above;
        }
    }
    return row[b.size()];
}

// " (did you mean 'x'?)" when one known name is within two edits of `name`.
inline std::string suggestion(std::string_view name, const std::vector<std::string_view>& known) {
    constexpr std::size_t typo_edits_max = 2;
    std::string_view best;
    std::size_t best_distance = typo_edits_max + 1;
    for (std::string_view k : known) {
        const std::size_t d = edit_distance(name, k);
        if (d < best_distance) {
            best = k;
            best_distance = d;
        }
    }
    return best.empty() ? std::string() : fmt::format("; did you mean '{}'?", best);
}

inline std::string type_error(const config_key& k);

inline std::string rate_error(std::string_view what) {
    return fmt::format(
        "{} must be \"unlimited\" or a rate such as \"10/s\", \"3000/min\", \"50000/h\" or \"1000/d\", "
        "optionally with \",burst=B\"",
        what);
}

// Sets row `k` of `c` from `text` as written in a file (the default, or a
// TOML string or integer already unwrapped). Returns an error, or "".
inline std::string assign(const config_key& k, config& c, std::string_view text, std::int64_t integer) {
    switch (k.type) {
        case key_type::duration: {
            milliseconds d{};
            if (!parse_duration(text, d)) {
                return fmt::format("[{}] {} = \"{}\" is not a positive duration (use ms, s, m, h, d: \"1h30m\")",
                                   k.section, k.name, text);
            }
            if (d.count() < k.min || d.count() > k.max) {
                return fmt::format("[{}] {} = \"{}\" is out of range ({})", k.section, k.name, text, range_of(k));
            }
            k.duration.ref(c) = d;
            return {};
        }
        case key_type::count:
            if (integer < k.min || integer > k.max) {
                return fmt::format("[{}] {} = {} is out of range ({})", k.section, k.name, integer, range_of(k));
            }
            k.count.ref(c) = static_cast<std::uint32_t>(integer);
            return {};
        case key_type::host_name:
            if (text.empty() || text.find_first_of(" \t\r\n") != std::string_view::npos) {
                return fmt::format("[{}] {} must be a host name string", k.section, k.name);
            }
            k.text.ref(c) = std::string(text);
            return {};
        case key_type::file:
            if (!text.empty()) {
                std::ifstream probe{std::string(text)};
                if (!probe) {
                    return fmt::format("[{}] {}: cannot read {}: {}", k.section, k.name, text, std::strerror(errno));
                }
            }
            k.text.ref(c) = std::string(text);
            return {};
        case key_type::tls_policy: return parse_tls_policy(text, k.policy.ref(c)) ? std::string() : type_error(k);
        case key_type::rate: return parse_rate(text, k.limit.ref(c)) ? std::string() : type_error(k);
        case key_type::boolean:
            if (text != "true" && text != "false") {
                return type_error(k);
            }
            k.flag.ref(c) = text == "true";
            return {};
    }
    return "unknown key type";
}

// What a row says when the TOML value has the wrong type.
inline std::string type_error(const config_key& k) {
    switch (k.type) {
        case key_type::duration:
            return fmt::format("[{}] {} must be a duration string such as \"30s\", \"5m\" or \"1h\"", k.section,
                               k.name);
        case key_type::count: return fmt::format("[{}] {} must be an integer", k.section, k.name);
        case key_type::host_name: return fmt::format("[{}] {} must be a host name string", k.section, k.name);
        case key_type::file: return fmt::format("[{}] {} must be a file name string", k.section, k.name);
        case key_type::tls_policy:
            return fmt::format("[{}] {} must be \"disabled\", \"opportunistic\", \"required\" or \"verify\"", k.section,
                               k.name);
        case key_type::rate: return rate_error(fmt::format("[{}] {}", k.section, k.name));
        case key_type::boolean: return fmt::format("[{}] {} must be true or false", k.section, k.name);
    }
    return "unknown key type";
}

// A row's value from the file, checked against its type and limits.
inline void assign_from(const std::string& file, const config_key& k, config& c, const toml::node& n) {
    std::string error;
    if (k.type == key_type::count) {
        const auto* v = n.as_integer();
        error = v != nullptr ? assign(k, c, {}, v->get()) : type_error(k);
    } else if (k.type == key_type::boolean) {
        const auto* v = n.as_boolean();
        error = v != nullptr ? assign(k, c, v->get() ? "true" : "false", 0) : type_error(k);
    } else {
        const auto* s = n.as_string();
        error = s != nullptr ? assign(k, c, s->get(), 0) : type_error(k);
    }
    if (!error.empty()) {
        fail(file, n, error);
    }
}

// A row's value as check-config prints it: valid TOML.
inline std::string value_text(const config_key& k, const config& c) {
    switch (k.type) {
        case key_type::duration: return fmt::format("\"{}\"", format_duration(k.duration.cref(c)));
        case key_type::count: return std::to_string(k.count.cref(c));
        case key_type::host_name:
        case key_type::file: return fmt::format("\"{}\"", k.text.cref(c));
        case key_type::tls_policy: return fmt::format("\"{}\"", to_string(k.policy.cref(c)));
        case key_type::rate: return fmt::format("\"{}\"", k.limit.cref(c).text);
        case key_type::boolean: return k.flag.cref(c) ? "true" : "false";
    }
    return {};
}

inline const char* type_name(key_type t) {
    switch (t) {
        case key_type::duration: return "duration";
        case key_type::count: return "integer";
        case key_type::host_name: return "host name";
        case key_type::file: return "file name";
        case key_type::tls_policy: return "TLS policy";
        case key_type::rate: return "rate";
        case key_type::boolean: return "boolean";
    }
    return "?";
}

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

}  // namespace detail_config

// A section that is not a plain key = value table: it has its own parser
// (given the section's node, after the key rows are read) and printer.
struct config_section {
    std::string_view name;    // the top-level TOML key
    std::string_view syntax;  // how errors and docs name it: [domain."…"]
    std::string_view doc;
    void (*parse)(config&, const toml::node&, const std::string& file);
    void (*describe)(const config&, std::string& out);
};

inline const config_section config_sections[] = {
    {"domain", "[domain.\"…\"]",
     "per recipient domain (A-labels; quote dotted names): tls, max_message_rate, connections_max, "
     "messages_per_connection_max (over [defaults])",
     [](config& c, const toml::node& n, const std::string& file) {
         detail_config::get_tls_entries(file, "domain", n, c.domain_tls, &c.domain_limit);
     },
     [](const config& c, std::string& out) {
         detail_config::describe_tls_entries(out, "domain", c.domain_tls, &c.domain_limit);
     }},
    {"provider", "[provider.\"…\"]",
     "MX hosts that share limits (one budget across shards): match = [host patterns], max_message_rate, "
     "connections_max, messages_per_connection_max, tls",
     [](config& c, const toml::node& n, const std::string& file) {
         detail_config::get_providers(file, n, c.providers);
     },
     [](const config& c, std::string& out) { detail_config::describe_providers(out, c.providers); }},
    {"mx", "[mx.\"…\"]", "per MX host name, exact or \"*.\" and a suffix, first match wins: tls",
     [](config& c, const toml::node& n, const std::string& file) {
         detail_config::get_tls_entries(file, "mx", n, c.mx_tls);
     },
     [](const config& c, std::string& out) { detail_config::describe_tls_entries(out, "mx", c.mx_tls); }},
    {"dkim", "[dkim] and [[dkim.key]]",
     "DKIM signing: canonicalization, headers, oversign, expiration; keys by domain and selector "
     "(engine/dkim_config.hpp)",
     [](config& c, const toml::node& n, const std::string& file) { parse_dkim_table(file, n, c.dkim); },
     [](const config& c, std::string& out) { out += describe_dkim(c.dkim); }},
    {"rule", "[[rule]]",
     "adaptive rules: a reply that matches (regex) scales, suspends or stops sending to that destination "
     "(engine/rules.hpp); before the built-ins",
     [](config& c, const toml::node& n, const std::string& file) { parse_rule_array(file, n, c.rules.rules); },
     [](const config& c, std::string& out) {
         for (const rule& r : c.rules.rules) {
             if (r.origin != "built-in") {
                 out += "\n" + describe_rule(r, false);
             }
         }
     }},
    {"rules", "[rules]",
     "builtin = true|false: the built-in rules for the big receivers (mxpress rules --print-defaults)",
     [](config& c, const toml::node& n, const std::string& file) { detail_config::get_rules_table(file, n, c.rules); },
     [](const config& c, std::string& out) {
         out += fmt::format(
             "\n[rules]\nbuiltin = {}  # the built-in rules (mxpress rules --print-defaults) after the "
             "file's\n",
             c.rules.builtin);
     }},
    {"sequence", "[sequence.\"…\"]",
     "step mail (`mxpress steps`): anchor column, tz, suppress, and [[sequence.\"…\".step]] tables with id, "
     "after, at, days, message, max_late (engine/sequence.hpp)",
     [](config& c, const toml::node& n, const std::string& file) { parse_sequence_table(file, n, c.sequences); },
     [](const config& c, std::string& out) { out += describe_sequences(c.sequences); }},
    // A section parsed by its own header is one row here, {name, syntax,
    // doc, parse, describe}, with its settings as one field of `config`.
    // Nothing else changes: the unknown-table error, check-config and
    // README's table follow.
};

namespace detail_config {

// The plain key = value sections, in table order, each once.
inline std::vector<std::string_view> key_sections() {
    std::vector<std::string_view> out;
    for (const config_key& k : config_keys) {
        if (std::find(out.begin(), out.end(), k.section) == out.end()) {
            out.push_back(k.section);
        }
    }
    return out;
}

inline std::size_t row_of(const config_key& k) {
    return static_cast<std::size_t>(&k - &config_keys[0]);
}

}  // namespace detail_config

inline config::config() {
    for (const config_key& k : config_keys) {
        const std::string def = k.computed_default != nullptr ? k.computed_default() : std::string(k.default_value);
        std::int64_t integer = 0;
        if (k.type == key_type::count) {
            std::from_chars(def.data(), def.data() + def.size(), integer);
        }
        const std::string error = detail_config::assign(k, *this, def, integer);
        assert(error.empty() && "every default is valid for its own key");
        (void)error;
    }
    add_builtin_rules(rules);
}

inline bool config::is_set(std::string_view section, std::string_view name) const {
    for (const config_key& k : config_keys) {
        if (k.section == section && k.name == name) {
            return (keys_set >> detail_config::row_of(k) & 1) != 0;
        }
    }
    assert(false && "is_set asks for a key of config_keys");
    return false;
}

// Parses configuration text; `file` names it in errors. Throws mail::input_error.
inline config parse_config(std::string_view text, const std::string& file) {
    using namespace detail_config;
    config c;
    const toml::table root = parse_toml(text, file);
    const std::vector<std::string_view> sections = key_sections();
    for (auto&& [key, node] : root) {
        const std::string_view k = key.str();
        const bool plain = std::find(sections.begin(), sections.end(), k) != sections.end();
        const bool special = std::any_of(std::begin(config_sections), std::end(config_sections),
                                         [&](const config_section& s) { return s.name == k; });
        if (!plain && !special) {
            std::vector<std::string_view> known = sections;
            std::string list;
            for (std::string_view s : sections) {
                list += fmt::format("{}[{}]", list.empty() ? "" : ", ", s);
            }
            for (const config_section& s : config_sections) {
                known.push_back(s.name);
                list += fmt::format(", {}", s.syntax);
            }
            fail(file, node,
                 fmt::format("unknown table or key '{}'{} (known tables: {})", k, suggestion(k, known), list));
        }
        if (k == "rule") {
            if (!node.is_array_of_tables()) {
                fail(file, node, "'rule' must be an array of tables: [[rule]]");
            }
        } else if (!node.is_table()) {
            fail(file, node, fmt::format("'{}' must be a table: [{}]", k, k));
        }
    }
    for (std::string_view section : sections) {
        const auto* table = root[section].as_table();
        if (table == nullptr) {
            continue;
        }
        for (auto&& [key, node] : *table) {
            const std::string_view name = key.str();
            const config_key* row = nullptr;
            std::vector<std::string_view> known;
            for (const config_key& k : config_keys) {
                if (k.section != section) {
                    continue;
                }
                known.push_back(k.name);
                if (k.name == name) {
                    row = &k;
                }
            }
            if (row == nullptr) {
                std::string list;
                for (std::string_view n : known) {
                    list += fmt::format("{}{}", list.empty() ? "" : ", ", n);
                }
                fail_unknown_key(file, node, name, fmt::format("[{}]", section), list, suggestion(name, known));
            }
            assign_from(file, *row, c, node);
            c.keys_set |= std::uint64_t{1} << row_of(*row);
        }
    }
    if (c.retry_initial > c.retry_max) {
        const auto* defaults = root["defaults"].as_table();
        throw mail::input_error(file, defaults != nullptr ? line_of(*defaults) : 0,
                                "[defaults] retry_initial is longer than retry_max");
    }
    c.tls_set = c.is_set("defaults", "tls");
    c.rules.rules.clear();  // the defaults' built-ins: added again below unless [rules] says not
    for (const config_section& s : config_sections) {
        if (const auto* n = root.get(s.name)) {
            s.parse(c, *n, file);
        }
    }
    add_builtin_rules(c.rules);
    return c;
}

// Reads and parses a configuration file. Throws mail::input_error.
inline config load_config(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw mail::input_error(path, 0, fmt::format("cannot open configuration: {}", std::strerror(errno)));
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        throw mail::input_error(path, 0, "cannot read configuration: it is a directory");
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) {
        throw mail::input_error(path, 0, fmt::format("cannot read configuration: {}", std::strerror(errno)));
    }
    return parse_config(ss.str(), path);
}

// The effective settings as a configuration file: every key with its value
// and, as a comment, its doc.
inline std::string describe(const config& c) {
    constexpr std::size_t comment_column = 40;
    std::string out;
    std::string_view section;
    for (const config_key& k : config_keys) {
        if (k.section != section) {
            out += fmt::format("{}[{}]\n", section.empty() ? "" : "\n", k.section);
            section = k.section;
        }
        const std::string line = fmt::format("{} = {}", k.name, detail_config::value_text(k, c));
        out += fmt::format("{:<{}} # {}\n", line, comment_column - 1, k.doc);
    }
    for (const config_section& s : config_sections) {
        s.describe(c, out);
    }
    return out;
}

// The effective policy for mail to `domain` through the MX host `mx_host`
// ("" when not given: then what depends on the host is said to), and the
// sections that gave each value: what `mxpress check-config FILE --domain D
// [--mx HOST]` prints. Pure: no lookups.
inline std::string describe_destination(const config& c, std::string_view domain, std::string_view mx_host) {
    const std::string d = detail::to_lower_copy(domain);
    const std::string mx = detail::to_lower_copy(mx_host);
    const domain_limits own = [&] {
        for (const domain_limits& l : c.domain_limit) {
            if (l.name == d) {
                return l;
            }
        }
        return domain_limits{};
    }();
    const bool own_tls =
        std::any_of(c.domain_tls.begin(), c.domain_tls.end(), [&](const auto& e) { return e.first == d; });
    const domain_limits eff = c.limits_for(d);
    const provider_config* pc = mx.empty() ? nullptr : c.provider_for(mx);
    const std::string dsec = fmt::format("[domain.\"{}\"]", d);
    auto from = [&](bool set_in_domain) { return set_in_domain ? dsec : std::string("[defaults]"); };
    std::string out = fmt::format("destination: {}{}\n", d, mx.empty() ? "" : fmt::format(" via {}", mx));
    std::string sections;
    if (own.max_message_rate || own.connections_max != 0 || own.messages_per_connection_max != 0 || own_tls) {
        sections += dsec;
    }
    if (pc != nullptr) {
        sections += fmt::format("{}[provider.\"{}\"]", sections.empty() ? "" : ", ", pc->name);
    }
    out += fmt::format("sections: {}\n", sections.empty() ? "none (only [defaults])" : sections);
    out += fmt::format("max_message_rate = \"{}\"  # per domain, from {}\n", eff.max_message_rate->text,
                       from(own.max_message_rate.has_value()));
    out += fmt::format("connections_max = {}  # per MX address, from {}\n", eff.connections_max,
                       from(own.connections_max != 0));
    out += fmt::format("messages_per_connection_max = {}  # from {}\n", eff.messages_per_connection_max,
                       from(own.messages_per_connection_max != 0));
    out += fmt::format("max_connection_rate = \"{}\"  # per MX address, from [defaults]\n", c.max_connection_rate.text);
    if (pc != nullptr) {
        const std::string psec = fmt::format("[provider.\"{}\"]", pc->name);
        out += fmt::format("provider max_message_rate = \"{}\"  # one budget for all its domains, from {}\n",
                           pc->max_message_rate ? pc->max_message_rate->text : "unlimited", psec);
        out += fmt::format("provider connections_max = {}  # all its hosts together, from {}\n",
                           pc->connections_max == 0 ? std::string("unlimited") : std::to_string(pc->connections_max),
                           psec);
        if (pc->messages_per_connection_max != 0) {
            out += fmt::format("provider messages_per_connection_max = {}  # from {}\n",
                               pc->messages_per_connection_max, psec);
        }
    }
    if (mx.empty()) {
        out += fmt::format(
            "tls = \"{}\"  # {}\n", to_string(c.tls_for(d, "")),
            own_tls ? "from " + dsec : "for an MX host no [provider] or [mx] section names; give --mx HOST to see its");
        if (!c.providers.empty()) {
            out += "provider: depends on the MX host names (give --mx HOST)\n";
        }
    } else {
        std::string tls_from = "[defaults]";
        if (own_tls) {
            tls_from = dsec;
        } else if (pc != nullptr && pc->tls) {
            tls_from = fmt::format("[provider.\"{}\"]", pc->name);
        } else {
            for (const auto& [pattern, p] : c.mx_tls) {
                if (host_pattern_matches(pattern, mx)) {
                    tls_from = fmt::format("[mx.\"{}\"]", pattern);
                    break;
                }
            }
        }
        out += fmt::format("tls = \"{}\"  # from {}\n", to_string(c.tls_for(d, mx)), tls_from);
    }
    return out;
}

// README's table of keys (Markdown), from config_keys and config_sections.
inline std::string describe_keys_markdown() {
    std::string out = "| key | type | default | meaning |\n|---|---|---|---|\n";
    for (const config_key& k : config_keys) {
        std::string def;
        if (k.computed_default != nullptr) {
            def = k.computed_default_doc;
        } else if (k.type == key_type::count || k.type == key_type::boolean) {
            def = fmt::format("`{}`", k.default_value);
        } else {
            def = fmt::format("`\"{}\"`", k.default_value);
        }
        std::string type = detail_config::type_name(k.type);
        if (k.type == key_type::duration || k.type == key_type::count) {
            type += fmt::format(" ({})", detail_config::range_of(k));
        }
        std::string doc(k.doc);
        for (std::size_t pos = 0; (pos = doc.find('|', pos)) != std::string::npos; pos += 2) {
            doc.replace(pos, 1, "\\|");
        }
        out += fmt::format("| `[{}] {}` | {} | {} | {} |\n", k.section, k.name, type, def, doc);
    }
    for (const config_section& s : config_sections) {
        out += fmt::format("| `{}` | table | | {} |\n", s.syntax, s.doc);
    }
    return out;
}

}  // namespace mxpress::engine
