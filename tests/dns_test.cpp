// Unit tests of MX answer interpretation (net/dns.hpp interpret_mx_answer):
// RFC 5321 §5.1 order from the bytes a DNS server sends. The resolver around
// it (c-ares on the ring: IPv4 before IPv6, caches, failures) is tested
// against a scripted DNS server in tests/integration/dns_test.py.
#include "mxpress/net/dns.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace {

using mxpress::net::dns_status;
using mxpress::net::interpret_mx_answer;

void put16(std::vector<unsigned char>& out, unsigned v) {
    out.push_back(static_cast<unsigned char>(v >> 8));
    out.push_back(static_cast<unsigned char>(v & 0xFF));
}

void put_name(std::vector<unsigned char>& out, const std::string& name) {
    std::size_t start = 0;
    while (start < name.size()) {
        std::size_t dot = name.find('.', start);
        if (dot == std::string::npos) {
            dot = name.size();
        }
        out.push_back(static_cast<unsigned char>(dot - start));
        out.insert(out.end(), name.begin() + static_cast<std::ptrdiff_t>(start),
                   name.begin() + static_cast<std::ptrdiff_t>(dot));
        start = dot + 1;
    }
    out.push_back(0);
}

// A response to "DOMAIN IN MX" holding these records, in this order.
std::vector<unsigned char> mx_response(const std::string& domain,
                                       const std::vector<std::pair<unsigned, std::string>>& records) {
    std::vector<unsigned char> m;
    put16(m, 0x1234);  // id
    put16(m, 0x8180);  // response, RD, RA, NOERROR
    put16(m, 1);       // QDCOUNT
    put16(m, static_cast<unsigned>(records.size()));
    put16(m, 0);
    put16(m, 0);
    put_name(m, domain);
    put16(m, 15);  // MX
    put16(m, 1);   // IN
    for (const auto& [pref, host] : records) {
        put16(m, 0xC00C);  // the question's name
        put16(m, 15);
        put16(m, 1);
        put16(m, 0);
        put16(m, 300);  // TTL
        std::vector<unsigned char> rdata;
        put16(rdata, pref);
        put_name(rdata, host);
        put16(m, static_cast<unsigned>(rdata.size()));
        m.insert(m.end(), rdata.begin(), rdata.end());
    }
    return m;
}

std::vector<std::string> hosts_of(const mxpress::net::mx_answer& a) {
    std::vector<std::string> out;
    for (const auto& t : a.targets) {
        out.push_back(t.host);
    }
    return out;
}

// Lowest preference first whatever the order on the wire; names lowercase
// without the trailing dot; equal preferences in random order, each order
// about as often as the other.
TEST(Dns, MxHostsArePreferenceOrderedAndRandomAmongEquals) {
    const auto wire = mx_response(
        "example.org", {{30, "C.example.org"}, {10, "a1.example.org"}, {20, "b.example.org."}, {10, "A2.Example.Org"}});
    int a1_first = 0;
    constexpr int runs = 400;
    for (int seed = 0; seed < runs; ++seed) {
        std::mt19937 rng(static_cast<std::mt19937::result_type>(seed));
        bool implicit = true;
        const auto ans = interpret_mx_answer("example.org", wire.data(), static_cast<int>(wire.size()), rng, implicit);
        ASSERT_EQ(ans.status, dns_status::ok) << ans.reason;
        EXPECT_FALSE(implicit);
        const auto hosts = hosts_of(ans);
        ASSERT_EQ(hosts.size(), 4u);
        const bool first = hosts[0] == "a1.example.org";
        EXPECT_TRUE(first ? hosts[1] == "a2.example.org"
                          : (hosts[0] == "a2.example.org" && hosts[1] == "a1.example.org"))
            << hosts[0] << " " << hosts[1];
        EXPECT_EQ(hosts[2], "b.example.org");
        EXPECT_EQ(hosts[3], "c.example.org");
        EXPECT_EQ(ans.targets[0].preference, 10);
        EXPECT_EQ(ans.targets[3].preference, 30);
        a1_first += first ? 1 : 0;
    }
    // Binomial(400, 1/2): 200 ± 10 (one sigma); 140..260 fails by chance
    // about once in 10^9 runs, and always when equals keep the wire's order.
    EXPECT_GT(a1_first, 140);
    EXPECT_LT(a1_first, 260);
}

// RFC 7505: "0 ." alone means no mail; an answer without MX records is the
// implicit MX (the resolver then asks for the domain's own addresses).
TEST(Dns, NullMxIsPermanentAndNoMxIsImplicit) {
    std::mt19937 rng(1);
    bool implicit = false;
    const auto null_mx = mx_response("example.org", {{0, ""}});
    const auto a = interpret_mx_answer("example.org", null_mx.data(), static_cast<int>(null_mx.size()), rng, implicit);
    EXPECT_EQ(a.status, dns_status::permanent);
    EXPECT_EQ(a.enhanced, "5.1.10");
    EXPECT_FALSE(implicit);
    const auto none = mx_response("example.org", {});
    interpret_mx_answer("example.org", none.data(), static_cast<int>(none.size()), rng, implicit);
    EXPECT_TRUE(implicit);
}

}  // namespace
