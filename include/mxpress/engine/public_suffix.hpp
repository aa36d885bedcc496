// mxpress/engine/public_suffix.hpp — the Public Suffix List
// (https://publicsuffix.org/list/), for DMARC's organizational domain
// (RFC 7489 §3.2). Read by `check-sender` only, once.
//
// Promises:
// - parse() takes the list's text: one rule a line up to the first
//   whitespace; blank lines and `//` comments are skipped; rules from the
//   ICANN and the PRIVATE sections alike; `*.` wildcard and `!` exception
//   rules; rules lowercased. It is bounded (file_bytes_max, rules_max,
//   rule_octets_max): past a bound it returns an error, not a partial list.
// - public_suffix() applies the list's algorithm: an exception rule prevails,
//   else the rule that matches the most labels, else the default rule `*`
//   (the last label). organizational_domain() is that suffix and one label
//   more, or the domain itself when it is a public suffix.
// - Rules outside ASCII (U-labels) never match the A-labels mxpress holds.
#pragma once

#include <cstddef>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>

#include "mxpress/detail/ascii.hpp"

namespace mxpress::engine::public_suffix {

// Where Debian's `publicsuffix` package installs the list.
constexpr const char* debian_path = "/usr/share/publicsuffix/public_suffix_list.dat";
constexpr std::size_t file_bytes_max = 4 * 1024 * 1024;  // the list is about 250 KB
constexpr std::size_t rules_max = 100'000;               // about 10,000 today
constexpr std::size_t rule_octets_max = 253;             // a domain name's longest text form

class list {
public:
    // The rules of `text`, or nullopt with `error` saying which bound it passed.
    static std::optional<list> parse(std::string_view text, std::string& error) {
        if (text.size() > file_bytes_max) {
            error = "larger than " + std::to_string(file_bytes_max) + " bytes";
            return std::nullopt;
        }
        list l;
        std::size_t count = 0;
        std::size_t at = 0;
        while (at < text.size()) {
            std::size_t end = text.find('\n', at);
            if (end == std::string_view::npos) {
                end = text.size();
            }
            std::string_view line = text.substr(at, end - at);
            at = end + 1;
            const std::size_t space = line.find_first_of(" \t\r");
            line = line.substr(0, space);
            if (line.empty() || line.starts_with("//")) {
                continue;
            }
            if (line.size() > rule_octets_max || ++count > rules_max) {
                error = line.size() > rule_octets_max ? "a rule longer than " + std::to_string(rule_octets_max)
                                                      : "more than " + std::to_string(rules_max) + " rules";
                return std::nullopt;
            }
            std::string rule = detail::to_lower_copy(std::string(line));
            if (rule.starts_with("!")) {
                l._exceptions.insert(rule.substr(1));
            } else if (rule.starts_with("*.")) {
                l._wildcards.insert(rule.substr(2));
            } else {
                l._rules.insert(std::move(rule));
            }
        }
        return l;
    }

    // The public suffix of `domain` (lowercase, without a trailing dot).
    std::string public_suffix(std::string_view domain) const {
        const std::string d = normal(domain);
        // An exception rule prevails: its suffix is the rule less its first label.
        for (std::size_t at = 0; at != std::string::npos; at = next_label(d, at)) {
            if (_exceptions.count(d.substr(at)) != 0) {
                const std::size_t next = next_label(d, at);
                return next == std::string::npos ? std::string{} : d.substr(next);
            }
        }
        // Else the longest match: a rule, or a wildcard's parent one label up.
        for (std::size_t at = 0; at != std::string::npos; at = next_label(d, at)) {
            const std::size_t parent = next_label(d, at);
            if (_rules.count(d.substr(at)) != 0 ||
                (parent != std::string::npos && _wildcards.count(d.substr(parent)) != 0)) {
                return d.substr(at);
            }
        }
        const std::size_t last = d.rfind('.');  // the default rule "*"
        return last == std::string::npos ? d : d.substr(last + 1);
    }

    // The organizational domain (RFC 7489 §3.2): the public suffix and one
    // label more; the domain itself when it is a public suffix.
    std::string organizational_domain(std::string_view domain) const {
        const std::string d = normal(domain);
        const std::string suffix = public_suffix(d);
        if (suffix.empty() || suffix.size() >= d.size()) {
            return d;
        }
        const std::size_t dot = d.rfind('.', d.size() - suffix.size() - 2);
        return dot == std::string::npos ? d : d.substr(dot + 1);
    }

    std::size_t size() const noexcept { return _rules.size() + _wildcards.size() + _exceptions.size(); }

private:
    static std::string normal(std::string_view domain) {
        std::string d = detail::to_lower_copy(std::string(domain));
        if (!d.empty() && d.back() == '.') {
            d.pop_back();
        }
        return d;
    }
    // Where the label after the one at `at` starts; npos after the last.
    static std::size_t next_label(const std::string& d, std::size_t at) {
        const std::size_t dot = d.find('.', at);
        return dot == std::string::npos ? std::string::npos : dot + 1;
    }

    std::unordered_set<std::string> _rules;       // "co.uk"
    std::unordered_set<std::string> _wildcards;   // "*.ck" as "ck"
    std::unordered_set<std::string> _exceptions;  // "!www.ck" as "www.ck"
};

// The list in `path`, or nullopt with `error` naming the file and the cause.
inline std::optional<list> load(const std::string& path, std::string& error) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        error = path + ": cannot open";
        return std::nullopt;
    }
    std::string text(file_bytes_max + 1, '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<std::size_t>(in.gcount()));
    std::string why;
    auto l = list::parse(text, why);
    if (!l) {
        error = path + ": " + why;
    }
    return l;
}

}  // namespace mxpress::engine::public_suffix
