// apps/mxsink/profile.hpp — mxsink --profile FILE.toml: the sink plays a
// provider (issue 10 item 7), seeded and reproducible.
//
//   [default]                        # every recipient domain not named below
//   connections_max = 10             # per client address (only here); beyond it
//   connections_reply = "421 4.7.0 too many connections"   # greeting, then close
//   client_accept_rate = "60/s"      # per client address (only here): RCPTs
//                                    # beyond it, whatever their domain, get
//                                    # the domain's throttle_reply
//   delay_ms = 0                     # each write of replies waits this long
//   [domain."gmail.test"]            # per recipient domain (lower case)
//   accept_rate = "20/s"             # RCPT beyond it gets throttle_reply
//   throttle_reply = "421 4.7.28 ... unusual rate ..."
//   rcpt_4xx = 0.05                  # fractions of RCPTs refused, with
//   rcpt_4xx_reply = "451 4.3.0 ..." # these replies
//   rcpt_5xx = 0.01
//   data_4xx = 0.02                  # fractions of messages refused at the final dot
//   data_5xx = 0.0
//   drop_before_dot = 0.01           # the connection closed after the 354
//   drop_after_dot = 0.01            # the message kept, the connection closed before its 250
//   delay_ms = 100
//
// Promises:
// - parse_profile() is strict: an unknown table or key, a wrong type, a
//   fraction outside 0..1 (or fractions of one command summing above 1), a bad
//   rate or a reply that is not "4xx text"/"5xx text" as the key says is a
//   profile_error naming the file and line. A [domain."…"] inherits every key
//   of [default] that it does not set.
// - Fates are reproducible: decide() is a pure function of the seed, the
//   command, the recipient (or the transaction's recipients) and how many
//   times that key was seen before, so the same --seed and the same mail give
//   the same refusals however connections and threads interleave. The rate
//   (accept_rate) and connections_max depend on time and are not seeded.
// - A reply starting "421" closes the connection after it is sent (RFC 5321
//   §3.8), as the providers do.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/engine/rate.hpp"
#include "mxpress/engine/toml_errors.hpp"
#include "mxpress/mail/input_error.hpp"

namespace mxsink {

struct domain_profile {
    mxpress::engine::rate accept_rate;  // unlimited unless set
    std::string throttle_reply =
        "421 4.7.28 [127.0.0.1] Our system has detected an unusual rate of unsolicited mail originating "
        "from your IP address. To protect our users from spam, mail sent from your IP address has been "
        "temporarily rate limited.";
    double rcpt_4xx = 0;
    double rcpt_5xx = 0;
    double data_4xx = 0;
    double data_5xx = 0;
    double drop_before_dot = 0;
    double drop_after_dot = 0;
    std::string rcpt_4xx_reply = "451 4.3.0 Temporary recipient failure, try again later";
    std::string rcpt_5xx_reply = "550 5.1.1 The email account that you tried to reach does not exist";
    std::string data_4xx_reply = "451 4.3.0 Temporary failure, please try again later";
    std::string data_5xx_reply = "554 5.7.1 Message rejected";
    std::uint32_t delay_ms = 0;
};

struct profile {
    std::uint32_t connections_max = 0;  // per client address; 0: unlimited
    std::string connections_reply = "421 4.7.0 too many connections";
    mxpress::engine::rate client_accept_rate;  // per client address, all domains; unlimited unless set
    domain_profile defaults;
    std::map<std::string, domain_profile, std::less<>> domains;

    const domain_profile& for_domain(std::string_view domain) const {
        const auto it = domains.find(domain);
        return it == domains.end() ? defaults : it->second;
    }
};

// What a command gets; `none` means the ordinary 250/354.
enum class fate { none, throttle, rcpt_4xx, rcpt_5xx, data_4xx, data_5xx, drop_before_dot, drop_after_dot };
inline constexpr std::string_view fate_names[] = {"none",     "throttle", "rcpt_4xx",        "rcpt_5xx",
                                                  "data_4xx", "data_5xx", "drop_before_dot", "drop_after_dot"};

namespace detail_profile {

using mxpress::engine::toml_errors::fail;

inline double fraction(const std::string& file, std::string_view key, const toml::node& n) {
    std::optional<double> v = n.value_exact<double>();
    if (!v) {
        if (const auto i = n.value_exact<std::int64_t>()) {
            v = static_cast<double>(*i);
        }
    }
    if (!v || !(*v >= 0 && *v <= 1)) {
        fail(file, n, fmt::format("{}: expected a fraction from 0 to 1", key));
    }
    return *v;
}

inline std::string reply(const std::string& file, std::string_view key, const toml::node& n, char first) {
    const auto s = n.value_exact<std::string>();
    const bool shape = s && s->size() >= 5 && (*s)[0] == first && mxpress::detail::is_digit((*s)[1]) &&
                       mxpress::detail::is_digit((*s)[2]) && (*s)[3] == ' ' &&
                       s->find_first_of("\r\n") == std::string::npos;
    if (!shape) {
        fail(file, n, fmt::format("{}: expected a reply \"{}xx text\" on one line", key, first));
    }
    return *s;
}

inline std::uint32_t integer(const std::string& file, std::string_view key, const toml::node& n, std::int64_t max) {
    const auto v = n.value_exact<std::int64_t>();
    if (!v || *v < 0 || *v > max) {
        fail(file, n, fmt::format("{}: expected an integer from 0 to {}", key, max));
    }
    return static_cast<std::uint32_t>(*v);
}

inline void domain_keys(const std::string& file, const toml::table& t, domain_profile& d, profile* top) {
    for (auto&& [key, node] : t) {
        const std::string_view k = key.str();
        if (k == "accept_rate" || (top != nullptr && k == "client_accept_rate")) {
            const auto s = node.value_exact<std::string>();
            if (!s || !mxpress::engine::parse_rate(*s, k == "accept_rate" ? d.accept_rate : top->client_accept_rate)) {
                fail(file, node,
                     fmt::format("{}: expected \"N/s\", \"N/min\", \"N/h\" or \"N/d\" (optionally "
                                 "\",burst=B\") or \"unlimited\"",
                                 k));
            }
        } else if (k == "throttle_reply") {
            d.throttle_reply = reply(file, k, node, '4');
        } else if (k == "rcpt_4xx") {
            d.rcpt_4xx = fraction(file, k, node);
        } else if (k == "rcpt_5xx") {
            d.rcpt_5xx = fraction(file, k, node);
        } else if (k == "data_4xx") {
            d.data_4xx = fraction(file, k, node);
        } else if (k == "data_5xx") {
            d.data_5xx = fraction(file, k, node);
        } else if (k == "drop_before_dot") {
            d.drop_before_dot = fraction(file, k, node);
        } else if (k == "drop_after_dot") {
            d.drop_after_dot = fraction(file, k, node);
        } else if (k == "rcpt_4xx_reply") {
            d.rcpt_4xx_reply = reply(file, k, node, '4');
        } else if (k == "rcpt_5xx_reply") {
            d.rcpt_5xx_reply = reply(file, k, node, '5');
        } else if (k == "data_4xx_reply") {
            d.data_4xx_reply = reply(file, k, node, '4');
        } else if (k == "data_5xx_reply") {
            d.data_5xx_reply = reply(file, k, node, '5');
        } else if (k == "delay_ms") {
            d.delay_ms = integer(file, k, node, 600'000);
        } else if (top != nullptr && k == "connections_max") {
            top->connections_max = integer(file, k, node, 1'000'000);
        } else if (top != nullptr && k == "connections_reply") {
            top->connections_reply = reply(file, k, node, '4');
        } else if (k == "connections_max" || k == "connections_reply" || k == "client_accept_rate") {
            fail(file, node, fmt::format("{}: per client address, so only in [default]", k));
        } else {
            fail(file, node, fmt::format("unknown key '{}'", k));
        }
    }
    if (d.rcpt_4xx + d.rcpt_5xx > 1) {
        fail(file, t, "rcpt_4xx + rcpt_5xx is above 1");
    }
    if (d.data_4xx + d.data_5xx + d.drop_before_dot + d.drop_after_dot > 1) {
        fail(file, t, "data_4xx + data_5xx + drop_before_dot + drop_after_dot is above 1");
    }
}

}  // namespace detail_profile

// Parses a profile; `file` names it in errors. Throws mxpress::mail::input_error.
inline profile parse_profile(std::string_view text, const std::string& file) {
    using namespace detail_profile;
    const toml::table root = mxpress::engine::toml_errors::parse_toml(text, file);
    profile p;
    for (auto&& [key, node] : root) {
        if (key.str() != "default" && key.str() != "domain") {
            fail(file, node,
                 fmt::format("unknown table or key '{}' (expected [default] or [domain.\"…\"])", key.str()));
        }
        if (!node.is_table()) {
            fail(file, node, fmt::format("'{}' must be a table", key.str()));
        }
    }
    if (const toml::node* d = root.get("default")) {
        domain_keys(file, *d->as_table(), p.defaults, &p);
    }
    if (const toml::node* ds = root.get("domain")) {
        for (auto&& [name, node] : *ds->as_table()) {
            const toml::table* t = node.as_table();
            if (t == nullptr) {
                fail(file, node, fmt::format("domain.\"{}\" must be a table", name.str()));
            }
            const std::string lower = mxpress::detail::to_lower_copy(name.str());
            if (lower.empty() || lower != name.str()) {
                fail(file, node, fmt::format("domain.\"{}\": write the domain in lower case", name.str()));
            }
            domain_profile d = p.defaults;
            domain_keys(file, *t, d, nullptr);
            p.domains.emplace(lower, std::move(d));
        }
    }
    return p;
}

inline profile load_profile(const std::string& path) {
    return parse_profile(mxpress::mail::read_input_file(path, "--profile"), path);
}

// The seeded, reproducible draw: a number in [0, 1) from the seed, the
// command, the key and the how-many-th time the key was seen.
inline double draw(std::uint64_t seed, std::string_view command, std::string_view key, std::uint64_t nth) {
    std::uint64_t h = 14695981039346656037ull;  // FNV-1a
    for (const std::string_view part : {command, std::string_view("\0", 1), key}) {
        for (const char ch : part) {
            h = (h ^ static_cast<unsigned char>(ch)) * 1099511628211ull;
        }
    }
    std::uint64_t z = seed ^ h ^ (nth * 0x9e3779b97f4a7c15ull);  // splitmix64's finalizer
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * 0x1.0p-53;
}

// The provider mxsink plays, shared by every worker: rates, connection counts,
// seen-counts, and what was refused. One mutex: a profile is for rehearsals,
// not for benchmarks.
class provider {
public:
    provider(profile p, std::uint64_t seed) : _profile(std::move(p)), _seed(seed) {}

    const profile& config() const noexcept { return _profile; }

    // A new connection from `client` (an IPv4 address in network order):
    // false when it is over connections_max (counted as refused).
    bool open(std::uint32_t client) {
        const std::lock_guard<std::mutex> lock(_mutex);
        std::uint32_t& n = _connections[client];
        if (_profile.connections_max != 0 && n >= _profile.connections_max) {
            ++_refused_connections;
            return false;
        }
        ++n;
        return true;
    }
    void close(std::uint32_t client) {
        const std::lock_guard<std::mutex> lock(_mutex);
        const auto it = _connections.find(client);
        if (it != _connections.end() && it->second > 0) {
            --it->second;
        }
    }

    // RCPT TO:<address> from `client` (an IPv4 address in network order):
    // throttle (over the domain's accept_rate or the client's
    // client_accept_rate), rcpt_4xx, rcpt_5xx or none.
    fate rcpt(std::string_view address, mxpress::engine::clock::time_point now, std::uint32_t client = 0) {
        const std::string domain = domain_of(address);
        const domain_profile& d = _profile.for_domain(domain);
        const std::lock_guard<std::mutex> lock(_mutex);
        const double u = draw(_seed, "rcpt", address, _seen[std::string("r\0", 2) + std::string(address)]++);
        fate f = fate::none;
        if (u < d.rcpt_4xx) {
            f = fate::rcpt_4xx;
        } else if (u < d.rcpt_4xx + d.rcpt_5xx) {
            f = fate::rcpt_5xx;
        } else if (!takes(_rates, domain, d.accept_rate, now)) {
            f = fate::throttle;
        }
        if (f == fate::none && !takes(_client_rates, client, _profile.client_accept_rate, now)) {
            f = fate::throttle;
        }
        count(f);
        return f;
    }

    // The DATA of a transaction to these recipients (the first one's domain
    // decides): data_4xx, data_5xx, drop_before_dot, drop_after_dot or none.
    fate data(const std::vector<std::string>& rcpts) {
        std::string key;
        for (const std::string& r : rcpts) {
            key += r;
            key += ',';
        }
        const domain_profile& d = _profile.for_domain(rcpts.empty() ? std::string() : domain_of(rcpts.front()));
        const std::lock_guard<std::mutex> lock(_mutex);
        const double u = draw(_seed, "data", key, _seen[std::string("d\0", 2) + key]++);
        fate f = fate::none;
        double edge = d.data_4xx;
        if (u < edge) {
            f = fate::data_4xx;
        } else if (u < (edge += d.data_5xx)) {
            f = fate::data_5xx;
        } else if (u < (edge += d.drop_before_dot)) {
            f = fate::drop_before_dot;
        } else if (u < edge + d.drop_after_dot) {
            f = fate::drop_after_dot;
        }
        count(f);
        return f;
    }

    // The reply text of a refusal fate (without CRLF).
    std::string_view reply(fate f, std::string_view domain) const {
        const domain_profile& d = _profile.for_domain(domain);
        switch (f) {
            case fate::throttle: return d.throttle_reply;
            case fate::rcpt_4xx: return d.rcpt_4xx_reply;
            case fate::rcpt_5xx: return d.rcpt_5xx_reply;
            case fate::data_4xx: return d.data_4xx_reply;
            case fate::data_5xx: return d.data_5xx_reply;
            default: return {};
        }
    }

    // {"throttle":N,...,"connections":N}: what was refused and why.
    std::string refused_json() const {
        const std::lock_guard<std::mutex> lock(_mutex);
        std::string out = "{";
        for (std::size_t k = 1; k < std::size(fate_names); ++k) {
            out += fmt::format("\"{}\":{},", fate_names[k], _refused[k]);
        }
        out += fmt::format("\"connections\":{}}}", _refused_connections);
        return out;
    }

    static std::string domain_of(std::string_view address) {
        const std::size_t at = address.rfind('@');
        return mxpress::detail::to_lower_copy(at == std::string_view::npos ? std::string_view()
                                                                           : address.substr(at + 1));
    }

private:
    void count(fate f) { ++_refused[static_cast<std::size_t>(f)]; }

    // A cell of `key`'s limiter at rate `r` (made on first use); true when unlimited.
    template <typename Map, typename Key>
    static bool takes(Map& limiters, const Key& key, const mxpress::engine::rate& r,
                      mxpress::engine::clock::time_point now) {
        if (r.unlimited()) {
            return true;
        }
        auto it = limiters.find(key);
        if (it == limiters.end()) {
            it = limiters.emplace(key, mxpress::engine::gcra(r)).first;
        }
        mxpress::engine::clock::time_point when;
        return it->second.take(now, when);
    }

    profile _profile;
    std::uint64_t _seed;
    mutable std::mutex _mutex;
    std::unordered_map<std::uint32_t, std::uint32_t> _connections;
    std::unordered_map<std::string, std::uint64_t> _seen;  // bounded by the distinct mail a run sends
    std::unordered_map<std::string, mxpress::engine::gcra> _rates;
    std::unordered_map<std::uint32_t, mxpress::engine::gcra> _client_rates;
    std::uint64_t _refused[std::size(fate_names)] = {};
    std::uint64_t _refused_connections = 0;
};

}  // namespace mxsink
