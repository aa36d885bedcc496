// apps/mxpress/send.cpp — `send`: run_send and what only it uses (the
// relay's route and password, the --resume checks, --not-before, the
// schedule summary). The dry run: dry_run.cpp; --plan: lists.cpp.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "mxpress/detail/json.hpp"
#include "mxpress/engine/journal.hpp"
#include "mxpress/engine/metrics.hpp"
#include "mxpress/engine/progress.hpp"
#include "mxpress/engine/relay_check.hpp"
#include "mxpress/engine/runner.hpp"
#include "mxpress/engine/stop_signals.hpp"
#include "mxpress/engine/tls_decision.hpp"

#include "cli.hpp"

namespace mxpress::cli {

using mxpress::engine::human_count;

namespace {

// The relay's password: --auth-password-file (first line), else the
// environment. Never printed.
std::string relay_password(const send_options& o) {
    if (!o.auth_password_file.empty()) {
        std::string text = read_file(o.auth_password_file, "password file");
        const std::size_t nl = text.find_first_of("\r\n");
        if (nl != std::string::npos) {
            text.resize(nl);
        }
        if (text.empty()) {
            throw input_error(o.auth_password_file, 1, "the password file's first line is empty");
        }
        return text;
    }
    if (const char* env = std::getenv("MXPRESS_AUTH_PASSWORD"); env != nullptr && *env != '\0') {
        return env;
    }
    throw std::invalid_argument("--auth-user needs a password: --auth-password-file FILE or MXPRESS_AUTH_PASSWORD");
}

// --relay HOST[:PORT]: every domain goes to the relay; 465 is implicit TLS,
// anything else STARTTLS. Its TLS policy: engine::relay_tls_policy.
// Credentials need TLS (engine::decide_tls says so before connecting).
engine::route relay_route(const send_options& o, const engine::config& cfg) {
    engine::route r = parse_relay(o.relay);
    engine::tls_situation s;
    s.policy = engine::relay_tls_policy(cfg, r.host);
    s.step = engine::tls_step::connect;
    s.implicit_tls = r.implicit_tls;
    s.credentials = !o.auth_user.empty();
    s.peer = "the relay";
    if (const engine::tls_decision d = engine::decide_tls(s); d.action == engine::tls_action::fail) {
        throw std::invalid_argument("--auth-user: " + d.reason);
    }
    r.tls = s.policy;
    return r;
}

// Fingerprints for the journal's header: --resume refuses a journal whose
// run used another template or another recipients layout.
std::string fingerprint(std::initializer_list<std::string_view> parts) {
    return fmt::format("{:016x}", mail::run_key(parts));
}

std::string columns_fingerprint(const std::vector<std::string>& columns) {
    std::string joined;
    for (const std::string& c : columns) {
        joined += c;
        joined += '\t';
    }
    return fingerprint({"columns", joined});
}

std::string new_run_id() {
    std::random_device rd;
    return fmt::format("{:08x}{:08x}", rd(), rd());
}

// --resume: refuses (exit 2) a journal written for another template or
// recipients layout, and a recipients file whose rows moved (a row the
// journal has a final line for must still hold that line's address). Reads
// the file once more, before anything is sent.
void check_resume(const engine::journal_state& done, const std::string& journal_path, const send_options& o,
                  const std::string& recipients_fp, const std::string& template_fp) {
    if (done.header && o.step == nullptr) {  // a step's message and columns may change between cron runs
        if (done.header->templ != template_fp) {
            throw input_error(o.message, 0,
                              fmt::format("the message template changed since the run journaled in {} (fingerprint "
                                          "{}, now {}); --resume would send a different message than the journal "
                                          "records: restore the template or start a new journal",
                                          journal_path, done.header->templ, template_fp));
        }
        if (done.header->recipients != recipients_fp) {
            throw input_error(o.recipients, 1,
                              fmt::format("the recipients file's columns changed since the run journaled in {}; "
                                          "--resume would misattribute outcomes: restore the file or start a new "
                                          "journal",
                                          journal_path));
        }
    }
    if (done.final_entries == 0) {
        return;
    }
    struct stat st {};
    if (::stat(o.recipients.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
        return;  // a pipe is read once: the runner checks each skipped row as it goes
    }
    const mxpress::io::unique_fd fd = open_recipients(o.recipients);
    mail::recipients_reader reader(mail::csv_reader::from_fd(fd.get()), o.recipients);
    mail::recipient_row row;
    while (reader.next(row)) {
        const std::uint32_t tag = done.final_tag(row.line);
        if (tag != 0 && !engine::row_matches_journal(row, tag)) {
            throw input_error(o.recipients, row.line,
                              fmt::format("this row now holds {}, not the address that {} journaled for line {}: "
                                          "the recipients file changed (a row added or removed above it?); "
                                          "--resume would skip the wrong recipients and send others twice: restore "
                                          "the file or start a new journal",
                                          row.email, journal_path, row.line));
        }
    }
}

// --not-before: sleep until then (the clock, or --now, says how long).
void wait_not_before(const send_options& o) {
    if (o.not_before.empty()) {
        return;
    }
    engine::unix_time at = 0;
    if (!engine::parse_time(o.not_before, zone_for(o), at)) {
        throw std::invalid_argument(
            fmt::format("--not-before \"{}\": expected RFC 3339 (2026-11-28T09:00:00+09:00) or \"YYYY-MM-DD HH:MM\"",
                        o.not_before));
    }
    const engine::unix_time now = now_for(o);
    if (at <= now) {
        return;
    }
    std::fprintf(stderr, "mxpress: waiting until %s (--not-before), %lld s from now\n", engine::format_utc(at).c_str(),
                 static_cast<long long>(at - now));
    const auto until = std::chrono::system_clock::now() + std::chrono::seconds(at - now);
    while (std::chrono::system_clock::now() < until) {  // bounded: `until` is fixed
        std::this_thread::sleep_until(std::min(until, std::chrono::system_clock::now() + std::chrono::seconds(1)));
    }
}

std::string schedule_summary(const engine::run_totals& t, const send_options& o) {
    std::string out = fmt::format("schedule: {} not yet due", t.later);
    if (t.next_due != 0) {
        out += fmt::format(" (the first at {}: a later run sends {})", engine::format_utc(t.next_due),
                           o.step != nullptr ? "them" : "them with --resume");
    }
    if (o.step != nullptr) {
        out += fmt::format(", {} skipped (due more than max_late ago)", t.late);
    }
    out += fmt::format(", {} without a usable time\n", t.unscheduled);
    for (const std::string& e : t.unscheduled_examples) {
        out += fmt::format("  {}:{}\n", o.recipients, e.substr(5));  // "line N: why" -> "FILE:N: why"
    }
    return out;
}

}  // namespace

int run_send(const send_options& o) {
    if (o.dry_run) {
        return run_dry_run(o);
    }
    const auto sender = check_sender(o.from);
    engine::runner_options ro;
    ro.shard.cfg = o.config.empty() ? engine::config{} : engine::load_config(o.config);
    if (o.loaded_plan && engine::providers_fingerprint(ro.shard.cfg) != o.loaded_plan->providers) {
        std::fprintf(stderr,
                     "mxpress: warning: the [provider] sections of %s differ from those the plan grouped by (%s): "
                     "a provider may be split across shards, and its limits then hold per shard\n",
                     o.config.empty() ? "this run (no --config)" : o.config.c_str(),
                     o.loaded_plan->config.empty() ? "no --config" : o.loaded_plan->config.c_str());
    }
    check_dns_servers(o.dns);
    ro.shard.dns_servers = o.dns;
    ro.shard.mx_port = static_cast<std::uint16_t>(o.mx_port);
    ro.shard.routes = parse_routes(o.routes);
    ro.shard.from = sender.address;
    // Trust store problems are run-level errors, found before any message.
    try {
        mxpress::net::tls_context::client(ro.shard.cfg.tls_ca_file);
    } catch (const mxpress::net::tls_error& e) {
        throw input_error(o.config.empty() ? "TLS" : o.config, 0, e.what());
    }
    if (!o.relay.empty()) {
        engine::route relay = relay_route(o, ro.shard.cfg);
        if (!o.auth_user.empty()) {
            ro.shard.auth_user = o.auth_user;
            ro.shard.auth_password = relay_password(o);
        }
        engine::relay_check_options rc;
        rc.host = relay.host;
        rc.port = relay.port;
        rc.implicit_tls = relay.implicit_tls;
        rc.tls = *relay.tls;
        rc.ca_file = ro.shard.cfg.tls_ca_file;
        rc.helo_name = ro.shard.cfg.helo_name;
        rc.user = ro.shard.auth_user;
        rc.password = ro.shard.auth_password;
        rc.timeout = std::min<std::chrono::milliseconds>(ro.shard.cfg.connect_timeout, std::chrono::seconds(60));
        const engine::relay_check_result check = engine::check_relay(rc);
        if (!check.ok) {
            throw std::invalid_argument(check.error + " (nothing was sent)");
        }
        // The shards connect where the check did (the name still goes into
        // SNI and the certificate check): a relay name never bounces mail.
        relay.address = check.address;
        ro.shard.routes = {relay};
    }
    ro.threads = o.threads != 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency());
    ro.show_progress = o.progress == "on" || (o.progress == "auto" && ::isatty(STDERR_FILENO));
    ro.metrics_dir = o.metrics_textfile;
    ro.metrics_interval = std::chrono::milliseconds(static_cast<std::int64_t>(o.metrics_interval * 1000));
    ro.version = mxpress_version;

    const mxpress::io::unique_fd rfd = open_recipients(o.recipients);
    mxpress::io::input_wait input;  // a pipe: rows read so far are sent while it waits, a stop wakes it
    mail::recipients_reader reader(mail::csv_reader::from_fd(rfd.get(), {}, &input), o.recipients);
    ro.input = &input;
    std::optional<engine::row_scheduler> scheduler = make_scheduler(o, reader.columns());
    if (scheduler) {
        ro.schedule = [&scheduler](const mail::recipient_row& row) { return scheduler->schedule(*row.fields); };
    }
    std::string template_name;
    const std::string text = template_text(o.message, o.parts, reader, template_name);
    const mail::message_template tmpl = compile_template(text, template_name, reader.columns(), o.list_unsubscribe);
    // Every shard signs with the same keys (each keeps its own OpenSSL
    // contexts) and gives each row the same Message-ID on every attempt.
    ro.shard.dkim = load_dkim(ro.shard.cfg);
    ro.shard.message_id_run_key = message_id_run_key(text, o.recipients, sender.address);
    const auto suppress = load_suppression_lists(o.suppress);  // before the journal: a bad list sends nothing
    ro.suppress = suppress.get();
    wait_not_before(o);  // before the journal is locked: a signal here ends the process, nothing sent
    const std::string journal_path =
        o.journal.empty() ? journal_beside(o.recipients, journal_suffix(o, "journal.jsonl")) : o.journal;
    // Deferred recipients are parked without their fields and read again
    // from the file when they retry (a pipe keeps them in memory).
    const std::optional<mail::row_source> rows = mail::row_source::make(o.recipients, reader.email_column());
    ro.shard.rows = rows ? &*rows : nullptr;
    const engine::journal_state done = engine::read_journal(journal_path);
    if (!o.resume && done.entries + done.torn_lines > 0) {
        throw input_error(journal_path, 0,
                          "journal already holds outcomes: pass --resume to continue that run, or choose another "
                          "--journal");
    }
    const std::string recipients_fp = columns_fingerprint(reader.columns());
    const std::string template_fp = fingerprint({"template", text});
    // Before any thread starts (the journal's writer, the shards): every
    // thread inherits the blocked mask. A signal from here on stops the run
    // as soon as the shards start, before anything is sent.
    engine::stop_signals signals;
    // Locked before it is truncated or checked: a second run on it is refused.
    engine::journal_writer writer = engine::journal_writer::open(journal_path, o.resume);
    if (o.resume) {
        check_resume(done, journal_path, o, recipients_fp, template_fp);
    }
    engine::journal_header header;
    header.run = new_run_id();
    engine::format_timestamp(header.ts, std::chrono::system_clock::now());
    header.recipients = recipients_fp;
    header.templ = template_fp;
    ro.shard.run_id = header.run;
    if (o.resume) {
        ro.shard.rule_restore = done.rule_events;  // what the last run's rules left in force
    }
    ro.shard.stop_grace = std::chrono::milliseconds(static_cast<std::int64_t>(o.stop_grace * 1000));
    ro.signals = &signals;
    // SIGHUP reads --config again during the run (engine/config_reload.hpp).
    std::optional<engine::config_reloader> reloader;
    if (!o.config.empty()) {
        reloader.emplace(o.config, ro.shard.cfg);
        ro.reloader = &*reloader;
    }
    engine::shared_journal journal(std::move(writer));
    std::string header_line;
    append_journal_header(header_line, header);
    journal.write_batch(header_line);

    std::uint64_t unplanned_rows = 0;  // rows of domains the plan does not name (read on the reader thread)
    if (o.loaded_plan) {
        ro.take_domain = [&o, &unplanned_rows](std::string_view domain) {
            bool known = true;
            const unsigned s = o.loaded_plan->shard_of(domain, &known);
            unplanned_rows += known ? 0 : 1;
            return s == o.shard_index;
        };
    }
    const engine::run_totals t = engine::run_delivery(reader, tmpl, journal, done, ro);
    if (unplanned_rows > 0) {
        std::fprintf(stderr,
                     "mxpress: warning: %llu rows have a domain the plan does not name; each such domain went to "
                     "the shard its hash picks (the same in every shard), outside the provider grouping\n",
                     static_cast<unsigned long long>(unplanned_rows));
    }
    const double secs = std::max(1e-9, t.seconds);
    const double per_hour = double(t.delivered) / secs * 3600.0;
    std::string summary = fmt::format(
        "sent: {} rows{}, {} delivered, {} bounced, {} expired, {} invalid{}; {} deferrals, {} "
        "connections; {} by BDAT, {} by DATA\n"
        "tls: {} handshakes, {} resumed ({:.1f}%), {} failed\n"
        "time: {:.3f} s, {} messages/hour delivered, peak RSS {} MB, {} threads\n"
        "journal: {} (at most {} transactions in flight at once: what a kill -9 could have sent twice)\n",
        t.rows, o.resume ? fmt::format(" ({} already final, skipped)", t.skipped) : "", t.delivered, t.bounced,
        t.expired, t.invalid, suppress ? fmt::format(", {} suppressed", t.suppressed) : "", t.deferred, t.connections,
        t.sent_bdat, t.sent_data, t.tls_handshakes, t.tls_resumed,
        t.tls_handshakes == 0 ? 0.0 : 100.0 * double(t.tls_resumed) / double(t.tls_handshakes), t.tls_failures, secs,
        human_count(per_hour), peak_rss_bytes() / (1024 * 1024), ro.threads, journal_path, t.in_flight_peak);
    if (scheduler) {
        summary += schedule_summary(t, o);
    }
    if (t.shard_rows.size() > 1) {
        summary += "shards: ";
        for (std::size_t k = 0; k < t.shard_rows.size(); ++k) {
            summary += fmt::format("{}{}", k == 0 ? "" : " / ", t.shard_rows[k]);
        }
        summary += " rows (each domain on one, placed on the least loaded)\n";
    }
    if (o.loaded_plan) {
        summary += fmt::format("plan: shard {} of {}; {} rows of other shards passed over\n", o.shard_index,
                               o.loaded_plan->shard_count, t.elsewhere);
    }
    if (t.dns_queries > 0) {
        summary += fmt::format("dns: {} queries, {} asked again after a timeout, at most {} in flight at once\n",
                               t.dns_queries, t.dns_retries, t.dns_in_flight_peak);
    }
    if (t.in_doubt > 0) {
        summary += fmt::format(
            "in doubt: {} (the server took the message but the session ended before its reply, on every attempt "
            "allowed: it may have arrived; status \"in-doubt\" in the journal)\n",
            t.in_doubt);
    }
    if (t.throttled > 0) {
        summary += fmt::format(
            "shaping: {} sends waited for a max_message_rate slot, {:.1f} s in all ([domain] or [provider] rates)\n",
            t.throttled, double(t.throttle_wait_ms) / 1000.0);
    }
    for (const auto& [f, count] : t.rule_firings) {
        std::string what;
        switch (f.action) {
            case engine::rule_action::scale:
                what = fmt::format("scaled to {}", engine::rate_per_second(f.rate_per_s).text);
                break;
            case engine::rule_action::suspend: what = "suspended"; break;
            case engine::rule_action::stop: what = "STOPPED for the rest of the run"; break;
        }
        summary += fmt::format("rule {}: {} {} ({} time{}; last reply: {})\n", f.rule, f.scope, what, count,
                               count == 1 ? "" : "s", f.reply);
    }
    if (t.rule_left > 0) {
        summary += fmt::format(
            "STOPPED by a rule: {} recipients left unfinished (journaled \"deferred\"): fix what the reply says "
            "(authentication: SPF, DKIM, DMARC), then run the same command with --resume\n",
            t.rule_left);
    }
    for (const auto& [key, count] : t.top_failures) {
        const std::size_t tab = key.find('\t');
        summary += fmt::format("  {} x {}: {}\n", count, key.substr(0, tab), key.substr(tab + 1));
    }
    std::fputs(summary.c_str(), stdout);
    if (!o.summary_json.empty()) {
        std::string j = fmt::format(
            "{{\"mode\":\"send\",\"rows\":{},\"skipped\":{},\"delivered\":{},\"bounced\":{},\"expired\":{},"
            "\"in_doubt\":{},\"invalid\":{},\"suppressed\":{},\"deferrals\":{},\"attempts\":{},\"connections\":{},"
            "\"tls_handshakes\":{}"
            ",\"tls_"
            "resumed\":{},"
            "\"tls_failures\":{},\"sent_bytes\":{},\"sent_bdat\":{},\"sent_data\":{},\"seconds\":{:.6f},"
            "\"messages_per_hour\":{:.0f},\"threads\":{},\"peak_rss_bytes\":{},\"in_flight_peak\":{},"
            "\"throttled\":{},\"throttle_wait_seconds\":{:.3f},\"dns_queries\":{},\"dns_retries\":{},"
            "\"dns_in_flight_peak\":{},\"top_failures\":[",
            t.rows, t.skipped, t.delivered, t.bounced, t.expired, t.in_doubt, t.invalid, t.suppressed, t.deferred,
            t.attempts, t.connections, t.tls_handshakes, t.tls_resumed, t.tls_failures, t.sent_bytes, t.sent_bdat,
            t.sent_data, secs, per_hour, ro.threads, peak_rss_bytes(), t.in_flight_peak, t.throttled,
            double(t.throttle_wait_ms) / 1000.0, t.dns_queries, t.dns_retries, t.dns_in_flight_peak);
        bool first = true;
        for (const auto& [key, count] : t.top_failures) {
            const std::size_t tab = key.find('\t');
            j += first ? "" : ",";
            first = false;
            j += fmt::format("{{\"count\":{},\"domain\":", count);
            mxpress::detail::append_json_string(j, key.substr(0, tab));
            j += ",\"reply\":";
            mxpress::detail::append_json_string(j, key.substr(tab + 1));
            j += "}";
        }
        j += "],\"rules\":[";
        first = true;
        for (const auto& [f, count] : t.rule_firings) {
            j += first ? "{\"rule\":" : ",{\"rule\":";
            first = false;
            mxpress::detail::append_json_string(j, f.rule);
            j += ",\"scope\":";
            mxpress::detail::append_json_string(j, f.scope);
            j += fmt::format(",\"action\":\"{}\",\"count\":{},\"rate_per_second\":{:.6g},\"reply\":",
                             engine::to_string(f.action), count, f.rate_per_s);
            mxpress::detail::append_json_string(j, f.reply);
            j += "}";
        }
        j += fmt::format("],\"rule_held\":{},\"rule_left\":{}", t.rule_held, t.rule_left);
        j += ",\"shard_rows\":[";
        for (std::size_t k = 0; k < t.shard_rows.size(); ++k) {
            j += fmt::format("{}{}", k == 0 ? "" : ",", t.shard_rows[k]);
        }
        j += "]";
        j += fmt::format(",\"stopped_by\":{},\"left_deferred\":{},\"stopped_in_doubt\":{},", t.stop_signal,
                         t.left_deferred, t.stopped_in_doubt);
        j += fmt::format("\"later\":{},\"next_due\":\"{}\",\"late\":{},\"unscheduled\":{},", t.later,
                         t.next_due == 0 ? "" : engine::format_utc(t.next_due), t.late, t.unscheduled);
        if (o.loaded_plan) {
            j += fmt::format("\"shard_index\":{},\"shard_count\":{},\"elsewhere\":{},", o.shard_index,
                             o.loaded_plan->shard_count, t.elsewhere);
        }
        j += "\"run\":";
        mxpress::detail::append_json_string(j, header.run);
        j += ",\"journal\":";
        mxpress::detail::append_json_string(j, journal_path);
        j += "}\n";
        write_summary(o.summary_json, j);
    }
    if (t.stop_signal != 0) {
        std::fprintf(stderr,
                     "mxpress: stopped by %s after reading %llu rows: their outcomes so far are in %s (%llu left "
                     "deferred, retried on schedule; %llu in doubt: torn down mid-transaction, a server may have "
                     "taken them and --resume sends them again). Rows never started are not journaled. To "
                     "continue, run the same command with --resume.\n",
                     t.stop_signal == SIGINT ? "SIGINT" : "SIGTERM", static_cast<unsigned long long>(t.rows),
                     journal_path.c_str(), static_cast<unsigned long long>(t.left_deferred),
                     static_cast<unsigned long long>(t.stopped_in_doubt));
        return exit_unfinished;
    }
    if (t.rule_left > 0) {
        std::fprintf(stderr,
                     "mxpress: a rule stopped sending to a destination; %llu recipients have no final outcome in %s. "
                     "Fix the cause the reply names, then run the same command with --resume.\n",
                     static_cast<unsigned long long>(t.rule_left), journal_path.c_str());
        return exit_unfinished;
    }
    return exit_ok;
}

}  // namespace mxpress::cli
