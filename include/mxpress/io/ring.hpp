// mxpress/io/ring.hpp — one io_uring per shard thread, and the completion
// type every asynchronous operation carries.
//
// Promises:
// - Set up with SINGLE_ISSUER | DEFER_TASKRUN where the kernel has them
//   (completions are then processed only inside run(), on the owning
//   thread); otherwise a plain ring. Which one is reported by flags().
// - sqe() never fails: when the submission queue is full it submits what is
//   queued and tries again.
// - Completions are dispatched to the `completion` whose address is the
//   SQE's user_data; a null user_data marks a completion nobody waits for.
//
// Lifetime: a completion is borrowed by the ring from submission until its
// callback has run (or, for multishot, until a CQE without F_MORE); the
// owner must keep it alive that long.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <system_error>

#include <liburing.h>

namespace mxpress::io {

struct completion {
    // Called once per CQE: `res` is the operation's result (-errno on
    // failure), `flags` the CQE flags.
    void (*fn)(completion* self, int res, unsigned flags) = nullptr;
};

// An operation that knows its owner: `static_cast<tagged_completion<T>*>(c)->owner`.
template <class T>
struct tagged_completion : completion {
    T* owner = nullptr;
};

class ring {
public:
    explicit ring(unsigned entries) {
        io_uring_params p{};
        p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
        int rc = io_uring_queue_init_params(entries, &_ring, &p);
        if (rc == -EINVAL) {
            // Older kernel: a plain ring does the same work with more IPIs.
            p = io_uring_params{};
            rc = io_uring_queue_init_params(entries, &_ring, &p);
        }
        if (rc < 0) {
            throw std::system_error(-rc, std::generic_category(), "io_uring_queue_init");
        }
        _flags = p.flags;
    }
    ring(const ring&) = delete;
    ring& operator=(const ring&) = delete;
    ~ring() { io_uring_queue_exit(&_ring); }

    unsigned flags() const noexcept { return _flags; }
    bool defer_taskrun() const noexcept { return (_flags & IORING_SETUP_DEFER_TASKRUN) != 0; }

    // A submission entry whose user_data is `c` (may be null).
    io_uring_sqe* sqe(completion* c) {
        io_uring_sqe* s = io_uring_get_sqe(&_ring);
        while (s == nullptr) {
            const int rc = io_uring_submit(&_ring);
            if (rc < 0 && rc != -EBUSY && rc != -EAGAIN && rc != -EINTR) {
                throw std::system_error(-rc, std::generic_category(), "io_uring_submit");
            }
            s = io_uring_get_sqe(&_ring);
        }
        io_uring_sqe_set_data(s, c);
        return s;
    }

    // Submits queued entries, waits for at least `wait_nr` completions, and
    // dispatches every completion available. Returns how many ran.
    unsigned run(unsigned wait_nr) {
        int rc = io_uring_submit_and_wait(&_ring, wait_nr);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME) {
            throw std::system_error(-rc, std::generic_category(), "io_uring_submit_and_wait");
        }
        unsigned handled = 0;
        io_uring_cqe* cqe = nullptr;
        // Each callback may queue new work; re-peek until the queue is dry.
        while (io_uring_peek_cqe(&_ring, &cqe) == 0) {
            auto* c = static_cast<completion*>(io_uring_cqe_get_data(cqe));
            const int res = cqe->res;
            const unsigned flags = cqe->flags;
            io_uring_cqe_seen(&_ring, cqe);
            if (c != nullptr && c->fn != nullptr) {
                c->fn(c, res, flags);
            }
            ++handled;
        }
        return handled;
    }

    io_uring* raw() noexcept { return &_ring; }

private:
    io_uring _ring{};
    unsigned _flags = 0;
};

// A relative timespec for timeouts, in milliseconds.
inline __kernel_timespec timespec_ms(std::int64_t ms) {
    __kernel_timespec ts{};
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1'000'000;
    return ts;
}

}  // namespace mxpress::io
