// apps/mxpress/main.cpp — the runner: `mxpress send|render|plan|report|check-config|dkim-record|suppressions`,
// and `check-sender`.
//
// Exit status (README, Exit status): 0 when every recipient has a final outcome (or the
// command did what was asked); 2 for usage or configuration errors, with a
// message naming the file and line; 1 when a run could not finish.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <csignal>
#include <sstream>
#include <thread>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "mxpress/detail/json.hpp"
#include "mxpress/engine/config.hpp"
#include "mxpress/engine/journal.hpp"
#include "mxpress/engine/metrics.hpp"
#include "mxpress/engine/plan_build.hpp"
#include "mxpress/engine/progress.hpp"
#include "mxpress/engine/relay_check.hpp"
#include "mxpress/engine/report.hpp"
#include "mxpress/engine/runner.hpp"
#include "mxpress/engine/sender_check.hpp"
#include "mxpress/engine/stop_signals.hpp"
#include "mxpress/io/unique_fd.hpp"
#include "mxpress/engine/tls_decision.hpp"
#include "mxpress/mail/address.hpp"
#include "mxpress/mail/dkim.hpp"
#include "mxpress/mail/message_template.hpp"
#include "mxpress/mail/parts.hpp"
#include "mxpress/mail/suppression.hpp"
#include "mxpress/mail/recipients.hpp"

namespace {

using mxpress::mail::input_error;
namespace mail = mxpress::mail;
namespace engine = mxpress::engine;

constexpr int exit_ok = 0;
constexpr int exit_unfinished = 1;
constexpr int exit_usage = 2;
// project(VERSION) in CMakeLists.txt, the one place a release changes it.
#ifndef MXPRESS_VERSION
#error "MXPRESS_VERSION is set by CMakeLists.txt (project VERSION)"
#endif
constexpr const char* mxpress_version = MXPRESS_VERSION;
constexpr double metrics_interval_default_s = 10;

struct send_options {
    std::string recipients;
    std::string message;
    std::string from;
    std::string config;
    std::string journal;
    unsigned threads = 0;
    std::string dns;
    unsigned mx_port = 25;
    std::vector<std::string> routes;
    std::string relay;
    std::string auth_user;
    std::string auth_password_file;
    bool resume = false;
    double stop_grace = 30;
    bool dry_run = false;
    std::string progress = "auto";
    std::string summary_json;
    std::string list_unsubscribe;
    mail::message_parts parts;          // instead of --message
    std::vector<std::string> suppress;  // --suppress FILE ...
    std::string metrics_textfile;       // --metrics-textfile DIR
    double metrics_interval = metrics_interval_default_s;
    std::string plan;                          // --plan FILE
    std::optional<long long> shard_index_arg;  // --shard-index I
    // Resolved from the two above before run_send (null: no plan).
    std::shared_ptr<const engine::shard_plan> loaded_plan;
    unsigned shard_index = 0;
    std::string not_before;  // --not-before TIME: the run waits until then
    std::string now_text;    // --now TIME: the clock that send_at and steps compare with
    std::string tz;          // --tz ZONE: the zone of times without an offset
    // Set by `steps` for each step (null for `send`).
    const engine::sequence_config* sequence = nullptr;
    const engine::sequence_step* step = nullptr;
};

// What `render` takes besides the row.
struct render_options {
    std::string recipients;
    std::string message;
    std::string from = "mxpress@localhost.localdomain";
    std::string config;
    std::string list_unsubscribe;
    std::uint64_t line = 0;
    mail::message_parts parts;  // instead of --message
};

std::string read_file(const std::string& path, const char* what) {
    return mail::read_input_file(path, what);
}

mxpress::io::unique_fd open_recipients(const std::string& path) {
    mxpress::io::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
        throw input_error(path, 0, fmt::format("cannot open recipients file: {}", std::strerror(errno)));
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) == 0 && S_ISDIR(st.st_mode)) {
        throw input_error(path, 0, "recipients file is a directory");
    }
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    return fd;
}

// "lists/r.csv" -> "lists/r.<suffix>"
std::string journal_beside(const std::string& recipients, const std::string& suffix) {
    const std::size_t slash = recipients.rfind('/');
    const std::size_t dot = recipients.rfind('.');
    const std::string stem = (dot != std::string::npos && (slash == std::string::npos || dot > slash + 1))
                                 ? recipients.substr(0, dot)
                                 : recipients;
    return stem + "." + suffix;
}

// The journal's default suffix: with --plan, each shard has its own
// (NAME.shard-I-of-N.journal.jsonl), so a retried index resumes its own.
std::string journal_suffix(const send_options& o, const std::string& suffix) {
    if (!o.loaded_plan) {
        return suffix;
    }
    return fmt::format("shard-{}-of-{}.{}", o.shard_index, o.loaded_plan->shard_count, suffix);
}

std::uint64_t peak_rss_bytes() {
    struct rusage ru {};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<std::uint64_t>(ru.ru_maxrss) * 1024;
}

using mxpress::engine::human_count;

// Writes the --summary-json document.
void write_summary(const std::string& path, const std::string& json) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!(out << json)) {
        throw input_error(path, 0, "cannot write summary");
    }
}

mail::checked_address check_sender(const std::string& from) {
    mail::checked_address a = mail::check_address(from);
    if (!a.valid()) {
        throw std::invalid_argument(fmt::format("--from '{}': {}", from, a.error));
    }
    return a;
}

// Loads the [dkim] keys of `cfg` (null when it has none); warnings go to stderr.
std::shared_ptr<const mail::dkim::key_set> load_dkim(const engine::config& cfg) {
    if (!cfg.dkim.enabled()) {
        return nullptr;
    }
    std::vector<std::string> warnings;
    auto keys = mail::dkim::load_keys(cfg.dkim, warnings);
    for (const std::string& w : warnings) {
        std::fprintf(stderr, "mxpress: %s\n", w.c_str());
    }
    return keys;
}

// ---- A message from parts (--subject, --text, --html, --attach, --header-from) ----

void parse_parts_options(CLI::App* cmd, mail::message_parts& p) {
    cmd->add_option("--subject", p.subject, "Subject ({{field}} allowed); a message from parts instead of --message");
    cmd->add_option("--text", p.text_file, "Plain-text body file ({{field}} allowed)");
    cmd->add_option("--html", p.html_file, "HTML body file ({{field}} allowed); with --text: multipart/alternative");
    cmd->add_option("--attach", p.attachments, "Attach FILE (repeatable; type from the extension; no merging)");
    cmd->add_option("--header-from", p.header_from,
                    "From header of a message from parts, e.g. 'Town Hall <news@town.example>' (default: the "
                    "--from address)");
    cmd->add_option("--charset", p.charset,
                    "Charset of a message from parts: utf-8 (default) or iso-2022-jp (text converted per row, "
                    "7bit; a character it cannot carry makes the row invalid)");
}

// The template text: the --message file, or one built from parts once at
// start (mail/parts.hpp). `name` is what compile errors name.
std::string template_text(const std::string& message, const mail::message_parts& parts,
                          const mail::recipients_reader& reader, std::string& name) {
    if (!message.empty() && parts.any()) {
        throw std::invalid_argument(
            "--message cannot be combined with --subject, --text, --html, --attach, --header-from or --charset");
    }
    if (message.empty() && !parts.any()) {
        throw std::invalid_argument("a message is required: --message FILE, or --text FILE and/or --html FILE");
    }
    if (!message.empty()) {
        name = message;
        return read_file(message, "message template");
    }
    name = "(message parts)";
    return mail::build_template(parts, reader.columns(), reader.columns().at(reader.email_column()));
}

// ---- end of message from parts ----

// ---- Suppression lists (--suppress, `mxpress suppressions`) ----

void parse_suppression_options(CLI::App* send, std::vector<std::string>& files) {
    send->add_option("--suppress", files,
                     "Never send to the addresses in FILE (one per line, or a CSV with an 'email' column; "
                     "repeatable): such rows are journaled 'suppressed'");
}

// Every --suppress file in one set (null when none); lines that are not an
// address are passed over with a warning naming the file and the first one.
std::unique_ptr<mail::suppression_set> load_suppression_lists(const std::vector<std::string>& files) {
    if (files.empty()) {
        return nullptr;
    }
    auto set = std::make_unique<mail::suppression_set>();
    for (const std::string& f : files) {
        const mail::suppression_load l = mail::load_suppressions(f, *set);
        if (l.skipped > 0) {
            std::fprintf(stderr, "mxpress: %s:%llu: %llu line(s) that are not an address passed over\n", f.c_str(),
                         static_cast<unsigned long long>(l.first_skipped), static_cast<unsigned long long>(l.skipped));
        }
    }
    return set;
}

// `mxpress suppressions J1.jsonl ...`: the hard-bounced addresses (status
// bounced: a 5xx reply, or a 5.x.x DNS verdict such as a null MX) of earlier
// journals, one per line and each once: a file for --suppress.
int run_suppressions(const std::vector<std::string>& journals) {
    mail::suppression_set seen;
    std::string out = "# hard-bounced addresses (mxpress suppressions)\n";
    for (const std::string& path : journals) {
        std::ifstream in(path, std::ios::binary);
        if (!in) {
            throw input_error(path, 0, fmt::format("cannot open journal: {}", std::strerror(errno)));
        }
        std::string line;
        std::uint64_t line_no = 0;
        while (std::getline(in, line)) {
            ++line_no;
            std::string email;
            std::string status;
            std::string code;
            std::string enhanced;
            const std::string err = mxpress::detail::parse_flat_json_object(
                line, [&](const std::string& k, const mxpress::detail::json_value& v) {
                    if (k == "email") {
                        email = v.text;
                    } else if (k == "status") {
                        status = v.text;
                    } else if (k == "code") {
                        code = v.text;
                    } else if (k == "enhanced") {
                        enhanced = v.text;
                    }
                });
            if (!err.empty()) {
                if (!line.ends_with('}')) {
                    continue;  // a line cut by a crash
                }
                throw input_error(path, line_no, "not a journal line: " + err);
            }
            const bool hard = status == engine::to_string(engine::outcome_status::bounced) &&
                              (code.starts_with('5') || enhanced.starts_with("5."));
            const mail::checked_address a = mail::check_address(email);
            if (hard && a.valid() && !seen.contains_normalized(a.address)) {
                seen.insert_normalized(a.address);
                out += a.address;
                out += '\n';
                if (out.size() > 1 << 16) {
                    std::fputs(out.c_str(), stdout);
                    out.clear();
                }
            }
        }
    }
    std::fputs(out.c_str(), stdout);
    return exit_ok;
}

// ---- end of suppression lists ----

// Compiles the template; --list-unsubscribe URL adds List-Unsubscribe and
// (RFC 8058 one-click) List-Unsubscribe-Post. A template with its own https
// List-Unsubscribe gets the Post header too.
mail::message_template compile_template(const std::string& text, const std::string& path,
                                        const std::vector<std::string>& columns, const std::string& unsubscribe) {
    mail::message_template t = mail::message_template::compile(text, path, columns);
    if (!unsubscribe.empty()) {
        if (t.has_header("list-unsubscribe")) {
            throw input_error(path, 0, "--list-unsubscribe given, but the template has its own List-Unsubscribe");
        }
        if (!unsubscribe.starts_with("https://") || unsubscribe.find_first_of(" <>\"") != std::string::npos) {
            throw std::invalid_argument(fmt::format(
                "--list-unsubscribe '{}': one-click unsubscribe (RFC 8058) needs an https:// URL without spaces or "
                "angle brackets",
                unsubscribe));
        }
        // Merged values are percent-encoded: a space, '>' or ',' cannot break the header.
        t.add_header("List-Unsubscribe", "<" + unsubscribe + ">", columns, true);
    }
    bool https = false;
    for (const auto& h : t.headers()) {
        if (h.lower_name == "list-unsubscribe") {
            for (const auto& seg : h.value) {
                https = https || (!seg.is_field() && t.literal(seg).find("<https://") != std::string_view::npos);
            }
        }
    }
    if (https && !t.has_header("list-unsubscribe-post")) {
        t.add_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click", columns);
    }
    return t;
}

// The run key of stable Message-IDs: the same template, recipients file and
// sender give the same IDs, in `render`, a dry run, a send and its --resume.
std::uint64_t message_id_run_key(const std::string& template_text, const std::string& recipients,
                                 const std::string& from) {
    char resolved[PATH_MAX];
    const std::string path = ::realpath(recipients.c_str(), resolved) != nullptr ? resolved : recipients;
    return mail::run_key({template_text, path, from});
}

int run_dry_run(const send_options& o) {
    const auto sender = check_sender(o.from);
    engine::config cfg;
    if (!o.config.empty()) {
        cfg = engine::load_config(o.config);
    }
    const mxpress::io::unique_fd rfd = open_recipients(o.recipients);
    mail::recipients_reader reader(mail::csv_reader::from_fd(rfd.get()), o.recipients);
    std::string template_name;
    const std::string text = template_text(o.message, o.parts, reader, template_name);
    const mail::message_template tmpl = compile_template(text, template_name, reader.columns(), o.list_unsubscribe);
    const auto dkim_keys = load_dkim(cfg);
    const auto suppress = load_suppression_lists(o.suppress);

    const std::string journal_path =
        o.journal.empty() ? journal_beside(o.recipients, journal_suffix(o, "dry-run.jsonl")) : o.journal;
    engine::journal_state done;
    if (o.resume) {
        done = engine::read_journal(journal_path);
    } else {
        // A dry run may replace an earlier dry run's journal, never a real one.
        const engine::journal_state existing = engine::read_journal(journal_path);
        if (existing.delivery_entries > 0) {
            throw input_error(journal_path, 0,
                              fmt::format("journal holds {} delivery outcomes from a real run; a dry run will not "
                                          "overwrite it (choose another --journal)",
                                          existing.delivery_entries));
        }
    }
    engine::journal_writer journal = engine::journal_writer::open(journal_path, o.resume);

    std::uint64_t suppressed = 0;
    mail::renderer_options ropts;
    ropts.from = sender.address;
    ropts.dkim = dkim_keys;
    ropts.message_id_run_key = message_id_run_key(text, o.recipients, sender.address);
    mail::renderer renderer(tmpl, ropts);

    const bool show_progress = o.progress == "on" || (o.progress == "auto" && ::isatty(STDERR_FILENO));
    const auto start = std::chrono::steady_clock::now();
    auto last_progress = start;
    std::uint64_t rows = 0;
    std::uint64_t valid = 0;
    std::uint64_t invalid = 0;
    std::uint64_t skipped = 0;
    std::uint64_t rendered_bytes = 0;
    std::uint64_t smtputf8 = 0;
    std::vector<std::string> first_invalid;
    constexpr std::size_t first_invalid_max = 10;
    std::string message;
    mail::recipient_row row;
    auto record_invalid = [&](const mail::recipient_row& r, const std::string& reason) {
        ++invalid;
        engine::journal_entry e;
        e.line = r.line;
        e.email = r.email;
        e.status = engine::outcome_status::invalid;
        e.reply = reason;
        journal.append(e);
        if (first_invalid.size() < first_invalid_max) {
            first_invalid.push_back(fmt::format("{}:{}: {}", o.recipients, r.line, reason));
        }
    };
    std::uint64_t elsewhere = 0;
    while (reader.next(row)) {
        if (o.loaded_plan) {
            mail::checked_address pa;
            const bool ok = mail::check_row(row, pa).empty();
            if (o.loaded_plan->shard_of(ok ? pa.domain() : std::string_view()) != o.shard_index) {
                ++elsewhere;
                continue;
            }
        }
        ++rows;
        if (o.resume && done.has_final(row.line)) {
            ++skipped;
            continue;
        }
        mail::checked_address addr;
        if (const std::string why = mail::check_row(row, addr); !why.empty()) {
            record_invalid(row, why);
            continue;
        }
        if (suppress && suppress->contains_normalized(addr.address)) {
            ++suppressed;
            engine::journal_entry e;
            e.line = row.line;
            e.email = addr.address;
            e.status = engine::outcome_status::suppressed;
            e.reply = "on a suppression list";
            journal.append(e);
            continue;
        }
        const mail::render_result r = renderer.render(*row.fields, message, row.line);
        if (!r.ok()) {
            record_invalid(row, "cannot render: " + r.error);
            continue;
        }
        ++valid;
        smtputf8 += (addr.needs_smtputf8 || r.needs_smtputf8) ? 1 : 0;
        rendered_bytes += message.size();
        engine::journal_entry e;
        e.line = row.line;
        e.email = addr.address;
        e.status = engine::outcome_status::dry_run;
        journal.append(e);
        if (show_progress && (rows & 0x3FFF) == 0) {
            const auto now = std::chrono::steady_clock::now();
            if (now - last_progress > std::chrono::milliseconds(500)) {
                last_progress = now;
                const double s = std::chrono::duration<double>(now - start).count();
                std::fprintf(stderr, "\r%s rows, %s valid, %s invalid, %s/h   ", human_count(double(rows)).c_str(),
                             human_count(double(valid)).c_str(), human_count(double(invalid)).c_str(),
                             human_count(double(rows) / s * 3600).c_str());
            }
        }
    }
    journal.sync();
    const double seconds =
        std::max(1e-9, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    const double per_hour = double(valid + invalid) / seconds * 3600.0;
    if (show_progress) {
        std::fputs("\r\033[K", stderr);
    }
    for (const std::string& s : first_invalid) {
        std::fprintf(stderr, "invalid: %s\n", s.c_str());
    }
    if (invalid > first_invalid.size()) {
        std::fprintf(stderr, "invalid: ... and %llu more (see the journal)\n",
                     static_cast<unsigned long long>(invalid - first_invalid.size()));
    }
    std::string summary = fmt::format(
        "dry run: {} rows, {} valid, {} invalid{}{}, {} rendered bytes ({:.0f} B/message), {:.3f} s, {} "
        "messages/hour "
        "rendered, peak RSS {} MB\njournal: {}\n",
        rows, valid, invalid, suppress ? fmt::format(", {} suppressed", suppressed) : "",
        o.resume ? fmt::format(", {} already final (skipped)", skipped) : "", rendered_bytes,
        valid ? double(rendered_bytes) / double(valid) : 0.0, seconds, human_count(per_hour),
        peak_rss_bytes() / (1024 * 1024), journal_path);
    if (o.loaded_plan) {
        summary += fmt::format("plan: shard {} of {}; {} rows of other shards passed over\n", o.shard_index,
                               o.loaded_plan->shard_count, elsewhere);
    }
    std::fputs(summary.c_str(), stdout);
    if (!o.summary_json.empty()) {
        std::string j = fmt::format(
            "{{\"mode\":\"dry-run\",\"rows\":{},\"valid\":{},\"invalid\":{},\"suppressed\":{},\"skipped\":{},"
            "\"smtputf8\":{},"
            "\"rendered_bytes\":{},\"seconds\":{:.6f},\"messages_per_hour\":{:.0f},\"peak_rss_bytes\":{},\"journal\":",
            rows, valid, invalid, suppressed, skipped, smtputf8, rendered_bytes, seconds, per_hour, peak_rss_bytes());
        mxpress::detail::append_json_string(j, journal_path);
        j += "}\n";
        write_summary(o.summary_json, j);
    }
    return exit_ok;
}

// --dns is handed to c-ares as its CSV of servers; each must be an address
// (IP, IP:PORT or [IPV6]:PORT), checked here so that a typo is a usage error
// (exit 2) before anything starts, not a shard failure.
void check_dns_servers(const std::string& csv) {
    std::size_t start = 0;
    while (start <= csv.size() && !csv.empty()) {
        std::size_t comma = csv.find(',', start);
        if (comma == std::string::npos) {
            comma = csv.size();
        }
        std::string item = csv.substr(start, comma - start);
        std::string host = item;
        std::string port;
        if (!item.empty() && item.front() == '[') {
            const std::size_t close = item.find(']');
            if (close != std::string::npos) {
                host = item.substr(1, close - 1);
                if (close + 1 < item.size()) {
                    port = item[close + 1] == ':' ? item.substr(close + 2) : std::string("x");
                }
            }
        } else if (item.find(':') != std::string::npos && item.find(':') == item.rfind(':')) {
            host = item.substr(0, item.find(':'));
            port = item.substr(item.find(':') + 1);
        }
        mxpress::net::ip_address a;
        char* end = nullptr;
        const long p = port.empty() ? 53 : std::strtol(port.c_str(), &end, 10);
        if (!mxpress::net::ip_address::parse(host, a) || (!port.empty() && *end != '\0') || p < 1 || p > 65535) {
            throw std::invalid_argument(
                fmt::format("--dns '{}': '{}' is not a resolver address (IP, IP:PORT or [IPV6]:PORT)", csv, item));
        }
        start = comma + 1;
    }
}

std::vector<engine::route> parse_routes(const std::vector<std::string>& specs) {
    std::vector<engine::route> out;
    for (const std::string& spec : specs) {
        const std::size_t eq = spec.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
            throw std::invalid_argument(fmt::format("--route '{}': expected DOMAIN=HOST[:PORT]", spec));
        }
        engine::route r;
        r.domain = mxpress::detail::to_lower_copy(spec.substr(0, eq));
        std::string target = spec.substr(eq + 1);
        std::size_t colon = target.rfind(':');
        if (!target.empty() && target.front() == '[') {
            // [IPv6]:PORT or [IPv6]
            const std::size_t close = target.find(']');
            if (close == std::string::npos || (close + 1 < target.size() && target[close + 1] != ':')) {
                throw std::invalid_argument(fmt::format("--route '{}': expected [IPV6]:PORT", spec));
            }
            colon = close + 1 < target.size() ? close + 1 : std::string::npos;
        } else if (colon != std::string::npos && target.find(':') != colon) {
            colon = std::string::npos;  // a bare IPv6 address, no port
        }
        if (colon != std::string::npos) {
            const std::string port = target.substr(colon + 1);
            char* end = nullptr;
            const long p = std::strtol(port.c_str(), &end, 10);
            if (port.empty() || *end != '\0' || p < 1 || p > 65535) {
                throw std::invalid_argument(fmt::format("--route '{}': bad port '{}'", spec, port));
            }
            r.port = static_cast<std::uint16_t>(p);
            target.resize(colon);
        }
        if (target.size() >= 2 && target.front() == '[' && target.back() == ']') {
            target = target.substr(1, target.size() - 2);
        }
        if (target.empty()) {
            throw std::invalid_argument(fmt::format("--route '{}': empty host", spec));
        }
        r.host = target;
        out.push_back(std::move(r));
    }
    return out;
}

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

// [smtp://|smtps://]HOST[:PORT]: smtps:// is implicit TLS (default port
// 465), smtp:// STARTTLS (default 587); without a scheme, port 465 means
// implicit TLS and any other STARTTLS.
engine::route parse_relay(const std::string& spec) {
    std::string rest = spec;
    int scheme = 0;  // 0 none, 1 smtp://, 2 smtps://
    if (rest.starts_with("smtps://")) {
        scheme = 2;
        rest.erase(0, 8);
    } else if (rest.starts_with("smtp://")) {
        scheme = 1;
        rest.erase(0, 7);
    }
    engine::route r;
    try {
        r = parse_routes({"*=" + rest}).at(0);
    } catch (const std::invalid_argument&) {
        throw std::invalid_argument(
            fmt::format("--relay '{}': expected [smtp://|smtps://]HOST[:PORT] (IPv6 as [ADDR]:PORT)", spec));
    }
    // parse_routes defaults to 25; a relay defaults to submission.
    const bool port_given = r.port != 25 || rest.ends_with(":25");
    if (!port_given) {
        r.port = scheme == 2 ? 465 : 587;
    }
    r.implicit_tls = scheme == 2 || (scheme == 0 && r.port == 465);
    return r;
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

// The zone of times without an offset: the sequence's, else --tz, else the
// process's ($TZ, /etc/localtime, UTC).
engine::time_zone zone_for(const send_options& o) {
    const std::string& name = o.sequence != nullptr && !o.sequence->tz.empty() ? o.sequence->tz : o.tz;
    return name.empty() ? engine::default_time_zone() : engine::time_zone::load(name);
}

// --now, or the clock.
engine::unix_time now_for(const send_options& o) {
    if (o.now_text.empty()) {
        return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    }
    engine::unix_time t = 0;
    if (!engine::parse_time(o.now_text, zone_for(o), t)) {
        throw std::invalid_argument(fmt::format(
            "--now \"{}\": expected RFC 3339 (2026-11-28T09:00:00+09:00) or \"YYYY-MM-DD HH:MM\"", o.now_text));
    }
    return t;
}

std::size_t column_index(const std::vector<std::string>& columns, std::string_view name) {
    for (std::size_t i = 0; i < columns.size(); ++i) {
        if (mxpress::detail::iequals(columns[i], name)) {
            return i;
        }
    }
    return std::string::npos;
}

// A step: its anchor column (required). send: the send_at column, if any.
std::optional<engine::row_scheduler> make_scheduler(const send_options& o, const std::vector<std::string>& columns) {
    const std::size_t tz_column = column_index(columns, "tz");
    if (o.step != nullptr) {
        const std::size_t anchor = column_index(columns, o.sequence->anchor);
        if (anchor == std::string::npos) {
            throw input_error(o.recipients, 1,
                              fmt::format("no column '{}': [sequence.{}] anchor names it (the sign-up time)",
                                          o.sequence->anchor, o.sequence->name));
        }
        return engine::row_scheduler(anchor, o.sequence->anchor, tz_column, zone_for(o), *o.step, now_for(o));
    }
    const std::size_t send_at = column_index(columns, "send_at");
    if (send_at == std::string::npos) {
        if (!o.now_text.empty()) {
            (void)now_for(o);  // still a usage error when malformed
        }
        return std::nullopt;
    }
    return engine::row_scheduler(send_at, "send_at", tz_column, zone_for(o), std::nullopt, now_for(o));
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

int run_render(const render_options& o) {
    const std::string& recipients = o.recipients;
    const std::uint64_t line = o.line;
    const auto sender = check_sender(o.from);
    const engine::config cfg = o.config.empty() ? engine::config{} : engine::load_config(o.config);
    const mxpress::io::unique_fd rfd = open_recipients(recipients);
    mail::recipients_reader reader(mail::csv_reader::from_fd(rfd.get()), recipients);
    std::string template_name;
    const std::string text = template_text(o.message, o.parts, reader, template_name);
    const mail::message_template tmpl = compile_template(text, template_name, reader.columns(), o.list_unsubscribe);
    mail::renderer_options ropts;
    ropts.from = sender.address;
    ropts.dkim = load_dkim(cfg);
    ropts.message_id_run_key = message_id_run_key(text, recipients, sender.address);
    mail::renderer renderer(tmpl, ropts);
    mail::recipient_row row;
    while (reader.next(row)) {
        if (row.line < line) {
            continue;
        }
        if (row.line > line) {
            break;
        }
        if (!row.valid()) {
            std::fprintf(stderr, "%s:%llu: invalid row: %s\n", recipients.c_str(),
                         static_cast<unsigned long long>(line), row.error.c_str());
            return exit_unfinished;
        }
        const auto addr = mail::check_address(row.email);
        if (!addr.valid()) {
            std::fprintf(stderr, "%s:%llu: invalid address: %s\n", recipients.c_str(),
                         static_cast<unsigned long long>(line), addr.error.c_str());
            return exit_unfinished;
        }
        std::string out;
        const auto r = renderer.render(*row.fields, out, row.line);
        if (!r.ok()) {
            std::fprintf(stderr, "%s:%llu: cannot render: %s\n", recipients.c_str(),
                         static_cast<unsigned long long>(line), r.error.c_str());
            return exit_unfinished;
        }
        std::fwrite(out.data(), 1, out.size(), stdout);
        return exit_ok;
    }
    std::fprintf(stderr, "%s: no recipient row starts at line %llu (line 1 is the header)\n", recipients.c_str(),
                 static_cast<unsigned long long>(line));
    return exit_usage;
}

// `dkim-record`: the TXT record(s) to publish for a key file, or for every
// key of a configuration.
int run_dkim_record(const std::string& key_file, const std::string& config_path, const std::string& domain,
                    const std::string& selector) {
    std::vector<mail::dkim::loaded_key> keys;
    std::vector<std::string> warnings;
    if (!key_file.empty()) {
        mail::dkim::loaded_key k = mail::dkim::load_key(key_file, warnings);
        k.domain = domain;
        k.selector = selector;
        keys.push_back(std::move(k));
    } else {
        const engine::config cfg = engine::load_config(config_path);
        if (!cfg.dkim.enabled()) {
            throw input_error(config_path, 0, "no [[dkim.key]] in this configuration");
        }
        keys = mail::dkim::load_keys(cfg.dkim, warnings)->keys;
    }
    for (const std::string& w : warnings) {
        std::fprintf(stderr, "mxpress: %s\n", w.c_str());
    }
    for (const mail::dkim::loaded_key& k : keys) {
        const std::string value = mail::dkim::txt_record(k);
        if (k.selector.empty() || k.domain.empty()) {
            std::fprintf(stdout, "%s\n", value.c_str());
            continue;
        }
        // Zone-file form, split into strings of at most 255 octets (RFC 1035 §3.3.14).
        std::string strings;
        for (std::size_t i = 0; i < value.size(); i += 255) {
            strings += fmt::format("{}\"{}\"", strings.empty() ? "" : " ", value.substr(i, 255));
        }
        std::fprintf(stdout, "%s._domainkey.%s. IN TXT ( %s )\n", k.selector.c_str(), k.domain.c_str(),
                     strings.c_str());
    }
    return exit_ok;
}

// `check-sender`: what DNS publishes for the sender against the [dkim] keys
// of --config (engine/sender_check.hpp): DMARC and alignment for
// --header-from's domain (default: --from's), SPF for --from's (the
// envelope); exit 2 when a finding is fatal.
int run_check_sender(const std::string& config_path, const std::string& from, const std::string& header_from,
                     const std::string& dns) {
    check_dns_servers(dns);
    // The domain of an address or mailbox ("Town Hall <news@town.example>"), or
    // an error naming the option.
    auto domain_of = [](const char* option, const std::string& value) {
        const std::string d = mail::dkim::from_domain(value);
        if (d.empty() || d.find('.') == std::string::npos) {
            throw std::invalid_argument(
                fmt::format("check-sender: {} '{}' is not an address user@domain", option, value));
        }
        return d;
    };
    engine::sender_check::sender_domains sender;
    sender.envelope = domain_of("--from", from);
    sender.header_from = header_from.empty() ? sender.envelope : domain_of("--header-from", header_from);
    const std::string& domain = sender.header_from;
    const engine::config cfg = engine::load_config(config_path);
    std::vector<engine::sender_check::finding> findings;
    std::vector<engine::sender_check::configured_key> keys;
    for (const mail::dkim::key_spec& spec : cfg.dkim.keys) {
        engine::sender_check::configured_key ck;
        ck.spec = spec;
        std::vector<std::string> warnings;
        try {
            ck.key = mail::dkim::load_key(spec.key_file, warnings);
        } catch (const input_error& e) {
            ck.error = e.describe();
        }
        for (const std::string& w : warnings) {
            if (w.find(" bits; ") == std::string::npos) {  // the key's length is a finding of its own
                findings.push_back({engine::sender_check::severity::warning, w});
            }
        }
        keys.push_back(std::move(ck));
    }
    // The public suffix list, read once; without it check() warns and falls back.
    engine::sender_check::context ctx;
    ctx.now = std::time(nullptr);
    const auto psl = engine::public_suffix::load(engine::public_suffix::debian_path, ctx.psl_error);
    ctx.psl = psl ? &*psl : nullptr;
    mxpress::net::txt_lookup_options lo;
    lo.servers = dns;
    const auto txt = mxpress::net::lookup_txt(engine::sender_check::names_to_query(cfg.dkim, sender, ctx), lo);
    for (auto& f : engine::sender_check::check(cfg.dkim, keys, sender, txt, ctx)) {
        findings.push_back(std::move(f));
    }
    std::size_t counts[3] = {};
    for (const engine::sender_check::finding& f : findings) {
        ++counts[static_cast<int>(f.level)];
        std::fprintf(stdout, "%-7s  %s\n", engine::sender_check::to_string(f.level), f.text.c_str());
    }
    const std::string envelope =
        sender.envelope == domain ? std::string{} : fmt::format(" (envelope {})", sender.envelope);
    std::fprintf(stdout, "check-sender %s%s: %zu ok, %zu warning%s, %zu fatal\n", domain.c_str(), envelope.c_str(),
                 counts[0], counts[1], counts[1] == 1 ? "" : "s", counts[2]);
    return counts[2] > 0 ? exit_usage : exit_ok;
}

int run_check_config(const std::string& path, bool keys, const std::string& domain, const std::string& mx) {
    if (keys) {
        std::fputs(engine::describe_keys_markdown().c_str(), stdout);
        return exit_ok;
    }
    if (path.empty()) {
        throw std::invalid_argument("check-config: FILE is required (or --keys for the table of keys)");
    }
    if (domain.empty() && !mx.empty()) {
        throw std::invalid_argument("check-config: --mx needs --domain");
    }
    const engine::config c = engine::load_config(path);
    if (!domain.empty()) {
        std::fprintf(stdout, "%s: ok\n\n%s", path.c_str(), engine::describe_destination(c, domain, mx).c_str());
        return exit_ok;
    }
    std::fprintf(stdout, "%s: ok\n\n%s", path.c_str(), engine::describe(c).c_str());
    return exit_ok;
}

// `rules`: the built-in rules as TOML (--print-defaults), or every rule in
// force for a configuration, in the order they are tried.
int run_rules(const std::string& config_path, bool defaults) {
    if (defaults) {
        std::fwrite(engine::builtin_rules_toml.data(), 1, engine::builtin_rules_toml.size(), stdout);
        return exit_ok;
    }
    const engine::config c = config_path.empty() ? engine::config{} : engine::load_config(config_path);
    std::fprintf(stdout, "# %zu rules in force, tried in this order (the first match counts)%s\n", c.rules.rules.size(),
                 c.rules.builtin ? "" : "; built-ins off ([rules] builtin = false)");
    for (const engine::rule& r : c.rules.rules) {
        std::fprintf(stdout, "\n%s", engine::describe_rule(r).c_str());
    }
    return exit_ok;
}

// A reply as a receiver writes it ("421-4.7.28 …" lines, or one line) on
// one line as the rules see it: "code enhanced text".
mxpress::smtp::reply parse_pasted_reply(const std::string& text) {
    mxpress::smtp::reply rep;
    std::string body;
    std::size_t at = 0;
    while (at <= text.size()) {
        std::size_t end = text.find('\n', at);
        if (end == std::string::npos) {
            end = text.size();
        }
        std::string line = text.substr(at, end - at);
        at = end + 1;
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) {
            line.pop_back();
        }
        if (line.empty()) {
            continue;
        }
        if (line.size() < 3 ||
            !std::all_of(line.begin(), line.begin() + 3, [](char ch) { return ch >= '0' && ch <= '9'; }) ||
            (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
            throw std::invalid_argument("explain-reply: each line must start with a 3-digit code: " + line);
        }
        rep.code = std::stoi(line.substr(0, 3));
        std::string rest = line.size() > 4 ? line.substr(4) : std::string();
        const std::size_t sp = rest.find(' ');
        const std::string first = rest.substr(0, sp);
        const bool enhanced = first.size() >= 5 && (first[0] == '2' || first[0] == '4' || first[0] == '5') &&
                              first[1] == '.' && std::count(first.begin(), first.end(), '.') == 2;
        if (enhanced) {
            rep.enhanced = first;
            rest = sp == std::string::npos ? std::string() : rest.substr(sp + 1);
        }
        body += body.empty() ? rest : "\n" + rest;
    }
    if (rep.code < 200 || rep.code > 599) {
        throw std::invalid_argument("explain-reply: not an SMTP reply (a code from 200 to 599 first)");
    }
    rep.text = body;
    return rep;
}

// `explain-reply`: which rule a reply matches, what it does to which
// destination, and the policy that destination has.
int run_explain_reply(const std::string& reply_text, const std::string& config_path, const std::string& domain,
                      const std::string& mx) {
    if (domain.empty()) {
        throw std::invalid_argument("explain-reply: --domain is required (the recipient domain that got the reply)");
    }
    const engine::config c = config_path.empty() ? engine::config{} : engine::load_config(config_path);
    const mxpress::smtp::reply rep = parse_pasted_reply(reply_text);
    const std::string d = mxpress::detail::to_lower_copy(domain);
    const auto* pc = mx.empty() ? nullptr : c.provider_for(mxpress::detail::to_lower_copy(mx));
    const std::string line = rep.one_line();
    std::string out = fmt::format("reply: {}\n", line);
    const engine::rule* r = c.rules.match(rep.code, line, d, pc != nullptr ? std::string_view(pc->name) : "");
    if (r == nullptr) {
        out += fmt::format("rule: none matches ({} rules in force): {}\n", c.rules.rules.size(),
                           rep.permanent() ? "the recipient bounces" : "the recipient is retried with backoff");
    } else {
        const bool provider_scope = pc != nullptr && r->domain.empty();
        out += fmt::format("rule: {} ({})\nscope: {}\n", r->name, r->origin,
                           provider_scope ? fmt::format("provider \"{}\" (every domain whose MX hosts it matches, all "
                                                        "shards)",
                                                        pc->name)
                                          : fmt::format("domain {}{}", d,
                                                        mx.empty() && !c.providers.empty()
                                                            ? " (or its provider: give --mx HOST to see which)"
                                                            : ""));
        const std::string when =
            r->trigger == "immediate" ? "at the first match" : fmt::format("after {} (matches/span)", r->trigger);
        switch (r->action) {
            case engine::rule_action::scale:
                out += fmt::format(
                    "action: scale the rate by {} {}, never below {}; recover {} while no reply "
                    "matches\n(no rate configured: it scales the rate it was sending at)\n",
                    r->factor, when, r->floor.text, r->recover);
                break;
            case engine::rule_action::suspend:
                out += fmt::format(
                    "action: suspend for {} {}: its mail waits (not bounced, not aged), then restarts "
                    "at {} of the rate and recovers {}\n",
                    r->duration_text, when, r->factor, r->recover);
                break;
            case engine::rule_action::stop:
                out += fmt::format(
                    "action: stop {}: no more mail there this run; its recipients stay unfinished "
                    "for --resume after the fix\n",
                    when);
                break;
        }
    }
    out += "\n" + engine::describe_destination(c, d, mx);
    std::fputs(out.c_str(), stdout);
    return exit_ok;
}

// ---- Shards on several machines (`plan`, `send --plan`, `report`) ----

struct plan_cli {
    std::string recipients;
    unsigned shards = 0;
    std::string config;
    std::string dns;
    std::vector<std::string> routes;
    std::string out;
    std::size_t queries_max = 64;
};

// Writes `text` to `path` through a temporary file and a rename: a reader
// never sees half a plan.
void write_atomically(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!(out << text) || !out.flush()) {
            throw input_error(tmp, 0, fmt::format("cannot write: {}", std::strerror(errno)));
        }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        throw input_error(path, 0, fmt::format("cannot write: {}", std::strerror(errno)));
    }
}

int run_plan(const plan_cli& c) {
    engine::plan_options o;
    o.recipients = c.recipients;
    o.config_path = c.config;
    o.cfg = c.config.empty() ? engine::config{} : engine::load_config(c.config);
    o.shards = c.shards;
    check_dns_servers(c.dns);
    o.dns_servers = c.dns;
    o.routes = parse_routes(c.routes);
    o.queries_max = c.queries_max;
    const auto start = std::chrono::steady_clock::now();
    const engine::shard_plan p = engine::build_plan(o);
    write_atomically(c.out, engine::plan_to_json(p));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::size_t domains = 0;
    for (const engine::plan_group& g : p.groups) {
        domains += g.domains.size();
    }
    std::string text = fmt::format(
        "plan: {} rows ({} without a valid address, sent by shard 0), {} domains in {} groups, {} shards, "
        "{:.3f} s\n",
        p.rows, p.invalid_rows, domains, p.groups.size(), p.shard_count, secs);
    for (std::size_t s = 0; s < p.shards.size(); ++s) {
        text += fmt::format("  shard {}: {} rows, {} domains, {} groups\n", s, p.shards[s].rows,
                            p.shards[s].domains.size(), p.shards[s].groups.size());
    }
    if (p.unresolved > 0) {
        text += fmt::format("  {} domains did not resolve: each is a group of its own (send looks them up again)\n",
                            p.unresolved);
    }
    text += fmt::format("wrote {}\n", c.out);
    std::fputs(text.c_str(), stdout);
    return exit_ok;
}

// --plan and --shard-index (else JOB_COMPLETION_INDEX, else
// SLURM_ARRAY_TASK_ID): loads the plan, picks the index, checks the
// recipients file against the plan's fingerprint. Every failure is exit 2:
// a retry would fail the same way.
void load_send_plan(send_options& o) {
    if (o.plan.empty()) {
        if (o.shard_index_arg) {
            throw std::invalid_argument("--shard-index needs --plan");
        }
        if (o.recipients.empty()) {
            throw std::invalid_argument("--recipients is required (or --plan, whose list it names)");
        }
        return;
    }
    auto plan =
        std::make_shared<engine::shard_plan>(engine::plan_from_json(mail::read_input_file(o.plan, "plan"), o.plan));
    long long index = -1;
    std::string from = "--shard-index";
    if (o.shard_index_arg) {
        index = *o.shard_index_arg;
    } else {
        for (const char* name : {"JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"}) {
            const char* v = std::getenv(name);
            if (v == nullptr || *v == '\0') {
                continue;
            }
            char* end = nullptr;
            errno = 0;
            index = std::strtoll(v, &end, 10);
            if (*end != '\0' || errno != 0 || index < 0) {
                throw std::invalid_argument(fmt::format("{}='{}' is not a shard index", name, v));
            }
            from = name;
            break;
        }
        if (index < 0) {
            throw std::invalid_argument(
                "--plan needs a shard index: --shard-index I, or JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or "
                "SLURM_ARRAY_TASK_ID (Slurm array) in the environment");
        }
    }
    if (index < 0 || index >= static_cast<long long>(plan->shard_count)) {
        throw std::invalid_argument(
            fmt::format("{} {}: the plan {} has shards 0 to {}", from, index, o.plan, plan->shard_count - 1));
    }
    if (o.recipients.empty()) {
        o.recipients = plan->recipients;
    }
    const engine::file_fingerprint now = engine::fingerprint_file(o.recipients);
    if (!now.same_content(plan->fingerprint)) {
        throw input_error(o.recipients, 0,
                          fmt::format("this is not the recipients file {} was made for ({} bytes, hash {}; the plan "
                                      "says {} bytes, hash {}): plan again, or give the file it planned",
                                      o.plan, now.size, now.hash, plan->fingerprint.size, plan->fingerprint.hash));
    }
    o.shard_index = static_cast<unsigned>(index);
    o.loaded_plan = std::move(plan);
}

int run_report(const std::vector<std::string>& journals, bool json, const std::string& plan_path) {
    engine::merged_report m = engine::merge_journals(journals);
    if (!plan_path.empty()) {
        m.planned_rows = engine::plan_from_json(mail::read_input_file(plan_path, "plan"), plan_path).rows;
    }
    const std::string out = json ? engine::report_json(m) : engine::report_text(m);
    std::fputs(out.c_str(), stdout);
    return exit_ok;
}

// ---- end of shards on several machines ----

}  // namespace

// What `send` and `steps` share: the sender, the configuration, where and
// how to deliver, and the clock.
void add_delivery_options(CLI::App* cmd, send_options& so) {
    cmd->add_option("--from", so.from, "Envelope sender (bounces go here); From: when the template has none")
        ->required();
    cmd->add_option("--config", so.config,
                    "TOML configuration (see README; safe defaults built in). SIGHUP reads it again during the "
                    "run: limits, rules and timeouts change within a second; an invalid file changes nothing");
    cmd->add_option("--threads", so.threads, "Delivery shards (default: number of cores)");
    cmd->add_option("--dns", so.dns, "Resolver HOST[:PORT] for MX lookups (default: /etc/resolv.conf)");
    cmd->add_option("--mx-port", so.mx_port, "Port for MX delivery")->default_val(25)->check(CLI::Range(1, 65535));
    cmd->add_option("--route", so.routes, "DOMAIN=HOST[:PORT]: skip MX lookup for DOMAIN ('*' = all)");
    cmd->add_option("--relay", so.relay,
                    "[smtp://|smtps://]HOST[:PORT]: send everything through this submission server (STARTTLS, "
                    "port 587 by default; smtps:// or port 465: implicit TLS); its certificate is verified "
                    "unless the config says otherwise");
    cmd->add_option("--auth-user", so.auth_user,
                    "AUTH PLAIN/LOGIN user for --relay (password: --auth-password-file or MXPRESS_AUTH_PASSWORD; "
                    "only sent over TLS)");
    cmd->add_option("--auth-password-file", so.auth_password_file, "File whose first line is the --auth-user password");
    cmd->add_option("--stop-grace", so.stop_grace,
                    "Seconds that messages in flight get to finish after SIGINT/SIGTERM (a second signal: none)")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 86400.0));
    cmd->add_option("--progress", so.progress, "Live progress on stderr")
        ->check(CLI::IsMember({"auto", "on", "off"}))
        ->default_val("auto");
    cmd->add_option("--list-unsubscribe", so.list_unsubscribe,
                    "https URL ({{field}} allowed): adds List-Unsubscribe and one-click List-Unsubscribe-Post");
    cmd->add_option("--metrics-textfile", so.metrics_textfile,
                    "Directory of node_exporter's textfile collector: DIR/mxpress_<run>.prom is rewritten "
                    "atomically every --metrics-interval and at exit (Prometheus text format; README, Metrics)");
    cmd->add_option("--metrics-interval", so.metrics_interval, "Seconds between rewrites of the metrics file")
        ->capture_default_str()
        ->check(CLI::Range(0.1, 3600.0));
    cmd->add_option("--tz", so.tz,
                    "Zone of times without an offset (\"Asia/Tokyo\"; default: $TZ, else the system's); a 'tz' "
                    "column overrides it per row, a [sequence] tz for steps");
    cmd->add_option("--now", so.now_text,
                    "TIME (RFC 3339, or \"YYYY-MM-DD HH:MM\"): what send_at and steps take as now (default: the "
                    "clock; for rehearsals and tests)");
    parse_suppression_options(cmd, so.suppress);
}

// Usage errors among the delivery options, before any file is opened.
void check_delivery_options(const send_options& so) {
    for (const auto& [name, text] :
         {std::pair<const char*, const std::string&>{"--now", so.now_text}, {"--not-before", so.not_before}}) {
        engine::unix_time t = 0;
        if (!text.empty() && !engine::parse_time(text, engine::time_zone::fixed("UTC", 0), t)) {
            throw std::invalid_argument(fmt::format(
                "{} \"{}\": expected RFC 3339 (2026-11-28T09:00:00+09:00) or \"YYYY-MM-DD HH:MM\"", name, text));
        }
    }
    if (!so.tz.empty()) {
        (void)engine::time_zone::load(so.tz);  // an unknown zone: exit 2 before anything is read
    }
    parse_routes(so.routes);
    if (!so.relay.empty() && !so.routes.empty()) {
        throw std::invalid_argument("--relay and --route cannot be combined: the relay takes every domain");
    }
    if (!so.auth_user.empty() && so.relay.empty()) {
        throw std::invalid_argument("--auth-user is for --relay (MX delivery does not authenticate)");
    }
    if (!so.relay.empty()) {
        parse_relay(so.relay);
    }
    if (!so.metrics_textfile.empty()) {
        if (const std::string why = engine::check_textfile_dir(so.metrics_textfile); !why.empty()) {
            throw std::invalid_argument(why);
        }
    }
}

// A step with no row to act on (every row final, not yet due, or without a
// time) needs no run: no threads, no TLS context, no journal lines. This is
// what a cron run every few minutes finds most of the time. Returns the
// line to print then, or "" when the step has work.
std::string step_idle_line(const send_options& o) {
    const engine::journal_state done = engine::read_journal(o.journal);
    const mxpress::io::unique_fd fd = open_recipients(o.recipients);
    mail::recipients_reader reader(mail::csv_reader::from_fd(fd.get()), o.recipients);
    std::optional<engine::row_scheduler> scheduler = make_scheduler(o, reader.columns());
    mail::recipient_row row;
    std::uint64_t later = 0, unscheduled = 0, final_rows = 0;
    engine::unix_time next = 0;
    while (reader.next(row)) {
        if (done.has_final(row.line)) {
            ++final_rows;
            continue;
        }
        mail::checked_address a;
        if (!mail::check_row(row, a).empty()) {
            return "";  // journaled invalid by a run
        }
        const engine::row_schedule when = scheduler->schedule(*row.fields);
        switch (when.timing) {
            case engine::row_timing::due:
            case engine::row_timing::late: return "";
            case engine::row_timing::later:
                ++later;
                next = next == 0 ? when.due_at : std::min(next, when.due_at);
                break;
            case engine::row_timing::unscheduled: ++unscheduled; break;
        }
    }
    return fmt::format("nothing due: {} rows final, {} not yet due{}, {} without a usable time\n", final_rows, later,
                       next == 0 ? "" : fmt::format(" (the first at {})", engine::format_utc(next)), unscheduled);
}

// `steps`: each step in the file's order, each a run of its own on its own
// journal (always resumed: the journal is the memory). A stop or a rule
// that leaves mail unfinished ends the command; the next run goes on.
int run_steps(const send_options& base, const std::string& sequence_name) {
    if (base.config.empty()) {
        throw std::invalid_argument("steps needs --config FILE: the [sequence] lives there");
    }
    const engine::config cfg = engine::load_config(base.config);
    const engine::sequence_config* seq = nullptr;
    std::string known;
    for (const engine::sequence_config& sc : cfg.sequences) {
        seq = sc.name == sequence_name ? &sc : seq;
        known += known.empty() ? sc.name : ", " + sc.name;
    }
    if (seq == nullptr) {
        throw input_error(
            base.config, 0,
            fmt::format("no [sequence.{}] (sequences here: {})", sequence_name, known.empty() ? "none" : known));
    }
    send_options o = base;
    o.sequence = seq;
    o.now_text = engine::format_utc(now_for(o));  // one instant for every step of this run
    if (!seq->suppress.empty()) {
        o.suppress.push_back(seq->suppress);
    }
    o.resume = true;
    for (const engine::sequence_step& step : seq->steps) {
        o.step = &step;
        o.message = step.message;
        o.journal = journal_beside(o.recipients, fmt::format("{}.{}.journal.jsonl", seq->name, step.id));
        std::printf("step %s (%s):\n", step.id.c_str(), step.message.c_str());
        if (const std::string idle = step_idle_line(o); !idle.empty()) {
            std::fputs(idle.c_str(), stdout);
            continue;
        }
        std::fflush(stdout);
        try {
            if (const int rc = run_send(o); rc != exit_ok) {
                return rc;
            }
        } catch (const engine::journal_in_use&) {
            // A run that outlasts the cron interval (a destination retried for
            // max_age) still holds this step: it is that run's, not an error.
            std::printf("another mxpress run holds %s: this step is left to it\n", o.journal.c_str());
        }
    }
    return exit_ok;
}

int main(int argc, char** argv) {
    CLI::App app{
        "mxpress — fast, correct batch email sender.\n"
        "Renders one message per recipients-file row and delivers it over SMTP."};
    app.require_subcommand(1);
    app.set_version_flag("--version", fmt::format("mxpress {}", mxpress_version));

    send_options so;
    auto* send = app.add_subcommand("send", "Check, render and deliver one message per recipient");
    send->add_option("--recipients", so.recipients,
                     "Recipients CSV (header row; column 'email' required; a 'send_at' column holds rows until "
                     "their time); with --plan, default: the plan's list");
    send->add_option("--message", so.message,
                     "Message template (RFC 5322, {{field}} merge fields); or a message from parts (--text, ...)");
    send->add_option("--journal", so.journal,
                     "Outcome journal, JSON Lines (default: beside the recipients file, "
                     "NAME.journal.jsonl, or NAME.dry-run.jsonl for --dry-run; with --plan, "
                     "NAME.shard-I-of-N.journal.jsonl)");
    add_delivery_options(send, so);
    send->add_flag("--resume", so.resume, "Skip recipients whose final outcome is already in the journal");
    send->add_flag("--dry-run", so.dry_run, "Check and render every message, send nothing");
    send->add_option("--summary-json", so.summary_json, "Write a machine-readable summary here");
    send->add_option("--not-before", so.not_before,
                     "TIME (RFC 3339, or \"YYYY-MM-DD HH:MM\" in --tz): wait until then before sending");
    send->add_option("--plan", so.plan,
                     "Send only this shard's rows of a plan made by `mxpress plan` (journal default: "
                     "NAME.shard-I-of-N.journal.jsonl; a retried index runs with --resume)");
    send->add_option("--shard-index", so.shard_index_arg,
                     "With --plan: this shard's index, 0 to N-1 (default: $JOB_COMPLETION_INDEX, else "
                     "$SLURM_ARRAY_TASK_ID; neither: exit 2)");

    send_options steps_o;
    std::string steps_sequence;
    auto* steps = app.add_subcommand(
        "steps",
        "Step mail: send each step of a [sequence] to the rows now due for it (run it every few minutes; one "
        "journal per step remembers who got what, so each step goes once per subscriber)");
    steps->add_option("--sequence", steps_sequence, "The [sequence.NAME] of --config to run")->required();
    steps
        ->add_option("--recipients", steps_o.recipients,
                     "Subscribers CSV (email, the sequence's anchor column, optional 'tz'); rows may be appended "
                     "between runs, never removed or reordered (unsubscribe through the sequence's suppress list)")
        ->required();
    add_delivery_options(steps, steps_o);

    render_options ro;
    auto* render = app.add_subcommand("render", "Print the message one recipient would get (before dot-stuffing)");
    render->add_option("--recipients", ro.recipients, "Recipients CSV")->required();
    render->add_option("--message", ro.message, "Message template; or a message from parts (--text, ...)");
    render->add_option("--line", ro.line, "Line of the recipients file where the row starts (header = line 1)")
        ->required()
        ->check(CLI::PositiveNumber);
    render->add_option("--from", ro.from, "Envelope sender (used for From: and Message-ID when missing)")
        ->capture_default_str();
    render->add_option("--config", ro.config, "TOML configuration: with [dkim], the message is shown signed");
    render->add_option("--list-unsubscribe", ro.list_unsubscribe, "As for send");
    parse_parts_options(send, so.parts);
    std::vector<std::string> s_journals;
    auto* suppressions = app.add_subcommand(
        "suppressions", "Print the hard-bounced addresses of earlier journals (a file for --suppress)");
    suppressions->add_option("JOURNAL", s_journals, "Journal files (JSON Lines)")->required();
    parse_parts_options(render, ro.parts);

    std::string d_key;
    std::string d_config;
    std::string d_domain;
    std::string d_selector;
    auto* dkim_record = app.add_subcommand("dkim-record", "Print the DNS TXT record that publishes a DKIM key");
    auto* d_key_opt = dkim_record->add_option("--key", d_key, "PEM private key (RSA or Ed25519)");
    auto* d_config_opt = dkim_record->add_option("--config", d_config, "Every [[dkim.key]] of this configuration");
    d_key_opt->excludes(d_config_opt);
    dkim_record->add_option("--domain", d_domain, "d= domain, for the record's name (with --key)")->needs(d_key_opt);
    dkim_record->add_option("--selector", d_selector, "s= selector, for the record's name (with --key)")
        ->needs(d_key_opt);

    std::string cs_config, cs_from, cs_header_from, cs_dns;
    auto* check_sender = app.add_subcommand(
        "check-sender",
        "Before a real send: each [[dkim.key]]'s published record (p=, k=, key length); DMARC at the From domain or "
        "its organizational domain (Public Suffix List), its p=, sp= and adkim=; SPF at the envelope domain; "
        "alignment of d= with From (fatal under p=quarantine or p=reject; keys past not_after do not count); signed "
        "List-Unsubscribe; one line per finding (ok, warning, FATAL), exit 2 when one is fatal");
    check_sender->add_option("--config", cs_config, "TOML configuration with [dkim] and its [[dkim.key]]s")->required();
    check_sender
        ->add_option("--from", cs_from,
                     "Envelope sender (MAIL FROM) address, as `send --from`: SPF is checked "
                     "at its domain")
        ->required();
    check_sender->add_option("--header-from", cs_header_from,
                             "From header address or mailbox, as `send --header-from` (default: --from): DMARC and "
                             "DKIM alignment are checked for its domain");
    check_sender->add_option("--dns", cs_dns, "Resolver HOST[:PORT] for the TXT lookups (default: /etc/resolv.conf)");

    plan_cli pc;
    auto* plan = app.add_subcommand(
        "plan",
        "Split a list over N machines: resolve each domain's MX once, group domains by [provider] (else by MX set), "
        "bin-pack the groups by rows; write plan.json for `send --plan P --shard-index I`");
    plan->add_option("--recipients", pc.recipients, "Recipients CSV (a regular file: the plan records its hash)")
        ->required();
    plan->add_option("--shards", pc.shards, "Number of shards N (machines, or Indexed Job completions)")
        ->required()
        ->check(CLI::Range(1u, 100000u));
    plan->add_option("--config", pc.config,
                     "TOML configuration whose [provider.\"…\"] sections group domains (give send the same)");
    plan->add_option("--dns", pc.dns, "Resolver HOST[:PORT] for MX lookups (default: /etc/resolv.conf)");
    plan->add_option("--route", pc.routes,
                     "DOMAIN=HOST[:PORT]: as for send; the domain's MX is HOST, not looked up ('*' = all)");
    plan->add_option("--dns-queries-max", pc.queries_max, "MX lookups at once")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    plan->add_option("--out", pc.out, "Where to write the plan (JSON; replaced atomically)")->required();

    std::vector<std::string> r_journals;
    bool r_json = false;
    std::string r_plan;
    auto* report = app.add_subcommand(
        "report", "Merge shard journals into one summary: rows by final status, duplicates across journals");
    report->add_option("JOURNAL", r_journals, "Journal files (JSON Lines), e.g. list.shard-*-of-N.journal.jsonl")
        ->required();
    report->add_flag("--json", r_json, "Print the summary as JSON");
    report->add_option("--plan", r_plan, "The plan: also count its rows that no journal has a final outcome for");

    std::string c_path;
    bool c_keys = false;
    auto* check = app.add_subcommand("check-config", "Validate a configuration file and print the effective settings");
    check->add_option("FILE", c_path, "TOML configuration file");
    check->add_flag("--keys", c_keys, "Print every configuration key with its type, default and meaning (Markdown)");
    std::string c_domain, c_mx;
    check->add_option("--domain", c_domain,
                      "Print the effective limits and TLS policy for mail to this domain, and which sections set them");
    check->add_option("--mx", c_mx, "with --domain: through this MX host name (not looked up)");

    std::string r_config;
    bool r_defaults = false;
    auto* rules = app.add_subcommand("rules", "Print the adaptive rules in force, in the order they are tried");
    rules->add_option("--config", r_config, "TOML configuration whose [[rule]]s come first");
    rules->add_flag("--print-defaults", r_defaults, "Print the built-in rules as TOML");

    std::string e_reply, e_config, e_domain, e_mx;
    auto* explain = app.add_subcommand(
        "explain-reply", "Say which rule a receiver's reply matches and what it does (\"421 4.7.28 ...\")");
    explain->add_option("REPLY", e_reply, "The reply: one line, or the lines as received")->required();
    explain->add_option("--domain", e_domain, "The recipient domain that got it")->required();
    explain->add_option("--mx", e_mx, "The MX host that sent it (picks the [provider]; not looked up)");
    explain->add_option("--config", e_config, "TOML configuration (its rules, providers and limits)");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int rc = app.exit(e);
        return rc == 0 ? exit_ok : exit_usage;
    }

    try {
        if (*send) {
            check_delivery_options(so);
            load_send_plan(so);
            return run_send(so);
        }
        if (*steps) {
            check_delivery_options(steps_o);
            return run_steps(steps_o, steps_sequence);
        }
        if (*render) {
            return run_render(ro);
        }
        if (*suppressions) {
            return run_suppressions(s_journals);
        }
        if (*plan) {
            return run_plan(pc);
        }
        if (*report) {
            return run_report(r_journals, r_json, r_plan);
        }
        if (*dkim_record) {
            if (d_key.empty() && d_config.empty()) {
                throw std::invalid_argument("dkim-record needs --key FILE or --config FILE");
            }
            return run_dkim_record(d_key, d_config, mxpress::detail::to_lower_copy(d_domain), d_selector);
        }
        if (*check_sender) {
            return run_check_sender(cs_config, cs_from, cs_header_from, cs_dns);
        }
        if (*check) {
            return run_check_config(c_path, c_keys, c_domain, c_mx);
        }
        if (*rules) {
            return run_rules(r_config, r_defaults);
        }
        if (*explain) {
            return run_explain_reply(e_reply, e_config, e_domain, e_mx);
        }
    } catch (const input_error& e) {
        std::fprintf(stderr, "mxpress: %s\n", e.describe().c_str());
        return exit_usage;
    } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "mxpress: %s\n", e.what());
        return exit_usage;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mxpress: %s\n", e.what());
        return exit_unfinished;
    }
    return exit_usage;
}
