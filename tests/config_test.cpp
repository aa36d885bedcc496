// Tests for engine/config.hpp: defaults, overrides, and errors that name the
// file, line and key.
#include "mxpress/engine/config.hpp"

#include <gtest/gtest.h>

namespace {

using namespace mxpress::engine;
using mxpress::mail::input_error;

std::string error_of(const std::string& text) {
    try {
        parse_config(text, "c.toml");
    } catch (const input_error& e) {
        return e.describe();
    }
    return "no error";
}

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
    EXPECT_EQ(error_of("[defaults]\nconections_max = 3\n"),
              "c.toml:2: unknown key 'conections_max' in [defaults] (known: helo_name, retry_initial, retry_max, "
              "max_age, connections_max, messages_per_connection_max, connect_timeout, tls, tls_ca_file)");
    EXPECT_EQ(error_of("[defaults]\n\nconnections_max = \"ten\"\n"),
              "c.toml:3: [defaults] connections_max must be an integer");
    EXPECT_EQ(error_of("[defaults]\nconnections_max = 0\n"),
              "c.toml:2: [defaults] connections_max = 0 is out of range (1..10000)");
    EXPECT_EQ(error_of("[defaults]\nmax_age = 24\n"),
              "c.toml:2: [defaults] max_age must be a duration string such as \"30s\", \"5m\" or \"1h\"");
    EXPECT_EQ(error_of("[defaults]\nmax_age = \"24 hours\"\n"),
              "c.toml:2: [defaults] max_age = \"24 hours\" is not a positive duration (use ms, s, m, h, d: \"1h30m\")");
    EXPECT_EQ(error_of("[shaping]\nx = 1\n"),
              "c.toml:1: unknown table or key 'shaping' (known tables: [defaults], [timeouts], [domain.\"…\"], "
              "[mx.\"…\"], [dkim])");
    EXPECT_EQ(error_of("[defaults]\nretry_initial = \"2h\"\n"),
              "c.toml:1: [defaults] retry_initial is longer than retry_max");
    EXPECT_TRUE(error_of("[defaults\n").starts_with("c.toml:1: TOML syntax: ")) << error_of("[defaults\n");
    EXPECT_EQ(error_of("defaults = 3\n"), "c.toml:1: 'defaults' must be a table: [defaults]");
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
    EXPECT_EQ(error_of("[defaults]\ntls = \"yes\"\n"),
              "c.toml:2: [defaults] tls must be \"disabled\", \"opportunistic\", \"required\" or \"verify\"");
    EXPECT_EQ(error_of("[domain.\"a.test\"]\ntls = \"maybe\"\n"),
              "c.toml:2: [domain.\"a.test\"] tls must be \"disabled\", \"opportunistic\", \"required\" or \"verify\"");
    EXPECT_EQ(error_of("[domain.a.test]\ntls = \"required\"\n"),
              "c.toml:1: unknown key 'test' in [domain.\"a\"] (known: tls; quote a dotted name: "
              "[domain.\"example.com\"])");
    EXPECT_EQ(error_of("[mx.\"mx*.test\"]\ntls = \"verify\"\n"),
              "c.toml:1: [mx.\"mx*.test\"]: a host name, or \"*.\" and a suffix");
    EXPECT_EQ(error_of("[domain.\"*.test\"]\ntls = \"verify\"\n"),
              "c.toml:1: [domain.\"*.test\"]: a domain name, without wildcards");
    EXPECT_EQ(error_of("[defaults]\ntls_ca_file = \"/nonexistent/ca.pem\"\n"),
              "c.toml:2: [defaults] tls_ca_file: cannot read /nonexistent/ca.pem: No such file or directory");
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

}  // namespace
