// mxpress/engine/sequence.hpp — step mail: a sequence of messages timed
// from each subscriber's sign-up, run statelessly from cron (`mxpress
// steps`), with one journal per step as the memory of who got what.
//
// [sequence.welcome]
//   anchor = "signup_at"          # CSV column: RFC 3339, or "YYYY-MM-DD HH:MM[:SS]" in the zone
//   tz = "Asia/Tokyo"             # the zone of times without an offset; a "tz" column overrides per row
//   suppress = "unsubscribed.csv" # optional: addresses no step ever mails
// [[sequence.welcome.step]]
//   id = "d3"                     # names the step's journal: LIST.welcome.d3.journal.jsonl
//   after = "3d"                  # after the anchor
//   at = "09:00"                  # optional: the next such local time of day on or after that
//   days = "Mon-Fri"              # optional: the next such day ("Sat,Sun", "Fri-Mon")
//   message = "tips.eml"          # relative paths: to the configuration file's folder
//   max_late = "6h"               # due longer ago than this: journaled "skipped", never sent
//
// Promises:
// - Parsing is strict: unknown keys, wrong types, bad durations, times of
//   day, day lists, zones and duplicate step ids are input_errors naming
//   the file and line.
// - step_due() is a pure function of the anchor, the step and the zone:
//   the same row is due at the same instant in every run, which is what
//   makes a run every few minutes send each step once.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "mxpress/engine/durations.hpp"
#include "mxpress/engine/time_zone.hpp"
#include "mxpress/engine/toml_errors.hpp"
#include "mxpress/mail/input_error.hpp"

namespace mxpress::engine {

// A step no later than this after its anchor (a typo like "30000d" is an error).
inline constexpr std::int64_t step_after_max_s = 3660LL * 86400;  // ten years
// Unless a step says otherwise: a step due more than a day ago is skipped,
// so adding a sequence to an old list does not mail every step at once.
inline constexpr std::int64_t step_max_late_default_s = 86400;
inline constexpr std::uint8_t every_day = 0x7f;
// The units of a step's after and max_late: whole seconds, up to weeks.
inline constexpr duration_unit step_duration_units[] = {{"s", 1000},
                                                        {"m", 60'000},
                                                        {"h", 3'600'000},
                                                        {"d", 86'400'000},
                                                        {"w", 604'800'000}};  // bit d: weekday d (0 = Sunday)

struct sequence_step {
    std::string id;
    std::int64_t after_s = 0;
    std::optional<int> at_minute;  // minutes after local midnight
    std::uint8_t days = every_day;
    std::string message;                                               // resolved against the configuration's folder
    std::optional<std::int64_t> max_late_s = step_max_late_default_s;  // nullopt: "unlimited"
};

struct sequence_config {
    std::string name;
    std::string anchor;    // column name
    std::string tz;        // "" = the process's zone ($TZ, else /etc/localtime, else UTC)
    std::string suppress;  // "" = none
    std::vector<sequence_step> steps;
};

// The zone of times without an offset when nothing names one.
inline time_zone default_time_zone() {
    if (const char* tz = std::getenv("TZ"); tz != nullptr && *tz != '\0') {
        const std::string_view name = *tz == ':' ? tz + 1 : tz;
        try {
            return time_zone::load(name);
        } catch (const std::invalid_argument&) {
            // a POSIX string in $TZ, or an unknown name: fall through to the system's zone
        }
    }
    try {
        const std::string bytes = mail::read_input_file("/etc/localtime", "time zone file");
        return time_zone::from_tzif("localtime", bytes, "/etc/localtime");
    } catch (const std::exception&) {
        return time_zone::fixed("UTC", 0);
    }
}

// "2026-11-28T09:30:00+09:00", "2026-11-28T00:30:00Z", "2026-11-28 09:30",
// "2026-11-28 09:30:15", "2026-11-28" (midnight). Without an offset the
// time is a wall-clock time in `zone`. False when malformed.
inline bool parse_time(std::string_view s, const time_zone& zone, unix_time& out) {
    std::size_t i = 0;
    auto digits = [&](int n, int& v) {
        v = 0;
        for (int k = 0; k < n; ++k, ++i) {
            if (i >= s.size() || s[i] < '0' || s[i] > '9') {
                return false;
            }
            v = v * 10 + (s[i] - '0');
        }
        return true;
    };
    auto eat = [&](char c) {
        if (i < s.size() && s[i] == c) {
            ++i;
            return true;
        }
        return false;
    };
    int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0;
    if (!digits(4, y) || !eat('-') || !digits(2, mo) || !eat('-') || !digits(2, d)) {
        return false;
    }
    if (mo < 1 || mo > 12 || d < 1 ||
        !std::chrono::year_month_day(std::chrono::year(y) / std::chrono::month(unsigned(mo)) /
                                     std::chrono::day(unsigned(d)))
             .ok()) {
        return false;
    }
    if (i < s.size()) {
        if (!(eat('T') || eat('t') || eat(' ')) || !digits(2, h) || !eat(':') || !digits(2, mi)) {
            return false;
        }
        if (eat(':')) {
            if (!digits(2, sec)) {
                return false;
            }
            if (eat('.')) {  // fractions of a second: read, not kept
                const std::size_t start = i;
                while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
                    ++i;
                }
                if (i == start) {
                    return false;
                }
            }
        }
        if (h > 23 || mi > 59 || sec > 60) {
            return false;
        }
        sec = std::min(sec, 59);  // a leap second: the second before it
    }
    const std::int64_t local = seconds_from_civil(y, unsigned(mo), unsigned(d), h, mi, sec);
    if (i == s.size()) {
        out = zone.to_utc(local);
        return true;
    }
    if (eat('Z') || eat('z')) {
        out = local;
        return i == s.size();
    }
    const int sign = eat('+') ? 1 : eat('-') ? -1 : 0;
    int oh = 0, om = 0;
    if (sign == 0 || !digits(2, oh)) {
        return false;
    }
    eat(':');  // "+09:00" or "+0900"
    if (!digits(2, om) || i != s.size() || oh > 23 || om > 59) {
        return false;
    }
    out = local - sign * (oh * 3600 + om * 60);
    return true;
}

// "2026-11-28T09:30:00Z"
inline std::string format_utc(unix_time t) {
    const civil_time c = civil_from_seconds(t);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", c.year, c.month, c.day, c.hour, c.minute, c.second);
}

// "Mon-Fri", "Sat,Sun", "Fri-Mon", "Tue": a bit per weekday.
inline bool parse_days(std::string_view s, std::uint8_t& out) {
    static constexpr std::string_view names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
    auto day = [](std::string_view w) -> int {
        if (w.size() != 3) {
            return -1;
        }
        std::string lower;
        for (char c : w) {
            lower += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
        }
        for (int k = 0; k < 7; ++k) {
            if (names[k] == lower) {
                return k;
            }
        }
        return -1;
    };
    out = 0;
    while (!s.empty()) {
        const std::size_t comma = s.find(',');
        std::string_view part = s.substr(0, comma);
        s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
        while (!part.empty() && part.front() == ' ') {
            part.remove_prefix(1);
        }
        while (!part.empty() && part.back() == ' ') {
            part.remove_suffix(1);
        }
        const std::size_t dash = part.find('-');
        const int first = day(part.substr(0, dash));
        const int last = dash == std::string_view::npos ? first : day(part.substr(dash + 1));
        if (first < 0 || last < 0) {
            return false;
        }
        for (int k = first;; k = (k + 1) % 7) {
            out = static_cast<std::uint8_t>(out | (1u << k));
            if (k == last) {
                break;
            }
        }
        if (comma == std::string_view::npos) {
            break;
        }
    }
    return out != 0;
}

// The instant a step is due for a row anchored at `anchor`.
inline unix_time step_due(unix_time anchor, const sequence_step& step, const time_zone& zone) {
    const unix_time earliest = anchor + step.after_s;
    if (!step.at_minute && step.days == every_day) {
        return earliest;
    }
    const std::int64_t local = zone.to_local(earliest);
    std::int64_t day = local >= 0 ? local / 86400 : -((-local + 86399) / 86400);
    std::int64_t candidate = step.at_minute ? day * 86400 + *step.at_minute * 60 : local;
    if (candidate < local) {
        ++day;
        candidate = day * 86400 + *step.at_minute * 60;
    }
    for (int k = 0; k < 7; ++k) {  // `days` is never empty: a week holds an allowed day
        const unsigned wday = std::chrono::weekday(std::chrono::sys_days(std::chrono::days(day))).c_encoding();
        if ((step.days >> wday & 1u) != 0) {
            return std::max(earliest, zone.to_utc(candidate));
        }
        ++day;
        candidate = day * 86400 + step.at_minute.value_or(0) * 60;
    }
    return earliest;  // unreachable: parse_days refuses an empty set
}

namespace detail_sequence {

using namespace toml_errors;

inline std::int64_t get_duration_s(const std::string& file, const std::string& table, std::string_view key,
                                   const toml::node& n, std::int64_t max_s) {
    const std::string text = get_string(file, table, key, n);
    milliseconds d{};
    if (!parse_duration(text, d, step_duration_units, static_cast<std::uint64_t>(max_s) * 1000)) {
        fail(file, n,
             fmt::format("{} {} = \"{}\": expected a duration like \"10m\", \"3d\", \"1d12h\" (units s, m, h, d, w; "
                         "at most {} days)",
                         table, key, text, max_s / 86400));
    }
    return std::chrono::duration_cast<std::chrono::seconds>(d).count();
}

inline std::string beside(const std::string& config_file, const std::string& path) {
    if (path.empty() || path.front() == '/') {
        return path;
    }
    const std::size_t slash = config_file.rfind('/');
    return slash == std::string::npos ? path : config_file.substr(0, slash + 1) + path;
}

inline bool step_id_ok(std::string_view id) {
    return !id.empty() && id.size() <= 64 && std::all_of(id.begin(), id.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    });
}

inline sequence_step get_step(const std::string& file, const std::string& where, const toml::node& node) {
    const auto* t = node.as_table();
    if (t == nullptr) {
        fail(file, node, fmt::format("[[{}.step]] must be a table", where));
    }
    const std::string w = where + ".step";
    const std::string table = fmt::format("[{}]", w);
    sequence_step s;
    bool has_after = false;
    for (auto&& [key, value] : *t) {
        const std::string_view k = key.str();
        if (k == "id") {
            s.id = get_string(file, table, k, value);
            if (!step_id_ok(s.id)) {
                fail(file, value,
                     fmt::format("[[{}]] id = \"{}\": letters, digits, '-' and '_' only (it names a journal file)", w,
                                 s.id));
            }
        } else if (k == "after") {
            s.after_s = get_duration_s(file, table, k, value, step_after_max_s);
            has_after = true;
        } else if (k == "at") {
            const std::string at = get_string(file, table, k, value);
            const bool ok = at.size() == 5 && at[2] == ':' && std::isdigit(static_cast<unsigned char>(at[0])) &&
                            std::isdigit(static_cast<unsigned char>(at[1])) &&
                            std::isdigit(static_cast<unsigned char>(at[3])) &&
                            std::isdigit(static_cast<unsigned char>(at[4]));
            const int h = ok ? (at[0] - '0') * 10 + (at[1] - '0') : 99;
            const int m = ok ? (at[3] - '0') * 10 + (at[4] - '0') : 99;
            if (h > 23 || m > 59) {
                fail(file, value, fmt::format("[[{}]] at = \"{}\": expected a local time of day \"HH:MM\"", w, at));
            }
            s.at_minute = h * 60 + m;
        } else if (k == "days") {
            const std::string days = get_string(file, table, k, value);
            if (!parse_days(days, s.days)) {
                fail(file, value,
                     fmt::format("[[{}]] days = \"{}\": expected weekdays like \"Mon-Fri\" or \"Sat,Sun\"", w, days));
            }
        } else if (k == "message") {
            s.message = beside(file, get_string(file, table, k, value));
        } else if (k == "max_late") {
            const auto* v = value.as_string();
            if (v != nullptr && v->get() == "unlimited") {
                s.max_late_s.reset();
            } else {
                s.max_late_s = get_duration_s(file, table, k, value, step_after_max_s);
            }
        } else {
            fail_unknown_key(file, value, k, fmt::format("[{}]", table), "id, after, at, days, message, max_late");
        }
    }
    if (s.id.empty() || !has_after || s.message.empty()) {
        fail(file, node, fmt::format("[[{}]] needs id, after and message", w));
    }
    return s;
}

}  // namespace detail_sequence

// Parses the [sequence."name"] tables into `out`.
inline void parse_sequence_table(const std::string& file, const toml::node& node, std::vector<sequence_config>& out) {
    using namespace detail_sequence;
    const auto* t = node.as_table();
    if (t == nullptr) {
        fail(file, node, "'sequence' must be a table of tables: [sequence.\"name\"]");
    }
    for (auto&& [name, entry] : *t) {
        sequence_config sc;
        sc.name = std::string(name.str());
        const std::string where = fmt::format("sequence.{}", sc.name);
        const std::string table = fmt::format("[{}]", where);
        if (!step_id_ok(sc.name)) {
            fail(file, entry,
                 fmt::format("{}: a sequence name is letters, digits, '-' and '_' (it names journal files)", table));
        }
        const auto* et = entry.as_table();
        if (et == nullptr) {
            fail(file, entry, fmt::format("{} must be a table", table));
        }
        for (auto&& [key, value] : *et) {
            const std::string_view k = key.str();
            if (k == "anchor") {
                sc.anchor = get_string(file, table, k, value);
            } else if (k == "tz") {
                sc.tz = get_string(file, table, k, value);
                try {
                    (void)time_zone::load(sc.tz);
                } catch (const std::invalid_argument& e) {
                    fail(file, value, fmt::format("{} tz: {}", table, e.what()));
                }
            } else if (k == "suppress") {
                sc.suppress = beside(file, get_string(file, table, k, value));
            } else if (k == "step") {
                const auto* a = value.as_array();
                if (a == nullptr || !a->is_array_of_tables()) {
                    fail(file, value, fmt::format("{}.step must be an array of tables: [[{}.step]]", where, where));
                }
                for (const toml::node& s : *a) {
                    sc.steps.push_back(get_step(file, where, s));
                    for (std::size_t k2 = 0; k2 + 1 < sc.steps.size(); ++k2) {
                        if (sc.steps[k2].id == sc.steps.back().id) {
                            fail(file, s,
                                 fmt::format("[[{}.step]] id \"{}\" twice: each step needs its own journal", where,
                                             sc.steps.back().id));
                        }
                    }
                }
            } else {
                fail_unknown_key(file, value, k, table,
                                 fmt::format("anchor, tz, suppress, and [[{}.step]] tables", where));
            }
        }
        if (sc.anchor.empty() || sc.steps.empty()) {
            fail(file, entry, fmt::format("[{}] needs anchor = \"COLUMN\" and at least one [[{}.step]]", where, where));
        }
        out.push_back(std::move(sc));
    }
}

inline std::string describe_sequences(const std::vector<sequence_config>& seqs) {
    std::string out;
    for (const sequence_config& sc : seqs) {
        out += fmt::format("\n[sequence.{}]\nanchor = \"{}\"\n", sc.name, sc.anchor);
        if (!sc.tz.empty()) {
            out += fmt::format("tz = \"{}\"\n", sc.tz);
        }
        if (!sc.suppress.empty()) {
            out += fmt::format("suppress = \"{}\"\n", sc.suppress);
        }
        for (const sequence_step& s : sc.steps) {
            out += fmt::format("[[sequence.{}.step]]\nid = \"{}\"\nafter = \"{}\"\nmessage = \"{}\"\n", sc.name, s.id,
                               format_duration(std::chrono::seconds(s.after_s)), s.message);
            if (s.at_minute) {
                out += fmt::format("at = \"{:02}:{:02}\"\n", *s.at_minute / 60, *s.at_minute % 60);
            }
            if (s.days != every_day) {
                static constexpr const char* names[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
                std::string days;
                for (int d = 0; d < 7; ++d) {
                    if ((s.days >> d & 1u) != 0) {
                        days += days.empty() ? names[d] : fmt::format(",{}", names[d]);
                    }
                }
                out += fmt::format("days = \"{}\"\n", days);
            }
            out += s.max_late_s
                       ? fmt::format("max_late = \"{}\"\n", format_duration(std::chrono::seconds(*s.max_late_s)))
                       : "max_late = \"unlimited\"\n";
        }
    }
    return out;
}

// When a row is due: for `steps`, its anchor column plus the step; for
// `send`, its send_at column. Zones named in a "tz" column are loaded once.
enum class row_timing : std::uint8_t {
    due,         // send it now
    later,       // not yet: a later run sends it (not journaled)
    late,        // due longer ago than max_late: journaled "skipped"
    unscheduled  // no time, or one we cannot read: passed over, with a reason
};

struct row_schedule {
    row_timing timing = row_timing::due;
    unix_time due_at = 0;
    std::string why;  // late, unscheduled: what to say
};

class row_scheduler {
public:
    // `time_column`: the anchor (steps) or send_at (send); `tz_column`: the
    // per-row zone, or npos. Without a step, an empty time means "now".
    row_scheduler(std::size_t time_column, std::string time_name, std::size_t tz_column, time_zone zone,
                  std::optional<sequence_step> step, unix_time now)
        : _time_column(time_column),
          _time_name(std::move(time_name)),
          _tz_column(tz_column),
          _zone(std::move(zone)),
          _step(std::move(step)),
          _now(now) {}

    row_schedule schedule(const std::vector<std::string_view>& fields) {
        row_schedule r;
        const std::string_view text = _time_column < fields.size() ? trim(fields[_time_column]) : std::string_view{};
        if (text.empty()) {
            if (_step) {
                r.timing = row_timing::unscheduled;
                r.why = fmt::format("no {} (the anchor column is empty)", _time_name);
            }
            return r;  // send_at empty: now
        }
        const time_zone* zone = &_zone;
        if (_tz_column < fields.size() && !trim(fields[_tz_column]).empty()) {
            const std::string name(trim(fields[_tz_column]));
            auto it = _zones.find(name);
            if (it == _zones.end()) {
                std::optional<time_zone> z;
                std::string error;
                try {
                    z = time_zone::load(name);
                } catch (const std::invalid_argument& e) {
                    error = e.what();
                }
                it = _zones.emplace(name, std::make_pair(std::move(z), std::move(error))).first;
            }
            if (!it->second.first) {
                r.timing = row_timing::unscheduled;
                r.why = fmt::format("tz column: {}", it->second.second);
                return r;
            }
            zone = &*it->second.first;
        }
        unix_time t = 0;
        if (!parse_time(text, *zone, t)) {
            r.timing = row_timing::unscheduled;
            r.why = fmt::format("{} = \"{}\" is not a time (RFC 3339, or \"YYYY-MM-DD HH:MM\" in the zone)", _time_name,
                                text);
            return r;
        }
        r.due_at = _step ? step_due(t, *_step, *zone) : t;
        if (r.due_at > _now) {
            r.timing = row_timing::later;
        } else if (_step && _step->max_late_s && _now - r.due_at > *_step->max_late_s) {
            r.timing = row_timing::late;
            r.why =
                fmt::format("step {} was due at {}, more than max_late ({}) before {}", _step->id, format_utc(r.due_at),
                            format_duration(std::chrono::seconds(*_step->max_late_s)), format_utc(_now));
        }
        return r;
    }

private:
    static std::string_view trim(std::string_view s) {
        while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
            s.remove_prefix(1);
        }
        while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
            s.remove_suffix(1);
        }
        return s;
    }

    std::size_t _time_column;
    std::string _time_name;
    std::size_t _tz_column;
    time_zone _zone;
    std::optional<sequence_step> _step;
    unix_time _now;
    std::map<std::string, std::pair<std::optional<time_zone>, std::string>, std::less<>> _zones;
};

}  // namespace mxpress::engine
