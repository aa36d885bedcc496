// mxpress/engine/durations.hpp — durations as configuration files write
// them: "500ms", "90s", "1h30m", "2d", a sum of NUMBER UNIT parts.
//
// Its own header so that every reader of a file can use one parser: the
// key = value sections (config.hpp, with the units of duration_units_ms)
// and the sections that parse themselves (sequence.hpp, with its own units),
// which config_values.hpp includes.
//
// Promises: parse_duration never overflows (a sum beyond max_ms is refused
// before it is added), and format_duration writes what parse_duration, with
// the default units, reads back to the same value.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace mxpress::engine {

using milliseconds = std::chrono::milliseconds;

// A unit a duration may use: its name and its length.
struct duration_unit {
    std::string_view name;
    std::uint64_t ms;
};

// The units of the key = value durations. A name that starts another comes
// first ("ms" before "m"): the first that matches is taken.
inline constexpr duration_unit duration_units_ms[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000}, {"d", 86'400'000}};

// Longest duration parse_duration accepts at all (about 31,000 years): far
// beyond every key's own limit, so that the sum of a duration's parts can
// never overflow, and a too-long value gets the key's range error.
inline constexpr std::uint64_t duration_parse_max_ms = 1'000'000'000'000'000ULL;

// Parses "90s", "5m", "1h30m", "250ms", "2d" (or the parts `units` allows;
// max_ms at most duration_parse_max_ms). Returns false when malformed or
// longer than max_ms.
inline bool parse_duration(std::string_view s, milliseconds& out,
                           std::span<const duration_unit> units = duration_units_ms,
                           std::uint64_t max_ms = duration_parse_max_ms) {
    if (s.empty()) {
        return false;
    }
    std::uint64_t total = 0;
    std::size_t i = 0;
    while (i < s.size()) {
        std::uint64_t n = 0;
        const std::size_t start = i;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
            if (n > max_ms) {
                return false;
            }
            n = n * 10 + static_cast<std::uint64_t>(s[i] - '0');
            ++i;
        }
        if (i == start) {
            return false;
        }
        std::uint64_t unit_ms = 0;
        for (const duration_unit& u : units) {
            if (s.substr(i).starts_with(u.name)) {
                unit_ms = u.ms;
                i += u.name.size();
                break;
            }
        }
        if (unit_ms == 0) {
            return false;  // a unit is required
        }
        // n * unit_ms may overflow: compare by division.
        if (n > (max_ms - total) / unit_ms) {
            return false;
        }
        total += n * unit_ms;
    }
    out = milliseconds(static_cast<std::int64_t>(total));
    return true;
}

// The shortest exact spelling: 5400000 ms -> "1h30m", 500 ms -> "500ms".
inline std::string format_duration(milliseconds d) {
    auto ms = static_cast<std::uint64_t>(d.count());
    if (ms == 0) {
        return "0s";
    }
    std::string out;
    const std::pair<std::uint64_t, const char*> units[] = {
        {86'400'000, "d"}, {3'600'000, "h"}, {60'000, "m"}, {1000, "s"}, {1, "ms"}};
    for (const auto& [size, name] : units) {
        if (ms >= size) {
            out += std::to_string(ms / size);
            out += name;
            ms %= size;
        }
    }
    return out;
}

}  // namespace mxpress::engine
