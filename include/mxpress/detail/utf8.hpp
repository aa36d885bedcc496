// mxpress/detail/utf8.hpp — strict UTF-8 validation (RFC 3629).
//
// Rejects overlong forms, surrogates (U+D800..U+DFFF) and code points above
// U+10FFFF. Used for CSV merge fields, addresses and journal escaping.
#pragma once

#include <cstddef>
#include <string_view>

#include "mxpress/detail/ascii.hpp"

namespace mxpress::detail {

// Length of the valid UTF-8 sequence at s[i], or 0 when it is not valid.
constexpr std::size_t utf8_sequence_length(std::string_view s, std::size_t i) noexcept {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
        return 1;
    }
    const std::size_t left = s.size() - i;
    auto cont = [&](std::size_t k) { return (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80; };
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        return (left >= 2 && cont(1)) ? 2 : 0;
    }
    if (b0 >= 0xE0 && b0 <= 0xEF) {
        if (left < 3 || !cont(1) || !cont(2)) {
            return 0;
        }
        const auto b1 = static_cast<unsigned char>(s[i + 1]);
        if (b0 == 0xE0 && b1 < 0xA0) {
            return 0;  // overlong
        }
        if (b0 == 0xED && b1 >= 0xA0) {
            return 0;  // surrogate
        }
        return 3;
    }
    if (b0 >= 0xF0 && b0 <= 0xF4) {
        if (left < 4 || !cont(1) || !cont(2) || !cont(3)) {
            return 0;
        }
        const auto b1 = static_cast<unsigned char>(s[i + 1]);
        if (b0 == 0xF0 && b1 < 0x90) {
            return 0;  // overlong
        }
        if (b0 == 0xF4 && b1 >= 0x90) {
            return 0;  // above U+10FFFF
        }
        return 4;
    }
    return 0;
}

inline bool valid_utf8(std::string_view s) noexcept {
    if (all_ascii(s)) {
        return true;
    }
    std::size_t i = 0;
    while (i < s.size()) {
        const std::size_t n = utf8_sequence_length(s, i);
        if (n == 0) {
            return false;
        }
        i += n;
    }
    return true;
}

}  // namespace mxpress::detail
