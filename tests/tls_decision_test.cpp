// engine::decide_tls: every policy at every step of a session, the codes of
// a deferral, and the relay's policy lookup.
#include "mxpress/engine/tls_decision.hpp"

#include <gtest/gtest.h>

namespace {

using namespace mxpress::engine;

tls_decision at(tls_policy policy, tls_step step, bool offered = true, bool window = false, bool implicit = false,
                bool credentials = false) {
    tls_situation s;
    s.policy = policy;
    s.step = step;
    s.starttls_offered = offered;
    s.plaintext_window = window;
    s.implicit_tls = implicit;
    s.credentials = credentials;
    s.peer = "mx.test (192.0.2.1:25)";
    s.detail = "why";
    return decide_tls(s);
}

TEST(TlsDecision, Disabled) {
    EXPECT_EQ(at(tls_policy::disabled, tls_step::connect).action, tls_action::proceed_plaintext);
    EXPECT_EQ(at(tls_policy::disabled, tls_step::ehlo, true).action, tls_action::proceed_plaintext)
        << "never STARTTLS, even when offered";
    EXPECT_EQ(at(tls_policy::disabled, tls_step::ehlo, false).action, tls_action::proceed_plaintext);
}

TEST(TlsDecision, Opportunistic) {
    const auto p = tls_policy::opportunistic;
    EXPECT_EQ(at(p, tls_step::ehlo, true).action, tls_action::start_tls);
    EXPECT_EQ(at(p, tls_step::ehlo, false).action, tls_action::proceed_plaintext);
    EXPECT_EQ(at(p, tls_step::ehlo, true, true).action, tls_action::proceed_plaintext) << "plaintext window";
    EXPECT_EQ(at(p, tls_step::starttls_refused).action, tls_action::proceed_plaintext);
    EXPECT_EQ(at(p, tls_step::handshake_done).action, tls_action::proceed_tls);
    EXPECT_EQ(at(p, tls_step::handshake_failed).action, tls_action::reconnect_plaintext);
    const tls_decision implicit = at(p, tls_step::handshake_failed, true, false, true);
    EXPECT_EQ(implicit.action, tls_action::defer) << "implicit TLS has no plaintext to fall back to";
    EXPECT_EQ(implicit.enhanced, "4.7.5");
    EXPECT_EQ(at(p, tls_step::connect, true, false, true).action, tls_action::start_tls);
}

TEST(TlsDecision, RequiredAndVerifyNeverGoPlaintext) {
    for (const tls_policy p : {tls_policy::required, tls_policy::verify}) {
        SCOPED_TRACE(to_string(p));
        EXPECT_EQ(at(p, tls_step::connect).action, tls_action::proceed_plaintext) << "until the EHLO reply";
        EXPECT_EQ(at(p, tls_step::ehlo, true).action, tls_action::start_tls);
        EXPECT_EQ(at(p, tls_step::ehlo, true, true).action, tls_action::start_tls) << "the window is opportunistic's";
        const tls_decision none = at(p, tls_step::ehlo, false);
        EXPECT_EQ(none.action, tls_action::defer);
        EXPECT_EQ(none.enhanced, "4.7.4");
        EXPECT_EQ(none.reason, fmt::format("TLS is required ({}), but mx.test (192.0.2.1:25) does not offer STARTTLS",
                                           to_string(p)));
        const tls_decision refused = at(p, tls_step::starttls_refused);
        EXPECT_EQ(refused.action, tls_action::defer);
        EXPECT_EQ(refused.enhanced, "4.7.4");
        EXPECT_EQ(refused.reason,
                  fmt::format("TLS is required ({}), but mx.test (192.0.2.1:25) refused STARTTLS: why", to_string(p)));
        const tls_decision failed = at(p, tls_step::handshake_failed);
        EXPECT_EQ(failed.action, tls_action::defer);
        EXPECT_EQ(failed.enhanced, "4.7.5");
        EXPECT_EQ(failed.reason, "TLS with mx.test (192.0.2.1:25) failed: why");
        EXPECT_EQ(at(p, tls_step::handshake_done).action, tls_action::proceed_tls);
    }
}

TEST(TlsDecision, CredentialsNeedTls) {
    for (const tls_policy p : {tls_policy::disabled, tls_policy::opportunistic}) {
        const tls_decision d = at(p, tls_step::connect, true, false, false, true);
        EXPECT_EQ(d.action, tls_action::fail) << to_string(p);
        EXPECT_NE(d.reason.find("credentials are only sent over TLS"), std::string::npos) << d.reason;
    }
    EXPECT_EQ(at(tls_policy::required, tls_step::connect, true, false, false, true).action,
              tls_action::proceed_plaintext);
    EXPECT_EQ(at(tls_policy::verify, tls_step::connect, true, false, true, true).action, tls_action::start_tls);
    // Even if asked later, credentials never let a session go on in plaintext.
    EXPECT_EQ(at(tls_policy::opportunistic, tls_step::ehlo, false, false, false, true).action, tls_action::defer);
    EXPECT_EQ(at(tls_policy::opportunistic, tls_step::handshake_failed, true, false, false, true).action,
              tls_action::defer);
}

TEST(TlsDecision, RelayPolicy) {
    EXPECT_EQ(relay_tls_policy(parse_config("", "c.toml"), "smtp.relay.test"), tls_policy::verify)
        << "a relay is verified unless the file says otherwise";
    EXPECT_EQ(relay_tls_policy(parse_config("[defaults]\ntls = \"disabled\"\n", "c.toml"), "smtp.relay.test"),
              tls_policy::disabled);
    const config c =
        parse_config("[defaults]\ntls = \"disabled\"\n[mx.\"*.relay.test\"]\ntls = \"required\"\n", "c.toml");
    EXPECT_EQ(relay_tls_policy(c, "smtp.relay.test"), tls_policy::required) << "the [mx] entry wins";
    EXPECT_EQ(relay_tls_policy(c, "other.test"), tls_policy::disabled);
}

}  // namespace
