// mxpress/detail/ascii.hpp — locale-free ASCII helpers.
//
// Mail syntax (RFC 5321/5322) is defined over ASCII octets; <cctype> depends
// on the C locale and on the sign of char, so the parsers use these instead.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
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

// The first CR or LF of `s` at or after `from`, or npos. A plain loop:
// string_view::find_first_of("\r\n") calls memchr over the two-character
// set once per character, which showed in profiles of merged values.
inline std::size_t find_line_break(std::string_view s, std::size_t from = 0) noexcept {
    for (std::size_t i = from; i < s.size(); ++i) {
        if (s[i] == '\r' || s[i] == '\n') {
            return i;
        }
    }
    return std::string_view::npos;
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

// A piece of text seen as CRLF lines, so that the longest line of pieces
// joined end to end (a template's literals and a row's values) is known
// without scanning the joined text: `first` octets before the piece's first
// line break (all of them when it has none), `last` after its last one,
// `inner` the longest line between two. `clean`: every CR and LF of the
// piece is part of a CRLF inside it, so joining cannot make or split one.
struct line_shape {
    std::uint32_t first = 0;
    std::uint32_t last = 0;
    std::uint32_t inner = 0;
    bool has_break = false;
    bool ascii = true;
    bool clean = true;

    // Building one: a line of `octets` ended at a break.
    void end_line(std::size_t octets) noexcept {
        if (!has_break) {
            first = static_cast<std::uint32_t>(octets);
        } else {
            inner = std::max(inner, static_cast<std::uint32_t>(octets));
        }
        has_break = true;
    }
    // The text ended, its open line `octets` long (0 after a final break).
    void end_text(std::size_t octets) noexcept {
        last = static_cast<std::uint32_t>(octets);
        if (!has_break) {
            first = last;
        }
    }
};

// A literal's shape (line breaks are CRLF; a bare CR or LF counts as an
// octet of its line and makes the shape not `clean`).
inline line_shape shape_of_crlf_text(std::string_view text) noexcept {
    line_shape s;
    s.ascii = all_ascii(text);
    std::size_t line = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') {
            s.end_line(line);
            line = 0;
            ++i;
            continue;
        }
        s.clean = s.clean && text[i] != '\r' && text[i] != '\n';
        ++line;
    }
    s.end_text(line);
    return s;
}

// A merged value's shape once its line ends (CRLF, CR or LF) are written
// as CRLF, which is how a body takes them.
inline line_shape shape_of_value(std::string_view v) noexcept {
    line_shape s;
    std::size_t line = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
        const char c = v[i];
        if (c == '\r' || c == '\n') {
            s.end_line(line);
            line = 0;
            i += c == '\r' && i + 1 < v.size() && v[i + 1] == '\n' ? 1 : 0;
            continue;
        }
        s.ascii = s.ascii && is_ascii(c);
        ++line;
    }
    s.end_text(line);
    return s;
}

// Pieces measured one after the other: the longest line of them joined.
class line_meter {
public:
    void add(const line_shape& s) noexcept {
        _ascii = _ascii && s.ascii;
        if (!s.has_break) {
            _line += s.first;
            return;
        }
        _longest = std::max({_longest, _line + s.first, static_cast<std::size_t>(s.inner)});
        _line = s.last;
    }
    std::size_t longest() const noexcept { return std::max(_longest, _line); }
    bool ascii() const noexcept { return _ascii; }

private:
    std::size_t _line = 0;  // the open line so far
    std::size_t _longest = 0;
    bool _ascii = true;
};

}  // namespace mxpress::detail
