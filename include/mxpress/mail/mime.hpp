// mxpress/mail/mime.hpp — the encoders the template needs: base64, RFC 2047
// encoded-words, quoted-printable bodies (RFC 2045 §6.7), header folding and
// the RFC 5322 date.
//
// Every encoder appends to a caller-owned std::string, so a renderer can
// reuse one buffer for all recipients.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/detail/utf8.hpp"

namespace mxpress::mail {

inline void append_base64(std::string& out, std::string_view in) {
    static constexpr char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::size_t i = 0;
    const auto* p = reinterpret_cast<const unsigned char*>(in.data());
    for (; i + 3 <= in.size(); i += 3) {
        const std::uint32_t v = (std::uint32_t{p[i]} << 16) | (std::uint32_t{p[i + 1]} << 8) | p[i + 2];
        out += table[(v >> 18) & 63];
        out += table[(v >> 12) & 63];
        out += table[(v >> 6) & 63];
        out += table[v & 63];
    }
    const std::size_t rest = in.size() - i;
    if (rest == 1) {
        const std::uint32_t v = std::uint32_t{p[i]} << 16;
        out += table[(v >> 18) & 63];
        out += table[(v >> 12) & 63];
        out += "==";
    } else if (rest == 2) {
        const std::uint32_t v = (std::uint32_t{p[i]} << 16) | (std::uint32_t{p[i + 1]} << 8);
        out += table[(v >> 18) & 63];
        out += table[(v >> 12) & 63];
        out += table[(v >> 6) & 63];
        out += '=';
    }
}

// Appends `text` (valid UTF-8) as RFC 2047 "B" encoded-words separated by
// single spaces. Each word is at most 75 octets (RFC 2047 §2) and never
// splits a UTF-8 sequence (§5: each word must be decodable on its own).
inline void append_encoded_words(std::string& out, std::string_view text) {
    // 48 base64 chars + 12 of syntax = 60: "Subject: " and a word fit in 78.
    constexpr std::size_t raw_bytes_max = 36;
    std::size_t i = 0;
    bool first = true;
    while (i < text.size()) {
        std::size_t j = i;
        while (j < text.size()) {
            std::size_t n = detail::utf8_sequence_length(text, j);
            if (n == 0) {
                n = 1;  // not expected (input is checked); keep going byte-wise
            }
            if (j + n - i > raw_bytes_max) {
                break;
            }
            j += n;
        }
        if (!first) {
            out += ' ';
        }
        first = false;
        out += "=?UTF-8?B?";
        append_base64(out, text.substr(i, j - i));
        out += "?=";
        i = j;
    }
}

// Appends `data` as base64 lines of 76 characters, each ended by CRLF.
inline void append_base64_lines(std::string& out, std::string_view data) {
    constexpr std::size_t raw_per_line = 57;  // 76 base64 characters
    for (std::size_t i = 0; i < data.size(); i += raw_per_line) {
        append_base64(out, data.substr(i, raw_per_line));
        out += "\r\n";
    }
}

// The value of parameter `name` (lowercase) in a Content-Type value such as
// 'text/plain; charset="utf-8"', quotes removed; empty when absent.
inline std::string_view content_type_param(std::string_view content_type, std::string_view name) {
    std::size_t i = content_type.find(';');
    while (i != std::string_view::npos && i < content_type.size()) {
        std::string_view rest = detail::trim_wsp(content_type.substr(i + 1));
        const std::size_t eq = rest.find('=');
        if (eq == std::string_view::npos) {
            return {};
        }
        const bool match = detail::iequals(detail::trim_wsp(rest.substr(0, eq)), name);
        rest = detail::trim_wsp(rest.substr(eq + 1));
        std::string_view value;
        if (!rest.empty() && rest.front() == '"') {
            const std::size_t close = rest.find('"', 1);
            value = rest.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1);
        } else {
            value = detail::trim_wsp(rest.substr(0, rest.find(';')));
        }
        if (match) {
            return value;
        }
        const std::size_t next =
            content_type.find(';', static_cast<std::size_t>(value.data() + value.size() - content_type.data()));
        i = next;
    }
    return {};
}

// Appends "Name: value\r\n", folding at whitespace so that lines stay within
// 78 octets where the value allows it. Returns false when some line would
// exceed 998 octets (RFC 5322 §2.1.1) because there is no whitespace to fold at.
inline bool append_folded_header(std::string& out, std::string_view name, std::string_view value) {
    constexpr std::size_t line_soft_max = 78;
    constexpr std::size_t line_hard_max = 998;
    const std::size_t start = out.size();
    out += name;
    out += ": ";
    std::size_t line_start = start;
    std::size_t i = 0;
    bool ok = true;
    while (i < value.size()) {
        // Next word: leading whitespace + non-whitespace run.
        std::size_t j = i;
        while (j < value.size() && detail::is_wsp(value[j])) {
            ++j;
        }
        while (j < value.size() && !detail::is_wsp(value[j])) {
            ++j;
        }
        const std::size_t line_len = out.size() - line_start;
        if (line_len + (j - i) > line_soft_max && i > 0 && detail::is_wsp(value[i]) && line_len > name.size() + 2) {
            out += "\r\n";
            line_start = out.size();
        }
        out.append(value.data() + i, j - i);
        if (out.size() - line_start > line_hard_max) {
            ok = false;
        }
        i = j;
    }
    out += "\r\n";
    return ok;
}

// Appends `body` (lines ended by CRLF) as quoted-printable, with encoded
// lines of at most 76 octets (RFC 2045 §6.7 rule 5).
inline void append_quoted_printable(std::string& out, std::string_view body) {
    static constexpr char hex[] = "0123456789ABCDEF";
    constexpr std::size_t line_max = 76;
    std::size_t col = 0;
    auto put = [&](const char* s, std::size_t n) {
        if (col + n > line_max - 1) {  // leave room for the soft break '='
            out += "=\r\n";
            col = 0;
        }
        out.append(s, n);
        col += n;
    };
    for (std::size_t i = 0; i < body.size(); ++i) {
        const auto c = static_cast<unsigned char>(body[i]);
        if (c == '\r' && i + 1 < body.size() && body[i + 1] == '\n') {
            out += "\r\n";
            col = 0;
            ++i;
            continue;
        }
        const bool at_line_end =
            (i + 1 == body.size()) || (body[i + 1] == '\r' && i + 2 < body.size() && body[i + 2] == '\n');
        const bool literal = (c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !at_line_end);
        if (literal) {
            const char ch = static_cast<char>(c);
            put(&ch, 1);
        } else {
            const char enc[3] = {'=', hex[c >> 4], hex[c & 0xF]};
            put(enc, 3);
        }
    }
}

// Appends an RFC 5322 date-time in UTC, e.g. "Thu, 26 Nov 2026 11:55:52 +0000".
// Locale-free (strftime's %a/%b follow LC_TIME).
inline void append_rfc5322_date(std::string& out, std::time_t t) {
    static constexpr const char* days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static constexpr const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                             "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[40];
    const int n =
        std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7], tm.tm_mday,
                      months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    out.append(buf, static_cast<std::size_t>(n));
}

}  // namespace mxpress::mail
