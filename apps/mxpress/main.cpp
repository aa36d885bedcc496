// apps/mxpress/main.cpp — the runner: `mxpress send|render|plan|report|check-config|dkim-record|suppressions`,
// and `check-sender`.
//
// Exit status (README, Exit status): 0 when every recipient has a final outcome (or the
// command did what was asked); 2 for usage or configuration errors, with a
// message naming the file and line; 1 when a run could not finish.
//
// The commands live in their own files (cli.hpp says which); this one holds
// the command line (CLI11) and main().
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "cli.hpp"
#include "mxpress/detail/ascii.hpp"
#include "mxpress/engine/metrics.hpp"

namespace mxpress::cli {
namespace {

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

}  // namespace
}  // namespace mxpress::cli

using namespace mxpress::cli;

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
