// Adaptive rules: the [[rule]] parser and its errors, the built-in rules
// against replies the big receivers send, and the throttle state machine
// (scale, AIMD, recovery, suspend and its ramp, stop).
#include <chrono>
#include <string>

#include <gtest/gtest.h>

#include "config_errors.hpp"
#include "mxpress/engine/config.hpp"
#include "mxpress/engine/throttle.hpp"

using namespace mxpress::engine;
using namespace std::chrono_literals;
using mxpress::mail::input_error;
using mxpress::test::config_error_of;

namespace {

// The rule the default configuration applies to a reply, or "".
std::string rule_for(int code, const std::string& line, const config& c = config{}) {
    const rule* r = c.rules.match(code, line, "example.com", "");
    return r == nullptr ? std::string() : r->name;
}

const rule& only_rule(const config& c) {
    EXPECT_FALSE(c.rules.rules.empty());
    return c.rules.rules.front();
}

}  // namespace

TEST(Rules, BuiltinsMatchTheBigReceiversReplies) {
    EXPECT_EQ(rule_for(421, "421 4.7.28 [1.2.3.4] Our system has detected an unusual rate of unsolicited mail"),
              "gmail-rate");
    EXPECT_EQ(rule_for(421, "421 4.7.0 This message is suspicious due to the very low reputation of the sending IP"),
              "gmail-reputation");
    EXPECT_EQ(rule_for(421, "421 4.7.0 [TSS04] Messages from 1.2.3.4 temporarily deferred due to unexpected volume"),
              "yahoo-deferred");
    EXPECT_EQ(rule_for(451,
                       "451 4.7.650 The mail server [1.2.3.4] has been temporarily rate limited due to IP "
                       "reputation."),
              "microsoft-rate");
    EXPECT_EQ(rule_for(421, "421 RP-001 (COL004-MC1F8) Unfortunately, some messages from 1.2.3.4 weren't sent."),
              "microsoft-rate");
    EXPECT_EQ(rule_for(550, "550 5.7.1 Unfortunately, messages from [1.2.3.4] weren't sent. (S3150) [x]"),
              "microsoft-block");
    EXPECT_EQ(rule_for(550, "550 5.7.606 Access denied, banned sending IP [1.2.3.4]"), "microsoft-block");
    EXPECT_EQ(rule_for(553, "553 5.7.1 [BL21] Connections will not be accepted from 1.2.3.4"), "yahoo-block");
    EXPECT_EQ(rule_for(550,
                       "550 5.7.26 Unauthenticated email from town.example is not accepted due to domain's "
                       "DMARC policy"),
              "gmail-authentication");
    EXPECT_EQ(rule_for(421, "421 4.7.26 This mail has been rate limited because it is unauthenticated"),
              "gmail-authentication");
    EXPECT_EQ(rule_for(550,
                       "550 5.7.515 Access denied, sending domain does not meet the required authentication "
                       "level"),
              "microsoft-authentication");
    EXPECT_EQ(rule_for(421, "421 4.3.2 Server busy, try again later"), "server-busy");
}

TEST(Rules, OrdinaryFailuresAndMadeUpRepliesMatchNoRule) {
    EXPECT_EQ(rule_for(550, "550 5.1.1 The email account that you tried to reach does not exist"), "");
    EXPECT_EQ(rule_for(452, "452 4.2.2 The email account that you tried to reach is over quota"), "");
    EXPECT_EQ(rule_for(450, "450 4.7.1 Greylisted, see https://example.org"), "");
    EXPECT_EQ(rule_for(250, "250 2.0.0 OK unusual rate of unsolicited mail"), "");  // positive
    EXPECT_EQ(rule_for(0, "connect: server busy"), "");                             // made up here
    EXPECT_EQ(rule_for(550, "550 5.7.6060 not a Microsoft code"), "");
}

TEST(Rules, TheFilesRulesComeFirstAndReplaceABuiltinOfTheirName) {
    const config c = parse_config(R"([[rule]]
name = "gmail-rate"
match = '4\.7\.28'
trigger = "immediate"
action = "suspend"
duration = "90s"

[[rule]]
name = "mine"
domain = "Example.COM"
match = 'slow down'
)",
                                  "c.toml");
    ASSERT_GE(c.rules.rules.size(), 3u);
    EXPECT_EQ(c.rules.rules[0].name, "gmail-rate");
    EXPECT_EQ(c.rules.rules[0].action, rule_action::suspend);
    EXPECT_EQ(c.rules.rules[0].duration, 90s);
    EXPECT_EQ(c.rules.rules[0].factor, 0.1);  // suspend's default restart fraction
    EXPECT_EQ(c.rules.rules[0].origin, "c.toml:1");
    EXPECT_EQ(c.rules.rules[1].domain, "example.com");
    int gmail = 0;
    for (const rule& r : c.rules.rules) {
        gmail += r.name == "gmail-rate" ? 1 : 0;
    }
    EXPECT_EQ(gmail, 1);
    EXPECT_EQ(rule_for(421, "421 slow down please", c), "mine");
    EXPECT_EQ(c.rules.match(421, "421 slow down please", "other.org", ""), nullptr);  // its domain only

    const config off = parse_config("[rules]\nbuiltin = false\n", "c.toml");
    EXPECT_TRUE(off.rules.rules.empty());
    EXPECT_EQ(config{}.rules.rules.size(), builtin_rules().size());
}

TEST(Rules, BadRulesAreErrorsNamingFileLineAndKey) {
    EXPECT_EQ(config_error_of("[[rule]]\nname = \"a\"\nmatch = '(unclosed'\n"),
              config_error_of("[[rule]]\nname = \"a\"\nmatch = '(unclosed'\n"));
    EXPECT_NE(config_error_of("[[rule]]\nname = \"a\"\nmatch = '(unclosed'\n")
                  .find("c.toml:3: [[rule]] \"a\" match is not a "
                        "valid regex"),
              std::string::npos);
    EXPECT_NE(config_error_of("[[rule]]\nname = \"a\"\nmatch = 'x'\ntrigger = \"3 per 10m\"\n").find("c.toml:4:"),
              std::string::npos);
    EXPECT_NE(config_error_of("[[rule]]\nname = \"a\"\nmatch = 'x'\naction = \"pause\"\n").find("action must be"),
              std::string::npos);
    EXPECT_NE(
        config_error_of("[[rule]]\nname = \"a\"\nmatch = 'x'\nfactor = 1.5\n").find("c.toml:4: [[rule]] \"a\" factor"),
        std::string::npos);
    EXPECT_NE(config_error_of("[[rule]]\nname = \"a\"\nmatch = 'x'\nrecover = \"10%/5m\"\n").find("recover must be"),
              std::string::npos);
    EXPECT_NE(config_error_of("[[rule]]\nname = \"a\"\nmatch = 'x'\nfloor = \"fast\"\n").find("floor must be"),
              std::string::npos);
    EXPECT_NE(config_error_of("[[rule]]\nname = \"a\"\nmatch = 'x'\nduration = \"30m\"\n").find("duration is for"),
              std::string::npos);
    EXPECT_NE(
        config_error_of("[[rule]]\nname = \"a\"\nmatch = 'x'\nfactr = 0.5\n").find("c.toml:4: unknown key 'factr'"),
        std::string::npos);
    EXPECT_NE(config_error_of("[[rule]]\nmatch = 'x'\n").find("needs a name"), std::string::npos);
    EXPECT_NE(config_error_of("[[rule]]\nname = \"a\"\n").find("needs match"), std::string::npos);
    EXPECT_NE(config_error_of("[[rule]]\nname = \"a\"\nmatch = 'x'\nprovider = \"g\"\ndomain = \"d\"\n").find("both"),
              std::string::npos);
    EXPECT_NE(config_error_of("[[rule]]\nname = \"a\"\nmatch = 'x'\n[[rule]]\nname = \"a\"\nmatch = 'y'\n")
                  .find("c.toml:4: [[rule]] \"a\" is defined twice"),
              std::string::npos);
    EXPECT_NE(config_error_of("[rule]\nname = \"a\"\n").find("array of tables"), std::string::npos);
    EXPECT_NE(config_error_of("[rules]\nbuiltin = \"yes\"\n").find("c.toml:2: [rules] builtin must be true or false"),
              std::string::npos);
}

TEST(Rules, SpansAndRecoverStringsAreStrict) {
    std::chrono::milliseconds ms{};
    EXPECT_TRUE(parse_span("10m", ms));
    EXPECT_EQ(ms, 10min);
    EXPECT_TRUE(parse_span("4h", ms));
    EXPECT_EQ(ms, 4h);
    EXPECT_FALSE(parse_span("0s", ms));
    EXPECT_FALSE(parse_span("10", ms));
    EXPECT_FALSE(parse_span("m", ms));
    EXPECT_FALSE(parse_span("31d", ms));
    EXPECT_FALSE(parse_span("-5m", ms));
}

// Three matches within ten minutes fire "3/10m"; three spread wider do not.
TEST(Throttle, TriggerCountsMatchesWithinItsSpan) {
    const config c = parse_config("[[rule]]\nname = \"r\"\nmatch = 'x'\ntrigger = \"3/10m\"\n", "c.toml");
    const rule& r = only_rule(c);
    throttle t;
    rule_firing f;
    clock::time_point now{};
    EXPECT_FALSE(t.hit(r, 0, now, 100, {}, f, clock::time_point::max()));
    EXPECT_FALSE(t.hit(r, 0, now + 6min, 100, {}, f, clock::time_point::max()));
    EXPECT_FALSE(t.hit(r, 0, now + 12min, 100, {}, f, clock::time_point::max()));  // the first fell out of the span
    EXPECT_EQ(t.current(), throttle::state::normal);
    EXPECT_TRUE(t.hit(r, 0, now + 13min, 100, {}, f, clock::time_point::max()));
    EXPECT_EQ(t.current(), throttle::state::scaled);
    EXPECT_DOUBLE_EQ(f.rate_per_s, 50);
    EXPECT_EQ(f.rule, "r");
}

// Multiplicative decrease on each firing, never below the floor; additive
// increase (+10% of the old rate per quiet 5 minutes) back to normal.
TEST(Throttle, ScaleHalvesThenRecoversStepByStep) {
    const config c = parse_config("[[rule]]\nname = \"r\"\nmatch = 'x'\nfloor = \"10/s\"\n", "c.toml");
    const rule& r = only_rule(c);
    throttle t;
    rule_firing f;
    clock::time_point now{};
    ASSERT_TRUE(t.hit(r, 0, now, 100, {}, f, clock::time_point::max()));
    EXPECT_DOUBLE_EQ(t.rate_per_s(), 50);
    ASSERT_TRUE(t.hit(r, 0, now + 1s, 100, {}, f, clock::time_point::max()));
    EXPECT_DOUBLE_EQ(t.rate_per_s(), 25);
    ASSERT_TRUE(t.hit(r, 0, now + 2s, 100, {}, f, clock::time_point::max()));
    ASSERT_TRUE(t.hit(r, 0, now + 3s, 100, {}, f, clock::time_point::max()));
    EXPECT_DOUBLE_EQ(t.rate_per_s(), 10);  // the floor, not 6.25
    now += 3s;
    EXPECT_FALSE(t.advance(now + 4min));
    EXPECT_TRUE(t.advance(now + 5min));
    EXPECT_DOUBLE_EQ(t.rate_per_s(), 20);
    EXPECT_TRUE(t.advance(now + 20min));  // three more steps at once
    EXPECT_DOUBLE_EQ(t.rate_per_s(), 50);
    EXPECT_TRUE(t.advance(now + 45min));
    EXPECT_EQ(t.current(), throttle::state::normal);
}

// With no configured rate, a scale starts from the rate it was sending at.
TEST(Throttle, AnUnlimitedDestinationScalesFromWhatItSent) {
    const config c = parse_config("[[rule]]\nname = \"r\"\nmatch = 'x'\n", "c.toml");
    rate_meter m;
    clock::time_point now = clock::time_point{} + 1h;
    for (int k = 0; k < 2000; ++k) {
        m.note(now + std::chrono::milliseconds(k * 10));  // 100/s for 20 s
    }
    EXPECT_NEAR(m.per_second(now + 20s), 100, 5);
    throttle t;
    rule_firing f;
    ASSERT_TRUE(t.hit(only_rule(c), 0, now + 20s, 0, m.measure(now + 20s), f, clock::time_point::max()));
    EXPECT_NEAR(f.rate_per_s, 50, 3);
    EXPECT_NEAR(f.base_per_s, 100, 5);
}

// With no configured rate, a scale waits for a measurement to scale from:
// the first message in flight reads as 1/s (the meter's window is clamped
// to a second), and 70% of that held a domain taking hundreds a second at
// 0.7/s. The hits stay counted; the first one after base_messages_min
// messages fires, from the rate measured then. A suspend needs no rate.
TEST(Throttle, AScaleWaitsForAMeasuredRateWhenNoneIsConfigured) {
    const rule* busy = nullptr;
    for (const rule& r : builtin_rules()) {
        busy = r.name == "server-busy" ? &r : busy;
    }
    ASSERT_NE(busy, nullptr);
    ASSERT_EQ(busy->trigger_count, 5u);
    rate_meter m;
    const clock::time_point now = clock::time_point{} + 1h;
    m.note(now);  // one message started, then a burst of "try again later"
    EXPECT_DOUBLE_EQ(m.per_second(now + 100ms), 1.0);
    throttle t;
    rule_firing f;
    for (int k = 0; k < 8; ++k) {
        EXPECT_FALSE(t.hit(*busy, 0, now + 100ms, 0, m.measure(now + 100ms), f, now)) << k;
    }
    EXPECT_EQ(t.current(), throttle::state::normal);
    for (std::uint64_t k = 1; k < throttle::base_messages_min; ++k) {
        m.note(now + std::chrono::milliseconds(100 + 5 * k));  // the rest of a burst
    }
    ASSERT_EQ(m.messages(), throttle::base_messages_min);
    const measured_rate seen = m.measure(now + 1s);
    ASSERT_TRUE(t.hit(*busy, 0, now + 1s, 0, seen, f, now)) << "the hits waited for a rate, not forgotten";
    EXPECT_EQ(t.current(), throttle::state::scaled);
    EXPECT_DOUBLE_EQ(f.base_per_s, seen.per_second);
    EXPECT_DOUBLE_EQ(f.rate_per_s, 0.7 * seen.per_second);

    // A configured rate is a base at once; a suspension fires whatever was measured.
    const config c = parse_config("[[rule]]\nname = \"s\"\nmatch = 'x'\naction = \"suspend\"\n", "c.toml");
    throttle configured;
    for (int k = 0; k < 5; ++k) {
        EXPECT_EQ(configured.hit(*busy, 0, now, 50, {}, f, now), k == 4);
    }
    EXPECT_DOUBLE_EQ(configured.rate_per_s(), 35);
    throttle suspended;
    ASSERT_TRUE(suspended.hit(only_rule(c), 0, now, 0, {1.0, 1}, f, now));
    EXPECT_EQ(suspended.current(), throttle::state::suspended);
}

// A suspension holds until it lifts, then restarts at factor × the old
// rate and ramps; a stop is for good.
TEST(Throttle, SuspendLiftsIntoARampAndStopStays) {
    const config c = parse_config(
        "[[rule]]\nname = \"s\"\nmatch = 'x'\naction = \"suspend\"\nduration = \"30m\"\n"
        "[[rule]]\nname = \"x\"\nmatch = 'y'\naction = \"stop\"\n",
        "c.toml");
    throttle t;
    rule_firing f;
    clock::time_point now{};
    ASSERT_TRUE(t.hit(c.rules.rules[0], 0, now, 100, {}, f, clock::time_point::max()));
    EXPECT_EQ(t.current(), throttle::state::suspended);
    EXPECT_EQ(f.until, now + 30min);
    EXPECT_FALSE(t.advance(now + 29min));
    EXPECT_EQ(t.current(), throttle::state::suspended);
    EXPECT_TRUE(t.advance(now + 30min));
    EXPECT_EQ(t.current(), throttle::state::scaled);
    EXPECT_DOUBLE_EQ(t.rate_per_s(), 10);  // a tenth, then +10 per 5 minutes
    EXPECT_TRUE(t.advance(now + 35min));
    EXPECT_DOUBLE_EQ(t.rate_per_s(), 20);

    ASSERT_TRUE(t.hit(c.rules.rules[1], 1, now + 36min, 100, {}, f, clock::time_point::max()));
    EXPECT_EQ(t.current(), throttle::state::stopped);
    EXPECT_FALSE(t.advance(now + 48h));
    EXPECT_EQ(t.current(), throttle::state::stopped);
    EXPECT_FALSE(t.hit(c.rules.rules[0], 0, now + 49h, 100, {}, f, clock::time_point::max()));
}

// Replies to mail sent before a firing are one signal with the replies that
// fired it: a burst of them from every connection in flight does not halve
// the rate again and again.
TEST(Throttle, RepliesToMailSentBeforeAFiringDoNotFireAgain) {
    const config c = parse_config("[[rule]]\nname = \"r\"\nmatch = 'x'\ntrigger = \"3/10m\"\n", "c.toml");
    const rule& r = only_rule(c);
    throttle t;
    rule_firing f;
    const clock::time_point sent = clock::time_point{} + 1h;
    const clock::time_point now = sent + 100ms;
    ASSERT_FALSE(t.hit(r, 0, now, 100, {}, f, sent));
    ASSERT_FALSE(t.hit(r, 0, now, 100, {}, f, sent));
    ASSERT_TRUE(t.hit(r, 0, now, 100, {}, f, sent));
    for (int k = 0; k < 9; ++k) {  // the other connections' replies
        EXPECT_FALSE(t.hit(r, 0, now + 10ms, 100, {}, f, sent));
    }
    EXPECT_DOUBLE_EQ(t.rate_per_s(), 50);
    for (int k = 0; k < 2; ++k) {  // sent after the firing: these count
        EXPECT_FALSE(t.hit(r, 0, now + 2s, 100, {}, f, now + 1s));
    }
    EXPECT_TRUE(t.hit(r, 0, now + 2s, 100, {}, f, now + 1s));
    EXPECT_DOUBLE_EQ(t.rate_per_s(), 25);
}
