// provider_state's connections_max as the shards share it: one count, and
// places split fairly while more than one shard wants them.
#include <chrono>
#include <cstdint>

#include <gtest/gtest.h>

#include "mxpress/engine/provider.hpp"

using namespace mxpress::engine;
using namespace std::chrono_literals;

namespace {

provider_config with_places(std::uint32_t connections_max) {
    provider_config c;
    c.name = "prov";
    c.match = {"*.prov.test"};
    c.connections_max = connections_max;
    return c;
}

}  // namespace

TEST(ProviderShare, SharesAddUpToTheLimitWithTheRemainderToTheLowestRanks) {
    EXPECT_EQ(provider_state::share_of(0, 2, 3), 2u);
    EXPECT_EQ(provider_state::share_of(1, 2, 3), 1u);
    EXPECT_EQ(provider_state::share_of(0, 1, 3), 3u);
    EXPECT_EQ(provider_state::share_of(3, 4, 2), 1u) << "never less than one place";
    for (std::uint32_t max = 1; max <= 20; ++max) {
        for (unsigned sharing = 1; sharing <= max; ++sharing) {
            std::uint32_t sum = 0;
            for (unsigned rank = 0; rank < sharing; ++rank) {
                sum += provider_state::share_of(rank, sharing, max);
            }
            EXPECT_EQ(sum, max) << max << " places over " << sharing << " shards";
        }
    }
}

// Three places, two shards that both want: the split settles at 2 and 1 and
// nobody is asked to give a place back again (each such turn costs a
// connection closed and another opened, under max_connection_rate).
TEST(ProviderShare, AnUnevenSplitSettlesWithoutGivingPlacesBackAndForth) {
    const provider_config cfg = with_places(3);
    provider_state p(cfg);
    const clock::time_point t0{std::chrono::seconds(1000)};

    // Shard 0 alone takes every place.
    for (int k = 0; k < 3; ++k) {
        ASSERT_TRUE(p.try_open(0, t0));
    }
    EXPECT_FALSE(p.should_yield(0, t0)) << "nobody else wants one";

    // Shard 1 is refused at the limit, so shard 0 gives one back...
    EXPECT_FALSE(p.try_open(1, t0 + 10ms));
    EXPECT_TRUE(p.should_yield(0, t0 + 20ms));
    p.closed(0);
    // ...and keeps two: its share of three over two shards.
    EXPECT_FALSE(p.should_yield(0, t0 + 30ms));
    ASSERT_TRUE(p.try_open(1, t0 + 40ms));
    EXPECT_EQ(p.connections(), 3u);

    // Shard 1 wants a second place: the limit refuses it, and shard 0, at
    // its share, keeps what it holds.
    EXPECT_FALSE(p.try_open(1, t0 + 50ms));
    EXPECT_FALSE(p.should_yield(0, t0 + 60ms));
    EXPECT_FALSE(p.should_yield(1, t0 + 60ms));

    // Shard 0 wants a third place while shard 1 wants too: it may not take one.
    p.closed(1);
    EXPECT_FALSE(p.try_open(0, t0 + 70ms)) << "over its share while shard 1 wants";
    EXPECT_TRUE(p.try_open(1, t0 + 80ms)) << "shard 1 is under its share";
    EXPECT_EQ(p.connections(), 3u);
}

// The shard with the larger share is the one ranked first; the other one,
// holding two, gives one back when the first wants.
TEST(ProviderShare, TheShardOverItsShareGivesBack) {
    const provider_config cfg = with_places(3);
    provider_state p(cfg);
    const clock::time_point t0{std::chrono::seconds(1000)};
    ASSERT_TRUE(p.try_open(1, t0));
    ASSERT_TRUE(p.try_open(1, t0));
    ASSERT_TRUE(p.try_open(0, t0));
    EXPECT_FALSE(p.try_open(0, t0 + 10ms));  // at the limit: shard 0 wants
    EXPECT_TRUE(p.should_yield(1, t0 + 20ms));
    p.closed(1);
    EXPECT_FALSE(p.should_yield(1, t0 + 30ms));
    EXPECT_TRUE(p.try_open(0, t0 + 40ms));
    // A want older than two rechecks is forgotten: shard 1 may take places again.
    p.closed(0);
    p.closed(0);
    EXPECT_TRUE(p.try_open(1, t0 + 40ms + 3 * provider_state::recheck));
}

// An idle connection gives its place back early only while every place is
// taken and some shard was refused one lately.
TEST(ProviderShare, AnIdlePlaceIsWantedOnlyAtTheLimitAndWhileSomeoneWaits) {
    const provider_config cfg = with_places(2);
    provider_state p(cfg);
    const clock::time_point t0{std::chrono::seconds(1000)};
    ASSERT_TRUE(p.try_open(0, t0));
    EXPECT_FALSE(p.wants_idle_place(t0)) << "below the limit";
    ASSERT_TRUE(p.try_open(0, t0));
    EXPECT_FALSE(p.wants_idle_place(t0)) << "at the limit, nobody refused";
    EXPECT_FALSE(p.try_open(0, t0 + 10ms));  // the shard's other host wants one
    EXPECT_TRUE(p.wants_idle_place(t0 + 20ms));
    EXPECT_FALSE(p.wants_idle_place(t0 + 20ms + 2 * provider_state::recheck)) << "the want is stale";
    const provider_config open = with_places(0);
    provider_state unlimited(open);
    ASSERT_TRUE(unlimited.try_open(0, t0));
    EXPECT_FALSE(unlimited.wants_idle_place(t0)) << "no connections_max";
}
