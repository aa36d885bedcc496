// TLS streams paired in memory: handshake, data both ways, resumption,
// verification failures, garbage on the wire.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "mxpress/net/tls.hpp"
#include "test_util.hpp"

using mxpress::net::tls_context;
using mxpress::net::tls_stream;
using result = tls_stream::result;

namespace {

class TlsTest : public ::testing::Test {
protected:
    static std::string file(const char* name) { return mxpress::test::test_cert(name); }

    // Moves bytes both ways until neither side has output; at most `rounds`.
    static void shuttle(tls_stream& a, tls_stream& b, int rounds = 10) {
        std::string buf;
        for (int i = 0; i < rounds && (a.has_output() || b.has_output()); ++i) {
            a.take_output(buf);
            b.feed(buf);
            if (!b.established()) {
                b.handshake();
            }
            b.take_output(buf);
            a.feed(buf);
            if (!a.established()) {
                a.handshake();
            }
        }
    }

    // Runs a full handshake; returns the client's last handshake result.
    static result connect(tls_stream& client, tls_stream& server) {
        EXPECT_EQ(client.handshake(), result::want_more);
        std::string buf;
        for (int i = 0; i < 10; ++i) {
            client.take_output(buf);
            server.feed(buf);
            const result s = server.handshake();
            if (s == result::failed) {
                return result::failed;
            }
            server.take_output(buf);
            client.feed(buf);
            const result c = client.handshake();
            if (c != result::want_more) {
                client.take_output(buf);  // the client's Finished
                server.feed(buf);
                server.handshake();
                return c;
            }
        }
        return result::want_more;
    }
};

TEST_F(TlsTest, HandshakeAndDataBothWays) {
    tls_context sctx = tls_context::server(file("mx.crt"), file("mx.key"));
    tls_context cctx = tls_context::client(file("ca.crt"));
    tls_stream server(sctx.get(), tls_stream::role::server);
    tls_stream client(cctx.get(), tls_stream::role::client);
    client.set_server_name("mx.test");
    client.verify_peer("mx.test");
    ASSERT_EQ(connect(client, server), result::ok) << client.error();
    EXPECT_TRUE(server.established());
    EXPECT_STREQ(client.version(), "TLSv1.3");
    EXPECT_FALSE(client.resumed());

    const std::string big(100'000, 'x');
    ASSERT_EQ(client.write("EHLO a\r\n" + big), result::ok);
    std::string wire;
    client.take_output(wire);
    EXPECT_EQ(wire.find("EHLO"), std::string::npos);  // encrypted
    server.feed(wire);
    std::string plain;
    ASSERT_EQ(server.read(plain), result::ok);
    EXPECT_EQ(plain, "EHLO a\r\n" + big);

    ASSERT_EQ(server.write("250 ok\r\n"), result::ok);
    server.take_output(wire);
    // Fed one byte at a time, a record still comes out whole.
    plain.clear();
    for (char ch : wire) {
        client.feed(std::string_view(&ch, 1));
        ASSERT_EQ(client.read(plain), result::ok);
    }
    EXPECT_EQ(plain, "250 ok\r\n");

    server.shutdown();
    server.take_output(wire);
    client.feed(wire);
    plain.clear();
    EXPECT_EQ(client.read(plain), result::closed);
}

TEST_F(TlsTest, ResumesWithTheSessionTheServerGave) {
    tls_context sctx = tls_context::server(file("mx.crt"), file("mx.key"));
    tls_context cctx = tls_context::client();
    mxpress::net::ssl_session_ptr session;
    for (int tls12 = 0; tls12 < 2; ++tls12) {
        if (tls12 == 1) {
            SSL_CTX_set_max_proto_version(sctx.get(), TLS1_2_VERSION);
            session.reset();
        }
        for (int round = 0; round < 3; ++round) {
            tls_stream server(sctx.get(), tls_stream::role::server);
            tls_stream client(cctx.get(), tls_stream::role::client);
            client.set_session(session.get());
            ASSERT_EQ(connect(client, server), result::ok) << client.error();
            // TLS 1.3 tickets come after the handshake, with the first data.
            ASSERT_EQ(server.write("220 x\r\n"), result::ok);
            std::string wire;
            std::string plain;
            server.take_output(wire);
            client.feed(wire);
            ASSERT_EQ(client.read(plain), result::ok);
            EXPECT_EQ(plain, "220 x\r\n");
            EXPECT_STREQ(client.version(), tls12 ? "TLSv1.2" : "TLSv1.3");
            EXPECT_EQ(client.resumed(), round > 0) << "round " << round;
            if (auto s = client.take_new_session()) {
                session = std::move(s);
            }
            ASSERT_NE(session, nullptr);
        }
    }
}

TEST_F(TlsTest, VerificationFailuresNameTheReason) {
    tls_context cctx = tls_context::client(file("ca.crt"));
    struct case_t {
        const char* cert;
        const char* key;
        const char* name;
        const char* reason;
    } cases[] = {
        {"mx.crt", "mx.key", "wrong.test", "hostname mismatch"},
        {"self.crt", "self.key", "mx.test", "self-signed certificate"},
        {"mx.crt", "mx.key", "127.0.0.2", "IP address mismatch"},
    };
    for (const case_t& c : cases) {
        tls_context sctx = tls_context::server(file(c.cert), file(c.key));
        tls_stream server(sctx.get(), tls_stream::role::server);
        tls_stream client(cctx.get(), tls_stream::role::client);
        client.verify_peer(c.name);
        EXPECT_EQ(connect(client, server), result::failed) << c.name;
        EXPECT_NE(client.error().find("certificate verification failed"), std::string::npos) << client.error();
        EXPECT_NE(client.error().find(c.reason), std::string::npos) << client.error();
        EXPECT_TRUE(ERR_peek_error() == 0) << "error queue left behind";
    }
    // Without verification (opportunistic), the same untrusted peer is fine.
    tls_context sctx = tls_context::server(file("self.crt"), file("self.key"));
    tls_stream server(sctx.get(), tls_stream::role::server);
    tls_stream client(cctx.get(), tls_stream::role::client);
    EXPECT_EQ(connect(client, server), result::ok);
}

TEST_F(TlsTest, GarbageInsteadOfATlsRecordFails) {
    tls_context cctx = tls_context::client();
    tls_stream client(cctx.get(), tls_stream::role::client);
    ASSERT_EQ(client.handshake(), result::want_more);
    client.feed("220 mail.example ESMTP ready\r\n");
    EXPECT_EQ(client.handshake(), result::failed);
    EXPECT_FALSE(client.error().empty());
    EXPECT_TRUE(ERR_peek_error() == 0);
}

TEST_F(TlsTest, BadFilesAreNamedInTheError) {
    try {
        tls_context::client(file("missing-ca.pem"));
        FAIL() << "no error";
    } catch (const mxpress::net::tls_error& e) {
        EXPECT_NE(std::string(e.what()).find("missing-ca.pem"), std::string::npos) << e.what();
    }
    try {
        tls_context::server(file("mx.crt"), file("self.key"));
        FAIL() << "no error";
    } catch (const mxpress::net::tls_error& e) {
        EXPECT_NE(std::string(e.what()).find("mismatch"), std::string::npos) << e.what();
    }
    try {
        tls_context::server(file("nothing.crt"), file("mx.key"));
        FAIL() << "no error";
    } catch (const mxpress::net::tls_error& e) {
        EXPECT_NE(std::string(e.what()).find("nothing.crt"), std::string::npos) << e.what();
    }
}

}  // namespace
