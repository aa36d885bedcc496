// mxpress/mail/address.hpp — recipient address check (RFC 5321 §4.1.2, §4.5.3.1).
//
// Accepts a Mailbox as it may appear in RCPT TO: a dot-atom or quoted-string
// local part, '@', and a domain name. Refuses what a bulk sender must not
// send to: address literals ([192.0.2.1]), single-label domains, lengths
// over 64 (local part) / 255 (domain) / 254 (whole path content).
// Non-ASCII domains become A-labels (IDNA 2008 via libidn2, non-transitional);
// a non-ASCII local part is allowed (RFC 6531) and marks the recipient as
// needing SMTPUTF8. The domain is lowercased; the local part is kept as is
// (its case may matter to the receiving system).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <idn2.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/detail/utf8.hpp"

namespace mxpress::mail {

struct checked_address {
    std::string address;  // local@domain, domain as lowercase A-labels
    std::size_t at = 0;   // position of the '@' in address
    bool needs_smtputf8 = false;
    std::string error;  // empty when valid

    bool valid() const noexcept { return error.empty(); }
    std::string_view local_part() const noexcept { return std::string_view(address).substr(0, at); }
    std::string_view domain() const noexcept { return std::string_view(address).substr(at + 1); }
};

namespace detail_address {

constexpr bool is_atext(char c) noexcept {
    if (detail::is_alnum(c)) {
        return true;
    }
    switch (c) {
        case '!':
        case '#':
        case '$':
        case '%':
        case '&':
        case '\'':
        case '*':
        case '+':
        case '-':
        case '/':
        case '=':
        case '?':
        case '^':
        case '_':
        case '`':
        case '{':
        case '|':
        case '}':
        case '~': return true;
        default: return false;
    }
}

// Checks a dot-atom local part; non-ASCII octets (already UTF-8 checked) are
// allowed as atext per RFC 6531.
inline const char* check_dot_atom(std::string_view s) {
    if (s.empty()) {
        return "empty local part";
    }
    if (s.front() == '.' || s.back() == '.') {
        return "local part starts or ends with '.'";
    }
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        if (c == '.') {
            if (s[i + 1] == '.') {
                return "local part has consecutive dots";
            }
            continue;
        }
        if (!detail::is_ascii(c)) {
            continue;
        }
        if (!is_atext(c)) {
            return "local part has a character that needs quoting";
        }
    }
    return nullptr;
}

// Checks a quoted-string local part (with its quotes): qtextSMTP and
// quoted-pairSMTP only (RFC 5321 §4.1.2).
inline const char* check_quoted(std::string_view s) {
    if (s.size() < 2 || s.front() != '"' || s.back() != '"') {
        return "malformed quoted local part";
    }
    for (std::size_t i = 1; i + 1 < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == '\\') {
            if (i + 2 >= s.size()) {
                return "malformed quoted local part";
            }
            const auto n = static_cast<unsigned char>(s[i + 1]);
            if (n < 32 || n > 126) {
                return "invalid quoted-pair in local part";
            }
            ++i;
            continue;
        }
        if (c == '"') {
            return "malformed quoted local part";
        }
        if (c < 32 || c == 127) {
            return "control character in local part";
        }
    }
    return nullptr;
}

// Checks an ASCII domain (A-labels): LDH labels of 1..63, no leading or
// trailing hyphen, at least two labels, a top label that is not all digits.
inline const char* check_ascii_domain(std::string_view d) {
    if (d.empty()) {
        return "empty domain";
    }
    if (d.size() > 255) {
        return "domain longer than 255 octets";
    }
    std::size_t labels = 0;
    std::size_t start = 0;
    bool last_all_digits = false;
    while (start <= d.size()) {
        std::size_t dot = d.find('.', start);
        if (dot == std::string_view::npos) {
            dot = d.size();
        }
        const std::string_view label = d.substr(start, dot - start);
        if (label.empty()) {
            return "domain has an empty label";
        }
        if (label.size() > 63) {
            return "domain label longer than 63 octets";
        }
        if (label.front() == '-' || label.back() == '-') {
            return "domain label starts or ends with '-'";
        }
        last_all_digits = true;
        for (char c : label) {
            if (!detail::is_alnum(c) && c != '-') {
                return "domain has a character not allowed in host names";
            }
            if (!detail::is_digit(c)) {
                last_all_digits = false;
            }
        }
        ++labels;
        start = dot + 1;
        if (dot == d.size()) {
            break;
        }
    }
    if (labels < 2) {
        return "domain has a single label";
    }
    if (last_all_digits) {
        return "domain looks like an IP address";
    }
    return nullptr;
}

}  // namespace detail_address

// Checks and normalizes one address. Leading and trailing spaces/tabs are
// ignored (spreadsheets leave them); anything else wrong is an error.
inline checked_address check_address(std::string_view raw) {
    checked_address out;
    const std::string_view s = detail::trim_wsp(raw);
    if (s.empty()) {
        out.error = "empty address";
        return out;
    }
    if (!detail::valid_utf8(s)) {
        out.error = "address is not valid UTF-8";
        return out;
    }
    const std::size_t at = s.rfind('@');
    if (at == std::string_view::npos) {
        out.error = "address has no '@'";
        return out;
    }
    const std::string_view local = s.substr(0, at);
    std::string_view domain = s.substr(at + 1);
    if (local.empty()) {
        out.error = "empty local part";
        return out;
    }
    if (local.size() > 64) {
        out.error = "local part longer than 64 octets";
        return out;
    }
    const char* why =
        local.front() == '"' ? detail_address::check_quoted(local) : detail_address::check_dot_atom(local);
    if (why != nullptr) {
        out.error = why;
        return out;
    }
    if (!domain.empty() && domain.front() == '[') {
        out.error = "address literals are not accepted for bulk mail";
        return out;
    }
    if (!domain.empty() && domain.back() == '.') {
        domain.remove_suffix(1);  // a fully qualified name with its root dot
    }
    std::string ascii_domain;
    if (detail::all_ascii(domain)) {
        ascii_domain = detail::to_lower_copy(domain);
    } else {
        const std::string input(domain);
        char* converted = nullptr;
        const int rc = idn2_to_ascii_8z(input.c_str(), &converted, IDN2_NONTRANSITIONAL | IDN2_NFC_INPUT);
        if (rc != IDN2_OK) {
            out.error = std::string("internationalized domain rejected: ") + idn2_strerror(rc);
            return out;
        }
        ascii_domain = detail::to_lower_copy(converted);
        idn2_free(converted);
    }
    why = detail_address::check_ascii_domain(ascii_domain);
    if (why != nullptr) {
        out.error = why;
        return out;
    }
    // RFC 5321 §4.5.3.1.3: a path is at most 256 octets including "<" ">".
    if (local.size() + 1 + ascii_domain.size() > 254) {
        out.error = "address longer than 254 octets";
        return out;
    }
    out.needs_smtputf8 = !detail::all_ascii(local);
    out.address.reserve(local.size() + 1 + ascii_domain.size());
    out.address.append(local);
    out.at = out.address.size();
    out.address += '@';
    out.address += ascii_domain;
    return out;
}

}  // namespace mxpress::mail
