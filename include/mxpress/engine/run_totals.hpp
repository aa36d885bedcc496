// mxpress/engine/run_totals.hpp — what a run of `send` (or one step of
// `steps`) did, summed over the reader and the shards: the summary, the
// --summary-json and the exit status are made from it (apps/mxpress).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "mxpress/engine/sequence.hpp"
#include "mxpress/engine/throttle.hpp"

namespace mxpress::engine {

struct run_totals {
    std::uint64_t rows = 0;
    std::vector<std::uint64_t> shard_rows;  // rows routed to each shard (shard_router.hpp), by index
    std::uint64_t skipped = 0;              // already final in the journal (--resume)
    std::uint64_t invalid = 0;
    std::uint64_t suppressed = 0;  // on a --suppress list: journaled, never sent
    std::uint64_t delivered = 0;
    std::uint64_t bounced = 0;
    std::uint64_t expired = 0;
    std::uint64_t in_doubt = 0;
    std::uint64_t in_flight_peak = 0;
    std::uint64_t throttled = 0;  // sends that waited for a max_message_rate slot
    std::uint64_t throttle_wait_ms =
        0;  // how long they waited, in all  // sum of the shards' peaks: a bound on the kill -9 window
    std::uint64_t deferred = 0;
    std::uint64_t attempts = 0;
    std::uint64_t connections = 0;
    std::uint64_t sent_bytes = 0;
    std::uint64_t sent_bdat = 0;  // bodies sent and answered with a final reply, by BDAT (CHUNKING)
    std::uint64_t sent_data = 0;  // ... by DATA
    std::uint64_t tls_handshakes = 0;
    std::uint64_t tls_resumed = 0;
    std::uint64_t tls_failures = 0;
    std::uint64_t dns_queries = 0;
    std::uint64_t dns_retries = 0;         // queries asked again after a timeout: a lost query, a stall
    std::uint64_t dns_in_flight_peak = 0;  // sum of the shards' peaks: the most the resolver could see at once
    double seconds = 0;
    std::vector<std::pair<std::string, std::uint64_t>> top_failures;  // "domain\treply", count
    int stop_signal = 0;                 // SIGINT or SIGTERM stopped the run (0: it ran to the end)
    std::uint64_t left_deferred = 0;     // journaled `deferred` at the stop
    std::uint64_t stopped_in_doubt = 0;  // torn down mid-transaction at the stop
    std::uint64_t resumed_deferred = 0;  // rows a stopped run left deferred, retried on their schedule
    // Adaptive rules (rules.hpp): firings by rule and scope, every shard's
    // summed (a provider's firings may come from several), and what they held.
    std::vector<std::pair<rule_firing, std::uint64_t>> rule_firings;  // the last firing, and how many
    std::uint64_t rule_held = 0;                                      // parks while a suspension lasted
    std::uint64_t rule_left = 0;  // left unfinished: a rule stopped their destination
    std::uint64_t elsewhere = 0;  // --plan: rows another shard sends (not counted in rows)
    // runner_options::schedule (steps, send_at): rows not yet due, passed
    // over; rows too late, journaled "skipped"; rows without a readable
    // time, passed over (the first few reasons kept, "line N: why").
    std::uint64_t later = 0;
    unix_time next_due = 0;  // the earliest due time among `later` (0: none)
    std::uint64_t late = 0;
    std::uint64_t unscheduled = 0;
    std::vector<std::string> unscheduled_examples;
};

// Reasons kept for the summary; the count has the rest.
inline constexpr std::size_t unscheduled_examples_max = 5;

}  // namespace mxpress::engine
