// shard_router: a domain stays on one shard, and a skewed list loads the
// shards evenly (a hash of the name does not).
#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "mxpress/engine/shard_router.hpp"

using mxpress::engine::domain_hash;
using mxpress::engine::shard_router;

namespace {

// A list like the bench's: domain k has weight 1/(k+1) (Zipf), rows
// shuffled by a seeded generator.
std::vector<std::string> skewed_list(std::size_t rows, std::size_t domains, std::uint32_t seed) {
    std::vector<double> weights;
    for (std::size_t k = 0; k < domains; ++k) {
        weights.push_back(1.0 / static_cast<double>(k + 1));
    }
    std::mt19937 rng(seed);
    std::discrete_distribution<std::size_t> pick(weights.begin(), weights.end());
    std::vector<std::string> out;
    out.reserve(rows);
    for (std::size_t i = 0; i < rows; ++i) {
        out.push_back("d" + std::to_string(pick(rng)) + ".test");
    }
    return out;
}

// The busiest shard's rows over a fair share (1.0: perfectly even).
double busiest_share(const std::vector<std::uint64_t>& rows) {
    std::uint64_t total = 0;
    for (auto r : rows) {
        total += r;
    }
    return static_cast<double>(*std::max_element(rows.begin(), rows.end())) * static_cast<double>(rows.size()) /
           static_cast<double>(total);
}

}  // namespace

TEST(ShardRouter, ADomainStaysOnTheShardItWasPlacedOn) {
    shard_router router(4);
    std::map<std::string, unsigned> first;
    for (const std::string& d : skewed_list(20'000, 300, 7)) {
        const unsigned k = router.route(d);
        ASSERT_LT(k, 4u);
        auto [it, fresh] = first.emplace(d, k);
        ASSERT_EQ(it->second, k) << d << " moved from shard " << it->second;
    }
    EXPECT_EQ(router.domains_placed(), first.size());
}

TEST(ShardRouter, ANewDomainGoesToTheShardWithTheFewestRowsTiesToTheLowest) {
    shard_router router(3);
    EXPECT_EQ(router.route("a.test"), 0u);
    EXPECT_EQ(router.route("a.test"), 0u);
    EXPECT_EQ(router.route("b.test"), 1u);
    EXPECT_EQ(router.route("c.test"), 2u);  // 2, 1, 0 rows
    EXPECT_EQ(router.route("d.test"), 1u);  // 2, 1, 1: the lowest of the least loaded
    EXPECT_EQ(router.route("e.test"), 2u);  // 2, 2, 1
    EXPECT_EQ(router.rows_of(0), 2u);
    EXPECT_EQ(router.rows_of(1), 2u);
    EXPECT_EQ(router.rows_of(2), 2u);
}

TEST(ShardRouter, ASkewedListLoadsTheShardsEvenlyWhereAHashDoesNot) {
    for (std::uint32_t seed = 1; seed <= 5; ++seed) {
        const auto list = skewed_list(100'000, 1'000, seed);
        for (unsigned shards : {2u, 4u}) {
            shard_router router(shards);
            std::vector<std::uint64_t> placed(shards, 0), hashed(shards, 0);
            for (const std::string& d : list) {
                ++placed[router.route(d)];
                ++hashed[domain_hash(d) % shards];
            }
            // The largest domain holds about 13% of this list: even four
            // shards can be loaded within a few percent.
            EXPECT_LT(busiest_share(placed), 1.05) << "seed " << seed << ", " << shards << " shards";
            EXPECT_LE(busiest_share(placed), busiest_share(hashed)) << "seed " << seed << ", " << shards << " shards";
        }
    }
}

TEST(ShardRouter, PastItsMemoryNewDomainsGoByAStableHash) {
    shard_router router(4, 2);
    EXPECT_EQ(router.route("a.test"), 0u);
    EXPECT_EQ(router.route("b.test"), 1u);
    for (int i = 0; i < 50; ++i) {
        const std::string d = "late" + std::to_string(i) + ".test";
        EXPECT_EQ(router.route(d), domain_hash(d) % 4) << d;
        EXPECT_EQ(router.route(d), domain_hash(d) % 4) << d;
    }
    EXPECT_EQ(router.domains_placed(), 2u);
    EXPECT_EQ(router.route("a.test"), 0u) << "placed domains stay";
}

TEST(ShardRouter, OneShardTakesEverything) {
    shard_router one(1), none(0);
    for (const char* d : {"a.test", "b.test", "c.test"}) {
        EXPECT_EQ(one.route(d), 0u);
        EXPECT_EQ(none.route(d), 0u);
    }
}
