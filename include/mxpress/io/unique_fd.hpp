// mxpress/io/unique_fd.hpp — a file descriptor with one owner.
//
// Promises: the descriptor is closed exactly once, by the destructor or
// reset(); moving transfers ownership; a default one holds nothing (-1).
#pragma once

#include <unistd.h>

#include <utility>

namespace mxpress::io {

class unique_fd {
public:
    unique_fd() noexcept = default;
    explicit unique_fd(int fd) noexcept : _fd(fd) {}
    unique_fd(unique_fd&& o) noexcept : _fd(std::exchange(o._fd, -1)) {}
    unique_fd& operator=(unique_fd&& o) noexcept {
        if (this != &o) {
            reset(std::exchange(o._fd, -1));
        }
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { reset(); }

    int get() const noexcept { return _fd; }
    explicit operator bool() const noexcept { return _fd >= 0; }
    int release() noexcept { return std::exchange(_fd, -1); }
    void reset(int fd = -1) noexcept {
        if (_fd >= 0) {
            ::close(_fd);
        }
        _fd = fd;
    }

private:
    int _fd = -1;
};

}  // namespace mxpress::io
