// net::tls_channel wired back to back in memory: the handshake reported
// once per side, plaintext held until it can be encrypted, failures that
// stick, and every TLS write's result surfaced.
#include "mxpress/net/tls_channel.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "mxpress/net/secure_channel.hpp"

#include "test_util.hpp"

using mxpress::net::tls_channel;
using mxpress::net::tls_context;
using mxpress::net::tls_stream;
using state = tls_channel::state;

namespace {

// One end of the pipe: its channel, the plaintext it received, how often
// it saw the handshake complete, and every ciphertext chunk it sent.
struct end {
    tls_channel channel;
    std::string plain;
    int established = 0;
    std::string wire;  // all ciphertext this end produced

    end(SSL_CTX* ctx, tls_stream::role r) : channel(ctx, r) {}

    void note(tls_channel::progress p) { established += p.established_now ? 1 : 0; }
};

// Moves ciphertext both ways until neither side has any; at most `rounds`.
void shuttle(end& a, end& b, int rounds = 10) {
    std::string buf;
    for (int i = 0; i < rounds && (a.channel.has_output() || b.channel.has_output()); ++i) {
        a.channel.take_output(buf);
        a.wire += buf;
        b.note(b.channel.receive(buf, b.plain));
        b.channel.take_output(buf);
        b.wire += buf;
        a.note(a.channel.receive(buf, a.plain));
    }
}

std::string file(const char* name) {
    return mxpress::test::test_cert(name);
}

// A server for mx.test and a client that trusts the test CA, not connected yet.
struct pipe_pair {
    tls_context sctx = tls_context::server(file("mx.crt"), file("mx.key"));
    tls_context cctx = tls_context::client(file("ca.crt"));
    end server{sctx.get(), tls_stream::role::server};
    end client{cctx.get(), tls_stream::role::client};

    void connect() {
        client.note(client.channel.start());
        server.note(server.channel.start());
        shuttle(client, server);
    }
};

TEST(TlsChannel, HandshakeOnceAndPlaintextHeldUntilEncrypted) {
    pipe_pair p;
    end& server = p.server;
    end& client = p.client;
    client.channel.stream().set_server_name("mx.test");
    client.channel.stream().verify_peer("mx.test");

    client.note(client.channel.start());
    server.note(server.channel.start());
    EXPECT_TRUE(client.channel.has_output()) << "the ClientHello";
    EXPECT_FALSE(server.channel.has_output());
    // Written before TLS is up: held, never sent in the clear.
    ASSERT_TRUE(client.channel.send("EHLO client.test\r\n"));
    EXPECT_TRUE(client.channel.handshaking());

    shuttle(client, server);
    EXPECT_EQ(client.channel.current_state(), state::open) << client.channel.error();
    EXPECT_EQ(server.channel.current_state(), state::open) << server.channel.error();
    EXPECT_EQ(client.established, 1);
    EXPECT_EQ(server.established, 1);
    EXPECT_EQ(server.plain, "EHLO client.test\r\n");
    EXPECT_EQ(client.wire.find("EHLO"), std::string::npos) << "plaintext on the wire";

    ASSERT_TRUE(server.channel.send("250-mx.test\r\n"));
    ASSERT_TRUE(server.channel.send("250 PIPELINING\r\n"));
    ASSERT_TRUE(client.channel.send("MAIL FROM:<a@b.test>\r\n"));
    shuttle(client, server);
    EXPECT_EQ(client.plain, "250-mx.test\r\n250 PIPELINING\r\n");
    EXPECT_EQ(server.plain, "EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n");
    EXPECT_EQ(client.established, 1) << "reported once";
    EXPECT_STREQ(client.channel.stream().version(), "TLSv1.3");
}

TEST(TlsChannel, VerificationFailureSticks) {
    tls_context sctx = tls_context::server(file("self.crt"), file("self.key"));
    tls_context cctx = tls_context::client(file("ca.crt"));
    end server(sctx.get(), tls_stream::role::server);
    end client(cctx.get(), tls_stream::role::client);
    client.channel.stream().verify_peer("mx.test");
    client.note(client.channel.start());
    ASSERT_TRUE(client.channel.send("AUTH PLAIN secret\r\n"));
    shuttle(client, server);
    EXPECT_EQ(client.channel.current_state(), state::failed);
    EXPECT_NE(client.channel.error().find("certificate verification failed"), std::string::npos)
        << client.channel.error();
    EXPECT_EQ(client.established, 0);
    EXPECT_EQ(client.wire.find("secret"), std::string::npos);
    EXPECT_EQ(server.plain, "") << "held plaintext is dropped, not sent";
    EXPECT_FALSE(client.channel.send("more"));
    std::string plain;
    EXPECT_EQ(client.channel.receive("anything", plain).now, state::failed);
    EXPECT_TRUE(ERR_peek_error() == 0) << "error queue left behind";
}

TEST(TlsChannel, GarbageFailsTheHandshake) {
    tls_context cctx = tls_context::client();
    tls_channel client(cctx.get(), tls_stream::role::client);
    EXPECT_EQ(client.start().now, state::handshaking);
    std::string plain;
    const tls_channel::progress p = client.receive("220 mail.example ESMTP ready\r\n", plain);
    EXPECT_EQ(p.now, state::failed);
    EXPECT_FALSE(p.established_now);
    EXPECT_FALSE(client.error().empty());
    EXPECT_EQ(plain, "");
}

TEST(TlsChannel, CloseNotifyClosesThePeer) {
    pipe_pair p;
    p.connect();
    end& server = p.server;
    end& client = p.client;
    ASSERT_TRUE(server.channel.send("221 bye\r\n"));
    server.channel.close();
    shuttle(client, server);
    EXPECT_EQ(client.plain, "221 bye\r\n") << "data before the alert still arrives";
    EXPECT_EQ(client.channel.current_state(), state::closed);
    EXPECT_FALSE(client.channel.send("QUIT\r\n")) << "nothing goes out after the peer closed";
    std::string plain;
    EXPECT_EQ(client.channel.receive("late junk", plain).now, state::closed) << "a closed channel stays closed";
    EXPECT_EQ(plain, "");
}

// A write TLS refuses is a failure the owner sees (relay_check once
// ignored one): after our own close_notify, nothing more can be written.
TEST(TlsChannel, RefusedWriteFailsTheChannel) {
    pipe_pair p;
    p.connect();
    tls_channel& client = p.client.channel;
    ASSERT_TRUE(client.open());
    client.close();
    EXPECT_FALSE(client.send("QUIT\r\n"));
    EXPECT_EQ(client.current_state(), state::failed);
    EXPECT_FALSE(client.error().empty());
    EXPECT_TRUE(ERR_peek_error() == 0);
}

// A pool's connections as openssl_channel_factory opens them, each with a
// server of its own on one server context (so tickets resume).
struct pooled {
    std::unique_ptr<mxpress::net::secure_channel> client;
    end server;
    std::string plain;
    pooled(mxpress::net::secure_channel_factory& f, const mxpress::net::tls_peer& p, SSL_CTX* server_ctx)
        : client(f.open(p)), server(server_ctx, tls_stream::role::server) {}

    // The handshake and the server's tickets, both ways.
    void run() {
        client->start();
        server.note(server.channel.start());
        std::string buf;
        for (int i = 0; i < 10 && (client->has_output() || server.channel.has_output()); ++i) {
            client->take_output(buf);
            server.note(server.channel.receive(buf, server.plain));
            server.channel.take_output(buf);
            client->receive(buf, plain);
        }
        ASSERT_EQ(server.established, 1);
    }
};

struct pool_pair {
    tls_context sctx = tls_context::server(file("mx.crt"), file("mx.key"));
    mxpress::net::openssl_channel_factory factory{file("ca.crt"), 4};
    const mxpress::net::tls_peer peer{"mx.test:25", "mx.test", true};

    std::unique_ptr<pooled> open() { return std::make_unique<pooled>(factory, peer, sctx.get()); }
    void keep(pooled& c) { factory.keep_sessions(peer.session_key, *c.client); }
    std::size_t usable() const { return factory.usable_sessions(peer.session_key); }
};

// A pool that opens its connections at once resumes every one of them from
// the first connection's tickets, even after each ticket has been used
// once and before the resumed connections' own tickets are filed (their
// keep_sessions() comes later). Spending each ticket once, as OpenSSL
// does, left the third and fifth connections here, and 1 in about 20 Exim
// runs, a full handshake.
TEST(TlsChannel, APoolResumesEveryConnectionWhileNewTicketsAreOnTheirWay) {
    pool_pair pool;
    auto first = pool.open();
    first->run();
    ASSERT_FALSE(first->client->resumed());
    pool.keep(*first);  // the server's tickets (OpenSSL sends two)

    auto second = pool.open();
    auto third = pool.open();  // opened together, before either resumption completes
    second->run();
    third->run();
    auto fourth = pool.open();
    fourth->run();
    auto fifth = pool.open();  // every kept ticket has been used once by now
    fifth->run();
    EXPECT_TRUE(second->client->resumed());
    EXPECT_TRUE(third->client->resumed());
    EXPECT_TRUE(fourth->client->resumed());
    EXPECT_TRUE(fifth->client->resumed()) << "a spent ticket is reused rather than a full handshake made";
}

// A ticket whose resumption ended in a failure, or whose connection was
// dropped mid-handshake, is not offered again: a server that breaks on it
// would otherwise break every new connection until the ticket expires.
TEST(TlsChannel, ATicketWhoseHandshakeFailedIsNotOfferedAgain) {
    pool_pair pool;
    auto first = pool.open();
    first->run();
    pool.keep(*first);
    ASSERT_EQ(pool.usable(), 2u);

    auto broken = pool.open();  // offered the newest ticket
    broken->client->start();
    std::string plain;
    EXPECT_EQ(broken->client->receive("garbage, not TLS", plain).now, state::failed);
    EXPECT_EQ(pool.usable(), 1u) << "the ticket it offered is dropped";

    auto dropped = pool.open();  // offered the other one
    dropped->client->start();
    dropped.reset();  // the connection went away mid-handshake
    EXPECT_EQ(pool.usable(), 0u);

    auto next = pool.open();
    next->run();
    EXPECT_FALSE(next->client->resumed()) << "nothing left to offer: a full handshake";
    pool.keep(*next);
    EXPECT_EQ(pool.usable(), 2u);
    auto after = pool.open();
    after->run();
    EXPECT_TRUE(after->client->resumed());
}

}  // namespace
