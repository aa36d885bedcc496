// mxpress/io/mailbox.hpp — bounded hand-off from the reader thread to one
// shard, with an eventfd the shard's ring watches.
//
// Promises:
// - At most depth_max batches wait in the mailbox: push() blocks the reader
//   when it is full (backpressure), so memory does not grow with the input.
// - The shard never blocks: it polls the eventfd through its ring and takes
//   everything waiting with take_all().
// - Items travel in batches so the lock is taken once per batch, not per
//   recipient.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <system_error>
#include <vector>

#include <sys/eventfd.h>
#include <unistd.h>

namespace mxpress::io {

template <class T>
class mailbox {
public:
    explicit mailbox(std::size_t depth_max) : _depth_max(depth_max) {
        _eventfd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (_eventfd < 0) {
            throw std::system_error(errno, std::generic_category(), "eventfd");
        }
    }
    mailbox(const mailbox&) = delete;
    mailbox& operator=(const mailbox&) = delete;
    ~mailbox() { ::close(_eventfd); }

    int eventfd() const noexcept { return _eventfd; }

    // Reader side: blocks while the mailbox is full. Returns false (and
    // drops the batch) once the mailbox was aborted.
    bool push(std::vector<T>&& batch) {
        {
            std::unique_lock lock(_mutex);
            _space.wait(lock, [&] { return _batches.size() < _depth_max || _aborted; });
            if (_aborted) {
                return false;
            }
            _batches.push_back(std::move(batch));
        }
        wake();
        return true;
    }

    // Shard side: the shard failed and takes nothing more; a reader blocked
    // in push() returns at once.
    void abort() {
        {
            std::lock_guard lock(_mutex);
            _aborted = true;
            _batches.clear();
        }
        _space.notify_all();
    }

    // Reader side: no more items will come.
    void close() {
        {
            std::lock_guard lock(_mutex);
            _closed = true;
        }
        wake();
    }

    // Shard side: everything waiting, and whether the reader is done.
    bool take_all(std::deque<std::vector<T>>& out) {
        std::lock_guard lock(_mutex);
        while (!_batches.empty()) {
            out.push_back(std::move(_batches.front()));
            _batches.pop_front();
        }
        _space.notify_one();
        return _closed;
    }

private:
    void wake() {
        const std::uint64_t one = 1;
        [[maybe_unused]] const ssize_t n = ::write(_eventfd, &one, sizeof one);
    }

    std::size_t _depth_max;
    int _eventfd = -1;
    std::mutex _mutex;
    std::condition_variable _space;
    std::deque<std::vector<T>> _batches;
    bool _closed = false;
    bool _aborted = false;
};

}  // namespace mxpress::io
