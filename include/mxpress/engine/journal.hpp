// mxpress/engine/journal.hpp — the outcome journal: append-only JSON Lines.
//
// Contract (docs/ARCHITECTURE.md, The journal): one object per line per outcome, at least
//   {"line":N,"email":"…","status":"…","code":250,"enhanced":"2.0.0",
//    "reply":"…","mx":"…","attempts":1,"tls":"TLSv1.3"}
// Final statuses are delivered, bounced, expired, invalid, suppressed and in-doubt (the
// server took the message but the session ended before its reply, on every
// attempt allowed: it may have arrived); dry-run marks a
// row that a --dry-run checked and rendered (not final: a real run sends it).
// For invalid rows "reply" holds the reason.
//
// Promises:
// - Every line is valid JSON whatever the bytes in a reply or an address
//   (see detail/json.hpp), and ends with '\n'.
// - Writes are batched (buffer_bytes_max) and always whole lines, so a crash
//   leaves at most one torn last line, which read_journal() tolerates.
// - read_journal() gives --resume the set of input lines that already have
//   a final outcome, in memory proportional to the number of lines (1 bit each).
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "mxpress/detail/json.hpp"
#include "mxpress/mail/input_error.hpp"

namespace mxpress::engine {

// suppressed: on a --suppress list, never sent (final, like invalid).
enum class outcome_status : std::uint8_t { delivered, bounced, expired, invalid, in_doubt, dry_run, suppressed };

constexpr std::string_view to_string(outcome_status s) noexcept {
    switch (s) {
        case outcome_status::delivered: return "delivered";
        case outcome_status::bounced: return "bounced";
        case outcome_status::expired: return "expired";
        case outcome_status::invalid: return "invalid";
        case outcome_status::in_doubt: return "in-doubt";
        case outcome_status::dry_run: return "dry-run";
        case outcome_status::suppressed: return "suppressed";
    }
    return "unknown";
}

constexpr bool is_final(outcome_status s) noexcept {
    return s != outcome_status::dry_run;
}

inline bool parse_status(std::string_view text, outcome_status& out) noexcept {
    for (auto s : {outcome_status::delivered, outcome_status::bounced, outcome_status::expired, outcome_status::invalid,
                   outcome_status::in_doubt, outcome_status::dry_run, outcome_status::suppressed}) {
        if (text == to_string(s)) {
            out = s;
            return true;
        }
    }
    return false;
}

// The journal could not be written (full disk, I/O error): the run cannot
// go on, and says so with exit status 1.
struct journal_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct journal_entry {
    std::uint64_t line = 0;
    std::string_view email;
    outcome_status status = outcome_status::invalid;
    int code = 0;
    std::string_view enhanced;
    std::string_view reply;
    std::string_view mx;
    std::uint32_t attempts = 0;
    std::string_view tls = "none";  // how the last attempt travelled: "TLSv1.3", "none"
};

// Formats one journal line (with its '\n') onto `out`.
inline void append_journal_line(std::string& out, const journal_entry& e) {
    fmt::format_to(std::back_inserter(out), "{{\"line\":{},\"email\":", e.line);
    detail::append_json_string(out, e.email);
    out += ",\"status\":\"";
    out += to_string(e.status);
    fmt::format_to(std::back_inserter(out), "\",\"code\":{},\"enhanced\":", e.code);
    detail::append_json_string(out, e.enhanced);
    out += ",\"reply\":";
    detail::append_json_string(out, e.reply);
    out += ",\"mx\":";
    detail::append_json_string(out, e.mx);
    fmt::format_to(std::back_inserter(out), ",\"attempts\":{},\"tls\":", e.attempts);
    detail::append_json_string(out, e.tls);
    out += "}\n";
}

class journal_writer {
public:
    static constexpr std::size_t buffer_bytes_max = 256 * 1024;

    journal_writer() = default;
    journal_writer(const journal_writer&) = delete;
    journal_writer& operator=(const journal_writer&) = delete;
    journal_writer(journal_writer&& o) noexcept { *this = std::move(o); }
    journal_writer& operator=(journal_writer&& o) noexcept {
        if (this != &o) {
            close_quietly();
            _fd = o._fd;
            _path = std::move(o._path);
            _buffer = std::move(o._buffer);
            o._fd = -1;
        }
        return *this;
    }
    ~journal_writer() { close_quietly(); }

    // Opens (creating) `path`; appends when `append`, else truncates.
    // Throws mail::input_error naming the path.
    static journal_writer open(const std::string& path, bool append) {
        journal_writer w;
        const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC);
        w._fd = ::open(path.c_str(), flags, 0644);
        if (w._fd < 0) {
            throw mail::input_error(path, 0, fmt::format("cannot open journal: {}", std::strerror(errno)));
        }
        w._path = path;
        w._buffer.reserve(buffer_bytes_max + 4096);
        if (append) {
            w.repair_torn_tail();
        }
        return w;
    }

    void append(const journal_entry& e) {
        append_journal_line(_buffer, e);
        if (_buffer.size() >= buffer_bytes_max) {
            flush();
        }
    }

    // Appends lines already formatted by append_journal_line().
    void append_raw(std::string_view lines) {
        _buffer += lines;
        if (_buffer.size() >= buffer_bytes_max) {
            flush();
        }
    }

    // Writes buffered lines. Throws journal_error when the disk refuses (a run
    // failure, exit 1: not the user's input).
    void flush() {
        std::size_t done = 0;
        while (done < _buffer.size()) {
            const ssize_t n = ::write(_fd, _buffer.data() + done, _buffer.size() - done);
            if (n < 0) {
                if (errno == EINTR) {
                    continue;
                }
                throw journal_error(fmt::format("{}: cannot write journal: {}", _path, std::strerror(errno)));
            }
            done += static_cast<std::size_t>(n);
        }
        _buffer.clear();
    }

    // Flushes and asks the kernel to put the data on disk.
    void sync() {
        flush();
        if (::fdatasync(_fd) != 0 && errno != EINVAL) {
            throw journal_error(fmt::format("{}: cannot sync journal: {}", _path, std::strerror(errno)));
        }
    }

    const std::string& path() const noexcept { return _path; }

private:
    // A crash may have left a last line without '\n'; end it so the next
    // entry starts on a line of its own (the reader skips the torn one).
    void repair_torn_tail() {
        struct stat st {};
        if (::fstat(_fd, &st) != 0 || st.st_size == 0) {
            return;
        }
        const int rfd = ::open(_path.c_str(), O_RDONLY | O_CLOEXEC);
        if (rfd < 0) {
            return;
        }
        char last = '\n';
        if (::pread(rfd, &last, 1, st.st_size - 1) == 1 && last != '\n') {
            _buffer += '\n';
        }
        ::close(rfd);
    }

    void close_quietly() noexcept {
        if (_fd >= 0) {
            try {
                flush();
            } catch (...) {
            }
            ::close(_fd);
            _fd = -1;
        }
    }

    int _fd = -1;
    std::string _path;
    std::string _buffer;
};

struct journal_state {
    std::vector<bool> final_lines;  // final_lines[N]: input line N has a final outcome
    std::uint64_t entries = 0;
    std::uint64_t final_entries = 0;
    std::uint64_t delivery_entries = 0;  // delivered, bounced or expired
    std::uint64_t torn_lines = 0;        // lines skipped because a crash cut them

    bool has_final(std::uint64_t line) const noexcept { return line < final_lines.size() && final_lines[line]; }
};

// Reads a journal for --resume. A missing file is an empty journal. A line
// cut short by a crash (it does not end with '}') is counted in torn_lines
// and passed over; any other line that is not a valid entry is an error
// naming the journal line, since resuming from a journal we cannot read
// could send twice.
// The longest journal line read back (a reply is at most a few KiB).
inline constexpr std::size_t journal_line_bytes_max = 1 << 20;

inline journal_state read_journal(const std::string& path) {
    journal_state st;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            return st;
        }
        throw mail::input_error(path, 0, fmt::format("cannot open journal: {}", std::strerror(errno)));
    }
    struct stat sb {};
    if (::fstat(fd, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        ::close(fd);  // a device or a pipe (/dev/null, /dev/full) holds no outcomes to resume
        return st;
    }
    std::string pending;
    std::vector<char> buf(1 << 20);
    std::uint64_t journal_line = 0;
    auto handle = [&](std::string_view text) {
        ++journal_line;
        if (text.empty()) {
            return;
        }
        std::uint64_t line = 0;
        bool have_line = false;
        bool have_status = false;
        outcome_status status = outcome_status::invalid;
        const std::string err =
            detail::parse_flat_json_object(text, [&](const std::string& k, const detail::json_value& v) {
                if (k == "line" && v.type == detail::json_value::kind::number) {
                    std::uint64_t n = 0;
                    bool ok = !v.text.empty();
                    for (char c : v.text) {
                        ok = ok && c >= '0' && c <= '9' && n < (UINT64_MAX / 10);
                        n = n * 10 + static_cast<std::uint64_t>(c - '0');
                    }
                    have_line = ok;
                    line = n;
                } else if (k == "status" && v.type == detail::json_value::kind::string) {
                    have_status = parse_status(v.text, status);
                }
            });
        if (!err.empty() || !have_line || !have_status) {
            if (!text.ends_with('}')) {
                ++st.torn_lines;  // cut by a crash mid-write; its outcome was never recorded
                return;
            }
            ::close(fd);
            throw mail::input_error(path, journal_line,
                                    fmt::format("journal line is not a valid entry: {}",
                                                err.empty() ? "missing or bad \"line\" or \"status\"" : err));
        }
        ++st.entries;
        if (is_final(status)) {
            ++st.final_entries;
            if (line >= st.final_lines.size()) {
                st.final_lines.resize(std::max<std::uint64_t>(line + 1, st.final_lines.size() * 2));
            }
            st.final_lines[line] = true;
        }
        if (status == outcome_status::delivered || status == outcome_status::bounced ||
            status == outcome_status::expired) {
            ++st.delivery_entries;
        }
    };
    for (;;) {
        const ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            const int e = errno;
            ::close(fd);
            throw mail::input_error(path, 0, fmt::format("cannot read journal: {}", std::strerror(e)));
        }
        if (n == 0) {
            break;
        }
        std::string_view chunk(buf.data(), static_cast<std::size_t>(n));
        while (!chunk.empty()) {
            const std::size_t nl = chunk.find('\n');
            if (nl == std::string_view::npos) {
                pending.append(chunk);
                if (pending.size() > journal_line_bytes_max) {
                    ::close(fd);
                    throw mail::input_error(path, journal_line + 1,
                                            fmt::format("journal line is longer than {} bytes: not an mxpress journal",
                                                        journal_line_bytes_max));
                }
                break;
            }
            if (pending.empty()) {
                handle(chunk.substr(0, nl));
            } else {
                pending.append(chunk.substr(0, nl));
                handle(pending);
                pending.clear();
            }
            chunk.remove_prefix(nl + 1);
        }
    }
    ::close(fd);
    if (!pending.empty()) {
        handle(pending);
    }
    return st;
}

}  // namespace mxpress::engine
