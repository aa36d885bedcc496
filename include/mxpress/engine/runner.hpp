// mxpress/engine/runner.hpp — `mxpress send`: the reader thread and the
// delivery shards.
//
// The calling thread is the reader: it streams the recipients file, checks
// every row, journals invalid rows itself, and routes each valid recipient
// to its domain's shard (shard_router.hpp: placed on the least loaded one
// when first seen) through that shard's bounded mailbox (blocking when the
// mailbox is full). Each shard runs on its own thread, pinned to a core.
// The run ends when every shard has a final outcome for each recipient it
// got; the journal then has exactly one final line per data row.
// Failures never unwind past a joinable thread: shard_threads joins in its
// destructor, a failed shard aborts its mailbox so the reader cannot block
// on it, and errors reach main() as exceptions after every thread ended.
// Stopping: with runner_options::signals, a first SIGINT/SIGTERM makes every
// shard drain (shard.hpp) and the reader stop reading; a second, or the end
// of the grace period, tears connections down. run_totals says how far the
// run got (stop_signal, left_deferred, stopped_in_doubt).
// SIGHUP (runner_options::reloader) reads the --config file again; the
// shards take the new one at their next tick (config_reload.hpp).
// Metrics (runner_options::metrics_dir): a sampler thread of the runner reads
// the shards' relaxed counters and the reader's, and rewrites the metrics
// file (metrics.hpp) at the start, every metrics_interval and once more at
// the end, after the shards ended; the shards only count, as before. It is
// its own thread because the reader may wait on a full mailbox for as long
// as the shards take.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <exception>
#include <map>
#include <stdexcept>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "mxpress/engine/config_reload.hpp"
#include "mxpress/engine/journal.hpp"
#include "mxpress/engine/run_metrics.hpp"
#include "mxpress/engine/progress.hpp"
#include "mxpress/engine/run_totals.hpp"
#include "mxpress/engine/sequence.hpp"
#include "mxpress/engine/shard.hpp"
#include "mxpress/engine/shard_router.hpp"
#include "mxpress/engine/shard_threads.hpp"
#include "mxpress/engine/stop_signals.hpp"
#include "mxpress/io/input_wait.hpp"
#include "mxpress/mail/address.hpp"
#include "mxpress/mail/recipients.hpp"
#include "mxpress/mail/suppression.hpp"

namespace mxpress::engine {

// A row that --resume would skip names another address than its journal
// line: the recipients file changed under the journal (exit 2).
struct resume_mismatch : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// Does the row at `row.line` still hold the address that its final journal
// line names? (The journal has the checked form; an invalid row, the raw.)
inline bool row_matches_journal(const mail::recipient_row& row, std::uint32_t tag) {
    if (email_tag(row.email) == tag) {
        return true;
    }
    mail::checked_address a;
    return mail::check_row(row, a).empty() && email_tag(a.address) == tag;
}

struct runner_options {
    shard_options shard;
    const mail::suppression_set* suppress = nullptr;  // --suppress: rows never sent
    unsigned threads = 1;
    // A batch for a shard's mailbox closes at batch_size rows or
    // batch_bytes_max bytes of merge fields, whichever comes first: with a
    // mailbox of mailbox_batches_max, what waits for a shard is bounded in
    // bytes too, however large the rows.
    std::uint64_t batch_size = 256;
    std::size_t batch_bytes_max = 256 * 1024;
    bool show_progress = false;
    stop_signals* signals = nullptr;  // borrowed; null: signals are not watched
    // Borrowed: the recipients reader's (csv_reader::from_fd). Before a read
    // from a pipe would wait, part-filled batches go to the shards; a stop
    // cancels the wait. Null: a file that never waits (or a test's string).
    io::input_wait* input = nullptr;
    // SIGHUP reads it again (config_reload.hpp). Borrowed; null: no --config,
    // and SIGHUP is ignored with a word on stderr.
    config_reloader* reloader = nullptr;
    std::string metrics_dir;  // --metrics-textfile; empty: no metrics file
    std::chrono::milliseconds metrics_interval{10'000};
    std::string version;  // for mxpress_build_info
    // --plan: does this process send rows of this domain ("" for a row
    // without a valid address)? Null: every row. Rows it declines are not
    // read further, counted or journaled (run_totals::elsewhere).
    std::function<bool(std::string_view domain)> take_domain;
    // Step mail and send_at (engine/sequence.hpp): when each valid row is
    // due. Null: every row now.
    std::function<row_schedule(const mail::recipient_row&)> schedule;
};

// SIGHUP: the file read again; the shards take it at their next tick, the
// providers (shared) here. One line on stderr says what happened.
inline void reload_configuration(config_reloader* reloader, const provider_table& providers) {
    if (reloader == nullptr) {
        std::fprintf(stderr, "\nmxpress: SIGHUP: this run has no --config to read again; nothing changed\n");
        return;
    }
    const config_reloader::result r = reloader->reload();
    if (r.applied) {
        for (const provider_config& pc : r.in_force->providers) {
            if (provider_state* p = providers.by_name(pc.name)) {
                p->reload(pc);
            }
        }
    }
    std::fprintf(stderr, "\nmxpress: %s\n", r.message.c_str());
}

// Reads the recipients, feeds the shards, waits for them. Throws run_error
// when a shard failed, or what the reader threw (a read error on the
// recipients file): in both cases after every shard thread has ended, with
// the outcomes they reached in the journal.
inline run_totals run_delivery(mail::recipients_reader& reader, const mail::message_template& tmpl,
                               shared_journal& journal, const journal_state& done, const runner_options& o) {
    const unsigned n = std::max(1u, o.threads);
    const auto start = std::chrono::steady_clock::now();
    // One object per [provider."…"], shared by every shard; it outlives them.
    const provider_table providers(o.shard.cfg);
    providers.for_each([&](provider_state& p) {
        if (auto it = o.shard.rule_restore.find("provider:" + p.config().name); it != o.shard.rule_restore.end()) {
            p.with_throttle([&](throttle& t) {
                restore_throttle(t, it->second, o.shard.cfg.rules, clock::now(), std::chrono::system_clock::now());
            });
        }
    });
    shard_options so = o.shard;
    so.providers = &providers;
    so.reloader = o.reloader;
    so.shards = n;
    shard_threads shards(n, so, tmpl, journal, [&o]() {
        if (o.input != nullptr) {
            o.input->cancel();  // a failed shard ends the run: a reader waiting on a pipe stops
        }
    });
    std::atomic<int> stop_level{0};
    if (o.signals != nullptr) {
        o.signals->start([&](int signo, unsigned count) {
            if (signo == SIGHUP) {
                reload_configuration(o.reloader, providers);
                return;
            }
            const int level = count >= 2 ? 2 : 1;
            stop_level.store(level);
            for (unsigned i = 0; i < n; ++i) {
                if (shard* s = shards.find(i)) {
                    s->request_stop(level);
                }
            }
            if (o.input != nullptr) {
                o.input->cancel();  // a reader waiting on a pipe's writer stops reading
            }
        });
    }
    struct watcher_stop {
        stop_signals* s;
        ~watcher_stop() {
            if (s != nullptr) {
                s->stop();  // before `shards` and `stop_level` go
            }
        }
    } stop_watching{o.signals};
    const auto wall_start = std::chrono::system_clock::now();
    reader_counts counts;
    std::optional<metrics_reporter> metrics;
    std::optional<periodic_thread> sampler;  // after `shards`: ends before them
    if (!o.metrics_dir.empty()) {
        metrics.emplace(o.metrics_dir, o.metrics_interval, o.shard.run_id, o.version, wall_start);
        sampler.emplace(metrics->sample_period(), [&]() { metrics->sample(shards, counts, false, &providers); });
    }

    run_totals t;
    std::vector<shard::mail_batch> batches(n);
    std::vector<std::size_t> batch_bytes(n, 0);
    std::string invalid_lines;
    mail::recipient_row row;
    // A final outcome decided on the reader thread, without sending.
    auto record_final = [&](const mail::recipient_row& r, std::string_view email, outcome_status status,
                            std::string_view why) {
        journal_entry e;
        e.line = r.line;
        e.email = email;
        e.status = status;
        e.reply = why;
        std::string ts;
        format_timestamp(ts, std::chrono::system_clock::now());
        e.ts = ts;
        const std::size_t at = email.rfind('@');
        e.domain = at == std::string_view::npos ? std::string_view() : email.substr(at + 1);
        e.run = o.shard.run_id;
        append_journal_line(invalid_lines, e);
        if (invalid_lines.size() > 64 * 1024) {
            journal.write_batch(invalid_lines);
        }
    };
    auto record_invalid = [&](const mail::recipient_row& r, const std::string& why) {
        ++t.invalid;
        reader_counts::add(counts.invalid);
        record_final(r, r.email, outcome_status::invalid, why);
    };
    // The progress line (--progress): its own thread, because the reader
    // may wait on a full mailbox for as long as the shards take. On a
    // terminal it is redrawn in place 4 times a second, and cleared before
    // the summary; elsewhere a plain line every 5 s (none at the start,
    // which says nothing yet) and one when the shards are done.
    std::atomic<bool> read_all{false};
    const bool tty = o.show_progress && ::isatty(STDERR_FILENO) == 1;
    bool plain_started = false;  // the progress thread's, then the runner's once it ended
    auto progress_line = [&]() {
        if (!tty && !plain_started) {
            plain_started = true;
            return;
        }
        progress_counts c;
        for (unsigned i = 0; i < n; ++i) {
            const shard_stats& s = shards.stats(i);
            c.delivered += s.delivered.load(std::memory_order_relaxed);
            c.failed += s.bounced.load(std::memory_order_relaxed) + s.invalid.load(std::memory_order_relaxed) +
                        s.expired.load(std::memory_order_relaxed) + s.in_doubt.load(std::memory_order_relaxed);
            c.deferred += s.deferred.load(std::memory_order_relaxed);
            c.in_flight += s.in_flight.load(std::memory_order_relaxed);
            if (const std::uint32_t h = s.held.load(std::memory_order_relaxed); h > 0) {
                c.held += h;
                const std::lock_guard<std::mutex> lock(s.held_mutex);
                if (c.held_example.empty()) {
                    c.held_example = s.held_example;
                }
            }
        }
        providers.for_each([&](provider_state& p) {
            if (std::string d = p.describe_hold(clock::now()); !d.empty()) {
                ++c.held;
                c.held_example = "[provider." + p.config().name + "]: " + d;  // a whole provider first
            }
        });
        const std::uint64_t invalid = counts.invalid.load(std::memory_order_relaxed);
        const std::uint64_t suppressed = counts.suppressed.load(std::memory_order_relaxed);
        c.failed += invalid;
        c.done = c.delivered + c.failed + suppressed + counts.late.load(std::memory_order_relaxed);
        c.total_known = read_all.load(std::memory_order_acquire);
        // Rows not due yet, or without a time, are passed over: not this run's to do.
        c.read = counts.rows.load(std::memory_order_relaxed) - counts.skipped.load(std::memory_order_relaxed) -
                 counts.passed.load(std::memory_order_relaxed);
        c.total = c.read;
        c.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const std::string text = format_progress(c, terminal_width(STDERR_FILENO), tty);
        if (tty) {
            std::fprintf(stderr, "\r\033[K%s", text.c_str());
        } else {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
        std::fflush(stderr);
    };
    std::optional<periodic_thread> progress;  // after `shards`: ends before them
    auto end_progress = [&]() {
        if (progress) {
            progress.reset();  // joins
            if (!tty) {
                try {
                    progress_line();  // where the run ended
                } catch (...) {
                    // an unwinding run is not stopped by a line it could not write
                }
            } else {
                std::fputs("\r\033[K", stderr);  // the summary starts on a clean line
                std::fflush(stderr);
            }
        }
    };
    struct progress_stop {
        decltype(end_progress)& end;
        ~progress_stop() { end(); }
    } stop_progress{end_progress};
    if (o.show_progress) {
        progress.emplace(tty ? std::chrono::milliseconds(250) : std::chrono::milliseconds(5000), progress_line);
    }
    // Rows read so far go to the shards now (a pipe's writer may take its
    // time), and the invalid ones to the journal.
    auto hand_over = [&]() {
        journal.write_batch(invalid_lines);
        for (unsigned i = 0; i < n; ++i) {
            if (!batches[i].empty()) {
                shards.push(i, std::move(batches[i]));
                batches[i] = shard::mail_batch();
                batch_bytes[i] = 0;
            }
        }
    };
    struct input_hook {
        io::input_wait* input;
        ~input_hook() {
            if (input != nullptr) {
                input->on_block({});  // the callback refers to this frame
            }
        }
    } hook{o.input};
    if (o.input != nullptr) {
        o.input->on_block(hand_over);
    }
    shard_router router(n);
    std::exception_ptr reader_error;
    try {
        while (!shards.failed() && stop_level.load(std::memory_order_relaxed) == 0 && reader.next(row)) {
            mail::checked_address a;
            std::string why;
            if (o.take_domain) {
                why = mail::check_row(row, a);
                if (!o.take_domain(why.empty() ? a.domain() : std::string_view())) {
                    ++t.elsewhere;
                    continue;
                }
            }
            ++t.rows;
            reader_counts::add(counts.rows);
            if (const std::uint32_t tag = done.final_tag(row.line); tag != 0) {
                if (!row_matches_journal(row, tag)) {
                    throw resume_mismatch(fmt::format(
                        "{}: line {} now holds {}, not the address its journal line names: the recipients file "
                        "changed since the journaled run; --resume would misattribute outcomes (restore the file, "
                        "or start a new journal)",
                        reader.file_name(), row.line, row.email));
                }
                ++t.skipped;
                reader_counts::add(counts.skipped);
                continue;
            }
            if (!o.take_domain) {
                why = mail::check_row(row, a);
            }
            if (!why.empty()) {
                record_invalid(row, why);
                continue;
            }
            if (o.schedule) {
                row_schedule when = o.schedule(row);
                switch (when.timing) {
                    case row_timing::due: break;
                    case row_timing::later:
                        ++t.later;
                        reader_counts::add(counts.passed);
                        t.next_due = t.next_due == 0 ? when.due_at : std::min(t.next_due, when.due_at);
                        continue;
                    case row_timing::late:
                        ++t.late;
                        reader_counts::add(counts.late);
                        record_final(row, a.address, outcome_status::skipped, when.why);
                        continue;
                    case row_timing::unscheduled:
                        ++t.unscheduled;
                        reader_counts::add(counts.passed);
                        if (t.unscheduled_examples.size() < unscheduled_examples_max) {
                            t.unscheduled_examples.push_back(fmt::format("line {}: {}", row.line, when.why));
                        }
                        continue;
                }
            }
            if (o.suppress != nullptr && o.suppress->contains_normalized(a.address)) {
                ++t.suppressed;
                reader_counts::add(counts.suppressed);
                record_final(row, a.address, outcome_status::suppressed, "on a suppression list");
                continue;
            }
            auto r = std::make_unique<recipient>();
            r->line = row.line;
            r->row_offset = row.offset;
            r->row_size = static_cast<std::uint32_t>(row.size);
            r->domain_at = static_cast<std::uint32_t>(a.at + 1);
            r->email = std::move(a.address);
            r->smtputf8 = a.needs_smtputf8;
            if (const deferred_row* d = done.deferred_at(row.line)) {
                // Left deferred by a stopped run: retried on its schedule.
                ++t.resumed_deferred;
                r->attempts = d->attempts;
                const auto wait = std::chrono::milliseconds(d->next_attempt_ms) -
                                  std::chrono::duration_cast<std::chrono::milliseconds>(wall_start.time_since_epoch());
                if (!d->in_doubt && wait.count() > 0) {
                    r->not_before = clock::now() + wait;
                }
            }
            for (std::string_view f : *row.fields) {
                r->values += f;
                r->ends.push_back(static_cast<std::uint32_t>(r->values.size()));
            }
            const unsigned k = router.route(r->domain_name());
            batch_bytes[k] += r->values.size();
            batches[k].push_back(std::move(r));
            if (batches[k].size() >= o.batch_size || batch_bytes[k] >= o.batch_bytes_max) {
                shards.push(k, std::move(batches[k]));
                batches[k] = shard::mail_batch();
                batch_bytes[k] = 0;
            }
        }
        if (!shards.failed() && stop_level.load(std::memory_order_relaxed) == 0) {
            read_all.store(true, std::memory_order_release);  // the end of the file: the total is known
        }
        hand_over();
    } catch (...) {
        // The recipients file could not be read on, or the journal not
        // written: what the shards hold is still delivered and journaled.
        reader_error = std::current_exception();
    }
    shards.close_input();
    for (unsigned k = 0; k < n; ++k) {
        t.shard_rows.push_back(router.rows_of(k));
    }
    shards.join();
    end_progress();
    stop_watching.s = nullptr;
    if (o.signals != nullptr) {
        o.signals->stop();
        t.stop_signal = o.signals->first_signal();
    }
    journal.sync();
    if (metrics) {
        sampler.reset();  // joins: the final write is the last
        metrics->sample(shards, counts, true, &providers);
    }
    if (reader_error) {
        std::rethrow_exception(reader_error);
    }
    shards.rethrow_failure();
    t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::map<std::pair<std::string, std::string>, failure_count> failures;
    std::map<std::pair<std::string, std::string>, rule_tally> tallies;
    for (unsigned i = 0; i < n; ++i) {
        const shard_stats& s = shards.stats(i);
        t.delivered += s.delivered;
        t.bounced += s.bounced;
        t.expired += s.expired;
        t.in_doubt += s.in_doubt;
        t.in_flight_peak += s.in_flight_peak;
        t.invalid += s.invalid;  // messages that could not be rendered
        t.deferred += s.deferred;
        t.attempts += s.attempts;
        t.throttled += s.throttled;
        t.throttle_wait_ms += s.throttle_wait_ms;
        t.connections += s.connections_opened;
        t.sent_bytes += s.sent_bytes;
        t.sent_bdat += s.sent_bdat;
        t.sent_data += s.sent_data;
        t.tls_handshakes += s.tls_handshakes;
        t.tls_resumed += s.tls_resumed;
        t.tls_failures += s.tls_failures;
        t.dns_queries += s.dns_queries;
        t.dns_retries += s.dns_retries;
        t.dns_in_flight_peak += s.dns_in_flight_peak;
        t.left_deferred += s.left_deferred;
        t.stopped_in_doubt += s.stopped_in_doubt;
        t.rule_held += s.rule_held;
        t.rule_left += s.rule_left;
        for (const auto& [k, v] : shards.at(i).core().rule_tallies()) {
            rule_tally& r = tallies[k];
            r.count += v.count;
            r.last = v.last;
        }
        for (const auto& [k, v] : shards.at(i).core().failures()) {
            failure_count& f = failures[k];
            if (f.count == 0) {
                f.example = v.example;
            }
            f.count += v.count;
        }
    }
    for (const auto& [k, v] : failures) {
        t.top_failures.emplace_back(k.first + "\t" + v.example, v.count);
    }
    for (const auto& [k, v] : tallies) {
        t.rule_firings.emplace_back(v.last, v.count);
    }
    std::sort(t.top_failures.begin(), t.top_failures.end(),
              [](const auto& a, const auto& b) { return a.second > b.second; });
    if (t.top_failures.size() > 10) {
        t.top_failures.resize(10);
    }
    return t;
}

}  // namespace mxpress::engine
