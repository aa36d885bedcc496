// mxpress/engine/dkim_config.hpp — the [dkim] table of --config FILE.toml.
//
// [dkim]
//   canonicalization = "relaxed/relaxed"   # header/body: simple or relaxed
//   headers = ["From", "To", "Subject", …] # signed fields (From is always signed)
//   oversign = true                        # each listed field once more than present
//   expiration = "7d"                      # optional: x= = t= + this
// [[dkim.key]]
//   domain = "town.example"                # d= (a From domain or a parent of it)
//   selector = "r2026a"                    # s=
//   key_file = "/etc/mxpress/dkim/r2026a.pem"
//   not_after = "2026-12-31"               # optional: last day (UTC) it signs
//
// Promises: unknown keys, wrong types and malformed values are input_errors
// naming the file and line; keys themselves are read later (dkim::load_keys),
// so `check-config` on another machine does not need them.
#pragma once

#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/engine/toml_errors.hpp"
#include "mxpress/mail/dkim.hpp"
#include "mxpress/mail/input_error.hpp"

namespace mxpress::engine {

namespace detail_dkim_config {

using namespace toml_errors;

// "2026-12-31" (or a TOML date) -> the last second of that day, UTC.
inline std::time_t get_not_after(const std::string& file, const toml::node& n) {
    toml::date d{};
    if (const auto* v = n.as_date()) {
        d = v->get();
    } else if (const auto* s = n.as_string()) {
        unsigned y = 0;
        unsigned m = 0;
        unsigned day = 0;
        char tail = 0;
        if (std::sscanf(s->get().c_str(), "%4u-%2u-%2u%c", &y, &m, &day, &tail) != 3 || m < 1 || m > 12 || day < 1 ||
            day > 31 || y < 1970) {
            fail(file, n, fmt::format("[[dkim.key]] not_after = \"{}\" is not a date YYYY-MM-DD", s->get()));
        }
        d.year = static_cast<std::uint16_t>(y);
        d.month = static_cast<std::uint8_t>(m);
        d.day = static_cast<std::uint8_t>(day);
    } else {
        fail(file, n, "[[dkim.key]] not_after must be a date, \"YYYY-MM-DD\"");
    }
    std::tm tm{};
    tm.tm_year = d.year - 1900;
    tm.tm_mon = d.month - 1;
    tm.tm_mday = d.day;
    tm.tm_hour = 23;
    tm.tm_min = 59;
    tm.tm_sec = 59;
    return ::timegm(&tm);
}

// Seconds from "7d", "12h", "90m": the same syntax as every duration here.
inline std::uint64_t get_seconds(const std::string& file, const toml::node& n) {
    const auto* s = n.as_string();
    std::uint64_t total = 0;
    bool ok = s != nullptr && !s->get().empty();
    std::uint64_t num = 0;
    bool have_num = false;
    for (char c : ok ? std::string_view(s->get()) : std::string_view{}) {
        if (c >= '0' && c <= '9') {
            num = num * 10 + static_cast<std::uint64_t>(c - '0');
            have_num = true;
            ok = ok && num < 100'000'000ULL;
            continue;
        }
        const std::uint64_t unit = c == 's' ? 1 : c == 'm' ? 60 : c == 'h' ? 3600 : c == 'd' ? 86400 : 0;
        ok = ok && have_num && unit != 0;
        total += num * unit;
        num = 0;
        have_num = false;
    }
    if (!ok || have_num || total == 0) {
        fail(file, n, "[dkim] expiration must be a positive duration in s, m, h or d, e.g. \"7d\"");
    }
    return total;
}

// A DNS label list: letters, digits, '-', '_' and dots, no empty label.
inline bool dns_name_ok(std::string_view s) {
    if (s.empty() || s.size() > 253 || s.front() == '.' || s.back() == '.' || s.find("..") != std::string_view::npos) {
        return false;
    }
    for (char c : s) {
        if (!(detail::is_alnum(c) || c == '-' || c == '_' || c == '.')) {
            return false;
        }
    }
    return true;
}

inline mail::dkim::key_spec get_key(const std::string& file, const toml::node& n) {
    const auto* t = n.as_table();
    if (t == nullptr) {
        fail(file, n, "dkim.key must be an array of tables: [[dkim.key]]");
    }
    mail::dkim::key_spec k;
    k.config_line = n.source().begin.line;
    for (auto&& [key, value] : *t) {
        const std::string_view name = key.str();
        if (name == "domain") {
            k.domain = detail::to_lower_copy(get_string(file, "[[dkim.key]]", name, value));
            if (!dns_name_ok(k.domain)) {
                fail(file, value,
                     fmt::format("[[dkim.key]] domain = \"{}\" is not a domain name (A-labels)", k.domain));
            }
        } else if (name == "selector") {
            k.selector = get_string(file, "[[dkim.key]]", name, value);
            if (!dns_name_ok(k.selector)) {
                fail(file, value, fmt::format("[[dkim.key]] selector = \"{}\" is not a DNS label", k.selector));
            }
        } else if (name == "key_file") {
            k.key_file = get_string(file, "[[dkim.key]]", name, value);
        } else if (name == "not_after") {
            k.not_after = get_not_after(file, value);
        } else {
            fail_unknown_key(file, value, name, "[[dkim.key]]", "domain, selector, key_file, not_after");
        }
    }
    for (const auto& [have, what] : {std::pair{!k.domain.empty(), "domain"}, std::pair{!k.selector.empty(), "selector"},
                                     std::pair{!k.key_file.empty(), "key_file"}}) {
        if (!have) {
            fail(file, n, fmt::format("[[dkim.key]] needs {}", what));
        }
    }
    return k;
}

}  // namespace detail_dkim_config

// Parses the [dkim] table into `out`. Throws mail::input_error.
inline void parse_dkim_table(const std::string& file, const toml::node& node, mail::dkim::settings& out) {
    using namespace detail_dkim_config;
    const auto* t = node.as_table();
    if (t == nullptr) {
        fail(file, node, "'dkim' must be a table: [dkim]");
    }
    out.config_file = file;
    for (auto&& [key, value] : *t) {
        const std::string_view k = key.str();
        if (k == "canonicalization") {
            const std::string c = get_string(file, "[dkim]", k, value);
            if (!mail::dkim::parse_canonicalization(c, out.header_canon, out.body_canon)) {
                fail(file, value,
                     fmt::format("[dkim] canonicalization = \"{}\": expected HEADER/BODY, each simple or relaxed", c));
            }
        } else if (k == "headers") {
            const auto* a = value.as_array();
            if (a == nullptr || a->empty()) {
                fail(file, value, "[dkim] headers must be a non-empty array of header names");
            }
            out.headers.clear();
            for (const toml::node& h : *a) {
                const std::string name = get_string(file, "[dkim]", "headers", h);
                for (char c : name) {
                    if (static_cast<unsigned char>(c) < 33 || static_cast<unsigned char>(c) > 126 || c == ':') {
                        fail(file, h, fmt::format("[dkim] headers: \"{}\" is not a header name", name));
                    }
                }
                out.headers.push_back(name);
            }
        } else if (k == "oversign") {
            out.oversign = get_bool(file, "[dkim]", k, value);
        } else if (k == "expiration") {
            out.expiration_s = get_seconds(file, value);
        } else if (k == "key") {
            const auto* a = value.as_array();
            if (a == nullptr) {
                fail(file, value, "dkim.key must be an array of tables: [[dkim.key]]");
            }
            for (const toml::node& entry : *a) {
                out.keys.push_back(get_key(file, entry));
            }
        } else {
            fail_unknown_key(file, value, k, "[dkim]",
                             "canonicalization, headers, oversign, expiration, and [[dkim.key]] tables");
        }
    }
    if (out.keys.empty()) {
        fail(file, node, "[dkim] has no [[dkim.key]]: give at least one key (domain, selector, key_file)");
    }
}

// The [dkim] part of `check-config`'s output.
inline std::string describe_dkim(const mail::dkim::settings& s) {
    if (!s.enabled()) {
        return {};
    }
    std::string headers;
    for (const std::string& h : s.headers) {
        headers += fmt::format("{}\"{}\"", headers.empty() ? "" : ", ", h);
    }
    std::string out = fmt::format("\n[dkim]\ncanonicalization = \"{}/{}\"\nheaders = [{}]\noversign = {}\n",
                                  to_string(s.header_canon), to_string(s.body_canon), headers, s.oversign);
    if (s.expiration_s != 0) {
        out += fmt::format("expiration = \"{}s\"\n", s.expiration_s);
    }
    for (const mail::dkim::key_spec& k : s.keys) {
        out += fmt::format("\n[[dkim.key]]\ndomain = \"{}\"\nselector = \"{}\"\nkey_file = \"{}\"\n", k.domain,
                           k.selector, k.key_file);
        if (k.not_after != 0) {
            std::tm tm{};
            ::gmtime_r(&k.not_after, &tm);
            out += fmt::format("not_after = \"{:04}-{:02}-{:02}\"\n", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
        }
    }
    return out;
}

}  // namespace mxpress::engine
