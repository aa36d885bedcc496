// mxpress/net/tls_channel.hpp — one TLS connection over a byte pipe: the
// glue between a socket (or a test's memory) and a plaintext protocol.
//
// A tls_channel owns a tls_stream (net/tls.hpp) and the state around it that
// every user of TLS over completion I/O needs: is the handshake still
// running, did it just complete, is the channel open, closed or failed, and
// what plaintext was written before it could be encrypted. The owner moves
// bytes: ciphertext from the peer goes into receive(), plaintext comes out;
// plaintext goes into send(); ciphertext to put on the wire comes out of
// take_output() (send it before waiting for more input). Nothing here
// touches a socket or a clock: handshake deadlines are the owner's.
//
// Promises:
// - Every TLS call's result is checked: a failed handshake, read or write
//   moves the channel to `failed` with OpenSSL's reason in error(), and it
//   stays there (later calls do nothing and report `failed`).
// - Plaintext sent while the handshake runs is held and encrypted, in order,
//   as soon as the handshake completes; none is ever sent in the clear.
// - receive() reports the completion of the handshake exactly once
//   (progress::established_now), so the owner can count it and tell its
//   protocol (e.g. smtp::client::tls_established()).
// - Ciphertext comes out in the order TLS produced it; the owner keeps at
//   most one send in flight per connection so records stay in order.
//
// Lifetime: borrows the SSL_CTX (through SSL_new's reference).
#pragma once

#include <cassert>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "mxpress/net/tls.hpp"

namespace mxpress::net {

class tls_channel {
public:
    enum class state : std::uint8_t {
        handshaking,  // start() or receive() will drive it
        open,         // plaintext flows both ways
        closed,       // the peer sent close_notify
        failed,       // fatal; error() says why
    };

    // What a call did: the state after it, and whether the handshake
    // completed during it.
    struct progress {
        state now = state::handshaking;
        bool established_now = false;
    };

    tls_channel(SSL_CTX* ctx, tls_stream::role r) : _tls(ctx, r) {}
    tls_channel(const tls_channel&) = delete;
    tls_channel& operator=(const tls_channel&) = delete;

    // The stream, for what happens before start() (set_server_name,
    // verify_peer, set_session) and for sessions, version and resumed().
    tls_stream& stream() noexcept { return _tls; }
    const tls_stream& stream() const noexcept { return _tls; }

    // Begins the handshake. A client queues its ClientHello (take_output);
    // a server waits for the peer's.
    progress start() {
        assert(_state == state::handshaking && "start() once, before any input");
        return advance();
    }

    // Ciphertext from the peer: advances the handshake, then appends the
    // plaintext it carried to `plain`.
    progress receive(std::string_view ciphertext, std::string& plain) {
        if (_state != state::handshaking && _state != state::open) {
            return {_state, false};
        }
        try {
            _tls.feed(ciphertext);
        } catch (const tls_error& e) {
            return fail(e.what());
        }
        progress p{_state, false};
        if (_state == state::handshaking) {
            p = advance();
            if (_state != state::open) {
                return p;
            }
        }
        switch (_tls.read(plain)) {
            case tls_stream::result::ok:
            case tls_stream::result::want_more: break;
            case tls_stream::result::closed: _state = state::closed; break;
            case tls_stream::result::failed: fail(_tls.error()); break;
        }
        p.now = _state;
        return p;
    }

    // Plaintext for the peer: encrypted now when open, held while the
    // handshake runs. Returns false when the channel cannot carry it
    // (failed or closed; error() says why when it failed).
    bool send(std::string_view plain) {
        if (_state == state::handshaking) {
            _held.append(plain);
            return true;
        }
        return _state == state::open && write(plain);
    }

    // Queues a close_notify alert when open (best effort).
    void close() {
        if (_state == state::open) {
            _tls.shutdown();
        }
    }

    bool has_output() const noexcept { return _tls.has_output(); }
    // Moves the ciphertext to send into `dst` (its old content is dropped).
    void take_output(std::string& dst) { _tls.take_output(dst); }

    state current_state() const noexcept { return _state; }
    bool handshaking() const noexcept { return _state == state::handshaking; }
    bool open() const noexcept { return _state == state::open; }
    bool failed() const noexcept { return _state == state::failed; }
    const std::string& error() const noexcept { return _error; }

private:
    progress advance() {
        switch (_tls.handshake()) {
            case tls_stream::result::want_more: return {_state, false};
            case tls_stream::result::ok: break;
            case tls_stream::result::closed:
            case tls_stream::result::failed: return fail(_tls.error());
        }
        _state = state::open;
        if (!_held.empty()) {
            std::string held;
            held.swap(_held);
            write(held);
        }
        return {_state, true};
    }

    bool write(std::string_view plain) {
        assert(_state == state::open);
        if (_tls.write(plain) != tls_stream::result::ok) {
            fail(_tls.error());
            return false;
        }
        return true;
    }

    progress fail(std::string why) {
        _state = state::failed;
        _error = why.empty() ? std::string("TLS failed") : std::move(why);
        _held.clear();
        return {_state, false};
    }

    tls_stream _tls;
    state _state = state::handshaking;
    std::string _held;  // plaintext sent during the handshake
    std::string _error;
};

}  // namespace mxpress::net
