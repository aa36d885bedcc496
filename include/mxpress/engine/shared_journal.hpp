// mxpress/engine/shared_journal.hpp — the journal as the shards share it:
// one writer thread, fed batches of whole lines through a bounded queue.
//
// Promises:
// - A shard never calls write() and never waits on the disk: write_batch()
//   moves its lines into the queue under a short lock. It waits only while
//   more than queued_bytes_max are queued (the disk is slower than the
//   senders: backpressure, memory stays bounded).
// - Lines of one batch stay together; batches reach the file in the order
//   they were queued, and reach it at once (no second buffer here), so what
//   a crash can lose is what the shards had not handed over yet: the
//   outcomes of the loop turn under way (shard.hpp hands over every turn).
// - The first failed write stops the writer; every later write_batch() and
//   sync() throws journal_error with the reason (full disk, I/O error), and
//   nothing queued after it is silently dropped without that error.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "mxpress/engine/journal.hpp"

namespace mxpress::engine {

class shared_journal {
public:
    static constexpr std::size_t queued_bytes_max = 8 * 1024 * 1024;

    explicit shared_journal(journal_writer w) : _writer(std::move(w)), _thread([this] { run(); }) {}
    shared_journal(const shared_journal&) = delete;
    shared_journal& operator=(const shared_journal&) = delete;
    ~shared_journal() {
        {
            std::lock_guard lock(_mutex);
            _stopping = true;
        }
        _work.notify_one();
        _thread.join();
        if (_error.empty()) {
            try {
                _writer.flush();
            } catch (const journal_error&) {
                // Reported by sync() to whoever cared; a destructor cannot.
            }
        }
    }

    // Hands the whole lines in `lines` to the writer (it is left empty).
    // Throws journal_error once a write failed.
    void write_batch(std::string& lines) {
        if (lines.empty()) {
            return;
        }
        std::unique_lock lock(_mutex);
        _space.wait(lock, [&] { return _queued_bytes < queued_bytes_max || !_error.empty(); });
        if (!_error.empty()) {
            throw journal_error(_error);
        }
        _queued_bytes += lines.size();
        _queue.emplace_back();
        _queue.back().swap(lines);
        lock.unlock();
        _work.notify_one();
    }

    // Waits until every queued line is written, then asks the kernel to put
    // the file on disk. Throws journal_error when a write or the sync failed.
    void sync() {
        std::unique_lock lock(_mutex);
        _idle.wait(lock, [&] { return (_queue.empty() && !_writing) || !_error.empty(); });
        if (!_error.empty()) {
            throw journal_error(_error);
        }
        _writer.sync();
    }

    const std::string& path() const noexcept { return _writer.path(); }

private:
    void run() {
        std::unique_lock lock(_mutex);
        for (;;) {
            _work.wait(lock, [&] { return !_queue.empty() || _stopping; });
            if (_queue.empty()) {
                return;  // stopping, and everything is written
            }
            std::string batch;
            batch.swap(_queue.front());
            _queue.pop_front();
            _writing = true;
            lock.unlock();
            std::string error;
            try {
                _writer.append_raw(batch);
                _writer.flush();
            } catch (const journal_error& e) {
                error = e.what();
            }
            lock.lock();
            _writing = false;
            _queued_bytes -= batch.size();
            if (!error.empty()) {
                _error = error;
                _queue.clear();
                _space.notify_all();
                _idle.notify_all();
                return;
            }
            _space.notify_all();
            if (_queue.empty()) {
                _idle.notify_all();
            }
        }
    }

    std::mutex _mutex;
    std::condition_variable _work;   // the writer: a batch is queued, or stop
    std::condition_variable _space;  // shards: queued bytes fell below the bound
    std::condition_variable _idle;   // sync(): nothing queued or being written
    std::deque<std::string> _queue;
    std::size_t _queued_bytes = 0;
    bool _writing = false;
    bool _stopping = false;
    std::string _error;  // the first write failure; the writer stopped
    journal_writer _writer;
    std::thread _thread;  // last: starts after everything above exists
};

}  // namespace mxpress::engine
