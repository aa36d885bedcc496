// mxpress/mail/message_template.hpp — RFC 5322 message templates with
// {{field}} merge references, compiled once and rendered per recipient.
//
// Promises:
// - compile() checks the whole template up front: every {{field}} must name
//   a recipients column (an error names the field and the template line),
//   the header block must end with a blank line before the body.
// - A merge value can never start a header line: in headers, CR and LF in a
//   value become spaces; in bodies, line ends are normalized to CRLF.
// - Rendered output is what goes on the wire before dot-stuffing: CRLF line
//   ends, header lines folded (<= 78 octets where possible, never > 998),
//   non-ASCII header text as RFC 2047 encoded-words (display names in address
//   headers, unstructured headers such as Subject), bodies declared 7bit,
//   8bit (when the session allows), base64 (more than a third of the octets
//   non-ASCII) or quoted-printable, so that no line exceeds 998.
// - Date, Message-ID (with the sender's domain), MIME-Version and From (the
//   envelope sender) are added when the template lacks them. A Bcc header is
//   dropped: recipients come from the recipients file only.
// - A body whose template declares Content-Transfer-Encoding is the author's:
//   merged as is, and a line over 998 octets makes the row invalid rather
//   than corrupting the MIME structure. So is a multipart body, except its
//   text parts that declare no Content-Transfer-Encoding: each gets one per
//   row by the single-part rule (body_section), and charset=utf-8 when it
//   declares no charset.
// - Text declared charset=ISO-2022-JP is converted from UTF-8 per row, and
//   the template's header text goes as ISO-2022-JP encoded-words; a
//   character it cannot carry makes the row invalid (mail/charset.hpp).
// - Given a run key and the recipient's row, the Message-ID is derived from
//   both: the same on every attempt and after --resume, distinct per row.
// - With DKIM keys the rendered message is signed last (mail/dkim.hpp): the
//   DKIM-Signature headers go first, over exactly the bytes that follow.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <initializer_list>
#include <memory>
#include <optional>
#include <utility>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/detail/utf8.hpp"
#include "mxpress/mail/address.hpp"
#include "mxpress/mail/charset.hpp"
#include "mxpress/mail/dkim.hpp"
#include "mxpress/mail/input_error.hpp"
#include "mxpress/mail/mime.hpp"

namespace mxpress::mail {

// One piece of a header value or body: literal text, or a column reference.
struct template_segment {
    std::uint32_t literal_begin = 0;  // offset into message_template::_text
    std::uint32_t literal_size = 0;
    std::uint32_t column = no_column;  // no_column for literal segments
    static constexpr std::uint32_t no_column = 0xFFFFFFFFu;
    // A body literal's CRLF lines, measured once (measure_body_literals):
    // a row's body is measured from these and its values alone.
    detail::line_shape shape;
    bool is_field() const noexcept { return column != no_column; }
};

enum class header_kind : std::uint8_t {
    unstructured,  // Subject and unknown headers: RFC 2047 over the whole text
    address,       // From, To, Cc, ...: RFC 2047 in display names only
    structured,    // Date, Message-ID, Content-*, List-*: must stay ASCII
};

struct render_result {
    bool eight_bit = false;       // body sent as 8bit: needs BODY=8BITMIME
    bool needs_smtputf8 = false;  // raw UTF-8 in an address header
    // The template owns its transfer encoding, the body is 8-bit and the
    // session has no 8BITMIME: the message cannot go to this server as it
    // is (RFC 6152; a bounce with 5.6.3, not a row error).
    bool needs_8bitmime = false;
    std::string error;  // non-empty: this recipient's message can't be rendered
    bool ok() const noexcept { return error.empty(); }
};

class message_template {
public:
    // A mailbox inside an address header, split at compile time on the
    // literal text, so a merged value cannot add mailboxes.
    struct mailbox_part {
        std::vector<template_segment> display;  // phrase before '<' (quotes stripped)
        std::vector<template_segment> address;  // '<...>' or a bare addr-spec
        bool angle = false;                     // address includes the angle brackets
    };

    struct header {
        std::string name;
        std::string lower_name;
        header_kind kind = header_kind::unstructured;
        std::uint64_t line = 0;
        std::vector<template_segment> value;  // unfolded value
        std::vector<mailbox_part> mailboxes;  // address headers, when parsed
        bool has_fields = false;
        bool url_values = false;  // merged values are percent-encoded (a URL's fields)
        std::string prerendered;  // the whole folded line, for headers without fields
    };

    // Compiles `text` against the recipients' columns. Throws input_error,
    // also when the template's fixed text alone breaks a limit that would
    // make every row invalid (defined after renderer, which checks that).
    static message_template compile(std::string_view text, std::string file_name,
                                    const std::vector<std::string>& columns);

    // Adds a header after the template's own (e.g. List-Unsubscribe from the
    // command line); `value` may hold {{field}} references, percent-encoded
    // (RFC 3986 unreserved characters kept) with `url_values`. Throws input_error.
    void add_header(std::string_view name, std::string_view value, const std::vector<std::string>& columns,
                    bool url_values = false) {
        header h;
        h.url_values = url_values;
        h.name = std::string(name);
        h.lower_name = detail::to_lower_copy(h.name);
        h.kind = classify(h.lower_name);
        if (_columns.empty()) {
            _columns = columns;
        }
        segment(value, 0, columns, h.value);
        for (const template_segment& s : h.value) {
            h.has_fields = h.has_fields || s.is_field();
        }
        if (h.kind == header_kind::address && !split_mailboxes(h)) {
            if (h.has_fields) {
                throw input_error(_file, 0,
                                  fmt::format("header {}: merge fields in an address header need plain mailboxes "
                                              "(no group syntax, unbalanced quotes or comments)",
                                              h.name));
            }
            h.mailboxes.clear();
        }
        check_literal_addresses(h, 0);
        _headers.push_back(std::move(h));
    }

    const std::vector<header>& headers() const noexcept { return _headers; }
    const std::string& file_name() const noexcept { return _file; }
    bool body_is_authors() const noexcept { return _body_is_authors; }
    bool has_header(std::string_view lower_name) const noexcept {
        for (const header& h : _headers) {
            if (h.lower_name == lower_name) {
                return true;
            }
        }
        return false;
    }

    // Internals shared with renderer.
    std::string_view literal(const template_segment& s) const noexcept {
        return std::string_view(_text).substr(s.literal_begin, s.literal_size);
    }
    const std::vector<template_segment>& body() const noexcept { return _body; }

    // A run of body() segments: the author's bytes, merged as they are, or a
    // text part whose transfer encoding the renderer picks per row (the whole
    // body of a single-part template; in a multipart one, a text/* part that
    // declares no Content-Transfer-Encoding and has no merge field in its
    // headers). A text part's section is its content alone: the renderer
    // writes the Content-Transfer-Encoding line and the blank line before it.
    struct body_section {
        std::uint32_t begin = 0;  // index into body()
        std::uint32_t end = 0;
        bool text_part = false;
        bool iso_2022_jp = false;  // declares charset=ISO-2022-JP: converted from UTF-8 per row
        // Every literal's CR and LF are in CRLFs of its own: the merged text's
        // lines are its segments' shapes joined (renderer::quick_encoding).
        bool clean_lines = false;
        std::string media;       // its media type, lowercase (error messages)
        std::uint64_t line = 0;  // the template line it starts on
    };
    const std::vector<body_section>& body_sections() const noexcept { return _sections; }
    // Some text declares charset=ISO-2022-JP: non-ASCII header text goes as
    // ISO-2022-JP encoded-words too (RFC 1468 mail is one charset throughout).
    bool iso_2022_jp_headers() const noexcept { return _iso_2022_jp_headers; }
    std::uint64_t body_line() const noexcept { return _body_line; }
    // The recipients column a field segment names (for error messages).
    std::string_view column_name(std::uint32_t column) const noexcept {
        return column < _columns.size() ? std::string_view(_columns[column]) : std::string_view("?");
    }
    const std::string& content_type() const noexcept { return _content_type; }
    bool has_date() const noexcept { return _has_date; }
    bool has_message_id() const noexcept { return _has_message_id; }
    bool has_mime_version() const noexcept { return _has_mime_version; }
    bool has_from() const noexcept { return _has_from; }
    bool has_content_type() const noexcept { return _has_content_type; }

private:
    static header_kind classify(std::string_view lower) {
        static constexpr std::string_view address_headers[] = {"from",      "sender",    "reply-to",    "to",
                                                               "cc",        "bcc",       "resent-from", "resent-sender",
                                                               "resent-to", "resent-cc", "resent-bcc"};
        static constexpr std::string_view structured_headers[] = {
            "date",        "message-id", "in-reply-to",    "references",  "mime-version",
            "return-path", "received",   "dkim-signature", "resent-date", "resent-message-id"};
        for (std::string_view h : address_headers) {
            if (lower == h) {
                return header_kind::address;
            }
        }
        for (std::string_view h : structured_headers) {
            if (lower == h) {
                return header_kind::structured;
            }
        }
        if (lower.starts_with("content-") || lower.starts_with("list-")) {
            return header_kind::structured;
        }
        return header_kind::unstructured;
    }

    // Splits `raw` (one logical piece of text from line `line`) into
    // segments, appending the normalized literal text to _text.
    void segment(std::string_view raw, std::uint64_t line, const std::vector<std::string>& columns,
                 std::vector<template_segment>& out) {
        std::size_t i = 0;
        while (i < raw.size()) {
            const std::size_t open = raw.find("{{", i);
            const std::size_t lit_end = open == std::string_view::npos ? raw.size() : open;
            if (lit_end > i) {
                add_literal(raw.substr(i, lit_end - i), out);
            }
            if (open == std::string_view::npos) {
                break;
            }
            const std::size_t close = raw.find("}}", open + 2);
            const std::size_t nl = raw.find_first_of("\r\n", open + 2);
            const std::uint64_t field_line =
                line + static_cast<std::uint64_t>(
                           std::count(raw.begin(), raw.begin() + static_cast<std::ptrdiff_t>(open), '\n'));
            if (close == std::string_view::npos || (nl != std::string_view::npos && nl < close)) {
                throw input_error(_file, field_line, "'{{' without a closing '}}' on the same line");
            }
            const std::string_view name = detail::trim_wsp(raw.substr(open + 2, close - open - 2));
            if (name.empty()) {
                throw input_error(_file, field_line, "empty merge field '{{}}'");
            }
            std::uint32_t column = template_segment::no_column;
            for (std::size_t c = 0; c < columns.size(); ++c) {
                if (detail::iequals(columns[c], name)) {
                    column = static_cast<std::uint32_t>(c);
                    break;
                }
            }
            if (column == template_segment::no_column) {
                std::string list;
                for (const std::string& c : columns) {
                    list += list.empty() ? "" : ", ";
                    list += c;
                }
                throw input_error(_file, field_line,
                                  fmt::format("unknown merge field '{{{{{}}}}}': the recipients file has columns {}",
                                              std::string(name), list));
            }
            template_segment s;
            s.column = column;
            out.push_back(s);
            i = close + 2;
        }
    }

    void add_literal(std::string_view lit, std::vector<template_segment>& out) {
        if (!out.empty() && !out.back().is_field() &&
            out.back().literal_begin + out.back().literal_size == _text.size()) {
            _text += lit;
            out.back().literal_size += static_cast<std::uint32_t>(lit.size());
            return;
        }
        template_segment s;
        s.literal_begin = static_cast<std::uint32_t>(_text.size());
        s.literal_size = static_cast<std::uint32_t>(lit.size());
        _text += lit;
        out.push_back(s);
    }

    // In an address header with merge fields, each address the template
    // writes itself must be a valid one: a stray quote or bracket in it
    // would shift how readers parse the merged values around it.
    void check_literal_addresses(const header& h, std::uint64_t line) const {
        if (!h.has_fields) {
            return;
        }
        for (const mailbox_part& mb : h.mailboxes) {
            std::string addr;
            bool literal = !mb.address.empty();
            for (const template_segment& s : mb.address) {
                literal = literal && !s.is_field();
                addr += literal ? literal_text({s}) : "";
            }
            if (!literal) {
                continue;
            }
            std::string_view a = detail::trim_wsp(addr);
            if (mb.angle && a.size() >= 2 && a.front() == '<' && a.back() == '>') {
                a = a.substr(1, a.size() - 2);
            }
            if (const checked_address c = check_address(a); !c.valid()) {
                throw input_error(
                    _file, line,
                    fmt::format("header {}: address '{}' is not valid: {}", h.name, std::string(a), c.error));
            }
        }
    }

    // Splits an address header's segments into mailboxes, on the literal
    // text only: commas, angle brackets and quotes inside merge values are
    // data, never syntax.
    bool split_mailboxes(header& h) {
        enum { top, in_quote, in_angle, in_comment } state = top;
        mailbox_part current;
        bool seen_angle = false;
        std::vector<template_segment>* target = &current.display;
        auto flush = [&]() {
            if (current.display.empty() && current.address.empty()) {
                return;
            }
            if (!seen_angle) {
                // A bare addr-spec: what we collected as display is the address.
                current.address = std::move(current.display);
                current.display.clear();
            }
            current.angle = seen_angle;
            h.mailboxes.push_back(std::move(current));
            current = mailbox_part{};
            seen_angle = false;
            target = &current.display;
        };
        auto emit_literal = [&](std::string_view s) {
            if (s.empty()) {
                return;
            }
            add_literal(s, *target);
        };
        for (const template_segment& seg : h.value) {
            if (seg.is_field()) {
                target->push_back(seg);
                continue;
            }
            // Copy: add_literal appends to _text, which may reallocate.
            const std::string lit(literal(seg));
            std::size_t run = 0;
            for (std::size_t i = 0; i < lit.size(); ++i) {
                const char c = lit[i];
                switch (state) {
                    case top:
                        if (c == '"') {
                            emit_literal(std::string_view(lit).substr(run, i - run));
                            run = i + 1;  // the quotes themselves are dropped
                            state = in_quote;
                        } else if (c == '<') {
                            emit_literal(std::string_view(lit).substr(run, i - run));
                            run = i;
                            seen_angle = true;
                            target = &current.address;
                            state = in_angle;
                        } else if (c == '(') {
                            emit_literal(std::string_view(lit).substr(run, i - run));
                            state = in_comment;
                        } else if (c == ',') {
                            emit_literal(std::string_view(lit).substr(run, i - run));
                            run = i + 1;
                            flush();
                        } else if (c == ':' || c == ';') {
                            return false;  // group syntax: leave the header as written
                        }
                        break;
                    case in_quote:
                        if (c == '\\') {
                            emit_literal(std::string_view(lit).substr(run, i - run));
                            run = i + 1;  // keep the escaped character, drop the backslash
                            ++i;
                        } else if (c == '"') {
                            emit_literal(std::string_view(lit).substr(run, i - run));
                            run = i + 1;
                            state = top;
                        }
                        break;
                    case in_angle:
                        if (c == '>') {
                            emit_literal(std::string_view(lit).substr(run, i + 1 - run));
                            run = i + 1;
                            state = top;
                            target = &current.address;  // trailing text after '>' is ignored below
                        }
                        break;
                    case in_comment:
                        if (c == ')') {
                            run = i + 1;
                            state = top;
                        }
                        break;
                }
            }
            if (state != in_comment) {
                emit_literal(std::string_view(lit).substr(run));
            }
        }
        if (state != top) {
            return false;
        }
        flush();
        return true;
    }

    void parse(std::string_view text, const std::vector<std::string>& columns) {
        if (text.starts_with("\xEF\xBB\xBF")) {
            text.remove_prefix(3);
        }
        if (text.empty()) {
            throw input_error(_file, 0, "template is empty");
        }
        if (!detail::valid_utf8(text)) {
            throw input_error(_file, line_of_invalid_utf8(text), "template is not valid UTF-8");
        }
        if (text.find('\0') != std::string_view::npos) {
            throw input_error(_file, 0, "template contains a NUL byte");
        }
        // Split into lines (LF, CRLF or CR).
        std::size_t pos = 0;
        std::uint64_t line_no = 0;
        auto next_line = [&](std::string_view& line) {
            if (pos >= text.size()) {
                return false;
            }
            std::size_t end = text.find_first_of("\r\n", pos);
            if (end == std::string_view::npos) {
                line = text.substr(pos);
                pos = text.size();
            } else {
                line = text.substr(pos, end - pos);
                pos = end + ((text[end] == '\r' && end + 1 < text.size() && text[end + 1] == '\n') ? 2 : 1);
            }
            ++line_no;
            return true;
        };
        std::string_view line;
        bool in_headers = true;
        header* current = nullptr;
        std::string current_value;
        std::uint64_t current_line = 0;
        auto finish_header = [&]() {
            if (current == nullptr) {
                return;
            }
            segment(current_value, current_line, columns, current->value);
            current = nullptr;
        };
        while (in_headers && next_line(line)) {
            if (line.empty()) {
                in_headers = false;
                break;
            }
            if (detail::is_wsp(line.front())) {
                if (current == nullptr) {
                    throw input_error(_file, line_no,
                                      "continuation line before the first header (expected 'Name: value')");
                }
                current_value += line;  // unfolding: CRLF removed, whitespace kept
                continue;
            }
            const std::size_t colon = line.find(':');
            bool name_ok = colon != std::string_view::npos && colon > 0;
            for (std::size_t k = 0; name_ok && k < colon; ++k) {
                const auto c = static_cast<unsigned char>(line[k]);
                name_ok = c >= 33 && c <= 126;
            }
            if (!name_ok) {
                throw input_error(_file, line_no,
                                  "expected a header line 'Name: value' or a blank line ending the headers "
                                  "(is the blank line between headers and body missing?)");
            }
            finish_header();
            header h;
            h.name = std::string(line.substr(0, colon));
            h.lower_name = detail::to_lower_copy(h.name);
            h.kind = classify(h.lower_name);
            h.line = line_no;
            _headers.push_back(std::move(h));
            current = &_headers.back();
            current_value = std::string(detail::trim_wsp(line.substr(colon + 1)));
            current_line = line_no;
        }
        finish_header();
        // Body: the rest, with line ends normalized to CRLF.
        std::string body;
        const std::uint64_t body_line = line_no + 1;
        _body_line = body_line;
        while (next_line(line)) {
            body += line;
            body += "\r\n";
        }
        // A template whose last line has no line end still ends in CRLF.
        segment(body, body_line, columns, _body);

        std::erase_if(_headers, [](const header& h) { return h.lower_name == "bcc"; });
        for (header& h : _headers) {
            for (const template_segment& s : h.value) {
                h.has_fields = h.has_fields || s.is_field();
            }
            if (h.lower_name == "date") {
                _has_date = true;
            } else if (h.lower_name == "message-id") {
                _has_message_id = true;
            } else if (h.lower_name == "mime-version") {
                _has_mime_version = true;
            } else if (h.lower_name == "from") {
                _has_from = true;
            } else if (h.lower_name == "content-type") {
                _has_content_type = true;
                if (h.has_fields) {
                    throw input_error(_file, h.line, "merge fields are not allowed in Content-Type");
                }
                _content_type = std::string(literal_text(h.value));
                // A structured header; emitted as it is (emit_content_type),
                // so an 8-bit value would reach the wire without SMTPUTF8.
                if (!detail::all_ascii(_content_type)) {
                    throw input_error(_file, h.line, "non-ASCII text is not allowed in Content-Type");
                }
                if (detail::to_lower_copy(_content_type).starts_with("multipart/")) {
                    _body_is_authors = true;
                }
            } else if (h.lower_name == "content-transfer-encoding") {
                _body_is_authors = true;
                _has_transfer_encoding = true;
            }
            if (h.kind == header_kind::address && !split_mailboxes(h)) {
                if (h.has_fields) {
                    // Without mailboxes split on the literal text a merged
                    // value could add addresses: refuse the template.
                    throw input_error(_file, h.line,
                                      fmt::format("header {}: merge fields in an address header need plain "
                                                  "mailboxes (no group syntax, unbalanced quotes or comments)",
                                                  h.name));
                }
                h.mailboxes.clear();
            }
            check_literal_addresses(h, h.line);
        }
    }

    static constexpr int multipart_depth_max = 8;
    static constexpr std::string_view iso_2022_jp = "iso-2022-jp";

    // Where a text part of the flattened body lies (see find_sections).
    struct text_cut {
        std::size_t header_end = 0;     // the blank line after its headers
        std::size_t content_begin = 0;  // after that blank line
        std::size_t content_end = 0;    // the CRLF that belongs to the next delimiter
        bool iso_2022_jp = false;
        std::string media;
        // The part declares no charset: its Content-Type gains "; charset=utf-8"
        // at this offset (the end of that header's value), or, without a
        // Content-Type, the whole line goes in at header_end. npos: none needed.
        std::size_t charset_at = std::string_view::npos;
        bool content_type_line = false;
    };

    // What a text part without a charset gets: re-encoded per row, its text
    // (the template's UTF-8 and the merged values) must say what it is; the
    // RFC 2045 default, us-ascii, would make readers garble non-ASCII.
    static constexpr std::string_view utf8_charset_param = "; charset=utf-8";
    static constexpr std::string_view utf8_content_type_line = "Content-Type: text/plain; charset=utf-8\r\n";

    void measure_body_literals() {
        for (template_segment& seg : _body) {
            if (!seg.is_field()) {
                seg.shape = detail::shape_of_crlf_text(literal(seg));
            }
        }
        for (body_section& sec : _sections) {
            sec.clean_lines = std::all_of(_body.begin() + sec.begin, _body.begin() + sec.end,
                                          [](const template_segment& seg) { return seg.shape.clean; });
        }
    }

    // Splits _body into _sections. The MIME structure is read once, from the
    // template's own text: `flat` is the body with each merge field as one
    // NUL (which a template cannot hold), so values never shape sections.
    void find_sections() {
        const bool declared_iso = detail::iequals(content_type_param(_content_type, "charset"), iso_2022_jp);
        if (!_body_is_authors || _has_transfer_encoding) {
            body_section whole;
            whole.end = static_cast<std::uint32_t>(_body.size());
            whole.text_part = !_body_is_authors;
            whole.iso_2022_jp = whole.text_part && declared_iso;
            whole.media = _has_content_type ? detail::to_lower_copy(detail::trim_wsp(
                                                  std::string_view(_content_type).substr(0, _content_type.find(';'))))
                                            : "text/plain";
            whole.line = _body_line;
            _iso_2022_jp_headers = whole.iso_2022_jp;
            _sections.push_back(std::move(whole));
            return;
        }
        std::string flat;
        std::vector<std::size_t> starts;  // of each segment in flat
        for (const template_segment& seg : _body) {
            starts.push_back(flat.size());
            flat += seg.is_field() ? std::string_view("\0", 1) : literal(seg);
        }
        std::vector<text_cut> cuts;
        find_text_parts(flat, 0, flat.size(), content_type_param(_content_type, "boundary"), 0, cuts);
        std::vector<template_segment> body;
        auto add = [&](std::size_t from, std::size_t to, const text_cut* cut) {
            body_section sec;
            sec.begin = static_cast<std::uint32_t>(body.size());
            for (std::size_t k = 0; k < _body.size(); ++k) {
                const std::size_t b = starts[k];
                const std::size_t e = b + (_body[k].is_field() ? 1 : _body[k].literal_size);
                if (e <= from || b >= to) {
                    continue;
                }
                template_segment piece = _body[k];
                if (!piece.is_field()) {
                    piece.literal_begin += static_cast<std::uint32_t>(std::max(from, b) - b);
                    piece.literal_size = static_cast<std::uint32_t>(std::min(to, e) - std::max(from, b));
                }
                body.push_back(piece);
            }
            sec.end = static_cast<std::uint32_t>(body.size());
            sec.line = _body_line + static_cast<std::uint64_t>(std::count(
                                        flat.begin(), flat.begin() + static_cast<std::ptrdiff_t>(from), '\n'));
            if (cut != nullptr) {
                sec.text_part = true;
                sec.iso_2022_jp = cut->iso_2022_jp;
                sec.media = cut->media;
                _iso_2022_jp_headers = _iso_2022_jp_headers || cut->iso_2022_jp;
            }
            _sections.push_back(std::move(sec));
        };
        // The charset a part lacks: a literal of its own, kept in _text like
        // every other (segments hold offsets into it, not views).
        auto add_text = [&](std::size_t at, std::string_view text) {
            body_section sec;
            sec.begin = static_cast<std::uint32_t>(body.size());
            template_segment seg;
            seg.literal_begin = static_cast<std::uint32_t>(_text.size());
            seg.literal_size = static_cast<std::uint32_t>(text.size());
            _text += text;
            body.push_back(seg);
            sec.end = static_cast<std::uint32_t>(body.size());
            sec.line = _body_line + static_cast<std::uint64_t>(
                                        std::count(flat.begin(), flat.begin() + static_cast<std::ptrdiff_t>(at), '\n'));
            _sections.push_back(std::move(sec));
        };
        std::size_t pos = 0;
        for (const text_cut& c : cuts) {
            if (c.charset_at != std::string_view::npos) {
                add(pos, c.charset_at, nullptr);
                add_text(c.charset_at, c.content_type_line ? utf8_content_type_line : utf8_charset_param);
                pos = c.charset_at;
            }
            add(pos, c.header_end, nullptr);
            add(c.content_begin, c.content_end, &c);
            pos = c.content_end;
        }
        add(pos, flat.size(), nullptr);
        _body = std::move(body);
    }

    // The text parts inside flat[begin, end), the content of a multipart
    // entity with `boundary` (RFC 2046 5.1.1), nested multiparts included.
    // Only parts between two delimiter lines count; a part whose headers
    // hold a merge field or declare a transfer encoding stays the author's.
    static void find_text_parts(std::string_view flat, std::size_t begin, std::size_t end, std::string_view boundary,
                                int depth, std::vector<text_cut>& cuts) {
        if (boundary.empty() || depth > multipart_depth_max) {
            return;
        }
        const std::string dash = "--" + std::string(boundary);
        std::vector<std::pair<std::size_t, std::size_t>> delimiters;  // {line start, after its CRLF}
        for (std::size_t p = begin; p < end;) {
            std::size_t line_end = flat.find("\r\n", p);
            line_end = line_end == std::string_view::npos || line_end > end ? end : line_end;
            const std::string_view line = flat.substr(p, line_end - p);
            if (line.starts_with(dash)) {
                const std::string_view rest = line.substr(dash.size());
                const bool close = rest.starts_with("--");
                if (close || detail::trim_wsp(rest).empty()) {
                    delimiters.emplace_back(p, std::min(line_end + 2, end));
                    if (close) {
                        break;
                    }
                }
            }
            p = line_end + 2;
        }
        for (std::size_t i = 0; i + 1 < delimiters.size(); ++i) {
            const std::size_t part_begin = delimiters[i].second;
            const std::size_t next = delimiters[i + 1].first;
            if (next < part_begin + 2) {
                continue;  // no room for the CRLF that belongs to the next delimiter
            }
            const std::size_t part_end = next - 2;
            std::size_t header_end = part_begin;
            std::size_t content_begin = part_begin + 2;
            if (flat.substr(part_begin, part_end - part_begin).starts_with("\r\n")) {
                // No headers: text/plain (RFC 2045 5.2).
            } else {
                const std::size_t blank = flat.find("\r\n\r\n", part_begin);
                if (blank == std::string_view::npos || blank + 4 > part_end) {
                    continue;
                }
                header_end = blank + 2;
                content_begin = blank + 4;
            }
            const std::string_view headers = flat.substr(part_begin, header_end - part_begin);
            if (headers.find('\0') != std::string_view::npos) {
                continue;
            }
            std::string content_type;
            std::size_t content_type_end = std::string_view::npos;  // in flat: end of its value (last line)
            bool encoding = false;
            std::string* current = nullptr;
            for (std::size_t p = 0; p < headers.size();) {
                const std::size_t e = headers.find("\r\n", p);
                const std::string_view h = headers.substr(p, e - p);
                p = e + 2;
                if (!h.empty() && detail::is_wsp(h.front())) {
                    if (current != nullptr) {
                        *current += h;
                        content_type_end = part_begin + e;
                    }
                    continue;
                }
                const std::size_t colon = h.find(':');
                const std::string_view name = detail::trim_wsp(h.substr(0, colon));
                current = nullptr;
                if (colon != std::string_view::npos && detail::iequals(name, "content-type")) {
                    content_type = std::string(detail::trim_wsp(h.substr(colon + 1)));
                    content_type_end = part_begin + e;
                    current = &content_type;
                } else if (colon != std::string_view::npos && detail::iequals(name, "content-transfer-encoding")) {
                    encoding = true;
                }
            }
            if (encoding) {
                continue;
            }
            std::string media = detail::to_lower_copy(
                detail::trim_wsp(std::string_view(content_type).substr(0, content_type.find(';'))));
            if (media.empty()) {
                media = "text/plain";  // RFC 2045 5.2
            }
            if (media.starts_with("multipart/")) {
                find_text_parts(flat, content_begin, part_end, content_type_param(content_type, "boundary"), depth + 1,
                                cuts);
            } else if (media.starts_with("text/")) {
                const std::string charset(content_type_param(content_type, "charset"));
                text_cut cut{header_end, content_begin, part_end, detail::iequals(charset, iso_2022_jp),
                             std::move(media)};
                if (charset.empty()) {
                    cut.content_type_line = content_type_end == std::string_view::npos;
                    cut.charset_at = cut.content_type_line ? header_end : content_type_end;
                }
                cuts.push_back(std::move(cut));
            }
        }
    }

    // The 1-based line (LF, CRLF or CR ends) of the first byte that is not UTF-8.
    static std::uint64_t line_of_invalid_utf8(std::string_view text) {
        std::uint64_t line = 1;
        std::size_t i = 0;
        while (i < text.size()) {
            const std::size_t n = detail::utf8_sequence_length(text, i);
            if (n == 0) {
                return line;
            }
            if (text[i] == '\n' || (text[i] == '\r' && (i + 1 == text.size() || text[i + 1] != '\n'))) {
                ++line;
            }
            i += n;
        }
        return line;
    }

    std::string literal_text(const std::vector<template_segment>& segs) const {
        std::string s;
        for (const template_segment& seg : segs) {
            s += literal(seg);
        }
        return s;
    }

    std::string _file;
    std::vector<std::string> _columns;  // the recipients file's, for error messages
    std::string _text;                  // all literal text, referenced by segments
    std::vector<header> _headers;
    std::vector<template_segment> _body;
    std::string _content_type;
    bool _body_is_authors = false;
    bool _has_transfer_encoding = false;  // the top-level header, not a part's
    std::vector<body_section> _sections;
    bool _iso_2022_jp_headers = false;
    std::uint64_t _body_line = 0;  // the template line where the body starts
    bool _has_date = false;
    bool _has_message_id = false;
    bool _has_mime_version = false;
    bool _has_from = false;
    bool _has_content_type = false;
};

struct renderer_options {
    std::string from;               // envelope sender: From when missing, and Message-ID's domain
    bool eight_bit_allowed = true;  // body may go as 8bit (server offers 8BITMIME)
    // Clock for Date and Message-ID; tests fix it.
    std::time_t (*clock)() = []() { return std::time(nullptr); };
    std::uint64_t message_id_seed = 0;  // 0: random
    // Non-zero: Message-ID = <RUN.ROW@domain> for render(fields, out, row),
    // stable across attempts and runs that share the key (see run_key()).
    std::uint64_t message_id_run_key = 0;
    std::shared_ptr<const dkim::key_set> dkim;  // null: messages go unsigned
    // Tests: every text body merged and scanned for its encoding, never
    // measured from line shapes (the reference quick_encoding is held to).
    bool measure_by_scan = false;
};

// A 64-bit key for stable Message-IDs from what identifies a run (FNV-1a
// over the parts): the same template, recipients and journal give the same
// key, so a resumed run repeats its Message-IDs.
inline std::uint64_t run_key(std::initializer_list<std::string_view> parts) {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (std::string_view p : parts) {
        for (char c : p) {
            h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
        }
        h = (h ^ 0xFFu) * 0x100000001b3ULL;  // separator: ("ab","c") != ("a","bc")
    }
    return h == 0 ? 1 : h;
}

// Renders messages from a compiled template into caller-owned buffers.
// One renderer per thread; it keeps scratch buffers between calls.
class renderer {
public:
    renderer(const message_template& t, renderer_options options) : _template(&t), _options(std::move(options)) {
        const std::size_t at = _options.from.rfind('@');
        _from_domain = at == std::string::npos ? std::string("localhost") : _options.from.substr(at + 1);
        std::uint64_t seed = _options.message_id_seed;
        if (seed == 0) {
            std::random_device rd;
            seed = (std::uint64_t{rd()} << 32) ^ rd();
        }
        _id_random = seed;
        if (_options.dkim) {
            _signer.emplace(_options.dkim);
            // The body's text before its first merge field is the same in every
            // message: its hash state is computed once and cloned.
            if (!t.body().empty() && !t.body().front().is_field()) {
                _body_prefix = dkim::hashable_prefix(t.literal(t.body().front()));
            }
        }
        if (t.iso_2022_jp_headers()) {
            _iso = std::make_unique<iso2022jp_converter>();
        }
        // Headers without merge fields are rendered once, here.
        _static.resize(t.headers().size());
        _static_error.resize(t.headers().size());
        static const std::vector<std::string_view> no_fields;
        for (std::size_t i = 0; i < t.headers().size(); ++i) {
            const auto& h = t.headers()[i];
            if (!h.has_fields) {
                render_result r;
                render_header(h, no_fields, _static[i], r);
                _static_error[i] = r.error;
                _static_smtputf8 = _static_smtputf8 || r.needs_smtputf8;
            }
        }
    }

    // Renders the message for one recipient into `out` (cleared first).
    render_result render(const std::vector<std::string_view>& fields, std::string& out) {
        return render(fields, out, 0);
    }

    // Whether the next renders may send an 8-bit body as 8bit (the session
    // offers 8BITMIME); otherwise it goes quoted-printable (RFC 6152).
    void allow_eight_bit(bool allowed) noexcept { _options.eight_bit_allowed = allowed; }

    // The Message-ID render(fields, out, row) gives row `row` ("<RUN.ROW@domain>")
    // when it is stable (a run key, no Message-ID in the template); "" otherwise.
    std::string stable_message_id(std::uint64_t row) const {
        std::string out;
        if (row != 0 && _options.message_id_run_key != 0 && !_template->has_message_id()) {
            out += '<';
            put_base36(out, _options.message_id_run_key);
            out += '.';
            put_base36(out, row);
            out += '@';
            out += _from_domain;
            out += '>';
        }
        return out;
    }

    // Bodies signed from the cached hash of the template's fixed body start.
    std::uint64_t dkim_prefix_hits() const noexcept { return _signer ? _signer->prefix_hits() : 0; }

    // The same for the recipient of row `row` (its line in the recipients
    // file): with a run key, its Message-ID is the same on every call.
    render_result render(const std::vector<std::string_view>& fields, std::string& out, std::uint64_t row) {
        render_result r = render_unsigned(fields, out, row);
        if (!r.ok() || !_signer) {
            return r;
        }
        _signatures.clear();
        r.error = _signer->sign(out, _now, _signatures, _body_prefix);
        if (r.ok()) {
            out.insert(0, _signatures);
        }
        return r;
    }

private:
    render_result render_unsigned(const std::vector<std::string_view>& fields, std::string& out, std::uint64_t row) {
        render_result r;
        out.clear();
        r.needs_smtputf8 = _static_smtputf8;
        const auto& headers = _template->headers();
        for (std::size_t i = 0; i < headers.size(); ++i) {
            const auto& h = headers[i];
            if (h.lower_name == "content-type" && !_template->body_is_authors()) {
                continue;  // emitted with the body, which decides the charset
            }
            if (!h.has_fields) {
                if (!_static_error[i].empty()) {
                    r.error = _static_error[i];
                    return r;
                }
                out += _static[i];
                continue;
            }
            if (!render_header(h, fields, out, r)) {
                return r;
            }
        }
        const std::time_t now = _options.clock();
        _now = now;
        if (!_template->has_from()) {
            out += "From: <";
            out += _options.from;
            out += ">\r\n";
        }
        if (!_template->has_date()) {
            if (now != _date_time || _date.empty()) {
                _date_time = now;
                _date.clear();
                append_rfc5322_date(_date, now);
            }
            out += "Date: ";
            out += _date;
            out += "\r\n";
        }
        if (!_template->has_message_id()) {
            out += "Message-ID: <";
            if (row != 0 && _options.message_id_run_key != 0) {
                put_base36(out, _options.message_id_run_key);
                out += '.';
                put_base36(out, row);
            } else {
                append_message_id(out, now);
            }
            out += "@";
            out += _from_domain;
            out += ">\r\n";
        }
        if (!_template->has_mime_version()) {
            out += "MIME-Version: 1.0\r\n";
        }
        render_body(fields, out, r);
        return r;
    }

    // A value inside a URL: everything but RFC 3986 unreserved characters as
    // %XX (UTF-8 bytes included), so spaces, '>' and ',' cannot end the URL.
    static void append_percent_encoded(std::string& out, std::string_view v) {
        static constexpr char hex[] = "0123456789ABCDEF";
        for (char c : v) {
            const auto u = static_cast<unsigned char>(c);
            if ((u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') || c == '-' || c == '.' ||
                c == '_' || c == '~') {
                out += c;
            } else {
                out += '%';
                out += hex[u >> 4];
                out += hex[u & 15];
            }
        }
    }

    static void append_value(std::string& out, std::string_view v) {
        // In a header a value's line ends become spaces: no header injection.
        std::size_t i = 0;
        while (i < v.size()) {
            const std::size_t j = detail::find_line_break(v, i);
            if (j == std::string_view::npos) {
                out.append(v.data() + i, v.size() - i);
                break;
            }
            out.append(v.data() + i, j - i);
            out += ' ';
            i = j + 1;
        }
    }

    // Sets _marker_in_value when a merged value holds "=?", the start of an
    // RFC 2047 encoded-word: such text is encoded, never passed on raw
    // (a reader would decode it, CR/LF included).
    void render_segments(const std::vector<template_segment>& segs, const std::vector<std::string_view>& fields,
                         std::string& out, bool url_values = false) {
        for (const template_segment& s : segs) {
            if (s.is_field()) {
                const std::string_view v = s.column < fields.size() ? fields[s.column] : std::string_view{};
                _marker_in_value = _marker_in_value || v.find("=?") != std::string_view::npos;
                if (url_values) {
                    append_percent_encoded(out, v);
                    continue;
                }
                append_value(out, v);
            } else {
                out += _template->literal(s);
            }
        }
    }

    // Appends `text` as encoded-words in the template's header charset
    // (UTF-8, or ISO-2022-JP: see iso_2022_jp_headers). A character
    // ISO-2022-JP cannot carry is noted in _unencodable (render_header turns
    // it into the row's error); the first one is kept.
    void append_words(std::string& out, std::string_view text) {
        if (!_iso) {
            append_encoded_words(out, text);
            return;
        }
        if (const std::size_t bad = append_iso2022jp_words(out, text, *_iso);
            bad != std::string_view::npos && _unencodable.empty()) {
            _unencodable = iso2022jp_converter::describe(text, bad);
        }
    }

    // Encodes an unstructured value: ASCII words kept, the span from the first
    // to the last word holding non-ASCII (or, with `markers`, "=?") becomes
    // encoded-words.
    void encode_unstructured(std::string& out, std::string_view v, bool markers) {
        markers = markers && v.find("=?") != std::string_view::npos;
        if (detail::all_ascii(v) && !markers) {
            out += v;
            return;
        }
        std::size_t first = v.size();
        std::size_t last = 0;
        for (std::size_t i = 0; i < v.size(); ++i) {
            if (!detail::is_ascii(v[i]) || (markers && v.substr(i).starts_with("=?"))) {
                first = std::min(first, i);
                last = std::max(last, markers && v[i] == '=' ? i + 1 : i);
            }
        }
        while (first > 0 && !detail::is_wsp(v[first - 1])) {
            --first;
        }
        while (last + 1 < v.size() && !detail::is_wsp(v[last + 1])) {
            ++last;
        }
        out += v.substr(0, first);
        append_words(out, v.substr(first, last + 1 - first));
        out += v.substr(last + 1);
    }

    // A display name: encoded-words when non-ASCII (or, with `markers`,
    // holding "=?"), a quoted-string when it holds RFC 5322 specials, else as is.
    void encode_phrase(std::string& out, std::string_view v, bool markers) {
        v = detail::trim_wsp(v);
        if (v.empty()) {
            return;
        }
        if (!detail::all_ascii(v) || (markers && v.find("=?") != std::string_view::npos)) {
            append_words(out, v);
            return;
        }
        if (v.find_first_of("()<>[]:;@\\,.\"") == std::string_view::npos) {
            out += v;
            return;
        }
        out += '"';
        for (char c : v) {
            if (c == '"' || c == '\\') {
                out += '\\';
            }
            out += c;
        }
        out += '"';
    }

    // The first merge field among `segs` (null when all literal).
    static const template_segment* first_field(const std::vector<template_segment>& segs) noexcept {
        for (const template_segment& s : segs) {
            if (s.is_field()) {
                return &s;
            }
        }
        return nullptr;
    }

    // One mailbox of an address header into _value. A merged address must be
    // exactly one mailbox, checked as the envelope address is (a value may
    // bring its own display name: 'Ann <ann@x.test>'); an empty one is left
    // out. False with r.error set when the value is not one mailbox.
    bool render_mailbox(const message_template::header& h, const message_template::mailbox_part& mb,
                        const std::vector<std::string_view>& fields, render_result& r) {
        _marker_in_value = false;
        _scratch.clear();
        render_segments(mb.display, fields, _scratch);
        _phrase.assign(detail::trim_wsp(_scratch));
        _scratch.clear();
        render_segments(mb.address, fields, _scratch);
        std::string_view addr = detail::trim_wsp(_scratch);
        const bool markers = _marker_in_value;
        const template_segment* field = first_field(mb.address);
        if (field == nullptr) {
            // The template's own address, as written (IDN domains as A-labels).
            if (!_value.empty()) {
                _value += ", ";
            }
            const std::size_t phrase_begin = _value.size();
            encode_phrase(_value, _phrase, markers);
            if (_value.size() > phrase_begin && !addr.empty()) {
                _value += ' ';
            }
            if (!detail::all_ascii(addr)) {
                const bool angled = addr.size() >= 2 && addr.front() == '<' && addr.back() == '>';
                const checked_address a = check_address(angled ? addr.substr(1, addr.size() - 2) : addr);
                if (a.valid() && !a.needs_smtputf8) {
                    _value += angled ? "<" : "";
                    _value += a.address;
                    _value += angled ? ">" : "";
                    return true;
                }
                r.needs_smtputf8 = true;
            }
            _value += addr;
            return true;
        }
        if (mb.angle && addr.size() >= 2 && addr.front() == '<' && addr.back() == '>') {
            addr = detail::trim_wsp(addr.substr(1, addr.size() - 2));
        } else if (!mb.angle && _phrase.empty() && addr.ends_with('>')) {
            // 'Name <addr>' from the value itself.
            const std::size_t lt = addr.rfind('<');
            if (lt != std::string_view::npos) {
                std::string_view name = detail::trim_wsp(addr.substr(0, lt));
                if (name.size() >= 2 && name.front() == '"' && name.back() == '"') {
                    name = name.substr(1, name.size() - 2);
                }
                _phrase.assign(name);
                addr = detail::trim_wsp(addr.substr(lt + 1, addr.size() - lt - 2));
            }
        }
        if (addr.empty() && detail::trim_wsp(_phrase).empty()) {
            return true;  // an empty value: no mailbox
        }
        const checked_address a = check_address(addr);
        if (!a.valid()) {
            r.error = fmt::format("header {} (template line {}): field '{}' is not one mailbox: {}", h.name, h.line,
                                  _template->column_name(field->column), addr.empty() ? "no address" : a.error);
            return false;
        }
        if (!_value.empty()) {
            _value += ", ";
        }
        const std::size_t phrase_begin = _value.size();
        encode_phrase(_value, _phrase, markers);
        const bool angle = mb.angle || _value.size() > phrase_begin;
        _value += _value.size() > phrase_begin ? " <" : (angle ? "<" : "");
        _value += a.address;
        _value += angle ? ">" : "";
        r.needs_smtputf8 = r.needs_smtputf8 || a.needs_smtputf8;
        return true;
    }

    bool render_header(const message_template::header& h, const std::vector<std::string_view>& fields, std::string& out,
                       render_result& r) {
        _value.clear();
        _marker_in_value = false;
        _unencodable.clear();
        if (h.kind == header_kind::address && !h.mailboxes.empty()) {
            for (const auto& mb : h.mailboxes) {
                if (!render_mailbox(h, mb, fields, r)) {
                    return false;
                }
            }
        } else {
            _scratch.clear();
            render_segments(h.value, fields, _scratch, h.url_values);
            if (h.kind == header_kind::structured || h.kind == header_kind::address) {
                if (!detail::all_ascii(_scratch)) {
                    if (h.kind == header_kind::address) {
                        r.needs_smtputf8 = true;
                    } else {
                        r.error = fmt::format("header {} (template line {}): non-ASCII text is not allowed there",
                                              h.name, h.line);
                        return false;
                    }
                }
                _value = _scratch;
            } else {
                encode_unstructured(_value, _scratch, _marker_in_value);
            }
        }
        if (!_unencodable.empty()) {
            r.error =
                fmt::format("header {} (template line {}): {} has no ISO-2022-JP form", h.name, h.line, _unencodable);
            return false;
        }
        if (h.has_fields && detail::trim_wsp(_value).empty()) {
            // An optional header whose merged value is empty is left out;
            // From is not optional (RFC 5322 3.6).
            if (h.lower_name == "from") {
                r.error = fmt::format("header From (template line {}): empty after merging", h.line);
                return false;
            }
            return true;
        }
        if (!append_folded_header(out, h.name, _value)) {
            r.error = fmt::format("header {} (template line {}): a line would exceed 998 octets", h.name, h.line);
            return false;
        }
        return true;
    }

public:
    // What makes every row invalid whatever its values: a header without
    // fields that cannot be rendered, a header whose fixed text alone is too
    // long or not allowed (rendered with empty values), a line of an
    // author's body whose fixed text exceeds 998 octets. {line, reason}.
    std::optional<std::pair<std::uint64_t, std::string>> fixed_text_error() {
        const auto& headers = _template->headers();
        static const std::vector<std::string_view> no_fields;
        std::string scratch;
        for (std::size_t i = 0; i < headers.size(); ++i) {
            const auto& h = headers[i];
            if (!h.has_fields) {
                if (!_static_error[i].empty()) {
                    return std::pair{h.line, _static_error[i]};
                }
                continue;
            }
            if (h.kind == header_kind::address) {
                continue;  // empty values are checked per row
            }
            render_result r;
            scratch.clear();
            if (!render_header(h, no_fields, scratch, r)) {
                return std::pair{h.line, r.error};
            }
        }
        for (const auto& sec : _template->body_sections()) {
            std::uint64_t line = sec.line;
            std::size_t length = 0;
            for (std::uint32_t k = sec.begin; k < sec.end; ++k) {
                const template_segment& s = _template->body()[k];
                if (s.is_field()) {
                    continue;
                }
                const std::string_view text = _template->literal(s);
                if (sec.iso_2022_jp) {
                    scratch.clear();
                    if (const std::size_t bad = _iso->convert(text, scratch); bad != std::string_view::npos) {
                        return std::pair{
                            line + static_cast<std::uint64_t>(
                                       std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(bad), '\n')),
                            fmt::format("{} has no ISO-2022-JP form", iso2022jp_converter::describe(text, bad))};
                    }
                }
                for (char c : text) {
                    if (c == '\n') {
                        ++line;
                        length = 0;
                    } else if (c != '\r' && ++length > line_octets_max && !sec.text_part) {
                        return std::pair{line, std::string("body line over 998 octets (the template declares its "
                                                           "own Content-Transfer-Encoding or multipart body)")};
                    }
                }
            }
        }
        return std::nullopt;
    }

private:
    static constexpr std::size_t line_octets_max = 998;
    // A text body goes base64 rather than quoted-printable when more than
    // 1/base64_share_divisor of its octets are non-ASCII (CJK text, where
    // quoted-printable triples the size and base64 adds a third).
    static constexpr std::size_t base64_share_divisor = 3;

    enum class transfer_encoding { seven_bit, eight_bit, quoted_printable, base64 };

    static std::string_view encoding_header(transfer_encoding e) noexcept {
        switch (e) {
            case transfer_encoding::seven_bit: return "Content-Transfer-Encoding: 7bit\r\n";
            case transfer_encoding::eight_bit: return "Content-Transfer-Encoding: 8bit\r\n";
            case transfer_encoding::quoted_printable: return "Content-Transfer-Encoding: quoted-printable\r\n";
            case transfer_encoding::base64: break;
        }
        return "Content-Transfer-Encoding: base64\r\n";
    }

    // How a text body (CRLF lines) goes: as it is when ASCII with lines of at
    // most 998 octets (7bit); as it is when 8-bit with such lines and the
    // session offers 8BITMIME (8bit); else base64 when more than a third of
    // its octets are non-ASCII, quoted-printable otherwise. One rule for a
    // single-part body and for each text part of a multipart one.
    // plain_encoding: the first two cases, from the text's longest line and
    // whether it is ASCII; nullopt when the text must be encoded.
    std::optional<transfer_encoding> plain_encoding(std::size_t longest, bool ascii) const noexcept {
        if (longest <= line_octets_max && (ascii || _options.eight_bit_allowed)) {
            return ascii ? transfer_encoding::seven_bit : transfer_encoding::eight_bit;
        }
        return std::nullopt;
    }

    transfer_encoding choose_encoding(std::string_view text) const noexcept {
        if (const auto e = plain_encoding(detail::longest_crlf_line(text), detail::all_ascii(text))) {
            return *e;
        }
        std::size_t non_ascii = 0;
        for (const char c : text) {
            non_ascii += detail::is_ascii(c) ? 0 : 1;
        }
        return non_ascii * base64_share_divisor > text.size() ? transfer_encoding::base64
                                                              : transfer_encoding::quoted_printable;
    }

    // The common case without merging or scanning the body: text section
    // `sec` in UTF-8 whose lines are its literals' shapes and the values'
    // joined. Returns the encoding when it is 7bit or 8bit (and whether the
    // text is ASCII); nullopt when the text has to be merged and weighed
    // (quoted-printable or base64, ISO-2022-JP, or a literal with a bare CR
    // or LF). A 32 KB body then costs one copy instead of three passes.
    struct quick_choice {
        transfer_encoding encoding;
        bool ascii;
    };
    std::optional<quick_choice> quick_encoding(const message_template::body_section& sec,
                                               const std::vector<std::string_view>& fields) {
        if (sec.iso_2022_jp || !sec.clean_lines || _options.measure_by_scan) {
            return std::nullopt;
        }
        detail::line_meter m;
        _value_shapes.assign(fields.size(), std::nullopt);  // a column is measured once, however often merged
        for (std::uint32_t k = sec.begin; k < sec.end; ++k) {
            const template_segment& s = _template->body()[k];
            if (!s.is_field()) {
                m.add(s.shape);
            } else if (s.column < fields.size()) {
                std::optional<detail::line_shape>& v = _value_shapes[s.column];
                if (!v) {
                    v = detail::shape_of_value(fields[s.column]);
                }
                m.add(*v);
            }
        }
        if (const auto e = plain_encoding(m.longest(), m.ascii())) {
            return quick_choice{*e, m.ascii()};
        }
        return std::nullopt;
    }

    static void append_encoded(std::string& out, std::string_view text, transfer_encoding e) {
        switch (e) {
            case transfer_encoding::seven_bit:
            case transfer_encoding::eight_bit: out += text; return;
            case transfer_encoding::quoted_printable: append_quoted_printable(out, text); return;
            case transfer_encoding::base64: append_base64_lines(out, text); return;
        }
    }

    // Appends the segments of `sec` merged to `out`, line ends of values as CRLF.
    void merge_section(const message_template::body_section& sec, const std::vector<std::string_view>& fields,
                       std::string& out) const {
        for (std::uint32_t k = sec.begin; k < sec.end; ++k) {
            const template_segment& s = _template->body()[k];
            if (!s.is_field()) {
                out += _template->literal(s);
                continue;
            }
            const std::string_view v = s.column < fields.size() ? fields[s.column] : std::string_view{};
            if (detail::find_line_break(v) == std::string_view::npos) {
                out += v;
                continue;
            }
            for (std::size_t i = 0; i < v.size(); ++i) {
                if (v[i] == '\r') {
                    out += "\r\n";
                    if (i + 1 < v.size() && v[i + 1] == '\n') {
                        ++i;
                    }
                } else if (v[i] == '\n') {
                    out += "\r\n";
                } else {
                    out += v[i];
                }
            }
        }
    }

    // Merges `sec` into _body.
    void merge_section(const message_template::body_section& sec, const std::vector<std::string_view>& fields) {
        _body.clear();
        merge_section(sec, fields, _body);
    }

    // The merged text of text part `sec` (in _body), as it is to be encoded:
    // _body itself, or its ISO-2022-JP form in _converted. Empty with
    // r.error set when a character has no ISO-2022-JP form (the error names
    // the field that brought it, if one did).
    std::optional<std::string_view> part_text(const message_template::body_section& sec,
                                              const std::vector<std::string_view>& fields, render_result& r) {
        merge_section(sec, fields);
        if (!sec.iso_2022_jp) {
            return std::string_view(_body);
        }
        _converted.clear();
        const std::size_t bad = _iso->convert(_body, _converted);
        if (bad == std::string_view::npos) {
            return std::string_view(_converted);
        }
        const std::string what = iso2022jp_converter::describe(_body, bad);
        const std::size_t n = std::max<std::size_t>(1, detail::utf8_sequence_length(_body, bad));
        const std::string_view ch = std::string_view(_body).substr(bad, n);
        std::string field;
        for (std::uint32_t k = sec.begin; k < sec.end && field.empty(); ++k) {
            const template_segment& s = _template->body()[k];
            if (s.is_field() && s.column < fields.size() && fields[s.column].find(ch) != std::string_view::npos) {
                field = fmt::format(" (field '{}')", _template->column_name(s.column));
            }
        }
        r.error = fmt::format("{} part: {}{} has no ISO-2022-JP form", sec.media, what, field);
        return std::nullopt;
    }

    void render_body(const std::vector<std::string_view>& fields, std::string& out, render_result& r) {
        const auto& sections = _template->body_sections();
        if (!_template->body_is_authors()) {
            render_single_part(sections.front(), fields, out, r);
            return;
        }
        out += "\r\n";
        for (const auto& sec : sections) {
            if (sec.text_part) {
                if (const auto quick = quick_encoding(sec, fields)) {
                    if (quick->encoding != transfer_encoding::seven_bit) {
                        out += encoding_header(quick->encoding);
                    }
                    out += "\r\n";
                    merge_section(sec, fields, out);
                    r.eight_bit = r.eight_bit || quick->encoding == transfer_encoding::eight_bit;
                    continue;
                }
                const std::optional<std::string_view> text = part_text(sec, fields, r);
                if (!text) {
                    return;
                }
                const transfer_encoding e = choose_encoding(*text);
                if (e != transfer_encoding::seven_bit) {
                    out += encoding_header(e);
                }
                out += "\r\n";
                append_encoded(out, *text, e);
                r.eight_bit = r.eight_bit || e == transfer_encoding::eight_bit;
                continue;
            }
            merge_section(sec, fields);
            if (detail::longest_crlf_line(_body) > line_octets_max) {
                r.error = "body has a line over 998 octets and its Content-Transfer-Encoding is the template's";
                return;
            }
            const bool ascii = detail::all_ascii(_body);
            if (!ascii && !_options.eight_bit_allowed) {
                r.needs_8bitmime = true;
                r.error =
                    "the body is 8-bit, its Content-Transfer-Encoding is the template's, and the server does not "
                    "offer 8BITMIME";
                return;
            }
            r.eight_bit = r.eight_bit || !ascii;
            out += _body;
        }
    }

    // A single-part body: Content-Type (charset=utf-8 added when the text
    // needs one and the template gives none) and the transfer encoding that
    // choose_encoding() picks for this row.
    void render_single_part(const message_template::body_section& sec, const std::vector<std::string_view>& fields,
                            std::string& out, render_result& r) {
        std::optional<std::string_view> text;  // merged and weighed; none on the quick path
        transfer_encoding e{};
        bool ascii = true;  // the UTF-8 text: does it need a charset?
        if (const auto quick = quick_encoding(sec, fields)) {
            e = quick->encoding;
            ascii = quick->ascii;
        } else {
            text = part_text(sec, fields, r);
            if (!text) {
                return;
            }
            e = choose_encoding(*text);
            ascii = e == transfer_encoding::seven_bit || detail::all_ascii(_body);
        }
        if (e == transfer_encoding::seven_bit) {
            if (_template->has_content_type()) {
                emit_content_type(out, false);
            }
        } else {
            if (!_template->has_content_type()) {
                out += ascii ? "Content-Type: text/plain\r\n" : "Content-Type: text/plain; charset=utf-8\r\n";
            } else {
                emit_content_type(out, !ascii && detail::to_lower_copy(_template->content_type()).find("charset=") ==
                                                     std::string::npos);
            }
            out += encoding_header(e);
        }
        out += "\r\n";
        if (text) {
            append_encoded(out, *text, e);
        } else {
            merge_section(sec, fields, out);
        }
        r.eight_bit = e == transfer_encoding::eight_bit;
    }

    // The template's own Content-Type (held back by render() so a charset can
    // be added once the body is known).
    void emit_content_type(std::string& out, bool add_charset) {
        _value = _template->content_type();
        if (add_charset) {
            _value += "; charset=utf-8";
        }
        append_folded_header(out, "Content-Type", _value);
    }

    static void put_base36(std::string& out, std::uint64_t v) {
        static constexpr char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
        char tmp[16];
        std::size_t k = 0;
        do {
            tmp[k++] = digits[v % 36];
            v /= 36;
        } while (v != 0);
        while (k > 0) {
            out += tmp[--k];
        }
    }

    void append_message_id(std::string& out, std::time_t now) {
        static constexpr char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
        char buf[64];
        std::size_t n = 0;
        auto put36 = [&](std::uint64_t v) {
            char tmp[16];
            std::size_t k = 0;
            do {
                tmp[k++] = digits[v % 36];
                v /= 36;
            } while (v != 0);
            while (k > 0) {
                buf[n++] = tmp[--k];
            }
        };
        put36(static_cast<std::uint64_t>(now));
        buf[n++] = '.';
        put36(_id_random);
        buf[n++] = '.';
        put36(++_id_counter);
        out.append(buf, n);
    }

    const message_template* _template;
    renderer_options _options;
    std::string _from_domain;
    std::vector<std::string> _static;
    std::vector<std::string> _static_error;
    bool _static_smtputf8 = false;
    std::string _value;
    std::string _scratch;
    std::string _phrase;
    bool _marker_in_value = false;              // a merged value of the header holds "=?"
    std::unique_ptr<iso2022jp_converter> _iso;  // set when the template is ISO-2022-JP (one per renderer: iconv state)
    std::string _unencodable;                   // see append_words
    std::string _converted;                     // a text part in ISO-2022-JP
    std::string _body;
    std::vector<std::optional<detail::line_shape>> _value_shapes;  // quick_encoding's, per column of the row
    std::string _date;
    std::time_t _date_time = 0;
    std::uint64_t _id_random = 0;
    std::uint64_t _id_counter = 0;
    std::optional<dkim::signer> _signer;
    std::string_view _body_prefix;  // borrowed from the template: see dkim::hashable_prefix
    std::string _signatures;
    std::time_t _now = 0;  // the clock reading of the message being rendered
};

inline message_template message_template::compile(std::string_view text, std::string file_name,
                                                  const std::vector<std::string>& columns) {
    message_template t;
    t._file = std::move(file_name);
    t._columns = columns;
    t.parse(text, columns);
    t.find_sections();
    t.measure_body_literals();
    renderer_options o;
    o.from = "check@localhost";
    o.message_id_seed = 1;
    renderer r(t, o);
    if (const auto e = r.fixed_text_error()) {
        throw input_error(t._file, e->first, e->second);
    }
    return t;
}

}  // namespace mxpress::mail
