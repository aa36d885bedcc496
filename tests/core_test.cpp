// Unit tests of the sans-I/O delivery core (engine/core.hpp): scripted
// servers and a hand-moved clock, no sockets. Each test states a promise of
// README (TLS policy, plaintext window, retries, limits, timeouts, idle
// sessions) and fails when the core stops keeping it.
#include "mxpress/engine/core.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "sim/simulator.hpp"  // sim_tls_channel

namespace {

using namespace mxpress;
using engine::clock;
using engine::command_kind;
using engine::conn_id;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr const char* ehlo_with_starttls = "250-mx.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n";
constexpr const char* ehlo_plain = "250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n";

struct outcome {
    engine::outcome_status status;
    std::string enhanced;
    std::string reply;
    std::string tls;
    std::string mx;
    std::uint32_t attempts = 0;
};

// "127.0.0.2:25" or "[::1]:25": where a connect command goes.
std::string address_of(const engine::command& c) {
    net::ip_address a;
    std::uint16_t port = 0;
    if (c.addr.ss_family == AF_INET6) {
        const auto* sa = reinterpret_cast<const sockaddr_in6*>(&c.addr);
        a.family = AF_INET6;
        a.v6 = sa->sin6_addr;
        port = ntohs(sa->sin6_port);
    } else {
        const auto* sa = reinterpret_cast<const sockaddr_in*>(&c.addr);
        a.v4 = sa->sin_addr;
        port = ntohs(sa->sin_port);
    }
    return a.with_port(port);
}

// An MX answer: hosts in delivery order, each with its addresses.
net::mx_answer mx_answer(std::initializer_list<std::pair<std::string, std::vector<std::string>>> hosts) {
    net::mx_answer ans;
    ans.status = net::dns_status::ok;
    std::uint16_t pref = 10;
    for (const auto& [host, addresses] : hosts) {
        net::mx_target t{host, pref, {}};
        pref = static_cast<std::uint16_t>(pref + 10);
        for (const std::string& text : addresses) {
            net::ip_address a;
            EXPECT_TRUE(net::ip_address::parse(text, a)) << text;
            t.addresses.push_back(a);
        }
        ans.targets.push_back(std::move(t));
    }
    return ans;
}

net::mx_answer dns_failure(const char* why) {
    net::mx_answer ans;
    ans.status = net::dns_status::temporary;
    ans.enhanced = "4.4.3";
    ans.reason = std::string("DNS: example.test: temporary failure (") + why + ")";
    return ans;
}

// Drives one core: recipients in, commands recorded, replies scripted.
class harness : engine::outcome_sink, net::secure_channel_factory {
public:
    explicit harness(engine::tls_policy policy = engine::tls_policy::opportunistic,
                     std::string_view message = "Subject: hi\r\nTo: {{email}}\r\n\r\nHello.\r\n",
                     bool gather_sends = false) {
        o.gather_sends = gather_sends;
        o.cfg.helo_name = "sender.test";
        o.cfg.tls = policy;
        o.cfg.retry_initial = milliseconds(60'000);
        o.cfg.retry_max = milliseconds(3'600'000);
        o.cfg.max_age = milliseconds(24 * 3'600'000);
        o.cfg.connections_max = 3;
        o.from = "sender@sender.test";
        o.routes.push_back(engine::route{"*", "127.0.0.2", "", 25, false, std::nullopt});
        tmpl = mail::message_template::compile(message, "t.eml", {"email"});
        mail::renderer_options ro;
        ro.from = o.from;
        renderer.emplace(tmpl, ro);
        net::secure_channel_factory& f = *this;
        engine::outcome_sink& s = *this;
        core = std::make_unique<engine::delivery_core>(o, *renderer, f, s, stats);
        now = clock::time_point{} + std::chrono::hours(1);
        core->set_now(now);
    }

    void add(std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) {
            auto r = std::make_unique<engine::recipient>();
            r->line = next_line++;
            r->email = "user" + std::to_string(r->line) + "@example.test";
            r->domain_at = static_cast<std::uint32_t>(r->email.find('@') + 1);
            r->values = r->email;
            r->ends.push_back(static_cast<std::uint32_t>(r->values.size()));
            core->recipient_arrived(std::move(r));
        }
        settle();
    }
    void close_input() {
        core->input_closed();
        settle();
    }

    // Moves the clock, ticking every 50 ms as the shard does.
    void advance(milliseconds d) {
        const auto end = now + d;
        while (now < end) {
            now = std::min(end, now + milliseconds(50));
            core->set_now(now);
            core->tick();
            settle();
        }
    }

    // The server's bytes on connection `id`.
    void server(conn_id id, std::string_view bytes) {
        core->received(id, bytes);
        settle();
    }
    void connect_ok(conn_id id) {
        core->connected(id, 0);
        settle();
    }
    void drop(conn_id id) {
        core->input_lost(id, "closed by the server");
        settle();
    }
    // The answer to a resolve_mx command.
    void dns(const std::string& domain, const net::mx_answer& ans) {
        core->dns_answer(domain, ans);
        settle();
    }
    void refuse(conn_id id) {
        core->connected(id, -ECONNREFUSED);
        settle();
    }
    // Sends kept in flight (hold_sends) complete now, in order.
    void complete_held_sends() {
        std::vector<engine::command> sends;
        sends.swap(held);
        for (engine::command& c : sends) {
            complete_send(c);
        }
        settle();
    }
    // Everything sent on `id` since the last call (send_done acknowledged).
    std::string sent(conn_id id) {
        std::string s;
        s.swap(wire[id]);
        return s;
    }

    std::vector<conn_id> connects;  // in order
    std::vector<clock::time_point> connect_times;
    std::vector<std::string> connect_addresses;  // "127.0.0.2:25", in order
    std::vector<std::string> lookups;            // resolve_mx names, in order
    std::optional<net::mx_answer> auto_dns;      // set: every resolve_mx gets this answer at once
    std::map<conn_id, bool> closed;
    std::map<conn_id, std::string> wire;
    std::map<std::uint64_t, outcome> outcomes;
    struct left {
        clock::time_point next_attempt;
        bool in_doubt;
    };
    std::map<std::uint64_t, left> unfinished;  // unfinished_outcome(): the run stopped
    int tls_opened = 0;
    bool hold_sends = false;  // set: send commands wait in `held` (a send the kernel has not finished)
    std::vector<engine::command> held;
    sim::sim_tls_channel::mode tls_mode = sim::sim_tls_channel::mode::ok;

    engine::shard_options o;
    engine::shard_stats stats;
    mail::message_template tmpl;
    std::optional<mail::renderer> renderer;
    std::unique_ptr<engine::delivery_core> core;
    clock::time_point now;
    std::uint64_t next_line = 2;

private:
    // A send the kernel finished: its bytes (bodies in place) are on the wire.
    void complete_send(engine::command& c) {
        smtp::flatten(c.data, c.pieces);
        wire[c.conn] += c.data;
        std::string back;
        core->send_done(c.conn, static_cast<int>(c.data.size()), back);
    }

    void settle() {
        core->schedule();
        for (;;) {
            std::vector<engine::command> cmds;
            core->take_commands(cmds);
            if (cmds.empty()) {
                return;
            }
            for (engine::command& c : cmds) {
                switch (c.kind) {
                    case command_kind::connect:
                        connects.push_back(c.conn);
                        connect_times.push_back(now);
                        connect_addresses.push_back(address_of(c));
                        break;
                    case command_kind::resolve_mx:
                        lookups.push_back(c.name);
                        if (auto_dns) {
                            core->dns_answer(c.name, *auto_dns);
                        }
                        break;
                    case command_kind::send: {
                        if (hold_sends) {
                            held.push_back(std::move(c));
                            break;
                        }
                        complete_send(c);
                        break;
                    }
                    case command_kind::close: closed[c.conn] = true; break;
                    default: break;
                }
            }
            core->schedule();
        }
    }

    void final_outcome(const engine::recipient& r, engine::outcome_status st, const smtp::reply& rep,
                       std::string_view mx, std::string_view tls) override {
        ASSERT_EQ(outcomes.count(r.line), 0u) << "second outcome for line " << r.line;
        outcomes[r.line] = outcome{st, rep.enhanced, rep.one_line(), std::string(tls), std::string(mx), r.attempts};
    }
    void unfinished_outcome(const engine::recipient& r, clock::time_point next_attempt, bool in_doubt) override {
        ASSERT_EQ(outcomes.count(r.line) + unfinished.count(r.line), 0u) << "second outcome for line " << r.line;
        unfinished[r.line] = left{next_attempt, in_doubt};
    }
    std::unique_ptr<net::secure_channel> open(const net::tls_peer&) override {
        ++tls_opened;
        return std::make_unique<sim::sim_tls_channel>(tls_mode);
    }
    void keep_sessions(const std::string&, net::secure_channel&) override {}
};

// Greeting and EHLO on a connection the harness just connected.
void open_session(harness& h, conn_id id, const char* ehlo) {
    h.connect_ok(id);
    h.server(id, "220 mx.test ESMTP\r\n");
    EXPECT_EQ(h.sent(id), "EHLO sender.test\r\n");
    h.server(id, ehlo);
}

// One transaction on an open plaintext session (MAIL, RCPT, DATA pipelined).
void deliver_one(harness& h, conn_id id) {
    EXPECT_EQ(h.sent(id).rfind("MAIL FROM", 0), 0u);
    h.server(id, "250 ok\r\n250 ok\r\n354 go\r\n");
    h.sent(id);
    h.server(id, "250 queued\r\n");
}

TEST(Core, ABodyASendStillHoldsIsNotRewrittenWhenItsSlotRendersAgain) {
    // Plaintext BDAT bodies leave as pieces (gather_sends). A server that
    // answers before it read anything ends the first transaction while the
    // send carrying its body is still in flight; the slot's next message
    // must go into a new string, not over the body the send still holds.
    harness h(engine::tls_policy::disabled, "Subject: hi\r\nTo: {{email}}\r\n\r\nHello.\r\n", true);
    h.add(3);
    const conn_id id = h.connects[0];
    h.connect_ok(id);
    h.server(id, "220 mx.test ESMTP\r\n");
    EXPECT_EQ(h.sent(id), "EHLO sender.test\r\n");
    h.hold_sends = true;
    h.server(id, "250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
    ASSERT_EQ(h.held.size(), 1u);
    ASSERT_EQ(h.held[0].pieces.size(), 1u) << "the body is a piece, not in the bytes";
    const std::shared_ptr<const std::string> first = h.held[0].pieces[0].body;
    const std::string first_bytes = *first;
    EXPECT_NE(first_bytes.find("To: user2@example.test"), std::string::npos);
    h.server(id, "250 ok\r\n250 ok\r\n");  // MAIL, RCPT: the second transaction starts (the other slot)
    h.server(id, "250 queued\r\n");        // BDAT: the first one is over, its slot free
    EXPECT_EQ(h.outcomes[2].status, engine::outcome_status::delivered);
    h.server(id, "250 ok\r\n250 ok\r\n");  // the second's MAIL, RCPT: the third renders into the first's slot
    EXPECT_EQ(*first, first_bytes) << "the body in flight was rewritten";
    h.hold_sends = false;
    h.complete_held_sends();
    const std::string wire = h.sent(id);
    EXPECT_NE(wire.find("To: user2@example.test"), std::string::npos);
    EXPECT_NE(wire.find("To: user3@example.test"), std::string::npos);
    EXPECT_NE(wire.find("To: user4@example.test"), std::string::npos) << wire;
}

TEST(Core, RequiredTlsNeverSendsMailToAServerWithoutStarttls) {
    harness h(engine::tls_policy::required);
    h.add(1);
    ASSERT_EQ(h.connects.size(), 1u);
    open_session(h, h.connects[0], ehlo_plain);
    const std::string after = h.sent(h.connects[0]);
    EXPECT_EQ(after.find("MAIL FROM"), std::string::npos) << after;
    EXPECT_EQ(after, "QUIT\r\n");
    h.server(h.connects[0], "221 bye\r\n");
    EXPECT_TRUE(h.closed[h.connects[0]]);
    EXPECT_EQ(h.core->pending(), 1u);  // deferred, not lost
    h.advance(seconds(61));            // the retry: a new connection, again no mail
    ASSERT_EQ(h.connects.size(), 2u);
    open_session(h, h.connects[1], ehlo_plain);
    EXPECT_EQ(h.sent(h.connects[1]), "QUIT\r\n");
}

TEST(Core, OpportunisticTlsFailureGivesTheHostPlaintextForTenMinutes) {
    harness h(engine::tls_policy::opportunistic);
    h.tls_mode = sim::sim_tls_channel::mode::fail;
    h.add(1);
    open_session(h, h.connects[0], ehlo_with_starttls);
    EXPECT_EQ(h.sent(h.connects[0]), "STARTTLS\r\n");
    h.server(h.connects[0], "220 go ahead\r\n");  // the handshake fails
    EXPECT_TRUE(h.closed[h.connects[0]]);
    EXPECT_EQ(h.stats.tls_failures.load(), 1u);
    // The work is taken by a new connection, in plaintext although offered.
    ASSERT_EQ(h.connects.size(), 2u);
    open_session(h, h.connects[1], ehlo_with_starttls);
    EXPECT_EQ(h.sent(h.connects[1]).rfind("MAIL FROM:<sender@sender.test>", 0), 0u);
    h.server(h.connects[1], "250 ok\r\n250 ok\r\n354 go\r\n");
    h.sent(h.connects[1]);
    h.server(h.connects[1], "250 queued\r\n");
    EXPECT_EQ(h.outcomes[2].status, engine::outcome_status::delivered);
    EXPECT_EQ(h.outcomes[2].tls, "none");
    // Still inside the window: a new session stays plaintext.
    h.advance(seconds(5));  // idle QUIT on the old one
    h.add(1);
    ASSERT_EQ(h.connects.size(), 3u);
    open_session(h, h.connects[2], ehlo_with_starttls);
    EXPECT_EQ(h.sent(h.connects[2]).rfind("MAIL FROM", 0), 0u);
    h.server(h.connects[2], "250 ok\r\n250 ok\r\n354 go\r\n");
    h.sent(h.connects[2]);
    h.server(h.connects[2], "250 queued\r\n");
    // After ten minutes STARTTLS is tried again.
    h.advance(std::chrono::minutes(10));
    h.tls_mode = sim::sim_tls_channel::mode::ok;
    h.add(1);
    ASSERT_EQ(h.connects.size(), 4u);
    open_session(h, h.connects[3], ehlo_with_starttls);
    EXPECT_EQ(h.sent(h.connects[3]), "STARTTLS\r\n");
}

TEST(Core, RetriesDoubleFromRetryInitialUntilMaxAgeExpires) {
    harness h;
    h.o.cfg.max_age = milliseconds(20 * 60'000);
    h.add(1);
    // Every connection is refused at once; attempts come at 0, +1m, +2m,
    // +4m, +8m, and the next would fall past max_age: expired.
    std::size_t refused = 0;
    for (int s = 0; s < 25 * 60 && h.core->pending() > 0; ++s) {
        while (refused < h.connects.size()) {
            h.refuse(h.connects[refused++]);
        }
        h.advance(seconds(1));
    }
    ASSERT_EQ(h.connect_times.size(), 5u);
    const auto gap = [&](std::size_t k) {
        return std::chrono::duration_cast<seconds>(h.connect_times[k + 1] - h.connect_times[k]).count();
    };
    EXPECT_NEAR(gap(0), 60, 1);
    EXPECT_NEAR(gap(1), 120, 1);
    EXPECT_NEAR(gap(2), 240, 1);
    EXPECT_NEAR(gap(3), 480, 1);
    EXPECT_EQ(h.outcomes[2].status, engine::outcome_status::expired);
    EXPECT_EQ(h.outcomes[2].enhanced, "4.4.1");
}

TEST(Core, SlowStartThenAtMostConnectionsMax) {
    harness h;
    h.add(20);
    ASSERT_EQ(h.connects.size(), 1u);  // one until a session works
    open_session(h, h.connects[0], ehlo_plain);
    EXPECT_EQ(h.connects.size(), 3u);  // then up to connections_max
    EXPECT_EQ(h.core->connections(), 3u);
    EXPECT_EQ(h.core->check_invariants(), "");
}

TEST(Core, GreetingTimeoutEndsTheConnectionWithinOneTick) {
    harness h;
    h.o.cfg.smtp_timeouts.greeting = seconds(5);
    h.add(1);
    h.connect_ok(h.connects[0]);
    h.advance(milliseconds(4900));
    EXPECT_FALSE(h.closed[h.connects[0]]);
    h.advance(milliseconds(150));
    EXPECT_TRUE(h.closed[h.connects[0]]);
    EXPECT_EQ(h.core->pending(), 1u);
}

// RFC 5321 §4.5.3.2: each send of the body within data_block, then the
// reply to the final dot within data_term. A server that answers the dot
// after 4 s is within data_term (10 s) though past data_block (2 s).
TEST(Core, TheReplyToTheFinalDotWaitsDataTermNotDataBlock) {
    harness h;
    h.o.cfg.smtp_timeouts.data_block = seconds(2);
    h.o.cfg.smtp_timeouts.data_term = seconds(10);
    h.add(1);
    const conn_id c = h.connects[0];
    open_session(h, c, ehlo_plain);
    h.sent(c);
    h.server(c, "250 ok\r\n250 ok\r\n354 go\r\n");
    EXPECT_NE(h.sent(c).find("\r\n.\r\n"), std::string::npos);  // the body went out
    h.advance(milliseconds(4000));
    EXPECT_FALSE(h.closed[c]) << "timed out on data_block while waiting for the reply to the dot";
    h.server(c, "250 queued\r\n");
    EXPECT_EQ(h.outcomes[2].status, engine::outcome_status::delivered);
    h.add(1);  // and data_term does end a server that never answers
    h.server(c, "250 ok\r\n250 ok\r\n354 go\r\n");
    h.advance(milliseconds(10'100));
    EXPECT_TRUE(h.closed[c]);
}

TEST(Core, IdleSessionGetsRsetBeforeReuseAndQuitAfterIdleTimeout) {
    harness h;
    h.o.cfg.idle_timeout = milliseconds(3000);
    h.add(1);
    const conn_id c = h.connects[0];
    open_session(h, c, ehlo_plain);
    h.sent(c);
    h.server(c, "250 ok\r\n250 ok\r\n354 go\r\n");
    h.sent(c);
    h.server(c, "250 queued\r\n");
    h.advance(milliseconds(1500));  // idle longer than the reuse check
    h.add(1);
    EXPECT_EQ(h.sent(c), "RSET\r\n");
    h.server(c, "250 ok\r\n");
    EXPECT_EQ(h.sent(c).rfind("MAIL FROM", 0), 0u);
    h.server(c, "250 ok\r\n250 ok\r\n354 go\r\n");
    h.sent(c);
    h.server(c, "250 queued\r\n");
    h.advance(milliseconds(2900));
    EXPECT_EQ(h.sent(c), "");
    h.advance(milliseconds(200));
    EXPECT_EQ(h.sent(c), "QUIT\r\n");
    EXPECT_EQ(h.connects.size(), 1u);  // one session did it all
}

TEST(Core, NullMxBouncesAndDnsFailureDefers) {
    harness h;
    h.o.routes.clear();
    h.add(2);
    net::mx_answer null_mx;
    null_mx.status = net::dns_status::permanent;
    null_mx.enhanced = "5.1.10";
    null_mx.reason = "example.test: null MX";
    h.core->dns_answer("example.test", null_mx);
    EXPECT_EQ(h.outcomes[2].status, engine::outcome_status::bounced);
    EXPECT_EQ(h.outcomes[3].enhanced, "5.1.10");
    h.add(1);
    net::mx_answer servfail;
    servfail.status = net::dns_status::temporary;
    servfail.enhanced = "4.4.3";
    servfail.reason = "SERVFAIL";
    h.core->dns_answer("example.test", servfail);
    EXPECT_EQ(h.outcomes.count(4), 0u);
    EXPECT_EQ(h.core->pending(), 1u);
}

TEST(Core, ReusedSessionDroppedUnderAMessageRetriesOnceOnANewConnection) {
    harness h;
    h.o.cfg.connections_max = 1;
    h.add(2);
    const conn_id c = h.connects[0];
    open_session(h, c, ehlo_plain);
    h.sent(c);
    h.server(c, "250 ok\r\n250 ok\r\n354 go\r\n");
    // The body of line 2, then line 3 pipelined behind it on the same session.
    const std::string wire = h.sent(c);
    EXPECT_NE(wire.find("MAIL FROM", wire.find("\r\n.\r\n")), std::string::npos) << wire;
    h.server(c, "250 queued\r\n");                  // line 2 delivered
    h.core->input_lost(c, "closed by the server");  // dropped under line 3
    h.advance(milliseconds(50));
    EXPECT_EQ(h.outcomes.count(3), 0u);  // not deferred for a minute:
    ASSERT_EQ(h.connects.size(), 2u);    // a new connection takes it now
    open_session(h, h.connects[1], ehlo_plain);
    h.server(h.connects[1], "250 ok\r\n250 ok\r\n354 go\r\n");
    h.server(h.connects[1], "250 queued\r\n");
    EXPECT_EQ(h.outcomes[3].status, engine::outcome_status::delivered);
}

// SIGTERM: nothing new starts, the transaction in flight ends with its real
// outcome, queued and parked recipients leave unfinished with their next
// attempt time, and the session says QUIT.
TEST(Core, DrainFinishesInFlightAndHandsTheRestOverUnfinished) {
    harness h;
    h.o.cfg.connections_max = 1;
    h.add(5);  // lines 2-6
    const conn_id c = h.connects.back();
    open_session(h, c, ehlo_plain);
    const std::string first = h.sent(c);
    ASSERT_EQ(first.rfind("MAIL FROM", 0), 0u) << first;
    h.core->drain();
    h.advance(milliseconds(50));
    EXPECT_EQ(h.unfinished.size(), 4u);  // queued behind the one in flight
    for (const auto& [line, l] : h.unfinished) {
        EXPECT_FALSE(l.in_doubt) << line;
        EXPECT_EQ(l.next_attempt, h.now - milliseconds(50)) << line;  // queued: due at once
    }
    h.server(c, "250 ok\r\n250 ok\r\n354 go\r\n");
    h.sent(c);
    h.server(c, "250 queued\r\n");
    EXPECT_EQ(h.outcomes.size(), 1u);
    EXPECT_EQ(h.sent(c), "QUIT\r\n");  // no second transaction
    h.server(c, "221 bye\r\n");
    EXPECT_TRUE(h.closed[c]);
    EXPECT_TRUE(h.core->finished());
    EXPECT_EQ(h.outcomes.size() + h.unfinished.size(), 5u);
    EXPECT_EQ(h.core->check_invariants(), "");
}

TEST(Core, DrainHandsOverARetryWithItsNextAttemptTime) {
    harness h;
    h.add(1);
    h.refuse(h.connects[0]);
    const auto due = h.now + milliseconds(60'000);
    h.advance(seconds(10));
    h.core->drain();
    ASSERT_EQ(h.unfinished.count(2), 1u);
    EXPECT_EQ(h.unfinished[2].next_attempt, due);
    EXPECT_FALSE(h.unfinished[2].in_doubt);
    EXPECT_TRUE(h.core->finished());
}

// --resume of a row a stopped run left deferred: it waits for its time
// instead of going out at once.
TEST(Core, ARowArrivingWithANextAttemptWaitsForIt) {
    harness h;
    auto r = std::make_unique<engine::recipient>();
    r->line = 2;
    r->email = "late@example.test";
    r->domain_at = static_cast<std::uint32_t>(r->email.find('@') + 1);
    r->values = r->email;
    r->ends.push_back(static_cast<std::uint32_t>(r->values.size()));
    r->attempts = 3;
    r->not_before = h.now + seconds(30);
    h.core->recipient_arrived(std::move(r));
    h.advance(seconds(29));
    EXPECT_TRUE(h.connects.empty()) << "sent before its next attempt";
    h.advance(seconds(2));
    EXPECT_EQ(h.connects.size(), 1u);
    EXPECT_EQ(h.core->check_invariants(), "");
}

// The grace period ran out (or a second signal): connections are torn down
// now, and the row in the middle of its transaction is reported in doubt.
TEST(Core, AbortConnectionsLeavesTheTransactionInDoubt) {
    harness h;
    h.add(1);
    const conn_id c = h.connects[0];
    open_session(h, c, ehlo_plain);
    h.server(c, "250 ok\r\n250 ok\r\n354 go\r\n");
    EXPECT_NE(h.sent(c).find("\r\n.\r\n"), std::string::npos);  // the body is out
    EXPECT_EQ(h.core->abort_connections(), 1u);
    h.advance(milliseconds(50));
    ASSERT_EQ(h.unfinished.count(2), 1u);
    EXPECT_TRUE(h.unfinished[2].in_doubt);
    EXPECT_TRUE(h.closed[c]);
    EXPECT_TRUE(h.core->finished());
    EXPECT_EQ(h.stats.in_flight.load(), 0u);
}

// RFC 5321 §5.1 as README states it: the MX hosts in the answer's order
// (preference; the resolver shuffles equals, dns_test.cpp), each host's
// addresses in the answer's order (IPv4 first, from the resolver); a refused
// connection moves on to the next address at once. `attempts` counts the
// hosts tried and found down.
TEST(Core, MxTargetsAndTheirAddressesAreTriedInTheAnswersOrder) {
    harness h;
    h.o.routes.clear();
    h.add(1);
    ASSERT_EQ(h.lookups, std::vector<std::string>{"example.test"});
    EXPECT_TRUE(h.connects.empty());  // nothing before the answer
    h.dns("example.test", mx_answer({{"mx1.example.test", {"127.0.0.2", "::2"}}, {"mx2.example.test", {"127.0.0.3"}}}));
    ASSERT_EQ(h.connects.size(), 1u);
    EXPECT_EQ(h.connect_addresses[0], "127.0.0.2:25");
    h.refuse(h.connects[0]);
    ASSERT_EQ(h.connects.size(), 2u);
    EXPECT_EQ(h.connect_addresses[1], "[::2]:25");
    h.refuse(h.connects[1]);
    ASSERT_EQ(h.connects.size(), 3u);
    EXPECT_EQ(h.connect_addresses[2], "127.0.0.3:25");
    open_session(h, h.connects[2], ehlo_plain);
    deliver_one(h, h.connects[2]);
    EXPECT_EQ(h.outcomes[2].status, engine::outcome_status::delivered);
    EXPECT_EQ(h.outcomes[2].mx, "mx2.example.test");
    EXPECT_EQ(h.outcomes[2].attempts, 3u) << "two hosts found down, then the one that took it";
    EXPECT_EQ(h.core->check_invariants(), "");
}

// A host that refused is skipped for min(retry_initial, host_skip_max):
// new work goes straight to the next MX meanwhile, and to the host again
// once that time has passed. Both sides of the min.
TEST(Core, AFailingHostIsSkippedForTheMinOfRetryInitialAndHostSkipMax) {
    struct case_t {
        milliseconds retry_initial;
        milliseconds host_skip_max;
        seconds skip;
    } cases[] = {{milliseconds(60'000), milliseconds(10'000), seconds(10)},
                 {milliseconds(4'000), milliseconds(60'000), seconds(4)}};
    for (const case_t& k : cases) {
        SCOPED_TRACE(testing::Message() << "skip " << k.skip.count() << " s");
        harness h;
        h.o.routes.clear();
        h.o.cfg.retry_initial = k.retry_initial;
        h.o.cfg.host_skip_max = k.host_skip_max;
        h.o.cfg.idle_timeout = milliseconds(3'600'000);  // the backup's session stays open
        // Asked again whenever the core asks: a domain with no recipient
        // held is forgotten within 30 s, and the skip must outlive that.
        h.auto_dns = mx_answer({{"mx1.example.test", {"127.0.0.2"}}, {"mx2.example.test", {"127.0.0.3"}}});
        h.add(1);
        ASSERT_EQ(h.connects.size(), 1u);
        h.refuse(h.connects[0]);
        ASSERT_EQ(h.connects.size(), 2u);
        EXPECT_EQ(h.connect_addresses[1], "127.0.0.3:25");
        open_session(h, h.connects[1], ehlo_plain);
        deliver_one(h, h.connects[1]);
        ASSERT_EQ(h.outcomes[2].status, engine::outcome_status::delivered);
        // Within the skip time: the backup's open session takes new work
        // (checked with RSET after a second idle); no connect to the first.
        h.advance(k.skip - seconds(1));
        h.add(1);
        EXPECT_EQ(h.connects.size(), 2u) << "the failing host was tried again within its skip time";
        EXPECT_EQ(h.sent(h.connects[1]), "RSET\r\n");
        h.server(h.connects[1], "250 ok\r\n");
        deliver_one(h, h.connects[1]);
        EXPECT_EQ(h.outcomes[3].status, engine::outcome_status::delivered);
        EXPECT_EQ(h.outcomes[3].mx, "mx2.example.test");
        // Past it: the preferred host gets the next recipient again.
        h.advance(seconds(2));
        h.add(1);
        ASSERT_EQ(h.connects.size(), 3u) << "the failing host was not tried again after its skip time";
        EXPECT_EQ(h.connect_addresses[2], "127.0.0.2:25");
        open_session(h, h.connects[2], ehlo_plain);
        deliver_one(h, h.connects[2]);
        EXPECT_EQ(h.outcomes[4].mx, "mx1.example.test");
    }
}

// An MX answer is used for mx_cache_ttl while the domain has recipients:
// new ones within it ask nothing; the first one after it asks again. (A
// domain with none held is freed; the shard's resolver keeps the answer for
// the same time and gives it back without a query, net/dns.hpp.)
TEST(Core, MxAnswersAreUsedForMxCacheTtl) {
    harness h;
    h.o.routes.clear();
    h.o.cfg.mx_cache_ttl = milliseconds(60'000);
    h.add(1);
    h.dns("example.test", mx_answer({{"mx1.example.test", {"127.0.0.2"}}}));
    const conn_id c = h.connects.at(0);
    open_session(h, c, ehlo_plain);
    h.sent(c);
    h.server(c, "250 ok\r\n250 ok\r\n354 go\r\n");  // line 2 now waits for the reply to its dot
    h.sent(c);
    h.advance(seconds(30));
    h.add(1);
    EXPECT_EQ(h.lookups.size(), 1u) << "asked again within mx_cache_ttl";
    ASSERT_EQ(h.connects.size(), 2u);  // line 3 went straight to the known MX
    EXPECT_EQ(h.connect_addresses[1], "127.0.0.2:25");
    open_session(h, h.connects[1], ehlo_plain);
    deliver_one(h, h.connects[1]);
    EXPECT_EQ(h.outcomes[3].status, engine::outcome_status::delivered);
    h.advance(seconds(31));
    h.add(1);
    EXPECT_EQ(h.lookups.size(), 2u) << "the answer was used past mx_cache_ttl";
    EXPECT_EQ(h.connects.size(), 2u);  // line 4 waits for the new answer
    h.dns("example.test", mx_answer({{"mx9.example.test", {"127.0.0.9"}}}));
    ASSERT_EQ(h.connects.size(), 3u);
    EXPECT_EQ(h.connect_addresses[2], "127.0.0.9:25");
    h.server(c, "250 queued\r\n");
    EXPECT_EQ(h.outcomes[2].status, engine::outcome_status::delivered);
}

// SERVFAIL, a refusal or a timeout (dns_status::temporary) defers the
// domain's recipients: the lookup is asked again after retry_initial (no
// doubling: that follows delivery attempts), and the mail goes when an
// answer comes; a domain that never answers expires after max_age with the
// DNS reason.
TEST(Core, TemporaryDnsFailuresAreRetriedThenExpire) {
    harness h;
    h.o.routes.clear();
    h.o.cfg.max_age = milliseconds(10 * 60'000);
    h.add(2);
    ASSERT_EQ(h.lookups.size(), 1u);
    h.dns("example.test", dns_failure("SERVFAIL"));
    EXPECT_EQ(h.outcomes.size(), 0u);
    EXPECT_EQ(h.core->pending(), 2u);
    h.advance(seconds(59));
    EXPECT_EQ(h.lookups.size(), 1u) << "asked again before retry_initial";
    h.advance(seconds(2));
    ASSERT_EQ(h.lookups.size(), 2u) << "not asked again after retry_initial";
    h.dns("example.test", dns_failure("Timeout"));
    h.advance(seconds(61));
    ASSERT_EQ(h.lookups.size(), 3u);
    h.dns("example.test", mx_answer({{"mx1.example.test", {"127.0.0.2"}}}));
    ASSERT_EQ(h.connects.size(), 1u);
    open_session(h, h.connects[0], ehlo_plain);
    deliver_one(h, h.connects[0]);
    EXPECT_EQ(h.outcomes[2].status, engine::outcome_status::delivered);

    // Another domain whose lookups keep failing: expired, with the reason.
    harness g;
    g.o.routes.clear();
    g.o.cfg.max_age = milliseconds(10 * 60'000);
    g.add(1);
    std::size_t answered = 0;
    for (int s = 0; s < 15 * 60 && g.core->pending() > 0; ++s) {
        while (answered < g.lookups.size()) {
            ++answered;
            g.dns("example.test", dns_failure("REFUSED"));
        }
        g.advance(seconds(1));
    }
    EXPECT_EQ(g.outcomes[2].status, engine::outcome_status::expired);
    EXPECT_EQ(g.outcomes[2].enhanced, "4.4.3");
    EXPECT_NE(g.outcomes[2].reply.find("REFUSED"), std::string::npos) << g.outcomes[2].reply;
    EXPECT_GE(g.lookups.size(), 9u) << "about one lookup per retry_initial until max_age";
    EXPECT_LE(g.lookups.size(), 10u);
}

// A fixed seed of the whole simulator, small enough for the unit suite; the
// larger seeds run as their own ctest entries.
TEST(Core, SimulatorSeedHoldsEveryInvariant) {
    sim::world_options w;
    w.seed = 42;
    w.recipients = 3000;
    w.domains = 60;
    sim::simulator s(w);
    const sim::run_report r = s.run();
    EXPECT_EQ(r.violation, "");
    EXPECT_EQ(r.delivered + r.bounced + r.expired + r.invalid + r.in_doubt, w.recipients);
    EXPECT_GT(r.delivered, w.recipients / 2);
}

}  // namespace

// RFC 6152: an 8-bit body goes as 8bit only to a server that offers
// 8BITMIME (with BODY=8BITMIME); to any other it goes quoted-printable.
TEST(Core, EightBitBodyIsDowngradedForAServerWithout8BitMime) {
    const char* text =
        "Subject: hi\r\nTo: {{email}}\r\n\r\nGr\xC3\xBC\xC3\x9F"
        "e aus K\xC3\xB6ln.\r\n";
    for (const bool offers : {false, true}) {
        harness h(engine::tls_policy::opportunistic, text);
        h.add(1);
        const conn_id c = h.connects[0];
        open_session(
            h, c, offers ? "250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n" : "250-mx.test\r\n250 PIPELINING\r\n");
        const std::string mail = h.sent(c);
        EXPECT_EQ(mail.find("BODY=8BITMIME") != std::string::npos, offers) << mail;
        h.server(c, "250 ok\r\n250 ok\r\n354 go\r\n");
        const std::string body = h.sent(c);
        if (offers) {
            EXPECT_NE(body.find("Content-Transfer-Encoding: 8bit\r\n"), std::string::npos) << body;
            EXPECT_NE(body.find("Gr\xC3\xBC\xC3\x9F"
                                "e"),
                      std::string::npos)
                << body;
        } else {
            EXPECT_NE(body.find("Content-Transfer-Encoding: quoted-printable\r\n"), std::string::npos) << body;
            EXPECT_NE(body.find("Gr=C3=BC=C3=9Fe aus K=C3=B6ln."), std::string::npos) << body;
            for (const char ch : body) {
                ASSERT_LT(static_cast<unsigned char>(ch), 0x80u) << "raw 8-bit to a server without 8BITMIME";
            }
        }
        h.server(c, "250 queued\r\n");
        EXPECT_EQ(h.outcomes[2].status, engine::outcome_status::delivered);
    }
}

// A template that sets its own Content-Transfer-Encoding cannot be
// re-encoded: to a server without 8BITMIME it bounces 5.6.3, unsent.
TEST(Core, TemplateOwned8BitBodyBouncesWithout8BitMime) {
    harness h(engine::tls_policy::opportunistic,
              "Subject: hi\r\nTo: {{email}}\r\nContent-Type: text/plain; charset=utf-8\r\n"
              "Content-Transfer-Encoding: 8bit\r\n\r\nGr\xC3\xBC\xC3\x9F"
              "e\r\n");
    h.add(1);
    const conn_id c = h.connects[0];
    open_session(h, c, "250-mx.test\r\n250 PIPELINING\r\n");
    EXPECT_EQ(h.sent(c).find("MAIL FROM"), std::string::npos);
    ASSERT_EQ(h.outcomes.count(2), 1u);
    EXPECT_EQ(h.outcomes[2].status, engine::outcome_status::bounced);
    EXPECT_EQ(h.outcomes[2].enhanced, "5.6.3");
    EXPECT_NE(h.outcomes[2].reply.find("8BITMIME"), std::string::npos) << h.outcomes[2].reply;
}

// A host that serves one session and refuses more at the greeting (421, as
// Postfix's smtpd_client_connection_count_limit does) is not hammered: the
// pool stays at the sessions that work and asks for one more only after
// probe_wait_first, doubling while refused.
TEST(Core, SessionRefusedAtTheGreetingLowersConcurrencyAndBacksOff) {
    harness h;
    h.add(20);
    open_session(h, h.connects[0], ehlo_plain);
    ASSERT_EQ(h.connects.size(), 3u);
    for (std::size_t k = 1; k < 3; ++k) {
        h.connect_ok(h.connects[k]);
        h.server(h.connects[k], "421 4.7.0 mx.test Error: too many connections from 127.0.0.1\r\n");
        EXPECT_TRUE(h.closed[h.connects[k]]);
    }
    EXPECT_EQ(h.connects.size(), 3u) << "reconnected at once after a refusal";
    EXPECT_EQ(h.core->pending(), 20u) << "the refusal deferred nothing: the working session carries the queue";
    h.advance(milliseconds(4900));
    EXPECT_EQ(h.connects.size(), 3u);
    h.advance(milliseconds(200));
    ASSERT_EQ(h.connects.size(), 4u) << "one probe after probe_wait_first";
    h.connect_ok(h.connects[3]);
    h.server(h.connects[3], "421 4.7.0 too many connections\r\n");
    h.advance(milliseconds(9800));
    EXPECT_EQ(h.connects.size(), 4u) << "the second wait doubles";
    h.advance(milliseconds(300));
    ASSERT_EQ(h.connects.size(), 5u);
    // This probe gets a session: the pool may grow again.
    open_session(h, h.connects[4], ehlo_plain);
    EXPECT_EQ(h.core->connections(), 2u);
    EXPECT_EQ(h.core->check_invariants(), "");
}

// A server that takes the message and drops the session before its reply
// may hold a copy: one more attempt (in_doubt_retries = 1), then the row is
// in-doubt, not retried until max_age (4 copies in 30 s before).
TEST(Core, MessageTakenButUnconfirmedIsRetriedOnceThenInDoubt) {
    harness h;
    h.o.cfg.in_doubt_retries = 1;
    h.add(1);
    for (std::size_t k = 0; k < 2; ++k) {
        ASSERT_EQ(h.connects.size(), k + 1);
        const conn_id c = h.connects[k];
        open_session(h, c, ehlo_plain);
        h.sent(c);
        h.server(c, "250 ok\r\n250 ok\r\n354 go\r\n");
        EXPECT_NE(h.sent(c).find("\r\n.\r\n"), std::string::npos);
        h.drop(c);
        h.advance(seconds(61));
    }
    h.advance(std::chrono::minutes(30));
    EXPECT_EQ(h.connects.size(), 2u) << "retried after the second unconfirmed copy";
    ASSERT_EQ(h.outcomes.count(2), 1u);
    EXPECT_EQ(h.outcomes[2].status, engine::outcome_status::in_doubt);
    EXPECT_NE(h.outcomes[2].reply.find("may have arrived"), std::string::npos) << h.outcomes[2].reply;
    EXPECT_EQ(h.stats.in_doubt.load(), 1u);
}

// ---- adaptive rules (core_rules.hpp) -------------------------------------------

// Gmail's 5.7.26 (DMARC) is the sender's to fix: the built-in rule stops the
// destination. The recipient that got it and everything queued there leave
// unfinished (for --resume), nothing bounces, and no transaction follows.
TEST(Core, AnAuthenticationFailureStopsTheDestinationAndLeavesItsMailForResume) {
    harness h;
    h.add(5);
    ASSERT_EQ(h.connects.size(), 1u);
    const conn_id c = h.connects[0];
    open_session(h, c, ehlo_plain);
    EXPECT_EQ(h.sent(c).rfind("MAIL FROM", 0), 0u);
    h.server(c,
             "250 ok\r\n550-5.7.26 Unauthenticated email from sender.test is not accepted due to\r\n"
             "550 5.7.26 the domain's DMARC policy.\r\n554 5.5.1 no valid recipients\r\n");
    const std::size_t opened = h.connects.size();  // slow start opened the rest when the session worked
    h.advance(seconds(5));
    EXPECT_EQ(h.stats.rule_stopped.load(), 1u);
    EXPECT_TRUE(h.outcomes.empty()) << h.outcomes.begin()->second.reply;
    EXPECT_EQ(h.unfinished.size(), 5u);
    EXPECT_EQ(h.sent(c).find("MAIL FROM"), std::string::npos) << "a transaction after the stop";
    h.add(2);  // later rows of the same destination
    EXPECT_EQ(h.unfinished.size(), 7u);
    EXPECT_EQ(h.connects.size(), opened) << "a connection after the stop";
    EXPECT_EQ(h.core->pending(), 0u);
    ASSERT_EQ(h.core->rule_tallies().size(), 1u);
    EXPECT_EQ(h.core->rule_tallies().begin()->first.first, "gmail-authentication");
    EXPECT_EQ(h.core->rule_tallies().begin()->first.second, "domain:example.test");
}

// A block suspends the destination: nothing is sent there until it lifts,
// the 5xx bounces no one, and the wait does not count toward max_age (10
// minutes here, the suspension 20).
TEST(Core, ABlockSuspendsTheDestinationWithoutAgingItsMail) {
    harness h;
    h.o.cfg.max_age = milliseconds(10 * 60'000);
    h.o.cfg.rules = engine::parse_config(
                        "[[rule]]\nname = \"blocked\"\nmatch = '5\\.7\\.606'\naction = \"suspend\"\n"
                        "duration = \"20m\"\nfactor = 0.5\n",
                        "c.toml")
                        .rules;
    h.add(3);
    const conn_id c = h.connects[0];
    open_session(h, c, ehlo_plain);
    EXPECT_EQ(h.sent(c).rfind("MAIL FROM", 0), 0u);
    h.server(c,
             "250 ok\r\n550 5.7.606 Access denied, banned sending IP [192.0.2.1]\r\n554 5.5.1 no valid "
             "recipients\r\n");
    EXPECT_EQ(h.stats.rule_suspended.load(), 1u);
    const std::size_t opened = h.connects.size();  // slow start opened the rest when the session worked
    h.advance(seconds(19 * 60));
    EXPECT_TRUE(h.outcomes.empty());
    EXPECT_EQ(h.connects.size(), opened) << "a connection while suspended";
    EXPECT_EQ(h.sent(c).find("MAIL FROM"), std::string::npos);
    EXPECT_EQ(h.core->pending(), 3u);
    h.advance(seconds(65));
    ASSERT_GT(h.connects.size(), opened) << "the suspension lifted";
    std::size_t serving = opened;
    bool deferred_once = false;
    for (int s = 0; s < 600 && h.outcomes.size() < 3; ++s) {
        for (; serving < h.connects.size(); ++serving) {
            open_session(h, h.connects[serving], ehlo_plain);
        }
        for (std::size_t k = opened; k < h.connects.size(); ++k) {
            const conn_id d = h.connects[k];
            if (const std::string out = h.sent(d); out.find("MAIL FROM") != std::string::npos) {
                if (!deferred_once) {
                    // A deferral after the lift: an aged recipient would expire here.
                    deferred_once = true;
                    h.server(d, "250 ok\r\n451 4.3.0 try again later\r\n554 5.5.1 no valid recipients\r\n");
                    continue;
                }
                h.server(d, "250 ok\r\n250 ok\r\n354 go\r\n");
                h.sent(d);
                h.server(d, "250 queued\r\n");
            }
        }
        h.advance(milliseconds(500));
    }
    ASSERT_EQ(h.outcomes.size(), 3u);
    for (const auto& [line, o] : h.outcomes) {
        EXPECT_EQ(o.status, engine::outcome_status::delivered) << line << ": " << o.reply;
    }
    EXPECT_EQ(h.core->check_invariants(), "");
}

// Exim's smtp_accept_max_per_host refuses one session too many at its
// greeting with a 421 that ends "please try again later", which the
// built-in server-busy (a scale rule, 5 in 10 minutes) matches. While
// another session to that host carries mail such a refusal is the
// connection limit the pool learns a ceiling from, not a rate limit: nine
// of them scale nothing, even with a configured rate to scale from.
TEST(Core, AConnectionLimitRefusalDoesNotCountTowardAScaleRule) {
    harness h;
    h.o.cfg.connections_max = 10;
    engine::rate fast;
    ASSERT_TRUE(engine::parse_rate("1000/s", fast));
    h.o.cfg.max_message_rate = fast;  // a base to scale from: only the refusals decide
    h.add(30);
    open_session(h, h.connects[0], ehlo_plain);
    h.advance(milliseconds(100));  // the paced queue comes due
    ASSERT_EQ(h.connects.size(), 10u) << "slow start opens the rest once a session works";
    for (std::size_t k = 1; k < h.connects.size(); ++k) {
        h.connect_ok(h.connects[k]);
        h.server(h.connects[k],
                 "421 Too many concurrent SMTP connections from this IP address; please try again later.\r\n");
        EXPECT_TRUE(h.closed[h.connects[k]]);
    }
    EXPECT_EQ(h.stats.rule_scaled.load(), 0u) << "a concurrency limit scaled the message rate";
    EXPECT_TRUE(h.core->rule_tallies().empty());
    EXPECT_EQ(h.core->connections(), 1u) << "the ceiling was learned all the same";
    EXPECT_EQ(h.core->check_invariants(), "");
}

// The same reply as the host's only answer (no session of ours carries
// mail there) is about the host, not one session too many: it counts.
TEST(Core, AGreetingRefusalWithNoOtherSessionStillCountsTowardRules) {
    harness h;
    engine::rate fast;
    ASSERT_TRUE(engine::parse_rate("1000/s", fast));
    h.o.cfg.max_message_rate = fast;
    h.o.cfg.rules = engine::parse_config("[[rule]]\nname = \"busy\"\nmatch = 'try again later'\n", "c.toml").rules;
    h.add(3);
    ASSERT_EQ(h.connects.size(), 1u);
    h.connect_ok(h.connects[0]);
    h.server(h.connects[0],
             "421 Too many concurrent SMTP connections from this IP address; please try again later.\r\n");
    EXPECT_EQ(h.stats.rule_scaled.load(), 1u);
    ASSERT_EQ(h.core->rule_tallies().size(), 1u);
    EXPECT_EQ(h.core->rule_tallies().begin()->first.first, "busy");
}
