// mxpress/engine/config_describe.hpp — check-config's output: the effective
// settings as a configuration file (describe), the policy for one
// destination (describe_destination) and README's table of keys
// (describe_keys_markdown), with a key row's value and type as printed.
// A file of its own: one topic, printing, apart from reading the
// configuration (config.hpp, config_tables.hpp). The printers of the
// sections that are not key = value tables sit with their readers in
// config_tables.hpp, since config_sections, which this file walks, names
// both.
//
// config.hpp includes it at its end, so `#include "…/config.hpp"` gives
// all of the configuration; it can also be included alone.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/engine/config.hpp"

namespace mxpress::engine {

namespace detail_config {

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

}  // namespace detail_config

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
