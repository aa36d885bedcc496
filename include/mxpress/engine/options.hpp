// mxpress/engine/options.hpp — what a delivery shard is told at start, and
// the counters it publishes while it runs.
//
// Promises:
// - shard_options is plain data, copied into each shard: nothing in it is
//   shared between threads once the shards run.
// - shard_stats are relaxed atomics written by one shard and read by the
//   reader thread (progress), the runner's metrics sampler (metrics.hpp)
//   and the runner after the shards end.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "mxpress/engine/config.hpp"
#include "mxpress/engine/journal.hpp"
#include "mxpress/engine/provider.hpp"
#include "mxpress/mail/dkim.hpp"
#include "mxpress/mail/row_source.hpp"

namespace mxpress::engine {

class config_reloader;

// A route that skips MX lookup: DOMAIN (or "*") delivered to HOST:PORT.
struct route {
    std::string domain;   // lowercase; "*" matches every domain
    std::string host;     // IP literal or host name (also the name TLS checks)
    std::string address;  // IP literal to use instead of resolving host (relays)
    std::uint16_t port = 25;
    bool implicit_tls = false;      // TLS from the first byte (port 465)
    std::optional<tls_policy> tls;  // overrides the configured policy (relays)
};

// The route for `domain`: its own, else the "*" route, else null (MX lookup).
inline const route* find_route(const std::vector<route>& routes, std::string_view domain) {
    const route* star = nullptr;
    for (const route& r : routes) {
        if (r.domain == domain) {
            return &r;
        }
        if (r.domain == "*") {
            star = &r;
        }
    }
    return star;
}

struct shard_options {
    config cfg;
    std::string dns_servers;  // c-ares CSV ("127.0.0.1:5353"); empty = resolv.conf
    std::uint16_t mx_port = 25;
    std::vector<route> routes;
    std::string from;                                 // envelope sender
    std::shared_ptr<const mail::dkim::key_set> dkim;  // signing keys; null: unsigned
    std::uint64_t message_id_run_key = 0;             // stable Message-IDs per row; 0: a fresh one per attempt
    std::string auth_user;                            // relay AUTH; empty: none
    std::string auth_password;
    // Intake bounds, per shard. A shard takes recipients from its mailbox
    // only while it holds fewer than cfg.pending_max that are not waiting for a
    // retry, their merge fields take fewer than pending_bytes_max, and fewer
    // than deferred_max wait for a retry. Recipients waiting for a retry do
    // not count against pending_max, so one dead domain cannot hold up the
    // others (head-of-line blocking); with `rows` they also drop their merge
    // fields (parked) and read them again from the file when they retry.
    std::size_t pending_bytes_max = 64 * 1024 * 1024;
    std::size_t deferred_max = 1'000'000;
    const mail::row_source* rows = nullptr;  // borrowed; null: fields stay in memory
    // [provider."…"] limits, one object per provider shared by every shard
    // (provider.hpp); borrowed; null or empty: no provider sections.
    const provider_table* providers = nullptr;
    unsigned shard_index = 0;  // which shard this is (set by the shard)
    // Plaintext BDAT bodies leave as command::pieces beside the command
    // bytes (a gather write) instead of copied behind them: for drivers
    // that send pieces (the io_uring shard sets it).
    bool gather_sends = false;
    unsigned shards = 1;  // how many run (set by the runner): they split [dns] queries_in_flight_max
    std::chrono::milliseconds tick{50};
    // After SIGINT/SIGTERM, how long transactions in flight may take to end
    // before their connections are torn down (a second signal: at once).
    std::chrono::milliseconds stop_grace{30'000};
    std::string run_id;  // the journal's "run": every line of this run says it
    // --resume: the last rule firing per scope the journal recorded; a
    // domain's throttle takes it over when the domain is first seen
    // (core_rules.hpp: restore_throttle), a provider's when the run starts.
    std::map<std::string, journal_rule_event> rule_restore;
    // SIGHUP's new configuration (config_reload.hpp): each shard looks once
    // a tick and hands a new one to its core. Borrowed; null: none.
    const config_reloader* reloader = nullptr;
};

// Counters the reader thread reads while shards run.
struct shard_stats {
    // Destinations a rule holds back now (the progress line), refreshed
    // about once a second: how many, and one of them described.
    std::atomic<std::uint32_t> held{0};
    mutable std::mutex held_mutex;
    std::string held_example;  // guarded by held_mutex: "gmail.com: scaled to 1.50/s by gmail-rate"
    std::atomic<std::uint64_t> delivered{0};
    std::atomic<std::uint64_t> bounced{0};
    std::atomic<std::uint64_t> expired{0};
    std::atomic<std::uint64_t> in_doubt{0};          // final: in-doubt (see journal.hpp)
    std::atomic<std::uint64_t> invalid{0};           // rendering failed in the shard
    std::atomic<std::uint64_t> deferred{0};          // temporary failures (each retry counts)
    std::atomic<std::uint64_t> throttled{0};         // sends that waited for a max_message_rate slot
    std::atomic<std::uint64_t> throttle_wait_ms{0};  // how long they waited, in all
    std::atomic<std::uint64_t> attempts{0};          // transactions started (each retry counts)
    std::atomic<std::uint64_t> replies_2xx{0};       // the reply that ended a transaction, by class
    std::atomic<std::uint64_t> replies_4xx{0};
    std::atomic<std::uint64_t> replies_5xx{0};
    std::atomic<std::uint64_t> sent_bdat{0};         // bodies that went out and got their final reply, by BDAT
    std::atomic<std::uint64_t> sent_data{0};         // ... and by DATA
    std::atomic<std::uint64_t> in_flight{0};         // transactions started and not yet journaled
    std::atomic<std::uint64_t> in_flight_peak{0};    // the most at once: what kill -9 could send twice
    std::atomic<std::uint64_t> left_deferred{0};     // journaled `deferred` when the run stopped
    std::atomic<std::uint64_t> stopped_in_doubt{0};  // torn down mid-transaction at the stop
    std::atomic<std::uint64_t> connections_opened{0};
    std::atomic<std::uint64_t> connections_closed{0};  // opened minus closed: open now
    std::atomic<std::uint64_t> sent_bytes{0};
    std::atomic<std::uint64_t> tls_handshakes{0};  // completed
    std::atomic<std::uint64_t> tls_resumed{0};     // of those, resumed sessions
    std::atomic<std::uint64_t> tls_failures{0};    // handshakes that failed or timed out
    std::atomic<std::uint64_t> rule_scaled{0};     // adaptive rules that fired, by action
    std::atomic<std::uint64_t> rule_suspended{0};
    std::atomic<std::uint64_t> rule_stopped{0};
    std::atomic<std::uint64_t> rule_held{0};           // recipients parked while a suspension lasts (each time)
    std::atomic<std::uint64_t> rule_left{0};           // recipients left unfinished: a rule stopped their destination
    std::atomic<std::uint64_t> dns_queries{0};         // DNS questions sent (MX, A, AAAA)
    std::atomic<std::uint64_t> dns_retries{0};         // of those, asked again after a timeout (a lost query)
    std::atomic<std::uint64_t> dns_in_flight_peak{0};  // the most sent and unanswered at once

    static void add(std::atomic<std::uint64_t>& counter, std::uint64_t n = 1) noexcept {
        counter.fetch_add(n, std::memory_order_relaxed);
    }
};

}  // namespace mxpress::engine
