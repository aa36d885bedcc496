// Tests for engine/metrics.hpp: the exposition text (README, Metrics) and
// the atomic replacement of the metrics file that node_exporter reads.
#include "mxpress/engine/metrics.hpp"

#include <gtest/gtest.h>

#include <dirent.h>
#include <sys/stat.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace {

using mxpress::engine::check_textfile_dir;
using mxpress::engine::exposition;
using mxpress::engine::metrics_snapshot;
using mxpress::engine::metrics_temp_path;
using mxpress::engine::metrics_textfile_path;
using mxpress::engine::write_textfile;
using mxpress::test::read_file;
using mxpress::test::temp_dir;

metrics_snapshot example() {
    metrics_snapshot s;
    s.run = "0123abcd4567ef89";
    s.version = "0.1.0";
    s.start_time = 1764250000.25;
    s.last_progress_time = 1764250012.5;
    s.rows = 100;
    s.skipped = 3;
    s.delivered = 80;
    s.bounced = 4;
    s.expired = 2;
    s.in_doubt = 1;
    s.invalid = 5;
    s.suppressed = 6;
    s.late = 7;
    s.attempts = 97;
    s.deferrals = 9;
    s.throttled = 5;
    s.throttle_wait_ms = 2500;
    s.rule_scaled = 3;
    s.rule_suspended = 1;
    s.replies_2xx = 80;
    s.replies_4xx = 9;
    s.replies_5xx = 4;
    s.in_flight = 7;
    s.connections_opened = 12;
    s.connections_open = 2;
    s.tls_handshakes = 11;
    s.tls_resumed = 10;
    s.tls_failures = 1;
    s.sent_bytes = 123456789012;
    s.sent_bdat = 70;
    s.sent_data = 13;
    return s;
}

// Every series, its HELP and TYPE, in the order README lists them.
TEST(Metrics, ExpositionTextNamesEverySeriesWithHelpTypeAndTheRunLabel) {
    const std::string want = R"(# HELP mxpress_build_info mxpress's version; always 1.
# TYPE mxpress_build_info gauge
mxpress_build_info{run="0123abcd4567ef89",version="0.1.0"} 1
# HELP mxpress_start_time_seconds When the run started, in unix seconds.
# TYPE mxpress_start_time_seconds gauge
mxpress_start_time_seconds{run="0123abcd4567ef89"} 1764250000.250
# HELP mxpress_last_progress_time_seconds When a recipient last reached a final outcome or was deferred, in unix seconds (the start until then).
# TYPE mxpress_last_progress_time_seconds gauge
mxpress_last_progress_time_seconds{run="0123abcd4567ef89"} 1764250012.500
# HELP mxpress_run_ended 1 in the run's last write (it ended or was stopped), else 0.
# TYPE mxpress_run_ended gauge
mxpress_run_ended{run="0123abcd4567ef89"} 0
# HELP mxpress_rows_read_total Data rows read from the recipients file.
# TYPE mxpress_rows_read_total counter
mxpress_rows_read_total{run="0123abcd4567ef89"} 100
# HELP mxpress_rows_skipped_total Rows already final in the journal (--resume), not sent again.
# TYPE mxpress_rows_skipped_total counter
mxpress_rows_skipped_total{run="0123abcd4567ef89"} 3
# HELP mxpress_recipients_total Recipients that reached a final outcome in this run, by status.
# TYPE mxpress_recipients_total counter
mxpress_recipients_total{run="0123abcd4567ef89",status="delivered"} 80
mxpress_recipients_total{run="0123abcd4567ef89",status="bounced"} 4
mxpress_recipients_total{run="0123abcd4567ef89",status="expired"} 2
mxpress_recipients_total{run="0123abcd4567ef89",status="in-doubt"} 1
mxpress_recipients_total{run="0123abcd4567ef89",status="invalid"} 5
mxpress_recipients_total{run="0123abcd4567ef89",status="suppressed"} 6
mxpress_recipients_total{run="0123abcd4567ef89",status="skipped"} 7
# HELP mxpress_attempts_total Delivery transactions started (each retry counts).
# TYPE mxpress_attempts_total counter
mxpress_attempts_total{run="0123abcd4567ef89"} 97
# HELP mxpress_deferrals_total Temporary failures, each retried later or expired.
# TYPE mxpress_deferrals_total counter
mxpress_deferrals_total{run="0123abcd4567ef89"} 9
# HELP mxpress_throttled_total Sends that waited for a max_message_rate slot (domain or provider).
# TYPE mxpress_throttled_total counter
mxpress_throttled_total{run="0123abcd4567ef89"} 5
# HELP mxpress_throttle_wait_seconds_total How long the throttled sends waited, in all.
# TYPE mxpress_throttle_wait_seconds_total counter
mxpress_throttle_wait_seconds_total{run="0123abcd4567ef89"} 2.500
# HELP mxpress_rule_actions_total Adaptive rules that fired, by action (a receiver's reply matched a [[rule]] or a built-in).
# TYPE mxpress_rule_actions_total counter
mxpress_rule_actions_total{run="0123abcd4567ef89",action="scale"} 3
mxpress_rule_actions_total{run="0123abcd4567ef89",action="suspend"} 1
mxpress_rule_actions_total{run="0123abcd4567ef89",action="stop"} 0
# HELP mxpress_smtp_replies_total Replies that ended a transaction, by class (a session that ended before its reply counts in none).
# TYPE mxpress_smtp_replies_total counter
mxpress_smtp_replies_total{run="0123abcd4567ef89",class="2xx"} 80
mxpress_smtp_replies_total{run="0123abcd4567ef89",class="4xx"} 9
mxpress_smtp_replies_total{run="0123abcd4567ef89",class="5xx"} 4
# HELP mxpress_messages_sent_total Message bodies sent and answered with a final reply (any class), by transfer: BDAT (the server offered CHUNKING) or DATA.
# TYPE mxpress_messages_sent_total counter
mxpress_messages_sent_total{run="0123abcd4567ef89",transfer="bdat"} 70
mxpress_messages_sent_total{run="0123abcd4567ef89",transfer="data"} 13
# HELP mxpress_transactions_in_flight Transactions started and not yet journaled.
# TYPE mxpress_transactions_in_flight gauge
mxpress_transactions_in_flight{run="0123abcd4567ef89"} 7
# HELP mxpress_connections_open SMTP connections open now.
# TYPE mxpress_connections_open gauge
mxpress_connections_open{run="0123abcd4567ef89"} 2
# HELP mxpress_connections_opened_total SMTP connections opened.
# TYPE mxpress_connections_opened_total counter
mxpress_connections_opened_total{run="0123abcd4567ef89"} 12
# HELP mxpress_tls_handshakes_total TLS handshakes completed.
# TYPE mxpress_tls_handshakes_total counter
mxpress_tls_handshakes_total{run="0123abcd4567ef89"} 11
# HELP mxpress_tls_resumptions_total TLS handshakes completed that resumed a session.
# TYPE mxpress_tls_resumptions_total counter
mxpress_tls_resumptions_total{run="0123abcd4567ef89"} 10
# HELP mxpress_tls_handshake_failures_total TLS handshakes that failed or timed out.
# TYPE mxpress_tls_handshake_failures_total counter
mxpress_tls_handshake_failures_total{run="0123abcd4567ef89"} 1
# HELP mxpress_sent_bytes_total Bytes written to SMTP connections (TLS records included).
# TYPE mxpress_sent_bytes_total counter
mxpress_sent_bytes_total{run="0123abcd4567ef89"} 123456789012
)";
    EXPECT_EQ(exposition(example()), want);
}

TEST(Metrics, EndedRunSaysSoAndLabelValuesAreEscaped) {
    metrics_snapshot s = example();
    s.ended = true;
    s.version = "1.0 \"beta\"\\x\ny";
    const std::string text = exposition(s);
    EXPECT_NE(text.find("mxpress_run_ended{run=\"0123abcd4567ef89\"} 1\n"), std::string::npos) << text;
    EXPECT_NE(text.find(R"(version="1.0 \"beta\"\\x\ny"} 1)"), std::string::npos) << text;
}

// Two [provider] sections' series.
metrics_snapshot with_providers() {
    metrics_snapshot s = example();
    s.providers.push_back({"google", 70, 6, 1, 1500, 3});
    s.providers.push_back({"micro\"soft", 5, 2, 3, 0, 0});
    return s;
}

TEST(Metrics, ProviderSeriesCarryTheSectionNameAndNoDomain) {
    EXPECT_EQ(exposition(example()).find("provider="), std::string::npos) << "no [provider]: no series";
    const std::string text = exposition(with_providers());
    for (const char* line : {
             "# TYPE mxpress_provider_smtp_replies_total counter\n",
             "mxpress_provider_smtp_replies_total{run=\"0123abcd4567ef89\",provider=\"google\",class=\"2xx\"} 70\n",
             "mxpress_provider_smtp_replies_total{run=\"0123abcd4567ef89\",provider=\"google\",class=\"5xx\"} 1\n",
             "mxpress_provider_smtp_replies_total{run=\"0123abcd4567ef89\",provider=\"micro\\\"soft\",class=\"4xx\"} "
             "2\n",
             "# TYPE mxpress_provider_throttle_wait_seconds_total counter\n",
             "mxpress_provider_throttle_wait_seconds_total{run=\"0123abcd4567ef89\",provider=\"google\"} 1.500\n",
             "# TYPE mxpress_provider_connections_open gauge\n",
             "mxpress_provider_connections_open{run=\"0123abcd4567ef89\",provider=\"google\"} 3\n",
         }) {
        EXPECT_NE(text.find(line), std::string::npos) << line << "\nin\n" << text;
    }
}

// Counters end in _total, every sample has HELP and TYPE before it, and no
// label but run, status, class, action, transfer, version and provider (never a
// domain or an address).
TEST(Metrics, NamingFollowsPrometheusConventions) {
    const std::string text = exposition(with_providers());
    std::string family;
    std::string type;
    std::size_t samples = 0;
    for (std::size_t at = 0; at < text.size();) {
        const std::size_t nl = text.find('\n', at);
        ASSERT_NE(nl, std::string::npos) << "the text ends with a newline";
        const std::string line = text.substr(at, nl - at);
        at = nl + 1;
        if (line.starts_with("# HELP ")) {
            family = line.substr(7, line.find(' ', 7) - 7);
            type.clear();
            continue;
        }
        if (line.starts_with("# TYPE ")) {
            ASSERT_EQ(line.substr(7, family.size() + 1), family + " ") << line;
            type = line.substr(7 + family.size() + 1);
            ASSERT_TRUE(type == "counter" || type == "gauge") << line;
            EXPECT_EQ(family.ends_with("_total"), type == "counter") << line;
            continue;
        }
        ++samples;
        ASSERT_FALSE(type.empty()) << "a sample without TYPE: " << line;
        ASSERT_TRUE(line.starts_with(family + "{run=\"")) << line;
        const std::string labels = line.substr(family.size() + 1, line.find('}') - family.size() - 1);
        for (std::size_t p = 0; p < labels.size();) {
            const std::string name = labels.substr(p, labels.find('=', p) - p);
            EXPECT_TRUE(name == "run" || name == "status" || name == "class" || name == "version" || name == "action" ||
                        name == "provider" || name == "transfer")
                << line;
            p = labels.find("\",", p);
            p = p == std::string::npos ? labels.size() : p + 2;
        }
    }
    EXPECT_EQ(samples, 32u + 2 * 5);
}

std::vector<std::string> names_in(const std::string& dir) {
    std::vector<std::string> out;
    DIR* d = ::opendir(dir.c_str());
    while (const dirent* e = d != nullptr ? ::readdir(d) : nullptr) {
        if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") {
            out.emplace_back(e->d_name);
        }
    }
    if (d != nullptr) {
        ::closedir(d);
    }
    return out;
}

TEST(Metrics, WriteReplacesTheFileAndLeavesNoTemporaryOne) {
    temp_dir dir;
    write_textfile(dir.path(), "r1", "a 1\n");
    write_textfile(dir.path(), "r1", "a 2\n");
    EXPECT_EQ(read_file(metrics_textfile_path(dir.path(), "r1")), "a 2\n");
    EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"mxpress_r1.prom"});
    struct stat st {};
    ASSERT_EQ(::stat(metrics_textfile_path(dir.path(), "r1").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0044, 0044u) << "readable by node_exporter's user";
}

// A reader never sees part of a file: each read is one whole version. (A
// write in place, truncate then write, fails this at once.)
TEST(Metrics, ReadersNeverSeeAPartialFile) {
    temp_dir dir;
    constexpr std::size_t size = 1 << 20;
    const std::string a(size, 'a');
    const std::string b(size, 'b');
    const std::string path = metrics_textfile_path(dir.path(), "r");
    write_textfile(dir.path(), "r", a);
    std::atomic<bool> done{false};
    std::atomic<int> reads{0};
    std::atomic<int> torn{0};
    std::thread reader([&]() {
        while (!done.load()) {
            const std::string got = read_file(path);
            if (got != a && got != b) {
                torn.fetch_add(1);
            }
            reads.fetch_add(1);
        }
    });
    for (int i = 0; i < 200; ++i) {
        write_textfile(dir.path(), "r", i % 2 == 0 ? b : a);
    }
    done.store(true);
    reader.join();
    EXPECT_GT(reads.load(), 0);
    EXPECT_EQ(torn.load(), 0) << "of " << reads.load() << " reads";
}

// A write that fails leaves the previous file whole and says which file.
TEST(Metrics, FailedWriteLeavesThePreviousFile) {
    temp_dir dir;
    write_textfile(dir.path(), "r", "old 1\n");
    // The temporary file cannot be created where a directory holds its name.
    ASSERT_EQ(::mkdir(metrics_temp_path(dir.path(), "r").c_str(), 0755), 0);
    try {
        write_textfile(dir.path(), "r", "new 2\n");
        ADD_FAILURE() << "no error";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find(".mxpress_r.prom.tmp"), std::string::npos) << e.what();
    }
    EXPECT_EQ(read_file(metrics_textfile_path(dir.path(), "r")), "old 1\n");
}

TEST(Metrics, CheckTextfileDirNamesTheProblem) {
    temp_dir dir;
    EXPECT_EQ(check_textfile_dir(dir.path()), "");
    const std::string missing = check_textfile_dir(dir.file("nope"));
    EXPECT_NE(missing.find("nope': No such file or directory"), std::string::npos) << missing;
    const std::string file = check_textfile_dir(dir.write("f", "x"));
    EXPECT_NE(file.find("/f': not a directory"), std::string::npos) << file;
}

}  // namespace
