// mxpress/engine/time_zone.hpp — IANA time zones for step mail, read from
// the system's compiled tz database (TZif files, RFC 8536) because GCC 12's
// libstdc++ has no std::chrono::tzdb.
//
// A zone is its table of transitions plus the POSIX TZ string of the file's
// footer, which gives the rule for every instant after the last transition
// (Debian's files may be "slim": their table ends at the last rule change
// and the footer carries every later year). Times are whole seconds since
// the Unix epoch (UTC); offsets are seconds east of UTC.
//
// Promises:
// - utc_offset(t) is the offset in force at instant t, for any t.
// - to_utc(local) is the instant a wall-clock time names: in a gap (clocks
//   jump forward) the time is moved forward by the gap, as a person would
//   read "02:30" on the day summer time starts; in an overlap (clocks go
//   back) the first of the two instants.
// - load() names the file and what is wrong with it; it never reads
//   outside the zone directory (no "..", no absolute names).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "mxpress/mail/input_error.hpp"

namespace mxpress::engine {

using unix_time = std::int64_t;  // seconds since 1970-01-01T00:00:00Z

// Days since the epoch of a proleptic Gregorian date, and back.
inline std::int64_t days_from_civil(int y, unsigned m, unsigned d) {
    return std::chrono::sys_days(std::chrono::year(y) / std::chrono::month(m) / std::chrono::day(d))
        .time_since_epoch()
        .count();
}

struct civil_time {
    int year = 1970;
    unsigned month = 1, day = 1;
    int hour = 0, minute = 0, second = 0;
    unsigned weekday = 4;  // 0 = Sunday (1970-01-01 was a Thursday)
};

inline civil_time civil_from_seconds(std::int64_t s) {
    const std::int64_t days = s >= 0 ? s / 86400 : -((-s + 86399) / 86400);
    const std::int64_t rest = s - days * 86400;
    const std::chrono::sys_days sd{std::chrono::days(days)};
    const std::chrono::year_month_day ymd(sd);
    civil_time c;
    c.year = int(ymd.year());
    c.month = unsigned(ymd.month());
    c.day = unsigned(ymd.day());
    c.hour = int(rest / 3600);
    c.minute = int(rest % 3600 / 60);
    c.second = int(rest % 60);
    c.weekday = std::chrono::weekday(sd).c_encoding();
    return c;
}

// Seconds since the epoch of a wall-clock time read as if it were UTC.
inline std::int64_t seconds_from_civil(int y, unsigned mo, unsigned d, int h, int mi, int s) {
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
}

namespace detail_tz {

// One change of the POSIX rule: "Mm.w.d", "Jn" or "n", then "/time".
struct rule_date {
    enum class kind : std::uint8_t { month_week_day, julian_no_leap, zero_based } k = kind::month_week_day;
    unsigned month = 0, week = 0, wday = 0, day = 0;
    std::int32_t time = 2 * 3600;  // local time of the change, may be negative or past 24h
};

// Day of the year (days since the epoch) a rule date falls on in year y.
inline std::int64_t rule_day(const rule_date& r, int y) {
    using kind = rule_date::kind;
    switch (r.k) {
        case kind::julian_no_leap: {
            // Jn: 1..365, February 29 never counted.
            std::int64_t d = days_from_civil(y, 1, 1) + r.day - 1;
            const bool leap = std::chrono::year(y).is_leap();
            return leap && r.day >= 60 ? d + 1 : d;
        }
        case kind::zero_based: return days_from_civil(y, 1, 1) + r.day;
        case kind::month_week_day: {
            const std::int64_t first = days_from_civil(y, r.month, 1);
            const unsigned first_wday =
                std::chrono::weekday(std::chrono::sys_days(std::chrono::days(first))).c_encoding();
            std::int64_t d = first + (r.wday + 7 - first_wday) % 7 + 7 * (r.week - 1);
            if (r.week == 5) {
                const unsigned next_month = r.month == 12 ? 1 : r.month + 1;
                const std::int64_t month_end = days_from_civil(r.month == 12 ? y + 1 : y, next_month, 1);
                while (d >= month_end) {
                    d -= 7;
                }
            }
            return d;
        }
    }
    return 0;
}

struct posix_rule {
    std::int32_t std_offset = 0;  // seconds east of UTC
    std::optional<std::int32_t> dst_offset;
    rule_date start, end;

    std::int32_t offset_at(unix_time t) const {
        if (!dst_offset) {
            return std_offset;
        }
        const int y = civil_from_seconds(t + std_offset).year;
        // A transition happens at the local time then in force.
        const unix_time begins = rule_day(start, y) * 86400 + start.time - std_offset;
        const unix_time ends = rule_day(end, y) * 86400 + end.time - *dst_offset;
        const bool in_dst = begins < ends ? (t >= begins && t < ends) : !(t >= ends && t < begins);
        return in_dst ? *dst_offset : std_offset;
    }
};

class posix_parser {
public:
    explicit posix_parser(std::string_view s) : _s(s) {}

    bool parse(posix_rule& out) {
        if (!name() || !offset(out.std_offset, true)) {
            return false;
        }
        if (_i == _s.size()) {
            return true;
        }
        if (!name()) {
            return false;
        }
        std::int32_t dst = out.std_offset + 3600;
        if (_i < _s.size() && _s[_i] != ',' && !offset(dst, true)) {
            return false;
        }
        out.dst_offset = dst;
        if (_i == _s.size()) {
            // No rule: POSIX leaves it to the implementation; the US rule is the customary one.
            out.start = {rule_date::kind::month_week_day, 3, 2, 0, 0, 2 * 3600};
            out.end = {rule_date::kind::month_week_day, 11, 1, 0, 0, 2 * 3600};
            return true;
        }
        return eat(',') && date(out.start) && eat(',') && date(out.end) && _i == _s.size();
    }

private:
    bool eat(char c) {
        if (_i < _s.size() && _s[_i] == c) {
            ++_i;
            return true;
        }
        return false;
    }
    bool number(unsigned& n, unsigned max) {
        const std::size_t start = _i;
        n = 0;
        while (_i < _s.size() && _s[_i] >= '0' && _s[_i] <= '9' && _i - start < 4) {
            n = n * 10 + unsigned(_s[_i++] - '0');
        }
        return _i > start && n <= max;
    }
    bool name() {
        if (eat('<')) {
            const std::size_t close = _s.find('>', _i);
            if (close == std::string_view::npos || close - _i < 3) {
                return false;
            }
            _i = close + 1;
            return true;
        }
        const std::size_t start = _i;
        while (_i < _s.size() && ((_s[_i] >= 'A' && _s[_i] <= 'Z') || (_s[_i] >= 'a' && _s[_i] <= 'z'))) {
            ++_i;
        }
        return _i - start >= 3;
    }
    // [+-]hh[:mm[:ss]]; a POSIX offset is west of UTC, so `east` negates it.
    bool offset(std::int32_t& out, bool east) {
        int sign = 1;
        if (eat('-')) {
            sign = -1;
        } else {
            eat('+');
        }
        unsigned h = 0, m = 0, s = 0;
        if (!number(h, 167)) {
            return false;
        }
        if (eat(':') && (!number(m, 59) || (eat(':') && !number(s, 59)))) {
            return false;
        }
        const std::int32_t v = sign * std::int32_t(h * 3600 + m * 60 + s);
        out = east ? -v : v;
        return true;
    }
    bool date(rule_date& r) {
        unsigned a = 0, b = 0, c = 0;
        if (eat('M')) {
            if (!number(a, 12) || a == 0 || !eat('.') || !number(b, 5) || b == 0 || !eat('.') || !number(c, 6)) {
                return false;
            }
            r = {rule_date::kind::month_week_day, a, b, c, 0, 2 * 3600};
        } else if (eat('J')) {
            if (!number(a, 365) || a == 0) {
                return false;
            }
            r = {rule_date::kind::julian_no_leap, 0, 0, 0, a, 2 * 3600};
        } else {
            if (!number(a, 365)) {
                return false;
            }
            r = {rule_date::kind::zero_based, 0, 0, 0, a, 2 * 3600};
        }
        return !eat('/') || offset(r.time, false);
    }

    std::string_view _s;
    std::size_t _i = 0;
};

}  // namespace detail_tz

// Parses a POSIX TZ string ("JST-9", "CET-1CEST,M3.5.0,M10.5.0/3").
inline std::optional<detail_tz::posix_rule> parse_posix_tz(std::string_view s) {
    detail_tz::posix_rule r;
    detail_tz::posix_parser p(s);
    if (!p.parse(r)) {
        return std::nullopt;
    }
    return r;
}

class time_zone {
public:
    // UTC, or a fixed offset.
    static time_zone fixed(std::string name, std::int32_t offset) {
        time_zone z;
        z._name = std::move(name);
        z._footer = detail_tz::posix_rule{offset, std::nullopt, {}, {}};
        return z;
    }

    // A zone from a TZif file's bytes; `file` names it in errors.
    static time_zone from_tzif(std::string name, std::string_view bytes, const std::string& file);

    // A zone by IANA name ("Asia/Tokyo") from $TZDIR or /usr/share/zoneinfo.
    // "UTC" and "Z" need no file.
    static time_zone load(std::string_view name) {
        if (name == "UTC" || name == "Z" || name == "Etc/UTC") {
            return fixed(std::string(name), 0);
        }
        const bool safe = !name.empty() && name.front() != '/' && name.find("..") == std::string_view::npos &&
                          std::all_of(name.begin(), name.end(), [](char c) {
                              return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                                     c == '/' || c == '_' || c == '-' || c == '+';
                          });
        if (!safe) {
            throw std::invalid_argument(
                fmt::format("'{}' is not a time zone name (like \"Asia/Tokyo\" or \"UTC\")", name));
        }
        const char* dir = std::getenv("TZDIR");
        const std::string path =
            fmt::format("{}/{}", dir != nullptr && *dir != '\0' ? dir : "/usr/share/zoneinfo", name);
        std::string bytes;
        try {
            bytes = mail::read_input_file(path, "time zone file");
        } catch (const mail::input_error&) {
            throw std::invalid_argument(fmt::format(
                "unknown time zone '{}' (no {}; Debian's tzdata package installs the database)", name, path));
        }
        return from_tzif(std::string(name), bytes, path);
    }

    const std::string& name() const noexcept { return _name; }

    std::int32_t utc_offset(unix_time t) const {
        if (_times.empty() || t >= _times.back()) {
            if (_footer) {
                return _footer->offset_at(t);
            }
            return _types.empty() ? 0 : _types[_indices.empty() ? 0 : _indices.back()];
        }
        const auto it = std::upper_bound(_times.begin(), _times.end(), t);
        if (it == _times.begin()) {
            return _types[0];  // before the first transition: the first type (RFC 8536 §3.2)
        }
        return _types[_indices[std::size_t(it - _times.begin()) - 1]];
    }

    // The instant a wall-clock time names (seconds since the epoch as if the
    // wall clock were UTC); gaps and overlaps as the header says.
    unix_time to_utc(std::int64_t local) const {
        // Every transition near `local` lies within a day of it: the offsets
        // a day before and a day after are the only candidates.
        const std::int32_t before = utc_offset(local - 86400 - 14 * 3600);
        const std::int32_t after = utc_offset(local + 86400 + 14 * 3600);
        std::optional<unix_time> best;
        for (const std::int32_t o : {before, after}) {
            const unix_time t = local - o;
            if (utc_offset(t) == o && (!best || t < *best)) {
                best = t;
            }
        }
        if (best) {
            return *best;
        }
        return local - before;  // in a gap: moved forward by its length
    }

    std::int64_t to_local(unix_time t) const { return t + utc_offset(t); }

private:
    std::string _name;
    std::vector<unix_time> _times;       // transitions, ascending
    std::vector<std::uint8_t> _indices;  // type in force from each transition
    std::vector<std::int32_t> _types;    // each type's offset
    std::optional<detail_tz::posix_rule> _footer;
};

inline time_zone time_zone::from_tzif(std::string name, std::string_view b, const std::string& file) {
    auto bad = [&](const char* what) {
        return std::invalid_argument(fmt::format("time zone '{}': {} is not a valid TZif file ({})", name, file, what));
    };
    auto be = [&](std::size_t at, int bytes) -> std::int64_t {
        std::uint64_t v = 0;
        for (int k = 0; k < bytes; ++k) {
            v = v << 8 | static_cast<unsigned char>(b[at + std::size_t(k)]);
        }
        if (bytes == 4) {
            return static_cast<std::int32_t>(static_cast<std::uint32_t>(v));
        }
        return static_cast<std::int64_t>(v);
    };
    constexpr std::size_t header_size = 44;
    struct counts {
        std::size_t isut, isstd, leap, time, type, chars;
    };
    auto header = [&](std::size_t at) {
        if (b.size() < at + header_size || b.substr(at, 4) != "TZif") {
            throw bad("no TZif header");
        }
        counts c{};
        c.isut = std::size_t(be(at + 20, 4));
        c.isstd = std::size_t(be(at + 24, 4));
        c.leap = std::size_t(be(at + 28, 4));
        c.time = std::size_t(be(at + 32, 4));
        c.type = std::size_t(be(at + 36, 4));
        c.chars = std::size_t(be(at + 40, 4));
        if (c.type == 0 || c.type > 256 || c.time > 100'000 || c.chars > 100'000 || c.leap > 100'000 || c.isut > 256 ||
            c.isstd > 256) {
            throw bad("counts out of range");
        }
        return c;
    };
    auto block_size = [](const counts& c, int time_bytes) {
        return c.time * std::size_t(time_bytes) + c.time + c.type * 6 + c.chars + c.leap * std::size_t(time_bytes + 4) +
               c.isstd + c.isut;
    };
    counts c = header(0);
    const char version = b[4];
    std::size_t at = header_size;
    int time_bytes = 4;
    if (version >= '2') {
        // Skip the 32-bit block: the 64-bit one after it covers every year.
        at += block_size(c, 4);
        c = header(at);
        at += header_size;
        time_bytes = 8;
    }
    if (b.size() < at + block_size(c, time_bytes)) {
        throw bad("truncated");
    }
    time_zone z;
    z._name = std::move(name);
    for (std::size_t k = 0; k < c.time; ++k) {
        z._times.push_back(be(at + k * std::size_t(time_bytes), time_bytes));
    }
    at += c.time * std::size_t(time_bytes);
    for (std::size_t k = 0; k < c.time; ++k) {
        const auto idx = static_cast<std::uint8_t>(b[at + k]);
        if (idx >= c.type) {
            throw bad("transition names a missing type");
        }
        z._indices.push_back(idx);
    }
    at += c.time;
    for (std::size_t k = 0; k < c.type; ++k) {
        z._types.push_back(static_cast<std::int32_t>(be(at + k * 6, 4)));
    }
    at += c.type * 6 + c.chars + c.leap * std::size_t(time_bytes + 4) + c.isstd + c.isut;
    if (!std::is_sorted(z._times.begin(), z._times.end())) {
        throw bad("transitions out of order");
    }
    if (version >= '2' && at < b.size() && b[at] == '\n') {
        const std::size_t end = b.find('\n', at + 1);
        if (end == std::string_view::npos) {
            throw bad("footer without its closing newline");
        }
        const std::string_view tz = b.substr(at + 1, end - at - 1);
        if (!tz.empty()) {
            z._footer = parse_posix_tz(tz);
            if (!z._footer) {
                throw bad("footer TZ string not understood");
            }
        }
    }
    return z;
}

}  // namespace mxpress::engine
