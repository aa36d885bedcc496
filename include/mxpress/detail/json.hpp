// mxpress/detail/json.hpp — JSON string escaping for the journal and summaries.
//
// Promise: whatever bytes go in (quotes, backslashes, control bytes, invalid
// UTF-8 from a remote server's reply), the output is a valid JSON string body.
// Invalid UTF-8 sequences become U+FFFD, one per offending byte.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "mxpress/detail/utf8.hpp"

namespace mxpress::detail {

inline void append_json_escaped(std::string& out, std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            // Copy the longest plain run at once.
            std::size_t j = i + 1;
            while (j < s.size()) {
                const auto d = static_cast<unsigned char>(s[j]);
                if (d < 0x20 || d >= 0x80 || d == '"' || d == '\\') {
                    break;
                }
                ++j;
            }
            out.append(s.data() + i, j - i);
            i = j;
            continue;
        }
        switch (c) {
            case '"':
                out += "\\\"";
                ++i;
                continue;
            case '\\':
                out += "\\\\";
                ++i;
                continue;
            case '\n':
                out += "\\n";
                ++i;
                continue;
            case '\r':
                out += "\\r";
                ++i;
                continue;
            case '\t':
                out += "\\t";
                ++i;
                continue;
            default: break;
        }
        if (c < 0x20) {
            out += "\\u00";
            out += hex[c >> 4];
            out += hex[c & 0xF];
            ++i;
            continue;
        }
        const std::size_t n = utf8_sequence_length(s, i);
        if (n == 0) {
            out += "\\ufffd";
            ++i;
            continue;
        }
        out.append(s.data() + i, n);
        i += n;
    }
}

// Appends code point `cp` as UTF-8 (the JSON readers' \u escapes).
inline void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

inline void append_json_string(std::string& out, std::string_view s) {
    out += '"';
    append_json_escaped(out, s);
    out += '"';
}

}  // namespace mxpress::detail

namespace mxpress::detail {

// A value in a flat JSON object, as the journal reader needs it.
struct json_value {
    enum class kind { string, number, boolean, null } type = kind::null;
    std::string text;   // decoded string, or the number's literal
    bool flag = false;  // boolean value
};

// Parses one flat JSON object ({"k": scalar, ...}; no nested objects or
// arrays) and calls on_member(key, value) for each member. Returns an empty
// string on success, else what is wrong. Strict: it is for reading back our
// own journal, where anything unexpected means a torn or foreign line.
template <class OnMember>
std::string parse_flat_json_object(std::string_view s, OnMember&& on_member) {
    std::size_t i = 0;
    auto skip_ws = [&]() {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) {
            ++i;
        }
    };
    auto parse_hex4 = [&](std::uint32_t& v) {
        if (i + 4 > s.size()) {
            return false;
        }
        v = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = s[i++];
            v <<= 4;
            if (c >= '0' && c <= '9') {
                v |= static_cast<std::uint32_t>(c - '0');
            } else if (c >= 'a' && c <= 'f') {
                v |= static_cast<std::uint32_t>(c - 'a' + 10);
            } else if (c >= 'A' && c <= 'F') {
                v |= static_cast<std::uint32_t>(c - 'A' + 10);
            } else {
                return false;
            }
        }
        return true;
    };
    auto parse_string = [&](std::string& out) -> bool {
        if (i >= s.size() || s[i] != '"') {
            return false;
        }
        ++i;
        while (i < s.size()) {
            const char c = s[i++];
            if (c == '"') {
                return true;
            }
            if (static_cast<unsigned char>(c) < 0x20) {
                return false;
            }
            if (c != '\\') {
                out += c;
                continue;
            }
            if (i >= s.size()) {
                return false;
            }
            const char e = s[i++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    std::uint32_t cp = 0;
                    if (!parse_hex4(cp)) {
                        return false;
                    }
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        std::uint32_t lo = 0;
                        if (i + 2 > s.size() || s[i] != '\\' || s[i + 1] != 'u') {
                            return false;
                        }
                        i += 2;
                        if (!parse_hex4(lo) || lo < 0xDC00 || lo > 0xDFFF) {
                            return false;
                        }
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        return false;
                    }
                    append_utf8(out, cp);
                    break;
                }
                default: return false;
            }
        }
        return false;
    };
    skip_ws();
    if (i >= s.size() || s[i] != '{') {
        return "not a JSON object";
    }
    ++i;
    skip_ws();
    if (i < s.size() && s[i] == '}') {
        ++i;
    } else {
        for (;;) {
            skip_ws();
            std::string key;
            if (!parse_string(key)) {
                return "bad member name";
            }
            skip_ws();
            if (i >= s.size() || s[i] != ':') {
                return "missing ':'";
            }
            ++i;
            skip_ws();
            json_value v;
            if (i < s.size() && s[i] == '"') {
                v.type = json_value::kind::string;
                if (!parse_string(v.text)) {
                    return "bad string value";
                }
            } else if (s.substr(i).starts_with("true")) {
                v.type = json_value::kind::boolean;
                v.flag = true;
                i += 4;
            } else if (s.substr(i).starts_with("false")) {
                v.type = json_value::kind::boolean;
                i += 5;
            } else if (s.substr(i).starts_with("null")) {
                i += 4;
            } else {
                const std::size_t start = i;
                if (i < s.size() && s[i] == '-') {
                    ++i;
                }
                while (i < s.size() && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == 'e' || s[i] == 'E' ||
                                        s[i] == '+' || s[i] == '-')) {
                    ++i;
                }
                if (i == start) {
                    return "bad value";
                }
                v.type = json_value::kind::number;
                v.text = std::string(s.substr(start, i - start));
            }
            on_member(key, v);
            skip_ws();
            if (i < s.size() && s[i] == ',') {
                ++i;
                continue;
            }
            if (i < s.size() && s[i] == '}') {
                ++i;
                break;
            }
            return "missing ',' or '}'";
        }
    }
    skip_ws();
    if (i != s.size()) {
        return "text after the object";
    }
    return {};
}

}  // namespace mxpress::detail
