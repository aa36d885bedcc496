// The progress line of `send --progress` (mxpress/engine/progress.hpp).
#include "mxpress/engine/progress.hpp"

#include <gtest/gtest.h>

#include <string>

namespace {

using namespace mxpress::engine;

progress_counts half() {
    progress_counts c;
    c.total_known = true;
    c.total = 30000;
    c.read = 30000;
    c.done = 15000;
    c.delivered = 14990;
    c.deferred = 7;
    c.failed = 10;
    c.in_flight = 23;
    c.seconds = 60;
    return c;
}

TEST(Progress, ThousandsSeparators) {
    EXPECT_EQ(thousands(0), "0");
    EXPECT_EQ(thousands(999), "999");
    EXPECT_EQ(thousands(1000), "1,000");
    EXPECT_EQ(thousands(13377), "13,377");
    EXPECT_EQ(thousands(1234567), "1,234,567");
    EXPECT_EQ(thousands(18446744073709551615ULL), "18,446,744,073,709,551,615");
}

TEST(Progress, RateHasThreeSignificantDigits) {
    EXPECT_EQ(human_rate(17240247), "17.2M/h");
    EXPECT_EQ(human_rate(1800000), "1.80M/h");
    EXPECT_EQ(human_rate(172400), "172k/h");
    EXPECT_EQ(human_rate(999), "999/h");
    EXPECT_EQ(human_rate(999.6), "1.00k/h");
    EXPECT_EQ(human_rate(0), "0/h");
    EXPECT_EQ(human_rate(2.5e9), "2.50G/h");
}

TEST(Progress, DurationReadsAsMinutesAndHours) {
    EXPECT_EQ(human_duration(0), "0s");
    EXPECT_EQ(human_duration(3.2), "3s");
    EXPECT_EQ(human_duration(59), "59s");
    EXPECT_EQ(human_duration(83), "1m23s");
    EXPECT_EQ(human_duration(600), "10m00s");
    EXPECT_EQ(human_duration(7500), "2h05m");
    EXPECT_EQ(human_duration(-1), "0s");
}

TEST(Progress, BarAtZeroHalfAndFull) {
    EXPECT_EQ(progress_bar(0, 10), "[..........]");
    EXPECT_EQ(progress_bar(0.5, 10), "[=====>....]");
    EXPECT_EQ(progress_bar(1, 10), "[==========]");

    progress_counts c = half();
    c.done = 0;
    c.delivered = c.failed = 0;
    std::string line = format_progress(c, 200, true);
    EXPECT_EQ(line.rfind("[..............................]    0%  0 / 30,000  0/h  ETA --", 0), 0U) << line;

    line = format_progress(half(), 200, true);
    EXPECT_EQ(line.rfind("[===============>..............]   50%  15,000 / 30,000  899k/h", 0), 0U) << line;

    c = half();
    c.done = 30000;
    line = format_progress(c, 200, true);
    EXPECT_EQ(line.rfind("[==============================]  100%  30,000 / 30,000", 0), 0U) << line;
    EXPECT_NE(line.find("ETA 0s"), std::string::npos) << line;
}

TEST(Progress, ShowsEveryCountAndTheEta) {
    const std::string line = format_progress(half(), 200, true);
    EXPECT_EQ(line,
              "[===============>..............]   50%  15,000 / 30,000  899k/h  ETA 1m00s  delivered 14,990  "
              "deferred 7  failed 10  in flight 23");
}

TEST(Progress, NeverWiderThanTheTerminal) {
    progress_counts c = half();
    c.total = c.read = 123456789012ULL;
    c.done = c.delivered = 12345678901ULL;
    for (unsigned width = 0; width <= 200; ++width) {
        const std::string line = format_progress(c, width, true);
        EXPECT_LE(line.size(), width) << line;
    }
    // At 80 columns the bar, the counts, the rate and the ETA stay.
    const std::string line = format_progress(half(), 80, true);
    EXPECT_EQ(line.rfind("[", 0), 0U) << line;
    EXPECT_NE(line.find(" 50%  15,000 / 30,000  899k/h  ETA 1m00s"), std::string::npos) << line;
    // Narrower than everything: the bar goes before the numbers.
    EXPECT_EQ(format_progress(half(), 40, true), " 50%  15,000 / 30,000  899k/h  ETA 1m00s");
}

TEST(Progress, UnknownTotalShowsRowsReadWithoutPercentage) {
    progress_counts c = half();
    c.total_known = false;
    c.total = 0;
    c.read = 20000;
    const std::string line = format_progress(c, 200, true);
    EXPECT_EQ(line, "15,000 / 20,000+ read  899k/h  delivered 14,990  deferred 7  failed 10  in flight 23");
    EXPECT_EQ(line.find('%'), std::string::npos);
    EXPECT_EQ(line.find('['), std::string::npos);
}

TEST(Progress, PlainLineHasNoBarNoEscapesAndEveryField) {
    const std::string line = format_progress(half(), 20, false);
    EXPECT_EQ(line, " 50%  15,000 / 30,000  899k/h  ETA 1m00s  delivered 14,990  deferred 7  failed 10  in flight 23");
    EXPECT_EQ(line.find('\r'), std::string::npos);
    EXPECT_EQ(line.find('\033'), std::string::npos);
}

}  // namespace

// 58 of 100 is 58%: the percentage is computed in integers (in doubles,
// floor(0.58 * 100.0) is 57; seen in the tmux test under TSan).
TEST(Progress, PercentageIsExactForEveryCountOfAHundred) {
    for (std::uint64_t done = 0; done <= 100; ++done) {
        progress_counts c;
        c.total_known = true;
        c.total = 100;
        c.done = done;
        c.read = 100;
        c.delivered = done;
        c.seconds = 1;
        const std::string line = format_progress(c, 200, true);
        EXPECT_NE(line.find(fmt::format("{:3}%", done)), std::string::npos) << line;
    }
}

namespace {

// What a rule holds back shows on the line: last on a wide terminal and in
// a log line, dropped before the counts that matter most on a narrow one.
TEST(Progress, HeldBackDestinationsShowWithWhy) {
    progress_counts c = half();
    EXPECT_EQ(format_progress(c, 200, false).find("held back"), std::string::npos);
    c.held = 2;
    c.held_example = "gmail.com: scaled to 1.50/s by gmail-rate";
    const std::string plain = format_progress(c, 200, false);
    EXPECT_NE(plain.find("  held back 2 (gmail.com: scaled to 1.50/s by gmail-rate)"), std::string::npos) << plain;
    const std::string wide = format_progress(c, 200, true);
    EXPECT_NE(wide.find("held back 2 (gmail.com"), std::string::npos) << wide;
    const std::string narrow = format_progress(c, 80, true);
    EXPECT_LE(narrow.size(), 80u);
    EXPECT_NE(narrow.find("15,000 / 30,000"), std::string::npos) << narrow;
}

}  // namespace
