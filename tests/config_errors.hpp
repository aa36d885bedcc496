// tests/config_errors.hpp — the error a configuration text raises, as the
// user sees it ("c.toml:LINE: what"), for the tests of config and rules.
#pragma once

#include <string>

#include "mxpress/engine/config.hpp"

namespace mxpress::test {

// The describe() of the input_error that parsing `text` as "c.toml" throws,
// or "no error".
inline std::string config_error_of(const std::string& text) {
    try {
        (void)engine::parse_config(text, "c.toml");
    } catch (const mail::input_error& e) {
        return e.describe();
    }
    return "no error";
}

}  // namespace mxpress::test
