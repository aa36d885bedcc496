// apps/mxpress/cli.hpp — what the files of the runner share. One file per
// topic, so that a reader opens the one for the command they care about:
//
//   main.cpp     the command line (CLI11): every subcommand's options, the
//                delivery options that `send` and `steps` share, and main()
//   send.cpp     `send`: run_send and what only it uses (relay, --resume
//                checks, --not-before, the schedule summary)
//   dry_run.cpp  `send --dry-run`: check and render every message, send nothing
//   steps.cpp    `steps` (step mail), and the clock and row schedules that
//                `send` (send_at) shares with it
//   render.cpp   commands that print and send nothing: `render`,
//                `dkim-record`, `check-sender`, `check-config`, `rules`,
//                `explain-reply`
//   lists.cpp    suppression lists (--suppress, `suppressions`) and shards on
//                several machines (`plan`, `send --plan`, `report`)
//   common.cpp   what several commands use: files and journal names, the
//                sender and its DKIM keys, the message (from a file or from
//                parts), --dns, --route and --relay
//
// Everything here is internal to the mxpress executable.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mxpress/engine/config.hpp"
#include "mxpress/engine/options.hpp"
#include "mxpress/engine/plan.hpp"
#include "mxpress/engine/sequence.hpp"
#include "mxpress/engine/time_zone.hpp"
#include "mxpress/io/unique_fd.hpp"
#include "mxpress/mail/address.hpp"
#include "mxpress/mail/dkim.hpp"
#include "mxpress/mail/input_error.hpp"
#include "mxpress/mail/message_template.hpp"
#include "mxpress/mail/parts.hpp"
#include "mxpress/mail/recipients.hpp"
#include "mxpress/mail/suppression.hpp"

namespace CLI {
class App;
}

namespace mxpress::cli {

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

// What `plan` takes (lists.cpp).
struct plan_cli {
    std::string recipients;
    unsigned shards = 0;
    std::string config;
    std::string dns;
    std::vector<std::string> routes;
    std::string out;
    std::size_t queries_max = 64;
};

// ---- common.cpp ----

std::string read_file(const std::string& path, const char* what);
mxpress::io::unique_fd open_recipients(const std::string& path);
std::string journal_beside(const std::string& recipients, const std::string& suffix);
std::string journal_suffix(const send_options& o, const std::string& suffix);
std::uint64_t peak_rss_bytes();
void write_summary(const std::string& path, const std::string& json);
mail::checked_address check_sender(const std::string& from);
std::shared_ptr<const mail::dkim::key_set> load_dkim(const engine::config& cfg);
void parse_parts_options(CLI::App* cmd, mail::message_parts& p);
std::string template_text(const std::string& message, const mail::message_parts& parts,
                          const mail::recipients_reader& reader, std::string& name);
mail::message_template compile_template(const std::string& text, const std::string& path,
                                        const std::vector<std::string>& columns, const std::string& unsubscribe);
std::uint64_t message_id_run_key(const std::string& template_text, const std::string& recipients,
                                 const std::string& from);
void check_dns_servers(const std::string& csv);
std::vector<engine::route> parse_routes(const std::vector<std::string>& specs);
engine::route parse_relay(const std::string& spec);

// ---- send.cpp, dry_run.cpp ----

int run_send(const send_options& o);
int run_dry_run(const send_options& o);

// ---- steps.cpp ----

engine::time_zone zone_for(const send_options& o);
engine::unix_time now_for(const send_options& o);
std::optional<engine::row_scheduler> make_scheduler(const send_options& o, const std::vector<std::string>& columns);
int run_steps(const send_options& base, const std::string& sequence_name);

// ---- render.cpp ----

int run_render(const render_options& o);
int run_dkim_record(const std::string& key_file, const std::string& config_path, const std::string& domain,
                    const std::string& selector);
int run_check_sender(const std::string& config_path, const std::string& from, const std::string& header_from,
                     const std::string& dns);
int run_check_config(const std::string& path, bool keys, const std::string& domain, const std::string& mx);
int run_rules(const std::string& config_path, bool defaults);
int run_explain_reply(const std::string& reply_text, const std::string& config_path, const std::string& domain,
                      const std::string& mx);

// ---- lists.cpp ----

void parse_suppression_options(CLI::App* send, std::vector<std::string>& files);
std::unique_ptr<mail::suppression_set> load_suppression_lists(const std::vector<std::string>& files);
int run_suppressions(const std::vector<std::string>& journals);
int run_plan(const plan_cli& c);
void load_send_plan(send_options& o);
int run_report(const std::vector<std::string>& journals, bool json, const std::string& plan_path);

}  // namespace mxpress::cli
