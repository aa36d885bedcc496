// mxpress/detail/ascii.hpp — locale-free ASCII helpers.
//
// Mail syntax (RFC 5321/5322) is defined over ASCII octets; <cctype> depends
// on the C locale and on the sign of char, so the parsers use these instead.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>
#include <string_view>

namespace mxpress::detail {

constexpr bool is_digit(char c) noexcept {
    return c >= '0' && c <= '9';
}
constexpr bool is_alpha(char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
constexpr bool is_alnum(char c) noexcept {
    return is_alpha(c) || is_digit(c);
}
constexpr bool is_wsp(char c) noexcept {
    return c == ' ' || c == '\t';
}
constexpr bool is_ascii(char c) noexcept {
    return static_cast<unsigned char>(c) < 0x80;
}
constexpr char to_lower(char c) noexcept {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

constexpr bool iequals(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (to_lower(a[i]) != to_lower(b[i])) {
            return false;
        }
    }
    return true;
}

inline std::string to_lower_copy(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        c = to_lower(c);
    }
    return out;
}

constexpr std::string_view trim_wsp(std::string_view s) noexcept {
    while (!s.empty() && (is_wsp(s.front()) || s.front() == '\r' || s.front() == '\n')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (is_wsp(s.back()) || s.back() == '\r' || s.back() == '\n')) {
        s.remove_suffix(1);
    }
    return s;
}

// True when every octet is below 0x80. Word-at-a-time: this runs on every
// rendered header and body, so it must not be a per-byte branch.
inline bool all_ascii(std::string_view s) noexcept {
    const char* p = s.data();
    std::size_t n = s.size();
    unsigned long long acc = 0;
    while (n >= 8) {
        unsigned long long w;
        __builtin_memcpy(&w, p, 8);
        acc |= w;
        p += 8;
        n -= 8;
    }
    while (n > 0) {
        acc |= static_cast<unsigned char>(*p);
        ++p;
        --n;
    }
    return (acc & 0x8080808080808080ULL) == 0;
}

// The longest line of `text` in octets, lines ended by CRLF (a bare CR or
// LF is part of its line; the last line needs no end). memchr finds the
// LFs, so a long ASCII text costs a few vector compares per line.
inline std::size_t longest_crlf_line(std::string_view text) noexcept {
    std::size_t longest = 0;
    std::size_t start = 0;  // of the current line
    std::size_t from = 0;
    while (from < text.size()) {
        const void* hit = std::memchr(text.data() + from, '\n', text.size() - from);
        if (hit == nullptr) {
            break;
        }
        const std::size_t lf = static_cast<std::size_t>(static_cast<const char*>(hit) - text.data());
        if (lf > start && text[lf - 1] == '\r') {
            longest = std::max(longest, lf - 1 - start);
            start = lf + 1;
        }
        from = lf + 1;
    }
    return std::max(longest, text.size() - start);
}

}  // namespace mxpress::detail
