// mxpress/engine/sender_check.hpp — `mxpress check-sender`: is what DNS
// publishes for a sender consistent with the [dkim] configuration, before a
// real send? A pure function of the configuration, the keys as loaded, the
// sender's two domains and the TXT answers, so it is tested without DNS.
//
// Two domains: the header From's (RFC 5322.From: DMARC and alignment) and
// the envelope's (RFC 5321.MailFrom: SPF); every finding about one names it.
//
// Findings, one line each, ok / warning / FATAL:
// 1. each [[dkim.key]]: SELECTOR._domainkey.DOMAIN publishes a key record
//    whose p= is the configured key's public half and whose k= is its type;
//    an RSA key under 1024 bits is fatal, under 2048 a warning;
// 2. a DMARC record (v=DMARC1) at _dmarc.FROM-DOMAIN, or at its
//    organizational domain (RFC 7489 §3.2, by the public suffix list; without
//    the list, a warning and one label less); its tags are read: v=DMARC1
//    first and a valid p= (else a warning naming what is wrong), sp= for a
//    From domain below the record's, adkim= and aspf= r or s;
// 3. one SPF record (v=spf1) at the envelope domain (two: RFC 7208 §4.5
//    permerror, fatal);
// 4. a key's d= is the From domain or a parent of it (as the signer picks
//    keys) in the same organizational domain (relaxed alignment; adkim=s:
//    d= is the From domain itself); unaligned is fatal under p=quarantine or
//    p=reject, a warning under p=none or no record; a key past its
//    not_after is not used by the signer, so it does not count (a warning);
// 5. List-Unsubscribe and List-Unsubscribe-Post are among the signed headers.
// A name whose lookup failed (SERVFAIL, timeout) is fatal: it cannot be
// checked, and a receiver would see the same failure.
#pragma once

#include <algorithm>
#include <ctime>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/engine/public_suffix.hpp"
#include "mxpress/mail/dkim.hpp"
#include "mxpress/net/txt_lookup.hpp"

namespace mxpress::engine::sender_check {

enum class severity { ok, warning, fatal };

inline const char* to_string(severity s) noexcept {
    return s == severity::ok ? "ok" : s == severity::warning ? "warning" : "FATAL";
}

struct finding {
    severity level = severity::ok;
    std::string text;
};

// One [[dkim.key]]: the key as loaded, or why it could not be.
struct configured_key {
    mail::dkim::key_spec spec;
    std::optional<mail::dkim::loaded_key> key;
    std::string error;
};

using txt_map = std::map<std::string, net::txt_answer>;

// The sender's two domains, lowercase.
struct sender_domains {
    std::string header_from;  // RFC 5322.From: DMARC is looked up and aligned here
    std::string envelope;     // RFC 5321.MailFrom: SPF is looked up here
};

// What check() reads besides the configuration and DNS.
struct context {
    const public_suffix::list* psl = nullptr;  // null: one label less stands in (a warning)
    std::string psl_error;                     // why there is no list
    std::time_t now = 0;                       // keys past not_after at this instant do not count
};

// The domain with one label less ("news.town.example" -> "town.example");
// empty when that would leave a single label (a TLD is no organizational
// domain).
inline std::string parent_domain(std::string_view d) {
    const std::size_t dot = d.find('.');
    if (dot == std::string_view::npos) {
        return {};
    }
    const std::string_view rest = d.substr(dot + 1);
    return rest.find('.') == std::string_view::npos ? std::string{} : std::string(rest);
}

// The organizational domain of `d` (RFC 7489 §3.2) by `psl`; without a
// list, one label less, or `d` itself when that would leave a single label.
inline std::string organizational_domain(std::string_view d, const public_suffix::list* psl) {
    if (psl != nullptr) {
        return psl->organizational_domain(d);
    }
    std::string parent = parent_domain(d);
    return parent.empty() ? std::string(d) : parent;
}

// Where DMARC is looked up for From domain `from`, in order (RFC 7489
// §6.6.3): _dmarc.FROM, then _dmarc.ORGANIZATIONAL-DOMAIN when it differs.
inline std::vector<std::string> dmarc_names(const std::string& from, const public_suffix::list* psl) {
    std::vector<std::string> names{"_dmarc." + from};
    if (const std::string org = organizational_domain(from, psl); org != from) {
        names.push_back("_dmarc." + org);
    }
    return names;
}

inline std::string dkim_name(const mail::dkim::key_spec& k) {
    return k.selector + "._domainkey." + k.domain;
}

// Every name check() reads, for the caller to look up.
inline std::vector<std::string> names_to_query(const mail::dkim::settings& dkim, const sender_domains& sender,
                                               const context& ctx) {
    std::vector<std::string> names;
    for (const mail::dkim::key_spec& k : dkim.keys) {
        names.push_back(dkim_name(k));
    }
    for (std::string& n : dmarc_names(sender.header_from, ctx.psl)) {
        names.push_back(std::move(n));
    }
    names.push_back(sender.envelope);
    return names;
}

namespace detail_sender_check {

inline std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
        s.remove_suffix(1);
    }
    return s;
}

// A tag=value list (RFC 6376 §3.2) as lowercase tag -> value, values trimmed.
inline std::map<std::string, std::string> tags(std::string_view record) {
    std::map<std::string, std::string> out;
    std::size_t start = 0;
    while (start <= record.size()) {
        std::size_t semi = record.find(';', start);
        if (semi == std::string_view::npos) {
            semi = record.size();
        }
        const std::string_view item = record.substr(start, semi - start);
        const std::size_t eq = item.find('=');
        if (eq != std::string_view::npos) {
            out.emplace(detail::to_lower_copy(std::string(trim(item.substr(0, eq)))),
                        std::string(trim(item.substr(eq + 1))));
        }
        start = semi + 1;
    }
    return out;
}

inline std::string without_space(std::string_view s) {
    std::string out;
    for (char c : s) {
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            out += c;
        }
    }
    return out;
}

// The record starts with `version` (case-insensitive) followed by the end,
// a space or ';': "v=spf1 …", "v=DMARC1; p=none".
inline bool starts_with_version(std::string_view record, std::string_view version) {
    record = trim(record);
    if (record.size() < version.size() || !detail::iequals(record.substr(0, version.size()), version)) {
        return false;
    }
    return record.size() == version.size() || record[version.size()] == ' ' || record[version.size()] == ';';
}

// DMARC's policies (RFC 7489 §6.3 p=, sp=).
inline constexpr std::string_view dmarc_policies[] = {"none", "quarantine", "reject"};

// A DMARC record's tags that check() uses, or what is wrong with it.
struct dmarc_record {
    std::string error;             // empty: well-formed
    std::string policy;            // p=: none, quarantine or reject (lowercase)
    std::string subdomain_policy;  // sp=: the same; empty when absent (then p= applies)
    bool strict_dkim = false;      // adkim=s
    bool strict_spf = false;       // aspf=s
};

// A record that claims to be DMARC: some tag is v=DMARC1.
inline bool names_dmarc1(std::string_view record) {
    const auto t = tags(record);
    const auto v = t.find("v");
    return v != t.end() && detail::iequals(v->second, "DMARC1");
}

// `record`'s tags (RFC 7489 §6.3, §6.4): v=DMARC1 must come first, p= be a
// policy, sp= one when present, adkim= and aspf= r or s when present.
inline dmarc_record parse_dmarc(std::string_view record) {
    dmarc_record d;
    const std::string_view first = record.substr(0, record.find(';'));
    const std::size_t eq = first.find('=');
    if (eq == std::string_view::npos || !detail::iequals(trim(first.substr(0, eq)), "v") ||
        !detail::iequals(trim(first.substr(eq + 1)), "DMARC1")) {
        d.error = "v=DMARC1 is not its first tag";
        return d;
    }
    const auto t = tags(record);
    auto policy = [&](const char* tag, std::string& out) {
        const auto it = t.find(tag);
        if (it == t.end()) {
            return true;
        }
        out = detail::to_lower_copy(it->second);
        return std::find(std::begin(dmarc_policies), std::end(dmarc_policies), out) != std::end(dmarc_policies);
    };
    auto mode = [&](const char* tag, bool& strict) {
        const auto it = t.find(tag);
        if (it == t.end()) {
            return true;
        }
        strict = detail::iequals(it->second, "s");
        return strict || detail::iequals(it->second, "r");
    };
    if (t.count("p") == 0 || !policy("p", d.policy)) {
        d.error = t.count("p") == 0 ? "it has no p=" : fmt::format("p={} is not none, quarantine or reject", d.policy);
    } else if (!policy("sp", d.subdomain_policy)) {
        d.error = fmt::format("sp={} is not none, quarantine or reject", d.subdomain_policy);
    } else if (!mode("adkim", d.strict_dkim)) {
        d.error = fmt::format("adkim={} is not r or s", t.at("adkim"));
    } else if (!mode("aspf", d.strict_spf)) {
        d.error = fmt::format("aspf={} is not r or s", t.at("aspf"));
    }
    return d;
}

// A DKIM key record: a tag list with p=, whose v= (when present) is DKIM1.
inline bool is_dkim_key_record(const std::map<std::string, std::string>& t) {
    const auto v = t.find("v");
    return t.count("p") != 0 && (v == t.end() || v->second == "DKIM1");
}

// A not_after instant as its day, "2026-12-31" (UTC).
inline std::string day_of(std::time_t t) {
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    return fmt::format("{:04}-{:02}-{:02}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
}

inline void add(std::vector<finding>& out, severity s, std::string text) {
    out.push_back(finding{s, std::move(text)});
}

// The answer for `name`, or a failed one when the caller did not look it up.
inline net::txt_answer answer_for(const txt_map& txt, const std::string& name) {
    const auto it = txt.find(name);
    if (it != txt.end()) {
        return it->second;
    }
    net::txt_answer a;
    a.error = name + ": not looked up";
    return a;
}

inline void check_key(const configured_key& ck, const txt_map& txt, std::vector<finding>& out) {
    const std::string name = dkim_name(ck.spec);
    const std::string who = fmt::format("DKIM selector {} (d={})", ck.spec.selector, ck.spec.domain);
    if (!ck.key) {
        add(out, severity::fatal, fmt::format("{}: cannot load {}: {}", who, ck.spec.key_file, ck.error));
        return;
    }
    const mail::dkim::loaded_key& key = *ck.key;
    const bool rsa = key.alg == mail::dkim::algorithm::rsa_sha256;
    if (rsa && key.bits < mail::dkim::rsa_bits_min) {
        add(out, severity::fatal,
            fmt::format("{}: RSA key of {} bits: receivers reject it (RFC 8301 §3.2: at least {}; {} advised)", who,
                        key.bits, mail::dkim::rsa_bits_min, mail::dkim::rsa_bits_advised));
    } else if (rsa && key.bits < mail::dkim::rsa_bits_advised) {
        add(out, severity::warning,
            fmt::format("{}: RSA key of {} bits: {} are advised", who, key.bits, mail::dkim::rsa_bits_advised));
    } else {
        add(out, severity::ok, fmt::format("{}: {} key of {} bits", who, rsa ? "RSA" : "Ed25519", key.bits));
    }
    const net::txt_answer a = answer_for(txt, name);
    if (a.state == net::txt_answer::status::failed) {
        add(out, severity::fatal, fmt::format("{}: cannot check the key record: {}", who, a.error));
        return;
    }
    const std::string publish = fmt::format("publish `mxpress dkim-record`'s \"{}\"", mail::dkim::txt_record(key));
    std::vector<std::map<std::string, std::string>> records;
    for (const std::string& r : a.records) {
        auto t = tags(r);
        if (is_dkim_key_record(t)) {
            records.push_back(std::move(t));
        }
    }
    if (records.empty()) {
        add(out, severity::fatal, fmt::format("{}: no DKIM key record at {}: {}", who, name, publish));
        return;
    }
    const char* want_k = rsa ? "rsa" : "ed25519";
    std::string why;
    bool matched = false;
    for (const auto& t : records) {
        const auto k = t.find("k");
        const std::string k_value = k == t.end() ? "rsa" : detail::to_lower_copy(k->second);  // default k=rsa
        const std::string p = without_space(t.at("p"));
        if (p.empty()) {
            why = "the record's p= is empty (key revoked, RFC 6376 §3.6.1)";
        } else if (p != key.public_b64) {
            why = fmt::format("the published p= is not the public half of {}", key.file);
        } else if (k_value != want_k) {
            why = fmt::format("the record says k={} but {} is an {} key", k_value, key.file, want_k);
        } else {
            matched = true;
            const auto flags = t.find("t");
            if (flags != t.end() && flags->second.find('y') != std::string::npos) {
                add(out, severity::warning,
                    fmt::format("{}: {} is in testing mode (t=y): receivers may treat its signatures as absent", who,
                                name));
            }
        }
    }
    if (!matched) {
        add(out, severity::fatal, fmt::format("{}: {} does not match: {}; {}", who, name, why, publish));
    } else if (records.size() > 1) {
        add(out, severity::warning,
            fmt::format("{}: {} key records at {}: a receiver may use any of them (RFC 6376 §3.6.2.2)", who,
                        records.size(), name));
    } else {
        add(out, severity::ok, fmt::format("{}: {} publishes this key (k={})", who, name, want_k));
    }
}

}  // namespace detail_sender_check

// The findings for mail from `sender` with these keys and TXT answers (name
// -> answer; a name missing is "not looked up", fatal). `dkim` gives the
// signed headers and the keys' specs.
inline std::vector<finding> check(const mail::dkim::settings& dkim, const std::vector<configured_key>& keys,
                                  const sender_domains& sender, const txt_map& txt, const context& ctx) {
    using namespace detail_sender_check;
    const std::string from_domain = detail::to_lower_copy(sender.header_from);
    const std::string envelope_domain = detail::to_lower_copy(sender.envelope);
    const std::string dmarc_who = fmt::format("DMARC (From domain {})", from_domain);
    const std::string spf_who = fmt::format("SPF (envelope domain {})", envelope_domain);
    std::vector<finding> out;

    // 1. Each key and its published record.
    if (keys.empty()) {
        add(out, severity::fatal, "DKIM: no [[dkim.key]] in the configuration: nothing is signed");
    }
    for (const configured_key& k : keys) {
        check_key(k, txt, out);
    }

    // 2. DMARC at the From domain, else at its organizational domain. A missing
    // record is a warning, not fatal: mail without DMARC is still delivered
    // (Gmail and Yahoo demand it only of bulk senders, over 5,000 a day to
    // them), and a first send, a test or a small list is not refused for it.
    const std::string from_org = organizational_domain(from_domain, ctx.psl);
    if (ctx.psl == nullptr) {
        add(out, severity::warning,
            fmt::format("organizational domain: no public suffix list ({}): one label less stands in for it ({}), "
                        "which is wrong under a suffix of several labels such as co.uk; install Debian's "
                        "publicsuffix",
                        ctx.psl_error.empty() ? "none given" : ctx.psl_error, from_org));
    }
    std::optional<dmarc_record> dmarc;  // the well-formed record found
    std::string policy;                 // the policy it sets for the From domain: p=, or sp= below it
    {
        const std::vector<std::string> names = dmarc_names(from_domain, ctx.psl);
        bool decided = false;
        for (const std::string& name : names) {
            const net::txt_answer a = answer_for(txt, name);
            if (a.state == net::txt_answer::status::failed) {
                add(out, severity::fatal, fmt::format("{}: cannot check: {}", dmarc_who, a.error));
                decided = true;
                break;
            }
            std::vector<std::string> found;
            for (const std::string& r : a.records) {
                if (names_dmarc1(r)) {
                    found.push_back(r);
                }
            }
            if (found.empty()) {
                continue;
            }
            decided = true;
            if (found.size() > 1) {
                add(out, severity::warning,
                    fmt::format("{}: {} records at {}: receivers apply none of them (RFC 7489 §6.6.3)", dmarc_who,
                                found.size(), name));
                break;
            }
            dmarc_record d = parse_dmarc(found.front());
            if (!d.error.empty()) {
                add(out, severity::warning,
                    fmt::format("{}: {}: malformed record \"{}\": {}; receivers apply no policy (RFC 7489 §6.6.3)",
                                dmarc_who, name, found.front(), d.error));
                break;
            }
            const bool below = name != "_dmarc." + from_domain;
            policy = below && !d.subdomain_policy.empty() ? d.subdomain_policy : d.policy;
            add(out, severity::ok, fmt::format("{}: {}: \"{}\"", dmarc_who, name, found.front()));
            dmarc = std::move(d);
            break;
        }
        if (!decided) {
            add(out, severity::warning,
                fmt::format("{}: no record (v=DMARC1) at {}{}: Gmail and Yahoo require one of bulk senders; "
                            "publish at least \"v=DMARC1; p=none\"",
                            dmarc_who, names.front(), names.size() > 1 ? " nor at " + names.back() : std::string{}));
        }
    }

    // 3. SPF at the envelope domain.
    {
        const net::txt_answer a = answer_for(txt, envelope_domain);
        std::vector<std::string> spf;
        for (const std::string& r : a.records) {
            if (starts_with_version(r, "v=spf1")) {
                spf.push_back(r);
            }
        }
        if (a.state == net::txt_answer::status::failed) {
            add(out, severity::fatal, fmt::format("{}: cannot check: {}", spf_who, a.error));
        } else if (spf.empty()) {
            add(out, severity::warning,
                fmt::format("{}: no record (v=spf1) at {}: receivers cannot authorize the sending hosts", spf_who,
                            envelope_domain));
        } else if (spf.size() > 1) {
            add(out, severity::fatal,
                fmt::format("{}: {} records (v=spf1) at {}: a permerror for every receiver (RFC 7208 §4.5); "
                            "merge them into one",
                            spf_who, spf.size(), envelope_domain));
        } else {
            add(out, severity::ok, fmt::format("{}: \"{}\"", spf_who, spf.front()));
        }
    }

    // 4. Alignment of some d= with the From domain: the signer signs with it
    // (d= is the From domain or a parent) and DMARC counts it (the same
    // organizational domain; without a list, any parent) — unless the key is
    // past its not_after, as the signer then skips it. adkim=s: d= is the
    // From domain itself.
    {
        const bool strict = dmarc && dmarc->strict_dkim;
        std::string aligned_with;
        std::string domains;
        for (const mail::dkim::key_spec& k : dkim.keys) {
            if (k.not_after != 0 && ctx.now > k.not_after) {
                add(out, severity::warning,
                    fmt::format("DKIM selector {} (d={}): not_after passed: expired on {}, not used", k.selector,
                                k.domain, day_of(k.not_after)));
                domains += fmt::format("{}{} (expired)", domains.empty() ? "" : ", ", k.domain);
                continue;
            }
            const bool signs = mail::dkim::aligned(k.domain, from_domain);
            const bool counts = strict ? detail::iequals(k.domain, from_domain)
                                       : ctx.psl == nullptr || organizational_domain(k.domain, ctx.psl) == from_org;
            if (aligned_with.empty() && signs && counts) {
                aligned_with = k.domain;
            }
            domains += (domains.empty() ? "" : ", ") + k.domain;
        }
        if (!aligned_with.empty()) {
            add(out, severity::ok,
                fmt::format("alignment: d={} is aligned with From domain {} ({}, RFC 7489 §3.1.1)", aligned_with,
                            from_domain, strict ? "strict, adkim=s" : "relaxed"));
        } else {
            // Unaligned mail fails DKIM's half of DMARC: what that costs is the policy's to say.
            const bool enforced = dmarc && policy != "none";
            const std::string within =
                strict ? std::string(" (adkim=s: exactly)") : " or a parent of it within " + from_org;
            const std::string consequence = !dmarc     ? std::string{}
                                            : enforced ? fmt::format(", so receivers apply p={} to it", policy)
                                                       : ": p=none is monitoring only, nothing is refused for it yet";
            add(out, enforced ? severity::fatal : severity::warning,
                fmt::format("alignment: no [[dkim.key]] domain ({}) is {}{}: no signature counts for DMARC{}",
                            domains.empty() ? "none" : domains, from_domain, within, consequence));
        }
    }

    // 5. One-click unsubscribe headers signed (RFC 8058 §4 requires both signed).
    {
        std::vector<std::string> missing;
        for (const char* h : {"List-Unsubscribe", "List-Unsubscribe-Post"}) {
            if (std::none_of(dkim.headers.begin(), dkim.headers.end(),
                             [&](const std::string& s) { return detail::iequals(s, h); })) {
                missing.emplace_back(h);
            }
        }
        if (missing.empty()) {
            add(out, severity::ok, "headers: List-Unsubscribe and List-Unsubscribe-Post are signed");
        } else {
            add(out, severity::warning,
                fmt::format("headers: [dkim] headers lacks {}: one-click unsubscribe (RFC 8058) needs it signed for "
                            "Gmail and Yahoo",
                            missing.size() == 2 ? missing[0] + " and " + missing[1] : missing[0]));
        }
    }
    return out;
}

inline bool any_fatal(const std::vector<finding>& f) {
    return std::any_of(f.begin(), f.end(), [](const finding& x) { return x.level == severity::fatal; });
}

}  // namespace mxpress::engine::sender_check
