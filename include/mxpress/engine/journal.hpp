// mxpress/engine/journal.hpp — the outcome journal: append-only JSON Lines.
//
// Contract (docs/ARCHITECTURE.md, The journal): the first line of a run is its
// header,
//   {"mxpress_journal":1,"run":"…","ts":"…","recipients":"…","template":"…"}
// (a resumed run appends its own, with the same fingerprints), then one
// object per line per outcome, at least
//   {"line":N,"email":"…","status":"…","code":250,"enhanced":"2.0.0",
//    "reply":"…","mx":"…","attempts":1,"tls":"TLSv1.3","ts":"…",
//    "domain":"…","mx_ip":"…","message_id":"<…>","run":"…"}
// Final statuses are delivered, bounced, expired, invalid, suppressed,
// skipped (step mail: due longer ago than the step's max_late) and
// in-doubt (the server took the message but the session ended before its
// reply, on every attempt allowed: it may have arrived); dry-run marks a row
// that a --dry-run checked and rendered (not final: a real run sends it);
// deferred marks a row the run stopped before its end (not final; it has
// "next_attempt", and "in_doubt":true when its transaction was cut).
// For invalid rows "reply" holds the reason.
//
// Promises:
// - Every line is valid JSON whatever the bytes in a reply or an address
//   (see detail/json.hpp), and ends with '\n'.
// - Writes are batched (buffer_bytes_max) and always whole lines, so a crash
//   leaves at most one torn last line, which read_journal() tolerates.
// - read_journal() gives --resume the input lines that already have a final
//   outcome, each with a 32-bit tag of its address (4 bytes a line), and
//   the rows left deferred with their next attempt.
// - journal_writer::open() holds an exclusive flock() on the file for the
//   writer's life: a second run on the same journal is refused, never
//   interleaved.
#pragma once

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <cstring>
#include <mutex>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "mxpress/detail/json.hpp"
#include "mxpress/mail/input_error.hpp"

namespace mxpress::engine {

// suppressed: on a --suppress list, never sent (final, like invalid).
enum class outcome_status : std::uint8_t {
    delivered,
    bounced,
    expired,
    invalid,
    in_doubt,
    dry_run,
    suppressed,
    deferred,
    skipped  // step mail: due longer ago than the step's max_late, never sent (final)
};

constexpr std::string_view to_string(outcome_status s) noexcept {
    switch (s) {
        case outcome_status::delivered: return "delivered";
        case outcome_status::bounced: return "bounced";
        case outcome_status::expired: return "expired";
        case outcome_status::invalid: return "invalid";
        case outcome_status::in_doubt: return "in-doubt";
        case outcome_status::dry_run: return "dry-run";
        case outcome_status::suppressed: return "suppressed";
        case outcome_status::deferred: return "deferred";
        case outcome_status::skipped: return "skipped";
    }
    return "unknown";
}

constexpr bool is_final(outcome_status s) noexcept {
    return s != outcome_status::dry_run && s != outcome_status::deferred;
}

inline bool parse_status(std::string_view text, outcome_status& out) noexcept {
    for (auto s : {outcome_status::delivered, outcome_status::bounced, outcome_status::expired, outcome_status::invalid,
                   outcome_status::in_doubt, outcome_status::dry_run, outcome_status::suppressed,
                   outcome_status::deferred, outcome_status::skipped}) {
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

// Another run holds the journal's lock (`steps` leaves that step to it).
struct journal_in_use : mail::input_error {
    using mail::input_error::input_error;
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
    std::string_view ts;            // when: RFC 3339 UTC with milliseconds (format_timestamp)
    std::string_view domain;        // the recipient's domain
    std::string_view mx_ip;         // "address:port" of the MX that answered ("" when none did)
    std::string_view message_id;    // the Message-ID sent ("" when none is stable)
    std::string_view run;           // the run id of the header line
    std::string_view next_attempt;  // deferred only: when a resumed run tries it (RFC 3339)
    bool in_doubt = false;          // deferred only: its transaction was cut; a server may have it
};

// RFC 3339 in UTC with milliseconds: 2026-11-27T12:00:00.123Z.
inline void format_timestamp(std::string& out, std::chrono::system_clock::time_point t) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
    const std::time_t secs = static_cast<std::time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    fmt::format_to(std::back_inserter(out), "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900,
                   tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms - secs * 1000));
}

// Parses format_timestamp()'s form back (milliseconds since the epoch).
inline bool parse_timestamp(std::string_view s, std::int64_t& ms_out) {
    // YYYY-MM-DDTHH:MM:SS.mmmZ
    if (s.size() != 24 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[19] != '.' ||
        s[23] != 'Z') {
        return false;
    }
    auto num = [&](std::size_t at, std::size_t n, int& v) {
        v = 0;
        for (std::size_t i = at; i < at + n; ++i) {
            if (s[i] < '0' || s[i] > '9') {
                return false;
            }
            v = v * 10 + (s[i] - '0');
        }
        return true;
    };
    std::tm tm{};
    int ms = 0;
    if (!num(0, 4, tm.tm_year) || !num(5, 2, tm.tm_mon) || !num(8, 2, tm.tm_mday) || !num(11, 2, tm.tm_hour) ||
        !num(14, 2, tm.tm_min) || !num(17, 2, tm.tm_sec) || !num(20, 3, ms)) {
        return false;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    ms_out = static_cast<std::int64_t>(::timegm(&tm)) * 1000 + ms;
    return true;
}

// A 32-bit tag of an address (FNV-1a, never 0): --resume checks that a row
// it skips still holds the address its journal line names.
inline std::uint32_t email_tag(std::string_view email) noexcept {
    std::uint32_t h = 2166136261u;
    for (char c : email) {
        h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
    }
    return h == 0 ? 1 : h;
}

// What a journal's header line records about the run that wrote it.
struct journal_header {
    std::string run;         // random id; every outcome line of the run repeats it
    std::string ts;          // when it started
    std::string recipients;  // fingerprint of the recipients file's columns
    std::string templ;       // fingerprint of the message template
};

inline void append_journal_header(std::string& out, const journal_header& h) {
    out += "{\"mxpress_journal\":1,\"run\":";
    detail::append_json_string(out, h.run);
    out += ",\"ts\":";
    detail::append_json_string(out, h.ts);
    out += ",\"recipients\":";
    detail::append_json_string(out, h.recipients);
    out += ",\"template\":";
    detail::append_json_string(out, h.templ);
    out += "}\n";
}

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
    out += ",\"ts\":";
    detail::append_json_string(out, e.ts);
    out += ",\"domain\":";
    detail::append_json_string(out, e.domain);
    out += ",\"mx_ip\":";
    detail::append_json_string(out, e.mx_ip);
    out += ",\"message_id\":";
    detail::append_json_string(out, e.message_id);
    out += ",\"run\":";
    detail::append_json_string(out, e.run);
    if (e.status == outcome_status::deferred) {
        out += ",\"next_attempt\":";
        detail::append_json_string(out, e.next_attempt);
        out += e.in_doubt ? ",\"in_doubt\":true" : ",\"in_doubt\":false";
    }
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

    // Opens (creating) `path` and locks it (flock, exclusive, for the
    // writer's life); appends when `append`, else truncates, only once the
    // lock is held. Throws mail::input_error naming the path, also when
    // another run holds the lock.
    static journal_writer open(const std::string& path, bool append) {
        journal_writer w;
        w._fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_APPEND, 0644);
        if (w._fd < 0) {
            throw mail::input_error(path, 0, fmt::format("cannot open journal: {}", std::strerror(errno)));
        }
        w._path = path;
        struct stat st {};
        const bool regular = ::fstat(w._fd, &st) == 0 && S_ISREG(st.st_mode);
        if (regular && ::flock(w._fd, LOCK_EX | LOCK_NB) != 0) {
            const int e = errno;
            if (e == EWOULDBLOCK) {
                throw journal_in_use(path, 0,
                                     "journal is in use by another mxpress run (it holds the lock); wait for that "
                                     "run to end or choose another --journal");
            }
            throw mail::input_error(path, 0, fmt::format("cannot lock journal: {}", std::strerror(e)));
        }
        if (!append && regular && ::ftruncate(w._fd, 0) != 0) {
            throw mail::input_error(path, 0, fmt::format("cannot truncate journal: {}", std::strerror(errno)));
        }
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
        std::string pending;
        pending.swap(_buffer);
        write_all(pending);
        pending.clear();
        _buffer.swap(pending);  // keeps the reserved capacity
    }

    // Writes buffered lines, then `lines`, before returning (no copy into
    // the buffer). Throws journal_error as flush() does.
    void write_now(std::string_view lines) {
        if (!_buffer.empty()) {
            flush();
        }
        write_all(lines);
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
    void write_all(std::string_view data) {
        std::size_t done = 0;
        while (done < data.size()) {
            const ssize_t n = ::write(_fd, data.data() + done, data.size() - done);
            if (n < 0) {
                if (errno == EINTR) {
                    continue;
                }
                throw journal_error(fmt::format("{}: cannot write journal: {}", _path, std::strerror(errno)));
            }
            done += static_cast<std::size_t>(n);
        }
    }

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

// A row a stopped run left deferred: when to try it again.
struct deferred_row {
    std::int64_t next_attempt_ms = 0;  // Unix time in milliseconds; 0: at once
    std::uint32_t attempts = 0;
    bool in_doubt = false;
};

// A rule's firing, as its event line recorded it (shard.hpp: rule_fired).
struct journal_rule_event {
    std::string rule;
    std::string scope;   // "provider:NAME" or "domain:NAME"
    std::string action;  // scale, suspend, stop
    double rate = 0;     // per second
    double base = 0;
    std::int64_t ts_ms = 0;     // Unix time in milliseconds
    std::int64_t until_ms = 0;  // suspend: when it lifts
};

struct journal_state {
    // final_tags[N]: 0 when input line N has no final outcome, else the
    // email_tag() of the address its line names (4 bytes a line: ten
    // million rows take 40 MB).
    std::vector<std::uint32_t> final_tags;
    std::unordered_map<std::uint64_t, deferred_row> deferred;  // not final, left by a stop
    std::optional<journal_header> header;                      // the first header line, if any
    std::map<std::string, journal_rule_event> rule_events;     // the last firing per scope
    std::uint64_t entries = 0;
    std::uint64_t final_entries = 0;
    std::uint64_t delivery_entries = 0;  // delivered, bounced or expired
    std::uint64_t torn_lines = 0;        // lines skipped because a crash cut them
    std::uint64_t headers = 0;           // runs that wrote to it

    bool has_final(std::uint64_t line) const noexcept { return line < final_tags.size() && final_tags[line] != 0; }
    std::uint32_t final_tag(std::uint64_t line) const noexcept {
        return line < final_tags.size() ? final_tags[line] : 0;
    }
    const deferred_row* deferred_at(std::uint64_t line) const {
        auto it = deferred.find(line);
        return it == deferred.end() ? nullptr : &it->second;
    }
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
    auto number = [](const std::string& text, std::uint64_t& out) {
        std::uint64_t n = 0;
        bool ok = !text.empty();
        for (char c : text) {
            ok = ok && c >= '0' && c <= '9' && n < (UINT64_MAX / 10);
            n = n * 10 + static_cast<std::uint64_t>(c - '0');
        }
        out = n;
        return ok;
    };
    auto record_final = [&](std::uint64_t line, std::uint32_t tag) {
        ++st.final_entries;
        if (line >= st.final_tags.size()) {
            st.final_tags.resize(std::max<std::uint64_t>(line + 1, st.final_tags.size() * 2));
        }
        st.final_tags[line] = tag;
        if (!st.deferred.empty()) {
            st.deferred.erase(line);
        }
    };
    // The common case, a final line as append_journal_line() writes it, read
    // without the general parser (three times faster: ten million lines in
    // a few seconds): {"line":N,"email":"…","status":"…", … }
    auto fast = [&](std::string_view text) {
        constexpr std::string_view p_line = "{\"line\":", p_email = ",\"email\":\"", p_status = "\",\"status\":\"";
        if (!text.starts_with(p_line) || !text.ends_with('}')) {
            return false;
        }
        std::size_t i = p_line.size();
        std::uint64_t line = 0;
        const std::size_t digits_at = i;
        while (i < text.size() && text[i] >= '0' && text[i] <= '9' && i - digits_at < 19) {
            line = line * 10 + static_cast<std::uint64_t>(text[i++] - '0');
        }
        if (i == digits_at || text.substr(i, p_email.size()) != p_email) {
            return false;
        }
        i += p_email.size();
        const std::size_t email_end = text.find('"', i);
        if (email_end == std::string_view::npos || std::memchr(text.data() + i, '\\', email_end - i) != nullptr) {
            return false;  // escapes: the general parser decodes them
        }
        const std::string_view email = text.substr(i, email_end - i);
        i = email_end;
        if (text.substr(i, p_status.size()) != p_status) {
            return false;
        }
        i += p_status.size();
        const std::size_t status_end = text.find('"', i);
        outcome_status status{};
        if (status_end == std::string_view::npos || !parse_status(text.substr(i, status_end - i), status) ||
            !is_final(status)) {
            return false;  // deferred and dry-run lines carry more: the general parser
        }
        ++journal_line;
        ++st.entries;
        record_final(line, email_tag(email));
        if (status != outcome_status::invalid) {
            ++st.delivery_entries;
        }
        return true;
    };
    auto handle = [&](std::string_view text) {
        if (fast(text)) {
            return;
        }
        ++journal_line;
        if (text.empty()) {
            return;
        }
        std::uint64_t line = 0;
        std::uint64_t attempts = 0;
        bool have_line = false;
        bool have_status = false;
        bool is_header = false;
        bool is_rule_event = false;
        journal_rule_event ev;
        bool in_doubt = false;
        std::uint32_t tag = 0;
        std::int64_t next_ms = 0;
        journal_header h;
        outcome_status status = outcome_status::invalid;
        const std::string err =
            detail::parse_flat_json_object(text, [&](const std::string& k, const detail::json_value& v) {
                using kind = detail::json_value::kind;
                if (k == "line" && v.type == kind::number) {
                    have_line = number(v.text, line);
                } else if (k == "status" && v.type == kind::string) {
                    have_status = parse_status(v.text, status);
                } else if (k == "email" && v.type == kind::string) {
                    tag = email_tag(v.text);
                } else if (k == "attempts" && v.type == kind::number) {
                    number(v.text, attempts);
                } else if (k == "next_attempt" && v.type == kind::string) {
                    parse_timestamp(v.text, next_ms);
                } else if (k == "in_doubt") {
                    in_doubt = v.type == kind::boolean && v.flag;
                } else if (k == "mxpress_journal") {
                    is_header = true;
                } else if (k == "event" && v.type == kind::string) {
                    is_rule_event = v.text == "rule";
                } else if (k == "rule" && v.type == kind::string) {
                    ev.rule = v.text;
                } else if (k == "scope" && v.type == kind::string) {
                    ev.scope = v.text;
                } else if (k == "action" && v.type == kind::string) {
                    ev.action = v.text;
                } else if ((k == "rate" || k == "base") && v.type == kind::number) {
                    (k == "rate" ? ev.rate : ev.base) = std::strtod(v.text.c_str(), nullptr);
                } else if (k == "until" && v.type == kind::string) {
                    parse_timestamp(v.text, ev.until_ms);
                } else if (k == "run" && v.type == kind::string) {
                    h.run = v.text;
                } else if (k == "ts" && v.type == kind::string) {
                    h.ts = v.text;
                    parse_timestamp(v.text, ev.ts_ms);
                } else if (k == "recipients" && v.type == kind::string) {
                    h.recipients = v.text;
                } else if (k == "template" && v.type == kind::string) {
                    h.templ = v.text;
                }
            });
        if (err.empty() && is_rule_event) {
            if (!ev.scope.empty()) {
                st.rule_events[ev.scope] = std::move(ev);
            }
            return;
        }
        if (err.empty() && is_header) {
            ++st.headers;
            if (!st.header) {
                st.header = std::move(h);
            }
            return;
        }
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
            record_final(line, tag == 0 ? email_tag("") : tag);
        } else if (status == outcome_status::deferred && !st.has_final(line)) {
            st.deferred[line] = deferred_row{next_ms, static_cast<std::uint32_t>(attempts), in_doubt};
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
