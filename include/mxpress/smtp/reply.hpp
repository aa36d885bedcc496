// mxpress/smtp/reply.hpp — SMTP replies (RFC 5321 §4.2) and their
// incremental parser, with RFC 3463 enhanced status codes.
//
// Promises:
// - Bytes may arrive cut anywhere (one byte at a time included); the parser
//   keeps what it needs and never reads past what it was given.
// - Memory is bounded: a line is at most line_bytes_max octets, a reply at
//   most lines_max lines. RFC 5321 limits reply lines to 512 octets; real
//   servers exceed it, so the bound is generous but finite.
// - Anything that is not a reply (bad code, bad separator, a code changing
//   inside a multi-line reply) is a protocol error with a reason: the
//   connection cannot be trusted after it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "mxpress/detail/ascii.hpp"

namespace mxpress::smtp {

struct reply {
    int code = 0;          // 200..599; 0 for a reply synthesized locally with no server answer
    std::string enhanced;  // "2.1.5" when the server gave one, else empty
    std::string text;      // text of every line, without code and enhanced code, joined by '\n'

    bool positive() const noexcept { return code >= 200 && code < 400; }
    bool transient() const noexcept { return code >= 400 && code < 500; }
    bool permanent() const noexcept { return code >= 500; }
    int klass() const noexcept { return code / 100; }

    // "250 2.0.0 Ok: queued" — single line, for journals and logs.
    std::string one_line() const {
        // Code 0: no server answer (a local or DNS failure); say only what happened.
        std::string s = code != 0 ? std::to_string(code) : std::string();
        if (!enhanced.empty()) {
            s += s.empty() ? "" : " ";
            s += enhanced;
        }
        if (!text.empty()) {
            s += s.empty() ? "" : " ";
            for (char c : text) {
                s += (c == '\n') ? ' ' : c;
            }
        }
        return s;
    }
};

class reply_parser {
public:
    static constexpr std::size_t line_bytes_max = 16 * 1024;
    static constexpr std::size_t lines_max = 512;

    enum class status { need_more, reply_ready, error };

    // Consumes bytes from `data` up to and including the end of one complete
    // reply, or all of it. `consumed` says how many bytes were used. After
    // reply_ready, take() the reply before feeding more.
    status feed(std::string_view data, std::size_t& consumed) {
        consumed = 0;
        if (_failed) {
            return status::error;
        }
        while (consumed < data.size()) {
            const std::string_view rest = data.substr(consumed);
            const std::size_t nl = rest.find('\n');
            const std::size_t take = nl == std::string_view::npos ? rest.size() : nl + 1;
            if (_line.size() + take > line_bytes_max + 2) {
                return fail("reply line longer than " + std::to_string(line_bytes_max) + " bytes");
            }
            _line.append(rest.data(), take);
            consumed += take;
            if (nl == std::string_view::npos) {
                return status::need_more;
            }
            const status s = finish_line();
            if (s != status::need_more) {
                return s;
            }
        }
        return status::need_more;
    }

    reply take() {
        reply r = std::move(_reply);
        _reply = reply{};
        _lines = 0;
        return r;
    }

    const std::string& error() const noexcept { return _error; }
    bool failed() const noexcept { return _failed; }
    // True while part of a reply has been received.
    bool in_progress() const noexcept { return !_line.empty() || _lines > 0; }

private:
    status fail(std::string why) {
        _failed = true;
        _error = std::move(why);
        return status::error;
    }

    status finish_line() {
        std::string_view line(_line);
        line.remove_suffix(1);  // '\n'
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        if (line.size() < 3 || !detail::is_digit(line[0]) || !detail::is_digit(line[1]) || !detail::is_digit(line[2]) ||
            line[0] < '2' || line[0] > '5') {
            return fail("malformed reply line: " + printable_prefix(line));
        }
        const int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        bool last = true;
        if (line.size() > 3) {
            if (line[3] == '-') {
                last = false;
            } else if (line[3] != ' ') {
                return fail("malformed reply line: " + printable_prefix(line));
            }
        }
        if (_lines > 0 && code != _reply.code) {
            return fail("reply code changed inside a multi-line reply: " + printable_prefix(line));
        }
        if (++_lines > lines_max) {
            return fail("reply has more than " + std::to_string(lines_max) + " lines");
        }
        _reply.code = code;
        std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view{};
        const std::size_t enh = enhanced_length(text, line[0]);
        if (enh > 0) {
            if (_lines == 1) {
                _reply.enhanced = std::string(text.substr(0, enh));
            }
            text.remove_prefix(enh);
            if (!text.empty()) {
                text.remove_prefix(1);  // the space after the enhanced code
            }
        }
        if (_lines > 1) {
            _reply.text += '\n';
        }
        _reply.text += text;
        _line.clear();
        return last ? status::reply_ready : status::need_more;
    }

    // Length of a leading "c.sss.ddd" enhanced code whose class matches the
    // reply's first digit (RFC 3463 §2, RFC 2034 §4), else 0.
    static std::size_t enhanced_length(std::string_view t, char klass) {
        std::size_t i = 0;
        if (t.size() < 5 || t[0] != klass || t[1] != '.') {
            return 0;
        }
        i = 2;
        for (int part = 0; part < 2; ++part) {
            const std::size_t start = i;
            while (i < t.size() && detail::is_digit(t[i]) && i - start < 3) {
                ++i;
            }
            if (i == start) {
                return 0;
            }
            if (part == 0) {
                if (i >= t.size() || t[i] != '.') {
                    return 0;
                }
                ++i;
            }
        }
        if (i < t.size() && t[i] != ' ') {
            return 0;
        }
        return i;
    }

    static std::string printable_prefix(std::string_view s) {
        std::string out;
        for (std::size_t i = 0; i < s.size() && i < 64; ++i) {
            const auto c = static_cast<unsigned char>(s[i]);
            out += (c >= 32 && c < 127) ? static_cast<char>(c) : '?';
        }
        return out;
    }

    std::string _line;
    reply _reply;
    std::size_t _lines = 0;
    bool _failed = false;
    std::string _error;
};

}  // namespace mxpress::smtp
