// mxpress/net/tls.hpp — TLS over memory BIOs (OpenSSL 3), for any I/O driver.
//
// A tls_stream is a sans-I/O TLS endpoint: ciphertext in (feed()), plaintext
// out (read()), plaintext in (write()), ciphertext out (take_output()). The
// engine moves the bytes over io_uring; tests pair a client and a server in
// memory. Nothing here touches a socket or a clock: the handshake deadline is
// the engine's.
//
// Promises:
// - Every SSL_CTX, SSL and SSL_SESSION handle is owned by a unique_ptr.
// - OpenSSL's thread-local error queue is drained after every failing call;
//   the reasons become error(), so a failed delivery can name them.
// - TLS 1.2 is the minimum in both directions.
// - A client that asks for verification checks the chain against the
//   context's trust store and the peer's name (DNS name or IP literal).
// - Session resumption: a client stream can be given a cached session
//   (set_session) and hands each new session the server sends
//   (take_new_session), TLS 1.3 tickets and TLS 1.2 session IDs alike.
//
// Lifetime: a tls_stream borrows its SSL_CTX (via SSL_new's reference, so
// the context may even go first).
#pragma once

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

namespace mxpress::net {

struct tls_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct ssl_ctx_free_fn {
    void operator()(SSL_CTX* p) const noexcept { SSL_CTX_free(p); }
};
struct ssl_free_fn {
    void operator()(SSL* p) const noexcept { SSL_free(p); }
};
struct ssl_session_free_fn {
    void operator()(SSL_SESSION* p) const noexcept { SSL_SESSION_free(p); }
};
using ssl_ctx_ptr = std::unique_ptr<SSL_CTX, ssl_ctx_free_fn>;
using ssl_ptr = std::unique_ptr<SSL, ssl_free_fn>;
using ssl_session_ptr = std::unique_ptr<SSL_SESSION, ssl_session_free_fn>;

// Empties this thread's OpenSSL error queue; returns its reasons joined by
// "; " (empty when there were none).
inline std::string take_openssl_errors() {
    std::string out;
    while (const unsigned long e = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        if (!out.empty()) {
            out += "; ";
        }
        // "error:0A000086:SSL routines::certificate verify failed" → keep the reason.
        const char* reason = ERR_reason_error_string(e);
        out += reason != nullptr ? reason : buf;
    }
    return out;
}

inline bool is_ip_literal(const std::string& host) {
    unsigned char buf[sizeof(in6_addr)];
    return ::inet_pton(AF_INET, host.c_str(), buf) == 1 || ::inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

class tls_stream;

namespace detail_tls {

// A write-only BIO that appends ciphertext to a std::string (BIO data):
// take_output() then swaps the string out, so records are copied once,
// from OpenSSL's buffer to ours, and never zero-filled or copied again.
inline int string_bio_write(BIO* b, const char* data, int len) {
    static_cast<std::string*>(BIO_get_data(b))->append(data, static_cast<std::size_t>(len));
    return len;
}

inline long string_bio_ctrl(BIO* b, int cmd, long /*num*/, void* /*ptr*/) {
    switch (cmd) {
        case BIO_CTRL_FLUSH: return 1;
        case BIO_CTRL_WPENDING:
        case BIO_CTRL_PENDING: return static_cast<long>(static_cast<std::string*>(BIO_get_data(b))->size());
        default: return 0;
    }
}

inline int string_bio_create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
}

inline const BIO_METHOD* string_bio_method() {
    // Built once (thread-safe static init) and never freed: OpenSSL keeps a
    // pointer to it in every BIO.
    static BIO_METHOD* const method = [] {
        BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mxpress string sink");
        if (m == nullptr || BIO_meth_set_write(m, &string_bio_write) != 1 ||
            BIO_meth_set_ctrl(m, &string_bio_ctrl) != 1 || BIO_meth_set_create(m, &string_bio_create) != 1) {
            throw tls_error("BIO_meth_new: " + take_openssl_errors());
        }
        return m;
    }();
    return method;
}

}  // namespace detail_tls

// One SSL_CTX (one per shard, one per mxsink process).
class tls_context {
public:
    // A client context. `ca_file` empty: the system's trust store (used only
    // by streams that ask for verification). Throws tls_error naming the file.
    static tls_context client(const std::string& ca_file = {}) {
        tls_context c(TLS_client_method());
        // OpenSSL's default TLS 1.3 suite order stays: measured here (Debian
        // 12, OpenSSL 3.0), neither AES-128-GCM first nor ChaCha20 first
        // lowered CPU per message; the per-record EVP setup dominates.
        // Sessions are cached by the engine per MX host, not by OpenSSL.
        SSL_CTX_set_session_cache_mode(c.get(), SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(c.get(), &tls_context::on_new_session);
        const int ok = ca_file.empty() ? SSL_CTX_set_default_verify_paths(c.get())
                                       : SSL_CTX_load_verify_locations(c.get(), ca_file.c_str(), nullptr);
        if (ok != 1) {
            const std::string why = take_openssl_errors();
            throw tls_error(ca_file.empty() ? "cannot load the system CA certificates: " + why
                                            : ca_file + ": cannot load CA certificates: " + why);
        }
        return c;
    }

    // A server context with a certificate chain and its key (PEM files).
    // Throws tls_error naming the file at fault.
    static tls_context server(const std::string& cert_file, const std::string& key_file) {
        tls_context c(TLS_server_method());
        if (SSL_CTX_use_certificate_chain_file(c.get(), cert_file.c_str()) != 1) {
            throw tls_error(cert_file + ": cannot load the certificate: " + take_openssl_errors());
        }
        if (SSL_CTX_use_PrivateKey_file(c.get(), key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
            throw tls_error(key_file + ": cannot load the private key: " + take_openssl_errors());
        }
        if (SSL_CTX_check_private_key(c.get()) != 1) {
            throw tls_error(key_file + ": the key does not match " + cert_file + ": " + take_openssl_errors());
        }
        // Stateless tickets (TLS 1.3) and a session cache (TLS 1.2 IDs):
        // both are how clients resume.
        SSL_CTX_set_session_cache_mode(c.get(), SSL_SESS_CACHE_SERVER);
        SSL_CTX_set_session_id_context(c.get(), reinterpret_cast<const unsigned char*>("mxsink"), 6);
        return c;
    }

    SSL_CTX* get() const noexcept { return _ctx.get(); }

private:
    explicit tls_context(const SSL_METHOD* method) : _ctx(SSL_CTX_new(method)) {
        if (!_ctx) {
            throw tls_error("SSL_CTX_new: " + take_openssl_errors());
        }
        SSL_CTX_set_min_proto_version(_ctx.get(), TLS1_2_VERSION);
        // No SSL_MODE_RELEASE_BUFFERS: freeing and reallocating the record
        // buffers around every read and write costs more CPU than the
        // ~34 KB per connection it saves.
    }

    static int on_new_session(SSL* ssl, SSL_SESSION* session);

    ssl_ctx_ptr _ctx;
};

class tls_stream {
public:
    enum class role { client, server };
    enum class result {
        ok,         // done (handshake complete, or every byte handled)
        want_more,  // needs more ciphertext from the peer (send take_output() first)
        closed,     // the peer sent close_notify
        failed,     // fatal: error() says why
    };

    tls_stream(SSL_CTX* ctx, role r) : _ssl(SSL_new(ctx)) {
        if (!_ssl) {
            throw tls_error("SSL_new: " + take_openssl_errors());
        }
        BIO* in = BIO_new(BIO_s_mem());
        BIO* out = BIO_new(detail_tls::string_bio_method());
        if (in == nullptr || out == nullptr) {
            BIO_free(in);
            BIO_free(out);
            throw tls_error("BIO_new: " + take_openssl_errors());
        }
        BIO_set_mem_eof_return(in, -1);    // empty input means "retry", not EOF
        SSL_set_bio(_ssl.get(), in, out);  // _ssl owns both now
        BIO_set_data(out, &_out);
        _in = in;
        SSL_set_app_data(_ssl.get(), this);
        if (r == role::client) {
            SSL_set_connect_state(_ssl.get());
        } else {
            SSL_set_accept_state(_ssl.get());
        }
    }
    ~tls_stream() {
        // SSL_free marks the session not resumable unless the connection
        // was shut down cleanly; the engine's cache must not lose a good
        // session to a peer that closes without close_notify (most MTAs).
        if (_established) {
            SSL_set_shutdown(_ssl.get(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        }
    }
    tls_stream(const tls_stream&) = delete;
    tls_stream& operator=(const tls_stream&) = delete;

    // Client: SNI (skipped for an IP literal, as RFC 6066 §3 says).
    void set_server_name(const std::string& host) {
        if (!host.empty() && !is_ip_literal(host)) {
            SSL_set_tlsext_host_name(_ssl.get(), host.c_str());
        }
    }

    // Client: fail the handshake unless the chain is trusted and the
    // certificate names `host` (a DNS name, or an IP literal).
    void verify_peer(const std::string& host) {
        SSL_set_verify(_ssl.get(), SSL_VERIFY_PEER, nullptr);
        X509_VERIFY_PARAM* param = SSL_get0_param(_ssl.get());
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        const int ok = is_ip_literal(host) ? X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str())
                                           : X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size());
        if (ok != 1) {
            throw tls_error("cannot check the name " + host + ": " + take_openssl_errors());
        }
        _verifying = true;
    }

    // Client: resume this session if the server agrees (borrowed; OpenSSL
    // takes its own reference).
    void set_session(SSL_SESSION* s) {
        if (s != nullptr) {
            SSL_set_session(_ssl.get(), s);
        }
    }

    // Ciphertext from the peer.
    void feed(std::string_view ciphertext) {
        while (!ciphertext.empty()) {
            const int n =
                BIO_write(_in, ciphertext.data(), static_cast<int>(std::min<std::size_t>(ciphertext.size(), 1 << 30)));
            if (n <= 0) {
                throw tls_error("BIO_write: " + take_openssl_errors());
            }
            ciphertext.remove_prefix(static_cast<std::size_t>(n));
        }
    }

    // Advances the handshake with what was fed so far.
    result handshake() {
        ERR_clear_error();
        const int rc = SSL_do_handshake(_ssl.get());
        if (rc == 1) {
            _established = true;
            return result::ok;
        }
        return failure_or_retry(rc);
    }

    // Decrypts everything fed so far onto `plain`.
    result read(std::string& plain) {
        // The error queue is empty here: every failure drains it. Not
        // clearing it again saves a thread-local lookup per call.
        char buf[16 * 1024];  // one record's worth; no zero-filled string growth
        for (;;) {
            std::size_t n = 0;
            const int rc = SSL_read_ex(_ssl.get(), buf, sizeof buf, &n);
            plain.append(buf, n);
            if (rc == 1 && BIO_ctrl_pending(_in) == 0 && SSL_pending(_ssl.get()) == 0) {
                return result::ok;  // all fed input consumed: skip the call that would say WANT_READ
            }
            if (rc != 1) {
                if (SSL_get_error(_ssl.get(), rc) == SSL_ERROR_ZERO_RETURN) {
                    return result::closed;
                }
                const result r = failure_or_retry(rc);
                return r == result::want_more ? result::ok : r;
            }
        }
    }

    // Encrypts `plain` onto the output (memory BIOs never block a write).
    result write(std::string_view plain) {
        if (plain.empty()) {
            return result::ok;
        }
        std::size_t n = 0;
        if (SSL_write_ex(_ssl.get(), plain.data(), plain.size(), &n) != 1 || n != plain.size()) {
            return failure_or_retry(0) == result::failed ? result::failed : fail("short TLS write");
        }
        return result::ok;
    }

    // Queues a close_notify alert (best effort).
    void shutdown() {
        if (_established) {
            ERR_clear_error();
            SSL_shutdown(_ssl.get());
            ERR_clear_error();
        }
    }

    bool has_output() const noexcept { return !_out.empty(); }

    // Moves the pending ciphertext into `dst` (old content dropped).
    void take_output(std::string& dst) {
        dst.clear();
        dst.swap(_out);  // dst's buffer is reused for the next records
    }

    bool established() const noexcept { return _established; }
    bool resumed() const noexcept { return SSL_session_reused(_ssl.get()) == 1; }
    // "TLSv1.3", "TLSv1.2"; "none" before the handshake ends.
    const char* version() const noexcept { return _established ? SSL_get_version(_ssl.get()) : "none"; }
    const std::string& error() const noexcept { return _error; }

    // The oldest session the server gave for resumption and nobody took
    // yet (null when none is left). A TLS 1.3 server usually sends two.
    ssl_session_ptr take_new_session() noexcept {
        if (_new_sessions.empty()) {
            return nullptr;
        }
        ssl_session_ptr s = std::move(_new_sessions.front());
        _new_sessions.erase(_new_sessions.begin());
        return s;
    }

private:
    friend class tls_context;

    result fail(std::string why) {
        _error = std::move(why);
        return result::failed;
    }

    result failure_or_retry(int rc) {
        const int err = SSL_get_error(_ssl.get(), rc);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            return result::want_more;
        }
        std::string why = take_openssl_errors();
        if (_verifying) {
            const long v = SSL_get_verify_result(_ssl.get());
            if (v != X509_V_OK) {
                why = std::string("certificate verification failed: ") + X509_verify_cert_error_string(v);
            }
        }
        if (why.empty()) {
            why = err == SSL_ERROR_SYSCALL ? "unexpected end of the TLS stream" : "TLS error " + std::to_string(err);
        }
        return fail(std::move(why));
    }

    ssl_ptr _ssl;
    BIO* _in = nullptr;  // owned by _ssl
    std::string _out;    // ciphertext not yet taken (written by the string BIO)
    bool _established = false;
    bool _verifying = false;
    std::string _error;
    std::vector<ssl_session_ptr> _new_sessions;  // at most new_sessions_max
    static constexpr std::size_t new_sessions_max = 4;
};

// OpenSSL hands a new session to the stream that received it; returning 1
// keeps the reference for us.
inline int tls_context::on_new_session(SSL* ssl, SSL_SESSION* session) {
    auto* stream = static_cast<tls_stream*>(SSL_get_app_data(ssl));
    if (stream == nullptr) {
        return 0;
    }
    if (stream->_new_sessions.size() >= tls_stream::new_sessions_max) {
        stream->_new_sessions.erase(stream->_new_sessions.begin());
    }
    stream->_new_sessions.emplace_back(session);
    return 1;
}

}  // namespace mxpress::net
