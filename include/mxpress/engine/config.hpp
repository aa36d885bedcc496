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
//
// Three files, one topic each; `#include "…/config.hpp"` gives all of them:
//   config.hpp           the key rows: assignment and its errors, the
//                        defaults, config_sections, parse_config, load_config
//   config_tables.hpp    the sections that are not key = value tables
//                        ([domain."…"], [mx."…"], [provider."…"], [rules]):
//                        each one's reader and printer; included below, between
//                        the errors its readers reuse and config_sections
//   config_describe.hpp  check-config's output (describe, describe_destination,
//                        describe_keys_markdown); included at the end
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
#include <vector>

#include <fmt/format.h>
#include <toml++/toml.h>

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

}  // namespace detail_config

}  // namespace mxpress::engine

// The readers and printers of [domain."…"], [mx."…"], [provider."…"] and
// [rules]: here, after the errors above that they reuse and before
// config_sections below, which names them.
#include "mxpress/engine/config_tables.hpp"

namespace mxpress::engine {

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

}  // namespace mxpress::engine

// check-config's output: describe(), describe_destination(), describe_keys_markdown().
#include "mxpress/engine/config_describe.hpp"
