// mxpress/net/dns.hpp — MX resolution with c-ares 1.18, driven by the
// shard's io_uring (no thread, no blocking call).
//
// - c-ares tells which sockets to watch (ARES_OPT_SOCK_STATE_CB); each is
//   polled through the ring; readiness runs ares_process_fd. Timeouts are
//   processed from the shard's tick while queries are outstanding.
// - resolve_mx(domain) gives the delivery targets in RFC 5321 §5.1 order:
//   MX preference, random among equal preference, each MX host's IPv4
//   addresses, then its IPv6 ones; no MX records → the domain's own A
//   records (implicit MX); a null MX (RFC 7505) or NXDOMAIN → permanent
//   failure; SERVFAIL, refused, timeout → temporary failure.
// - Answers are cached per shard: successes (MX sets, and each host's
//   addresses, shared by every domain that names the host) for positive_ttl,
//   failures for negative_ttl (c-ares 1.18's MX parser gives no TTL, so a
//   fixed TTL is used, not the records' own).
// - At most queries_in_flight_max queries (MX, A and AAAA together) are
//   sent and unanswered at once; the rest wait in order (address queries,
//   which finish lookups already under way, before new MX queries). A burst
//   of a thousand queries overflows a resolver's UDP receive buffer (dnsmasq
//   answered 257 of 500 sent at once), and c-ares only notices a lost query
//   when its timeout ends.
// - A lost query is asked again after timeout_ms (300 ms by default), then
//   after twice that each round (c-ares doubles it), `tries` rounds in all.
// - stats(): queries sent, retransmissions after a timeout, and the most
//   in flight at once, for the summary.
#pragma once

#include <algorithm>
#include <array>
#include <arpa/inet.h>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <ares.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <poll.h>

#include <cstring>

#include "mxpress/io/ring.hpp"
#include "mxpress/net/ares_channel.hpp"

namespace mxpress::net {

using clock = std::chrono::steady_clock;

// An IPv4 or IPv6 address.
struct ip_address {
    int family = AF_INET;
    in_addr v4{};
    in6_addr v6{};

    std::string to_string() const {
        char buf[INET6_ADDRSTRLEN] = {};
        inet_ntop(family, family == AF_INET ? static_cast<const void*>(&v4) : static_cast<const void*>(&v6), buf,
                  sizeof buf);
        return buf;
    }
    // "127.0.0.2:25" or "[::1]:25"
    std::string with_port(std::uint16_t port) const {
        return family == AF_INET6 ? "[" + to_string() + "]:" + std::to_string(port)
                                  : to_string() + ":" + std::to_string(port);
    }
    // Parses an IPv4 or IPv6 literal; false when it is neither.
    static bool parse(const std::string& text, ip_address& out) {
        if (inet_pton(AF_INET, text.c_str(), &out.v4) == 1) {
            out.family = AF_INET;
            return true;
        }
        if (inet_pton(AF_INET6, text.c_str(), &out.v6) == 1) {
            out.family = AF_INET6;
            return true;
        }
        return false;
    }
};

struct mx_target {
    std::string host;  // MX host name (or the domain itself for implicit MX)
    std::uint16_t preference = 0;
    std::vector<ip_address> addresses;  // IPv4 first, then IPv6
};

enum class dns_status { ok, permanent, temporary };

struct mx_answer {
    dns_status status = dns_status::temporary;
    std::string enhanced;  // for failures: "5.1.2", "5.1.10", "4.4.3"
    std::string reason;    // for failures: human text for the journal
    std::vector<mx_target> targets;
};

// Interprets the bytes of a successful MX query for `domain`: the MX hosts
// in RFC 5321 §5.1 order (preference, random among equal preference;
// lowercase, no trailing dot; addresses still empty), `implicit` set when the
// answer holds no MX record, or a failure: null MX (RFC 7505, permanent) or
// an answer that does not parse (temporary). Never ok with no target.
inline mx_answer interpret_mx_answer(const std::string& domain, const unsigned char* abuf, int alen, std::mt19937& rng,
                                     bool& implicit) {
    implicit = false;
    mx_answer out;
    ares_mx_reply* mx = nullptr;
    const int prc = ares_parse_mx_reply(abuf, alen, &mx);
    if (prc == ARES_ENODATA) {
        implicit = true;
        return out;
    }
    if (prc != ARES_SUCCESS) {
        out.status = dns_status::temporary;
        out.enhanced = "4.4.3";
        out.reason = "DNS: " + domain + ": bad MX answer (" + ares_strerror(prc) + ")";
        return out;
    }
    bool null_mx = false;
    for (ares_mx_reply* r = mx; r != nullptr; r = r->next) {
        std::string host = r->host == nullptr ? "" : r->host;
        while (!host.empty() && host.back() == '.') {
            host.pop_back();
        }
        if (host.empty()) {
            null_mx = true;
            continue;
        }
        for (char& c : host) {
            c = static_cast<char>((c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c);
        }
        out.targets.push_back(mx_target{host, r->priority, {}});
    }
    ares_free_data(mx);
    if (out.targets.empty()) {
        out.status = null_mx ? dns_status::permanent : dns_status::temporary;
        out.enhanced = null_mx ? "5.1.10" : "4.4.3";
        out.reason = null_mx ? "DNS: " + domain + ": null MX, the domain accepts no mail (RFC 7505)"
                             : "DNS: " + domain + ": MX answer without a usable host";
        return out;
    }
    std::shuffle(out.targets.begin(), out.targets.end(), rng);
    std::stable_sort(out.targets.begin(), out.targets.end(),
                     [](const mx_target& a, const mx_target& b) { return a.preference < b.preference; });
    out.status = dns_status::ok;
    return out;
}

class resolver {
public:
    using callback = std::function<void(const mx_answer&)>;

    struct options {
        std::string servers;  // "127.0.0.1:5353" (c-ares CSV syntax); empty: /etc/resolv.conf
        int timeout_ms = 300;
        int tries = 5;
        // Kept to the millisecond: `[dns] failure_cache_ttl = "500ms"` is 500 ms, not 0.
        std::chrono::milliseconds positive_ttl{300'000};
        std::chrono::milliseconds negative_ttl{30'000};
        std::size_t queries_in_flight_max = 64;
    };

    struct counters {
        std::uint64_t queries = 0;         // sent to c-ares (each MX, A, AAAA question once)
        std::uint64_t retries = 0;         // asked again after a timeout (c-ares' count, per query)
        std::uint64_t in_flight_peak = 0;  // the most sent and unanswered at once
    };

    resolver(io::ring& ring, options o) : _ring(ring), _options(std::move(o)), _rng(std::random_device{}()) {
        _channel =
            open_ares_channel(_options.servers, _options.timeout_ms, _options.tries, &resolver::on_sock_state, this);
    }
    resolver(const resolver&) = delete;
    resolver& operator=(const resolver&) = delete;
    ~resolver() {
        _destroying = true;
        ares_destroy(_channel);  // runs pending callbacks with ARES_EDESTRUCTION
        // Queries never sent end the same way, so their jobs are freed.
        while (!_address_queue.empty()) {
            const queued_query q = std::move(_address_queue.front());
            _address_queue.pop_front();
            ++_in_flight;  // the callback counts it out
            q.done(q.arg, ARES_EDESTRUCTION, 0, nullptr, 0);
        }
        // The ring's completions are not read any more: a watch whose poll
        // was still armed (or being removed) is freed here, not on_poll.
        for (const auto& [fd, w] : _watches) {
            delete w;
        }
        for (watch* w : _dying) {
            delete w;
        }
    }

    // Resolves `domain` (lowercase A-labels); `done` runs later on this
    // thread, or at once from the cache.
    void resolve_mx(const std::string& domain, callback done) {
        const auto now = clock::now();
        if (auto it = _cache.find(domain); it != _cache.end() && it->second.expires > now) {
            done(it->second.answer);
            return;
        }
        auto& waiters = _waiting[domain];
        waiters.push_back(std::move(done));
        if (waiters.size() > 1) {
            return;  // a lookup for this domain is already under way
        }
        _queue.push_back(domain);
        pump();
    }

    // Resolves a host name to its addresses (for --route HOST).
    void resolve_host(const std::string& host, callback done) {
        auto* job = new lookup{this, host, {}, {}, 0, std::move(done), true};
        job->targets.push_back(mx_target{host, 0, {}});
        lookup_addresses(job);  // may complete (and free job) at once from the cache
        pump();
    }

    bool busy() const noexcept { return _in_flight > 0 || !_queue.empty() || !_address_queue.empty(); }

    const counters& stats() const noexcept { return _counters; }

    // Called from the shard's tick: lets c-ares time out queries, and drops
    // expired cache entries now and then, so the caches hold the live
    // domains and hosts, not every one ever seen.
    void tick() {
        if (_in_flight > 0) {
            // Read the sockets first, then let c-ares time queries out: an
            // answer that came while this turn was busy elsewhere is not a
            // lost query (c-ares reads before it checks timeouts). The fds
            // are copied: processing may close a socket and change _watches.
            std::array<ares_socket_t, tick_sockets_max> fds{};
            std::size_t n = 0;
            for (const auto& [fd, w] : _watches) {
                if (n == fds.size()) {
                    break;
                }
                fds[n++] = fd;
            }
            if (n == 0) {
                ares_process_fd(_channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
            }
            for (std::size_t i = 0; i < n; ++i) {
                ares_process_fd(_channel, fds[i], ARES_SOCKET_BAD);
            }
        }
        const auto now = clock::now();
        if (now - _last_prune >= prune_every) {
            _last_prune = now;
            std::erase_if(_cache, [&](const auto& kv) { return kv.second.expires <= now; });
            std::erase_if(_hosts, [&](const auto& kv) { return kv.second.expires <= now; });
        }
    }

    std::size_t cached_entries() const noexcept { return _cache.size() + _hosts.size(); }

private:
    struct watch : io::completion {
        resolver* owner = nullptr;
        int fd = -1;
        bool dead = false;  // c-ares stopped using the socket; free on completion
        bool armed = false;
        unsigned events = 0;
    };

    struct lookup {
        resolver* self;
        std::string domain;
        std::vector<mx_target> targets;  // MX hosts in order, addresses filled in
        mx_answer answer;
        std::size_t pending_a = 0;  // targets whose addresses are not known yet
        callback host_done;         // for resolve_host only
        bool host_only = false;
    };

    // The A and AAAA lookups of one host name, shared by every lookup that
    // needs it (many domains use the same MX hosts).
    struct host_lookup {
        resolver* self;
        std::string host;
        int pending = 2;           // A and AAAA
        int error = ARES_SUCCESS;  // a temporary failure of either query
        std::vector<ip_address> v4;
        std::vector<ip_address> v6;
        std::vector<std::pair<lookup*, std::size_t>> waiters;  // (lookup, target index)
    };

    struct a_job {
        host_lookup* parent;
        bool v6;
    };

    struct cached_host {
        std::vector<ip_address> addresses;  // IPv4 first, then IPv6; may be empty (no address)
        clock::time_point expires;
    };

    struct cached {
        mx_answer answer;
        clock::time_point expires;
    };

    // A question waiting for a place among the queries in flight.
    struct queued_query {
        std::string name;
        int type = ns_t_a;
        ares_callback done = nullptr;
        void* arg = nullptr;
    };

    void send_query(const std::string& name, int type, ares_callback done, void* arg) {
        ++_in_flight;
        ++_counters.queries;
        _counters.in_flight_peak = std::max<std::uint64_t>(_counters.in_flight_peak, _in_flight);
        ares_query(_channel, name.c_str(), ns_c_in, type, done, arg);  // may call back at once (a bad name)
    }

    // An answer (or a final failure) came: one place is free again.
    void query_done(int timeouts) {
        --_in_flight;
        _counters.retries += static_cast<std::uint64_t>(std::max(0, timeouts));
    }

    // Sends waiting queries while places are free: address queries first
    // (they finish lookups already started), then the next domains' MX
    // queries, each in the order they came. Reentrant calls (a callback
    // that runs inside ares_query) return: the outer loop goes on. Each turn
    // takes one item off a queue, so the loop ends.
    void pump() {
        if (_pumping || _destroying) {
            return;
        }
        _pumping = true;
        while (_in_flight < _options.queries_in_flight_max) {
            if (!_address_queue.empty()) {
                const queued_query q = std::move(_address_queue.front());
                _address_queue.pop_front();
                send_query(q.name, q.type, q.done, q.arg);
            } else if (!_queue.empty()) {
                const std::string domain = std::move(_queue.front());
                _queue.pop_front();
                send_query(domain, ns_t_mx, &resolver::on_mx_answer, new lookup{this, domain, {}, {}, 0, {}, false});
            } else {
                break;
            }
        }
        _pumping = false;
    }

    static mx_answer failure(dns_status s, std::string enhanced, std::string reason) {
        mx_answer a;
        a.status = s;
        a.enhanced = std::move(enhanced);
        a.reason = std::move(reason);
        return a;
    }

    static mx_answer classify_error(const std::string& name, int status, bool implicit) {
        switch (status) {
            case ARES_ENOTFOUND:
                return failure(dns_status::permanent, "5.1.2", "DNS: " + name + ": domain does not exist (NXDOMAIN)");
            case ARES_ENODATA:
                return failure(
                    dns_status::permanent, "5.1.2",
                    implicit ? "DNS: " + name + ": no MX and no A record" : "DNS: " + name + ": no address records");
            default:
                return failure(dns_status::temporary, "4.4.3",
                               "DNS: " + name + ": temporary failure (" + ares_strerror(status) + ")");
        }
    }

    static void on_mx_answer(void* arg, int status, int timeouts, unsigned char* abuf, int alen) {
        auto* job = static_cast<lookup*>(arg);
        resolver* self = job->self;
        self->query_done(timeouts);
        if (self->_destroying) {
            delete job;
            return;
        }
        self->on_mx_result(job, status, abuf, alen);
        self->pump();
    }

    void on_mx_result(lookup* job, int status, unsigned char* abuf, int alen) {
        if (status == ARES_ENODATA) {
            // No MX: the domain itself is the implicit MX (RFC 5321 §5.1).
            job->targets.push_back(mx_target{job->domain, 0, {}});
            lookup_addresses(job);
            return;
        }
        if (status != ARES_SUCCESS) {
            finish(job, classify_error(job->domain, status, false));
            return;
        }
        bool implicit = false;
        mx_answer answer = interpret_mx_answer(job->domain, abuf, alen, _rng, implicit);
        if (implicit) {
            job->targets.push_back(mx_target{job->domain, 0, {}});
            lookup_addresses(job);
            return;
        }
        if (answer.status != dns_status::ok) {
            finish(job, std::move(answer));
            return;
        }
        job->targets = std::move(answer.targets);
        lookup_addresses(job);
    }

    // Addresses for every target, from the host cache or from A and AAAA
    // queries shared with other lookups; the lookup completes when all are known.
    void lookup_addresses(lookup* job) {
        job->pending_a = job->targets.size();
        const auto now = clock::now();
        // Copy the names first: a cached target may complete (and free) the job.
        std::vector<std::string> hosts;
        for (const mx_target& t : job->targets) {
            hosts.push_back(t.host);
        }
        for (std::size_t i = 0; i < hosts.size(); ++i) {
            if (auto it = _hosts.find(hosts[i]); it != _hosts.end() && it->second.expires > now) {
                address_known(job, i, it->second.addresses, ARES_SUCCESS);
                continue;
            }
            host_lookup*& h = _host_lookups[hosts[i]];
            if (h == nullptr) {
                h = new host_lookup{this, hosts[i], 2, ARES_SUCCESS, {}, {}, {}};
                for (bool v6 : {false, true}) {
                    _address_queue.push_back(queued_query{hosts[i], v6 ? ns_t_aaaa : ns_t_a,
                                                          &resolver::on_address_answer, new a_job{h, v6}});
                }
            }
            h->waiters.emplace_back(job, i);
        }
    }

    static void parse_addresses(unsigned char* abuf, int alen, bool v6, std::vector<ip_address>& out) {
        if (v6) {
            ares_addr6ttl ttls[32];
            int n = 32;
            if (ares_parse_aaaa_reply(abuf, alen, nullptr, ttls, &n) == ARES_SUCCESS) {
                for (int k = 0; k < n; ++k) {
                    ip_address a;
                    a.family = AF_INET6;
                    std::memcpy(&a.v6, &ttls[k].ip6addr, sizeof a.v6);
                    out.push_back(a);
                }
            }
            return;
        }
        ares_addrttl ttls[32];
        int n = 32;
        if (ares_parse_a_reply(abuf, alen, nullptr, ttls, &n) == ARES_SUCCESS) {
            for (int k = 0; k < n; ++k) {
                ip_address a;
                a.family = AF_INET;
                a.v4 = ttls[k].ipaddr;
                out.push_back(a);
            }
        }
    }

    static void on_address_answer(void* arg, int status, int timeouts, unsigned char* abuf, int alen) {
        auto* a = static_cast<a_job*>(arg);
        resolver* self = a->parent->self;
        self->query_done(timeouts);
        self->on_address_result(a, status, abuf, alen);
        self->pump();
    }

    void on_address_result(a_job* a, int status, unsigned char* abuf, int alen) {
        host_lookup* h = a->parent;
        const bool v6 = a->v6;
        delete a;
        if (status == ARES_SUCCESS) {
            parse_addresses(abuf, alen, v6, v6 ? h->v6 : h->v4);
        } else if (status != ARES_ENODATA && status != ARES_ENOTFOUND) {
            h->error = status;
        }
        if (--h->pending > 0) {
            return;
        }
        _host_lookups.erase(h->host);
        std::vector<ip_address> addresses = std::move(h->v4);
        addresses.insert(addresses.end(), h->v6.begin(), h->v6.end());
        if (h->error == ARES_SUCCESS || !addresses.empty()) {
            const auto ttl = addresses.empty() ? _options.negative_ttl : _options.positive_ttl;
            _hosts[h->host] = cached_host{addresses, clock::now() + ttl};
        }
        const std::vector<std::pair<lookup*, std::size_t>> waiters = std::move(h->waiters);
        const int error = h->error;
        delete h;
        for (const auto& [job, index] : waiters) {
            address_known(job, index, addresses, error);
        }
    }

    // One target's addresses are known; completes the lookup after the last.
    void address_known(lookup* job, std::size_t index, const std::vector<ip_address>& addresses, int error) {
        job->targets[index].addresses = addresses;
        if (addresses.empty() && error != ARES_SUCCESS && job->answer.reason.empty()) {
            job->answer = classify_error(job->targets[index].host, error, false);
        }
        if (--job->pending_a > 0) {
            return;
        }
        if (_destroying) {
            delete job;
            return;
        }
        std::vector<mx_target> usable;
        for (mx_target& t : job->targets) {
            if (!t.addresses.empty()) {
                usable.push_back(std::move(t));
            }
        }
        mx_answer result;
        if (!usable.empty()) {
            result.status = dns_status::ok;
            result.targets = std::move(usable);
        } else if (!job->answer.reason.empty()) {
            result = job->answer;  // a temporary failure of some address lookup
        } else {
            const bool implicit = job->targets.size() == 1 && job->targets[0].host == job->domain;
            result = implicit ? classify_error(job->domain, ARES_ENODATA, true)
                              : failure(dns_status::permanent, "5.1.2",
                                        "DNS: " + job->domain + ": no MX host has an address");
        }
        if (job->host_only) {
            callback done = std::move(job->host_done);
            delete job;
            done(result);
            return;
        }
        finish(job, std::move(result));
    }

    void finish(lookup* job, mx_answer answer) {
        const auto ttl = answer.status == dns_status::ok ? _options.positive_ttl : _options.negative_ttl;
        _cache[job->domain] = cached{answer, clock::now() + ttl};
        auto node = _waiting.extract(job->domain);
        delete job;
        if (!node.empty()) {
            for (callback& cb : node.mapped()) {
                cb(answer);
            }
        }
    }

    // c-ares: start, change or stop watching a socket.
    static void on_sock_state(void* data, ares_socket_t fd, int readable, int writable) {
        auto* self = static_cast<resolver*>(data);
        auto it = self->_watches.find(fd);
        if (!readable && !writable) {
            if (it != self->_watches.end()) {
                watch* w = it->second;
                self->_watches.erase(it);
                w->dead = true;
                if (w->armed) {
                    io_uring_prep_poll_remove(self->_ring.sqe(nullptr), reinterpret_cast<std::uint64_t>(w));
                    self->_dying.insert(w);  // freed by on_poll, or by the destructor if that never comes
                } else {
                    delete w;
                }
            }
            return;
        }
        watch* w = nullptr;
        if (it == self->_watches.end()) {
            w = new watch;
            w->owner = self;
            w->fd = fd;
            w->fn = &resolver::on_poll;
            self->_watches[fd] = w;
        } else {
            w = it->second;
        }
        w->events = (readable ? POLLIN : 0u) | (writable ? POLLOUT : 0u);
        if (!w->armed) {
            self->arm(w);
        }
    }

    void arm(watch* w) {
        w->armed = true;
        io_uring_prep_poll_add(_ring.sqe(w), w->fd, w->events);
    }

    static void on_poll(io::completion* c, int res, unsigned /*flags*/) {
        auto* w = static_cast<watch*>(c);
        w->armed = false;
        if (w->dead) {
            w->owner->_dying.erase(w);
            delete w;
            return;
        }
        resolver* self = w->owner;
        const int fd = w->fd;
        if (res < 0 && res != -ECANCELED) {
            // Let c-ares see the error on the socket.
            ares_process_fd(self->_channel, fd, ARES_SOCKET_BAD);
        } else if (res >= 0) {
            const bool r = (res & (POLLIN | POLLERR | POLLHUP)) != 0;
            const bool wr = (res & POLLOUT) != 0;
            ares_process_fd(self->_channel, r ? fd : ARES_SOCKET_BAD, wr ? fd : ARES_SOCKET_BAD);
        }
        // Processing may have closed the socket (and deleted nothing: w is
        // freed only here) or changed interest; re-arm if still watched.
        auto it = self->_watches.find(fd);
        if (it != self->_watches.end() && it->second == w && !w->armed) {
            self->arm(w);
        }
    }

    io::ring& _ring;
    options _options;
    ares_channel _channel = nullptr;
    std::mt19937 _rng;
    std::unordered_map<int, watch*> _watches;
    std::unordered_set<watch*> _dying;  // dead, their poll still armed: freed when it completes
    static constexpr auto prune_every = std::chrono::seconds(30);
    static constexpr std::size_t tick_sockets_max = 16;  // one UDP socket per server (and TCP for truncation)
    clock::time_point _last_prune = clock::now();
    std::unordered_map<std::string, cached> _cache;
    std::unordered_map<std::string, cached_host> _hosts;          // host name -> addresses
    std::unordered_map<std::string, host_lookup*> _host_lookups;  // in flight
    std::unordered_map<std::string, std::vector<callback>> _waiting;
    std::deque<std::string> _queue;           // domains whose MX query waits for a place
    std::deque<queued_query> _address_queue;  // A and AAAA queries waiting for a place
    std::size_t _in_flight = 0;               // queries sent and not yet answered
    counters _counters;
    bool _pumping = false;
    bool _destroying = false;
};

}  // namespace mxpress::net
