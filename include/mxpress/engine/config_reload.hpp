// mxpress/engine/config_reload.hpp — SIGHUP re-reads the --config file
// while `mxpress send` runs.
//
// What a reload changes, from each shard's next tick (within 50 ms):
// - [defaults] limits, retries, timeouts and the rest of its keys but two
//   (below); [timeouts];
// - [domain."…"] rates and connection limits; its and [mx."…"]'s tls for
//   hosts routed from then on (an MX answer is kept for mx_cache_ttl);
// - a [provider."…"]'s max_message_rate, connections_max and
//   messages_per_connection_max, for every shard at once (provider.hpp);
// - [[rule]] and [rules]: counts toward triggers start over; a scaled or
//   suspended destination stays so until its rule lets it go.
// What a run cannot change (kept as it started, and named in the log line,
// so an operator knows a restart is needed): tls_ca_file and
// tls_sessions_max (the TLS context and its session caches), [dns] (the
// resolvers), [dkim] (the renderer's keys), and which [provider] sections
// there are with their match and tls (domains are grouped by them).
//
// An invalid file changes nothing: the error (file, line, key, as at the
// start) is logged and the configuration in force stays. Nothing queued is
// touched by a reload: the core only derives its limits again
// (delivery_core::reload).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "mxpress/engine/config.hpp"
#include "mxpress/engine/dkim_config.hpp"
#include "mxpress/mail/input_error.hpp"

namespace mxpress::engine {

namespace detail_reload {

inline bool same_providers(const std::vector<provider_config>& a, const std::vector<provider_config>& b) {
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (a[i].name != b[i].name || a[i].match != b[i].match || a[i].tls != b[i].tls) {
            return false;
        }
    }
    return true;
}

}  // namespace detail_reload

// `next` with what a running send cannot change put back as `running` has
// it; `kept` gets the name of each such setting whose value differed.
inline config merge_for_reload(const config& running, config next, std::vector<std::string>& kept) {
    auto keep = [&](auto& field, const auto& value, const char* name) {
        if (!(field == value)) {
            field = value;
            kept.emplace_back(name);
        }
    };
    keep(next.tls_ca_file, running.tls_ca_file, "[defaults] tls_ca_file");
    keep(next.tls_sessions_max, running.tls_sessions_max, "[defaults] tls_sessions_max");
    const bool dns_same = next.dns_timeout == running.dns_timeout && next.dns_tries == running.dns_tries &&
                          next.dns_queries_in_flight_max == running.dns_queries_in_flight_max &&
                          next.mx_cache_ttl == running.mx_cache_ttl &&
                          next.dns_failure_cache_ttl == running.dns_failure_cache_ttl;
    if (!dns_same) {
        next.dns_timeout = running.dns_timeout;
        next.dns_tries = running.dns_tries;
        next.dns_queries_in_flight_max = running.dns_queries_in_flight_max;
        next.mx_cache_ttl = running.mx_cache_ttl;
        next.dns_failure_cache_ttl = running.dns_failure_cache_ttl;
        kept.emplace_back("[dns]");
    }
    if (describe_dkim(next.dkim) != describe_dkim(running.dkim)) {
        next.dkim = running.dkim;
        kept.emplace_back("[dkim]");
    }
    if (!detail_reload::same_providers(running.providers, next.providers)) {
        next.providers = running.providers;
        kept.emplace_back("[provider] sections, their match and tls");
    }
    return next;
}

// The configuration in force during a run, replaced by reload(). Shards
// poll generation() once a tick and take current() when it moved.
class config_reloader {
public:
    config_reloader(std::string path, const config& initial)
        : _path(std::move(path)), _config(std::make_shared<const config>(initial)) {}

    struct result {
        bool applied = false;
        std::string message;                     // one line for the log, without "mxpress: "
        std::shared_ptr<const config> in_force;  // applied: the configuration now
    };

    // Reads the file again (on the signal watcher's thread).
    result reload() {
        result out;
        std::shared_ptr<const config> running = current();
        config next;
        try {
            next = load_config(_path);
        } catch (const mail::input_error& e) {
            out.message = "SIGHUP: " + e.describe() + "; the configuration in force stays";
            return out;
        } catch (const std::exception& e) {
            out.message = "SIGHUP: " + _path + ": " + e.what() + "; the configuration in force stays";
            return out;
        }
        std::vector<std::string> kept;
        auto merged = std::make_shared<const config>(merge_for_reload(*running, std::move(next), kept));
        {
            const std::lock_guard<std::mutex> lock(_mutex);
            _config = merged;
        }
        _generation.fetch_add(1, std::memory_order_release);
        out.applied = true;
        out.in_force = std::move(merged);
        out.message = "SIGHUP: " + _path + " reloaded";
        if (!kept.empty()) {
            out.message += "; a restart is needed to change ";
            for (std::size_t i = 0; i < kept.size(); ++i) {
                out.message += (i == 0 ? "" : ", ") + kept[i];
            }
            out.message += " (kept as the run started)";
        }
        return out;
    }

    std::uint64_t generation() const noexcept { return _generation.load(std::memory_order_acquire); }
    std::shared_ptr<const config> current() const {
        const std::lock_guard<std::mutex> lock(_mutex);
        return _config;
    }
    const std::string& path() const noexcept { return _path; }

private:
    std::string _path;
    mutable std::mutex _mutex;
    std::shared_ptr<const config> _config;
    std::atomic<std::uint64_t> _generation{0};
};

}  // namespace mxpress::engine
