// mxpress/engine/shard_threads.hpp — the threads of a run besides the
// reader: the shard threads (one shard each, started together, joined by
// the destructor whatever happened) and periodic_thread (the metrics
// sampler and the progress line); and how a domain picks its shard.
//
// Never a joinable thread unwound: every class here joins in its
// destructor. A shard that fails records why (run_error) and aborts its
// mailbox, so the reader cannot block on it.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "mxpress/engine/options.hpp"
#include "mxpress/engine/shard.hpp"
#include "mxpress/engine/shared_journal.hpp"
#include "mxpress/mail/message_template.hpp"

namespace mxpress::engine {

// Calls `fn` at once, then every `period`, on its own thread until stop()
// (the destructor stops it and joins: never a joinable thread unwound).
class periodic_thread {
public:
    periodic_thread(std::chrono::milliseconds period, std::function<void()> fn)
        : _thread([this, period, fn = std::move(fn)]() {
              std::unique_lock lock(_mutex);
              while (!_stop) {
                  lock.unlock();
                  fn();
                  lock.lock();
                  _wake.wait_for(lock, period, [this]() { return _stop; });
              }
          }) {}
    periodic_thread(const periodic_thread&) = delete;
    periodic_thread& operator=(const periodic_thread&) = delete;
    ~periodic_thread() { stop(); }

    void stop() {
        {
            std::lock_guard lock(_mutex);
            _stop = true;
        }
        _wake.notify_all();
        if (_thread.joinable()) {
            _thread.join();
        }
    }

private:
    std::mutex _mutex;
    std::condition_variable _wake;
    bool _stop = false;
    std::thread _thread;  // last: starts after the members it uses
};

// What the reader counts, for the metrics sampler (written by the reader only).
struct reader_counts {
    std::atomic<std::uint64_t> rows{0};
    std::atomic<std::uint64_t> skipped{0};
    std::atomic<std::uint64_t> invalid{0};
    std::atomic<std::uint64_t> suppressed{0};
    std::atomic<std::uint64_t> late{0};    // step mail: journaled "skipped"
    std::atomic<std::uint64_t> passed{0};  // not due yet, or without a time: not journaled

    static void add(std::atomic<std::uint64_t>& counter) noexcept { counter.fetch_add(1, std::memory_order_relaxed); }
};

// A shard failed (it could not start, or its journal writes failed): the run
// cannot finish. main() reports it with exit status 1.
struct run_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The shard threads: started together, each owning its shard, joined by
// the destructor whatever happened (never a joinable thread unwound).
class shard_threads {
public:
    // `on_failure` (may be empty) runs on a shard's thread when that shard
    // fails: the runner wakes a reader that waits on a pipe with it.
    shard_threads(unsigned n, const shard_options& so, const mail::message_template& tmpl, shared_journal& journal,
                  std::function<void()> on_failure = {})
        : _shards(n), _errors(n), _on_failure(std::move(on_failure)) {
        for (unsigned i = 0; i < n; ++i) {
            _stats.push_back(std::make_unique<shard_stats>());
        }
        const unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
        // Each shard is built on its own thread: a SINGLE_ISSUER ring belongs
        // to the thread that created it.
        std::latch built(n);
        for (unsigned i = 0; i < n; ++i) {
            _threads.emplace_back([&, i]() {
                try {
                    _shards[i] = std::make_unique<shard>(i, so, tmpl, journal, *_stats[i]);
                } catch (...) {
                    _errors[i] = std::current_exception();
                    _failed.store(true);
                    if (_on_failure) {
                        _on_failure();
                    }
                    built.count_down();
                    _done.fetch_add(1);
                    return;
                }
                built.count_down();
                try {
                    _shards[i]->run();
                } catch (...) {
                    _errors[i] = std::current_exception();
                    _failed.store(true);
                    _shards[i]->mailbox().abort();  // the reader must not block on it
                    if (_on_failure) {
                        _on_failure();  // nor on the recipients file
                    }
                }
                _done.fetch_add(1);
            });
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(i % cpus, &set);
            pthread_setaffinity_np(_threads.back().native_handle(), sizeof set, &set);
        }
        built.wait();
    }
    shard_threads(const shard_threads&) = delete;
    shard_threads& operator=(const shard_threads&) = delete;
    ~shard_threads() {
        close_input();
        join();
    }

    unsigned size() const noexcept { return static_cast<unsigned>(_shards.size()); }
    bool failed() const noexcept { return _failed.load(); }
    unsigned done() const noexcept { return _done.load(); }
    shard_stats& stats(unsigned i) { return *_stats[i]; }
    const shard_stats& stats(unsigned i) const { return *_stats[i]; }
    shard& at(unsigned i) { return *_shards[i]; }
    shard* find(unsigned i) { return _shards[i].get(); }

    // Hands a batch to shard i. False when that shard failed (nothing taken).
    bool push(unsigned i, shard::mail_batch&& batch) {
        return _shards[i] != nullptr && _shards[i]->mailbox().push(std::move(batch));
    }

    void close_input() {
        for (auto& s : _shards) {
            if (s != nullptr) {
                s->mailbox().close();
            }
        }
    }

    void join() {
        for (std::thread& th : _threads) {
            if (th.joinable()) {
                th.join();
            }
        }
    }

    // After join(): the first shard failure, as a run_error.
    void rethrow_failure() const {
        for (std::size_t i = 0; i < _errors.size(); ++i) {
            if (_errors[i]) {
                try {
                    std::rethrow_exception(_errors[i]);
                } catch (const std::exception& e) {
                    throw run_error(fmt::format("shard {} failed: {}", i, e.what()));
                }
            }
        }
    }

private:
    std::vector<std::unique_ptr<shard>> _shards;
    std::vector<std::unique_ptr<shard_stats>> _stats;
    std::vector<std::exception_ptr> _errors;  // written by thread i before _done counts it
    std::vector<std::thread> _threads;
    std::atomic<bool> _failed{false};
    std::function<void()> _on_failure;
    std::atomic<unsigned> _done{0};
};

}  // namespace mxpress::engine
