// mxpress/engine/tls_decision.hpp — what a session does about TLS, decided
// in one place for the delivery engine and the relay pre-flight alike.
//
// decide_tls() takes the configured policy, what the server offered and how
// the last TLS step went, and says what to do: start TLS, go on over TLS, go
// on in plaintext, try again on a new plaintext connection, defer the mail,
// or fail (a configuration that can never be honoured). Pure: no I/O, no
// clock, no state; the caller applies the action.
//
// Promises (the policy contract README states under "TLS and relays"):
// - disabled: never STARTTLS; plaintext whatever the server offers.
// - opportunistic: STARTTLS when offered (and the host is not in its
//   plaintext window after a failed handshake); a refused STARTTLS goes on
//   in plaintext; a failed handshake makes the connection useless, so the
//   mail goes on a new plaintext connection (implicit TLS has no plaintext
//   to fall back to: deferred).
// - required and verify: never one byte of message data without TLS. No
//   STARTTLS or a refused one defers with 4.7.4, a failed handshake with
//   4.7.5, each with the reason.
// - Credentials (AUTH) need TLS whatever the policy says: with a policy
//   that allows plaintext, the session fails before it connects.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "mxpress/engine/config.hpp"

namespace mxpress::engine {

// The step of the session at which TLS is decided.
enum class tls_step : std::uint8_t {
    connect,           // before the first byte
    ehlo,              // the server's EHLO reply is in: what does it offer?
    starttls_refused,  // the server answered STARTTLS with an error
    handshake_done,    // the handshake completed
    handshake_failed,  // the handshake failed, timed out or was dropped
};

struct tls_situation {
    tls_policy policy = tls_policy::opportunistic;
    tls_step step = tls_step::connect;
    bool implicit_tls = false;      // TLS from the first byte (port 465)
    bool credentials = false;       // AUTH follows: TLS is a must
    bool starttls_offered = false;  // the EHLO reply listed STARTTLS
    bool plaintext_window = false;  // opportunistic TLS failed at this host lately
    std::string_view peer;          // for reasons: "mx.example (192.0.2.1:25)"
    std::string_view detail;        // the refusal's reply or the handshake's error
};

enum class tls_action : std::uint8_t {
    start_tls,            // send STARTTLS, or (implicit TLS) begin the handshake
    proceed_tls,          // carry the mail over the TLS session
    proceed_plaintext,    // carry the mail in plaintext on this connection
    reconnect_plaintext,  // this connection is spent; a new plaintext one may carry the mail
    defer,                // no mail this way now: a temporary failure with `enhanced` and `reason`
    fail,                 // the configuration can never work: `reason` says why
};

struct tls_decision {
    tls_action action = tls_action::defer;
    std::string_view enhanced;  // "4.7.4" or "4.7.5" for defer, else empty
    std::string reason;         // for defer and fail
};

inline const char* to_string(tls_action a) noexcept {
    switch (a) {
        case tls_action::start_tls: return "start_tls";
        case tls_action::proceed_tls: return "proceed_tls";
        case tls_action::proceed_plaintext: return "proceed_plaintext";
        case tls_action::reconnect_plaintext: return "reconnect_plaintext";
        case tls_action::defer: return "defer";
        case tls_action::fail: return "fail";
    }
    return "?";
}

// True when the policy (or credentials) forbids message data in plaintext.
inline bool tls_mandatory(tls_policy p, bool credentials) noexcept {
    return credentials || p == tls_policy::required || p == tls_policy::verify;
}

// The policy for a relay (--relay HOST): its [mx."HOST"] entry, else
// [defaults] tls when the file sets it, else verify (a submission server
// must prove who it is before it gets credentials or mail).
inline tls_policy relay_tls_policy(const config& cfg, std::string_view host) {
    for (const auto& [pattern, p] : cfg.mx_tls) {
        if (host_pattern_matches(pattern, host)) {
            return p;
        }
    }
    return cfg.tls_set ? cfg.tls : tls_policy::verify;
}

inline tls_decision decide_tls(const tls_situation& s) {
    const bool mandatory = tls_mandatory(s.policy, s.credentials);
    switch (s.step) {
        case tls_step::connect:
            if (s.credentials && s.policy != tls_policy::required && s.policy != tls_policy::verify) {
                return {tls_action::fail,
                        {},
                        fmt::format("credentials are only sent over TLS, but the TLS policy for {} is \"{}\" (use "
                                    "\"required\" or \"verify\")",
                                    s.peer, to_string(s.policy))};
            }
            return {s.implicit_tls ? tls_action::start_tls : tls_action::proceed_plaintext, {}, {}};
        case tls_step::ehlo:
            if (s.implicit_tls) {
                return {tls_action::proceed_tls, {}, {}};  // already under TLS
            }
            if (s.policy == tls_policy::disabled && !s.credentials) {
                return {tls_action::proceed_plaintext, {}, {}};
            }
            if (s.starttls_offered && (mandatory || !s.plaintext_window)) {
                return {tls_action::start_tls, {}, {}};
            }
            if (!mandatory) {
                return {tls_action::proceed_plaintext, {}, {}};
            }
            return {tls_action::defer, "4.7.4",
                    fmt::format("TLS is required ({}), but {} does not offer STARTTLS", to_string(s.policy), s.peer)};
        case tls_step::starttls_refused:
            if (!mandatory) {
                return {tls_action::proceed_plaintext, {}, {}};
            }
            return {tls_action::defer, "4.7.4",
                    fmt::format("TLS is required ({}), but {} refused STARTTLS: {}", to_string(s.policy), s.peer,
                                s.detail)};
        case tls_step::handshake_done: return {tls_action::proceed_tls, {}, {}};
        case tls_step::handshake_failed:
            if (!mandatory && !s.implicit_tls) {
                return {tls_action::reconnect_plaintext, {}, {}};
            }
            return {tls_action::defer, "4.7.5", fmt::format("TLS with {} failed: {}", s.peer, s.detail)};
    }
    return {tls_action::defer, "4.7.5", "unknown TLS step"};
}

}  // namespace mxpress::engine
