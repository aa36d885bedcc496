// mxpress/engine/tls_decision.hpp — the one place that decides what a TLS
// policy means for a session, used by the delivery core and by the relay
// pre-flight alike.
//
// Promises:
// - decide_tls() is a pure function of the policy and what is known of the
//   session; it never sends anything itself.
// - Under `required` and `verify` no mail is ever sent without TLS: the only
//   outcomes there are "start TLS" and "give up".
#pragma once

#include "mxpress/engine/config.hpp"

namespace mxpress::engine {

enum class tls_step {
    send_mail,  // carry on as the session is (TLS already on, or plaintext allowed)
    starttls,   // send STARTTLS now
    give_up,    // the policy forbids mail over this session: close it, the work moves on
};

struct tls_situation {
    tls_policy policy = tls_policy::opportunistic;
    bool tls_active = false;        // TLS is on (implicit TLS, or after STARTTLS)
    bool starttls_offered = false;  // the server's EHLO lists STARTTLS
    bool plaintext_window = false;  // opportunistic TLS failed here lately: plaintext for now
};

// After the EHLO of a session: what the policy says to do next.
inline tls_step decide_tls(const tls_situation& s) noexcept {
    if (s.tls_active) {
        return tls_step::send_mail;
    }
    switch (s.policy) {
        case tls_policy::disabled: return tls_step::send_mail;
        case tls_policy::opportunistic:
            return s.starttls_offered && !s.plaintext_window ? tls_step::starttls : tls_step::send_mail;
        case tls_policy::required:
        case tls_policy::verify: return s.starttls_offered ? tls_step::starttls : tls_step::give_up;
    }
    return tls_step::give_up;
}

// The server refused STARTTLS (a 4xx/5xx reply to it): may the session
// still carry mail in plaintext?
inline bool plaintext_after_refusal(tls_policy p) noexcept {
    return p == tls_policy::opportunistic || p == tls_policy::disabled;
}

// A TLS handshake failed: does the host get plaintext for a while (true), or
// is it a failure of the host for this policy (false)?
inline bool plaintext_after_handshake_failure(tls_policy p, bool implicit_tls) noexcept {
    return p == tls_policy::opportunistic && !implicit_tls;
}

}  // namespace mxpress::engine
