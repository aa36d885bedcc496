// Fuzzes the interpretation of MX answers (net/dns.hpp interpret_mx_answer,
// on top of c-ares 1.18's parser) and c-ares's A/AAAA parsers as the
// resolver calls them: any bytes a DNS server sends must give ordered,
// well-formed targets or a failure, never a crash or an empty success.
#include <cstdint>
#include <cstdlib>
#include <random>

#include "mxpress/net/dns.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size > 65535) {
        return 0;
    }
    const int len = static_cast<int>(size);
    std::mt19937 rng(7);
    bool implicit = false;
    const auto answer = mxpress::net::interpret_mx_answer("example.org", data, len, rng, implicit);
    if (answer.status == mxpress::net::dns_status::ok) {
        if (implicit || answer.targets.empty()) {
            std::abort();
        }
        for (std::size_t i = 0; i < answer.targets.size(); ++i) {
            const auto& t = answer.targets[i];
            if (t.host.empty() || t.host.back() == '.') {
                std::abort();
            }
            for (char c : t.host) {
                if (c >= 'A' && c <= 'Z') {
                    std::abort();
                }
            }
            if (i > 0 && answer.targets[i - 1].preference > t.preference) {
                std::abort();
            }
        }
    } else if (!implicit && answer.reason.empty()) {
        std::abort();
    }
    ares_addrttl v4[32];
    int n4 = 32;
    if (ares_parse_a_reply(data, len, nullptr, v4, &n4) == ARES_SUCCESS && (n4 < 0 || n4 > 32)) {
        std::abort();
    }
    ares_addr6ttl v6[32];
    int n6 = 32;
    if (ares_parse_aaaa_reply(data, len, nullptr, v6, &n6) == ARES_SUCCESS && (n6 < 0 || n6 > 32)) {
        std::abort();
    }
    return 0;
}
