// apps/mxpress/dry_run.cpp — `send --dry-run`: check and render every
// message, journal each row, send nothing.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>

#include "mxpress/detail/json.hpp"
#include "mxpress/engine/journal.hpp"
#include "mxpress/engine/progress.hpp"

#include "cli.hpp"

namespace mxpress::cli {

using mxpress::engine::human_count;

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

}  // namespace mxpress::cli
