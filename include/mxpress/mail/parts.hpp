// mxpress/mail/parts.hpp — a message template built from parts (a subject,
// a text and/or an HTML file, attachments) instead of a whole .eml.
//
// Promises:
// - build_template() runs once, at start: it writes an ordinary template
//   (a MIME skeleton) that message_template::compile() takes like any other,
//   so rendering, checks and DKIM signing stay one path.
// - Attachments are read and base64-encoded (76-column lines) here, once per
//   run, never per recipient; their Content-Type comes from the file
//   extension (a small table), else application/octet-stream; a non-ASCII
//   file name goes as RFC 2231 filename*= (percent-encoded UTF-8, continued
//   in pieces so no header line grows long).
// - {{field}} merging works in the subject, the text and the HTML, not in
//   attachments (base64 has no '{'). Each text file is checked on its own
//   first, so an error names that file and its line.
// - A text or HTML part declares its charset and no Content-Transfer-Encoding:
//   the renderer picks one per row and per session (message_template.hpp:
//   7bit; 8bit where the server offers 8BITMIME; else base64 for mostly
//   non-ASCII text, quoted-printable otherwise), so every row reaches every
//   server and DKIM signs the bytes as encoded. A single text or HTML part
//   without attachments is a plain single-part template, encoded the same way.
// - --charset iso-2022-jp declares the parts charset=ISO-2022-JP: the renderer
//   converts them per row (7bit) and writes non-ASCII header text as
//   ISO-2022-JP encoded-words; a character ISO-2022-JP lacks (emoji, 𠮷,
//   half-width katakana) makes the row invalid, or, in a file's own text or
//   the subject, is an error at start.
// - Each delimiter line is preceded by its own CRLF (RFC 2046 5.1.1: that
//   CRLF belongs to the delimiter), so every part keeps its last line break.
// - Boundaries are derived from the content (FNV-1a), so the same parts give
//   the same template: stable Message-IDs across --resume. They are checked
//   against the content and never occur in it.
// - A missing or unreadable file throws input_error naming it (exit 2,
//   before anything is sent).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/detail/utf8.hpp"
#include "mxpress/mail/input_error.hpp"
#include "mxpress/mail/message_template.hpp"
#include "mxpress/mail/mime.hpp"

namespace mxpress::mail {

struct message_parts {
    std::string subject;                   // --subject (may hold {{field}})
    std::string header_from;               // --header-from: the From header; empty: the envelope sender
    std::string text_file;                 // --text
    std::string html_file;                 // --html
    std::vector<std::string> attachments;  // --attach, in order
    std::string charset;                   // --charset: utf-8 (also when empty) or iso-2022-jp

    bool any() const noexcept {
        return !subject.empty() || !header_from.empty() || !text_file.empty() || !html_file.empty() ||
               !attachments.empty() || !charset.empty();
    }
};

namespace detail_parts {

// Extension (lowercase, without the dot) to media type; application/octet-stream otherwise.
inline std::string_view media_type(std::string_view file_name) {
    static constexpr std::pair<std::string_view, std::string_view> table[] = {
        {"txt", "text/plain"},
        {"csv", "text/csv"},
        {"htm", "text/html"},
        {"html", "text/html"},
        {"ics", "text/calendar"},
        {"md", "text/markdown"},
        {"pdf", "application/pdf"},
        {"json", "application/json"},
        {"xml", "application/xml"},
        {"zip", "application/zip"},
        {"gz", "application/gzip"},
        {"doc", "application/msword"},
        {"docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"},
        {"xls", "application/vnd.ms-excel"},
        {"xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"},
        {"ppt", "application/vnd.ms-powerpoint"},
        {"pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation"},
        {"odt", "application/vnd.oasis.opendocument.text"},
        {"ods", "application/vnd.oasis.opendocument.spreadsheet"},
        {"png", "image/png"},
        {"jpg", "image/jpeg"},
        {"jpeg", "image/jpeg"},
        {"gif", "image/gif"},
        {"webp", "image/webp"},
        {"svg", "image/svg+xml"},
        {"mp3", "audio/mpeg"},
        {"mp4", "video/mp4"},
    };
    const std::size_t dot = file_name.rfind('.');
    if (dot == std::string_view::npos || dot + 1 == file_name.size()) {
        return "application/octet-stream";
    }
    const std::string ext = detail::to_lower_copy(file_name.substr(dot + 1));
    for (const auto& [e, type] : table) {
        if (ext == e) {
            return type;
        }
    }
    return "application/octet-stream";
}

inline std::string_view base_name(std::string_view path) {
    const std::size_t slash = path.rfind('/');
    return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

// RFC 2231 attr-char: what may stand unencoded in an extended parameter value.
inline bool is_attr_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::string_view("!#$&+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

// '; filename="x"' for a printable ASCII name, else RFC 2231 'filename*=UTF-8''…'
// split into continuations (filename*0*=, filename*1*=, …) of at most
// `piece_max` octets, each on its own folded line. Appends to `out`.
inline void append_filename_param(std::string& out, std::string_view name) {
    bool plain = true;
    for (char c : name) {
        const auto u = static_cast<unsigned char>(c);
        plain = plain && u >= 0x20 && u < 0x7F;
    }
    if (plain) {
        out += ";\r\n filename=\"";
        for (char c : name) {
            if (c == '"' || c == '\\') {
                out += '\\';
            }
            out += c;
        }
        out += '"';
        return;
    }
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string encoded;
    std::vector<std::size_t> cuts;  // where a continuation may start (never inside %XX)
    for (char c : name) {
        cuts.push_back(encoded.size());
        const auto u = static_cast<unsigned char>(c);
        if (is_attr_char(u)) {
            encoded += c;
        } else {
            encoded += '%';
            encoded += hex[u >> 4];
            encoded += hex[u & 15];
        }
    }
    constexpr std::size_t piece_max = 60;
    if (encoded.size() <= piece_max) {
        out += ";\r\n filename*=UTF-8''";
        out += encoded;
        return;
    }
    std::size_t begin = 0;
    unsigned piece = 0;
    std::size_t k = 0;
    while (begin < encoded.size()) {
        std::size_t end = encoded.size();
        if (end - begin > piece_max) {
            // The last cut point that keeps the piece within piece_max.
            while (k + 1 < cuts.size() && cuts[k + 1] - begin <= piece_max) {
                ++k;
            }
            end = cuts[k] > begin ? cuts[k] : encoded.size();
        }
        out += fmt::format(";\r\n filename*{}*={}{}", piece, piece == 0 ? "UTF-8''" : "",
                           std::string_view(encoded).substr(begin, end - begin));
        begin = end;
        ++piece;
    }
}

// Line ends to CRLF (what the template parser does too).
inline std::string crlf_lines(std::string_view s) {
    std::string out;
    out.reserve(s.size() + s.size() / 32);
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\r') {
            out += "\r\n";
            if (i + 1 < s.size() && s[i + 1] == '\n') {
                ++i;
            }
        } else if (s[i] == '\n') {
            out += "\r\n";
        } else {
            out += s[i];
        }
    }
    if (!out.empty() && !out.ends_with("\r\n")) {
        out += "\r\n";
    }
    return out;
}

// The charset parameter for --charset `name`: "utf-8" or "ISO-2022-JP".
// Throws std::invalid_argument for anything else.
inline std::string_view charset_param(std::string_view name) {
    if (name.empty() || detail::iequals(name, "utf-8")) {
        return "utf-8";
    }
    if (detail::iequals(name, "iso-2022-jp")) {
        return "ISO-2022-JP";
    }
    throw std::invalid_argument(
        fmt::format("--charset {}: expected utf-8 (the default) or iso-2022-jp", std::string(name)));
}

inline std::uint64_t fnv1a(std::string_view s, std::uint64_t h = 0xcbf29ce484222325ULL) {
    for (char c : s) {
        h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
    }
    return h;
}

// A text or HTML part: its Content-Type (in `charset`) and content, with no
// Content-Transfer-Encoding: the renderer picks that per row (see
// message_template::body_section). `file` names it in errors; merge fields
// are checked against `columns` on the file alone.
inline std::string text_part(const std::string& file, std::string_view media, std::string_view charset,
                             const std::vector<std::string>& columns) {
    const std::string content = read_input_file(file, media == "text/html" ? "HTML part" : "text part");
    // The file on its own, as a single-part template, so that an error
    // names its own line.
    const std::string head = fmt::format("Content-Type: {}; charset={}\n\n", media, charset);
    constexpr std::uint64_t head_lines = 2;
    try {
        static_cast<void>(message_template::compile(head + content, file, columns));
    } catch (const input_error& e) {
        throw input_error(file, e.line() > head_lines ? e.line() - head_lines : e.line(), e.what());
    }
    return fmt::format("Content-Type: {}; charset={}\r\n\r\n", media, charset) + crlf_lines(content);
}

}  // namespace detail_parts

// The template text for `parts`; `email_column` is the recipients file's
// email column (the To header). Throws input_error naming a file.
inline std::string build_template(const message_parts& parts, const std::vector<std::string>& columns,
                                  std::string_view email_column) {
    namespace dp = detail_parts;
    if (parts.text_file.empty() && parts.html_file.empty()) {
        throw std::invalid_argument("a message from parts needs --text FILE or --html FILE (or both)");
    }
    for (std::string_view v : {std::string_view(parts.subject), std::string_view(parts.header_from)}) {
        if (v.find_first_of("\r\n") != std::string_view::npos) {
            throw std::invalid_argument("--subject and --header-from must be one line");
        }
    }
    const std::string_view charset = dp::charset_param(parts.charset);
    try {
        static_cast<void>(message_template::compile(fmt::format("Subject: {}\nFrom: {}\nContent-Type: text/plain; "
                                                                "charset={}\n\nx\n",
                                                                parts.subject, parts.header_from, charset),
                                                    "--subject/--header-from", columns));
    } catch (const input_error& e) {
        throw std::invalid_argument(fmt::format("--subject/--header-from: {}", e.what()));
    }
    std::string headers;
    if (!parts.header_from.empty()) {
        headers += "From: " + parts.header_from + "\r\n";
    }
    headers += fmt::format("To: <{{{{{}}}}}>\r\n", email_column);
    if (!parts.subject.empty()) {
        headers += "Subject: " + parts.subject + "\r\n";
    }
    headers += "MIME-Version: 1.0\r\n";

    std::vector<std::string> alternatives;
    if (!parts.text_file.empty()) {
        alternatives.push_back(dp::text_part(parts.text_file, "text/plain", charset, columns));
    }
    if (!parts.html_file.empty()) {
        alternatives.push_back(dp::text_part(parts.html_file, "text/html", charset, columns));
    }
    std::vector<std::string> attachments;
    for (const std::string& path : parts.attachments) {
        const std::string data = read_input_file(path, "attachment");
        const std::string_view name = dp::base_name(path);
        std::string a = fmt::format(
            "Content-Type: {}\r\nContent-Transfer-Encoding: base64\r\n"
            "Content-Disposition: attachment",
            dp::media_type(name));
        dp::append_filename_param(a, name);
        a += "\r\n\r\n";
        append_base64_lines(a, data);
        attachments.push_back(std::move(a));
    }

    // Boundaries from the content; re-derived in the (unlikely) case one occurs in it.
    std::uint64_t h = dp::fnv1a(headers);
    for (const std::string& p : alternatives) {
        h = dp::fnv1a(p, h);
    }
    for (const std::string& p : attachments) {
        h = dp::fnv1a(p, h);
    }
    auto occurs = [&](const std::string& b) {
        for (const auto* list : {&alternatives, &attachments}) {
            for (const std::string& p : *list) {
                if (p.find(b) != std::string::npos) {
                    return true;
                }
            }
        }
        return false;
    };
    std::string mixed;
    std::string alt;
    constexpr int boundary_tries_max = 16;
    for (int i = 0; i < boundary_tries_max; ++i, h = dp::fnv1a("again", h)) {
        mixed = fmt::format("=_mxpress_m_{:016x}", h);
        alt = fmt::format("=_mxpress_a_{:016x}", h);
        if (!occurs(mixed) && !occurs(alt)) {
            break;
        }
        if (i + 1 == boundary_tries_max) {
            throw std::invalid_argument("cannot find a MIME boundary that the parts do not contain");
        }
    }

    if (alternatives.size() == 1 && attachments.empty()) {
        // A single part: the renderer chooses the transfer encoding per row
        // (and adds charset=utf-8 when the row needs it).
        const std::string_view media = parts.text_file.empty() ? "text/html" : "text/plain";
        const std::string content =
            dp::crlf_lines(read_input_file(!parts.text_file.empty() ? parts.text_file : parts.html_file, "text part"));
        if (charset != "utf-8") {
            return headers + fmt::format("Content-Type: {}; charset={}\r\n\r\n", media, charset) + content;
        }
        return headers + (parts.text_file.empty() ? "Content-Type: text/html\r\n" : "") + "\r\n" + content;
    }
    std::string out = headers;
    if (!attachments.empty()) {
        out += fmt::format("Content-Type: multipart/mixed; boundary=\"{}\"\r\n\r\n", mixed);
        out += "This is a multi-part message in MIME format.\r\n";
        out += fmt::format("--{}\r\n", mixed);
    }
    if (alternatives.size() == 2) {
        out += fmt::format("Content-Type: multipart/alternative; boundary=\"{}\"\r\n\r\n", alt);
        for (std::size_t i = 0; i < alternatives.size(); ++i) {
            out += fmt::format("{}--{}\r\n", i == 0 ? "" : "\r\n", alt);
            out += alternatives[i];
        }
        out += fmt::format("\r\n--{}--\r\n", alt);
    } else {
        out += alternatives.front();
    }
    for (const std::string& a : attachments) {
        out += fmt::format("\r\n--{}\r\n", mixed);
        out += a;
    }
    if (!attachments.empty()) {
        out += fmt::format("\r\n--{}--\r\n", mixed);
    }
    return out;
}

}  // namespace mxpress::mail
