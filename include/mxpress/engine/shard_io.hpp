// mxpress/engine/shard_io.hpp — the shard's io_uring completion handlers:
// the mailbox, stop and tick reads, and a connection's connect, receive
// (arm_recv and on_recv: multishot from the provided-buffer ring, or a plain
// recv into the connection's own buffer) and send. Included by shard.hpp;
// not meant to be included alone.
//
// Each handler keeps its operation counted until it returns, so nothing
// it calls can free the io_conn under it; release() frees a closed one.
#pragma once

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string_view>

#include "mxpress/engine/shard.hpp"

namespace mxpress::engine {

inline void shard::on_stop(io::completion* c, int /*res*/, unsigned /*flags*/) {
    shard* self = static_cast<shard_op*>(c)->owner;
    if (!self->_aborted) {
        self->arm_stop_read();  // a second signal may come
    }
}

inline void shard::on_mailbox(io::completion* c, int /*res*/, unsigned /*flags*/) {
    shard* self = static_cast<shard_op*>(c)->owner;
    self->_mailbox_signaled = true;
    if (!self->_input_closed) {
        self->arm_mailbox_read();
    }
}

inline void shard::on_connect(io::completion* op, int res, unsigned /*flags*/) {
    io_conn& io = *static_cast<io_conn::op*>(op)->conn;
    shard* self = io.owner;
    if (!io.closed) {
        if (res >= 0) {
            io.connected = true;
            self->arm_recv(io);
        }
        self->_core.connected(io.id, res);
    }
    self->release(io);
}

inline void shard::arm_recv(io_conn& io) {
    ++io.ops_in_flight;
    io.recv_multishot = _buffers && _multishot;
    if (io.recv_multishot) {
        io::prep_recv_multishot(_ring.sqe(&io.recv_op), io.fd.get(), _buffers->group());
        return;
    }
    if (io.recv_buffer.empty()) {
        io.recv_buffer.resize(16 * 1024);
    }
    io_uring_prep_recv(_ring.sqe(&io.recv_op), io.fd.get(), io.recv_buffer.data(), io.recv_buffer.size(), 0);
}

inline void shard::on_recv(io::completion* op, int res, unsigned flags) {
    io_conn& io = *static_cast<io_conn::op*>(op)->conn;
    shard* self = io.owner;
    const bool more = (flags & IORING_CQE_F_MORE) != 0;  // multishot still armed
    const bool provided = self->_buffers && (flags & IORING_CQE_F_BUFFER);
    if (res == -ENOBUFS && !io.closed) {
        // Every provided buffer is in use (they come back as soon as each
        // completion is handled): ask again.
        if (!more) {
            self->arm_recv(io);
            self->release(io);
        }
        return;
    }
    if (res == -EINVAL && io.recv_multishot) {
        // The kernel refused the multishot recv although the probe passed:
        // said once, and this shard reads with a plain recv from now on.
        self->multishot_refused();
        if (!io.closed) {
            self->arm_recv(io);
        }
        self->release(io);
        return;
    }
    if (!io.closed) {
        if (res <= 0) {
            self->_core.input_lost(io.id, res == 0 ? "closed by the server" : std::strerror(-res));
        } else if (provided) {
            self->_core.received(io.id, self->_buffers->data(flags, res));
        } else {
            self->_core.received(io.id, std::string_view(io.recv_buffer.data(), static_cast<std::size_t>(res)));
        }
        if (!more && res > 0 && !io.closed) {
            self->arm_recv(io);
        }
    }
    if (res > 0 && provided) {
        self->_buffers->recycle(flags);
    }
    if (!more) {
        self->release(io);
    }
}

// One send, or with body pieces one sendmsg of the bytes and bodies in
// order (no copy of a body into the buffer), from send_offset on.
inline void shard::submit_send(io_conn& io) {
    ++io.ops_in_flight;
    if (io.send_pieces.empty()) {
        io_uring_prep_send(_ring.sqe(&io.send_op), io.fd.get(), io.send_buffer.data() + io.send_offset,
                           io.send_buffer.size() - io.send_offset, MSG_NOSIGNAL);
        return;
    }
    io.send_iov.clear();
    std::size_t skip = io.send_offset;
    const auto add = [&](const char* p, std::size_t n) {
        if (skip >= n) {
            skip -= n;
            return;
        }
        io.send_iov.push_back(iovec{const_cast<char*>(p + skip), n - skip});
        skip = 0;
    };
    std::size_t from = 0;
    for (const smtp::body_piece& p : io.send_pieces) {
        assert(p.at >= from && p.at <= io.send_buffer.size());
        add(io.send_buffer.data() + from, p.at - from);
        add(p.body->data(), p.body->size());
        from = p.at;
    }
    add(io.send_buffer.data() + from, io.send_buffer.size() - from);
    assert(!io.send_iov.empty() && io.send_iov.size() <= send_iov_max);
    io.send_msg = msghdr{};
    io.send_msg.msg_iov = io.send_iov.data();
    io.send_msg.msg_iovlen = io.send_iov.size();
    io_uring_prep_sendmsg(_ring.sqe(&io.send_op), io.fd.get(), &io.send_msg, MSG_NOSIGNAL);
}

inline void shard::on_send(io::completion* op, int res, unsigned /*flags*/) {
    io_conn& io = *static_cast<io_conn::op*>(op)->conn;
    shard* self = io.owner;
    if (!io.closed) {
        if (res < 0) {
            io.send_pieces.clear();  // the bodies go back to their slots
            self->_core.send_done(io.id, res, io.send_buffer);
        } else {
            io.send_offset += static_cast<std::size_t>(res);
            if (io.send_offset < io.send_total) {
                self->submit_send(io);  // the rest, before the core hears of it
            } else {
                io.send_pieces.clear();
                self->_core.send_done(io.id, static_cast<int>(io.send_total), io.send_buffer);
            }
        }
    }
    self->release(io);
}

inline void shard::on_tick(io::completion* c, int /*res*/, unsigned /*flags*/) {
    shard* self = static_cast<shard_op*>(c)->owner;
    self->_resolver.tick();
    self->publish_dns_stats();
    self->_core.set_now(clock::now());
    self->_wall_now = std::chrono::system_clock::now();
    if (const config_reloader* cr = self->_options.reloader; cr != nullptr) {
        if (const std::uint64_t g = cr->generation(); g != self->_config_generation) {
            self->_config_generation = g;
            self->_core.reload(cr->current());
        }
    }
    self->_ts.clear();
    self->_core.tick();
    if (++self->_ticks % held_every_ticks == 0) {
        self->publish_held();
    }
    self->flush_journal();
    // Always again: run()'s loop is the one place that decides the shard
    // is finished. A tick left unarmed because finished() held here, and
    // a later event in the same turn that made it false, left the shard
    // waiting on its ring for good (seen once in 30 runs under TSan: the
    // Sink test's send never ended). The spare timeout dies with the ring.
    self->arm_tick();
}
inline void shard::multishot_refused() {
    _multishot = false;
    io::say_multishot_refused("\nmxpress: ");  // a new line: the progress line may be on this one
}

}  // namespace mxpress::engine
