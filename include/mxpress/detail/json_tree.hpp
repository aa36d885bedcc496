// mxpress/detail/json_tree.hpp — a small JSON document reader (objects,
// arrays, scalars), for files mxpress writes and reads back whole: the
// plan of `mxpress plan` (engine/plan.hpp).
//
// Promises: strict RFC 8259 syntax (no comments, no trailing commas);
// nesting deeper than json_depth_max is refused, not recursed into; strings
// come back decoded as UTF-8 (\u escapes and surrogate pairs); an error
// names the byte offset. Objects keep their members in document order; a
// repeated name is an error (the reader would not know which one counts).
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mxpress/detail/json.hpp"

namespace mxpress::detail {

inline constexpr int json_depth_max = 32;

struct json_node {
    enum class kind { null, boolean, number, string, array, object } type = kind::null;
    bool flag = false;
    std::string text;                                        // string value, or the number's literal
    std::vector<json_node> items;                            // array
    std::vector<std::pair<std::string, json_node>> members;  // object, in document order

    // The member named `key` of an object, or null.
    const json_node* find(std::string_view key) const {
        for (const auto& [k, v] : members) {
            if (k == key) {
                return &v;
            }
        }
        return nullptr;
    }
    bool is(kind k) const noexcept { return type == k; }
};

struct json_syntax_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class json_tree_parser {
public:
    explicit json_tree_parser(std::string_view s) : _s(s) {}

    json_node parse() {
        json_node root = value(0);
        ws();
        if (_i != _s.size()) {
            fail("text after the document");
        }
        return root;
    }

private:
    [[noreturn]] void fail(const char* what) const {
        throw json_syntax_error(std::string(what) + " at byte " + std::to_string(_i));
    }
    void ws() {
        while (_i < _s.size() && (_s[_i] == ' ' || _s[_i] == '\t' || _s[_i] == '\r' || _s[_i] == '\n')) {
            ++_i;
        }
    }
    bool literal(std::string_view word) {
        if (_s.substr(_i, word.size()) == word) {
            _i += word.size();
            return true;
        }
        return false;
    }

    json_node value(int depth) {
        if (depth > json_depth_max) {
            fail("nesting too deep");
        }
        ws();
        json_node n;
        if (_i >= _s.size()) {
            fail("unexpected end");
        }
        const char c = _s[_i];
        if (c == '{') {
            n.type = json_node::kind::object;
            ++_i;
            ws();
            if (_i < _s.size() && _s[_i] == '}') {
                ++_i;
                return n;
            }
            for (;;) {
                ws();
                std::string key = string();
                for (const auto& m : n.members) {
                    if (m.first == key) {
                        fail("repeated member name");
                    }
                }
                ws();
                if (_i >= _s.size() || _s[_i] != ':') {
                    fail("missing ':'");
                }
                ++_i;
                n.members.emplace_back(std::move(key), value(depth + 1));
                ws();
                if (_i < _s.size() && _s[_i] == ',') {
                    ++_i;
                    continue;
                }
                if (_i < _s.size() && _s[_i] == '}') {
                    ++_i;
                    return n;
                }
                fail("missing ',' or '}'");
            }
        }
        if (c == '[') {
            n.type = json_node::kind::array;
            ++_i;
            ws();
            if (_i < _s.size() && _s[_i] == ']') {
                ++_i;
                return n;
            }
            for (;;) {
                n.items.push_back(value(depth + 1));
                ws();
                if (_i < _s.size() && _s[_i] == ',') {
                    ++_i;
                    continue;
                }
                if (_i < _s.size() && _s[_i] == ']') {
                    ++_i;
                    return n;
                }
                fail("missing ',' or ']'");
            }
        }
        if (c == '"') {
            n.type = json_node::kind::string;
            n.text = string();
            return n;
        }
        if (literal("true")) {
            n.type = json_node::kind::boolean;
            n.flag = true;
            return n;
        }
        if (literal("false")) {
            n.type = json_node::kind::boolean;
            return n;
        }
        if (literal("null")) {
            return n;
        }
        return number();
    }

    json_node number() {
        const std::size_t start = _i;
        auto digits = [&]() {
            const std::size_t from = _i;
            while (_i < _s.size() && _s[_i] >= '0' && _s[_i] <= '9') {
                ++_i;
            }
            return _i > from;
        };
        if (_i < _s.size() && _s[_i] == '-') {
            ++_i;
        }
        if (_i < _s.size() && _s[_i] == '0') {
            ++_i;
        } else if (!digits()) {
            fail("bad value");
        }
        if (_i < _s.size() && _s[_i] == '.') {
            ++_i;
            if (!digits()) {
                fail("bad number");
            }
        }
        if (_i < _s.size() && (_s[_i] == 'e' || _s[_i] == 'E')) {
            ++_i;
            if (_i < _s.size() && (_s[_i] == '+' || _s[_i] == '-')) {
                ++_i;
            }
            if (!digits()) {
                fail("bad number");
            }
        }
        json_node n;
        n.type = json_node::kind::number;
        n.text = std::string(_s.substr(start, _i - start));
        return n;
    }

    std::uint32_t hex4() {
        if (_i + 4 > _s.size()) {
            fail("bad \\u escape");
        }
        std::uint32_t v = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = _s[_i++];
            v <<= 4;
            if (c >= '0' && c <= '9') {
                v |= static_cast<std::uint32_t>(c - '0');
            } else if (c >= 'a' && c <= 'f') {
                v |= static_cast<std::uint32_t>(c - 'a' + 10);
            } else if (c >= 'A' && c <= 'F') {
                v |= static_cast<std::uint32_t>(c - 'A' + 10);
            } else {
                fail("bad \\u escape");
            }
        }
        return v;
    }

    std::string string() {
        if (_i >= _s.size() || _s[_i] != '"') {
            fail("expected a string");
        }
        ++_i;
        std::string out;
        while (_i < _s.size()) {
            const char c = _s[_i++];
            if (c == '"') {
                return out;
            }
            if (static_cast<unsigned char>(c) < 0x20) {
                fail("control character in a string");
            }
            if (c != '\\') {
                out += c;
                continue;
            }
            if (_i >= _s.size()) {
                break;
            }
            switch (_s[_i++]) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    std::uint32_t cp = hex4();
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        if (_i + 2 > _s.size() || _s[_i] != '\\' || _s[_i + 1] != 'u') {
                            fail("lone surrogate");
                        }
                        _i += 2;
                        const std::uint32_t lo = hex4();
                        if (lo < 0xDC00 || lo > 0xDFFF) {
                            fail("lone surrogate");
                        }
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        fail("lone surrogate");
                    }
                    append_utf8(out, cp);
                    break;
                }
                default: fail("bad escape");
            }
        }
        fail("unterminated string");
    }

    std::string_view _s;
    std::size_t _i = 0;
};

// Parses a whole JSON document; throws json_syntax_error.
inline json_node parse_json_document(std::string_view text) {
    return json_tree_parser(text).parse();
}

}  // namespace mxpress::detail
