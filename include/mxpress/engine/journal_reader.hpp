// mxpress/engine/journal_reader.hpp — reading a journal back for --resume:
// journal_state (which input lines have a final outcome, the rows left
// deferred, the last rule firings) and read_journal(). The line format is
// journal_format.hpp's. A file of its own: one topic, the resume side.
//
// Promises (docs/ARCHITECTURE.md, The journal):
// - read_journal() gives --resume the input lines that already have a final
//   outcome, each with a 32-bit tag of its address (4 bytes a line), and
//   the rows left deferred with their next attempt.
// - A torn last line (a crash mid-write) is tolerated and counted.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "mxpress/detail/json.hpp"
#include "mxpress/engine/journal_format.hpp"
#include "mxpress/mail/input_error.hpp"

namespace mxpress::engine {

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
