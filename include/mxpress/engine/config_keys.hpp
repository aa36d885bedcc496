// mxpress/engine/config_keys.hpp — the table of `key = value` settings: one
// row per key (section, name, type, default, limits, one-line doc, and the
// field of `config` it fills). config.hpp parses, checks and prints with it.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "mxpress/engine/config_values.hpp"

namespace mxpress::engine {

// ---- the key table ----------------------------------------------------------

enum class key_type : std::uint8_t {
    duration,    // "1h30m"; min and max in milliseconds
    count,       // an integer in min..max
    host_name,   // a string without spaces
    file,        // a readable file name, or "" for none
    tls_policy,  // "disabled" | "opportunistic" | "required" | "verify"
    rate,        // "unlimited" | "N/s" | "N/min" | "N/h" | "N/d", optionally ",burst=B"
    boolean,     // true | false (a TOML boolean)
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
    config_field<engine::rate> limit{};
    config_field<bool> flag{};
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

template <class F>
constexpr config_key rate_key(std::string_view section, std::string_view name, std::string_view def,
                              std::string_view doc, F f) {
    config_key k = row(section, name, key_type::rate, def, doc);
    k.limit = config_field<engine::rate>::of(f);
    return k;
}

template <class F>
constexpr config_key bool_key(std::string_view section, std::string_view name, std::string_view def,
                              std::string_view doc, F f) {
    config_key k = row(section, name, key_type::boolean, def, doc);
    k.flag = config_field<bool>::of(f);
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
    rate_key("defaults", "max_message_rate", "unlimited",
        "messages per recipient domain: \"N/s\", \"N/min\", \"N/h\", \"N/d\", optionally \",burst=B\" (default burst 1: smooth)",
        [](auto& c) -> auto& { return c.max_message_rate; }),
    rate_key("defaults", "max_connection_rate", "unlimited",
        "new connections per MX address (and port and TLS policy), same syntax",
        [](auto& c) -> auto& { return c.max_connection_rate; }),
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
    bool_key("defaults", "chunking", "true",
        "send the body with BDAT (RFC 3030) instead of DATA when the server offers CHUNKING",
        [](auto& c) -> auto& { return c.chunking; }),
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
    duration_key("dns", "timeout", "300ms", ms1, minutes(1),
        "first wait for a DNS answer before asking again (c-ares doubles it per round: 300ms, 600ms, 1.2s, ...)",
        [](auto& c) -> auto& { return c.dns_timeout; }),
    count_key("dns", "tries", "5", 1, 20,
        "rounds of asking per DNS query (every server once per round)",
        [](auto& c) -> auto& { return c.dns_tries; }),
    count_key("dns", "queries_in_flight_max", "128", 1, 4096,
        "DNS queries (MX, A, AAAA) sent and not yet answered, for the run: each shard gets its share (at least 4); the rest wait in order",
        [](auto& c) -> auto& { return c.dns_queries_in_flight_max; }),
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

}  // namespace mxpress::engine
