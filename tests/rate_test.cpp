// The limiter behind max_message_rate and max_connection_rate: GCRA, one
// thread (gcra) and shared by every shard (shared_gcra).
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "mxpress/engine/rate.hpp"

using namespace mxpress::engine;
using namespace std::chrono_literals;

namespace {

rate parsed(const char* text) {
    rate r;
    EXPECT_TRUE(parse_rate(text, r)) << text;
    return r;
}

}  // namespace

// A destination that always has work gets exactly the rate: over a
// simulated hour at 10/s, 36,000 cells (+1: the first is free), each taken
// the moment take() said it would be.
TEST(Rate, AlwaysBusyGetsExactlyTheRate) {
    gcra g(parsed("10/s"));
    clock::time_point now{};
    const clock::time_point end = now + 1h;
    std::size_t taken = 0;
    while (now <= end) {
        clock::time_point when{};
        if (g.take(now, when)) {
            ++taken;
        } else {
            ASSERT_GT(when, now);
            now = when;
        }
    }
    EXPECT_EQ(taken, 36'001u);
}

// No burst beyond the documented one: after a quiet spell, B cells at once,
// then the spacing again; with the default burst of 1, one.
TEST(Rate, BurstIsBoundedByTheRate) {
    for (const auto& [text, burst] : {std::pair{"60/min,burst=5", 5}, std::pair{"60/min", 1}}) {
        gcra g(parsed(text));
        const clock::time_point t0 = clock::time_point{} + 10h;
        int at_once = 0;
        clock::time_point when{};
        while (g.take(t0, when)) {
            ++at_once;
            ASSERT_LE(at_once, 1000);
        }
        EXPECT_EQ(at_once, burst) << text;
        EXPECT_EQ(when, t0 + 1s) << text;
        EXPECT_EQ(g.next_free(t0), t0 + 1s);
        EXPECT_TRUE(g.take(t0 + 1s, when));
        EXPECT_FALSE(g.take(t0 + 1s, when));
    }
}

TEST(Rate, UnlimitedNeverWaits) {
    gcra g(parsed("unlimited"));
    clock::time_point when{};
    for (int i = 0; i < 1000; ++i) {
        EXPECT_TRUE(g.take(clock::time_point{}, when));
    }
    shared_gcra s(parsed("unlimited"));
    EXPECT_TRUE(s.take(clock::time_point{}, when));
}

// One budget for every shard: two threads hammering a shared 100/s limit
// over one simulated second (both see the same clock) take 100 + 1 cells
// together, not each.
TEST(Rate, SharedBudgetIsExactAcrossThreads) {
    shared_gcra s(parsed("100/s"));
    std::atomic<std::size_t> taken{0};
    const clock::time_point t0 = clock::time_point{} + 1h;
    auto worker = [&] {
        for (int ms = 0; ms <= 1000; ++ms) {
            const clock::time_point now = t0 + std::chrono::milliseconds(ms);
            clock::time_point when{};
            for (int k = 0; k < 50 && s.take(now, when); ++k) {
                taken.fetch_add(1);
            }
        }
    };
    std::vector<std::thread> threads;
    for (int i = 0; i < 2; ++i) {
        threads.emplace_back(worker);
    }
    for (auto& t : threads) {
        t.join();
    }
    // Each thread's clock runs on its own, so a slower thread may take at a
    // time the other has passed; the budget still bounds the total.
    EXPECT_LE(taken.load(), 101u);
    EXPECT_GE(taken.load(), 100u);
}
