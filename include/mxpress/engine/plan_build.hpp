// mxpress/engine/plan_build.hpp — `mxpress plan`: read the recipients,
// look up each distinct domain's MX once, group and pack (plan.hpp).
//
// - The file is read twice: once for its fingerprint (every byte), once as
//   CSV (rows per domain, with the address check `send` uses, so both see
//   the same domain of each row). Memory follows the distinct domains, not
//   the rows.
// - Lookups use the shards' resolver (net/dns.hpp, c-ares) on an io_uring
//   of its own: at most plan_options::queries_max at once, each bounded by
//   the configuration's dns_timeout and dns_tries, and the whole wait by a
//   deadline computed from them (past it: an error, exit 1). A domain with
//   a --route is not looked up: its "MX" is the route's host, as in `send`.
// - A lookup that fails (NXDOMAIN, null MX, timeout) leaves the domain in
//   a group of its own; its rows are still planned (`send` journals them
//   bounced or retries them, as usual).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "mxpress/engine/options.hpp"
#include "mxpress/engine/plan.hpp"
#include "mxpress/io/ring.hpp"
#include "mxpress/mail/csv_reader.hpp"
#include "mxpress/mail/recipients.hpp"
#include "mxpress/net/dns.hpp"

namespace mxpress::engine {

struct plan_options {
    std::string recipients;
    std::string config_path;  // recorded in the plan
    config cfg;
    unsigned shards = 1;
    std::string dns_servers;  // c-ares CSV; empty: /etc/resolv.conf
    std::vector<route> routes;
    std::size_t queries_max = 64;
};

// Rows per domain ("" collects rows without a valid address), in one pass.
struct domain_counts {
    std::unordered_map<std::string, std::uint64_t> rows;
    std::uint64_t total = 0;
    std::uint64_t invalid = 0;
};

inline domain_counts count_domains(const std::string& path) {
    const io::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
        throw mail::input_error(path, 0, fmt::format("cannot open recipients file: {}", std::strerror(errno)));
    }
    mail::recipients_reader reader(mail::csv_reader::from_fd(fd.get()), path);
    domain_counts c;
    mail::recipient_row row;
    while (reader.next(row)) {
        ++c.total;
        mail::checked_address a;
        if (!mail::check_row(row, a).empty()) {
            ++c.invalid;
            continue;
        }
        ++c.rows[std::string(a.domain())];
    }
    return c;
}

// Looks up the MX hosts of every domain (or takes its route's host); the
// answers' host names, sorted, in `domains`.
inline void resolve_domains(std::vector<planned_domain>& domains, const plan_options& o) {
    struct wake_op : io::completion {
        bool armed = false;
    } wake;  // before the ring: outlives it
    wake.fn = [](io::completion* c, int, unsigned) { static_cast<wake_op*>(c)->armed = false; };
    io::ring ring(256);
    net::resolver::options ro;
    ro.servers = o.dns_servers;
    ro.timeout_ms = static_cast<int>(o.cfg.dns_timeout.count());
    ro.tries = static_cast<int>(o.cfg.dns_tries);
    ro.queries_in_flight_max = std::max<std::size_t>(1, o.queries_max);
    net::resolver resolver(ring, ro);

    std::size_t pending = 0;
    std::size_t looked_up = 0;
    for (planned_domain& d : domains) {
        if (const route* r = find_route(o.routes, d.domain)) {
            d.resolved = true;
            d.hosts = {r->host};
            continue;
        }
        ++pending;
        ++looked_up;
        resolver.resolve_mx(d.domain, [&pending, &d](const net::mx_answer& a) {
            --pending;
            if (a.status == net::dns_status::ok) {
                d.resolved = true;
                for (const net::mx_target& t : a.targets) {
                    d.hosts.push_back(t.host);
                }
                std::sort(d.hosts.begin(), d.hosts.end());
                d.hosts.erase(std::unique(d.hosts.begin(), d.hosts.end()), d.hosts.end());
            } else {
                d.error = a.reason;
            }
        });
    }
    // Each wave of queries_max lookups: an MX query, then A and AAAA, each
    // tried dns_tries times for dns_timeout; ten seconds to spare.
    const std::size_t waves = (looked_up + ro.queries_in_flight_max - 1) / ro.queries_in_flight_max;
    const auto per_wave = std::chrono::milliseconds(std::int64_t{ro.timeout_ms} * std::max(1, ro.tries) * 2);
    const auto deadline = net::clock::now() + per_wave * static_cast<std::int64_t>(waves) + std::chrono::seconds(10);
    while (pending > 0 || resolver.busy()) {
        if (net::clock::now() > deadline) {
            throw std::runtime_error(fmt::format("plan: {} MX lookups still unanswered past the deadline", pending));
        }
        // A 50 ms timeout bounds each wait, so c-ares can time queries out.
        __kernel_timespec ts = io::timespec_ms(50);
        if (!wake.armed) {
            wake.armed = true;
            io_uring_prep_timeout(ring.sqe(&wake), &ts, 0, 0);
        }
        ring.run(1);  // submits while ts lives (the kernel copies it then)
        resolver.tick();
    }
}

// The whole plan. Throws input_error (exit 2) for the file, runtime_error
// (exit 1) when the lookups could not finish.
inline shard_plan build_plan(const plan_options& o) {
    if (o.shards < 1) {
        throw std::invalid_argument("--shards must be at least 1");
    }
    shard_plan p;
    p.recipients = o.recipients;
    p.config = o.config_path;
    p.providers = providers_fingerprint(o.cfg);
    p.shard_count = o.shards;
    p.fingerprint = fingerprint_file(o.recipients);
    domain_counts counts = count_domains(o.recipients);
    struct stat st {};
    if (::stat(o.recipients.c_str(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) != p.fingerprint.size ||
        static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec != p.fingerprint.mtime_ns) {
        throw mail::input_error(o.recipients, 0, "the recipients file changed while it was planned");
    }
    p.rows = counts.total;
    p.invalid_rows = counts.invalid;
    std::vector<planned_domain> domains;
    domains.reserve(counts.rows.size());
    for (auto& [d, n] : counts.rows) {
        planned_domain pd;
        pd.domain = d;
        pd.rows = n;
        domains.push_back(std::move(pd));
    }
    std::sort(domains.begin(), domains.end(),
              [](const planned_domain& a, const planned_domain& b) { return a.domain < b.domain; });
    resolve_domains(domains, o);
    for (const planned_domain& d : domains) {
        p.unresolved += d.resolved ? 0 : 1;
    }
    p.groups = group_domains(domains, o.cfg);
    p.shards = bin_pack(p.groups, p.shard_count);
    p.index();
    return p;
}

}  // namespace mxpress::engine
