// mxpress/engine/shard_router.hpp — which shard a recipient's domain goes to.
//
// A domain lives on one shard for the whole run: its queue, its pools and
// its limits are that shard's. The router places a domain when its first
// row arrives, on the shard that has taken the fewest rows so far (ties: the
// lowest index), and keeps it there. Real lists are skewed (one provider
// often holds a fifth of them or more), and a hash of the name puts big
// domains together by chance: on the bench's list (100,000 rows over 1,000
// domains, the largest 18%) the busiest of 4 shards got 1.40 times its fair
// share by hash, 1.01 placed this way; of 2 shards, 1.12 against 1.01. With
// more shards than that, the largest domain's own share is the bound
// whatever the placement. Large domains come early in any but a sorted
// list, because they have many rows.
//
// Placement follows the order rows are read, so the same file gives the
// same placement; --resume may place a domain elsewhere, which changes
// nothing a user sees (outcomes are journaled by line).
//
// Memory: the first domains_placed_max domains are remembered (about 100
// bytes each with the name); after that, new domains go by a stable hash of
// their name. Those come late and are small, so a hash spreads them evenly.
// State: one thread (the reader) calls route().
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace mxpress::engine {

// 64-bit FNV-1a: stable across runs and machines.
inline std::uint64_t domain_hash(std::string_view s) {
    std::uint64_t h = 1469598103934665603ULL;
    for (char c : s) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ULL;
    }
    return h;
}

class shard_router {
public:
    // 65,536 names: a few MB; lists with more domains than that have long
    // tails of one or two rows each.
    static constexpr std::size_t domains_placed_max = std::size_t{1} << 16;

    explicit shard_router(unsigned shards, std::size_t placed_max = domains_placed_max)
        : _rows(shards == 0 ? 1 : shards, 0), _placed_max(placed_max) {}

    // The shard for one row of `domain` (counted as that shard's).
    unsigned route(std::string_view domain) {
        unsigned k;
        if (auto it = _placed.find(domain); it != _placed.end()) {
            k = it->second;
        } else if (_placed.size() < _placed_max) {
            k = least_loaded();
            _placed.emplace(std::string(domain), k);
        } else {
            k = static_cast<unsigned>(domain_hash(domain) % _rows.size());
        }
        assert(k < _rows.size());
        ++_rows[k];
        return k;
    }

    std::uint64_t rows_of(unsigned shard) const { return _rows.at(shard); }
    std::size_t domains_placed() const noexcept { return _placed.size(); }

private:
    unsigned least_loaded() const noexcept {
        unsigned best = 0;
        for (unsigned k = 1; k < _rows.size(); ++k) {
            if (_rows[k] < _rows[best]) {
                best = k;
            }
        }
        return best;
    }

    struct name_hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    };

    std::vector<std::uint64_t> _rows;  // rows routed to each shard so far
    std::size_t _placed_max;
    std::unordered_map<std::string, unsigned, name_hash, std::equal_to<>> _placed;
};

}  // namespace mxpress::engine
