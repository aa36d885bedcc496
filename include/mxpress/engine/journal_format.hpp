// mxpress/engine/journal_format.hpp — the journal's line format: outcome
// statuses, journal_entry, timestamps, the address tag, and the header and
// outcome lines as they are appended (journal_writer.hpp writes them,
// journal_reader.hpp reads them back). A file of its own so the format is
// one topic, apart from the file I/O on either side of it.
//
// The first line of a run is its header,
//   {"mxpress_journal":1,"run":"…","ts":"…","recipients":"…","template":"…"}
// (a resumed run appends its own, with the same fingerprints), then one
// object per line per outcome, at least
//   {"line":N,"email":"…","status":"…","code":250,"enhanced":"2.0.0",
//    "reply":"…","mx":"…","attempts":1,"tls":"TLSv1.3","ts":"…",
//    "domain":"…","mx_ip":"…","message_id":"<…>","run":"…"}
// Final statuses are delivered, bounced, expired, invalid, suppressed,
// skipped (step mail: due longer ago than the step's max_late) and
// in-doubt (the server took the message but the session ended before its
// reply, on every attempt allowed: it may have arrived); dry-run marks a row
// that a --dry-run checked and rendered (not final: a real run sends it);
// deferred marks a row the run stopped before its end (not final; it has
// "next_attempt", and "in_doubt":true when its transaction was cut).
// For invalid rows "reply" holds the reason. A row whose message a server
// answered has "transfer": how it was last sent, "BDAT" (RFC 3030
// CHUNKING) or "DATA".
//
// Promise: every line is valid JSON whatever the bytes in a reply or an
// address (see detail/json.hpp), and ends with '\n'.
#pragma once

#include <cassert>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>
#include <system_error>

#include <fmt/format.h>

#include "mxpress/detail/json.hpp"

namespace mxpress::engine {

// suppressed: on a --suppress list, never sent (final, like invalid).
enum class outcome_status : std::uint8_t {
    delivered,
    bounced,
    expired,
    invalid,
    in_doubt,
    dry_run,
    suppressed,
    deferred,
    skipped  // step mail: due longer ago than the step's max_late, never sent (final)
};

constexpr std::string_view to_string(outcome_status s) noexcept {
    switch (s) {
        case outcome_status::delivered: return "delivered";
        case outcome_status::bounced: return "bounced";
        case outcome_status::expired: return "expired";
        case outcome_status::invalid: return "invalid";
        case outcome_status::in_doubt: return "in-doubt";
        case outcome_status::dry_run: return "dry-run";
        case outcome_status::suppressed: return "suppressed";
        case outcome_status::deferred: return "deferred";
        case outcome_status::skipped: return "skipped";
    }
    return "unknown";
}

constexpr bool is_final(outcome_status s) noexcept {
    return s != outcome_status::dry_run && s != outcome_status::deferred;
}

inline bool parse_status(std::string_view text, outcome_status& out) noexcept {
    for (auto s : {outcome_status::delivered, outcome_status::bounced, outcome_status::expired, outcome_status::invalid,
                   outcome_status::in_doubt, outcome_status::dry_run, outcome_status::suppressed,
                   outcome_status::deferred, outcome_status::skipped}) {
        if (text == to_string(s)) {
            out = s;
            return true;
        }
    }
    return false;
}

struct journal_entry {
    std::uint64_t line = 0;
    std::string_view email;
    outcome_status status = outcome_status::invalid;
    int code = 0;
    std::string_view enhanced;
    std::string_view reply;
    std::string_view mx;
    std::uint32_t attempts = 0;
    std::string_view tls = "none";  // how the last attempt travelled: "TLSv1.3", "none"
    std::string_view ts;            // when: RFC 3339 UTC with milliseconds (format_timestamp)
    std::string_view domain;        // the recipient's domain
    std::string_view mx_ip;         // "address:port" of the MX that answered ("" when none did)
    std::string_view message_id;    // the Message-ID sent ("" when none is stable)
    std::string_view run;           // the run id of the header line
    std::string_view next_attempt;  // deferred only: when a resumed run tries it (RFC 3339)
    bool in_doubt = false;          // deferred only: its transaction was cut; a server may have it
    std::string_view transfer;      // how the message was last sent: "BDAT", "DATA", "" (never answered)
};

// RFC 3339 in UTC with milliseconds: 2026-11-27T12:00:00.123Z.
inline void format_timestamp(std::string& out, std::chrono::system_clock::time_point t) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
    const std::time_t secs = static_cast<std::time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    fmt::format_to(std::back_inserter(out), "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900,
                   tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms - secs * 1000));
}

// Parses format_timestamp()'s form back (milliseconds since the epoch).
inline bool parse_timestamp(std::string_view s, std::int64_t& ms_out) {
    // YYYY-MM-DDTHH:MM:SS.mmmZ
    if (s.size() != 24 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[19] != '.' ||
        s[23] != 'Z') {
        return false;
    }
    auto num = [&](std::size_t at, std::size_t n, int& v) {
        v = 0;
        for (std::size_t i = at; i < at + n; ++i) {
            if (s[i] < '0' || s[i] > '9') {
                return false;
            }
            v = v * 10 + (s[i] - '0');
        }
        return true;
    };
    std::tm tm{};
    int ms = 0;
    if (!num(0, 4, tm.tm_year) || !num(5, 2, tm.tm_mon) || !num(8, 2, tm.tm_mday) || !num(11, 2, tm.tm_hour) ||
        !num(14, 2, tm.tm_min) || !num(17, 2, tm.tm_sec) || !num(20, 3, ms)) {
        return false;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    ms_out = static_cast<std::int64_t>(::timegm(&tm)) * 1000 + ms;
    return true;
}

// A 32-bit tag of an address (FNV-1a, never 0): --resume checks that a row
// it skips still holds the address its journal line names.
inline std::uint32_t email_tag(std::string_view email) noexcept {
    std::uint32_t h = 2166136261u;
    for (char c : email) {
        h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
    }
    return h == 0 ? 1 : h;
}

// What a journal's header line records about the run that wrote it.
struct journal_header {
    std::string run;         // random id; every outcome line of the run repeats it
    std::string ts;          // when it started
    std::string recipients;  // fingerprint of the recipients file's columns
    std::string templ;       // fingerprint of the message template
};

inline void append_journal_header(std::string& out, const journal_header& h) {
    out += "{\"mxpress_journal\":1,\"run\":";
    detail::append_json_string(out, h.run);
    out += ",\"ts\":";
    detail::append_json_string(out, h.ts);
    out += ",\"recipients\":";
    detail::append_json_string(out, h.recipients);
    out += ",\"template\":";
    detail::append_json_string(out, h.templ);
    out += "}\n";
}

// Appends an integer's decimal digits: fmt::format_to parses its format
// string per call, which was a third of a journal line's cost.
template <class Int>
inline void append_decimal(std::string& out, Int v) {
    char digits[24];
    const auto [end, ec] = std::to_chars(digits, digits + sizeof digits, v);
    assert(ec == std::errc{});
    out.append(digits, end);
}

// Formats one journal line (with its '\n') onto `out`.
inline void append_journal_line(std::string& out, const journal_entry& e) {
    out += "{\"line\":";
    append_decimal(out, e.line);
    out += ",\"email\":";
    detail::append_json_string(out, e.email);
    out += ",\"status\":\"";
    out += to_string(e.status);
    out += "\",\"code\":";
    append_decimal(out, e.code);
    out += ",\"enhanced\":";
    detail::append_json_string(out, e.enhanced);
    out += ",\"reply\":";
    detail::append_json_string(out, e.reply);
    out += ",\"mx\":";
    detail::append_json_string(out, e.mx);
    out += ",\"attempts\":";
    append_decimal(out, e.attempts);
    out += ",\"tls\":";
    detail::append_json_string(out, e.tls);
    out += ",\"ts\":";
    detail::append_json_string(out, e.ts);
    out += ",\"domain\":";
    detail::append_json_string(out, e.domain);
    out += ",\"mx_ip\":";
    detail::append_json_string(out, e.mx_ip);
    out += ",\"message_id\":";
    detail::append_json_string(out, e.message_id);
    out += ",\"run\":";
    detail::append_json_string(out, e.run);
    if (!e.transfer.empty()) {
        out += ",\"transfer\":";
        detail::append_json_string(out, e.transfer);
    }
    if (e.status == outcome_status::deferred) {
        out += ",\"next_attempt\":";
        detail::append_json_string(out, e.next_attempt);
        out += e.in_doubt ? ",\"in_doubt\":true" : ",\"in_doubt\":false";
    }
    out += "}\n";
}

}  // namespace mxpress::engine
