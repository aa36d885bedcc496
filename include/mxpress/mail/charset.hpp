// mxpress/mail/charset.hpp — UTF-8 to ISO-2022-JP (RFC 1468) with glibc iconv,
// for Japanese mail (still expected by some mobile carriers).
//
// Promises:
// - convert() turns valid UTF-8 into ISO-2022-JP that starts and ends in the
//   ASCII shift state (ESC ( B before the end), so each result stands on its
//   own: a whole body, or one RFC 2047 encoded-word.
// - A character ISO-2022-JP cannot carry (an emoji, 𠮷, half-width katakana
//   such as ｶﾀｶﾅ: glibc's ISO-2022-JP has JIS X 0208 and ASCII only) is
//   reported, never replaced by '?'.
// - One converter holds one iconv_t, which keeps shift state: one per
//   renderer (so one per thread), never shared.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <iconv.h>

#include "mxpress/detail/utf8.hpp"
#include "mxpress/mail/mime.hpp"

namespace mxpress::mail {

class iso2022jp_converter {
public:
    iso2022jp_converter() : _cd(iconv_open("ISO-2022-JP", "UTF-8")) {
        if (_cd == invalid()) {
            throw std::runtime_error("iconv cannot convert UTF-8 to ISO-2022-JP on this system");
        }
    }
    ~iso2022jp_converter() { iconv_close(_cd); }
    iso2022jp_converter(const iso2022jp_converter&) = delete;
    iso2022jp_converter& operator=(const iso2022jp_converter&) = delete;

    // Appends `utf8` as ISO-2022-JP ending in the ASCII state. Returns the
    // offset in `utf8` of the first character that has no ISO-2022-JP form
    // (`out` then holds a partial result), or npos when all of it converted.
    std::size_t convert(std::string_view utf8, std::string& out) {
        iconv(_cd, nullptr, nullptr, nullptr, nullptr);  // the initial (ASCII) state
        char* in = const_cast<char*>(utf8.data());       // iconv's signature; it does not write the input
        std::size_t in_left = utf8.size();
        const std::size_t start = out.size();
        std::size_t used = 0;
        // Kanji take 2 octets for UTF-8's 3; shifts 3 each: grow when short.
        out.resize(start + utf8.size() + shift_room);
        bool input_done = false;
        for (;;) {
            char* o = out.data() + start + used;
            std::size_t o_left = out.size() - start - used;
            const std::size_t n = input_done ? iconv(_cd, nullptr, nullptr, &o, &o_left)  // back to ASCII
                                             : iconv(_cd, &in, &in_left, &o, &o_left);
            used = static_cast<std::size_t>(o - (out.data() + start));
            if (n != iconv_failed) {
                if (input_done) {
                    break;
                }
                input_done = true;  // all input converted; the next call writes the reset
                continue;
            }
            if (errno == E2BIG) {
                out.resize(out.size() * 2 + shift_room);
                continue;
            }
            // EILSEQ (no ISO-2022-JP form) or EINVAL (cut UTF-8: the input is checked, not expected).
            out.resize(start + used);
            return static_cast<std::size_t>(in - utf8.data());
        }
        out.resize(start + used);
        return std::string_view::npos;
    }

    // "'𠮷' (U+20BB7)": the character at `offset` of `utf8`, for error messages.
    static std::string describe(std::string_view utf8, std::size_t offset) {
        std::size_t n = detail::utf8_sequence_length(utf8, offset);
        n = n == 0 ? 1 : n;
        const auto b = [&](std::size_t k) { return static_cast<unsigned char>(utf8[offset + k]); };
        std::uint32_t cp = b(0);
        if (n == 2) {
            cp = ((cp & 0x1Fu) << 6) | (b(1) & 0x3Fu);
        } else if (n == 3) {
            cp = ((cp & 0x0Fu) << 12) | ((b(1) & 0x3Fu) << 6) | (b(2) & 0x3Fu);
        } else if (n == 4) {
            cp = ((cp & 0x07u) << 18) | ((b(1) & 0x3Fu) << 12) | ((b(2) & 0x3Fu) << 6) | (b(3) & 0x3Fu);
        }
        return fmt::format("'{}' (U+{:04X})", utf8.substr(offset, n), cp);
    }

private:
    static constexpr std::size_t shift_room = 16;  // room for a few ESC ( B / ESC $ B shifts
    static constexpr std::size_t iconv_failed = static_cast<std::size_t>(-1);
    static iconv_t invalid() noexcept { return reinterpret_cast<iconv_t>(-1); }

    iconv_t _cd;
};

// Appends `text` (valid UTF-8) as RFC 2047 "B" encoded-words in ISO-2022-JP,
// separated by single spaces. Each word is converted on its own, so it ends
// in the ASCII state and never splits an escape sequence or a character; each
// is at most 66 octets (36 octets of ISO-2022-JP), within RFC 2047's 75.
// Returns npos, or the offset in `text` of a character with no ISO-2022-JP
// form (`out` then holds a partial result).
inline std::size_t append_iso2022jp_words(std::string& out, std::string_view text, iso2022jp_converter& converter) {
    constexpr std::size_t raw_octets_max = 36;  // 48 base64 characters, as for UTF-8 words
    std::string word;
    std::string longer;
    std::size_t i = 0;
    while (i < text.size()) {
        std::size_t j = i;
        word.clear();
        while (j < text.size()) {
            std::size_t n = detail::utf8_sequence_length(text, j);
            n = n == 0 ? 1 : n;
            longer.clear();
            if (const std::size_t bad = converter.convert(text.substr(i, j + n - i), longer);
                bad != std::string_view::npos) {
                return i + bad;
            }
            if (longer.size() > raw_octets_max && j > i) {
                break;
            }
            word.swap(longer);
            j += n;
        }
        if (i > 0) {
            out += ' ';
        }
        out += "=?ISO-2022-JP?B?";
        append_base64(out, word);
        out += "?=";
        i = j;
    }
    return std::string_view::npos;
}

}  // namespace mxpress::mail
