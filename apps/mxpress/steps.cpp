// apps/mxpress/steps.cpp — `steps` (step mail: each step of a [sequence]
// to the rows now due for it), and the clock and row schedules that `send`
// (its send_at column) shares with it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/engine/journal.hpp"

#include "cli.hpp"

namespace mxpress::cli {

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

namespace {

std::size_t column_index(const std::vector<std::string>& columns, std::string_view name) {
    for (std::size_t i = 0; i < columns.size(); ++i) {
        if (mxpress::detail::iequals(columns[i], name)) {
            return i;
        }
    }
    return std::string::npos;
}

}  // namespace

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

namespace {

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

}  // namespace

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

}  // namespace mxpress::cli
