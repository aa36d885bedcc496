// mxpress/engine/config.hpp — the run configuration (--config FILE.toml).
//
// Every `key = value` setting is one row of `config_keys` below: its section,
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
// domain, else the first [mx."…"] entry matching the MX host name (in file
// order), else [defaults] tls. What each one means:
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

// Longest duration parse_duration accepts at all (about 31,000 years): far
// beyond every key's own limit, so that the sum of a duration's parts can
// never overflow, and a too-long value gets the key's range error.
inline constexpr std::uint64_t duration_parse_max_ms = 1'000'000'000'000'000ULL;

// Parses "90s", "5m", "1h30m", "250ms", "2d". Returns false when malformed
// or longer than duration_parse_max_ms.
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
            if (n > duration_parse_max_ms) {
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
        // n <= 1e18 and unit_ms <= 8.64e7: check before multiplying.
        if (n > (duration_parse_max_ms - total) / unit_ms) {
            return false;
        }
        total += n * unit_ms;
    }
    out = milliseconds(static_cast<std::int64_t>(total));
    return true;
}

// The shortest exact spelling: 5400000 ms -> "1h30m", 500 ms -> "500ms".
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
    // [timeouts]
    smtp::timeouts smtp_timeouts{};
    milliseconds tls_handshake_timeout{};
    // [dns]
    milliseconds dns_timeout{};
    std::uint32_t dns_tries = 0;
    milliseconds mx_cache_ttl{};
    milliseconds dns_failure_cache_ttl{};
    // [domain."…"] and [mx."…"]
    std::vector<std::pair<std::string, tls_policy>> domain_tls;  // lowercase domain
    std::vector<std::pair<std::string, tls_policy>> mx_tls;      // pattern, in file order
    mail::dkim::settings dkim;                                   // [dkim]; no keys: unsigned

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
        for (const auto& [pattern, p] : mx_tls) {
            if (host_pattern_matches(pattern, mx_host)) {
                return p;
            }
        }
        return tls;
    }
};

// ---- the key table ----------------------------------------------------------

enum class key_type : std::uint8_t {
    duration,    // "1h30m"; min and max in milliseconds
    count,       // an integer in min..max
    host_name,   // a string without spaces
    file,        // a readable file name, or "" for none
    tls_policy,  // "disabled" | "opportunistic" | "required" | "verify"
};

// Where a row's value lives: a reference into a config (mutable and const).
template <class T>
struct config_field {
    T& (*ref)(config&) = nullptr;
    const T& (*cref)(const config&) = nullptr;

    // `f`: a captureless generic lambda, [](auto& c) -> auto& { return c.x; }.
    template <class F>
    static constexpr config_field of(F f) {
        return {static_cast<T& (*)(config&)>(f), static_cast<const T& (*)(const config&)>(f)};
    }
};

struct config_key {
    std::string_view section;  // "defaults", "timeouts", "dns"
    std::string_view name;     // as written in the file
    key_type type;
    std::string_view default_value;  // as written in a file, without quotes
    std::string_view doc;            // one line
    std::int64_t min = 0;            // duration (ms) or count limits
    std::int64_t max = 0;
    std::string (*computed_default)() = nullptr;  // when the default depends on the host
    std::string_view computed_default_doc;        // what README says for it
    config_field<milliseconds> duration{};
    config_field<std::uint32_t> count{};
    config_field<std::string> text{};  // host_name, file
    config_field<engine::tls_policy> policy{};
};

namespace detail_config {

constexpr std::int64_t ms_of(std::chrono::milliseconds d) {
    return d.count();
}

constexpr config_key row(std::string_view section, std::string_view name, key_type type, std::string_view def,
                         std::string_view doc, std::int64_t lo = 0, std::int64_t hi = 0) {
    config_key k{};
    k.section = section;
    k.name = name;
    k.type = type;
    k.default_value = def;
    k.doc = doc;
    k.min = lo;
    k.max = hi;
    return k;
}

template <class F>
constexpr config_key duration_key(std::string_view section, std::string_view name, std::string_view def,
                                  milliseconds lo, milliseconds hi, std::string_view doc, F f) {
    config_key k = row(section, name, key_type::duration, def, doc, ms_of(lo), ms_of(hi));
    k.duration = config_field<milliseconds>::of(f);
    return k;
}

template <class F>
constexpr config_key count_key(std::string_view section, std::string_view name, std::string_view def, std::int64_t lo,
                               std::int64_t hi, std::string_view doc, F f) {
    config_key k = row(section, name, key_type::count, def, doc, lo, hi);
    k.count = config_field<std::uint32_t>::of(f);
    return k;
}

template <class F>
constexpr config_key text_key(std::string_view section, std::string_view name, key_type type, std::string_view def,
                              std::string_view doc, F f) {
    config_key k = row(section, name, type, def, doc);
    k.text = config_field<std::string>::of(f);
    return k;
}

template <class F>
constexpr config_key policy_key(std::string_view section, std::string_view name, std::string_view def,
                                std::string_view doc, F f) {
    config_key k = row(section, name, key_type::tls_policy, def, doc);
    k.policy = config_field<engine::tls_policy>::of(f);
    return k;
}

using std::chrono::days;
using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;
constexpr milliseconds ms1{1};

constexpr config_key helo_name_key() {
    config_key k = text_key(
        "defaults", "helo_name", key_type::host_name, "", "name sent with EHLO",
        [](auto& c) -> auto& { return c.helo_name; });
    k.computed_default = &default_helo_name;
    k.computed_default_doc = "this host's name";
    return k;
}

// Every key = value setting, in the order check-config and README show them.
// To add one: a field in `config`, a row here (README's table then follows
// from `mxpress check-config --keys`), and the code that reads the field.
inline constexpr config_key all_keys[] = {
    // clang-format off
    helo_name_key(),
    duration_key("defaults", "retry_initial", "1m", ms1, days(365),
        "first retry after a temporary failure; the wait doubles up to retry_max",
        [](auto& c) -> auto& { return c.retry_initial; }),
    duration_key("defaults", "retry_max", "1h", ms1, days(365),
        "longest wait between two retries",
        [](auto& c) -> auto& { return c.retry_max; }),
    duration_key("defaults", "max_age", "24h", ms1, days(365),
        "a recipient not delivered this long after its first attempt is expired",
        [](auto& c) -> auto& { return c.max_age; }),
    count_key("defaults", "connections_max", "10", 1, 10'000,
        "connections per MX address (and port and TLS policy)",
        [](auto& c) -> auto& { return c.connections_max; }),
    count_key("defaults", "messages_per_connection_max", "1000", 1, 100'000'000,
        "messages over one connection, then it is closed and a new one opened",
        [](auto& c) -> auto& { return c.messages_per_connection_max; }),
    duration_key("defaults", "connect_timeout", "30s", ms1, hours(1),
        "TCP connect to an MX host or relay",
        [](auto& c) -> auto& { return c.connect_timeout; }),
    duration_key("defaults", "idle_timeout", "2s", ms1, hours(1),
        "a pooled connection without work this long is closed with QUIT",
        [](auto& c) -> auto& { return c.idle_timeout; }),
    count_key("defaults", "pending_max", "50000", 1, 10'000'000,
        "recipients one shard holds queued and in flight (not those waiting to retry); the reader waits beyond",
        [](auto& c) -> auto& { return c.pending_max; }),
    duration_key("defaults", "host_skip_max", "1m", ms1, days(1),
        "a host that refused or dropped a session is skipped for min(retry_initial, this)",
        [](auto& c) -> auto& { return c.host_skip_max; }),
    count_key("defaults", "in_doubt_retries", "1", 0, 10,
        "new attempts for a message the server took but never confirmed (the session ended after its final \".\"); then the row is in-doubt",
        [](auto& c) -> auto& { return c.in_doubt_retries; }),
    policy_key("defaults", "tls", "opportunistic",
        "disabled | opportunistic | required | verify (see TLS and relays)",
        [](auto& c) -> auto& { return c.tls; }),
    text_key("defaults", "tls_ca_file", key_type::file, "",
        "CA certificates (PEM) for tls = \"verify\"; empty: the system CAs",
        [](auto& c) -> auto& { return c.tls_ca_file; }),
    count_key("defaults", "tls_sessions_max", "8", 0, 1024,
        "TLS sessions kept per pool for resumption (0: every handshake is a full one)",
        [](auto& c) -> auto& { return c.tls_sessions_max; }),
    duration_key("defaults", "tls_plaintext_after_failure", "10m", ms1,
        days(30),
        "opportunistic: a host whose TLS handshake failed gets plaintext this long",
        [](auto& c) -> auto& { return c.tls_plaintext_after_failure; }),
    duration_key("timeouts", "greeting", "5m", ms1, days(1),
        "the server's 220 greeting (RFC 5321 4.5.3.2.1)",
        [](auto& c) -> auto& { return c.smtp_timeouts.greeting; }),
    duration_key("timeouts", "ehlo", "5m", ms1, days(1),
        "the reply to EHLO or HELO",
        [](auto& c) -> auto& { return c.smtp_timeouts.ehlo; }),
    duration_key("timeouts", "mail", "5m", ms1, days(1),
        "the reply to MAIL FROM (4.5.3.2.2)",
        [](auto& c) -> auto& { return c.smtp_timeouts.mail; }),
    duration_key("timeouts", "rcpt", "5m", ms1, days(1),
        "the reply to RCPT TO (4.5.3.2.3)",
        [](auto& c) -> auto& { return c.smtp_timeouts.rcpt; }),
    duration_key("timeouts", "data_init", "2m", ms1, days(1),
        "the 354 reply to DATA (4.5.3.2.4)",
        [](auto& c) -> auto& { return c.smtp_timeouts.data_init; }),
    duration_key("timeouts", "data_block", "3m", ms1, days(1),
        "each send of message data (4.5.3.2.5)",
        [](auto& c) -> auto& { return c.smtp_timeouts.data_block; }),
    duration_key("timeouts", "data_term", "10m", ms1, days(1),
        "the reply to the final \".\" (4.5.3.2.6)",
        [](auto& c) -> auto& { return c.smtp_timeouts.data_term; }),
    duration_key("timeouts", "other", "5m", ms1, days(1),
        "the reply to RSET, NOOP, STARTTLS or AUTH",
        [](auto& c) -> auto& { return c.smtp_timeouts.other; }),
    duration_key("timeouts", "quit", "5s", ms1, days(1),
        "the reply to QUIT",
        [](auto& c) -> auto& { return c.smtp_timeouts.quit; }),
    duration_key("timeouts", "tls_handshake", "30s", ms1, hours(1),
        "the whole TLS handshake",
        [](auto& c) -> auto& { return c.tls_handshake_timeout; }),
    duration_key("dns", "timeout", "2s", ms1, minutes(1),
        "first wait for a DNS answer before asking again (c-ares doubles it per round)",
        [](auto& c) -> auto& { return c.dns_timeout; }),
    count_key("dns", "tries", "3", 1, 20,
        "rounds of asking per DNS query (every server once per round)",
        [](auto& c) -> auto& { return c.dns_tries; }),
    duration_key("dns", "mx_cache_ttl", "5m", ms1, days(1),
        "how long an MX answer and its host addresses are used (c-ares 1.18 gives no TTL)",
        [](auto& c) -> auto& { return c.mx_cache_ttl; }),
    duration_key("dns", "failure_cache_ttl", "30s", ms1, hours(1),
        "how long a failed lookup (SERVFAIL, timeout) is remembered before asking again",
        [](auto& c) -> auto& { return c.dns_failure_cache_ttl; }),
    // clang-format on
};
}  // namespace detail_config

// Every key = value setting (the rows above), in the order check-config
// and README show them.
inline constexpr auto& config_keys = detail_config::all_keys;
static_assert(std::size(config_keys) <= 64, "config::keys_set has one bit per row");

namespace detail_config {

inline std::uint64_t line_of(const toml::node& n) {
    return n.source().begin.line;
}

[[noreturn]] inline void fail(const std::string& file, const toml::node& n, const std::string& what) {
    throw mail::input_error(file, line_of(n), what);
}

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
    }
    return "unknown key type";
}

// A row's value from the file, checked against its type and limits.
inline void assign_from(const std::string& file, const config_key& k, config& c, const toml::node& n) {
    std::string error;
    if (k.type == key_type::count) {
        const auto* v = n.as_integer();
        error = v != nullptr ? assign(k, c, {}, v->get()) : type_error(k);
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
    }
    return "?";
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
            const auto* s = value.as_string();
            tls_policy p{};
            if (s == nullptr || !parse_tls_policy(s->get(), p)) {
                fail(
                    file, value,
                    fmt::format("[{}] tls must be \"disabled\", \"opportunistic\", \"required\" or \"verify\"", table));
            }
            out.emplace_back(name, p);
        }
    }
}

inline void describe_tls_entries(std::string& out, std::string_view kind,
                                 const std::vector<std::pair<std::string, tls_policy>>& entries) {
    for (const auto& [name, p] : entries) {
        out += fmt::format("\n[{}.\"{}\"]\ntls = \"{}\"\n", kind, name, to_string(p));
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
    {"domain", "[domain.\"…\"]", "per recipient domain (A-labels; quote dotted names): tls",
     [](config& c, const toml::node& n, const std::string& file) {
         detail_config::get_tls_entries(file, "domain", n, c.domain_tls);
     },
     [](const config& c, std::string& out) { detail_config::describe_tls_entries(out, "domain", c.domain_tls); }},
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
    toml::table root;
    try {
        root = toml::parse(text, std::string_view(file));
    } catch (const toml::parse_error& e) {
        throw mail::input_error(file, e.source().begin.line, fmt::format("TOML syntax: {}", e.description()));
    }
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
        if (!node.is_table()) {
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
                fail(file, node,
                     fmt::format("unknown key '{}' in [{}]{} (known: {})", name, section, suggestion(name, known),
                                 list));
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
    for (const config_section& s : config_sections) {
        if (const auto* n = root.get(s.name)) {
            s.parse(c, *n, file);
        }
    }
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

// README's table of keys (Markdown), from config_keys and config_sections.
inline std::string describe_keys_markdown() {
    std::string out = "| key | type | default | meaning |\n|---|---|---|---|\n";
    for (const config_key& k : config_keys) {
        std::string def;
        if (k.computed_default != nullptr) {
            def = k.computed_default_doc;
        } else if (k.type == key_type::count) {
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
