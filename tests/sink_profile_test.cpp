// The mxsink --profile parser and the provider it plays (apps/mxsink/profile.hpp).
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "mxsink/profile.hpp"

namespace {

using mxpress::mail::input_error;
using mxsink::fate;
using mxsink::parse_profile;

// The "FILE:LINE: what" of the error a bad profile raises ("" when none).
std::string profile_error_of(const std::string& text) {
    try {
        parse_profile(text, "p.toml");
    } catch (const input_error& e) {
        return e.describe();
    }
    return "";
}

TEST(SinkProfile, ParsesEveryKeyAndDomainsInheritTheDefault) {
    const mxsink::profile p = parse_profile(R"(
[default]
connections_max = 3
connections_reply = "421 4.7.0 [TSS04] too many connections"
rcpt_4xx = 0.05
delay_ms = 20

[domain."gmail.test"]
accept_rate = "20/s"
throttle_reply = "421 4.7.28 unusual rate"
rcpt_5xx = 0.01
rcpt_5xx_reply = "550 5.1.1 no such user"
data_4xx = 0.1
data_4xx_reply = "451 4.7.0 later"
data_5xx = 0.1
data_5xx_reply = "554 5.7.1 no"
drop_before_dot = 0.2
drop_after_dot = 0.3
)",
                                            "p.toml");
    EXPECT_EQ(p.connections_max, 3u);
    EXPECT_EQ(p.connections_reply, "421 4.7.0 [TSS04] too many connections");
    EXPECT_TRUE(p.defaults.accept_rate.unlimited());
    const mxsink::domain_profile& g = p.for_domain("gmail.test");
    EXPECT_EQ(g.accept_rate.count, 20u);
    EXPECT_EQ(g.accept_rate.period, std::chrono::seconds(1));
    EXPECT_EQ(g.throttle_reply, "421 4.7.28 unusual rate");
    EXPECT_DOUBLE_EQ(g.rcpt_4xx, 0.05);  // from [default]
    EXPECT_EQ(g.delay_ms, 20u);
    EXPECT_DOUBLE_EQ(g.rcpt_5xx, 0.01);
    EXPECT_EQ(g.rcpt_5xx_reply, "550 5.1.1 no such user");
    EXPECT_DOUBLE_EQ(g.drop_after_dot, 0.3);
    EXPECT_EQ(&p.for_domain("other.test"), &p.defaults);
    EXPECT_DOUBLE_EQ(p.defaults.rcpt_5xx, 0);
}

TEST(SinkProfile, BadProfilesNameFileAndLine) {
    EXPECT_EQ(profile_error_of("[default]\nrcpt_4x = 0.1\n"), "p.toml:2: unknown key 'rcpt_4x'");
    EXPECT_EQ(profile_error_of("[defaults]\n"),
              "p.toml:1: unknown table or key 'defaults' (expected [default] or "
              "[domain.\"…\"])");
    EXPECT_EQ(profile_error_of("[default]\n\nrcpt_4xx = 1.5\n"), "p.toml:3: rcpt_4xx: expected a fraction from 0 to 1");
    EXPECT_EQ(profile_error_of("[default]\nrcpt_4xx = \"0.1\"\n"),
              "p.toml:2: rcpt_4xx: expected a fraction from 0 to 1");
    EXPECT_EQ(profile_error_of("[domain.\"a.test\"]\naccept_rate = \"20/sec\"\n"),
              "p.toml:2: accept_rate: expected \"N/s\", \"N/min\", \"N/h\" or \"N/d\" (optionally \",burst=B\") "
              "or \"unlimited\"");
    EXPECT_EQ(profile_error_of("[default]\nrcpt_5xx_reply = \"451 4.0.0 not a 5xx\"\n"),
              "p.toml:2: rcpt_5xx_reply: expected a reply \"5xx text\" on one line");
    EXPECT_EQ(profile_error_of("[default]\nthrottle_reply = \"hello\"\n"),
              "p.toml:2: throttle_reply: expected a reply \"4xx text\" on one line");
    EXPECT_EQ(profile_error_of("[domain.\"a.test\"]\nconnections_max = 2\n"),
              "p.toml:2: connections_max: per client address, so only in [default]");
    EXPECT_EQ(profile_error_of("[default]\nconnections_max = -1\n"),
              "p.toml:2: connections_max: expected an integer from 0 to 1000000");
    EXPECT_EQ(profile_error_of("[default]\ndelay_ms = 600001\n"),
              "p.toml:2: delay_ms: expected an integer from 0 to 600000");
    EXPECT_EQ(profile_error_of("[domain.\"A.test\"]\n"), "p.toml:1: domain.\"A.test\": write the domain in lower case");
    EXPECT_EQ(profile_error_of("[default]\nrcpt_4xx = 0.6\nrcpt_5xx = 0.6\n"),
              "p.toml:1: rcpt_4xx + rcpt_5xx is above 1");
    EXPECT_NE(profile_error_of("[default]\nrcpt_4xx = \n"), "");  // TOML syntax
    EXPECT_EQ(profile_error_of("[default]\ndrop_before_dot = 1\n"), "");
}

// The fates of a run: (address, fate) for every RCPT and DATA in order.
std::vector<std::pair<std::string, fate>> run(mxsink::provider& p, int rounds) {
    std::vector<std::pair<std::string, fate>> out;
    const auto now = std::chrono::steady_clock::now();
    for (int r = 0; r < rounds; ++r) {
        for (int k = 0; k < 200; ++k) {
            const std::string a = "r" + std::to_string(k) + "@x.test";
            out.emplace_back(a, p.rcpt(a, now));
            out.emplace_back(a, p.data({a}));
        }
    }
    return out;
}

TEST(SinkProfile, SameSeedSameFatesAndTheFractionsHold) {
    const std::string text =
        "[default]\nrcpt_4xx = 0.1\nrcpt_5xx = 0.05\ndata_4xx = 0.1\ndrop_before_dot = 0.05\ndrop_after_dot = 0.05\n";
    mxsink::provider a(parse_profile(text, "p.toml"), 7);
    mxsink::provider b(parse_profile(text, "p.toml"), 7);
    mxsink::provider c(parse_profile(text, "p.toml"), 8);
    const auto fa = run(a, 5);
    EXPECT_EQ(fa, run(b, 5));
    EXPECT_NE(fa, run(c, 5));
    int rcpt_4xx = 0;
    for (const auto& [addr, f] : fa) {
        rcpt_4xx += f == fate::rcpt_4xx;
    }
    EXPECT_NEAR(rcpt_4xx / 1000.0, 0.1, 0.03);
    EXPECT_NE(a.refused_json().find("\"rcpt_4xx\":" + std::to_string(rcpt_4xx) + ","), std::string::npos)
        << a.refused_json();
}

TEST(SinkProfile, AcceptRateThrottlesItsDomainOnly) {
    mxsink::provider p(parse_profile("[domain.\"slow.test\"]\naccept_rate = \"10/s,burst=3\"\n", "p.toml"), 1);
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<fate> slow;
    for (int k = 0; k < 5; ++k) {
        slow.push_back(p.rcpt("a@slow.test", t0));
        EXPECT_EQ(p.rcpt("a@fast.test", t0), fate::none);
    }
    EXPECT_EQ(slow, (std::vector<fate>{fate::none, fate::none, fate::none, fate::throttle, fate::throttle}));
    EXPECT_EQ(p.rcpt("b@slow.test", t0 + std::chrono::milliseconds(100)), fate::none);
    EXPECT_EQ(p.reply(fate::throttle, "slow.test").substr(0, 10), "421 4.7.28");
}

TEST(SinkProfile, ClientAcceptRateCountsEveryDomainOfOneClient) {
    mxsink::provider p(parse_profile("[default]\nclient_accept_rate = \"10/s,burst=3\"\n", "p.toml"), 1);
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<fate> got;
    for (const char* a : {"a@one.test", "b@two.test", "c@three.test", "d@four.test"}) {
        got.push_back(p.rcpt(a, t0, 1));
    }
    EXPECT_EQ(got, (std::vector<fate>{fate::none, fate::none, fate::none, fate::throttle}));
    EXPECT_EQ(p.rcpt("e@five.test", t0, 2), fate::none) << "another client has its own budget";
    EXPECT_EQ(p.rcpt("f@six.test", t0 + std::chrono::milliseconds(100), 1), fate::none);
    EXPECT_EQ(profile_error_of("[domain.\"a.test\"]\nclient_accept_rate = \"1/s\"\n"),
              "p.toml:2: client_accept_rate: per client address, so only in [default]");
    EXPECT_EQ(profile_error_of("[default]\nclient_accept_rate = \"fast\"\n").substr(0, 38),
              "p.toml:2: client_accept_rate: expected");
}

TEST(SinkProfile, ConnectionsMaxPerClientAddress) {
    mxsink::provider p(parse_profile("[default]\nconnections_max = 2\n", "p.toml"), 1);
    EXPECT_TRUE(p.open(1));
    EXPECT_TRUE(p.open(1));
    EXPECT_FALSE(p.open(1));
    EXPECT_TRUE(p.open(2));
    p.close(1);
    EXPECT_TRUE(p.open(1));
    EXPECT_NE(p.refused_json().find("\"connections\":1}"), std::string::npos) << p.refused_json();
}

}  // namespace
