// Unit tests of the delivery core's live reload (core_rules.hpp: reload):
// what a new configuration changes in the pools of domains already routed.
// A scripted server and a hand-moved clock, no sockets.
#include "mxpress/engine/core.hpp"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sim/simulator.hpp"  // sim_tls_channel

namespace {

using namespace mxpress;
using engine::clock;
using engine::command_kind;
using engine::conn_id;
using std::chrono::milliseconds;

// Every domain routed to one address; sessions answered by hand.
class reload_harness : engine::outcome_sink, net::secure_channel_factory {
public:
    reload_harness() {
        o.cfg.helo_name = "sender.test";
        o.cfg.tls = engine::tls_policy::disabled;
        o.cfg.connections_max = 3;
        o.from = "sender@sender.test";
        o.routes.push_back(engine::route{"*", "127.0.0.2", "", 25, false, std::nullopt});
        tmpl = mail::message_template::compile("Subject: hi\r\nTo: {{email}}\r\n\r\nHello.\r\n", "t.eml", {"email"});
        mail::renderer_options ro;
        ro.from = o.from;
        renderer.emplace(tmpl, ro);
        net::secure_channel_factory& f = *this;
        engine::outcome_sink& s = *this;
        core = std::make_unique<engine::delivery_core>(o, *renderer, f, s, stats);
        core->set_now(clock::time_point{} + std::chrono::hours(1));
    }

    void add(const std::string& domain, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) {
            auto r = std::make_unique<engine::recipient>();
            r->line = next_line++;
            r->email = "user" + std::to_string(r->line) + "@" + domain;
            r->domain_at = static_cast<std::uint32_t>(r->email.find('@') + 1);
            r->values = r->email;
            r->ends.push_back(static_cast<std::uint32_t>(r->values.size()));
            core->recipient_arrived(std::move(r));
        }
        settle();
    }

    // Greeting and EHLO on a connection the core asked for.
    void open_session(conn_id id) {
        core->connected(id, 0);
        settle();
        core->received(id, "220 mx.test ESMTP\r\n");
        settle();
        core->received(id, "250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        settle();
    }

    void reload(const engine::config& c) {
        core->reload(std::make_shared<const engine::config>(c));
        settle();
    }

    std::vector<conn_id> connects;
    engine::shard_options o;
    engine::shard_stats stats;
    mail::message_template tmpl;
    std::optional<mail::renderer> renderer;
    std::unique_ptr<engine::delivery_core> core;
    std::uint64_t next_line = 2;

private:
    void settle() {
        core->schedule();
        for (;;) {
            std::vector<engine::command> cmds;
            core->take_commands(cmds);
            if (cmds.empty()) {
                return;
            }
            for (engine::command& c : cmds) {
                if (c.kind == command_kind::connect) {
                    connects.push_back(c.conn);
                } else if (c.kind == command_kind::send) {
                    std::string back;
                    core->send_done(c.conn, static_cast<int>(c.data.size()), back);
                }
            }
            core->schedule();
        }
    }

    void final_outcome(const engine::recipient&, engine::outcome_status, const smtp::reply&, std::string_view,
                       std::string_view) override {}
    void unfinished_outcome(const engine::recipient&, clock::time_point, bool) override {}
    std::unique_ptr<net::secure_channel> open(const net::tls_peer&) override {
        return std::make_unique<sim::sim_tls_channel>(sim::sim_tls_channel::mode::ok);
    }
    void keep_sessions(const std::string&, net::secure_channel&) override {}
};

// a.test and b.test share the host's pool under [defaults]; a reload gives
// a.test a section with connections_max = 1. From then on a.test's mail
// goes to pools of its own, and b.test keeps the pool with [defaults]' 3
// connections: a.test's new limit must not become the shared pool's
// (before, it did until a.test's MX answer was next looked up).
TEST(CoreReload, ADomainThatGainsConnectionLimitsGetsPoolsOfItsOwnAtOnce) {
    reload_harness h;
    h.add("a.test", 1);
    h.add("b.test", 1);
    ASSERT_EQ(h.connects.size(), 1u);  // slow start: one until a session works
    h.open_session(h.connects[0]);     // the pool is proven; a.test's mail is on its way
    const std::size_t before = h.core->connections();
    ASSERT_LE(before, 2u);

    engine::config c = h.o.cfg;
    engine::domain_limits a;
    a.name = "a.test";
    a.connections_max = 1;
    c.domain_limit.push_back(a);
    h.reload(c);

    h.add("b.test", 10);
    EXPECT_EQ(h.core->connections(), 3u) << "b.test's pool keeps [defaults] connections_max";
    EXPECT_EQ(h.core->check_invariants(), "");

    const std::size_t connects = h.connects.size();
    h.add("a.test", 5);
    // A pool of a.test's own: a new one (slow start: one connection).
    EXPECT_EQ(h.connects.size(), connects + 1);
    EXPECT_EQ(h.core->connections(), 4u);
    h.open_session(h.connects.back());
    EXPECT_EQ(h.connects.size(), connects + 1) << "a.test's own pool holds its connections_max = 1";
    EXPECT_EQ(h.core->check_invariants(), "");
}

}  // namespace
