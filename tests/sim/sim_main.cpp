// tests/sim/sim_main.cpp — mxpress_sim: runs the delivery core's
// deterministic simulation for one seed, a range of seeds, or random seeds
// for a while, and prints the command that reproduces any failure.
//
//   mxpress_sim --seed 7                       one seed
//   mxpress_sim --seeds 1-8 --recipients 20000  a fixed set (what ctest runs)
//   mxpress_sim --minutes 10                   random seeds for ten minutes
#include <chrono>
#include <cstdio>
#include <random>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "sim/simulator.hpp"

namespace {

int run_one(const mxpress::sim::world_options& w, bool quiet) {
    const auto t0 = std::chrono::steady_clock::now();
    mxpress::sim::simulator s(w);
    const mxpress::sim::run_report r = s.run();
    const double cpu = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!r.violation.empty()) {
        std::printf(
            "seed %llu: FAILED: %s\nreproduce: mxpress_sim --seed %llu --recipients %zu --domains %zu%s\n",
            static_cast<unsigned long long>(w.seed), r.violation.c_str(), static_cast<unsigned long long>(w.seed),
            w.recipients, w.domains,
            (std::string(w.drain_after_seconds > 0 ? fmt::format(" --drain-after {}", w.drain_after_seconds) : "") +
             (w.shaped ? " --shaped" : "") + (w.rules ? " --rules" : "") +
             (w.reload_after_seconds > 0 ? fmt::format(" --reload-after {}", w.reload_after_seconds) : "") +
             (w.recovery ? " --recovery" : ""))
                .c_str());
        return 1;
    }
    if (!quiet) {
        std::printf(
            "seed %llu: ok: %zu recipients, %zu domains, connections_max %u: %llu delivered, %llu bounced, "
            "%llu expired, %llu invalid, %llu in doubt, %llu unfinished; %llu connections, %llu TLS handshakes, "
            "%llu TLS failures, %llu taken "
            "without a reply, %llu by BDAT; %zu shaped domains checked, %zu recovery windows; rules fired on %zu "
            "throttled domains (%llu "
            "refused, %llu "
            "accepted there); %llu steps, %.0f s simulated in %.2f s\n",
            static_cast<unsigned long long>(w.seed), s.world().recipients, s.world().domains,
            s.options().cfg.connections_max, static_cast<unsigned long long>(r.delivered),
            static_cast<unsigned long long>(r.bounced), static_cast<unsigned long long>(r.expired),
            static_cast<unsigned long long>(r.invalid), static_cast<unsigned long long>(r.in_doubt),
            static_cast<unsigned long long>(r.unfinished), static_cast<unsigned long long>(r.connections),
            static_cast<unsigned long long>(r.tls_handshakes), static_cast<unsigned long long>(r.tls_failures),
            static_cast<unsigned long long>(r.accepted_without_reply),
            static_cast<unsigned long long>(r.accepted_by_bdat), r.shaped_checked, r.recovery_windows, r.rules_fired,
            static_cast<unsigned long long>(r.throttle_refused), static_cast<unsigned long long>(r.throttle_accepted),
            static_cast<unsigned long long>(r.steps), r.simulated_seconds, cpu);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"mxpress_sim: deterministic simulation of the delivery core"};
    mxpress::sim::world_options w;
    std::string seeds;
    double minutes = 0;
    app.add_option("--seed", w.seed, "one seed");
    app.add_option("--seeds", seeds, "a range of seeds, FIRST-LAST");
    app.add_option("--minutes", minutes, "long mode: random seeds for this many minutes");
    app.add_option("--recipients", w.recipients, "recipients per run")->capture_default_str();
    app.add_option("--domains", w.domains, "destination domains per run")->capture_default_str();
    app.add_option("--faulty-hosts", w.faulty_hosts, "share of MX hosts with a fault")->capture_default_str();
    app.add_flag("--shaped", w.shaped, "a quarter of the domains get max_message_rate and connections_max");
    app.add_flag("--rules", w.rules,
                 "a quarter of the other domains' hosts take N messages a minute and answer 421 4.7.28 beyond: "
                 "the built-in rule must fire where it should");
    app.add_option("--drain-after", w.drain_after_seconds,
                   "stop the run (drain, as SIGTERM) after this many simulated seconds");
    app.add_option("--reload-after", w.reload_after_seconds,
                   "with --shaped: reload the configuration (SIGHUP) with new limits after this many simulated "
                   "seconds");
    app.add_flag("--recovery", w.recovery,
                 "a world of its own: rules scale and suspend four domains once each; their receivers must see the "
                 "rate ramp back by the rules' recover");
    app.add_flag("--verbose", w.verbose, "print what the checks measured");
    CLI11_PARSE(app, argc, argv);
    if (w.reload_after_seconds > 0 && !w.shaped) {
        std::fprintf(stderr, "mxpress_sim: --reload-after needs --shaped (the limits it changes)\n");
        return 2;
    }

    if (minutes > 0) {
        const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double, std::ratio<60>>(minutes);
        std::random_device rd;
        std::uint64_t runs = 0;
        while (std::chrono::steady_clock::now() < end) {
            w.seed = (std::uint64_t(rd()) << 32) | rd();
            if (run_one(w, true) != 0) {
                return 1;
            }
            ++runs;
        }
        std::printf("%llu seeds, every invariant held\n", static_cast<unsigned long long>(runs));
        return 0;
    }
    if (!seeds.empty()) {
        const std::size_t dash = seeds.find('-');
        const std::uint64_t first = std::stoull(seeds.substr(0, dash));
        const std::uint64_t last = dash == std::string::npos ? first : std::stoull(seeds.substr(dash + 1));
        int rc = 0;
        for (std::uint64_t s = first; s <= last; ++s) {
            w.seed = s;
            rc |= run_one(w, false);
        }
        return rc;
    }
    return run_one(w, false);
}
