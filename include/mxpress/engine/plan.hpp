// mxpress/engine/plan.hpp — a shard plan: which machine sends which
// domains (`mxpress plan`, `mxpress send --plan P --shard-index I`).
//
// One list, N machines, no shared state: each [provider."…"] keeps one
// budget only if all its mail leaves from one machine. So domains are
// grouped before they are spread:
// - a domain whose MX hosts all belong to one [provider."…"] (the first
//   section whose match names the host, as config::provider_for says and
//   the delivery core uses) joins that provider's group;
// - else the domains with the same set of MX host names form a group (a
//   host shared by domains with different sets is split: name it in a
//   [provider] section to keep its limits exact);
// - a domain whose lookup failed is a group of its own.
// Groups are bin-packed by row count onto the N shards, largest first onto
// the lightest shard (ties: the lower key, the lower shard), so a plan is a
// pure function of the list, the answers and N.
//
// Every data row belongs to exactly one shard: the shard of its domain; a
// row without a valid address (journaled `invalid`) to shard 0; a domain the
// plan does not name (it cannot be, while the file's fingerprint matches,
// but a plan may be edited) to a stable hash of the domain modulo N, with a
// warning. The plan records the recipients file's size, mtime and a 64-bit
// hash of its bytes; `send --plan` refuses (exit 2) a file whose size or
// hash differ (the mtime is informational: copying the list to a volume
// changes it, not the rows).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "mxpress/detail/json.hpp"
#include "mxpress/detail/json_tree.hpp"
#include "mxpress/engine/config_values.hpp"
#include "mxpress/io/unique_fd.hpp"
#include "mxpress/mail/input_error.hpp"

namespace mxpress::engine {

inline constexpr int plan_version = 1;

// 64-bit FNV-1a, continued over several buffers (h starts at plan_hash_seed).
inline constexpr std::uint64_t plan_hash_seed = 0xcbf29ce484222325ULL;
inline std::uint64_t plan_hash(std::uint64_t h, std::string_view bytes) noexcept {
    for (const char c : bytes) {
        h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
    }
    return h;
}

// What identifies the recipients file a plan was made for.
struct file_fingerprint {
    std::uint64_t size = 0;
    std::int64_t mtime_ns = 0;  // informational
    std::string hash;           // 16 hex digits: FNV-1a 64 of every byte

    bool same_content(const file_fingerprint& o) const noexcept { return size == o.size && hash == o.hash; }
};

// Reads the whole file once (1 MiB at a time). Throws input_error.
inline file_fingerprint fingerprint_file(const std::string& path) {
    const io::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
        throw mail::input_error(path, 0, fmt::format("cannot open recipients file: {}", std::strerror(errno)));
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
        throw mail::input_error(path, 0, "a plan needs a regular recipients file (not a pipe or a directory)");
    }
    file_fingerprint fp;
    fp.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
    std::uint64_t h = plan_hash_seed;
    std::string buf(1 << 20, '\0');
    for (;;) {
        const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            throw mail::input_error(path, 0, fmt::format("cannot read recipients file: {}", std::strerror(errno)));
        }
        if (n == 0) {
            break;
        }
        fp.size += static_cast<std::uint64_t>(n);
        h = plan_hash(h, std::string_view(buf.data(), static_cast<std::size_t>(n)));
    }
    fp.hash = fmt::format("{:016x}", h);
    return fp;
}

// What the grouping depends on in a configuration: each [provider]'s name
// and match patterns, in file order (16 hex digits). `send --plan` warns
// when its configuration's differs from the plan's.
inline std::string providers_fingerprint(const config& c) {
    std::uint64_t h = plan_hash_seed;
    for (const provider_config& p : c.providers) {
        h = plan_hash(plan_hash(h, p.name), std::string_view("\0", 1));
        for (const std::string& m : p.match) {
            h = plan_hash(plan_hash(h, m), std::string_view("\1", 1));
        }
        h = plan_hash(h, std::string_view("\2", 1));
    }
    return fmt::format("{:016x}", h);
}

// One destination domain as the planner saw it.
struct planned_domain {
    std::string domain;
    std::uint64_t rows = 0;
    bool resolved = false;           // false: the lookup failed (its own group)
    std::vector<std::string> hosts;  // MX host names (or the route's host)
    std::string error;               // why the lookup failed
};

struct plan_group {
    std::string key;                   // "provider:NAME", "mx:H1,H2", "domain:D"
    std::string kind;                  // provider | mx | unresolved
    std::string name;                  // the provider, the MX set, or the domain
    std::vector<std::string> domains;  // sorted
    std::uint64_t rows = 0;
    unsigned shard = 0;
};

struct plan_shard {
    std::uint64_t rows = 0;
    std::vector<std::string> domains;  // sorted
    std::vector<std::string> groups;   // keys, in packing order
};

struct shard_plan {
    std::string recipients;  // the path as given to `mxpress plan`
    file_fingerprint fingerprint;
    std::string config;     // the --config the plan grouped with ("" when none)
    std::string providers;  // providers_fingerprint() of that configuration
    unsigned shard_count = 1;
    std::uint64_t rows = 0;          // data rows
    std::uint64_t invalid_rows = 0;  // rows without a valid address: shard 0 journals them
    std::uint64_t unresolved = 0;    // domains whose lookup failed (each its own group)
    std::vector<plan_group> groups;
    std::vector<plan_shard> shards;

    // Builds the domain → shard index (after the groups are known).
    void index() {
        _shard_of.clear();
        for (const plan_group& g : groups) {
            for (const std::string& d : g.domains) {
                _shard_of.emplace(d, g.shard);
            }
        }
    }
    // The shard that sends a row of `domain` ("" for a row without a valid
    // address: shard 0). `known` says whether the plan names the domain.
    unsigned shard_of(std::string_view domain, bool* known = nullptr) const {
        if (known != nullptr) {
            *known = true;
        }
        if (domain.empty()) {
            return 0;
        }
        if (auto it = _shard_of.find(std::string(domain)); it != _shard_of.end()) {
            return it->second;
        }
        if (known != nullptr) {
            *known = false;
        }
        return static_cast<unsigned>(plan_hash(plan_hash_seed, domain) % std::max(1u, shard_count));
    }

private:
    std::unordered_map<std::string, unsigned> _shard_of;
};

// Groups the domains (see the top of this file). Deterministic: groups and
// their domains come out sorted by key and name.
inline std::vector<plan_group> group_domains(const std::vector<planned_domain>& domains, const config& cfg) {
    std::map<std::string, plan_group> by_key;
    for (const planned_domain& d : domains) {
        std::string key;
        std::string kind;
        std::string name;
        if (!d.resolved || d.hosts.empty()) {
            kind = "unresolved";
            name = d.domain;
        } else {
            const provider_config* p = cfg.provider_for(d.hosts.front());
            for (const std::string& h : d.hosts) {
                if (p != nullptr && cfg.provider_for(h) != p) {
                    p = nullptr;
                }
            }
            if (p != nullptr) {
                kind = "provider";
                name = p->name;
            } else {
                std::vector<std::string> hosts = d.hosts;
                std::sort(hosts.begin(), hosts.end());
                hosts.erase(std::unique(hosts.begin(), hosts.end()), hosts.end());
                kind = "mx";
                for (const std::string& h : hosts) {
                    name += name.empty() ? "" : ",";
                    name += h;
                }
            }
        }
        key = (kind == "unresolved" ? std::string("domain") : kind) + ":" + name;
        plan_group& g = by_key[key];
        g.key = key;
        g.kind = kind;
        g.name = name;
        g.domains.push_back(d.domain);
        g.rows += d.rows;
    }
    std::vector<plan_group> out;
    out.reserve(by_key.size());
    for (auto& [k, g] : by_key) {
        std::sort(g.domains.begin(), g.domains.end());
        out.push_back(std::move(g));
    }
    return out;
}

// Largest group first onto the lightest shard (LPT): sets each group's
// shard and returns the shards. Ties: the lower key first, the lower shard.
inline std::vector<plan_shard> bin_pack(std::vector<plan_group>& groups, unsigned n) {
    n = std::max(1u, n);
    std::vector<plan_shard> shards(n);
    std::vector<std::size_t> order(groups.size());
    for (std::size_t k = 0; k < order.size(); ++k) {
        order[k] = k;
    }
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        if (groups[a].rows != groups[b].rows) {
            return groups[a].rows > groups[b].rows;
        }
        return groups[a].key < groups[b].key;
    });
    for (const std::size_t k : order) {
        unsigned best = 0;
        for (unsigned s = 1; s < n; ++s) {
            if (shards[s].rows < shards[best].rows) {
                best = s;
            }
        }
        plan_group& g = groups[k];
        g.shard = best;
        shards[best].rows += g.rows;
        shards[best].groups.push_back(g.key);
        shards[best].domains.insert(shards[best].domains.end(), g.domains.begin(), g.domains.end());
    }
    for (plan_shard& s : shards) {
        std::sort(s.domains.begin(), s.domains.end());
    }
    return shards;
}

// ---- plan.json ----

inline void append_string_array(std::string& out, const std::vector<std::string>& items) {
    out += '[';
    for (std::size_t k = 0; k < items.size(); ++k) {
        out += k == 0 ? "" : ",";
        detail::append_json_string(out, items[k]);
    }
    out += ']';
}

// The plan as a JSON document (one group or shard per line, so that a diff
// of two plans reads).
inline std::string plan_to_json(const shard_plan& p) {
    std::string j = fmt::format("{{\"mxpress_plan\":{},\n\"recipients\":{{\"path\":", plan_version);
    detail::append_json_string(j, p.recipients);
    j += fmt::format(",\"size\":{},\"mtime_ns\":{},\"hash\":", p.fingerprint.size, p.fingerprint.mtime_ns);
    detail::append_json_string(j, p.fingerprint.hash);
    j += "},\n\"config\":";
    detail::append_json_string(j, p.config);
    j += ",\"providers\":";
    detail::append_json_string(j, p.providers);
    j += fmt::format(",\n\"shard_count\":{},\"rows\":{},\"invalid_rows\":{},\"unresolved_domains\":{},\n\"shards\":[",
                     p.shard_count, p.rows, p.invalid_rows, p.unresolved);
    for (std::size_t s = 0; s < p.shards.size(); ++s) {
        j += fmt::format("{}\n {{\"index\":{},\"rows\":{},\"groups\":", s == 0 ? "" : ",", s, p.shards[s].rows);
        append_string_array(j, p.shards[s].groups);
        j += ",\"domains\":";
        append_string_array(j, p.shards[s].domains);
        j += '}';
    }
    j += "],\n\"groups\":[";
    for (std::size_t k = 0; k < p.groups.size(); ++k) {
        const plan_group& g = p.groups[k];
        j += k == 0 ? "\n {\"key\":" : ",\n {\"key\":";
        detail::append_json_string(j, g.key);
        j += ",\"kind\":";
        detail::append_json_string(j, g.kind);
        j += ",\"name\":";
        detail::append_json_string(j, g.name);
        j += fmt::format(",\"rows\":{},\"shard\":{},\"domains\":", g.rows, g.shard);
        append_string_array(j, g.domains);
        j += '}';
    }
    j += "]}\n";
    return j;
}

namespace detail_plan {

inline const detail::json_node& member(const detail::json_node& o, std::string_view key, detail::json_node::kind k,
                                       const std::string& path) {
    const detail::json_node* v = o.find(key);
    if (v == nullptr || !v->is(k)) {
        throw mail::input_error(path, 0, fmt::format("not an mxpress plan: '{}' is missing or of the wrong type", key));
    }
    return *v;
}

inline std::uint64_t count(const detail::json_node& o, std::string_view key, const std::string& path) {
    const detail::json_node& v = member(o, key, detail::json_node::kind::number, path);
    std::uint64_t n = 0;
    for (const char c : v.text) {
        if (c < '0' || c > '9' || n > (UINT64_MAX - 9) / 10) {
            throw mail::input_error(path, 0, fmt::format("plan: '{}' is not a count: {}", key, v.text));
        }
        n = n * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return n;
}

inline std::vector<std::string> strings(const detail::json_node& o, std::string_view key, const std::string& path) {
    std::vector<std::string> out;
    for (const detail::json_node& v : member(o, key, detail::json_node::kind::array, path).items) {
        if (!v.is(detail::json_node::kind::string)) {
            throw mail::input_error(path, 0, fmt::format("plan: '{}' holds something other than strings", key));
        }
        out.push_back(v.text);
    }
    return out;
}

}  // namespace detail_plan

// Reads plan_to_json()'s document back and checks that it is whole: every
// group on a shard that exists, every domain in exactly one group, the
// shards' lists agreeing with the groups'. Throws input_error (exit 2).
inline shard_plan plan_from_json(std::string_view text, const std::string& path) {
    using kind = detail::json_node::kind;
    using namespace detail_plan;
    detail::json_node root;
    try {
        root = detail::parse_json_document(text);
    } catch (const detail::json_syntax_error& e) {
        throw mail::input_error(path, 0, fmt::format("plan is not valid JSON: {}", e.what()));
    }
    if (!root.is(kind::object)) {
        throw mail::input_error(path, 0, "not an mxpress plan: not a JSON object");
    }
    if (count(root, "mxpress_plan", path) != plan_version) {
        throw mail::input_error(path, 0,
                                fmt::format("plan version {} is not {}: plan again with this mxpress",
                                            member(root, "mxpress_plan", kind::number, path).text, plan_version));
    }
    shard_plan p;
    const detail::json_node& r = member(root, "recipients", kind::object, path);
    p.recipients = member(r, "path", kind::string, path).text;
    p.fingerprint.size = count(r, "size", path);
    const std::string& mtime = member(r, "mtime_ns", kind::number, path).text;
    p.fingerprint.mtime_ns = std::strtoll(mtime.c_str(), nullptr, 10);
    p.fingerprint.hash = member(r, "hash", kind::string, path).text;
    p.config = member(root, "config", kind::string, path).text;
    p.providers = member(root, "providers", kind::string, path).text;
    const std::uint64_t n = count(root, "shard_count", path);
    if (n < 1 || n > 100'000) {
        throw mail::input_error(path, 0, fmt::format("plan: shard_count {} is not between 1 and 100000", n));
    }
    p.shard_count = static_cast<unsigned>(n);
    p.rows = count(root, "rows", path);
    p.invalid_rows = count(root, "invalid_rows", path);
    p.unresolved = count(root, "unresolved_domains", path);
    const auto& shards = member(root, "shards", kind::array, path).items;
    if (shards.size() != p.shard_count) {
        throw mail::input_error(
            path, 0, fmt::format("plan: {} shards listed, shard_count says {}", shards.size(), p.shard_count));
    }
    for (std::size_t s = 0; s < shards.size(); ++s) {
        if (!shards[s].is(kind::object) || count(shards[s], "index", path) != s) {
            throw mail::input_error(path, 0, fmt::format("plan: shard {} is out of place", s));
        }
        plan_shard ps;
        ps.rows = count(shards[s], "rows", path);
        ps.groups = strings(shards[s], "groups", path);
        ps.domains = strings(shards[s], "domains", path);
        p.shards.push_back(std::move(ps));
    }
    std::unordered_map<std::string, unsigned> seen;
    for (const detail::json_node& gn : member(root, "groups", kind::array, path).items) {
        if (!gn.is(kind::object)) {
            throw mail::input_error(path, 0, "plan: a group is not an object");
        }
        plan_group g;
        g.key = member(gn, "key", kind::string, path).text;
        g.kind = member(gn, "kind", kind::string, path).text;
        g.name = member(gn, "name", kind::string, path).text;
        g.rows = count(gn, "rows", path);
        const std::uint64_t shard = count(gn, "shard", path);
        if (shard >= p.shard_count) {
            throw mail::input_error(path, 0,
                                    fmt::format("plan: group {} is on shard {} of {}", g.key, shard, p.shard_count));
        }
        g.shard = static_cast<unsigned>(shard);
        g.domains = strings(gn, "domains", path);
        for (const std::string& d : g.domains) {
            if (!seen.emplace(d, g.shard).second) {
                throw mail::input_error(path, 0, fmt::format("plan: domain {} is in two groups", d));
            }
        }
        p.groups.push_back(std::move(g));
    }
    std::size_t listed = 0;
    for (unsigned s = 0; s < p.shard_count; ++s) {
        for (const std::string& d : p.shards[s].domains) {
            auto it = seen.find(d);
            if (it == seen.end() || it->second != s) {
                throw mail::input_error(
                    path, 0, fmt::format("plan: shard {} lists {}, which its groups do not put there", s, d));
            }
            ++listed;
        }
    }
    if (listed != seen.size()) {
        throw mail::input_error(path, 0, "plan: the shards' domain lists and the groups disagree");
    }
    p.index();
    return p;
}

}  // namespace mxpress::engine
