// mxpress/engine/pool.hpp — one pool of SMTP connections per MX address,
// port and TLS policy, shared by every domain that delivers there.
//
// Promises:
// - Domains with different TLS policies never share a session: the policy
//   is part of the key; a verified pool also belongs to one MX name (the
//   name its certificate must show).
// - A pool owns the recipients queued for it (`work`); its connections are
//   owned by the core and listed here (borrowed).
// - A pool is freed only when it has no connection, no work and no domain
//   pointing at it, and its host is neither skipped (down_until) nor in its
//   plaintext window (plaintext_until).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "mxpress/engine/config.hpp"
#include "mxpress/engine/provider.hpp"
#include "mxpress/engine/recipient.hpp"
#include "mxpress/net/dns.hpp"

namespace mxpress::engine {

struct connection;

struct mx_pool {
    std::string key;          // "127.0.0.2:25" or "[::1]:25": for messages
    std::string session_key;  // the table key: TLS sessions are kept under it
    sockaddr_storage addr{};
    socklen_t addr_len = 0;
    std::string mx_name;      // host name for the journal, SNI and verification
    net::ip_address address;  // with `port`, what addr holds (the key without its owner: a reload re-keys)
    std::uint16_t port = 0;
    tls_policy tls = tls_policy::opportunistic;
    bool implicit_tls = false;
    clock::time_point plaintext_until{};  // opportunistic TLS failed here: plaintext until then
    clock::time_point down_until{};       // refused lately: no new connection before then
    std::deque<std::unique_ptr<recipient>> work;
    std::vector<connection*> conns;  // borrowed: the core owns them
    std::size_t domain_refs = 0;     // domains whose targets name this pool
    bool dirty = false;              // listed for the scheduler
    // A session worked here once. Until then one connection at a time (slow
    // start): a dead host costs one connect, and the others resume the
    // first one's TLS session instead of each doing a full handshake.
    bool proven = false;
    // A connection limit learned from the receiver: a session refused at its
    // greeting (421, or a refused connect) while others here carry mail sets
    // the ceiling to the sessions that work. One more is tried (a probe) only
    // after probe_after; each refusal doubles the wait, each probe that works
    // raises the ceiling by one. 0: no limit learned.
    std::size_t ceiling = 0;
    // Limits from the configuration: [defaults], lowered by the [domain."…"]
    // section of any domain routed here (a pool shared by domains keeps the
    // strictest), and the pace of new connections (max_connection_rate).
    std::size_t connections_max = 0;
    std::uint64_t messages_per_connection_max = 0;
    // A reload (SIGHUP) lowered connections_max below the connections open
    // here: they close as their transactions end, and until then this many
    // may be open. 0: not shrinking.
    std::size_t shrinking_from = 0;
    gcra connect_pace;
    provider_state* provider = nullptr;  // its host's [provider."…"], shared by the shards
    bool send_wake_armed = false;        // a probe entry wakes it when the head may be sent
    clock::time_point probe_after{};
    std::chrono::milliseconds probe_wait{0};
};

class pool_table {
public:
    // `owner`: a domain with limits of its own (its pools are its alone), or "".
    mx_pool& get(const net::ip_address& a, std::uint16_t port, const std::string& host, tls_policy tls, bool implicit,
                 std::string_view owner = {}) {
        std::string key = a.with_port(port);
        key += '/';
        key += to_string(tls);
        if (implicit) {
            key += "/implicit";
        }
        if (tls == tls_policy::verify) {
            key += '/';
            key += host;
        }
        if (!owner.empty()) {
            key += "/for=";
            key += owner;
        }
        auto [it, inserted] = _pools.try_emplace(key);
        if (inserted) {
            auto p = std::make_unique<mx_pool>();
            p->key = a.with_port(port);
            p->session_key = key;
            p->tls = tls;
            p->implicit_tls = implicit;
            p->mx_name = host;
            p->address = a;
            p->port = port;
            set_address(*p, a, port);
            it->second = std::move(p);
        }
        return *it->second;
    }

    mx_pool* find(const std::string& session_key) {
        auto it = _pools.find(session_key);
        return it == _pools.end() ? nullptr : it->second.get();
    }

    // Frees every pool nothing refers to and that remembers nothing still
    // in force: a host skipped after a failure, or given plaintext after a
    // failed handshake, stays so when its domains come back (they are freed
    // as soon as no recipient of theirs is held).
    void evict_unused(clock::time_point now) {
        for (auto it = _pools.begin(); it != _pools.end();) {
            const mx_pool& p = *it->second;
            if (p.domain_refs == 0 && p.conns.empty() && p.work.empty() && !p.dirty && p.down_until <= now &&
                p.plaintext_until <= now && p.probe_after <= now) {
                it = _pools.erase(it);
            } else {
                ++it;
            }
        }
    }

    std::size_t size() const noexcept { return _pools.size(); }
    template <class F>
    void for_each(F&& f) const {
        for (const auto& [key, p] : _pools) {
            f(*p);
        }
    }

private:
    static void set_address(mx_pool& p, const net::ip_address& a, std::uint16_t port) {
        if (a.family == AF_INET6) {
            auto* sa = reinterpret_cast<sockaddr_in6*>(&p.addr);
            sa->sin6_family = AF_INET6;
            sa->sin6_port = htons(port);
            sa->sin6_addr = a.v6;
            p.addr_len = sizeof(sockaddr_in6);
        } else {
            auto* sa = reinterpret_cast<sockaddr_in*>(&p.addr);
            sa->sin_family = AF_INET;
            sa->sin_port = htons(port);
            sa->sin_addr = a.v4;
            p.addr_len = sizeof(sockaddr_in);
        }
    }

    std::unordered_map<std::string, std::unique_ptr<mx_pool>> _pools;
};

}  // namespace mxpress::engine
