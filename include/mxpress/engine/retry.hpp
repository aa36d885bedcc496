// mxpress/engine/retry.hpp — when a deferred recipient is tried again.
//
// Promises:
// - retry_delay() doubles from retry_initial per attempt, capped at
//   retry_max; a recipient whose next try would fall past max_age since its
//   first attempt expires instead (the caller journals it).
// - retry_queue owns the recipients waiting for their time; pop_due() hands
//   back every one that is due, earliest first.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "mxpress/engine/config.hpp"
#include "mxpress/engine/recipient.hpp"

namespace mxpress::engine {

// The wait before attempt `attempts + 1` (attempts >= 1 made so far).
inline std::chrono::milliseconds retry_delay(const config& cfg, std::uint32_t attempts) {
    auto delay = cfg.retry_initial;
    for (std::uint32_t k = 1; k < attempts && delay < cfg.retry_max; ++k) {
        delay *= 2;
    }
    return std::min(delay, cfg.retry_max);
}

class retry_queue {
public:
    void push(clock::time_point due, std::unique_ptr<recipient> r) {
        _heap.push_back(item{due, std::move(r)});
        std::push_heap(_heap.begin(), _heap.end(), later);
    }

    // Moves every recipient due at `now` onto `out`, earliest first.
    void pop_due(clock::time_point now, std::vector<std::unique_ptr<recipient>>& out) {
        while (!_heap.empty() && _heap.front().due <= now) {
            std::pop_heap(_heap.begin(), _heap.end(), later);
            out.push_back(std::move(_heap.back().r));
            _heap.pop_back();
        }
    }

    bool empty() const noexcept { return _heap.empty(); }
    std::size_t size() const noexcept { return _heap.size(); }
    // Gives each recipient `pick` chooses the time `when` returns for it,
    // asking in the order they were due (a reload books paced mail again).
    template <class Pick, class When>
    void reschedule(Pick&& pick, When&& when) {
        std::vector<std::size_t> chosen;
        for (std::size_t i = 0; i < _heap.size(); ++i) {
            if (pick(*_heap[i].r)) {
                chosen.push_back(i);
            }
        }
        if (chosen.empty()) {
            return;
        }
        std::sort(chosen.begin(), chosen.end(),
                  [&](std::size_t a, std::size_t b) { return _heap[a].due < _heap[b].due; });
        for (std::size_t i : chosen) {
            _heap[i].due = when(*_heap[i].r);
        }
        std::make_heap(_heap.begin(), _heap.end(), later);
    }
    clock::time_point next_due() const noexcept { return _heap.empty() ? clock::time_point::max() : _heap.front().due; }

private:
    struct item {
        clock::time_point due;
        std::unique_ptr<recipient> r;
    };
    static bool later(const item& a, const item& b) noexcept { return a.due > b.due; }

    std::vector<item> _heap;
};

}  // namespace mxpress::engine
