// Tests for mail/address.hpp (RFC 5321 mailbox syntax for bulk delivery).
#include "mxpress/mail/address.hpp"

#include <gtest/gtest.h>

namespace {

using mxpress::mail::check_address;

TEST(Address, AcceptsAndNormalizes) {
    auto a = check_address("  John.Doe+tag@Example.ORG ");
    ASSERT_TRUE(a.valid()) << a.error;
    EXPECT_EQ(a.address, "John.Doe+tag@example.org");
    EXPECT_EQ(a.local_part(), "John.Doe+tag");
    EXPECT_EQ(a.domain(), "example.org");
    EXPECT_FALSE(a.needs_smtputf8);
}

TEST(Address, QuotedLocalPart) {
    auto a = check_address("\"john doe\"@example.org");
    ASSERT_TRUE(a.valid()) << a.error;
    EXPECT_EQ(a.local_part(), "\"john doe\"");
    EXPECT_TRUE(check_address("\"a\\\"b\"@example.org").valid());
    EXPECT_FALSE(check_address("\"a\"b\"@example.org").valid());
}

TEST(Address, InternationalizedDomainBecomesALabels) {
    auto a = check_address("taro@例え.JP");
    ASSERT_TRUE(a.valid()) << a.error;
    EXPECT_EQ(a.address, "taro@xn--r8jz45g.jp");
    EXPECT_FALSE(a.needs_smtputf8);
    auto b = check_address("user@Bücher.example");
    ASSERT_TRUE(b.valid()) << b.error;
    EXPECT_EQ(b.domain(), "xn--bcher-kva.example");
}

TEST(Address, NonAsciiLocalPartNeedsSmtputf8) {
    auto a = check_address("用户@example.com");
    ASSERT_TRUE(a.valid()) << a.error;
    EXPECT_TRUE(a.needs_smtputf8);
}

// The limits are inclusive: exactly 64 octets of local part, 63 of a label
// and 254 of the whole address are accepted; one more is refused.
TEST(Address, AcceptsExactlyTheLimits) {
    const std::string local64(64, 'l');
    const auto at_local_limit = check_address(local64 + "@example.org");
    ASSERT_TRUE(at_local_limit.valid()) << at_local_limit.error;
    EXPECT_EQ(at_local_limit.local_part(), local64);
    EXPECT_EQ(check_address("l" + local64 + "@example.org").error, "local part longer than 64 octets");

    const std::string label63(63, 'c');
    const auto at_label_limit = check_address("a@" + label63 + ".org");
    ASSERT_TRUE(at_label_limit.valid()) << at_label_limit.error;
    EXPECT_EQ(check_address("a@c" + label63 + ".org").error, "domain label longer than 63 octets");

    // 64 + 1 + (63 + 1 + 63 + 1 + 57 + 4) = 254 octets.
    const std::string domain189 = label63 + "." + label63 + "." + std::string(57, 'c') + ".org";
    const std::string address254 = local64 + "@" + domain189;
    ASSERT_EQ(address254.size(), 254u);
    const auto at_path_limit = check_address(address254);
    ASSERT_TRUE(at_path_limit.valid()) << at_path_limit.error;
    EXPECT_EQ(at_path_limit.address, address254);
    const std::string address255 = local64 + "@" + label63 + "." + label63 + "." + std::string(58, 'c') + ".org";
    ASSERT_EQ(address255.size(), 255u);
    EXPECT_EQ(check_address(address255).error, "address longer than 254 octets");
}

TEST(Address, Rejections) {
    struct bad {
        const char* in;
        const char* why;
    };
    const std::string local65(65, 'a');
    const std::string label64(64, 'b');
    const std::string long_domain = std::string(63, 'c') + "." + std::string(63, 'c') + "." + std::string(63, 'c') +
                                    "." + std::string(60, 'c') + ".com";
    const bad cases[] = {
        {"", "empty address"},
        {"plainaddress", "address has no '@'"},
        {"@example.org", "empty local part"},
        {"a@", "empty domain"},
        {".a@example.org", "local part starts or ends with '.'"},
        {"a..b@example.org", "local part has consecutive dots"},
        {"a b@example.org", "local part has a character that needs quoting"},
        {"a@[192.0.2.1]", "address literals are not accepted for bulk mail"},
        {"a@localhost", "domain has a single label"},
        {"a@-x.org", "domain label starts or ends with '-'"},
        {"a@x..org", "domain has an empty label"},
        {"a@x_y.org", "domain has a character not allowed in host names"},
        {"a@1.2.3.4", "domain looks like an IP address"},
        {"a@\xC3\x28.org", "address is not valid UTF-8"},
    };
    for (const bad& c : cases) {
        auto a = check_address(c.in);
        EXPECT_FALSE(a.valid()) << c.in;
        EXPECT_EQ(a.error, c.why) << c.in;
    }
    EXPECT_EQ(check_address(local65 + "@example.org").error, "local part longer than 64 octets");
    EXPECT_EQ(check_address("a@" + label64 + ".org").error, "domain label longer than 63 octets");
    EXPECT_EQ(check_address("a@" + long_domain).error, "domain longer than 255 octets");
    const std::string path_too_long = std::string(64, 'l') + "@" + std::string(63, 'c') + "." + std::string(63, 'c') +
                                      "." + std::string(62, 'c') + ".org";
    EXPECT_EQ(check_address(path_too_long).error, "address longer than 254 octets");
}

}  // namespace
