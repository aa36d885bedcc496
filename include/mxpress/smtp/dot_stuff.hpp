// mxpress/smtp/dot_stuff.hpp — DATA transparency (RFC 5321 §4.5.2).
//
// Appends a CRLF-terminated message as it goes after DATA's 354: every line
// that starts with '.' gets one more '.', and the end-of-data "." line
// follows. The message must use CRLF line ends (the renderer guarantees it);
// a final line without CRLF gets one.
#pragma once

#include <cstring>
#include <string>
#include <string_view>

namespace mxpress::smtp {

inline void append_dot_stuffed(std::string& out, std::string_view message) {
    out.reserve(out.size() + message.size() + message.size() / 64 + 8);
    const char* p = message.data();
    const char* const end = p + message.size();
    if (p < end && *p == '.') {
        out += '.';
    }
    for (;;) {
        // Find the next "\n." — the only place a stuffed dot goes.
        const char* nl = p;
        const char* hit = nullptr;
        while (nl < end) {
            nl = static_cast<const char*>(std::memchr(nl, '\n', static_cast<std::size_t>(end - nl)));
            if (nl == nullptr) {
                break;
            }
            if (nl + 1 < end && nl[1] == '.') {
                hit = nl + 1;
                break;
            }
            ++nl;
        }
        if (hit == nullptr) {
            out.append(p, static_cast<std::size_t>(end - p));
            break;
        }
        out.append(p, static_cast<std::size_t>(hit - p));
        out += '.';
        p = hit;
    }
    if (message.size() < 2 || message.substr(message.size() - 2) != "\r\n") {
        out += "\r\n";
    }
    out += ".\r\n";
}

}  // namespace mxpress::smtp
