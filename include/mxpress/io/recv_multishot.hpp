// mxpress/io/recv_multishot.hpp — whether this kernel takes a multishot
// recv (IORING_RECV_MULTISHOT, Linux 6.0) from a provided-buffer ring
// (io/buffer_ring.hpp, Linux 5.19), and the one function that prepares such
// a recv. The shard and mxsink both ask recv_multishot_support() before
// they set up their buffer rings and, where it says no, receive with a plain
// recv into each session's own buffer.
//
// The probe, run once per process (thread-safe; later calls return its
// answer): a small ring of its own, a one-buffer ring, a socketpair with one
// byte waiting, and one multishot recv. A kernel that knows the flag
// delivers the byte (F_MORE set: still armed); 5.19 rejects the SQE with
// -EINVAL; a kernel without buffer rings fails to register one. Nothing is
// assumed from the kernel's version.
//
// MXPRESS_SIMULATE_NO_MULTISHOT=1 (for tests) makes every recv prepared
// here, the probe's included, carry a recv flag no kernel knows, so the
// kernel itself answers -EINVAL, as 5.19 does for IORING_RECV_MULTISHOT:
// the probe and every caller take the path an old kernel gives them.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <system_error>

#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mxpress/io/buffer_ring.hpp"
#include "mxpress/io/ring.hpp"
#include "mxpress/io/unique_fd.hpp"

namespace mxpress::io {

struct recv_multishot_answer {
    bool supported = false;
    std::string why;  // when not supported: what the probe saw
};

// True when MXPRESS_SIMULATE_NO_MULTISHOT is set to anything but "" or "0".
inline bool simulate_no_multishot() {
    static const bool on = [] {
        const char* v = std::getenv("MXPRESS_SIMULATE_NO_MULTISHOT");
        return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
    }();
    return on;
}

// A multishot recv on `fd` that picks its buffers from `group`.
inline void prep_recv_multishot(io_uring_sqe* sqe, int fd, std::uint16_t group) {
    io_uring_prep_recv_multishot(sqe, fd, nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = group;
    if (simulate_no_multishot()) {
        sqe->ioprio |= 1u << 15;  // an unknown recv flag: -EINVAL at prep, like IORING_RECV_MULTISHOT on 5.19
    }
}

namespace detail {

inline recv_multishot_answer probe_recv_multishot() {
    recv_multishot_answer a;
    try {
        ring r(4);
        buffer_ring buffers(r, 0, 1, 64);
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0) {
            throw std::system_error(errno, std::generic_category(), "socketpair");
        }
        const unique_fd reader(sv[0]);
        const unique_fd writer(sv[1]);
        const char byte = 'x';
        if (::write(writer.get(), &byte, 1) != 1) {
            throw std::system_error(errno, std::generic_category(), "write");
        }
        prep_recv_multishot(r.sqe(nullptr), reader.get(), buffers.group());
        io_uring_cqe* cqe = nullptr;
        __kernel_timespec ts = timespec_ms(2000);
        const int rc = io_uring_submit_and_wait_timeout(r.raw(), &cqe, 1, &ts, nullptr);
        if (rc < 0 || cqe == nullptr) {
            a.why = std::string("no answer to a multishot recv: ") + std::strerror(rc < 0 ? -rc : ETIME);
        } else if (cqe->res == 1 && (cqe->flags & IORING_CQE_F_MORE) != 0) {
            a.supported = true;
        } else if (cqe->res == -EINVAL) {
            a.why = "the kernel refuses a multishot recv (IORING_RECV_MULTISHOT, Linux 6.0): EINVAL";
            if (simulate_no_multishot()) {
                a.why += " (simulated: MXPRESS_SIMULATE_NO_MULTISHOT)";
            }
        } else {
            a.why = "a multishot recv gave " + std::to_string(cqe->res) +
                    ((cqe->flags & IORING_CQE_F_MORE) != 0 ? " (armed)" : " (not armed)");
        }
        // No answer in time: the recv may still be pending; end it like an
        // armed one before its buffer ring goes.
        const bool armed = cqe == nullptr ? (rc >= 0 || rc == -ETIME) : (cqe->flags & IORING_CQE_F_MORE) != 0;
        if (cqe != nullptr) {
            io_uring_cqe_seen(r.raw(), cqe);
        }
        if (armed) {
            // Ends the recv (a last CQE, 0 bytes) before its buffer ring goes.
            ::shutdown(reader.get(), SHUT_RDWR);
            for (int i = 0; i < 4; ++i) {
                ts = timespec_ms(2000);
                if (io_uring_submit_and_wait_timeout(r.raw(), &cqe, 1, &ts, nullptr) < 0 || cqe == nullptr) {
                    break;
                }
                const bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
                io_uring_cqe_seen(r.raw(), cqe);
                if (!more) {
                    break;
                }
            }
        }
    } catch (const std::system_error& e) {
        a.why = std::string("no provided-buffer ring: ") + e.what();
    }
    return a;
}

}  // namespace detail

// The probe's answer for this process.
inline const recv_multishot_answer& recv_multishot_support() {
    static const recv_multishot_answer a = detail::probe_recv_multishot();
    return a;
}

// Said once per process, on stderr, when the kernel refuses a multishot
// recv though the probe passed (the caller then receives with a plain recv
// per read). `lead` starts the line: the program's name, "mxsink: ".
inline void say_multishot_refused(const char* lead) {
    static std::once_flag said;
    std::call_once(said, [lead] {
        std::fprintf(stderr,
                     "%sthe kernel refused a multishot recv (EINVAL) though the startup probe passed; "
                     "receiving with a plain recv per read from now on\n",
                     lead);
    });
}

}  // namespace mxpress::io
