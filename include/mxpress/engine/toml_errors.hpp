// mxpress/engine/toml_errors.hpp — the errors of the TOML file readers
// (config.hpp and the sections that parse themselves: dkim_config.hpp,
// rules.hpp, sequence.hpp), so that each says the same thing the same way.
//
// Promises:
// - Every error is a mail::input_error naming the file and the line of the
//   node it is about (of the bad text, for a syntax error).
// - Messages are the caller's, or, where a helper writes one, WHERE as the
//   caller passes it, brackets included ("[dkim]", "[[rule]] \"x\""):
//     get_string        WHERE KEY must be a non-empty string
//     get_bool          WHERE KEY must be true or false
//     fail_unknown_key  unknown key 'KEY' in WHERE[HINT] (known: KNOWN)
//     parse_toml        TOML syntax: …
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "mxpress/mail/input_error.hpp"

namespace mxpress::engine::toml_errors {

inline std::uint64_t line_of(const toml::node& n) {
    return n.source().begin.line;
}

[[noreturn]] inline void fail(const std::string& file, const toml::node& n, const std::string& what) {
    throw mail::input_error(file, line_of(n), what);
}

// `hint` goes right after WHERE: "; did you mean 'x'?", or "".
[[noreturn]] inline void fail_unknown_key(const std::string& file, const toml::node& n, std::string_view key,
                                          std::string_view where, std::string_view known, std::string_view hint = {}) {
    fail(file, n, fmt::format("unknown key '{}' in {}{} (known: {})", key, where, hint, known));
}

// The text of a TOML file; a syntax error is an input_error.
inline toml::table parse_toml(std::string_view text, const std::string& file) {
    try {
        return toml::parse(text, std::string_view(file));
    } catch (const toml::parse_error& e) {
        throw mail::input_error(file, e.source().begin.line, fmt::format("TOML syntax: {}", e.description()));
    }
}

inline std::string get_string(const std::string& file, std::string_view where, std::string_view key,
                              const toml::node& n) {
    const auto* s = n.as_string();
    if (s == nullptr || s->get().empty()) {
        fail(file, n, fmt::format("{} {} must be a non-empty string", where, key));
    }
    return s->get();
}

inline bool get_bool(const std::string& file, std::string_view where, std::string_view key, const toml::node& n) {
    const auto* b = n.as_boolean();
    if (b == nullptr) {
        fail(file, n, fmt::format("{} {} must be true or false", where, key));
    }
    return b->get();
}

}  // namespace mxpress::engine::toml_errors
