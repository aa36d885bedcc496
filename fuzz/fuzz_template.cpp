// Fuzzes the template compiler and renderer: the input is a template; the
// columns are fixed; each compiled template is rendered with values that
// hold CR/LF, non-ASCII and long runs. Whatever renders must keep its
// promises (check_message): CRLF line ends, lines of at most 998 octets,
// ASCII headers without SMTPUTF8, and no merge value starts a header line.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "mxpress/mail/message_template.hpp"

namespace {

// RFC 5322 §2.1.1: a line is at most 998 octets before its CRLF.
constexpr std::size_t line_octets_max = 998;

// What every rendered message promises: CRLF line ends only (no bare CR or
// LF), lines of at most 998 octets, header lines in ASCII unless the row
// needs SMTPUTF8, a blank line after the headers, and (when the template
// does not write it itself) no header line made by a merge value.
void check_message(std::string_view out, const mxpress::mail::render_result& res, bool check_injection) {
    const std::size_t end = out.find("\r\n\r\n");
    if (end == std::string_view::npos) {
        std::abort();  // no blank line between headers and body
    }
    const std::string_view headers = out.substr(0, end + 2);
    std::size_t line_start = 0;
    for (std::size_t i = 0; i < out.size(); ++i) {
        const char ch = out[i];
        if (ch == '\r' && (i + 1 == out.size() || out[i + 1] != '\n')) {
            std::abort();  // bare CR
        }
        if (ch == '\n') {
            if (i == 0 || out[i - 1] != '\r') {
                std::abort();  // bare LF
            }
            if (i - 1 - line_start > line_octets_max) {
                std::abort();  // line over 998 octets
            }
            line_start = i + 1;
        }
        if (i < headers.size() && static_cast<unsigned char>(ch) >= 0x80 && !res.needs_smtputf8) {
            std::abort();  // 8-bit header text without SMTPUTF8
        }
    }
    if (line_start != out.size()) {
        std::abort();  // the last line has no CRLF
    }
    if (check_injection &&
        (headers.find("\r\nInjected:") != std::string_view::npos || headers.starts_with("Injected:"))) {
        std::abort();
    }
}

// Whether `needle` stands outside a quoted string (where it would be an
// address, not part of a display name) in an address header of `headers`.
bool second_mailbox(std::string_view headers, std::string_view needle) {
    static const char* const address_headers[] = {"from", "sender",    "reply-to",  "to",
                                                  "cc",   "resent-to", "resent-cc", "resent-from"};
    std::size_t pos = 0;
    while (pos < headers.size()) {
        // One header field: its first line and continuation lines.
        std::size_t end = pos;
        do {
            end = headers.find("\r\n", end);
            end = end == std::string_view::npos ? headers.size() : end + 2;
        } while (end < headers.size() && (headers[end] == ' ' || headers[end] == '\t'));
        const std::string_view field = headers.substr(pos, end - pos);
        pos = end;
        const std::size_t colon = field.find(':');
        if (colon == std::string_view::npos) {
            continue;
        }
        std::string lower;
        for (char c : field.substr(0, colon)) {
            lower += static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
        }
        bool address = false;
        for (const char* h : address_headers) {
            address = address || lower == h;
        }
        if (!address) {
            continue;
        }
        std::string outside;  // the value with quoted strings blanked
        bool quoted = false;
        for (std::size_t i = colon + 1; i < field.size(); ++i) {
            const char c = field[i];
            if (quoted && c == '\\') {
                ++i;
                outside += ' ';
                continue;
            }
            if (c == '"') {
                quoted = !quoted;
            }
            outside += quoted ? ' ' : c;
        }
        if (outside.find(needle) != std::string::npos) {
            return true;
        }
    }
    return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    static const std::vector<std::string> columns = {"email", "name", "note"};
    try {
        const auto t = mxpress::mail::message_template::compile(text, "fuzz.eml", columns);
        mxpress::mail::renderer_options o;
        o.from = "bounce@sender.example";
        o.message_id_seed = 1;
        o.eight_bit_allowed = (size % 2) == 0;
        mxpress::mail::renderer r(t, o);
        const std::vector<std::string> values = {"a@x.org", "x\r\nInjected: yes", std::string(1200, 'y') + "東京"};
        const std::vector<std::string_view> fields(values.begin(), values.end());
        std::string out;
        const auto res = r.render(fields, out);
        if (res.ok()) {
            check_message(out, res, text.find("njected") == std::string_view::npos);
        }
        // Hostile values in every column: a second mailbox, an encoded-word
        // look-alike. Neither may reach the header block as written (issue 14).
        static const std::string second = "evil@evil.test";
        static const std::string word = "=?UTF-8?B?SW5qZWN0ZWQ6IHllcw==?=";
        const std::vector<std::string> hostile = {"a@x.org, " + second, "Ann <a@x.org>, " + second, word};
        const std::vector<std::string_view> hostile_fields(hostile.begin(), hostile.end());
        const auto hres = r.render(hostile_fields, out);
        if (hres.ok()) {
            check_message(out, hres, text.find("njected") == std::string_view::npos);
            const std::string_view headers = std::string_view(out).substr(0, out.find("\r\n\r\n") + 2);
            if (text.find("evil") == std::string_view::npos && second_mailbox(headers, second)) {
                std::abort();  // a merged value made a second mailbox in an address header
            }
            if (text.find("=?") == std::string_view::npos && headers.find(word) != std::string_view::npos) {
                // Raw only where no reader decodes: structured headers (Content-*, List-*, ...).
                std::size_t line = headers.rfind("\r\n", headers.find(word));
                line = line == std::string_view::npos ? 0 : line + 2;
                std::string lower;
                for (char c : headers.substr(line, headers.find(':', line) - line)) {
                    lower += static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
                }
                if (lower == "subject" || lower == "comments" || lower == "keywords" || lower.starts_with("x-")) {
                    std::abort();
                }
            }
        }
    } catch (const mxpress::mail::input_error&) {
    }
    return 0;
}
