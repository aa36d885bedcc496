// mxpress/mail/csv_reader.hpp — streaming RFC 4180 CSV reader.
//
// Promises:
// - Memory is bounded: one read buffer of `read_chunk_bytes` plus at most
//   `record_bytes_max` for the record being parsed; it never grows with the
//   file. A record longer than that is reported (csv_error::record_too_long)
//   and skipped to its end, not loaded.
// - Every record is reported, well-formed or not, with the physical lines it
//   starts and ends on (1-based), so nothing is dropped silently.
// - A quoted field that is never closed (end of input inside quotes) ends
//   its record at the end of the line where the quote opened: the lines
//   after it are read as records again, not swallowed. When that record was
//   too long to hold, the reader seeks back to that line end (from_fd on a
//   regular file, from_string); a pipe cannot, and the record then runs to
//   the end of input (its line range says so).
// - Accepts quoted fields, embedded commas, doubled quotes, embedded newlines
//   in quoted fields, CRLF / LF / CR line ends, and a UTF-8 BOM at the start.
//
// Field views point into the reader's buffer and stay valid until the next
// call to next(). Quoted fields are unescaped in place once the record is
// known to be complete (a record cut by a buffer boundary is parsed again
// after the refill, so partial parses never mutate the buffer).
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string_view>
#include <system_error>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "mxpress/io/input_wait.hpp"

namespace mxpress::mail {

enum class csv_error : std::uint8_t {
    none,
    unterminated_quote,  // end of file inside a quoted field
    stray_quote,         // '"' inside an unquoted field
    text_after_quote,    // characters between a closing quote and the separator
    nul_byte,            // a NUL octet anywhere in the record
    record_too_long,     // more than record_bytes_max octets
    too_many_fields,     // more than fields_max fields
};

constexpr std::string_view describe(csv_error e) noexcept {
    switch (e) {
        case csv_error::none: return "no error";
        case csv_error::unterminated_quote: return "unterminated quoted field at end of file";
        case csv_error::stray_quote: return "stray '\"' inside an unquoted field";
        case csv_error::text_after_quote: return "text after the closing '\"' of a quoted field";
        case csv_error::nul_byte: return "NUL byte in row";
        case csv_error::record_too_long: return "row too long";
        case csv_error::too_many_fields: return "too many fields in row";
    }
    return "unknown CSV error";
}

struct csv_limits {
    std::size_t read_chunk_bytes = std::size_t{1} << 20;
    std::size_t record_bytes_max = std::size_t{1} << 20;
    std::size_t fields_max = 4096;
};

struct csv_record {
    std::uint64_t line = 0;       // physical line the record starts on, 1-based
    std::uint64_t last_line = 0;  // physical line it ends on (its line end's line)
    std::vector<std::string_view> fields;
    csv_error error = csv_error::none;
    // True when the record was a line with nothing on it.
    bool blank() const noexcept { return fields.size() == 1 && fields[0].empty() && !_quoted_first; }
    bool _quoted_first = false;
};

namespace detail_csv {

// Octets that end an unquoted run: separator, line ends, quote, NUL.
constexpr std::array<std::uint8_t, 256> make_special() {
    std::array<std::uint8_t, 256> t{};
    t[static_cast<unsigned char>(',')] = 1;
    t[static_cast<unsigned char>('\n')] = 1;
    t[static_cast<unsigned char>('\r')] = 1;
    t[static_cast<unsigned char>('"')] = 1;
    t[0] = 1;
    return t;
}
inline constexpr std::array<std::uint8_t, 256> special = make_special();

// First octet in [p, end) that is special, or end. SSE2 (part of x86-64)
// looks at 16 octets per step; fields are short, so one step usually does it.
inline const char* find_special(const char* p, const char* end) noexcept {
#if defined(__SSE2__)
    const __m128i comma = _mm_set1_epi8(',');
    const __m128i lf = _mm_set1_epi8('\n');
    const __m128i cr = _mm_set1_epi8('\r');
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i zero = _mm_setzero_si128();
    while (end - p >= 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        const __m128i hit = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, comma), _mm_cmpeq_epi8(v, lf)),
            _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, quote)), _mm_cmpeq_epi8(v, zero)));
        const int mask = _mm_movemask_epi8(hit);
        if (mask != 0) {
            return p + __builtin_ctz(static_cast<unsigned>(mask));
        }
        p += 16;
    }
#endif
    while (p < end && special[static_cast<unsigned char>(*p)] == 0) {
        ++p;
    }
    return p;
}

}  // namespace detail_csv

class csv_reader {
public:
    // Reads up to `size` bytes into `dst`; returns the count, 0 at end of
    // input, or -1 with errno set.
    using read_fn = std::function<long(char* dst, std::size_t size)>;
    // Moves the source to byte `offset` (from its start); false when it
    // cannot (a pipe).
    using seek_fn = std::function<bool(std::uint64_t offset)>;

    explicit csv_reader(read_fn read, csv_limits limits = {}, seek_fn seek = {})
        : _read(std::move(read)), _seek(std::move(seek)), _limits(limits) {
        _buffer.resize(_limits.read_chunk_bytes + _limits.record_bytes_max + 1);
    }

    // Borrowed: fd must stay open for the reader's lifetime, and `wait` (if
    // any) too. With `wait`, a pipe or FIFO is read through it: a stop can
    // cancel a read that waits on the producer (io/input_wait.hpp).
    static csv_reader from_fd(int fd, csv_limits limits = {}, io::input_wait* wait = nullptr) {
        return csv_reader(
            [fd, wait](char* dst, std::size_t size) -> long {
                return wait != nullptr ? wait->read(fd, dst, size) : io::read_retrying(fd, dst, size);
            },
            limits,
            [fd, start = ::lseek(fd, 0, SEEK_CUR)](std::uint64_t offset) {
                struct stat st {};
                return start >= 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                       ::lseek(fd, start + static_cast<off_t>(offset), SEEK_SET) >= 0;
            });
    }

    // Borrowed: text must outlive the reader. Data is fed in chunks of at
    // most `limits.read_chunk_bytes`, which tests and fuzzers use to cut
    // records at every possible boundary.
    static csv_reader from_string(std::string_view text, csv_limits limits = {}) {
        auto offset = std::make_shared<std::size_t>(0);
        return csv_reader(
            [text, offset](char* dst, std::size_t size) -> long {
                const std::size_t n = std::min(size, text.size() - *offset);
                std::memcpy(dst, text.data() + *offset, n);
                *offset += n;
                return static_cast<long>(n);
            },
            limits,
            [text, offset](std::uint64_t to) {
                if (to > text.size()) {
                    return false;
                }
                *offset = static_cast<std::size_t>(to);
                return true;
            });
    }

    // Parses the next record into `out`. Returns false at end of input.
    // Throws std::system_error when the source fails.
    bool next(csv_record& out) {
        out.fields.clear();
        out.error = csv_error::none;
        out._quoted_first = false;
        if (_skipping_bom) {
            if (!skip_bom()) {
                return false;
            }
        }
        for (;;) {
            const parse_result r = parse_record(out);
            if (r == parse_result::complete) {
                return true;
            }
            if (r == parse_result::end_of_input) {
                return false;
            }
            // need_more: refill and parse the record again from its start.
            if (!refill()) {
                continue;  // eof is now set; the next parse finishes the record
            }
        }
    }

    std::uint64_t bytes_consumed() const noexcept { return _consumed_total; }

private:
    enum class parse_result { complete, need_more, end_of_input };

    struct field_span {
        std::size_t begin;
        std::size_t end;
        bool escaped;  // contains doubled quotes to collapse
    };

    bool skip_bom() {
        while (_end - _begin < 3 && !_eof) {
            if (!refill()) {
                break;
            }
        }
        _skipping_bom = false;
        if (_end - _begin >= 3 && std::memcmp(_buffer.data() + _begin, "\xEF\xBB\xBF", 3) == 0) {
            _begin += 3;
            _consumed_total += 3;
        }
        return _end > _begin || !_eof;
    }

    // Moves the unparsed tail to the front and reads more. Returns false when
    // the source is exhausted (sets _eof).
    bool refill() {
        if (_eof) {
            return false;
        }
        const std::size_t pending = _end - _begin;
        if (pending > _limits.record_bytes_max) {
            // The record in progress is too long to keep: drop what we have
            // and skip to its end with a quote-tracking scan.
            start_skip();
            return true;
        }
        if (_begin > 0) {
            std::memmove(_buffer.data(), _buffer.data() + _begin, pending);
            _begin = 0;
            _end = pending;
        }
        const std::size_t room = std::min(_limits.read_chunk_bytes, _buffer.size() - 1 - _end);
        const long n = _read(_buffer.data() + _end, room);
        if (n < 0) {
            throw std::system_error(errno, std::generic_category(), "read");
        }
        if (n == 0) {
            _eof = true;
            return false;
        }
        _end += static_cast<std::size_t>(n);
        _source_read += static_cast<std::uint64_t>(n);
        return true;
    }

    // Where a skip over an overlong record stands, as parse_record would
    // see it: a '"' opens a quoted field only at the start of a field (in an
    // unquoted field it is a stray quote, after a closing quote junk), and
    // the record ends at LF, CR or CRLF outside quotes. The same input then
    // gives the same records however it was cut into reads.
    enum class skip_state { field_start, unquoted, quoted, quote_in_quoted, after_cr };

    void start_skip() {
        // The held bytes are scanned from the record's start by continue_skip.
        _skip_active = true;
        _skip_state = skip_state::field_start;
        _skip_line = _line;
        _skip_reopen = 0;
    }

    // The source offset of buffer index i.
    std::uint64_t source_offset(std::size_t i) const noexcept { return _source_read - (_end - i); }

    // Scans buf[i, end) for the end of the record; returns the index after
    // it, or `end` with the state saved when the record goes on.
    std::size_t scan_skip(std::size_t i, std::size_t end, bool& done) {
        done = false;
        for (; i < end; ++i) {
            const char c = _buffer[i];
            switch (_skip_state) {
                case skip_state::after_cr:
                    done = true;  // CR ended the record; a LF right after it belongs to it
                    return c == '\n' ? i + 1 : i;
                case skip_state::quoted:
                    if (c == '"') {
                        _skip_state = skip_state::quote_in_quoted;
                    } else if (c == '\n') {
                        ++_line;
                        if (_skip_reopen == 0 || _skip_reopen_cr) {
                            // The first line end after the quote opened: where
                            // the next record starts if it never closes.
                            _skip_reopen = source_offset(i + 1);
                            _skip_reopen_line = _skip_reopen_cr ? _skip_reopen_line : _line;
                        }
                        _skip_reopen_cr = false;
                    } else if (c == '\r') {
                        if (_skip_reopen == 0) {
                            _skip_reopen = source_offset(i + 1);
                            _skip_reopen_line = _skip_line_at_cr();
                            _skip_reopen_cr = true;  // a LF right after it belongs to it
                        }
                    } else {
                        _skip_reopen_cr = false;
                    }
                    continue;
                case skip_state::field_start:
                    if (c == '"') {
                        _skip_state = skip_state::quoted;
                        _skip_reopen = 0;
                        _skip_reopen_cr = false;
                        continue;
                    }
                    break;
                case skip_state::quote_in_quoted:
                    if (c == '"') {
                        _skip_state = skip_state::quoted;  // "" inside quotes
                        continue;
                    }
                    _skip_reopen = 0;  // closed
                    break;
                case skip_state::unquoted: break;
            }
            // Outside quotes: unquoted text, junk after a closing quote, or a
            // stray quote, up to a separator or a line end.
            if (c == ',') {
                _skip_state = skip_state::field_start;
            } else if (c == '\n') {
                ++_line;
                done = true;
                return i + 1;
            } else if (c == '\r') {
                ++_line;
                _skip_state = skip_state::after_cr;
            } else {
                _skip_state = skip_state::unquoted;
            }
        }
        return end;
    }

    // Continues a skip over an overlong record. Returns true once the end of
    // the record was found (or input ended).
    bool continue_skip() {
        while (true) {
            bool done = false;
            const std::size_t stop = scan_skip(_begin, _end, done);
            if (stop > _begin) {
                _last_skipped = _buffer[stop - 1];
            }
            _consumed_total += stop - _begin;
            _begin = stop;
            if (done) {
                return true;
            }
            _begin = 0;
            _end = 0;
            const long n = _read(_buffer.data(), _limits.read_chunk_bytes);
            if (n < 0) {
                throw std::system_error(errno, std::generic_category(), "read");
            }
            if (n == 0) {
                if (_skip_state == skip_state::quoted && _skip_reopen != 0 && _seek && _seek(_skip_reopen)) {
                    // Never closed: the record ends at the first line end
                    // after its quote opened; read on from there.
                    _consumed_total -= _source_read - _skip_reopen;
                    _source_read = _skip_reopen;
                    _line = _skip_reopen_line;
                    _skip_unterminated = true;
                    return true;
                }
                _eof = true;
                return true;
            }
            _end = static_cast<std::size_t>(n);
            _source_read += static_cast<std::uint64_t>(n);
        }
    }

    parse_result parse_record(csv_record& out) {
        if (_skip_active) {
            _skip_unterminated = false;
            continue_skip();
            _skip_active = false;
            out.line = _skip_line;
            // Its last line: before the line that starts after it (at the end
            // of input, the line its last octet is on).
            const bool at_line_start = !_eof || _skip_unterminated || _skip_state == skip_state::after_cr ||
                                       (_consumed_total > 0 && _last_skipped == '\n');
            out.last_line = std::max(_skip_line, at_line_start ? _line - 1 : _line);
            out.fields.clear();
            out.error = _skip_unterminated ? csv_error::unterminated_quote : csv_error::record_too_long;
            return parse_result::complete;
        }
        const char* const buf = _buffer.data();
        const std::size_t start = _begin;
        if (start == _end) {
            if (_eof) {
                return parse_result::end_of_input;
            }
            return parse_result::need_more;
        }
        _spans.clear();
        csv_error error = csv_error::none;
        std::uint64_t newlines = 0;
        std::size_t i = start;
        bool first_quoted = false;
        for (;;) {
            // At the start of a field.
            if (i < _end && buf[i] == '"') {
                if (_spans.empty()) {
                    first_quoted = true;
                }
                const std::size_t content = i + 1;
                std::size_t j = content;
                bool escaped = false;
                std::size_t close;
                for (;;) {
                    const void* q = std::memchr(buf + j, '"', _end - j);
                    if (q == nullptr) {
                        if (!_eof) {
                            return parse_result::need_more;
                        }
                        // Never closed: the record ends at the first line
                        // end after the quote (the lines after it are read
                        // as records again), or at the end of input.
                        std::size_t stop = content;
                        while (stop < _end && buf[stop] != '\n' && buf[stop] != '\r') {
                            ++stop;
                        }
                        if (std::memchr(buf + content, '\0', stop - content) != nullptr) {
                            error = csv_error::nul_byte;
                        }
                        add_span(content, stop, false, error);
                        if (stop == _end) {
                            return finish(out, start, _end, newlines, csv_error::unterminated_quote, first_quoted);
                        }
                        if (buf[stop] == '\r' && stop + 1 < _end && buf[stop + 1] == '\n') {
                            ++stop;
                        }
                        return finish(out, start, stop + 1, newlines + 1, csv_error::unterminated_quote, first_quoted);
                    }
                    const std::size_t qpos = static_cast<std::size_t>(static_cast<const char*>(q) - buf);
                    if (qpos + 1 == _end && !_eof) {
                        return parse_result::need_more;  // can't tell "" from a closing quote yet
                    }
                    if (qpos + 1 < _end && buf[qpos + 1] == '"') {
                        escaped = true;
                        j = qpos + 2;
                        continue;
                    }
                    close = qpos;
                    break;
                }
                newlines += count_newlines(buf + content, close - content);
                if (std::memchr(buf + content, '\0', close - content) != nullptr && error == csv_error::none) {
                    error = csv_error::nul_byte;
                }
                add_span(content, close, escaped, error);
                i = close + 1;
                if (i < _end && buf[i] != ',' && buf[i] != '\n' && buf[i] != '\r') {
                    if (error == csv_error::none) {
                        error = csv_error::text_after_quote;
                    }
                    // Treat the rest of the field as unquoted junk.
                    const std::size_t junk_begin = i;
                    while (i < _end && buf[i] != ',' && buf[i] != '\n' && buf[i] != '\r') {
                        ++i;
                    }
                    if (std::memchr(buf + junk_begin, '\0', i - junk_begin) != nullptr) {
                        error = csv_error::nul_byte;
                    }
                }
            } else {
                const std::size_t field_begin = i;
                for (;;) {
                    i = static_cast<std::size_t>(detail_csv::find_special(buf + i, buf + _end) - buf);
                    if (i < _end && buf[i] == '"') {
                        if (error == csv_error::none) {
                            error = csv_error::stray_quote;
                        }
                        ++i;
                        continue;
                    }
                    if (i < _end && buf[i] == '\0') {
                        if (error == csv_error::none || error == csv_error::stray_quote) {
                            error = csv_error::nul_byte;
                        }
                        ++i;
                        continue;
                    }
                    break;
                }
                add_span(field_begin, i, false, error);
            }
            // After a field: separator, line end, or end of input.
            if (i == _end) {
                if (!_eof) {
                    return parse_result::need_more;
                }
                return finish(out, start, _end, newlines, error, first_quoted);
            }
            const char c = buf[i];
            if (c == ',') {
                ++i;
                if (i == _end && !_eof) {
                    return parse_result::need_more;
                }
                if (i == _end) {
                    add_span(i, i, false, error);  // trailing empty field at EOF
                    return finish(out, start, _end, newlines, error, first_quoted);
                }
                continue;
            }
            // c is '\n' or '\r'.
            if (c == '\r') {
                if (i + 1 == _end && !_eof) {
                    return parse_result::need_more;
                }
                if (i + 1 < _end && buf[i + 1] == '\n') {
                    ++i;
                }
            }
            ++newlines;
            return finish(out, start, i + 1, newlines, error, first_quoted);
        }
    }

    void add_span(std::size_t begin, std::size_t end, bool escaped, csv_error& error) {
        if (_spans.size() >= _limits.fields_max) {
            error = csv_error::too_many_fields;
            return;
        }
        _spans.push_back(field_span{begin, end, escaped});
    }

    static std::uint64_t count_newlines(const char* p, std::size_t n) {
        return static_cast<std::uint64_t>(std::count(p, p + n, '\n'));
    }

    parse_result finish(csv_record& out, std::size_t start, std::size_t stop, std::uint64_t newlines, csv_error error,
                        bool first_quoted) {
        // An overlong record is reported the same way however the input was
        // cut into reads: as record_too_long, without fields.
        const bool too_long = stop - start > _limits.record_bytes_max;
        if (too_long) {
            error = csv_error::record_too_long;
            _spans.clear();
        }
        out.line = _line;
        const bool terminated = stop > start && (_buffer[stop - 1] == '\n' || _buffer[stop - 1] == '\r') &&
                                !(stop == _end && _eof && error == csv_error::unterminated_quote);
        out.last_line = _line + newlines - (terminated && newlines > 0 ? 1 : 0);
        out.error = error;
        out._quoted_first = first_quoted;
        out.fields.clear();
        char* const buf = _buffer.data();
        for (const field_span& s : _spans) {
            std::size_t len = s.end - s.begin;
            if (s.escaped) {
                // Collapse "" to " in place; the result is never longer.
                std::size_t w = s.begin;
                for (std::size_t r = s.begin; r < s.end; ++r) {
                    buf[w++] = buf[r];
                    if (buf[r] == '"' && r + 1 < s.end && buf[r + 1] == '"') {
                        ++r;
                    }
                }
                len = w - s.begin;
            }
            out.fields.emplace_back(buf + s.begin, len);
        }
        _line += newlines;
        _consumed_total += stop - start;
        _begin = stop;
        return parse_result::complete;
    }

    std::uint64_t _skip_line_at_cr() const noexcept { return _line + 1; }

    read_fn _read;
    seek_fn _seek;
    csv_limits _limits;
    std::vector<char> _buffer;
    std::vector<field_span> _spans;
    std::size_t _begin = 0;
    std::size_t _end = 0;
    std::uint64_t _line = 1;
    std::uint64_t _consumed_total = 0;
    bool _eof = false;
    bool _skipping_bom = true;
    bool _skip_active = false;
    skip_state _skip_state = skip_state::field_start;
    std::uint64_t _skip_line = 0;
    std::uint64_t _source_read = 0;       // bytes read from the source (its offset)
    std::uint64_t _skip_reopen = 0;       // skip: offset after the first line end inside the open quote
    std::uint64_t _skip_reopen_line = 0;  // the line that starts there
    bool _skip_reopen_cr = false;         // that line end was a CR: a LF next belongs to it
    bool _skip_unterminated = false;      // the skip ended at _skip_reopen (seeked back)
    char _last_skipped = 0;               // the last octet a skip passed over
};

}  // namespace mxpress::mail
