// mxpress/engine/journal_writer.hpp — journal_writer: the journal file, locked
// and appended to in batches of whole lines, and the errors it throws. The
// line format is journal_format.hpp's; reading a journal back is
// journal_reader.hpp's. A file of its own: one topic, the file and its lock.
//
// Promises (docs/ARCHITECTURE.md, The journal):
// - Writes are batched (buffer_bytes_max) and always whole lines, so a crash
//   leaves at most one torn last line, which read_journal() tolerates.
// - journal_writer::open() holds an exclusive flock() on the file for the
//   writer's life: a second run on the same journal is refused, never
//   interleaved.
#pragma once

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "mxpress/engine/journal_format.hpp"
#include "mxpress/mail/input_error.hpp"

namespace mxpress::engine {

// The journal could not be written (full disk, I/O error): the run cannot
// go on, and says so with exit status 1.
struct journal_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Another run holds the journal's lock (`steps` leaves that step to it).
struct journal_in_use : mail::input_error {
    using mail::input_error::input_error;
};

class journal_writer {
public:
    static constexpr std::size_t buffer_bytes_max = 256 * 1024;

    journal_writer() = default;
    journal_writer(const journal_writer&) = delete;
    journal_writer& operator=(const journal_writer&) = delete;
    journal_writer(journal_writer&& o) noexcept { *this = std::move(o); }
    journal_writer& operator=(journal_writer&& o) noexcept {
        if (this != &o) {
            close_quietly();
            _fd = o._fd;
            _path = std::move(o._path);
            _buffer = std::move(o._buffer);
            o._fd = -1;
        }
        return *this;
    }
    ~journal_writer() { close_quietly(); }

    // Opens (creating) `path` and locks it (flock, exclusive, for the
    // writer's life); appends when `append`, else truncates, only once the
    // lock is held. Throws mail::input_error naming the path, also when
    // another run holds the lock.
    static journal_writer open(const std::string& path, bool append) {
        journal_writer w;
        w._fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_APPEND, 0644);
        if (w._fd < 0) {
            throw mail::input_error(path, 0, fmt::format("cannot open journal: {}", std::strerror(errno)));
        }
        w._path = path;
        struct stat st {};
        const bool regular = ::fstat(w._fd, &st) == 0 && S_ISREG(st.st_mode);
        if (regular && ::flock(w._fd, LOCK_EX | LOCK_NB) != 0) {
            const int e = errno;
            if (e == EWOULDBLOCK) {
                throw journal_in_use(path, 0,
                                     "journal is in use by another mxpress run (it holds the lock); wait for that "
                                     "run to end or choose another --journal");
            }
            throw mail::input_error(path, 0, fmt::format("cannot lock journal: {}", std::strerror(e)));
        }
        if (!append && regular && ::ftruncate(w._fd, 0) != 0) {
            throw mail::input_error(path, 0, fmt::format("cannot truncate journal: {}", std::strerror(errno)));
        }
        w._buffer.reserve(buffer_bytes_max + 4096);
        if (append) {
            w.repair_torn_tail();
        }
        return w;
    }

    void append(const journal_entry& e) {
        append_journal_line(_buffer, e);
        if (_buffer.size() >= buffer_bytes_max) {
            flush();
        }
    }

    // Appends lines already formatted by append_journal_line().
    void append_raw(std::string_view lines) {
        _buffer += lines;
        if (_buffer.size() >= buffer_bytes_max) {
            flush();
        }
    }

    // Writes buffered lines. Throws journal_error when the disk refuses (a run
    // failure, exit 1: not the user's input).
    void flush() {
        std::string pending;
        pending.swap(_buffer);
        write_all(pending);
        pending.clear();
        _buffer.swap(pending);  // keeps the reserved capacity
    }

    // Writes buffered lines, then `lines`, before returning (no copy into
    // the buffer). Throws journal_error as flush() does.
    void write_now(std::string_view lines) {
        if (!_buffer.empty()) {
            flush();
        }
        write_all(lines);
    }

    // Flushes and asks the kernel to put the data on disk.
    void sync() {
        flush();
        if (::fdatasync(_fd) != 0 && errno != EINVAL) {
            throw journal_error(fmt::format("{}: cannot sync journal: {}", _path, std::strerror(errno)));
        }
    }

    const std::string& path() const noexcept { return _path; }

private:
    void write_all(std::string_view data) {
        std::size_t done = 0;
        while (done < data.size()) {
            const ssize_t n = ::write(_fd, data.data() + done, data.size() - done);
            if (n < 0) {
                if (errno == EINTR) {
                    continue;
                }
                throw journal_error(fmt::format("{}: cannot write journal: {}", _path, std::strerror(errno)));
            }
            done += static_cast<std::size_t>(n);
        }
    }

    // A crash may have left a last line without '\n'; end it so the next
    // entry starts on a line of its own (the reader skips the torn one).
    void repair_torn_tail() {
        struct stat st {};
        if (::fstat(_fd, &st) != 0 || st.st_size == 0) {
            return;
        }
        const int rfd = ::open(_path.c_str(), O_RDONLY | O_CLOEXEC);
        if (rfd < 0) {
            return;
        }
        char last = '\n';
        if (::pread(rfd, &last, 1, st.st_size - 1) == 1 && last != '\n') {
            _buffer += '\n';
        }
        ::close(rfd);
    }

    void close_quietly() noexcept {
        if (_fd >= 0) {
            try {
                flush();
            } catch (...) {
            }
            ::close(_fd);
            _fd = -1;
        }
    }

    int _fd = -1;
    std::string _path;
    std::string _buffer;
};

}  // namespace mxpress::engine
