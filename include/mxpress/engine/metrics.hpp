// mxpress/engine/metrics.hpp — `send --metrics-textfile DIR`: a run's
// counters in the Prometheus text exposition format, written for
// node_exporter's textfile collector.
//
// Promises:
// - exposition() is a pure function of a metrics_snapshot: every series has
//   HELP and TYPE lines, counters end in _total, values are in base units
//   (seconds, bytes), and the only labels are `run` (one file per run, so
//   that the files of several runs in one directory never collide), `status`,
//   `class`, `action`, `transfer`, `version` and `provider` (a
//   [provider."…"] section's name: the operator's few, never a domain or an
//   address).
// - write_textfile() replaces DIR/mxpress_<run>.prom atomically: the text
//   goes to a temporary file in DIR whose name does not end in .prom (the
//   collector ignores it), then rename(2) puts it in place. A reader sees
//   the previous file or the new one, never a part of one; a failed write
//   leaves the previous file as it was and removes the temporary one.
// - check_textfile_dir() says, before a run starts, why DIR cannot take the
//   file (empty: it can).
// Nothing here reads the shards' counters: the runner samples them
// (runner.hpp) and hands a snapshot over.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "mxpress/io/unique_fd.hpp"

namespace mxpress::engine {

// What one metrics file says about one run.
struct metrics_snapshot {
    std::string run;                // the journal's run id
    std::string version;            // mxpress's version
    double start_time = 0;          // unix seconds
    double last_progress_time = 0;  // unix seconds: the last final outcome or deferral (start: the start)
    bool ended = false;             // the run's last write
    std::uint64_t rows = 0;         // data rows read from the recipients file
    std::uint64_t skipped = 0;      // already final in the journal (--resume)
    // Final outcomes of this run, by the journal's status.
    std::uint64_t delivered = 0;
    std::uint64_t bounced = 0;
    std::uint64_t expired = 0;
    std::uint64_t in_doubt = 0;
    std::uint64_t invalid = 0;
    std::uint64_t suppressed = 0;
    std::uint64_t late = 0;       // journaled "skipped": step mail: due longer ago than max_late
    std::uint64_t attempts = 0;   // transactions started
    std::uint64_t deferrals = 0;  // temporary failures
    std::uint64_t throttled = 0;  // sends that waited for a max_message_rate slot
    std::uint64_t throttle_wait_ms = 0;
    std::uint64_t rule_scaled = 0;  // adaptive rules that fired, by action
    std::uint64_t rule_suspended = 0;
    std::uint64_t rule_stopped = 0;
    std::uint64_t replies_2xx = 0;
    std::uint64_t replies_4xx = 0;
    std::uint64_t replies_5xx = 0;
    std::uint64_t sent_bdat = 0;  // bodies sent and answered with a final reply, by BDAT (CHUNKING)
    std::uint64_t sent_data = 0;  // ... by DATA
    std::uint64_t in_flight = 0;
    std::uint64_t connections_opened = 0;
    std::uint64_t connections_open = 0;
    std::uint64_t tls_handshakes = 0;
    std::uint64_t tls_resumed = 0;
    std::uint64_t tls_failures = 0;
    std::uint64_t sent_bytes = 0;
    // Per [provider."…"] section, in the file's order (none: no series).
    struct provider_sample {
        std::string name;
        std::uint64_t replies_2xx = 0;  // replies of its hosts that ended a transaction
        std::uint64_t replies_4xx = 0;
        std::uint64_t replies_5xx = 0;
        std::uint64_t throttle_wait_ms = 0;  // its domains' sends that waited for a slot
        std::uint64_t connections_open = 0;  // every shard's, to its hosts
    };
    std::vector<provider_sample> providers;
};

// A label value with \, " and newline escaped (the exposition format's rules).
inline std::string metrics_label_value(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        switch (c) {
            case '\\': out += "\\\\"; break;
            case '"': out += "\\\""; break;
            case '\n': out += "\\n"; break;
            default: out += c;
        }
    }
    return out;
}

// The snapshot in the text exposition format (version 0.0.4).
inline std::string exposition(const metrics_snapshot& s) {
    const std::string run = "run=\"" + metrics_label_value(s.run) + "\"";
    std::string out;
    auto family = [&](std::string_view name, std::string_view type, std::string_view help) {
        out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    };
    auto sample = [&](std::string_view name, std::string_view labels, auto value) {
        out += fmt::format("{}{{{}{}{}}} {}\n", name, run, labels.empty() ? "" : ",", labels, value);
    };
    auto one = [&](std::string_view name, std::string_view type, std::string_view help, auto value) {
        family(name, type, help);
        sample(name, "", value);
    };
    auto seconds = [](double t) { return fmt::format("{:.3f}", t); };

    family("mxpress_build_info", "gauge", "mxpress's version; always 1.");
    sample("mxpress_build_info", "version=\"" + metrics_label_value(s.version) + "\"", 1);
    one("mxpress_start_time_seconds", "gauge", "When the run started, in unix seconds.", seconds(s.start_time));
    one("mxpress_last_progress_time_seconds", "gauge",
        "When a recipient last reached a final outcome or was deferred, in unix seconds (the start until then).",
        seconds(s.last_progress_time));
    one("mxpress_run_ended", "gauge", "1 in the run's last write (it ended or was stopped), else 0.", s.ended ? 1 : 0);
    one("mxpress_rows_read_total", "counter", "Data rows read from the recipients file.", s.rows);
    one("mxpress_rows_skipped_total", "counter", "Rows already final in the journal (--resume), not sent again.",
        s.skipped);
    family("mxpress_recipients_total", "counter", "Recipients that reached a final outcome in this run, by status.");
    sample("mxpress_recipients_total", "status=\"delivered\"", s.delivered);
    sample("mxpress_recipients_total", "status=\"bounced\"", s.bounced);
    sample("mxpress_recipients_total", "status=\"expired\"", s.expired);
    sample("mxpress_recipients_total", "status=\"in-doubt\"", s.in_doubt);
    sample("mxpress_recipients_total", "status=\"invalid\"", s.invalid);
    sample("mxpress_recipients_total", "status=\"suppressed\"", s.suppressed);
    sample("mxpress_recipients_total", "status=\"skipped\"", s.late);
    one("mxpress_attempts_total", "counter", "Delivery transactions started (each retry counts).", s.attempts);
    one("mxpress_deferrals_total", "counter", "Temporary failures, each retried later or expired.", s.deferrals);
    one("mxpress_throttled_total", "counter", "Sends that waited for a max_message_rate slot (domain or provider).",
        s.throttled);
    one("mxpress_throttle_wait_seconds_total", "counter", "How long the throttled sends waited, in all.",
        seconds(double(s.throttle_wait_ms) / 1000.0));
    family("mxpress_rule_actions_total", "counter",
           "Adaptive rules that fired, by action (a receiver's reply matched a [[rule]] or a built-in).");
    sample("mxpress_rule_actions_total", "action=\"scale\"", s.rule_scaled);
    sample("mxpress_rule_actions_total", "action=\"suspend\"", s.rule_suspended);
    sample("mxpress_rule_actions_total", "action=\"stop\"", s.rule_stopped);
    family("mxpress_smtp_replies_total", "counter",
           "Replies that ended a transaction, by class (a session that ended before its reply counts in none).");
    sample("mxpress_smtp_replies_total", "class=\"2xx\"", s.replies_2xx);
    sample("mxpress_smtp_replies_total", "class=\"4xx\"", s.replies_4xx);
    sample("mxpress_smtp_replies_total", "class=\"5xx\"", s.replies_5xx);
    family("mxpress_messages_sent_total", "counter",
           "Message bodies sent and answered with a final reply (any class), by transfer: BDAT (the server offered "
           "CHUNKING) or DATA.");
    sample("mxpress_messages_sent_total", "transfer=\"bdat\"", s.sent_bdat);
    sample("mxpress_messages_sent_total", "transfer=\"data\"", s.sent_data);
    one("mxpress_transactions_in_flight", "gauge", "Transactions started and not yet journaled.", s.in_flight);
    one("mxpress_connections_open", "gauge", "SMTP connections open now.", s.connections_open);
    one("mxpress_connections_opened_total", "counter", "SMTP connections opened.", s.connections_opened);
    one("mxpress_tls_handshakes_total", "counter", "TLS handshakes completed.", s.tls_handshakes);
    one("mxpress_tls_resumptions_total", "counter", "TLS handshakes completed that resumed a session.", s.tls_resumed);
    one("mxpress_tls_handshake_failures_total", "counter", "TLS handshakes that failed or timed out.", s.tls_failures);
    one("mxpress_sent_bytes_total", "counter", "Bytes written to SMTP connections (TLS records included).",
        s.sent_bytes);
    if (!s.providers.empty()) {
        auto each = [&](std::string_view name, auto&& labels_and_value) {
            for (const metrics_snapshot::provider_sample& p : s.providers) {
                const std::string provider = "provider=\"" + metrics_label_value(p.name) + "\"";
                labels_and_value(name, provider, p);
            }
        };
        family("mxpress_provider_smtp_replies_total", "counter",
               "Replies of a [provider]'s hosts that ended a transaction, by class.");
        each("mxpress_provider_smtp_replies_total", [&](auto name, const std::string& l, const auto& p) {
            sample(name, l + ",class=\"2xx\"", p.replies_2xx);
            sample(name, l + ",class=\"4xx\"", p.replies_4xx);
            sample(name, l + ",class=\"5xx\"", p.replies_5xx);
        });
        family("mxpress_provider_throttle_wait_seconds_total", "counter",
               "How long sends to a [provider]'s domains waited for a max_message_rate slot, in all.");
        each("mxpress_provider_throttle_wait_seconds_total", [&](auto name, const std::string& l, const auto& p) {
            sample(name, l, seconds(double(p.throttle_wait_ms) / 1000.0));
        });
        family("mxpress_provider_connections_open", "gauge", "SMTP connections open now to a [provider]'s hosts.");
        each("mxpress_provider_connections_open",
             [&](auto name, const std::string& l, const auto& p) { sample(name, l, p.connections_open); });
    }
    return out;
}

// DIR/mxpress_<run>.prom
inline std::string metrics_textfile_path(const std::string& dir, std::string_view run) {
    return fmt::format("{}/mxpress_{}.prom", dir, run);
}

// The temporary file beside it: a name the collector does not read (*.prom only).
inline std::string metrics_temp_path(const std::string& dir, std::string_view run) {
    return fmt::format("{}/.mxpress_{}.prom.tmp", dir, run);
}

// Why `dir` cannot take the metrics file; empty when it can.
inline std::string check_textfile_dir(const std::string& dir) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) {
        return fmt::format("--metrics-textfile '{}': {}", dir, std::strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        return fmt::format("--metrics-textfile '{}': not a directory", dir);
    }
    if (::access(dir.c_str(), W_OK | X_OK) != 0) {
        return fmt::format("--metrics-textfile '{}': not writable: {}", dir, std::strerror(errno));
    }
    return {};
}

// Replaces DIR/mxpress_<run>.prom with `text` (temporary file, then rename).
// Throws std::runtime_error naming the file; the previous file stays.
inline void write_textfile(const std::string& dir, std::string_view run, std::string_view text) {
    constexpr mode_t file_mode = 0644;  // node_exporter runs as another user
    const std::string temp = metrics_temp_path(dir, run);
    const std::string final_path = metrics_textfile_path(dir, run);
    auto fail = [&](int err, std::string_view what) {
        ::unlink(temp.c_str());
        throw std::runtime_error(fmt::format("{}: {}: {}", temp, what, std::strerror(err)));
    };
    {
        io::unique_fd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, file_mode));
        if (!fd) {
            throw std::runtime_error(fmt::format("{}: cannot create: {}", temp, std::strerror(errno)));
        }
        std::size_t done = 0;
        while (done < text.size()) {
            const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                fail(n < 0 ? errno : ENOSPC, "cannot write");
            }
            done += static_cast<std::size_t>(n);
        }
        if (::close(fd.release()) != 0) {
            fail(errno, "cannot close");
        }
    }
    if (::rename(temp.c_str(), final_path.c_str()) != 0) {
        const int err = errno;
        fail(err, "cannot rename to " + final_path);
    }
}

}  // namespace mxpress::engine
