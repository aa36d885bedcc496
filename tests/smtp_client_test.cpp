// Golden transcripts for smtp/client.hpp: every branch of the session and
// transaction state machine, driven without sockets.
#include "mxpress/smtp/client.hpp"

#include <gtest/gtest.h>

namespace {

using namespace mxpress::smtp;

// Drives a client: `server()` feeds bytes, `sent()` takes what the client wrote.
struct session {
    client c{"sender.example"};
    std::vector<event> events;

    std::string sent() {
        std::string s(c.output());
        c.consume_output(s.size());
        return s;
    }
    void server(std::string_view bytes, std::size_t step = 0) {
        if (step == 0) {
            c.receive(bytes);
        } else {
            for (std::size_t i = 0; i < bytes.size(); i += step) {
                c.receive(bytes.substr(i, step));
            }
        }
        while (auto e = c.next_event()) {
            events.push_back(std::move(*e));
        }
    }
    event take_event() {
        EXPECT_FALSE(events.empty());
        if (events.empty()) {
            return event{event_kind::closed, {}, std::nullopt, false};
        }
        event e = std::move(events.front());
        events.erase(events.begin());
        return e;
    }
    // Greeting + EHLO with the given capability lines.
    void open(
        const std::string& caps = "250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n") {
        EXPECT_EQ(c.timeout(), std::chrono::seconds(300));
        server("220 mx.example ESMTP\r\n");
        EXPECT_EQ(sent(), "EHLO sender.example\r\n");
        server("250-mx.example\r\n" + caps);
        const event e = take_event();
        EXPECT_EQ(e.kind, event_kind::ready);
        EXPECT_EQ(c.current_state(), client::state::ready);
        EXPECT_EQ(c.timeout(), std::nullopt);
    }
};

envelope env(std::vector<std::string> rcpts, bool eight_bit = false) {
    envelope e;
    e.mail_from = "bounce@sender.example";
    e.rcpt_to = std::move(rcpts);
    e.eight_bit = eight_bit;
    return e;
}

const std::string msg = "Subject: t\r\n\r\n.dot\r\nbody\r\n";

TEST(SmtpClient, CapabilitiesAreParsed) {
    session s;
    s.open(
        "250-PIPELINING\r\n250-SIZE 35882577\r\n250-STARTTLS\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n"
        "250-AUTH PLAIN LOGIN\r\n250 ENHANCEDSTATUSCODES\r\n");
    const auto& caps = s.c.caps();
    EXPECT_TRUE(caps.pipelining && caps.starttls && caps.eight_bit_mime && caps.smtputf8 && caps.chunking &&
                caps.enhanced_status_codes);
    EXPECT_EQ(caps.size_max, 35882577u);
    EXPECT_EQ(caps.auth_mechanisms, (std::vector<std::string>{"PLAIN", "LOGIN"}));
}

TEST(SmtpClient, PipelinedTransactionInOneWrite) {
    session s;
    s.open();
    s.c.start_transaction(env({"a@x.org", "b@x.org"}, true), msg);
    EXPECT_EQ(s.sent(), "MAIL FROM:<bounce@sender.example> SIZE=" + std::to_string(msg.size()) +
                            " BODY=8BITMIME\r\nRCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n");
    EXPECT_EQ(s.c.timeout(), std::chrono::seconds(300));
    s.server("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n");
    EXPECT_EQ(s.sent(), "Subject: t\r\n\r\n..dot\r\nbody\r\n.\r\n");
    EXPECT_EQ(s.c.timeout(), std::chrono::seconds(600)) << "waiting for the final reply: 10 minutes";
    s.server("250 2.0.0 queued as X\r\n");
    const event e = s.take_event();
    ASSERT_EQ(e.kind, event_kind::transaction_done);
    ASSERT_TRUE(e.result.has_value());
    EXPECT_TRUE(e.result->data_sent);
    EXPECT_FALSE(e.result->bdat) << "no CHUNKING offered: DATA";
    EXPECT_EQ(e.result->recipients[0].one_line(), "250 2.0.0 queued as X");
    EXPECT_EQ(e.result->recipients[1].one_line(), "550 5.1.1 no such user");
    EXPECT_EQ(s.c.transactions_completed(), 1u);
    // Reuse: the next transaction needs no RSET after a completed one.
    s.c.start_transaction(env({"c@x.org"}), msg);
    EXPECT_TRUE(s.sent().starts_with("MAIL FROM:"));
}

TEST(SmtpClient, WithoutPipeliningOneCommandPerReply) {
    session s;
    s.open("250 HELP\r\n");
    s.c.start_transaction(env({"a@x.org", "b@x.org"}, true), msg);
    EXPECT_EQ(s.sent(), "MAIL FROM:<bounce@sender.example>\r\n") << "no SIZE or BODY without the extensions";
    s.server("250 ok\r\n");
    EXPECT_EQ(s.sent(), "RCPT TO:<a@x.org>\r\n");
    s.server("250 ok\r\n");
    EXPECT_EQ(s.sent(), "RCPT TO:<b@x.org>\r\n");
    s.server("250 ok\r\n");
    EXPECT_EQ(s.sent(), "DATA\r\n");
    EXPECT_EQ(s.c.timeout(), std::chrono::seconds(120));
    s.server("354 go\r\n");
    EXPECT_EQ(s.sent(), "Subject: t\r\n\r\n..dot\r\nbody\r\n.\r\n");
    s.server("250 done\r\n");
    const event e = s.take_event();
    ASSERT_EQ(e.kind, event_kind::transaction_done);
    EXPECT_EQ(e.result->recipients[0].code, 250);
    EXPECT_EQ(e.result->recipients[1].code, 250);
}

TEST(SmtpClient, EhloRefusedFallsBackToHelo) {
    session s;
    s.server("220 old.example\r\n");
    EXPECT_EQ(s.sent(), "EHLO sender.example\r\n");
    s.server("502 command not implemented\r\n");
    EXPECT_EQ(s.sent(), "HELO sender.example\r\n");
    s.server("250 old.example\r\n");
    EXPECT_EQ(s.take_event().kind, event_kind::ready);
    EXPECT_FALSE(s.c.caps().esmtp);
}

TEST(SmtpClient, GreetingRefusedClosesTheSession) {
    session s;
    s.server("554 5.7.1 no service for you\r\n");
    const event e = s.take_event();
    EXPECT_EQ(e.kind, event_kind::closed);
    EXPECT_EQ(e.last_reply.code, 554);
    EXPECT_EQ(s.c.current_state(), client::state::closed);
}

TEST(SmtpClient, AllRecipientsRejectedSendsNoBody) {
    session s;
    s.open();
    s.c.start_transaction(env({"a@x.org", "b@x.org"}), msg);
    s.sent();
    s.server("250 ok\r\n550 no\r\n550 no\r\n554 5.5.1 no valid recipients\r\n");
    EXPECT_EQ(s.sent(), "") << "not a byte of the message";
    const event e = s.take_event();
    ASSERT_EQ(e.kind, event_kind::transaction_done);
    EXPECT_FALSE(e.result->data_sent);
    EXPECT_EQ(e.result->recipients[0].code, 550);
    EXPECT_EQ(e.result->recipients[1].code, 550);
    // The server still holds the MAIL: the next transaction starts with RSET.
    s.c.start_transaction(env({"c@x.org"}), msg);
    EXPECT_TRUE(s.sent().starts_with("RSET\r\nMAIL FROM:"));
    s.server("250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    s.sent();
    s.server("250 ok\r\n");
    EXPECT_EQ(s.take_event().result->recipients[0].code, 250);
}

TEST(SmtpClient, AllRecipientsRejectedButDataAcceptedEndsWithLoneDot) {
    session s;
    s.open();
    s.c.start_transaction(env({"a@x.org"}), msg);
    s.sent();
    s.server("250 ok\r\n550 no\r\n354 go\r\n");
    EXPECT_EQ(s.sent(), ".\r\n") << "RFC 2920: end the data at once, send no message";
    s.server("554 no valid recipients\r\n");
    const event e = s.take_event();
    ASSERT_EQ(e.kind, event_kind::transaction_done);
    EXPECT_FALSE(e.result->data_sent);
    EXPECT_EQ(e.result->recipients[0].code, 550);
}

TEST(SmtpClient, MailRejectedAppliesToEveryRecipient) {
    session s;
    s.open();
    s.c.start_transaction(env({"a@x.org", "b@x.org"}), msg);
    s.sent();
    s.server("552 5.3.4 message too big\r\n503 bad sequence\r\n503 bad sequence\r\n503 bad sequence\r\n");
    const event e = s.take_event();
    ASSERT_EQ(e.kind, event_kind::transaction_done);
    EXPECT_EQ(e.result->recipients[0].one_line(), "552 5.3.4 message too big");
    EXPECT_EQ(e.result->recipients[1].one_line(), "552 5.3.4 message too big");
    s.c.start_transaction(env({"c@x.org"}), msg);
    EXPECT_TRUE(s.sent().starts_with("MAIL FROM:")) << "no RSET needed: no transaction was open";
}

TEST(SmtpClient, RejectAtFinalDot) {
    session s;
    s.open();
    s.c.start_transaction(env({"a@x.org", "b@x.org"}), msg);
    s.sent();
    s.server("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    s.sent();
    s.server("554 5.7.1 content rejected\r\n");
    const event e = s.take_event();
    EXPECT_EQ(e.result->recipients[0].one_line(), "554 5.7.1 content rejected");
    EXPECT_EQ(e.result->recipients[1].one_line(), "554 5.7.1 content rejected");
    EXPECT_TRUE(e.result->data_sent);
}

TEST(SmtpClient, DataRefusedWith451) {
    session s;
    s.open();
    s.c.start_transaction(env({"a@x.org"}), msg);
    s.sent();
    s.server("250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n");
    const event e = s.take_event();
    EXPECT_EQ(e.result->recipients[0].one_line(), "451 4.3.0 try later");
    EXPECT_FALSE(e.result->data_sent);
}

TEST(SmtpClient, Server421MidTransactionFailsPendingRecipientsTransiently) {
    session s;
    s.open();
    s.c.start_transaction(env({"a@x.org", "b@x.org"}), msg);
    s.sent();
    s.server("250 ok\r\n550 5.1.1 unknown\r\n421 4.3.2 shutting down\r\n");
    const event done = s.take_event();
    ASSERT_EQ(done.kind, event_kind::transaction_done);
    EXPECT_EQ(done.result->recipients[0].one_line(), "550 5.1.1 unknown") << "a final answer stays final";
    EXPECT_EQ(done.result->recipients[1].one_line(), "421 4.3.2 shutting down");
    const event closed = s.take_event();
    EXPECT_EQ(closed.kind, event_kind::closed);
    EXPECT_EQ(s.c.current_state(), client::state::closed);
}

TEST(SmtpClient, ConnectionLostAfterBodyIsNotDelivered) {
    session s;
    s.open();
    s.c.start_transaction(env({"a@x.org"}), msg);
    s.sent();
    s.server("250 ok\r\n250 ok\r\n354 go\r\n");
    s.sent();
    s.c.connection_lost("reset by peer");
    const event e = s.c.next_event().value();
    ASSERT_EQ(e.kind, event_kind::transaction_done);
    EXPECT_EQ(e.result->recipients[0].code, 421);
    EXPECT_TRUE(e.result->recipients[0].transient());
    EXPECT_EQ(e.result->recipients[0].text, "connection lost: reset by peer");
    EXPECT_EQ(s.c.next_event()->kind, event_kind::closed);
}

TEST(SmtpClient, TimeoutFailsTheSession) {
    session s;
    s.open();
    s.c.start_transaction(env({"a@x.org"}), msg);
    s.sent();
    s.c.timed_out();
    const event e = s.c.next_event().value();
    EXPECT_EQ(e.result->recipients[0].one_line(), "421 4.4.2 timeout waiting for the reply to MAIL FROM");
}

TEST(SmtpClient, RepliesSplitByteByByte) {
    session s;
    s.server("220 hi\r\n", 1);
    s.sent();
    s.server("250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n", 1);
    ASSERT_EQ(s.take_event().kind, event_kind::ready);
    s.c.start_transaction(env({"a@x.org"}), msg);
    s.sent();
    s.server("250 ok\r\n250 ok\r\n354 go\r\n", 1);
    EXPECT_FALSE(s.sent().empty());
    s.server("250 2.0.0 ok\r\n", 1);
    EXPECT_EQ(s.take_event().result->recipients[0].code, 250);
}

TEST(SmtpClient, LongReplyLineIsFine) {
    session s;
    s.open();
    s.c.start_transaction(env({"a@x.org"}), msg);
    s.sent();
    s.server("250 " + std::string(1000, 'k') + "\r\n250 ok\r\n354 go\r\n");
    s.sent();
    s.server("250 ok\r\n");
    EXPECT_EQ(s.take_event().result->recipients[0].code, 250);
}

TEST(SmtpClient, GarbageIsAProtocolError) {
    session s;
    s.open();
    s.c.start_transaction(env({"a@x.org"}), msg);
    s.sent();
    s.server("<html>hello</html>\r\n");
    const event done = s.take_event();
    ASSERT_EQ(done.kind, event_kind::transaction_done);
    EXPECT_EQ(done.result->recipients[0].code, 421);
    const event closed = s.take_event();
    EXPECT_EQ(closed.kind, event_kind::closed);
    EXPECT_TRUE(closed.protocol_error);
    EXPECT_EQ(closed.last_reply.text, "protocol error: malformed reply line: <html>hello</html>");
}

TEST(SmtpClient, UnsolicitedReplyWhenIdleIsAProtocolError) {
    session s;
    s.open();
    s.server("250 surprise\r\n");
    const event e = s.take_event();
    EXPECT_EQ(e.kind, event_kind::closed);
    EXPECT_TRUE(e.protocol_error);
}

TEST(SmtpClient, ResetAndQuit) {
    session s;
    s.open();
    s.c.reset();
    EXPECT_EQ(s.sent(), "RSET\r\n");
    s.server("250 ok\r\n");
    EXPECT_EQ(s.take_event().kind, event_kind::ready);
    s.c.quit();
    EXPECT_EQ(s.sent(), "QUIT\r\n");
    s.server("221 bye\r\n");
    const event e = s.take_event();
    EXPECT_EQ(e.kind, event_kind::closed);
    EXPECT_EQ(e.last_reply.code, 221);
}

TEST(SmtpClient, RsetRefusedClosesTheSession) {
    session s;
    s.open();
    s.c.reset();
    s.sent();
    s.server("500 what\r\n");
    EXPECT_EQ(s.take_event().kind, event_kind::closed);
}

TEST(SmtpClient, StarttlsThenEhloAgain) {
    session s;
    s.open("250-STARTTLS\r\n250 PIPELINING\r\n");
    s.c.starttls();
    EXPECT_EQ(s.sent(), "STARTTLS\r\n");
    s.server("220 2.0.0 ready to start TLS\r\n");
    EXPECT_EQ(s.take_event().kind, event_kind::tls_start);
    EXPECT_EQ(s.c.current_state(), client::state::tls_handshake);
    s.c.tls_established();
    EXPECT_EQ(s.sent(), "EHLO sender.example\r\n");
    EXPECT_FALSE(s.c.caps().pipelining) << "capabilities are forgotten after STARTTLS";
    s.server("250-mx\r\n250 PIPELINING\r\n");
    EXPECT_EQ(s.take_event().kind, event_kind::ready);
    EXPECT_TRUE(s.c.tls_active());
    EXPECT_TRUE(s.c.caps().pipelining);
}

TEST(SmtpClient, StarttlsRefusedKeepsPlaintextSession) {
    session s;
    s.open("250 STARTTLS\r\n");
    s.c.starttls();
    s.sent();
    s.server("454 4.7.0 TLS not available\r\n");
    const event e = s.take_event();
    EXPECT_EQ(e.kind, event_kind::tls_refused);
    EXPECT_EQ(s.c.current_state(), client::state::ready);
}

TEST(SmtpClient, BytesAfterStarttlsReplyAreRejected) {
    session s;
    s.open("250 STARTTLS\r\n");
    s.c.starttls();
    s.sent();
    s.server("220 go ahead\r\n250 injected\r\n");
    EXPECT_EQ(s.take_event().kind, event_kind::tls_start);
    const event e = s.take_event();
    EXPECT_EQ(e.kind, event_kind::closed);
    EXPECT_TRUE(e.protocol_error);
}

// A session that went through STARTTLS with credentials set; returns after
// the second EHLO's reply (caps) was fed.
static void tls_session_with_auth(session& s, const std::string& caps) {
    s.c.set_credentials("user@example.org", "s3cret");
    s.open("250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n");  // plaintext: no AUTH yet
    s.c.starttls();
    EXPECT_EQ(s.sent(), "STARTTLS\r\n") << "credentials never go in plaintext";
    s.server("220 go ahead\r\n");
    EXPECT_EQ(s.take_event().kind, event_kind::tls_start);
    s.c.tls_established();
    EXPECT_EQ(s.sent(), "EHLO sender.example\r\n");
    s.server("250-mx\r\n" + caps);
}

TEST(SmtpClientAuth, PlainAfterStarttls) {
    session s;
    tls_session_with_auth(s, "250-PIPELINING\r\n250 AUTH LOGIN PLAIN\r\n");
    // base64("\0user@example.org\0s3cret")
    EXPECT_EQ(s.sent(), "AUTH PLAIN AHVzZXJAZXhhbXBsZS5vcmcAczNjcmV0\r\n");
    EXPECT_TRUE(s.events.empty()) << "not ready before AUTH succeeds";
    EXPECT_EQ(s.c.timeout(), std::chrono::seconds(300));
    s.server("235 2.7.0 Authentication successful\r\n");
    const event e = s.take_event();
    EXPECT_EQ(e.kind, event_kind::ready);
    EXPECT_TRUE(s.c.authenticated());
    EXPECT_TRUE(s.c.caps().pipelining);
}

TEST(SmtpClientAuth, LoginWhenPlainIsNotOffered) {
    session s;
    tls_session_with_auth(s, "250 AUTH LOGIN\r\n");
    EXPECT_EQ(s.sent(), "AUTH LOGIN\r\n");
    s.server("334 VXNlcm5hbWU6\r\n");
    EXPECT_EQ(s.sent(), "dXNlckBleGFtcGxlLm9yZw==\r\n");
    s.server("334 UGFzc3dvcmQ6\r\n");
    EXPECT_EQ(s.sent(), "czNjcmV0\r\n");
    s.server("235 ok\r\n");
    EXPECT_EQ(s.take_event().kind, event_kind::ready);
}

TEST(SmtpClientAuth, WrongCredentialsCloseWithTheServersReply) {
    session s;
    tls_session_with_auth(s, "250 AUTH PLAIN\r\n");
    s.sent();
    s.server("535 5.7.8 Authentication credentials invalid\r\n");
    const event e = s.take_event();
    EXPECT_EQ(e.kind, event_kind::closed);
    EXPECT_EQ(e.last_reply.code, 535);
    EXPECT_EQ(e.last_reply.enhanced, "5.7.8");
    EXPECT_FALSE(s.c.authenticated());
}

TEST(SmtpClientAuth, NoSupportedMechanismEndsTheSession) {
    session s;
    tls_session_with_auth(s, "250 AUTH CRAM-MD5 XOAUTH2\r\n");
    EXPECT_EQ(s.sent(), "");
    const event e = s.take_event();
    EXPECT_EQ(e.kind, event_kind::closed);
    EXPECT_EQ(e.last_reply.code, 530);
    EXPECT_NE(e.last_reply.text.find("CRAM-MD5 XOAUTH2"), std::string::npos);
}

TEST(SmtpClientAuth, ImplicitTlsAuthenticatesAfterTheFirstEhlo) {
    session s;
    s.c.set_credentials("u", "p");
    s.c.implicit_tls();
    EXPECT_TRUE(s.c.tls_active());
    s.server("220 relay ESMTP\r\n");
    EXPECT_EQ(s.sent(), "EHLO sender.example\r\n");
    s.server("250-relay\r\n250 AUTH PLAIN\r\n");
    EXPECT_EQ(s.sent(), "AUTH PLAIN AHUAcA==\r\n");
    s.server("235 ok\r\n");
    EXPECT_EQ(s.take_event().kind, event_kind::ready);
    EXPECT_THROW(s.c.implicit_tls(), std::logic_error);
}

TEST(SmtpClient, LocalChecksBeforeAnyByte) {
    session s;
    s.open("250-SIZE 10\r\n250 PIPELINING\r\n");
    s.c.start_transaction(env({"a@x.org"}), msg);
    EXPECT_EQ(s.sent(), "");
    event e = s.c.next_event().value();
    EXPECT_EQ(e.result->recipients[0].one_line(), "552 5.3.4 message size exceeds the server's SIZE limit of 10");
    envelope u = env({"用户@x.org"});
    u.smtputf8 = true;
    s.c.start_transaction(u, "x");
    EXPECT_EQ(s.sent(), "");
    e = s.c.next_event().value();
    EXPECT_EQ(e.result->recipients[0].code, 553);
    EXPECT_EQ(s.c.current_state(), client::state::ready);
}

TEST(SmtpClient, MisuseIsALogicError) {
    session s;
    EXPECT_THROW(s.c.start_transaction(env({"a@x.org"}), msg), std::logic_error);
    EXPECT_THROW(s.c.tls_established(), std::logic_error);
}

}  // namespace

namespace {

using namespace mxpress::smtp;

TEST(SmtpClientBackToBack, NextTransactionRidesWithTheFinalDot) {
    client c("sender.example");
    auto sent = [&]() {
        std::string s(c.output());
        c.consume_output(s.size());
        return s;
    };
    c.receive("220 mx\r\n");
    sent();
    c.receive("250-mx\r\n250 PIPELINING\r\n");
    ASSERT_EQ(c.next_event()->kind, event_kind::ready);
    envelope e1;
    e1.mail_from = "b@s.example";
    e1.rcpt_to = {"one@x.org"};
    envelope e2 = e1;
    e2.rcpt_to = {"two@x.org"};
    const std::string m1 = "Subject: 1\r\n\r\none\r\n";
    const std::string m2 = "Subject: 2\r\n\r\ntwo\r\n";
    EXPECT_TRUE(c.can_start_transaction());
    c.start_transaction(e1, m1, 101);
    EXPECT_FALSE(c.can_start_transaction()) << "not before the body is out";
    sent();
    c.receive("250 ok\r\n250 ok\r\n354 go\r\n");
    EXPECT_TRUE(c.can_start_transaction());
    c.start_transaction(e2, m2, 102);
    EXPECT_FALSE(c.can_start_transaction()) << "at most two in flight";
    EXPECT_EQ(sent(), "Subject: 1\r\n\r\none\r\n.\r\nMAIL FROM:<b@s.example>\r\nRCPT TO:<two@x.org>\r\nDATA\r\n")
        << "one write: the body, its dot, and the next transaction";
    c.receive("250 queued 1\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    auto d1 = c.next_event();
    ASSERT_TRUE(d1 && d1->kind == event_kind::transaction_done);
    EXPECT_EQ(d1->tag, 101u);
    EXPECT_EQ(d1->result->recipients[0].text, "queued 1");
    EXPECT_EQ(sent(), "Subject: 2\r\n\r\ntwo\r\n.\r\n");
    c.receive("550 5.7.1 rejected 2\r\n");
    auto d2 = c.next_event();
    ASSERT_TRUE(d2 && d2->kind == event_kind::transaction_done);
    EXPECT_EQ(d2->tag, 102u);
    EXPECT_EQ(d2->result->recipients[0].one_line(), "550 5.7.1 rejected 2");
    EXPECT_EQ(c.current_state(), client::state::ready);
    EXPECT_EQ(c.transactions_completed(), 2u);
}

TEST(SmtpClientBackToBack, ConnectionLostFailsBothInOrder) {
    client c("sender.example");
    c.receive("220 mx\r\n250-mx\r\n250 PIPELINING\r\n");
    c.consume_output(c.output().size());
    while (c.next_event()) {
    }
    envelope e;
    e.mail_from = "b@s.example";
    e.rcpt_to = {"one@x.org"};
    c.start_transaction(e, "m1\r\n", 1);
    c.receive("250 ok\r\n250 ok\r\n354 go\r\n");
    c.start_transaction(e, "m2\r\n", 2);
    c.connection_lost("reset");
    std::vector<std::uint64_t> tags;
    while (auto ev = c.next_event()) {
        if (ev->kind == event_kind::transaction_done) {
            tags.push_back(ev->tag);
            EXPECT_EQ(ev->result->recipients[0].code, 421);
        }
    }
    EXPECT_EQ(tags, (std::vector<std::uint64_t>{1, 2}));
}

}  // namespace

namespace {

TEST(SmtpClientOutput, TakeOutputMovesEverythingPending) {
    mxpress::smtp::client c("sender.example");
    c.receive("220 mx\r\n");
    std::string dst = "old";
    c.take_output(dst);
    EXPECT_EQ(dst, "EHLO sender.example\r\n");
    EXPECT_FALSE(c.has_output());
    c.receive("250 mx\r\n");
    c.quit();
    c.consume_output(2);  // "QU" already written elsewhere
    c.take_output(dst);
    EXPECT_EQ(dst, "IT\r\n");
    EXPECT_FALSE(c.has_output());
}

}  // namespace

// ---- CHUNKING (RFC 3030): BDAT instead of DATA -------------------------------------------

namespace {

const std::string chunking_caps =
    "250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n";

std::string bdat_of(const std::string& m) {
    return "BDAT " + std::to_string(m.size()) + " LAST\r\n" + m;
}

TEST(SmtpClientChunking, PipelinedBdatCarriesTheRawBodyInTheSameWrite) {
    session s;
    s.open(chunking_caps);
    EXPECT_TRUE(s.c.uses_chunking());
    s.c.start_transaction(env({"a@x.org", "b@x.org"}, true), msg);
    EXPECT_EQ(s.sent(), "MAIL FROM:<bounce@sender.example> SIZE=" + std::to_string(msg.size()) +
                            " BODY=8BITMIME\r\nRCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\n" + bdat_of(msg))
        << "one write, no 354 round trip; the body raw: \".dot\" not stuffed, no \".\" line, no BINARYMIME";
    EXPECT_EQ(s.c.timeout(), std::chrono::seconds(600)) << "the body is out: data_term";
    EXPECT_FALSE(s.c.can_start_transaction()) << "not before MAIL and a RCPT were accepted";
    s.server("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n");
    EXPECT_TRUE(s.c.can_start_transaction()) << "BDAT LAST now ends the server's transaction whatever it says";
    s.server("250 2.0.0 queued as X\r\n");
    const event e = s.take_event();
    ASSERT_EQ(e.kind, event_kind::transaction_done);
    EXPECT_TRUE(e.result->data_sent);
    EXPECT_TRUE(e.result->bdat) << "what the engine counts as sent by BDAT";
    EXPECT_FALSE(e.result->in_doubt);
    EXPECT_EQ(e.result->recipients[0].one_line(), "250 2.0.0 queued as X");
    EXPECT_EQ(e.result->recipients[1].one_line(), "550 5.1.1 no such user");
    EXPECT_EQ(s.c.transactions_completed(), 1u);
    s.c.start_transaction(env({"c@x.org"}), "no final crlf");
    EXPECT_EQ(s.sent(),
              "MAIL FROM:<bounce@sender.example> SIZE=13\r\nRCPT TO:<c@x.org>\r\nBDAT 15 LAST\r\nno final crlf\r\n")
        << "no RSET after a completed transaction; the last line gets its CRLF, counted";
}

TEST(SmtpClientChunking, AllRecipientsRefusedKeepTheirOwnReplies) {
    session s;
    s.open(chunking_caps);
    s.c.start_transaction(env({"a@x.org", "b@x.org"}), msg);
    EXPECT_TRUE(s.sent().ends_with(bdat_of(msg))) << "pipelined: the BDAT went before any reply";
    s.server("250 ok\r\n550 5.1.1 no a\r\n450 4.2.1 later b\r\n");
    EXPECT_FALSE(s.c.can_start_transaction()) << "no MAIL behind a transaction nobody accepted";
    s.server("554 5.5.1 Error: no valid recipients\r\n");
    const event e = s.take_event();
    ASSERT_EQ(e.kind, event_kind::transaction_done);
    EXPECT_FALSE(e.result->data_sent);
    EXPECT_EQ(e.result->recipients[0].one_line(), "550 5.1.1 no a");
    EXPECT_EQ(e.result->recipients[1].one_line(), "450 4.2.1 later b");
    EXPECT_EQ(s.c.transactions_completed(), 0u);
    s.c.start_transaction(env({"c@x.org"}), msg);
    EXPECT_TRUE(s.sent().starts_with("RSET\r\nMAIL FROM:")) << "the server may still hold the MAIL";
}

TEST(SmtpClientChunking, AcceptedBdatForNobodyIsNotADelivery) {
    session s;
    s.open(chunking_caps);
    s.c.start_transaction(env({"a@x.org"}), msg);
    s.sent();
    s.server("250 ok\r\n550 5.1.1 no a\r\n250 2.0.0 queued (a broken server)\r\n");
    const event e = s.take_event();
    EXPECT_FALSE(e.result->data_sent);
    EXPECT_EQ(e.result->recipients[0].one_line(), "550 5.1.1 no a");
}

TEST(SmtpClientChunking, BdatRefusedIsEachAcceptedRecipientsOutcome) {
    for (const std::string refusal : {"554 5.7.1 content rejected", "451 4.3.0 try later"}) {
        session s;
        s.open(chunking_caps);
        s.c.start_transaction(env({"a@x.org", "b@x.org"}), msg);
        s.sent();
        s.server("250 ok\r\n250 ok\r\n550 5.1.1 no b\r\n" + refusal + "\r\n");
        const event e = s.take_event();
        EXPECT_EQ(e.result->recipients[0].one_line(), refusal);
        EXPECT_EQ(e.result->recipients[1].one_line(), "550 5.1.1 no b");
        EXPECT_TRUE(e.result->data_sent);
        s.c.start_transaction(env({"c@x.org"}), msg);
        EXPECT_TRUE(s.sent().starts_with("RSET\r\nMAIL FROM:")) << "after a refused BDAT";
        s.server("250 ok\r\n250 ok\r\n250 ok\r\n250 2.0.0 queued\r\n");
        EXPECT_EQ(s.take_event().result->recipients[0].one_line(), "250 2.0.0 queued");
    }
}

TEST(SmtpClientChunking, MailRefusedAppliesToEveryRecipient) {
    session s;
    s.open(chunking_caps);
    s.c.start_transaction(env({"a@x.org"}), msg);
    s.sent();
    s.server("552 5.3.4 too big\r\n503 no MAIL\r\n503 no MAIL\r\n");
    const event e = s.take_event();
    EXPECT_EQ(e.result->recipients[0].one_line(), "552 5.3.4 too big");
    s.c.start_transaction(env({"c@x.org"}), msg);
    EXPECT_TRUE(s.sent().starts_with("MAIL FROM:")) << "no transaction was open";
}

TEST(SmtpClientChunking, WithoutPipeliningBdatWaitsForTheRcptReplies) {
    session s;
    s.open("250-CHUNKING\r\n250 8BITMIME\r\n");
    s.c.start_transaction(env({"a@x.org", "b@x.org"}), msg);
    EXPECT_EQ(s.sent(), "MAIL FROM:<bounce@sender.example>\r\n");
    s.server("250 ok\r\n");
    EXPECT_EQ(s.sent(), "RCPT TO:<a@x.org>\r\n");
    s.server("550 no\r\n");
    EXPECT_EQ(s.sent(), "RCPT TO:<b@x.org>\r\n");
    s.server("250 ok\r\n");
    EXPECT_EQ(s.sent(), bdat_of(msg));
    EXPECT_EQ(s.c.timeout(), std::chrono::seconds(600));
    s.server("250 done\r\n");
    const event e = s.take_event();
    EXPECT_EQ(e.result->recipients[0].code, 550);
    EXPECT_EQ(e.result->recipients[1].one_line(), "250 done");
    // Every RCPT refused: no BDAT at all (as no DATA), then RSET.
    s.c.start_transaction(env({"c@x.org"}), msg);
    EXPECT_EQ(s.sent(), "MAIL FROM:<bounce@sender.example>\r\n");
    s.server("250 ok\r\n");
    EXPECT_EQ(s.sent(), "RCPT TO:<c@x.org>\r\n");
    s.server("550 no\r\n");
    EXPECT_EQ(s.sent(), "");
    EXPECT_EQ(s.take_event().result->recipients[0].code, 550);
}

TEST(SmtpClientChunking, DataWhenChunkingIsNotOfferedOrTurnedOff) {
    session plain;
    plain.open();  // PIPELINING, no CHUNKING
    plain.c.start_transaction(env({"a@x.org"}), msg);
    EXPECT_TRUE(plain.sent().ends_with("\r\nDATA\r\n"));
    session off;
    off.c.set_chunking(false);
    off.open(chunking_caps);
    EXPECT_FALSE(off.c.uses_chunking());
    off.c.start_transaction(env({"a@x.org"}), msg);
    EXPECT_TRUE(off.sent().ends_with("\r\nDATA\r\n"));
    off.server("250 ok\r\n250 ok\r\n354 go\r\n");
    EXPECT_EQ(off.sent(), "Subject: t\r\n\r\n..dot\r\nbody\r\n.\r\n") << "DATA stays dot-stuffed";
}

TEST(SmtpClientChunking, ConnectionLostAfterBdatIsInDoubtUnlessRefused) {
    {
        session s;
        s.open(chunking_caps);
        s.c.start_transaction(env({"a@x.org"}), msg);
        s.sent();
        s.c.connection_lost("reset by peer");
        const event e = s.c.next_event().value();
        EXPECT_TRUE(e.result->in_doubt) << "the body went with MAIL: the server may have taken it";
        EXPECT_EQ(e.result->recipients[0].code, 421);
    }
    {
        session s;
        s.open(chunking_caps);
        s.c.start_transaction(env({"a@x.org"}), msg);
        s.sent();
        s.server("250 ok\r\n550 no\r\n");
        s.c.connection_lost("reset by peer");
        const event e = s.c.next_event().value();
        EXPECT_FALSE(e.result->in_doubt) << "nobody was accepted";
        EXPECT_EQ(e.result->recipients[0].code, 550);
    }
    {
        session s;
        s.open(chunking_caps);
        s.c.start_transaction(env({"a@x.org"}), msg);
        s.sent();
        s.server("250 ok\r\n250 ok\r\n");
        s.c.timed_out();
        const event e = s.c.next_event().value();
        EXPECT_TRUE(e.result->in_doubt);
        EXPECT_EQ(e.result->recipients[0].one_line(), "421 4.4.2 timeout waiting for the reply to BDAT");
    }
}

TEST(SmtpClientChunking, Server421BeforeTheBdatIsNotInDoubt) {
    session s;
    s.open(chunking_caps);
    s.c.start_transaction(env({"a@x.org"}), msg);
    s.sent();
    s.server("250 ok\r\n421 4.7.28 unusual rate\r\n");
    const event e = s.take_event();
    EXPECT_FALSE(e.result->in_doubt) << "the server closed at RCPT: it never read the BDAT";
    EXPECT_EQ(e.result->recipients[0].one_line(), "421 4.7.28 unusual rate");
    EXPECT_EQ(s.take_event().kind, event_kind::closed);
    session t;
    t.open(chunking_caps);
    t.c.start_transaction(env({"a@x.org"}), msg);
    t.sent();
    t.server("250 ok\r\n250 ok\r\n");
    t.c.start_transaction(env({"b@x.org"}), msg, 1);
    t.server("421 4.3.2 shutting down\r\n");
    const event first = t.take_event();
    const event second = t.take_event();
    EXPECT_TRUE(first.result->in_doubt) << "as a 421 to DATA's final dot";
    EXPECT_FALSE(second.result->in_doubt) << "behind it: never read";
}

TEST(SmtpClientChunking, BackToBackNextMailRidesBehindTheBdat) {
    session s;
    s.open(chunking_caps);
    s.c.start_transaction(env({"a@x.org"}), "m1\r\n", 0);
    s.sent();
    s.server("250 ok\r\n250 ok\r\n");
    ASSERT_TRUE(s.c.can_start_transaction());
    s.c.start_transaction(env({"b@x.org"}), "m2\r\n", 1);
    EXPECT_FALSE(s.c.can_start_transaction()) << "at most two in flight";
    EXPECT_EQ(s.sent(), "MAIL FROM:<bounce@sender.example> SIZE=4\r\nRCPT TO:<b@x.org>\r\nBDAT 4 LAST\r\nm2\r\n");
    s.server("250 one\r\n250 ok\r\n250 ok\r\n250 two\r\n");
    const event e1 = s.take_event();
    const event e2 = s.take_event();
    EXPECT_EQ(e1.tag, 0u);
    EXPECT_EQ(e1.result->recipients[0].text, "one");
    EXPECT_EQ(e2.tag, 1u);
    EXPECT_EQ(e2.result->recipients[0].text, "two");
    EXPECT_EQ(s.c.current_state(), client::state::ready);
}

// What a gather write puts on the wire: the bytes with each body piece
// inserted before its `at`.
std::string wire_of(const std::string& bytes, const std::vector<body_piece>& pieces) {
    std::string out;
    std::size_t from = 0;
    for (const body_piece& p : pieces) {
        EXPECT_GE(p.at, from);
        out.append(bytes, from, p.at - from);
        out += *p.body;
        from = p.at;
    }
    out.append(bytes, from);
    return out;
}

TEST(SmtpClientChunking, ASharedBodyLeavesAsAPieceAndTheWireIsTheSame) {
    session s;
    s.open(chunking_caps);
    s.c.start_transaction(env({"a@x.org"}), std::make_shared<const std::string>("m1\r\n"), 0);
    std::string bytes;
    std::vector<body_piece> pieces;
    ASSERT_TRUE(s.c.has_output());
    s.c.take_output(bytes, pieces);
    ASSERT_EQ(pieces.size(), 1u);
    EXPECT_EQ(bytes, "MAIL FROM:<bounce@sender.example> SIZE=4\r\nRCPT TO:<a@x.org>\r\nBDAT 4 LAST\r\n")
        << "the body is not copied behind the commands";
    EXPECT_EQ(pieces[0].at, bytes.size());
    EXPECT_FALSE(s.c.has_output());
    // The next transaction rides behind the first body; its own body ends
    // without CRLF, which the client adds after the piece.
    s.server("250 ok\r\n250 ok\r\n");
    ASSERT_TRUE(s.c.can_start_transaction());
    const auto m2 = std::make_shared<const std::string>("m2");
    s.c.start_transaction(env({"b@x.org"}), m2, 1);
    s.c.take_output(bytes, pieces);
    ASSERT_EQ(pieces.size(), 1u);
    EXPECT_EQ(pieces[0].body, m2) << "shared, not copied";
    EXPECT_EQ(wire_of(bytes, pieces),
              "MAIL FROM:<bounce@sender.example> SIZE=2\r\nRCPT TO:<b@x.org>\r\nBDAT 4 LAST\r\nm2\r\n");
    s.server("250 one\r\n250 ok\r\n250 ok\r\n250 two\r\n");
    EXPECT_EQ(s.take_event().tag, 0u);
    EXPECT_EQ(s.take_event().tag, 1u);
    EXPECT_EQ(m2.use_count(), 2) << "the client let go of the body when its transaction ended; `pieces` holds it";
}

TEST(SmtpClientChunking, TakingOutputAsOneStringCopiesThePiecesInPlace) {
    // TLS takes the output this way. Two transactions whose output was not
    // taken in between: the second's commands follow the first's body.
    session s;
    s.open(chunking_caps);
    s.c.start_transaction(env({"a@x.org"}), std::make_shared<const std::string>("m1\r\n"), 0);
    s.server("250 ok\r\n250 ok\r\n");
    s.c.start_transaction(env({"b@x.org"}), std::make_shared<const std::string>("m2\r\n"), 1);
    std::string flat;
    s.c.take_output(flat);
    EXPECT_EQ(flat,
              "MAIL FROM:<bounce@sender.example> SIZE=4\r\nRCPT TO:<a@x.org>\r\nBDAT 4 LAST\r\nm1\r\n"
              "MAIL FROM:<bounce@sender.example> SIZE=4\r\nRCPT TO:<b@x.org>\r\nBDAT 4 LAST\r\nm2\r\n");
    EXPECT_FALSE(s.c.has_output());
}

TEST(SmtpClientChunking, PiecesPileUpOnlyWhenRepliesComeBeforeTheOutputLeavesAndFlattenInOrder) {
    // A server that answers before it could have read: five transactions
    // end while their output was never taken, and their bodies pile up.
    session s;
    s.open(chunking_caps);
    std::string want;
    for (int i = 0; i < 5; ++i) {
        const std::string body = "m" + std::to_string(i) + "\r\n";
        s.c.start_transaction(env({"a@x.org"}), std::make_shared<const std::string>(body), 0);
        want += "MAIL FROM:<bounce@sender.example> SIZE=4\r\nRCPT TO:<a@x.org>\r\nBDAT 4 LAST\r\n" + body;
        s.server("250 ok\r\n250 ok\r\n250 ok\r\n");
        ASSERT_EQ(s.take_event().kind, event_kind::transaction_done);
    }
    std::string bytes;
    std::vector<body_piece> pieces;
    s.c.take_output(bytes, pieces);
    ASSERT_EQ(pieces.size(), 5u);
    for (std::size_t k = 1; k < pieces.size(); ++k) {
        EXPECT_LT(pieces[k - 1].at, pieces[k].at);
    }
    flatten(bytes, pieces);
    EXPECT_TRUE(pieces.empty());
    EXPECT_EQ(bytes, want);
}

TEST(SmtpClientChunking, ASessionThatEndsDropsItsPieces) {
    session s;
    s.open(chunking_caps);
    const auto m = std::make_shared<const std::string>("m1\r\n");
    s.c.start_transaction(env({"a@x.org"}), m, 0);
    EXPECT_EQ(m.use_count(), 3) << "the transaction and its piece";
    s.c.connection_lost("reset");
    EXPECT_FALSE(s.c.has_output());
    EXPECT_EQ(m.use_count(), 1) << "nothing of the session holds the body";
}

TEST(SmtpClientChunking, CapabilitiesAfterStarttlsDecide) {
    session s;
    s.open("250-PIPELINING\r\n250-CHUNKING\r\n250 STARTTLS\r\n");
    EXPECT_TRUE(s.c.uses_chunking());
    s.c.starttls();
    EXPECT_EQ(s.sent(), "STARTTLS\r\n");
    s.server("220 go\r\n");
    EXPECT_EQ(s.take_event().kind, event_kind::tls_start);
    s.c.tls_established();
    EXPECT_EQ(s.sent(), "EHLO sender.example\r\n");
    s.server("250-mx\r\n250 PIPELINING\r\n");
    EXPECT_EQ(s.take_event().kind, event_kind::ready);
    EXPECT_FALSE(s.c.uses_chunking()) << "the EHLO after TLS no longer offers it";
    s.c.start_transaction(env({"a@x.org"}), msg);
    EXPECT_TRUE(s.sent().ends_with("\r\nDATA\r\n"));
}

}  // namespace
