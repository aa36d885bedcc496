// mxpress/net/tls_channel.hpp — TLS as the delivery core sees it: bytes in,
// bytes out, behind an interface, so that the core runs the same code over
// OpenSSL (the shard) and over a simulated channel (the simulator).
//
// Promises:
// - A channel is a pure transform: ciphertext from the peer goes in with
//   feed(), plaintext comes out of read(); plaintext goes in with write(),
//   ciphertext comes out of take_output(). Nothing here touches a socket.
// - Session resumption lives behind the factory: a channel opened for a
//   session key resumes the newest resumable session kept under that key,
//   and keep_sessions() files what the server handed out. The core never
//   sees an SSL_SESSION.
// - Every failure says why (error()), with OpenSSL's error queue drained.
#pragma once

#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "mxpress/net/tls.hpp"

namespace mxpress::net {

enum class tls_result {
    ok,         // done (handshake complete, or every byte handled)
    want_more,  // needs more ciphertext from the peer (send take_output() first)
    closed,     // the peer sent close_notify
    failed,     // fatal: error() says why
};

// One TLS connection, client side.
class tls_channel {
public:
    virtual ~tls_channel() = default;
    virtual tls_result handshake() = 0;
    virtual void feed(std::string_view ciphertext) = 0;
    virtual tls_result read(std::string& plain) = 0;  // appends
    virtual tls_result write(std::string_view plain) = 0;
    virtual bool has_output() const noexcept = 0;
    virtual void take_output(std::string& dst) = 0;  // swaps: dst's old buffer is reused
    virtual bool resumed() const noexcept = 0;
    virtual const char* version() const noexcept = 0;  // static string; "none" before the handshake
    virtual const std::string& error() const noexcept = 0;
};

// What a new channel needs to know about its peer.
struct tls_peer {
    std::string session_key;  // sessions are kept and resumed per key (the pool)
    std::string server_name;  // SNI (skipped for IP literals)
    bool verify = false;      // check the chain and that the certificate names server_name
};

class tls_channel_factory {
public:
    virtual ~tls_channel_factory() = default;
    // Throws tls_error when the channel cannot be set up.
    virtual std::unique_ptr<tls_channel> open(const tls_peer& peer) = 0;
    // Files the sessions the server handed out on `channel` under its key.
    virtual void keep_sessions(const std::string& session_key, tls_channel& channel) = 0;
};

// ---- OpenSSL ---------------------------------------------------------------

class openssl_channel final : public tls_channel {
public:
    openssl_channel(SSL_CTX* ctx, const tls_peer& peer) : _stream(ctx, tls_stream::role::client) {
        _stream.set_server_name(peer.server_name);
        if (peer.verify) {
            _stream.verify_peer(peer.server_name);
        }
    }
    tls_result handshake() override { return convert(_stream.handshake()); }
    void feed(std::string_view ciphertext) override { _stream.feed(ciphertext); }
    tls_result read(std::string& plain) override { return convert(_stream.read(plain)); }
    tls_result write(std::string_view plain) override { return convert(_stream.write(plain)); }
    bool has_output() const noexcept override { return _stream.has_output(); }
    void take_output(std::string& dst) override { _stream.take_output(dst); }
    bool resumed() const noexcept override { return _stream.resumed(); }
    const char* version() const noexcept override { return _stream.version(); }
    const std::string& error() const noexcept override { return _stream.error(); }

    tls_stream& stream() noexcept { return _stream; }

private:
    static tls_result convert(tls_stream::result r) noexcept {
        switch (r) {
            case tls_stream::result::ok: return tls_result::ok;
            case tls_stream::result::want_more: return tls_result::want_more;
            case tls_stream::result::closed: return tls_result::closed;
            case tls_stream::result::failed: return tls_result::failed;
        }
        return tls_result::failed;
    }

    tls_stream _stream;
};

// One per shard: the SSL_CTX and the sessions kept per key stay on the
// shard's thread.
class openssl_channel_factory final : public tls_channel_factory {
public:
    explicit openssl_channel_factory(const std::string& ca_file, std::size_t sessions_per_key_max = 8)
        : _ctx(tls_context::client(ca_file)), _sessions_max(sessions_per_key_max) {}

    std::unique_ptr<tls_channel> open(const tls_peer& peer) override {
        auto ch = std::make_unique<openssl_channel>(_ctx.get(), peer);
        // OpenSSL makes a TLS 1.3 session single-use once a resumption with
        // it completes, so new connections take the newest one still
        // resumable; connections started together may share it.
        if (auto it = _sessions.find(peer.session_key); it != _sessions.end()) {
            auto& v = it->second;
            while (!v.empty() && SSL_SESSION_is_resumable(v.back().get()) != 1) {
                v.pop_back();
            }
            if (!v.empty()) {
                ch->stream().set_session(v.back().get());
            }
        }
        return ch;
    }

    void keep_sessions(const std::string& session_key, tls_channel& channel) override {
        auto& stream = static_cast<openssl_channel&>(channel).stream();
        while (auto s = stream.take_new_session()) {
            auto& v = _sessions[session_key];
            v.push_back(std::move(s));
            if (v.size() > _sessions_max) {
                v.pop_front();
            }
        }
    }

private:
    tls_context _ctx;
    std::size_t _sessions_max;
    std::unordered_map<std::string, std::deque<ssl_session_ptr>> _sessions;  // newest last
};

}  // namespace mxpress::net
