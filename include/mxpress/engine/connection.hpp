// mxpress/engine/connection.hpp — one SMTP connection as the delivery core
// keeps it: its life cycle as one state, the SMTP client, TLS, and the (at
// most two) transactions it carries.
//
// Life cycle (every transition is made by the core, in core_schedule.hpp and
// core_sessions.hpp):
//
//   connecting ──connected──▶ opening ◀──────────────┐ (EHLO again after TLS)
//       │ implicit TLS              │ STARTTLS 220    │
//       └──────▶ tls_handshake ◀────┘ ── handshake ───┘
//                 opening ──ready + TLS decided──▶ open ⇄ idle
//                 open/idle ──QUIT, or given up──▶ closing
//   any state ──failure, timeout, or the session closed──▶ ended (close command)
//
// Promises:
// - `state` alone says where the connection is; the only other flag is
//   `send_in_flight` (at most one send per connection, so TLS records and
//   SMTP bytes stay in order).
// - A recipient in a slot is owned by the connection until its transaction
//   ends; the client borrows the slot's message until then.
// - A connection that ends while opening (greeting, EHLO, STARTTLS) tells its
//   pool the host failed; one that ends while closing tells nobody.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "mxpress/engine/recipient.hpp"
#include "mxpress/net/secure_channel.hpp"
#include "mxpress/smtp/client.hpp"

namespace mxpress::engine {

struct mx_pool;

using conn_id = std::uint64_t;

enum class conn_state : std::uint8_t {
    connecting,     // TCP connect under way
    tls_handshake,  // TLS handshake (implicit TLS, or after STARTTLS's 220)
    opening,        // greeting, EHLO, STARTTLS, AUTH: no mail yet
    open,           // the session takes mail (transactions run here)
    idle,           // open, nothing to do since idle_since
    closing,        // QUIT sent, or given up for TLS reasons: its end reports nothing
    ended,          // torn down: the close command is out; freed when the event returns
};

inline const char* to_string(conn_state s) noexcept {
    switch (s) {
        case conn_state::connecting: return "connecting";
        case conn_state::tls_handshake: return "tls_handshake";
        case conn_state::opening: return "opening";
        case conn_state::open: return "open";
        case conn_state::idle: return "idle";
        case conn_state::closing: return "closing";
        case conn_state::ended: return "ended";
    }
    return "?";
}

struct connection {
    struct slot {
        std::unique_ptr<recipient> r;
        // Rendered here; shared with the client and a send in flight when
        // the body leaves as a piece (shard_options::gather_sends).
        std::shared_ptr<std::string> message = std::make_shared<std::string>();
    };

    connection(conn_id i, mx_pool* p, const std::string& helo, const smtp::timeouts& t)
        : id(i), pool(p), client(helo, t) {}

    conn_id id;
    mx_pool* pool;  // borrowed: the pool outlives its connections
    conn_state state = conn_state::connecting;
    smtp::client client;
    std::unique_ptr<net::secure_channel> tls;
    bool send_in_flight = false;
    bool holds_provider_place = false;  // counted in its pool's provider (given back at teardown)
    clock::time_point idle_since{};
    clock::time_point deadline = clock::time_point::max();  // of the current wait
    clock::time_point tls_deadline{};                       // of the handshake
    std::string plain;                                      // decrypted input, reused
    std::string plain_out;                                  // the client's output on its way into TLS, reused
    std::string spare;           // the send buffer the driver gave back, reused for the next send
    slot slots[2];               // the index is the client's tag
    std::uint32_t messages = 0;  // transactions started on this connection

    bool busy() const noexcept { return slots[0].r != nullptr || slots[1].r != nullptr; }
    bool took_mail() const noexcept { return state == conn_state::open || state == conn_state::idle; }
    // "TLSv1.3" and such once the handshake is done; "none" otherwise (static strings).
    const char* tls_version() const noexcept { return tls ? tls->version() : "none"; }
};

}  // namespace mxpress::engine
