// Tests for mail/suppression.hpp: RFC 5321 matching, the two file forms,
// and the memory the set promises (README, Suppression lists).
#include "mxpress/mail/suppression.hpp"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include "test_util.hpp"

namespace {

using mxpress::mail::load_suppressions;
using mxpress::mail::suppression_set;
using mxpress::test::temp_dir;

TEST(Suppression, MatchesLocalPartExactlyAndDomainInAnyCaseOrIdnForm) {
    suppression_set s;
    ASSERT_TRUE(s.insert("Ann.Lee@Example.ORG"));
    ASSERT_TRUE(s.insert("bo@bücher.example"));
    EXPECT_FALSE(s.insert("not an address"));
    EXPECT_TRUE(s.contains("Ann.Lee@example.org"));
    EXPECT_FALSE(s.contains("ann.lee@example.org")) << "the local part is exact (RFC 5321 2.4)";
    EXPECT_TRUE(s.contains("bo@xn--bcher-kva.example"));
    EXPECT_FALSE(s.contains("bo@bucher.example"));
    EXPECT_EQ(s.size(), 2u);
    s.insert("ann.lee@EXAMPLE.org");
    s.insert("Ann.Lee@example.org");  // already there
    EXPECT_EQ(s.size(), 3u);
}

TEST(Suppression, LoadsPlainListsAndCsvWithAnEmailColumn) {
    temp_dir dir;
    suppression_set s;
    const auto plain =
        load_suppressions(dir.write("l.txt", "# comment\r\na@x.test\r\n\r\n  b@X.TEST  \nnot an address\nc@x.test"), s);
    EXPECT_EQ(plain.added, 3u);
    EXPECT_EQ(plain.skipped, 1u);
    EXPECT_EQ(plain.first_skipped, 5u);
    const auto csv =
        load_suppressions(dir.write("l.csv", "\xEF\xBB\xBFname,EMAIL\r\n\"Lee, Ann\",d@x.test\nEve,\"e@x.test\"\n"), s);
    EXPECT_EQ(csv.added, 2u);
    for (const char* a : {"a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test"}) {
        EXPECT_TRUE(s.contains(a)) << a;
    }
    EXPECT_FALSE(s.contains("f@x.test"));
    try {
        load_suppressions(dir.file("missing.txt"), s);
        ADD_FAILURE() << "no error for a missing list";
    } catch (const mxpress::mail::input_error& e) {
        EXPECT_NE(e.describe().find("missing.txt: cannot open suppression list"), std::string::npos) << e.describe();
    }
}

// 8-byte slots at load <= 3/4: at most 21.3 bytes per address, and no
// address inserted is ever missed.
TEST(Suppression, MemoryPerAddressAndNoFalseNegatives) {
    suppression_set s;
    constexpr std::size_t n = 200'000;
    for (std::size_t i = 0; i < n; ++i) {
        s.insert_normalized(fmt::format("user{}@d{}.example", i, i % 1000));
    }
    EXPECT_EQ(s.size(), n);
    EXPECT_LE(double(s.bytes()) / double(n), 21.4);
    EXPECT_GE(double(s.bytes()) / double(n), 10.6);
    std::size_t missed = 0;
    std::size_t false_hits = 0;
    for (std::size_t i = 0; i < n; ++i) {
        missed += s.contains_normalized(fmt::format("user{}@d{}.example", i, i % 1000)) ? 0 : 1;
        false_hits += s.contains_normalized(fmt::format("other{}@d{}.example", i, i % 1000)) ? 1 : 0;
    }
    EXPECT_EQ(missed, 0u);
    EXPECT_EQ(false_hits, 0u) << "expected about 2e5 * 2e5 / 2^64 = 2e-9 false hits";
}

}  // namespace
