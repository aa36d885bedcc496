// mxpress/engine/rules.hpp — adaptive rules: a receiver's reply that
// matches one changes the pace of that destination.
//
// [[rule]]
//   name = "gmail-rate"
//   provider = "google"          # or domain = "…"; neither: any destination
//   match = '4\.7\.28|unusual rate'  # regex (ECMAScript, case-insensitive) over
//                                # "code enhanced text", lines joined by spaces
//   trigger = "3/10m"            # N matches within a span, or "immediate"
//   action = "scale"             # scale | suspend | stop
//   factor = 0.5                 # scale: multiply the rate; suspend: the rate
//                                # it restarts at when lifted, times the old one
//   floor = "1/min"              # never slower than this
//   recover = "+10%/5m"          # each span without a match: +P% of the old rate
//   duration = "30m"             # suspend: how long
// [rules]
//   builtin = true               # false: only the file's rules
//
// Built-in rules (builtin_rules_toml, `mxpress rules --print-defaults`)
// cover the big receivers' throttling, block and authentication replies.
// The file's rules come first, in file order; a file rule with a built-in's
// name replaces it. The first rule that matches a reply is the one that
// counts, so the built-ins list the most specific first (authentication,
// blocks, then throttling).
//
// Which destination a firing acts on (its scope): the rule's provider or
// domain when it names one; else the provider of the recipient's domain when
// all its MX hosts are one [provider] section's, else the domain.
// Replies mxpress makes up itself (code 0: connect refused, timeouts, DNS)
// never match.
//
// Promises: the parser is strict — unknown keys, wrong types, a bad regex,
// rate, span or factor are input_errors naming the file and line.
#pragma once

#include <chrono>
#include <cstdint>
// GCC 12 warns -Wmaybe-uninitialized inside <regex>'s automaton when it is
// built with -fsanitize (a false positive in the library's own code).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <regex>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "mxpress/engine/rate.hpp"
#include "mxpress/engine/toml_errors.hpp"
#include "mxpress/mail/input_error.hpp"

namespace mxpress::engine {

enum class rule_action : std::uint8_t { scale, suspend, stop };

inline const char* to_string(rule_action a) {
    switch (a) {
        case rule_action::scale: return "scale";
        case rule_action::suspend: return "suspend";
        case rule_action::stop: return "stop";
    }
    return "?";
}

struct rule {
    std::string name;
    std::string provider;  // scope filter ("": any)
    std::string domain;    // scope filter ("": any), lowercase
    std::string match;     // the regex as written
    std::regex re;
    std::uint32_t trigger_count = 1;  // matches within trigger_span that fire it
    std::chrono::milliseconds trigger_span{0};
    std::string trigger = "immediate";
    rule_action action = rule_action::scale;
    double factor = 0.5;
    rate floor;  // set by the parser: "1/min" unless given
    double recover_step = 0.10;
    std::chrono::milliseconds recover_every = std::chrono::minutes(5);
    std::string recover = "+10%/5m";
    std::chrono::milliseconds duration = std::chrono::minutes(30);
    std::string duration_text = "30m";
    std::string origin;  // "built-in", or "FILE:LINE"

    bool matches(std::string_view reply_line) const {
        return std::regex_search(reply_line.begin(), reply_line.end(), re);
    }
};

// "90s", "10m", "5min", "6h", "2d" (a positive integer and a unit).
inline bool parse_span(std::string_view s, std::chrono::milliseconds& out) {
    std::size_t i = 0;
    std::uint64_t n = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9' && i < 9) {
        n = n * 10 + static_cast<std::uint64_t>(s[i++] - '0');
    }
    if (i == 0 || n == 0) {
        return false;
    }
    using namespace std::chrono;
    const std::string_view unit = s.substr(i);
    const auto count = static_cast<std::int64_t>(n);
    if (unit == "s") {
        out = seconds(count);
    } else if (unit == "m" || unit == "min") {
        out = minutes(count);
    } else if (unit == "h") {
        out = hours(count);
    } else if (unit == "d") {
        out = hours(24 * count);
    } else {
        return false;
    }
    return out <= hours(24 * 30);  // a month at most: no deadline overflows
}

// The rules in force: the file's, then the built-ins it did not replace.
struct rule_set {
    std::vector<rule> rules;
    bool builtin = true;  // [rules] builtin

    // The first rule whose scope filter admits the destination and whose
    // regex matches the reply's one line; null when none does.
    const rule* match(int code, std::string_view reply_line, std::string_view domain, std::string_view provider) const {
        if (code < 400 || code > 599) {
            return nullptr;  // a positive reply, or one mxpress made up
        }
        for (const rule& r : rules) {
            if ((!r.domain.empty() && r.domain != domain) || (!r.provider.empty() && r.provider != provider)) {
                continue;
            }
            if (r.matches(reply_line)) {
                return &r;
            }
        }
        return nullptr;
    }
};

// The built-in rules, as `mxpress rules --print-defaults` prints them.
inline constexpr std::string_view builtin_rules_toml =
    R"(# mxpress built-in rules: on unless [rules] builtin = false; a [[rule]] of
# the same name replaces one. Scope: the destination that replied (its
# [provider] when all its MX hosts are one provider's, else its domain).

# The sender's authentication (SPF, DKIM, DMARC): nothing but a fix helps.
# Stop sending there; its recipients stay unfinished for --resume.
[[rule]]
name = "gmail-authentication"
match = '^4\d\d 4\.7\.(26|27|30|32|40)\b|^5\d\d 5\.7\.26\b'
trigger = "immediate"
action = "stop"

[[rule]]
name = "microsoft-authentication"
match = '^5\d\d 5\.7\.515\b'
trigger = "immediate"
action = "stop"

# Blocks: backing off for a while is all that helps; mail waits, it is not bounced.
[[rule]]
name = "microsoft-block"
match = '^5\d\d (5\.7\.1\b.*\(S3150\)|5\.7\.6(0[6-9]|[1-3]\d|4\d)\b)'
trigger = "immediate"
action = "suspend"
duration = "4h"
factor = 0.1
floor = "1/min"
recover = "+10%/5m"

[[rule]]
name = "yahoo-block"
match = '^553 5\.7\.1\b.*\[BL\d+\]'
trigger = "immediate"
action = "suspend"
duration = "4h"
factor = 0.1
floor = "1/min"
recover = "+10%/5m"

# Throttling: slow down (halve the rate, ramp back while replies are good).
[[rule]]
name = "gmail-rate"
match = '^4\d\d 4\.7\.28\b|unusual rate of (unsolicited )?mail'
trigger = "3/10m"
action = "scale"
factor = 0.5
floor = "1/min"
recover = "+10%/5m"

[[rule]]
name = "gmail-reputation"
match = '^4\d\d 4\.7\.0\b.*(low reputation|unusual rate|rate limit)'
trigger = "3/10m"
action = "scale"
factor = 0.5
floor = "1/min"
recover = "+10%/5m"

[[rule]]
name = "yahoo-deferred"
match = '^4\d\d 4\.7\.0\b.*\[(TSS04|TS0[1-3])\]'
trigger = "3/10m"
action = "scale"
factor = 0.5
floor = "1/min"
recover = "+10%/5m"

[[rule]]
name = "microsoft-rate"
match = '^4\d\d (4\.7\.650\b|.*\bRP-00[1-3]\b)'
trigger = "3/10m"
action = "scale"
factor = 0.5
floor = "1/min"
recover = "+10%/5m"

[[rule]]
name = "server-busy"
match = '^4\d\d .*\b(server busy|server too busy|too many messages|rate limit(ed)?|try again later)\b'
trigger = "5/10m"
action = "scale"
factor = 0.7
floor = "1/min"
recover = "+10%/5m"
)";

namespace detail_rules {

using namespace toml_errors;

// "+P%/SPAN", 1 <= P <= 100.
inline bool parse_recover(std::string_view s, double& step, std::chrono::milliseconds& every) {
    if (!s.starts_with('+')) {
        return false;
    }
    const std::size_t pct = s.find("%/");
    if (pct == std::string_view::npos || pct < 2 || pct > 4) {
        return false;
    }
    unsigned p = 0;
    for (char ch : s.substr(1, pct - 1)) {
        if (ch < '0' || ch > '9') {
            return false;
        }
        p = p * 10 + static_cast<unsigned>(ch - '0');
    }
    if (p < 1 || p > 100) {
        return false;
    }
    step = p / 100.0;
    return parse_span(s.substr(pct + 2), every);
}

inline rule parse_one(const std::string& file, const toml::node& entry, std::size_t index, bool builtin) {
    const auto* t = entry.as_table();
    if (t == nullptr) {
        fail(file, entry, "[[rule]] entries must be tables");
    }
    rule r;
    r.origin = builtin ? std::string("built-in") : fmt::format("{}:{}", file, line_of(entry));
    parse_rate("1/min", r.floor);
    std::string where = fmt::format("[[rule]] #{}", index + 1);
    if (const auto* n = t->get("name"); n != nullptr && n->is_string()) {
        where = fmt::format("[[rule]] \"{}\"", n->as_string()->get());  // keys come in name order: say it first
    }
    bool have_match = false;
    bool have_duration = false;
    bool have_factor = false;
    for (auto&& [key, value] : *t) {
        const std::string_view k = key.str();
        if (k == "name") {
            r.name = get_string(file, where, k, value);
        } else if (k == "provider") {
            r.provider = get_string(file, where, k, value);
        } else if (k == "domain") {
            r.domain = get_string(file, where, k, value);
            for (char& ch : r.domain) {
                ch = (ch >= 'A' && ch <= 'Z') ? static_cast<char>(ch - 'A' + 'a') : ch;
            }
        } else if (k == "match") {
            r.match = get_string(file, where, k, value);
            try {
                r.re = std::regex(r.match, std::regex::ECMAScript | std::regex::icase | std::regex::optimize);
            } catch (const std::regex_error& e) {
                fail(file, value, fmt::format("{} match is not a valid regex: {}", where, e.what()));
            }
            have_match = true;
        } else if (k == "trigger") {
            r.trigger = get_string(file, where, k, value);
            const std::size_t slash = r.trigger.find('/');
            bool ok = r.trigger == "immediate";
            if (ok) {
                r.trigger_count = 1;
                r.trigger_span = {};
            } else if (slash != std::string::npos && slash >= 1 && slash <= 4) {
                unsigned n = 0;
                ok = true;
                for (char ch : std::string_view(r.trigger).substr(0, slash)) {
                    ok = ok && ch >= '0' && ch <= '9';
                    n = n * 10 + static_cast<unsigned>(ch - '0');
                }
                ok = ok && n >= 1 && n <= 1000 &&
                     parse_span(std::string_view(r.trigger).substr(slash + 1), r.trigger_span);
                r.trigger_count = n;
            }
            if (!ok) {
                fail(file, value,
                     fmt::format("{} trigger must be \"immediate\" or \"N/SPAN\" like \"3/10m\" (N 1-1000)", where));
            }
        } else if (k == "action") {
            const std::string a = get_string(file, where, k, value);
            if (a == "scale") {
                r.action = rule_action::scale;
            } else if (a == "suspend") {
                r.action = rule_action::suspend;
            } else if (a == "stop") {
                r.action = rule_action::stop;
            } else {
                fail(file, value, fmt::format("{} action must be \"scale\", \"suspend\" or \"stop\"", where));
            }
        } else if (k == "factor") {
            const std::optional<double> f = value.value<double>();
            if (!f || !(*f > 0.0 && *f < 1.0)) {
                fail(file, value, fmt::format("{} factor must be a number between 0 and 1 (exclusive)", where));
            }
            r.factor = *f;
            have_factor = true;
        } else if (k == "floor") {
            const std::string f = get_string(file, where, k, value);
            if (!parse_rate(f, r.floor) || r.floor.unlimited()) {
                fail(file, value, fmt::format("{} floor must be a rate like \"1/min\" (not unlimited)", where));
            }
        } else if (k == "recover") {
            r.recover = get_string(file, where, k, value);
            if (!parse_recover(r.recover, r.recover_step, r.recover_every)) {
                fail(file, value, fmt::format("{} recover must be \"+P%/SPAN\" like \"+10%/5m\" (P 1-100)", where));
            }
        } else if (k == "duration") {
            r.duration_text = get_string(file, where, k, value);
            if (!parse_span(r.duration_text, r.duration)) {
                fail(file, value,
                     fmt::format("{} duration must be a span like \"30m\", \"90s\", \"4h\" (at most 30d)", where));
            }
            have_duration = true;
        } else {
            fail_unknown_key(file, value, k, where,
                             "name, provider, domain, match, trigger, action, factor, floor, recover, duration");
        }
    }
    if (r.name.empty()) {
        fail(file, entry, fmt::format("{} needs a name", where));
    }
    if (!have_match) {
        fail(file, entry, fmt::format("{} needs match = '…' (a regex over the reply)", where));
    }
    if (!r.provider.empty() && !r.domain.empty()) {
        fail(file, entry, fmt::format("{} names both a provider and a domain: give one", where));
    }
    if (have_duration && r.action != rule_action::suspend) {
        fail(file, entry, fmt::format("{} duration is for action = \"suspend\"", where));
    }
    if (r.action == rule_action::suspend && !have_factor) {
        r.factor = 0.1;  // lifted: restart at a tenth of the old rate, and ramp
    }
    return r;
}

}  // namespace detail_rules

// Parses the [[rule]] array of `file` (or of the built-ins) onto out.rules.
inline void parse_rule_array(const std::string& file, const toml::node& node, std::vector<rule>& out,
                             bool builtin = false) {
    const auto* a = node.as_array();
    if (a == nullptr || !a->is_array_of_tables()) {
        detail_rules::fail(file, node, "'rule' must be an array of tables: [[rule]]");
    }
    for (const toml::node& entry : *a) {
        rule r = detail_rules::parse_one(file, entry, out.size(), builtin);
        for (const rule& o : out) {
            if (o.name == r.name) {
                detail_rules::fail(file, entry, fmt::format("[[rule]] \"{}\" is defined twice", r.name));
            }
        }
        out.push_back(std::move(r));
    }
}

// The built-in rules, parsed once.
inline const std::vector<rule>& builtin_rules() {
    static const std::vector<rule> rules = [] {
        std::vector<rule> out;
        const toml::table t = toml::parse(builtin_rules_toml, std::string_view("built-in rules"));
        parse_rule_array("built-in rules", *t.get("rule"), out, true);
        return out;
    }();
    return rules;
}

// The file's rules, then every built-in whose name none of them took.
inline void add_builtin_rules(rule_set& s) {
    if (!s.builtin) {
        return;
    }
    for (const rule& b : builtin_rules()) {
        bool replaced = false;
        for (const rule& r : s.rules) {
            replaced = replaced || r.name == b.name;
        }
        if (!replaced) {
            s.rules.push_back(b);
        }
    }
}

// One rule as TOML (check-config, explain-reply).
inline std::string describe_rule(const rule& r, bool with_origin = true) {
    std::string out = with_origin ? fmt::format("[[rule]]  # {}\nname = \"{}\"\n", r.origin, r.name)
                                  : fmt::format("[[rule]]\nname = \"{}\"\n", r.name);
    if (!r.provider.empty()) {
        out += fmt::format("provider = \"{}\"\n", r.provider);
    }
    if (!r.domain.empty()) {
        out += fmt::format("domain = \"{}\"\n", r.domain);
    }
    out += fmt::format("match = '{}'\ntrigger = \"{}\"\naction = \"{}\"\n", r.match, r.trigger, to_string(r.action));
    if (r.action != rule_action::stop) {
        out += fmt::format("factor = {}\nfloor = \"{}\"\nrecover = \"{}\"\n", r.factor, r.floor.text, r.recover);
    }
    if (r.action == rule_action::suspend) {
        out += fmt::format("duration = \"{}\"\n", r.duration_text);
    }
    return out;
}

}  // namespace mxpress::engine
