// mxpress/engine/shared_journal.hpp — the journal as the shards share it.
//
// Promises:
// - write_batch() writes the caller's lines to the file before it returns
//   (one write(2), under a lock, from the calling shard's thread). Shards
//   hand over their lines once per loop turn, so what kill -9 can lose is
//   the outcomes of the turns under way: a few per connection, never a
//   backlog. (An earlier design queued batches for a writer thread; on a
//   loaded machine that thread fell behind by hundreds of outcomes, and
//   kill -9 then duplicated every one of them.)
// - The write goes to the page cache: it waits on the disk only when the
//   kernel throttles dirty pages, which is the backpressure we want (memory
//   stays bounded: nothing is queued here).
// - Lines of one batch stay together; batches reach the file in the order
//   the lock is taken.
// - The first failed write poisons the journal; that write_batch() and
//   every later one, and sync(), throw journal_error with the reason (full
//   disk, I/O error). Nothing is silently dropped.
#pragma once

#include <mutex>
#include <string>

#include "mxpress/engine/journal.hpp"

namespace mxpress::engine {

class shared_journal {
public:
    explicit shared_journal(journal_writer w) : _writer(std::move(w)) {}
    shared_journal(const shared_journal&) = delete;
    shared_journal& operator=(const shared_journal&) = delete;

    // Writes the whole lines in `lines` (it is left empty). Throws
    // journal_error once a write failed.
    void write_batch(std::string& lines) {
        if (lines.empty()) {
            return;
        }
        std::lock_guard lock(_mutex);
        if (!_error.empty()) {
            lines.clear();
            throw journal_error(_error);
        }
        try {
            _writer.write_now(lines);
        } catch (const journal_error& e) {
            _error = e.what();
            lines.clear();
            throw;
        }
        lines.clear();
    }

    // Asks the kernel to put the file on disk. Throws journal_error when a
    // write or the sync failed.
    void sync() {
        std::lock_guard lock(_mutex);
        if (!_error.empty()) {
            throw journal_error(_error);
        }
        _writer.sync();
    }

    const std::string& path() const noexcept { return _writer.path(); }

private:
    std::mutex _mutex;
    std::string _error;  // the first write failure
    journal_writer _writer;
};

}  // namespace mxpress::engine
