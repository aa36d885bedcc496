// mxpress/engine/runner.hpp — `mxpress send`: the reader thread and the
// delivery shards.
//
// The calling thread is the reader: it streams the recipients file, checks
// every row, journals invalid rows itself, and routes each valid recipient
// by a hash of its domain to one shard's bounded mailbox (blocking when the
// mailbox is full). Each shard runs on its own thread, pinned to a core.
// The run ends when every shard has a final outcome for each recipient it
// got; the journal then has exactly one final line per data row.
#pragma once

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "mxpress/engine/journal.hpp"
#include "mxpress/engine/shard.hpp"
#include "mxpress/mail/address.hpp"
#include "mxpress/mail/recipients.hpp"

namespace mxpress::engine {

struct run_totals {
    std::uint64_t rows = 0;
    std::uint64_t skipped = 0;  // already final in the journal (--resume)
    std::uint64_t invalid = 0;
    std::uint64_t delivered = 0;
    std::uint64_t bounced = 0;
    std::uint64_t expired = 0;
    std::uint64_t deferred = 0;
    std::uint64_t connections = 0;
    std::uint64_t sent_bytes = 0;
    std::uint64_t tls_handshakes = 0;
    std::uint64_t tls_resumed = 0;
    std::uint64_t tls_failures = 0;
    double seconds = 0;
    std::vector<std::pair<std::string, std::uint64_t>> top_failures;  // "domain\treply", count
};

struct runner_options {
    shard_options shard;
    unsigned threads = 1;
    std::uint64_t batch_size = 256;
    bool show_progress = false;
};

// 64-bit FNV-1a: stable across runs, so a domain always lands on the same
// shard for a given --threads.
inline std::uint64_t domain_hash(std::string_view s) {
    std::uint64_t h = 1469598103934665603ULL;
    for (char c : s) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ULL;
    }
    return h;
}

inline run_totals run_delivery(mail::recipients_reader& reader, const mail::message_template& tmpl,
                               shared_journal& journal, const journal_state& done, const runner_options& o) {
    const unsigned n = std::max(1u, o.threads);
    std::vector<std::unique_ptr<shard_stats>> stats;
    std::vector<std::unique_ptr<shard>> shards(n);
    for (unsigned i = 0; i < n; ++i) {
        stats.push_back(std::make_unique<shard_stats>());
    }
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    const unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
    // Each shard is built on its own thread: a SINGLE_ISSUER ring belongs to
    // the thread that created it.
    std::latch built(n);
    std::atomic<unsigned> shards_done{0};
    for (unsigned i = 0; i < n; ++i) {
        threads.emplace_back([&, i]() {
            try {
                shards[i] = std::make_unique<shard>(i, o.shard, tmpl, journal, *stats[i]);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "mxpress: cannot start shard %u: %s\n", i, e.what());
                std::_Exit(1);
            }
            built.count_down();
            try {
                shards[i]->run();
            } catch (const std::exception& e) {
                std::fprintf(stderr, "mxpress: shard %u failed: %s\n", i, e.what());
                journal.sync();
                std::_Exit(1);
            }
            shards_done.fetch_add(1);
        });
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(i % cpus, &set);
        pthread_setaffinity_np(threads.back().native_handle(), sizeof set, &set);
    }
    built.wait();

    run_totals t;
    std::vector<std::vector<recipient*>> batches(n);
    std::string invalid_lines;
    mail::recipient_row row;
    auto record_invalid = [&](const mail::recipient_row& r, const std::string& why) {
        ++t.invalid;
        journal_entry e;
        e.line = r.line;
        e.email = r.email;
        e.status = outcome_status::invalid;
        e.reply = why;
        append_journal_line(invalid_lines, e);
        if (invalid_lines.size() > 64 * 1024) {
            journal.write_batch(invalid_lines);
        }
    };
    auto progress_line = [&]() {
        std::uint64_t delivered = 0, bounced = 0, expired = 0, deferred = 0, in_flight = 0;
        for (auto& s : stats) {
            delivered += s->delivered.load(std::memory_order_relaxed);
            bounced += s->bounced.load(std::memory_order_relaxed) + s->invalid.load(std::memory_order_relaxed);
            expired += s->expired.load(std::memory_order_relaxed);
            deferred += s->deferred.load(std::memory_order_relaxed);
            in_flight += s->in_flight.load(std::memory_order_relaxed);
        }
        const double secs =
            std::max(1e-3, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        const std::uint64_t finals = delivered + bounced + expired + t.invalid;
        const double rate = double(delivered) / secs * 3600;
        const std::uint64_t todo = t.rows - t.skipped;
        const double eta = finals > 0 && todo > finals ? double(todo - finals) * secs / double(finals) : 0;
        std::fprintf(stderr, "\r\033[Ksent %llu (%.0f/h), failed %llu, deferred %llu, in flight %llu, ETA %.0fs",
                     static_cast<unsigned long long>(delivered), rate,
                     static_cast<unsigned long long>(bounced + expired + t.invalid),
                     static_cast<unsigned long long>(deferred), static_cast<unsigned long long>(in_flight), eta);
    };
    auto last_progress = start;
    while (reader.next(row)) {
        ++t.rows;
        if (done.has_final(row.line)) {
            ++t.skipped;
            continue;
        }
        mail::checked_address a;
        if (const std::string why = mail::check_row(row, a); !why.empty()) {
            record_invalid(row, why);
            continue;
        }
        auto* r = new recipient;
        r->line = row.line;
        r->domain_at = static_cast<std::uint32_t>(a.at + 1);
        r->email = std::move(a.address);
        r->smtputf8 = a.needs_smtputf8;
        for (std::string_view f : *row.fields) {
            r->values += f;
            r->ends.push_back(static_cast<std::uint32_t>(r->values.size()));
        }
        const unsigned k = static_cast<unsigned>(domain_hash(r->domain_name()) % n);
        batches[k].push_back(r);
        if (batches[k].size() >= o.batch_size) {
            shards[k]->mailbox().push(std::move(batches[k]));
            batches[k] = {};
        }
        if (o.show_progress && (t.rows & 0xFFF) == 0) {
            const auto now = std::chrono::steady_clock::now();
            if (now - last_progress > std::chrono::milliseconds(500)) {
                last_progress = now;
                progress_line();
            }
        }
    }
    journal.write_batch(invalid_lines);
    for (unsigned i = 0; i < n; ++i) {
        if (!batches[i].empty()) {
            shards[i]->mailbox().push(std::move(batches[i]));
        }
        shards[i]->mailbox().close();
    }
    if (o.show_progress) {
        // Progress while the shards finish.
        while (shards_done.load() < n) {
            std::this_thread::sleep_for(std::chrono::milliseconds(250));
            progress_line();
        }
        std::fputs("\r\033[K", stderr);
    }
    for (std::thread& th : threads) {
        th.join();
    }
    journal.sync();
    t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::map<std::string, std::uint64_t> failures;
    for (unsigned i = 0; i < n; ++i) {
        t.delivered += stats[i]->delivered;
        t.bounced += stats[i]->bounced;
        t.expired += stats[i]->expired;
        t.invalid += stats[i]->invalid;  // messages that could not be rendered
        t.deferred += stats[i]->deferred;
        t.connections += stats[i]->connections_opened;
        t.sent_bytes += stats[i]->sent_bytes;
        t.tls_handshakes += stats[i]->tls_handshakes;
        t.tls_resumed += stats[i]->tls_resumed;
        t.tls_failures += stats[i]->tls_failures;
        for (const auto& [k, v] : shards[i]->failure_counts) {
            failures[k] += v;
        }
    }
    t.top_failures.assign(failures.begin(), failures.end());
    std::sort(t.top_failures.begin(), t.top_failures.end(),
              [](const auto& a, const auto& b) { return a.second > b.second; });
    if (t.top_failures.size() > 10) {
        t.top_failures.resize(10);
    }
    return t;
}

}  // namespace mxpress::engine
