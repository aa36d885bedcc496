// apps/mxpress/lists.cpp — lists across runs and machines: suppression
// lists (--suppress, `mxpress suppressions`) and shards on several machines
// (`plan`, `send --plan`, `report`).
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "mxpress/detail/json.hpp"
#include "mxpress/engine/journal.hpp"
#include "mxpress/engine/plan_build.hpp"
#include "mxpress/engine/report.hpp"

#include "cli.hpp"

namespace mxpress::cli {

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

// ---- Shards on several machines (`plan`, `send --plan`, `report`) ----

namespace {

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

}  // namespace

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

}  // namespace mxpress::cli
