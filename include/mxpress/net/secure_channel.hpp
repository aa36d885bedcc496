// mxpress/net/secure_channel.hpp — TLS as the delivery core sees it: the
// tls_channel interface (net/tls_channel.hpp) behind a virtual one, so the
// core runs the same code over OpenSSL (the shard) and over a simulated
// channel (the simulator, tests/sim).
//
// Promises:
// - secure_channel has tls_channel's contract: start() begins the
//   handshake, receive() drives it and decrypts, send() encrypts (held while
//   the handshake runs), take_output() gives the ciphertext; failures are
//   sticky and say why.
// - Session resumption lives behind the factory: a channel opened for a
//   session key offers a copy of a session kept under that key (the newest
//   no channel was offered yet, else the newest), keep_sessions() files
//   what the server handed out, and a session whose offer ended the
//   handshake in a failure, a close or an abandoned channel is not offered
//   again. The core never sees an SSL_SESSION.
#pragma once

#include <algorithm>
#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "mxpress/net/tls.hpp"
#include "mxpress/net/tls_channel.hpp"

namespace mxpress::net {

class secure_channel {
public:
    using state = tls_channel::state;
    using progress = tls_channel::progress;

    virtual ~secure_channel() = default;
    virtual progress start() = 0;
    virtual progress receive(std::string_view ciphertext, std::string& plain) = 0;
    virtual bool send(std::string_view plain) = 0;
    virtual bool has_output() const noexcept = 0;
    virtual void take_output(std::string& dst) = 0;
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

class secure_channel_factory {
public:
    virtual ~secure_channel_factory() = default;
    // Throws tls_error when the channel cannot be set up.
    virtual std::unique_ptr<secure_channel> open(const tls_peer& peer) = 0;
    // Files the sessions the server handed out on `channel` under its key.
    virtual void keep_sessions(const std::string& session_key, secure_channel& channel) = 0;
};

// ---- OpenSSL ---------------------------------------------------------------

// A session the factory keeps for a key, and what became of its offers.
struct kept_session {
    ssl_session_ptr session;
    bool offered = false;  // a channel was given a copy
    bool failed = false;   // a handshake that offered it did not complete: not offered again
};

class openssl_channel final : public secure_channel {
public:
    openssl_channel(SSL_CTX* ctx, const tls_peer& peer) : _ch(ctx, tls_stream::role::client) {
        _ch.stream().set_server_name(peer.server_name);
        if (peer.verify) {
            _ch.stream().verify_peer(peer.server_name);
        }
    }
    ~openssl_channel() override {
        if (_offered != nullptr && _ch.handshaking()) {
            _offered->failed = true;  // abandoned mid-handshake (a timeout, a drop)
        }
    }
    openssl_channel(const openssl_channel&) = delete;
    openssl_channel& operator=(const openssl_channel&) = delete;

    // Before start(): the handshake offers `copy` (a copy of `source`'s
    // session, so OpenSSL spends the copy) and reports back to `source`.
    void offer(std::shared_ptr<kept_session> source, SSL_SESSION* copy) {
        _ch.stream().set_session(copy);
        _offered = std::move(source);
    }

    progress start() override { return watch(_ch.start()); }
    progress receive(std::string_view ciphertext, std::string& plain) override {
        return watch(_ch.receive(ciphertext, plain));
    }
    bool send(std::string_view plain) override { return _ch.send(plain); }
    bool has_output() const noexcept override { return _ch.has_output(); }
    void take_output(std::string& dst) override { _ch.take_output(dst); }
    bool resumed() const noexcept override { return _ch.stream().resumed(); }
    const char* version() const noexcept override { return _ch.stream().version(); }
    const std::string& error() const noexcept override { return _ch.error(); }

    tls_stream& stream() noexcept { return _ch.stream(); }

private:
    // A handshake that offered a kept session and failed or was closed
    // marks it: a server that breaks on a ticket is not offered it again.
    progress watch(progress p) {
        if (_offered != nullptr && p.now != state::handshaking) {
            if (p.now != state::open) {
                _offered->failed = true;
            }
            _offered.reset();
        }
        return p;
    }

    tls_channel _ch;
    std::shared_ptr<kept_session> _offered;  // until the handshake ends
};

// One per shard: the SSL_CTX and the sessions kept per key stay on the
// shard's thread.
class openssl_channel_factory final : public secure_channel_factory {
public:
    // sessions_per_key_max: 0 turns resumption off.
    openssl_channel_factory(const std::string& ca_file, std::size_t sessions_per_key_max)
        : _ctx(tls_context::client(ca_file)), _sessions_max(sessions_per_key_max) {}

    std::unique_ptr<secure_channel> open(const tls_peer& peer) override {
        auto ch = std::make_unique<openssl_channel>(_ctx.get(), peer);
        // The newest session not offered yet; when every kept one has been
        // offered, the newest again. Each connection gets a copy: OpenSSL
        // marks a TLS 1.3 session spent once a resumption with it
        // completes, and a pool that opens several connections at once
        // would otherwise spend every ticket it had before the resumed
        // sessions' new tickets arrive, and fall back to full handshakes
        // (seen against Exim: 1 in about 20 runs of 12 connections or
        // more). RFC 8446 C.4 asks clients not to reuse a ticket, against
        // tracking across connections; between one sender and one MX host
        // it links nothing the addresses do not, so a ticket is reused only
        // when no fresh one is left, and a server that refuses it costs a
        // full handshake, as before.
        if (auto it = _sessions.find(peer.session_key); it != _sessions.end()) {
            auto& v = it->second;
            // A kept session is the one its connection holds: a fatal error
            // there makes OpenSSL mark it spent too.
            std::erase_if(v, [](const std::shared_ptr<kept_session>& k) {
                return k->failed || SSL_SESSION_is_resumable(k->session.get()) != 1;
            });
            if (v.empty()) {
                return ch;
            }
            auto pick = std::find_if(v.rbegin(), v.rend(), [](const auto& k) { return !k->offered; });
            const std::shared_ptr<kept_session>& k = pick != v.rend() ? *pick : v.back();
            if (ssl_session_ptr copy(SSL_SESSION_dup(k->session.get())); copy != nullptr) {
                k->offered = true;
                ch->offer(k, copy.get());  // SSL_set_session holds its own reference
            }
        }
        return ch;
    }

    void keep_sessions(const std::string& session_key, secure_channel& channel) override {
        auto& stream = static_cast<openssl_channel&>(channel).stream();
        while (auto s = stream.take_new_session()) {
            if (_sessions_max == 0) {
                continue;
            }
            auto& v = _sessions[session_key];
            v.push_back(std::make_shared<kept_session>(kept_session{std::move(s), false, false}));
            if (v.size() > _sessions_max) {
                v.pop_front();
            }
        }
    }

    // Sessions kept under `session_key` that may still be offered (tests).
    std::size_t usable_sessions(const std::string& session_key) const {
        const auto it = _sessions.find(session_key);
        if (it == _sessions.end()) {
            return 0;
        }
        return static_cast<std::size_t>(std::count_if(it->second.begin(), it->second.end(), [](const auto& k) {
            return !k->failed && SSL_SESSION_is_resumable(k->session.get()) == 1;
        }));
    }

private:
    tls_context _ctx;
    std::size_t _sessions_max;
    // Newest last; shared with the channel offering one until its handshake ends.
    std::unordered_map<std::string, std::deque<std::shared_ptr<kept_session>>> _sessions;
};

}  // namespace mxpress::net
