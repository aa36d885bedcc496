// mxpress/io/input_wait.hpp — reading a recipients list that arrives through
// a pipe, a FIFO or a terminal, where a read may wait for as long as the
// program that writes it likes.
//
// A regular file never waits, and is read with plain read(2). Anything else
// can stall the reader thread, and two things must not stall with it:
// - rows already read: before a read would block, on_block() runs on the
//   reader thread (the runner hands its part-filled batches to the shards
//   and writes the invalid rows' journal lines), so a slow producer delays
//   nothing that has arrived;
// - a stop: cancel() (any thread: the runner's SIGINT/SIGTERM callback)
//   wakes a read that waits, and it and every later read fail with
//   ECANCELED. A partial last line is never taken for a row, because the
//   read fails instead of reporting the end of input. (Nor is a complete
//   row whose line end arrived only in part, a CR waiting for its LF: like
//   every row not read, it is not counted, and a --resume reads it.)
//
// Promises: a regular file costs no poll(2); anything else one per read,
// two when it has to wait. cancel() is one eventfd write (async-signal-safe)
// and may be called any number of times.
#pragma once

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <system_error>

#include "mxpress/io/unique_fd.hpp"

namespace mxpress::io {

// read(2), again when a signal interrupted it.
inline long read_retrying(int fd, char* dst, std::size_t size) {
    for (;;) {
        const ssize_t n = ::read(fd, dst, size);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        return static_cast<long>(n);
    }
}

class input_wait {
public:
    input_wait() : _cancel(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
        if (!_cancel) {
            throw std::system_error(errno, std::generic_category(), "eventfd");
        }
    }
    input_wait(const input_wait&) = delete;
    input_wait& operator=(const input_wait&) = delete;

    // Runs on the reading thread before a read that would wait. Set before
    // reading starts; may be empty.
    void on_block(std::function<void()> f) { _on_block = std::move(f); }

    // Wakes a waiting read; it and all later ones fail with ECANCELED.
    void cancel() noexcept {
        const std::uint64_t one = 1;
        [[maybe_unused]] const ssize_t n = ::write(_cancel.get(), &one, sizeof one);
    }

    // read(2) on `fd`, with the promises above for what is not a regular
    // file. Returns the count, 0 at the end of input, or -1 with errno set.
    long read(int fd, char* dst, std::size_t size) {
        if (!_checked) {
            struct stat st {};
            _may_wait = ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode);
            _checked = true;
        }
        if (!_may_wait) {
            return read_retrying(fd, dst, size);
        }
        bool announced = false;
        for (;;) {
            pollfd p[2] = {{fd, POLLIN, 0}, {_cancel.get(), POLLIN, 0}};
            const int ready = ::poll(p, 2, announced ? -1 : 0);
            if (ready < 0 && errno != EINTR) {
                return -1;
            }
            if (ready > 0 && (p[1].revents & POLLIN) != 0) {
                errno = ECANCELED;
                return -1;
            }
            if (ready > 0 && p[0].revents != 0) {
                return read_retrying(fd, dst, size);  // data, the end, or the error poll saw
            }
            if (ready == 0 && !announced) {
                announced = true;
                if (_on_block) {
                    _on_block();  // may take a while (a full mailbox); then wait
                }
            }
        }
    }

private:
    unique_fd _cancel;
    std::function<void()> _on_block;
    bool _checked = false;
    bool _may_wait = false;
};

}  // namespace mxpress::io
