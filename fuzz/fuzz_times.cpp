// Fuzzes what step mail reads from user files and the system: times as
// written in a recipients file or on the command line, POSIX TZ strings,
// weekday lists, and TZif bytes (engine/time_zone.hpp, engine/sequence.hpp).
// The first byte picks the parser; a zone that loads must answer every
// conversion with an offset a real zone could have.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "mxpress/engine/sequence.hpp"

namespace {

using namespace mxpress::engine;

// Offsets beyond this are no zone's (the tz database's extremes are about ±15 h;
// POSIX allows hours up to 24, and a TZif file up to 2^31 seconds, so we bound
// what we check, not what we accept).
constexpr std::int64_t instant_span = 1LL << 40;

void exercise(const time_zone& z, std::string_view data) {
    std::int64_t t = 0;
    for (unsigned char c : data.substr(0, 8)) {
        t = t << 8 | c;
    }
    t %= instant_span;
    (void)z.utc_offset(t);
    (void)z.to_local(t);
    (void)z.to_utc(t);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* bytes, std::size_t size) {
    if (size == 0) {
        return 0;
    }
    const std::string_view data(reinterpret_cast<const char*>(bytes) + 1, size - 1);
    switch (bytes[0] % 4) {
        case 0: {
            unix_time t = 0;
            const time_zone utc = time_zone::fixed("UTC", 0);
            if (parse_time(data, utc, t)) {
                // A time that parses prints as one that parses to the same instant.
                unix_time again = 0;
                if (!parse_time(format_utc(t), utc, again) || again != t) {
                    std::abort();
                }
            }
            break;
        }
        case 1:
            if (const auto rule = parse_posix_tz(data)) {
                exercise(time_zone::fixed("x", rule->std_offset), data);
                (void)rule->offset_at(static_cast<unix_time>(data.size()) * 86400 * 400);
            }
            break;
        case 2: {
            std::uint8_t days = 0;
            if (parse_days(data, days) && (days == 0 || days > every_day)) {
                std::abort();
            }
            break;
        }
        case 3: try { exercise(time_zone::from_tzif("fuzz", data, "fuzz"), data);
            } catch (const std::invalid_argument&) {
                // refused: what a broken file should get
            }
            break;
    }
    return 0;
}
