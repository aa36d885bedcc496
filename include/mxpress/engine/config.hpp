// mxpress/engine/config.hpp — the run configuration (--config FILE.toml).
//
// Safe defaults are built in; a file only overrides them. Unknown tables or
// keys and wrong types are errors naming the file, line and key, so that a
// typo never silently leaves a default in force.
//
// [defaults]
//   helo_name = "mail.example.org"       # EHLO name (default: this host's name)
//   retry_initial = "1m"                 # first retry after a temporary failure
//   retry_max = "1h"                     # longest wait between retries
//   max_age = "24h"                      # give up (expired) after this long
//   connections_max = 10                 # per MX host
//   messages_per_connection_max = 1000   # then the connection is closed
//   connect_timeout = "30s"
//   tls = "opportunistic"                # disabled | opportunistic | required | verify
//   tls_ca_file = "/path/ca.pem"         # trust for tls = "verify" (default: system CAs)
// [domain."example.com"]                 # per destination domain (A-labels)
//   tls = "required"
// [mx."*.example.net"]                   # per MX host name: exact, or "*." + suffix
//   tls = "verify"
// [timeouts]                             # RFC 5321 §4.5.3.2 defaults
//   greeting = "5m"  mail = "5m"  rcpt = "5m"  data_init = "2m"
//   data_block = "3m"  data_term = "10m"  tls_handshake = "30s"
// [dkim] and [[dkim.key]]                # signing: see engine/dkim_config.hpp
//
// TLS policy of a delivery: the [domain."…"] entry of the recipient's
// domain, else the first [mx."…"] entry matching the MX host name (in file
// order), else [defaults]. What each one means:
//   disabled       never STARTTLS
//   opportunistic  STARTTLS when offered, certificate not checked (as MTAs do
//                  for MX delivery); a failed handshake is retried in
//                  plaintext on a new connection
//   required       no message data without TLS: defer (then expire) instead
//   verify         required, and the chain must be trusted and name the MX host
#pragma once

#include <chrono>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/engine/dkim_config.hpp"
#include "mxpress/mail/input_error.hpp"
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

using milliseconds = std::chrono::milliseconds;

struct config {
    std::string helo_name;
    milliseconds retry_initial{std::chrono::minutes(1)};
    milliseconds retry_max{std::chrono::hours(1)};
    milliseconds max_age{std::chrono::hours(24)};
    std::uint32_t connections_max = 10;
    std::uint32_t messages_per_connection_max = 1000;
    milliseconds connect_timeout{std::chrono::seconds(30)};
    smtp::timeouts smtp_timeouts{};
    tls_policy tls = tls_policy::opportunistic;
    bool tls_set = false;     // [defaults] tls was given (relays default to verify otherwise)
    std::string tls_ca_file;  // empty: the system's CAs
    milliseconds tls_handshake_timeout{std::chrono::seconds(30)};
    std::vector<std::pair<std::string, tls_policy>> domain_tls;  // lowercase domain
    std::vector<std::pair<std::string, tls_policy>> mx_tls;      // pattern, in file order
    mail::dkim::settings dkim;                                   // no keys: unsigned

    // The TLS policy for mail to `domain` through the MX host `mx_host`.
    tls_policy tls_for(std::string_view domain, std::string_view mx_host) const {
        for (const auto& [d, p] : domain_tls) {
            if (detail::iequals(d, domain)) {
                return p;
            }
        }
        for (const auto& [pattern, p] : mx_tls) {
            if (host_pattern_matches(pattern, mx_host)) {
                return p;
            }
        }
        return tls;
    }
};

// Parses "90s", "5m", "1h30m", "250ms", "2d". Returns false when malformed.
inline bool parse_duration(std::string_view s, milliseconds& out) {
    if (s.empty()) {
        return false;
    }
    std::uint64_t total = 0;
    std::size_t i = 0;
    while (i < s.size()) {
        std::uint64_t n = 0;
        const std::size_t start = i;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
            if (n > 1'000'000'000ULL) {
                return false;
            }
            n = n * 10 + static_cast<std::uint64_t>(s[i] - '0');
            ++i;
        }
        if (i == start) {
            return false;
        }
        std::uint64_t unit_ms = 0;
        if (s.substr(i).starts_with("ms")) {
            unit_ms = 1;
            i += 2;
        } else if (i < s.size()) {
            switch (s[i]) {
                case 's': unit_ms = 1000; break;
                case 'm': unit_ms = 60'000; break;
                case 'h': unit_ms = 3'600'000; break;
                case 'd': unit_ms = 86'400'000; break;
                default: return false;
            }
            ++i;
        } else {
            return false;  // a unit is required
        }
        total += n * unit_ms;
    }
    out = milliseconds(static_cast<std::int64_t>(total));
    return true;
}

inline std::string format_duration(milliseconds d) {
    auto ms = static_cast<std::uint64_t>(d.count());
    if (ms == 0) {
        return "0s";
    }
    std::string out;
    const std::pair<std::uint64_t, const char*> units[] = {
        {86'400'000, "d"}, {3'600'000, "h"}, {60'000, "m"}, {1000, "s"}, {1, "ms"}};
    for (const auto& [size, name] : units) {
        if (ms >= size) {
            out += std::to_string(ms / size);
            out += name;
            ms %= size;
        }
    }
    return out;
}

inline std::string default_helo_name() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') {
        return "localhost";
    }
    return buf;
}

namespace detail_config {

inline std::uint64_t line_of(const toml::node& n) {
    return n.source().begin.line;
}

[[noreturn]] inline void fail(const std::string& file, const toml::node& n, const std::string& what) {
    throw mail::input_error(file, line_of(n), what);
}

inline milliseconds get_duration(const std::string& file, std::string_view table, std::string_view key,
                                 const toml::node& n) {
    const auto* s = n.as_string();
    milliseconds d{};
    if (s == nullptr) {
        fail(file, n, fmt::format("[{}] {} must be a duration string such as \"30s\", \"5m\" or \"1h\"", table, key));
    }
    if (!parse_duration(s->get(), d) || d.count() == 0) {
        fail(file, n,
             fmt::format("[{}] {} = \"{}\" is not a positive duration (use ms, s, m, h, d: \"1h30m\")", table, key,
                         s->get()));
    }
    return d;
}

inline std::uint32_t get_count(const std::string& file, std::string_view table, std::string_view key,
                               const toml::node& n, std::int64_t lo, std::int64_t hi) {
    const auto* v = n.as_integer();
    if (v == nullptr) {
        fail(file, n, fmt::format("[{}] {} must be an integer", table, key));
    }
    if (v->get() < lo || v->get() > hi) {
        fail(file, n, fmt::format("[{}] {} = {} is out of range ({}..{})", table, key, v->get(), lo, hi));
    }
    return static_cast<std::uint32_t>(v->get());
}

inline tls_policy get_tls_policy(const std::string& file, const std::string& table, const toml::node& n) {
    const auto* s = n.as_string();
    tls_policy p{};
    if (s == nullptr || !parse_tls_policy(s->get(), p)) {
        fail(file, n,
             fmt::format("[{}] tls must be \"disabled\", \"opportunistic\", \"required\" or \"verify\"", table));
    }
    return p;
}

// [domain."x"] or [mx."pattern"]: a table of tables with only `tls` for now.
inline void get_tls_entries(const std::string& file, std::string_view kind, const toml::node& node,
                            std::vector<std::pair<std::string, tls_policy>>& out) {
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
        for (auto&& [key, value] : *et) {
            if (key.str() != "tls") {
                fail(file, value,
                     fmt::format("unknown key '{}' in [{}] (known: tls; quote a dotted name: [{}.\"example.com\"])",
                                 key.str(), table, kind));
            }
            out.emplace_back(name, get_tls_policy(file, table, value));
        }
    }
}

}  // namespace detail_config

// Parses configuration text; `file` names it in errors. Throws mail::input_error.
inline config parse_config(std::string_view text, const std::string& file) {
    using namespace detail_config;
    config c;
    c.helo_name = default_helo_name();
    toml::table root;
    try {
        root = toml::parse(text, std::string_view(file));
    } catch (const toml::parse_error& e) {
        throw mail::input_error(file, e.source().begin.line, fmt::format("TOML syntax: {}", e.description()));
    }
    for (auto&& [key, node] : root) {
        const std::string_view k = key.str();
        if (k != "defaults" && k != "timeouts" && k != "domain" && k != "mx" && k != "dkim") {
            fail(file, node,
                 fmt::format("unknown table or key '{}' (known tables: [defaults], [timeouts], [domain.\"…\"], "
                             "[mx.\"…\"], [dkim])",
                             k));
        }
        if (!node.is_table()) {
            fail(file, node, fmt::format("'{}' must be a table: [{}]", k, k));
        }
    }
    if (const auto* defaults = root["defaults"].as_table()) {
        for (auto&& [key, node] : *defaults) {
            const std::string_view k = key.str();
            if (k == "helo_name") {
                const auto* s = node.as_string();
                if (s == nullptr || s->get().empty() || s->get().find_first_of(" \t\r\n") != std::string::npos) {
                    fail(file, node, "[defaults] helo_name must be a host name string");
                }
                c.helo_name = s->get();
            } else if (k == "retry_initial") {
                c.retry_initial = get_duration(file, "defaults", k, node);
            } else if (k == "retry_max") {
                c.retry_max = get_duration(file, "defaults", k, node);
            } else if (k == "max_age") {
                c.max_age = get_duration(file, "defaults", k, node);
            } else if (k == "connect_timeout") {
                c.connect_timeout = get_duration(file, "defaults", k, node);
            } else if (k == "connections_max") {
                c.connections_max = get_count(file, "defaults", k, node, 1, 10'000);
            } else if (k == "messages_per_connection_max") {
                c.messages_per_connection_max = get_count(file, "defaults", k, node, 1, 100'000'000);
            } else if (k == "tls") {
                c.tls = get_tls_policy(file, "defaults", node);
                c.tls_set = true;
            } else if (k == "tls_ca_file") {
                const auto* s = node.as_string();
                if (s == nullptr || s->get().empty()) {
                    fail(file, node, "[defaults] tls_ca_file must be a file name");
                }
                std::ifstream probe(s->get());
                if (!probe) {
                    fail(file, node,
                         fmt::format("[defaults] tls_ca_file: cannot read {}: {}", s->get(), std::strerror(errno)));
                }
                c.tls_ca_file = s->get();
            } else {
                fail(file, node,
                     fmt::format("unknown key '{}' in [defaults] (known: helo_name, retry_initial, retry_max, "
                                 "max_age, connections_max, messages_per_connection_max, connect_timeout, tls, "
                                 "tls_ca_file)",
                                 k));
            }
        }
        if (c.retry_initial > c.retry_max) {
            throw mail::input_error(file, line_of(*defaults), "[defaults] retry_initial is longer than retry_max");
        }
    }
    if (const auto* t = root["timeouts"].as_table()) {
        for (auto&& [key, node] : *t) {
            const std::string_view k = key.str();
            const auto secs = [&]() {
                return std::chrono::duration_cast<std::chrono::seconds>(get_duration(file, "timeouts", k, node));
            };
            if (k == "greeting") {
                c.smtp_timeouts.greeting = secs();
            } else if (k == "mail") {
                c.smtp_timeouts.mail = secs();
            } else if (k == "rcpt") {
                c.smtp_timeouts.rcpt = secs();
            } else if (k == "data_init") {
                c.smtp_timeouts.data_init = secs();
            } else if (k == "data_block") {
                c.smtp_timeouts.data_block = secs();
            } else if (k == "data_term") {
                c.smtp_timeouts.data_term = secs();
            } else if (k == "tls_handshake") {
                c.tls_handshake_timeout = get_duration(file, "timeouts", k, node);
            } else {
                fail(file, node,
                     fmt::format("unknown key '{}' in [timeouts] (known: greeting, mail, rcpt, data_init, "
                                 "data_block, data_term, tls_handshake)",
                                 k));
            }
        }
    }
    if (const auto* n = root.get("domain")) {
        get_tls_entries(file, "domain", *n, c.domain_tls);
    }
    if (const auto* n = root.get("mx")) {
        get_tls_entries(file, "mx", *n, c.mx_tls);
    }
    if (const auto* n = root.get("dkim")) {
        parse_dkim_table(file, *n, c.dkim);
    }
    return c;
}

// Reads and parses a configuration file. Throws mail::input_error.
inline config load_config(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw mail::input_error(path, 0, fmt::format("cannot open configuration: {}", std::strerror(errno)));
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    return parse_config(ss.str(), path);
}

inline std::string describe(const config& c) {
    std::string out = fmt::format(
        "[defaults]\nhelo_name = \"{}\"\nretry_initial = \"{}\"\nretry_max = \"{}\"\nmax_age = \"{}\"\n"
        "connections_max = {}\nmessages_per_connection_max = {}\nconnect_timeout = \"{}\"\ntls = \"{}\"\n"
        "tls_ca_file = \"{}\"\n\n"
        "[timeouts]\ngreeting = \"{}\"\nmail = \"{}\"\nrcpt = \"{}\"\ndata_init = \"{}\"\ndata_block = \"{}\"\n"
        "data_term = \"{}\"\ntls_handshake = \"{}\"\n",
        c.helo_name, format_duration(c.retry_initial), format_duration(c.retry_max), format_duration(c.max_age),
        c.connections_max, c.messages_per_connection_max, format_duration(c.connect_timeout), to_string(c.tls),
        c.tls_ca_file.empty() ? "(system CAs)" : c.tls_ca_file, format_duration(c.smtp_timeouts.greeting),
        format_duration(c.smtp_timeouts.mail), format_duration(c.smtp_timeouts.rcpt),
        format_duration(c.smtp_timeouts.data_init), format_duration(c.smtp_timeouts.data_block),
        format_duration(c.smtp_timeouts.data_term), format_duration(c.tls_handshake_timeout));
    for (const auto& [d, p] : c.domain_tls) {
        out += fmt::format("\n[domain.\"{}\"]\ntls = \"{}\"\n", d, to_string(p));
    }
    for (const auto& [m, p] : c.mx_tls) {
        out += fmt::format("\n[mx.\"{}\"]\ntls = \"{}\"\n", m, to_string(p));
    }
    out += describe_dkim(c.dkim);
    return out;
}

}  // namespace mxpress::engine
