// Tests for engine/time_zone.hpp and engine/sequence.hpp: zones from the
// system's tz database (tzdata), times as people write them, when a step
// is due, and the [sequence] table's strict parsing.
#include "mxpress/engine/sequence.hpp"

#include <gtest/gtest.h>

#include <string>

#include "mxpress/engine/config.hpp"

namespace {

using namespace mxpress::engine;

unix_time at(int y, unsigned mo, unsigned d, int h, int mi, int s = 0) {
    return seconds_from_civil(y, mo, d, h, mi, s);
}

TEST(TimeZone, TokyoIsNineHoursAheadAllYear) {
    const time_zone z = time_zone::load("Asia/Tokyo");
    EXPECT_EQ(z.utc_offset(at(2026, 1, 15, 0, 0)), 9 * 3600);
    EXPECT_EQ(z.utc_offset(at(2026, 7, 15, 0, 0)), 9 * 3600);
    EXPECT_EQ(z.to_utc(at(2026, 11, 28, 9, 0)), at(2026, 11, 28, 0, 0));
    EXPECT_EQ(z.utc_offset(at(2060, 7, 15, 0, 0)), 9 * 3600) << "past the table: the footer";
}

TEST(TimeZone, GapsMoveForwardAndOverlapsTakeTheFirstInstant) {
    const time_zone z = time_zone::load("America/New_York");
    EXPECT_EQ(z.to_utc(at(2026, 1, 10, 12, 0)), at(2026, 1, 10, 17, 0));
    EXPECT_EQ(z.to_utc(at(2026, 7, 10, 12, 0)), at(2026, 7, 10, 16, 0));
    // 02:30 does not exist on 2026-03-08 (02:00 EST -> 03:00 EDT): 03:30 EDT.
    EXPECT_EQ(z.to_utc(at(2026, 3, 8, 2, 30)), 1772955000);
    // 01:30 happens twice on 2026-11-01: the first time, in EDT.
    EXPECT_EQ(z.to_utc(at(2026, 11, 1, 1, 30)), 1793511000);
    EXPECT_EQ(z.to_local(1793511000), at(2026, 11, 1, 1, 30));
}

TEST(TimeZone, YearsPastTheTableFollowTheFooterRule) {
    const time_zone z = time_zone::load("Europe/Berlin");
    // Summer time starts on the last Sunday of March at 01:00 UTC: 2045-03-26.
    EXPECT_EQ(z.utc_offset(at(2045, 3, 26, 0, 59, 59)), 3600);
    EXPECT_EQ(z.utc_offset(at(2045, 3, 26, 1, 0)), 7200);
    // ... and ends on the last Sunday of October at 01:00 UTC: 2045-10-29.
    EXPECT_EQ(z.utc_offset(at(2045, 10, 29, 0, 59, 59)), 7200);
    EXPECT_EQ(z.utc_offset(at(2045, 10, 29, 1, 0)), 3600);
    EXPECT_EQ(z.to_utc(at(2045, 7, 1, 12, 0)), 2382516000);
    EXPECT_EQ(z.to_utc(at(2045, 1, 15, 12, 0)), 2368090800);
}

TEST(TimeZone, PosixRulesOfTheSouthernHemisphereWrapTheYear) {
    const auto r = parse_posix_tz("AEST-10AEDT,M10.1.0,M4.1.0/3");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->offset_at(at(2026, 1, 15, 0, 0)), 11 * 3600);
    EXPECT_EQ(r->offset_at(at(2026, 7, 15, 0, 0)), 10 * 3600);
    EXPECT_EQ(r->offset_at(at(2026, 12, 31, 23, 0)), 11 * 3600);
    const auto quoted = parse_posix_tz("<+0330>-3:30");
    ASSERT_TRUE(quoted);
    EXPECT_EQ(quoted->offset_at(0), 3 * 3600 + 1800);
    for (const char* bad :
         {"", "X-1", "CET-1CEST,M3.5.0", "CET-1CEST,M13.5.0,M10.5.0", "CET-1CEST,M3.5.0,M10.5.0/x", "CET-200"}) {
        EXPECT_FALSE(parse_posix_tz(bad)) << bad;
    }
}

TEST(TimeZone, RefusesNamesOutsideTheDatabaseAndBrokenFiles) {
    EXPECT_THROW(time_zone::load("../../etc/passwd"), std::invalid_argument);
    EXPECT_THROW(time_zone::load("/etc/localtime"), std::invalid_argument);
    EXPECT_THROW(time_zone::load("Mars/Olympus_Mons"), std::invalid_argument);
    EXPECT_THROW(time_zone::from_tzif("x", "TZif2", "x"), std::invalid_argument);
    std::string truncated = mxpress::mail::read_input_file("/usr/share/zoneinfo/Asia/Tokyo", "zone");
    truncated.resize(60);
    EXPECT_THROW(time_zone::from_tzif("x", truncated, "x"), std::invalid_argument);
    EXPECT_EQ(time_zone::load("UTC").utc_offset(at(2026, 6, 1, 0, 0)), 0);
}

TEST(ParseTime, ReadsRfc3339AndWallClockTimesInTheZone) {
    const time_zone tokyo = time_zone::load("Asia/Tokyo");
    unix_time t = 0;
    ASSERT_TRUE(parse_time("2026-11-28T09:30:00+09:00", tokyo, t));
    EXPECT_EQ(t, at(2026, 11, 28, 0, 30));
    ASSERT_TRUE(parse_time("2026-11-28T00:30:00.123Z", tokyo, t));
    EXPECT_EQ(t, at(2026, 11, 28, 0, 30));
    ASSERT_TRUE(parse_time("2026-11-27T20:30:00-0400", tokyo, t));
    EXPECT_EQ(t, at(2026, 11, 28, 0, 30));
    ASSERT_TRUE(parse_time("2026-11-28 09:30", tokyo, t));
    EXPECT_EQ(t, at(2026, 11, 28, 0, 30)) << "no offset: the zone's wall clock";
    ASSERT_TRUE(parse_time("2026-11-28", tokyo, t));
    EXPECT_EQ(t, at(2026, 11, 27, 15, 0));
    for (const char* bad : {"", "2026-02-30 10:00", "2026-11-28 24:00", "2026-11-28T09:30+9", "28.11.2026",
                            "2026-11-28 09:30 JST", "2026-11-28T09:60:00Z", "2026-13-01", "2026-11-28T"}) {
        EXPECT_FALSE(parse_time(bad, tokyo, t)) << bad;
    }
}

sequence_step step(std::int64_t after_s, std::optional<int> at_minute = std::nullopt, const char* days = nullptr) {
    sequence_step s;
    s.id = "s";
    s.after_s = after_s;
    s.at_minute = at_minute;
    if (days != nullptr) {
        EXPECT_TRUE(parse_days(days, s.days)) << days;
    }
    return s;
}

TEST(StepDue, AtAndDaysMoveToTheNextAllowedLocalTime) {
    const time_zone tokyo = time_zone::load("Asia/Tokyo");
    // Signed up Friday 2026-11-27 10:00 JST (01:00Z).
    const unix_time anchor = at(2026, 11, 27, 1, 0);
    EXPECT_EQ(step_due(anchor, step(600), tokyo), anchor + 600);
    // +1d is Saturday 10:00: at 09:00 on a weekday is Monday 09:00 JST.
    EXPECT_EQ(step_due(anchor, step(86400, 9 * 60, "Mon-Fri"), tokyo), at(2026, 11, 30, 0, 0));
    // +0: 09:00 has passed on Friday: Saturday 09:00 (every day allowed).
    EXPECT_EQ(step_due(anchor, step(0, 9 * 60), tokyo), at(2026, 11, 28, 0, 0));
    // Later the same day.
    EXPECT_EQ(step_due(anchor, step(0, 18 * 60), tokyo), at(2026, 11, 27, 9, 0));
    // Days without a time: the start of the next allowed day.
    EXPECT_EQ(step_due(anchor, step(86400, std::nullopt, "Sun"), tokyo), at(2026, 11, 28, 15, 0));
    // A list that wraps the week.
    EXPECT_EQ(step_due(anchor, step(86400, 8 * 60, "Fri-Mon"), tokyo), at(2026, 11, 28, 23, 0));
}

TEST(StepDue, ALocalTimeInASummerTimeGapIsMovedForward) {
    const time_zone ny = time_zone::load("America/New_York");
    // 2026-03-07 12:00 EST + 1d, at 02:30 (does not exist on 03-08): 03:30 EDT.
    EXPECT_EQ(step_due(at(2026, 3, 7, 17, 0), step(0, 2 * 60 + 30), ny), 1772955000);
}

TEST(RowScheduler, DueLaterLateAndUnscheduledRows) {
    sequence_step s = step(3 * 86400);
    s.id = "d3";
    s.max_late_s = 6 * 3600;
    const unix_time now = at(2026, 11, 28, 12, 0);
    row_scheduler r(1, "signup_at", 2, time_zone::load("UTC"), s, now);
    auto when = [&](std::string_view anchor, std::string_view tz = "") {
        std::vector<std::string_view> fields{"a@x.test", anchor, tz};
        return r.schedule(fields);
    };
    EXPECT_EQ(when("2026-11-25 12:00").timing, row_timing::due);
    EXPECT_EQ(when("2026-11-25 06:00").timing, row_timing::due) << "exactly max_late ago";
    const row_schedule late = when("2026-11-25 05:59");
    EXPECT_EQ(late.timing, row_timing::late);
    EXPECT_NE(late.why.find("max_late (6h)"), std::string::npos) << late.why;
    const row_schedule later = when("2026-11-25 12:01");
    EXPECT_EQ(later.timing, row_timing::later);
    EXPECT_EQ(later.due_at, at(2026, 11, 28, 12, 1));
    // 2026-11-25 20:00 in Tokyo is 11:00Z: due at 11:00Z on the 28th.
    EXPECT_EQ(when("2026-11-25 20:00", "Asia/Tokyo").timing, row_timing::due);
    EXPECT_EQ(when("2026-11-25 20:00", "Nowhere/Atlantis").timing, row_timing::unscheduled);
    EXPECT_EQ(when("").timing, row_timing::unscheduled);
    EXPECT_EQ(when("soon").timing, row_timing::unscheduled);
    // send_at (no step): empty is now, a time is due from then on.
    row_scheduler send_at(1, "send_at", std::string::npos, time_zone::load("UTC"), std::nullopt, now);
    std::vector<std::string_view> empty{"a@x.test", ""};
    EXPECT_EQ(send_at.schedule(empty).timing, row_timing::due);
    std::vector<std::string_view> future{"a@x.test", "2026-11-29 00:00"};
    EXPECT_EQ(send_at.schedule(future).timing, row_timing::later);
    std::vector<std::string_view> past{"a@x.test", "2020-01-01 00:00"};
    EXPECT_EQ(send_at.schedule(past).timing, row_timing::due) << "send_at has no max_late";
}

constexpr const char* sequence_toml = R"(
[sequence.welcome]
anchor = "signup_at"
tz = "Asia/Tokyo"
suppress = "unsubscribed.csv"
[[sequence.welcome.step]]
id = "d0"
after = "10m"
message = "welcome.eml"
max_late = "6h"
[[sequence.welcome.step]]
id = "d3"
after = "3d"
at = "09:00"
days = "Mon-Fri"
message = "/srv/tips.eml"
)";

TEST(SequenceConfig, ReadsStepsWithPathsBesideTheFile) {
    const config c = parse_config(sequence_toml, "/etc/mxpress/seq.toml");
    ASSERT_EQ(c.sequences.size(), 1u);
    const sequence_config& s = c.sequences[0];
    EXPECT_EQ(s.name, "welcome");
    EXPECT_EQ(s.anchor, "signup_at");
    EXPECT_EQ(s.tz, "Asia/Tokyo");
    EXPECT_EQ(s.suppress, "/etc/mxpress/unsubscribed.csv");
    ASSERT_EQ(s.steps.size(), 2u);
    EXPECT_EQ(s.steps[0].after_s, 600);
    EXPECT_EQ(s.steps[0].message, "/etc/mxpress/welcome.eml");
    EXPECT_EQ(s.steps[0].max_late_s, 6 * 3600);
    EXPECT_EQ(s.steps[1].at_minute, 9 * 60);
    EXPECT_EQ(s.steps[1].days, 0b0111110);
    EXPECT_EQ(s.steps[1].message, "/srv/tips.eml");
    EXPECT_EQ(s.steps[1].max_late_s, step_max_late_default_s);
    EXPECT_NE(describe(c).find("days = \"Mon,Tue,Wed,Thu,Fri\""), std::string::npos) << describe(c);
}

std::string error_of_sequence(const std::string& text) {
    try {
        (void)parse_config(text, "s.toml");
    } catch (const mxpress::mail::input_error& e) {
        return e.describe();
    }
    return "";
}

TEST(SequenceConfig, MistakesNameTheFileLineAndKey) {
    const std::string head =
        "[sequence.w]\nanchor = \"signup_at\"\n[[sequence.w.step]]\nid = \"d0\"\nmessage = \"m\"\n";
    EXPECT_EQ(error_of_sequence(head + "after = \"10m\"\n"), "");
    EXPECT_NE(error_of_sequence(head + "after = \"10 minutes\"\n").find("s.toml:6: [sequence.w.step] after"),
              std::string::npos);
    EXPECT_NE(error_of_sequence(head + "after = \"1d\"\nat = \"9:00\"\n").find("s.toml:7:"), std::string::npos);
    EXPECT_NE(error_of_sequence(head + "after = \"1d\"\ndays = \"Weekdays\"\n").find("s.toml:7:"), std::string::npos);
    EXPECT_NE(error_of_sequence(head + "after = \"1d\"\nsend = true\n").find("unknown key 'send'"), std::string::npos);
    EXPECT_NE(error_of_sequence(head + "after = \"1d\"\n[[sequence.w.step]]\nid = \"d0\"\nafter = \"2d\"\n"
                                       "message = \"m\"\n")
                  .find("id \"d0\" twice"),
              std::string::npos);
    EXPECT_NE(error_of_sequence(head).find("needs id, after and message"), std::string::npos);
    EXPECT_NE(error_of_sequence("[sequence.w]\nanchor = \"a\"\ntz = \"Nowhere/Atlantis\"\n").find("s.toml:3:"),
              std::string::npos);
    EXPECT_NE(error_of_sequence("[sequence.w]\nanchor = \"a\"\n").find("at least one"), std::string::npos);
    EXPECT_NE(error_of_sequence(head + "after = \"1d\"\nid2 = 1\n").find("s.toml:7:"), std::string::npos);
    EXPECT_NE(error_of_sequence("[sequence.\"a b\"]\n").find("a sequence name"), std::string::npos);
}

}  // namespace
