// mxpress/io/buffer_ring.hpp — a provided-buffer ring (IORING_REGISTER_PBUF_RING)
// for multishot receives.
//
// The kernel picks a free buffer for each receive completion and reports its
// id in the CQE flags; the owner hands it back with recycle() once the bytes
// are consumed. One ring of `count` buffers serves every connection of a
// shard, so receive memory is count * size, not connections * size.
//
// Lifetime: must outlive every operation that selects from its group; it is
// unregistered when destroyed.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <system_error>
#include <vector>

#include <liburing.h>
#include <sys/mman.h>

#include "mxpress/io/ring.hpp"

namespace mxpress::io {

class buffer_ring {
public:
    // Throws std::system_error when the kernel lacks provided-buffer rings.
    buffer_ring(ring& r, std::uint16_t group, std::uint32_t count, std::uint32_t size)
        : _ring(r), _group(group), _count(count), _size(size), _mask(io_uring_buf_ring_mask(count)) {
        // The buffers first: the one step that may throw (bad_alloc) holds
        // nothing yet. From the mmap on, a failure unmaps before it throws,
        // and once the ring is registered nothing can throw, so a ring is
        // never left registered (or mapped) by a constructor that failed.
        _memory.resize(static_cast<std::size_t>(count) * size);
        const std::size_t ring_bytes = sizeof(io_uring_buf) * count;
        void* mem = ::mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
        if (mem == MAP_FAILED) {
            throw std::system_error(errno, std::generic_category(), "mmap buffer ring");
        }
        _br = static_cast<io_uring_buf_ring*>(mem);
        _ring_bytes = ring_bytes;
        io_uring_buf_ring_init(_br);
        io_uring_buf_reg reg{};
        reg.ring_addr = reinterpret_cast<std::uint64_t>(_br);
        reg.ring_entries = count;
        reg.bgid = group;
        const int rc = io_uring_register_buf_ring(r.raw(), &reg, 0);
        if (rc != 0) {
            ::munmap(_br, _ring_bytes);
            throw std::system_error(-rc, std::generic_category(), "io_uring_register_buf_ring");
        }
        for (std::uint32_t i = 0; i < count; ++i) {
            io_uring_buf_ring_add(_br, _memory.data() + static_cast<std::size_t>(i) * size, size,
                                  static_cast<unsigned short>(i), _mask, static_cast<int>(i));
        }
        io_uring_buf_ring_advance(_br, static_cast<int>(count));
    }
    buffer_ring(const buffer_ring&) = delete;
    buffer_ring& operator=(const buffer_ring&) = delete;
    ~buffer_ring() {
        io_uring_unregister_buf_ring(_ring.raw(), _group);
        ::munmap(_br, _ring_bytes);
    }

    std::uint16_t group() const noexcept { return _group; }

    // The bytes a completion with these flags and result delivered.
    std::string_view data(unsigned cqe_flags, int res) const noexcept {
        const unsigned id = cqe_flags >> IORING_CQE_BUFFER_SHIFT;
        return std::string_view(_memory.data() + static_cast<std::size_t>(id) * _size, static_cast<std::size_t>(res));
    }

    // Gives the buffer of that completion back to the kernel.
    void recycle(unsigned cqe_flags) noexcept {
        const unsigned id = cqe_flags >> IORING_CQE_BUFFER_SHIFT;
        io_uring_buf_ring_add(_br, _memory.data() + static_cast<std::size_t>(id) * _size, _size,
                              static_cast<unsigned short>(id), _mask, 0);
        io_uring_buf_ring_advance(_br, 1);
    }

private:
    ring& _ring;
    std::uint16_t _group;
    std::uint32_t _count;
    std::uint32_t _size;
    int _mask;
    io_uring_buf_ring* _br = nullptr;
    std::size_t _ring_bytes = 0;
    std::vector<char> _memory;
};

}  // namespace mxpress::io
