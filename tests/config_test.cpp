// Tests for engine/config.hpp: defaults, overrides, errors that name the
// file, line and key, and the key table that drives them (every row parsed,
// printed and documented in README).
#include "config_errors.hpp"
#include "mxpress/engine/config.hpp"

#include <gtest/gtest.h>

#include <map>
#include <fstream>
#include <sstream>

namespace {

using namespace mxpress::engine;
using mxpress::mail::input_error;
using mxpress::test::config_error_of;

TEST(Config, DefaultsAreSafe) {
    const config c = parse_config("", "c.toml");
    EXPECT_EQ(c.retry_initial, std::chrono::minutes(1));
    EXPECT_EQ(c.retry_max, std::chrono::hours(1));
    EXPECT_EQ(c.max_age, std::chrono::hours(24));
    EXPECT_EQ(c.connections_max, 10u);
    EXPECT_EQ(c.messages_per_connection_max, 1000u);
    EXPECT_EQ(c.smtp_timeouts.data_term, std::chrono::minutes(10));
    EXPECT_FALSE(c.helo_name.empty());
}

TEST(Config, Overrides) {
    const config c = parse_config(
        "[defaults]\nhelo_name = \"mx.sender.example\"\nretry_initial = \"2s\"\nretry_max = \"1m30s\"\n"
        "max_age = \"10s\"\nconnections_max = 3\nmessages_per_connection_max = 50\n"
        "[timeouts]\ndata_term = \"30s\"\n",
        "c.toml");
    EXPECT_EQ(c.helo_name, "mx.sender.example");
    EXPECT_EQ(c.retry_initial, std::chrono::seconds(2));
    EXPECT_EQ(c.retry_max, std::chrono::seconds(90));
    EXPECT_EQ(c.max_age, std::chrono::seconds(10));
    EXPECT_EQ(c.connections_max, 3u);
    EXPECT_EQ(c.messages_per_connection_max, 50u);
    EXPECT_EQ(c.smtp_timeouts.data_term, std::chrono::seconds(30));
    EXPECT_NE(describe(c).find("retry_max = \"1m30s\""), std::string::npos);
}

TEST(Config, Errors) {
    EXPECT_EQ(config_error_of("[defaults]\nconections_max = 3\n"),
              "c.toml:2: unknown key 'conections_max' in [defaults]; did you mean 'connections_max'? (known: "
              "helo_name, retry_initial, retry_max, max_age, connections_max, messages_per_connection_max, "
              "max_message_rate, max_connection_rate, connect_timeout, idle_timeout, pending_max, host_skip_max, "
              "in_doubt_retries, tls, tls_ca_file, "
              "tls_sessions_max, "
              "tls_plaintext_after_failure, chunking)");
    EXPECT_EQ(config_error_of("[defaults]\n\nconnections_max = \"ten\"\n"),
              "c.toml:3: [defaults] connections_max must be an integer");
    EXPECT_EQ(config_error_of("[defaults]\nchunking = \"no\"\n"),
              "c.toml:2: [defaults] chunking must be true or false");
    EXPECT_EQ(config_error_of("[defaults]\nconnections_max = 0\n"),
              "c.toml:2: [defaults] connections_max = 0 is out of range (1..10000)");
    EXPECT_EQ(config_error_of("[defaults]\nmax_age = 24\n"),
              "c.toml:2: [defaults] max_age must be a duration string such as \"30s\", \"5m\" or \"1h\"");
    EXPECT_EQ(config_error_of("[defaults]\nmax_age = \"24 hours\"\n"),
              "c.toml:2: [defaults] max_age = \"24 hours\" is not a positive duration (use ms, s, m, h, d: \"1h30m\")");
    EXPECT_EQ(
        config_error_of("[shaping]\nx = 1\n"),
        "c.toml:1: unknown table or key 'shaping' (known tables: [defaults], [timeouts], [dns], "
        "[domain.\"…\"], [provider.\"…\"], [mx.\"…\"], [dkim] and [[dkim.key]], [[rule]], [rules], [sequence.\"…\"])");
    EXPECT_EQ(config_error_of("[defaults]\nretry_initial = \"2h\"\n"),
              "c.toml:1: [defaults] retry_initial is longer than retry_max");
    EXPECT_TRUE(config_error_of("[defaults\n").starts_with("c.toml:1: TOML syntax: "))
        << config_error_of("[defaults\n");
    EXPECT_EQ(config_error_of("defaults = 3\n"), "c.toml:1: 'defaults' must be a table: [defaults]");
}

TEST(Config, TlsPolicyPerDomainAndMxPattern) {
    const config c = parse_config(
        "[defaults]\ntls = \"required\"\n"
        "[domain.\"Legacy.Example\"]\ntls = \"disabled\"\n"
        "[mx.\"*.google.com\"]\ntls = \"verify\"\n"
        "[mx.\"mx.exact.test\"]\ntls = \"opportunistic\"\n"
        "[timeouts]\ntls_handshake = \"5s\"\n",
        "c.toml");
    EXPECT_EQ(c.tls_for("other.test", "mx.other.test"), tls_policy::required);
    EXPECT_EQ(c.tls_for("legacy.example", "aspmx.l.google.com"), tls_policy::disabled) << "domain wins";
    EXPECT_EQ(c.tls_for("gmail.com", "ASPMX.L.GOOGLE.COM"), tls_policy::verify);
    EXPECT_EQ(c.tls_for("x.test", "google.com"), tls_policy::required) << "*.google.com needs a label before";
    EXPECT_EQ(c.tls_for("x.test", "mx.exact.test"), tls_policy::opportunistic);
    EXPECT_EQ(c.tls_for("x.test", "a.mx.exact.test"), tls_policy::required);
    EXPECT_EQ(c.tls_handshake_timeout, std::chrono::seconds(5));
    const std::string d = describe(c);
    EXPECT_NE(d.find("[mx.\"*.google.com\"]\ntls = \"verify\""), std::string::npos) << d;
    EXPECT_EQ(parse_config("", "c.toml").tls, tls_policy::opportunistic) << "the default";
}

TEST(Config, TlsErrors) {
    EXPECT_EQ(config_error_of("[defaults]\ntls = \"yes\"\n"),
              "c.toml:2: [defaults] tls must be \"disabled\", \"opportunistic\", \"required\" or \"verify\"");
    EXPECT_EQ(config_error_of("[domain.\"a.test\"]\ntls = \"maybe\"\n"),
              "c.toml:2: [domain.\"a.test\"] tls must be \"disabled\", \"opportunistic\", \"required\" or \"verify\"");
    EXPECT_EQ(config_error_of("[domain.a.test]\ntls = \"required\"\n"),
              "c.toml:1: unknown key 'test' in [domain.\"a\"] (known: tls, max_message_rate, connections_max, "
              "messages_per_connection_max; quote a dotted name: [domain.\"example.com\"])");
    EXPECT_EQ(config_error_of("[mx.\"mx*.test\"]\ntls = \"verify\"\n"),
              "c.toml:1: [mx.\"mx*.test\"]: a host name, or \"*.\" and a suffix");
    EXPECT_EQ(config_error_of("[domain.\"*.test\"]\ntls = \"verify\"\n"),
              "c.toml:1: [domain.\"*.test\"]: a domain name, without wildcards");
    EXPECT_EQ(config_error_of("[defaults]\ntls_ca_file = \"/nonexistent/ca.pem\"\n"),
              "c.toml:2: [defaults] tls_ca_file: cannot read /nonexistent/ca.pem: No such file or directory");
}

// Rates are parsed strictly: a positive count, a unit, an optional burst.
TEST(Config, Rates) {
    rate r;
    ASSERT_TRUE(parse_rate("10/s", r));
    EXPECT_EQ(r.interval(), std::chrono::milliseconds(100));
    EXPECT_EQ(r.burst, 1u);
    EXPECT_EQ(r.tolerance(), std::chrono::nanoseconds(0));
    ASSERT_TRUE(parse_rate("3000/min,burst=50", r));
    EXPECT_EQ(r.interval(), std::chrono::milliseconds(20));
    EXPECT_EQ(r.tolerance(), std::chrono::milliseconds(20 * 49));
    ASSERT_TRUE(parse_rate("2/h", r));
    EXPECT_EQ(r.interval(), std::chrono::minutes(30));
    ASSERT_TRUE(parse_rate("1/d", r));
    EXPECT_EQ(r.interval(), std::chrono::hours(24));
    ASSERT_TRUE(parse_rate("unlimited", r));
    EXPECT_TRUE(r.unlimited());
    for (const char* bad : {"", "10", "10/", "0/s", "-1/s", "10/sec", "10/m", "1.5/s", " 10/s", "10/s ", "010/s",
                            "10/s,burst=0", "10/s,burst=", "10/s,bust=2", "10/s,burst=2,burst=3", "1/s,burst=1000001",
                            "99999999999/s", "Unlimited", "10 / s"}) {
        EXPECT_FALSE(parse_rate(bad, r)) << bad;
    }
}

TEST(Config, DomainLimitsOverDefaults) {
    const config c = parse_config(
        "[defaults]\nmax_message_rate = \"100/s\"\nconnections_max = 8\nmax_connection_rate = \"60/min,burst=5\"\n"
        "[domain.\"Yahoo.co.jp\"]\nmax_message_rate = \"10/s\"\nconnections_max = 2\n"
        "[domain.\"slow.test\"]\ntls = \"required\"\nmessages_per_connection_max = 5\n",
        "c.toml");
    const domain_limits y = c.limits_for("yahoo.co.jp");
    ASSERT_TRUE(y.max_message_rate);
    EXPECT_EQ(y.max_message_rate->text, "10/s");
    EXPECT_EQ(y.connections_max, 2u);
    EXPECT_EQ(y.messages_per_connection_max, 1000u) << "the default";
    const domain_limits s = c.limits_for("SLOW.test");
    EXPECT_EQ(s.max_message_rate->text, "100/s") << "[defaults]";
    EXPECT_EQ(s.connections_max, 8u);
    EXPECT_EQ(s.messages_per_connection_max, 5u);
    EXPECT_EQ(c.tls_for("slow.test", "mx.slow.test"), tls_policy::required);
    EXPECT_EQ(c.limits_for("other.test").max_message_rate->text, "100/s");
    EXPECT_EQ(c.max_connection_rate.burst, 5u);
    const std::string d = describe(c);
    EXPECT_NE(d.find("[domain.\"slow.test\"]\ntls = \"required\"\nmessages_per_connection_max = 5\n"),
              std::string::npos)
        << d;
    EXPECT_EQ(describe(parse_config(d, "c.toml")), d) << "check-config prints a configuration that reads back";
}

TEST(Config, Providers) {
    const config c = parse_config(
        "[provider.google]\nmatch = [\"*.Google.com\", \"*.googlemail.com\"]\nconnections_max = 20\n"
        "max_message_rate = \"3000/min\"\nmessages_per_connection_max = 50\ntls = \"required\"\n"
        "[provider.other]\nmatch = [\"mx.other.test\"]\n",
        "c.toml");
    ASSERT_EQ(c.providers.size(), 2u);
    const provider_config* g = c.provider_for("aspmx.l.google.com");
    ASSERT_NE(g, nullptr);
    EXPECT_EQ(g->name, "google");
    EXPECT_EQ(g->connections_max, 20u);
    EXPECT_EQ(g->messages_per_connection_max, 50u);
    EXPECT_EQ(g->max_message_rate->text, "3000/min");
    EXPECT_EQ(c.provider_for("alt1.gmail-smtp-in.l.googlemail.com"), g);
    EXPECT_EQ(c.provider_for("google.com"), nullptr) << "*. needs a label before";
    EXPECT_EQ(c.provider_for("mx.other.test")->name, "other");
    EXPECT_EQ(c.tls_for("gmail.com", "aspmx.l.google.com"), tls_policy::required);
    EXPECT_EQ(c.tls_for("x.test", "mx.other.test"), tls_policy::opportunistic) << "no tls: the default";
    const std::string d = describe(c);
    EXPECT_EQ(describe(parse_config(d, "c.toml")), d) << d;
    EXPECT_EQ(config_error_of("[provider.g]\nconnections_max = 2\n"),
              "c.toml:1: [provider.\"g\"] needs match = [\"*.example.com\", …]: the MX hosts it covers");
    EXPECT_EQ(config_error_of("[provider.g]\nmatch = [\"mx*.g.test\"]\n"),
              "c.toml:2: [provider.\"g\"] match: each entry a host name, or \"*.\" and a suffix");
    EXPECT_EQ(config_error_of("[provider.g]\nmatch = \"*.g.test\"\n"),
              "c.toml:2: [provider.\"g\"] match must be a non-empty array of host patterns");
    EXPECT_EQ(config_error_of("[provider.g]\nmatch = [\"*.g.test\"]\nrate = \"1/s\"\n"),
              "c.toml:3: unknown key 'rate' in [provider.\"g\"] (known: match, max_message_rate, connections_max, "
              "messages_per_connection_max, tls)");
    EXPECT_EQ(config_error_of("[provider.g]\nmatch = [\"*.g.test\"]\nmax_message_rate = \"fast\"\n"),
              "c.toml:3: [provider.\"g\"] max_message_rate must be \"unlimited\" or a rate such as \"10/s\", "
              "\"3000/min\", \"50000/h\" or \"1000/d\", optionally with \",burst=B\"");
}

// check-config --domain: each effective value and the section it came from.
TEST(Config, DescribeDestinationNamesTheSections) {
    const config c = parse_config(
        "[defaults]\nmax_connection_rate = \"60/min\"\n"
        "[domain.\"yahoo.co.jp\"]\nmax_message_rate = \"10/s\"\nconnections_max = 2\n"
        "[provider.yahoo]\nmatch = [\"*.yahoodns.net\"]\nconnections_max = 20\nmax_message_rate = \"3000/min\"\n"
        "tls = \"required\"\n"
        "[mx.\"*.example.net\"]\ntls = \"verify\"\n",
        "c.toml");
    const std::string y = describe_destination(c, "Yahoo.co.jp", "MTA5.am0.yahoodns.net");
    EXPECT_EQ(y,
              "destination: yahoo.co.jp via mta5.am0.yahoodns.net\n"
              "sections: [domain.\"yahoo.co.jp\"], [provider.\"yahoo\"]\n"
              "max_message_rate = \"10/s\"  # per domain, from [domain.\"yahoo.co.jp\"]\n"
              "connections_max = 2  # per MX address, from [domain.\"yahoo.co.jp\"]\n"
              "messages_per_connection_max = 1000  # from [defaults]\n"
              "max_connection_rate = \"60/min\"  # per MX address, from [defaults]\n"
              "provider max_message_rate = \"3000/min\"  # one budget for all its domains, from [provider.\"yahoo\"]\n"
              "provider connections_max = 20  # all its hosts together, from [provider.\"yahoo\"]\n"
              "tls = \"required\"  # from [provider.\"yahoo\"]\n");
    const std::string o = describe_destination(c, "other.test", "mx.example.net");
    EXPECT_NE(o.find("sections: none (only [defaults])\n"), std::string::npos) << o;
    EXPECT_NE(o.find("tls = \"verify\"  # from [mx.\"*.example.net\"]\n"), std::string::npos) << o;
    EXPECT_NE(o.find("max_message_rate = \"unlimited\"  # per domain, from [defaults]\n"), std::string::npos) << o;
    const std::string n = describe_destination(c, "other.test", "");
    EXPECT_NE(n.find("provider: depends on the MX host names (give --mx HOST)\n"), std::string::npos) << n;
}

TEST(Config, RateErrorsNameFileLineAndKey) {
    EXPECT_EQ(config_error_of("[defaults]\nmax_message_rate = \"10 per second\"\n"),
              "c.toml:2: [defaults] max_message_rate must be \"unlimited\" or a rate such as \"10/s\", \"3000/min\", "
              "\"50000/h\" or \"1000/d\", optionally with \",burst=B\"");
    EXPECT_EQ(config_error_of("[defaults]\nmax_connection_rate = 100\n"),
              "c.toml:2: [defaults] max_connection_rate must be \"unlimited\" or a rate such as \"10/s\", "
              "\"3000/min\", \"50000/h\" or \"1000/d\", optionally with \",burst=B\"");
    EXPECT_EQ(config_error_of("[domain.\"a.test\"]\n\nmax_message_rate = \"0/s\"\n"),
              "c.toml:3: [domain.\"a.test\"] max_message_rate must be \"unlimited\" or a rate such as \"10/s\", "
              "\"3000/min\", \"50000/h\" or \"1000/d\", optionally with \",burst=B\"");
    EXPECT_EQ(config_error_of("[domain.\"a.test\"]\nconnections_max = 0\n"),
              "c.toml:2: [domain.\"a.test\"] connections_max must be an integer in 1..10000");
    EXPECT_EQ(config_error_of("[domain.\"a.test\"]\nmessages_per_connection_max = \"5\"\n"),
              "c.toml:2: [domain.\"a.test\"] messages_per_connection_max must be an integer in 1..100000000");
}

TEST(Config, MissingFileIsAnError) {
    try {
        load_config("/nonexistent/c.toml");
        FAIL();
    } catch (const input_error& e) {
        EXPECT_EQ(e.describe(), "/nonexistent/c.toml: cannot open configuration: No such file or directory");
    }
}

TEST(Config, Durations) {
    milliseconds d{};
    EXPECT_TRUE(parse_duration("250ms", d));
    EXPECT_EQ(d.count(), 250);
    EXPECT_TRUE(parse_duration("1d2h3m4s", d));
    EXPECT_EQ(d.count(), ((24 + 2) * 3600 + 3 * 60 + 4) * 1000);
    EXPECT_FALSE(parse_duration("5", d));
    EXPECT_FALSE(parse_duration("m", d));
    EXPECT_FALSE(parse_duration("5x", d));
    EXPECT_EQ(format_duration(std::chrono::milliseconds(5'400'000)), "1h30m");
}

TEST(Config, TimeoutsKeepMilliseconds) {
    const config c =
        parse_config("[timeouts]\ngreeting = \"500ms\"\ndata_term = \"1m30s250ms\"\nquit = \"2s\"\n", "c.toml");
    EXPECT_EQ(c.smtp_timeouts.greeting, milliseconds(500)) << "not truncated to 0 s";
    EXPECT_EQ(c.smtp_timeouts.data_term, milliseconds(90'250));
    EXPECT_EQ(c.smtp_timeouts.quit, std::chrono::seconds(2));
    const std::string d = describe(c);
    EXPECT_NE(d.find("greeting = \"500ms\""), std::string::npos) << d;
    EXPECT_NE(d.find("data_term = \"1m30s250ms\""), std::string::npos) << d;

    // The client arms what the config says.
    mxpress::smtp::client client("h.example", c.smtp_timeouts);
    EXPECT_EQ(client.timeout(), milliseconds(500));
}

TEST(Config, AbsurdDurationsAreErrors) {
    EXPECT_EQ(config_error_of("[defaults]\nmax_age = \"1000000d\"\n"),
              "c.toml:2: [defaults] max_age = \"1000000d\" is out of range (1ms..365d)");
    EXPECT_EQ(config_error_of("[timeouts]\ngreeting = \"0s\"\n"),
              "c.toml:2: [timeouts] greeting = \"0s\" is out of range (1ms..1d)");
    EXPECT_EQ(config_error_of("[dns]\ntimeout = \"1h\"\n"),
              "c.toml:2: [dns] timeout = \"1h\" is out of range (1ms..1m)");
    // Parts that would overflow 64 bits are malformed, not wrapped around.
    EXPECT_EQ(config_error_of("[defaults]\nmax_age = \"99999999999999999999d\"\n"),
              "c.toml:2: [defaults] max_age = \"99999999999999999999d\" is not a positive duration (use ms, s, m, h, "
              "d: \"1h30m\")");
    milliseconds d{};
    EXPECT_FALSE(parse_duration("200000000000d", d)) << "2e11 days overflows the millisecond count";
    EXPECT_FALSE(parse_duration("9000000000000000d9000000000000000d", d));
    EXPECT_TRUE(parse_duration("365d", d));
    EXPECT_EQ(d, std::chrono::days(365));
    // Every key's maximum still fits a steady_clock deadline from now.
    for (const config_key& k : config_keys) {
        if (k.type == key_type::duration) {
            EXPECT_LT(milliseconds(k.max), std::chrono::steady_clock::duration::max() / 2 -
                                               std::chrono::steady_clock::now().time_since_epoch())
                << k.name;
        }
    }
}

TEST(Config, OperatorKnobs) {
    const config d = parse_config("", "c.toml");
    EXPECT_EQ(d.pending_max, 50'000u);
    EXPECT_EQ(d.idle_timeout, std::chrono::seconds(2));
    EXPECT_EQ(d.tls_plaintext_after_failure, std::chrono::minutes(10));
    EXPECT_EQ(d.tls_sessions_max, 8u);
    EXPECT_EQ(d.dns_timeout, milliseconds(300));
    EXPECT_EQ(d.dns_tries, 5u);
    EXPECT_EQ(d.dns_queries_in_flight_max, 128u);
    EXPECT_EQ(d.mx_cache_ttl, std::chrono::minutes(5));
    EXPECT_EQ(d.dns_failure_cache_ttl, std::chrono::seconds(30));
    EXPECT_EQ(d.host_skip_max, std::chrono::minutes(1));
    EXPECT_EQ(d.smtp_timeouts.quit, std::chrono::seconds(5));
    EXPECT_EQ(d.smtp_timeouts.ehlo, std::chrono::minutes(5));
    EXPECT_EQ(d.smtp_timeouts.other, std::chrono::minutes(5));

    const config c = parse_config(
        "[defaults]\npending_max = 1000\nidle_timeout = \"250ms\"\ntls_plaintext_after_failure = \"1h\"\n"
        "tls_sessions_max = 0\nhost_skip_max = \"5s\"\n"
        "[timeouts]\nquit = \"10s\"\nehlo = \"1m\"\nother = \"20s\"\n"
        "[dns]\ntimeout = \"500ms\"\ntries = 7\nmx_cache_ttl = \"1h\"\nfailure_cache_ttl = \"5s\"\n"
        "queries_in_flight_max = 16\n",
        "c.toml");
    EXPECT_EQ(c.pending_max, 1000u);
    EXPECT_EQ(c.idle_timeout, milliseconds(250));
    EXPECT_EQ(c.tls_plaintext_after_failure, std::chrono::hours(1));
    EXPECT_EQ(c.tls_sessions_max, 0u);
    EXPECT_EQ(c.host_skip_max, std::chrono::seconds(5));
    EXPECT_EQ(c.smtp_timeouts.quit, std::chrono::seconds(10));
    EXPECT_EQ(c.smtp_timeouts.ehlo, std::chrono::minutes(1));
    EXPECT_EQ(c.smtp_timeouts.other, std::chrono::seconds(20));
    EXPECT_EQ(c.dns_timeout, milliseconds(500));
    EXPECT_EQ(c.dns_tries, 7u);
    EXPECT_EQ(c.dns_queries_in_flight_max, 16u);
    EXPECT_EQ(c.mx_cache_ttl, std::chrono::hours(1));
    EXPECT_EQ(c.dns_failure_cache_ttl, std::chrono::seconds(5));
    EXPECT_EQ(config_error_of("[dns]\ntries = 0\n"), "c.toml:2: [dns] tries = 0 is out of range (1..20)");
    EXPECT_EQ(config_error_of("[dns]\ntimout = \"1s\"\n"),
              "c.toml:2: unknown key 'timout' in [dns]; did you mean 'timeout'? (known: timeout, tries, "
              "queries_in_flight_max, "
              "mx_cache_ttl, "
              "failure_cache_ttl)");
}

TEST(Config, WrongTypesNameTheKey) {
    EXPECT_EQ(config_error_of("[defaults]\nhelo_name = 3\n"),
              "c.toml:2: [defaults] helo_name must be a host name string");
    EXPECT_EQ(config_error_of("[defaults]\nhelo_name = \"a b\"\n"),
              "c.toml:2: [defaults] helo_name must be a host name string");
    EXPECT_EQ(config_error_of("[defaults]\ntls_ca_file = 1\n"),
              "c.toml:2: [defaults] tls_ca_file must be a file name string");
    EXPECT_EQ(config_error_of("[defaults]\ntls = true\n"),
              "c.toml:2: [defaults] tls must be \"disabled\", \"opportunistic\", \"required\" or \"verify\"");
    EXPECT_EQ(config_error_of("[timeouts]\nquit = 5\n"),
              "c.toml:2: [timeouts] quit must be a duration string such as \"30s\", \"5m\" or \"1h\"");
    EXPECT_EQ(config_error_of("[defalts]\ntls = \"verify\"\n"),
              "c.toml:1: unknown table or key 'defalts'; did you mean 'defaults'? (known tables: [defaults], "
              "[timeouts], [dns], [domain.\"…\"], [provider.\"…\"], [mx.\"…\"], [dkim] and [[dkim.key]], [[rule]], "
              "[rules], [sequence.\"…\"])");
}

TEST(Config, TlsSetOnlyWhenTheFileSaysSo) {
    EXPECT_FALSE(parse_config("", "c.toml").tls_set);
    EXPECT_FALSE(parse_config("[defaults]\nretry_max = \"2h\"\n", "c.toml").tls_set);
    const config c = parse_config("[defaults]\ntls = \"opportunistic\"\n", "c.toml");
    EXPECT_TRUE(c.tls_set) << "the default value, but written in the file";
    EXPECT_TRUE(c.is_set("defaults", "tls"));
    EXPECT_FALSE(c.is_set("defaults", "retry_max"));
}

// The lines of describe() that name a key: "key = value".
std::map<std::string, std::string> described(const config& c) {
    std::map<std::string, std::string> out;
    std::istringstream in(describe(c));
    std::string section;
    for (std::string line; std::getline(in, line);) {
        if (line.starts_with("[")) {
            section = line;
        } else if (const std::size_t eq = line.find(" = "); eq != std::string::npos) {
            std::string value = line.substr(eq + 3, line.find(" #") - eq - 3);
            value.erase(value.find_last_not_of(' ') + 1);
            out[section + " " + line.substr(0, eq)] = value;
        }
    }
    return out;
}

// Each row is parsed into its own field and printed from it: setting one key
// to a value other than its default changes that key's line and no other,
// and check-config's output is a configuration that reads back the same.
TEST(Config, EveryKeyRoundTripsThroughItsOwnField) {
    const config defaults;
    const auto before = described(defaults);
    EXPECT_EQ(before.size(), std::size(config_keys) + 1);  // and [rules] builtin (its own section)
    EXPECT_EQ(before.count("[rules] builtin"), 1u);
    EXPECT_EQ(describe(parse_config(describe(defaults), "c.toml")), describe(defaults)) << describe(defaults);
    const std::string readable = std::string(MXPRESS_SOURCE_DIR) + "/README.md";
    for (const config_key& k : config_keys) {
        std::string value;
        switch (k.type) {
            case key_type::duration:
                value = fmt::format("\"{}\"",
                                    format_duration(milliseconds(k.max == 86'400'000 * 365LL ? k.max - 1000 : k.max)));
                break;
            case key_type::count: value = std::to_string(k.max); break;
            case key_type::host_name: value = "\"other.example\""; break;
            case key_type::file: value = fmt::format("\"{}\"", readable); break;
            case key_type::tls_policy: value = "\"disabled\""; break;
            case key_type::rate: value = "\"7/min,burst=3\""; break;
            case key_type::boolean: value = "false"; break;  // every boolean defaults to true
        }
        std::string text = fmt::format("[{}]\n{} = {}\n", k.section, k.name, value);
        if (k.name == "retry_initial") {
            text += fmt::format("retry_max = {}\n", value);
        }
        const config c = parse_config(text, "c.toml");
        auto after = described(c);
        const std::string line = fmt::format("[{}] {}", k.section, k.name);
        EXPECT_EQ(after[line], value) << line;
        after[line] = before.at(line);
        if (k.name == "retry_initial") {
            after["[defaults] retry_max"] = before.at("[defaults] retry_max");
        }
        EXPECT_EQ(after, before) << "setting " << line << " changed another key";
        EXPECT_TRUE(c.is_set(k.section, k.name));
        EXPECT_EQ(describe(parse_config(describe(c), "c.toml")), describe(c)) << line;
    }
}

// README's table of keys is the one config_keys prints; when a key changes,
// paste the output of `mxpress check-config --keys` between the markers.
TEST(Config, ReadmeTableMatchesTheKeyTable) {
    std::ifstream in(std::string(MXPRESS_SOURCE_DIR) + "/README.md");
    ASSERT_TRUE(in);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string readme = ss.str();
    const std::string begin = "<!-- config-keys: generated by `mxpress check-config --keys` -->\n";
    const std::string end = "<!-- config-keys end -->";
    const std::size_t b = readme.find(begin);
    const std::size_t e = readme.find(end);
    ASSERT_NE(b, std::string::npos) << "README lacks: " << begin;
    ASSERT_NE(e, std::string::npos) << "README lacks: " << end;
    EXPECT_EQ(readme.substr(b + begin.size(), e - b - begin.size()), describe_keys_markdown())
        << "README's table of configuration keys is stale: paste `mxpress check-config --keys`";
}

TEST(Config, DirectoryIsNotAConfiguration) {
    const std::string dir = ::testing::TempDir();
    try {
        load_config(dir);
        FAIL() << "a directory read as an empty configuration";
    } catch (const input_error& e) {
        EXPECT_EQ(e.describe(), dir + ": cannot read configuration: it is a directory");
    }
}

}  // namespace
