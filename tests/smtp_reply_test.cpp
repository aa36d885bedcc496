// Tests for smtp/reply.hpp and smtp/dot_stuff.hpp.
#include "mxpress/smtp/dot_stuff.hpp"
#include "mxpress/smtp/reply.hpp"

#include <gtest/gtest.h>

namespace {

using mxpress::smtp::reply;
using mxpress::smtp::reply_parser;

struct parsed {
    std::vector<reply> replies;
    std::string error;
};

parsed feed_all(std::string_view data, std::size_t step) {
    reply_parser p;
    parsed out;
    while (!data.empty()) {
        const std::string_view piece = data.substr(0, std::min(step, data.size()));
        std::size_t used = 0;
        const auto s = p.feed(piece, used);
        data.remove_prefix(used);
        if (s == reply_parser::status::error) {
            out.error = p.error();
            return out;
        }
        if (s == reply_parser::status::reply_ready) {
            out.replies.push_back(p.take());
        }
    }
    return out;
}

TEST(SmtpReply, SingleAndMultiLineWithEnhancedCodes) {
    const auto r = feed_all(
        "250-mx.example greets you\r\n250-PIPELINING\r\n250 2.0.0 OK\r\n550 5.1.1 <a@b>: no such user\r\n", 1000);
    ASSERT_EQ(r.replies.size(), 2u);
    EXPECT_EQ(r.replies[0].code, 250);
    EXPECT_EQ(r.replies[0].text, "mx.example greets you\nPIPELINING\nOK");
    EXPECT_EQ(r.replies[0].enhanced, "") << "only the first line's enhanced code counts";
    EXPECT_EQ(r.replies[1].code, 550);
    EXPECT_EQ(r.replies[1].enhanced, "5.1.1");
    EXPECT_EQ(r.replies[1].text, "<a@b>: no such user");
    EXPECT_TRUE(r.replies[1].permanent());
    EXPECT_EQ(r.replies[1].one_line(), "550 5.1.1 <a@b>: no such user");
}

TEST(SmtpReply, ByteByByteGivesTheSameReplies) {
    const std::string data = "220 ready\r\n250-a\r\n250 b\r\n354 go ahead\r\n421 4.3.2 bye\r\n";
    const auto whole = feed_all(data, data.size());
    // The whole parse must succeed first: two empty parses would compare equal.
    ASSERT_EQ(whole.error, "");
    ASSERT_EQ(whole.replies.size(), 4u);
    EXPECT_EQ(whole.replies[1].text, "a\nb");
    EXPECT_EQ(whole.replies[3].enhanced, "4.3.2");
    for (std::size_t step = 1; step < 8; ++step) {
        const auto cut = feed_all(data, step);
        ASSERT_EQ(cut.error, "") << "step " << step;
        ASSERT_EQ(cut.replies.size(), whole.replies.size()) << "step " << step;
        for (std::size_t i = 0; i < cut.replies.size(); ++i) {
            EXPECT_EQ(cut.replies[i].code, whole.replies[i].code);
            EXPECT_EQ(cut.replies[i].text, whole.replies[i].text);
            EXPECT_EQ(cut.replies[i].enhanced, whole.replies[i].enhanced);
        }
    }
}

TEST(SmtpReply, BareCodeAndLfOnlyAndEnhancedClassMismatch) {
    const auto r = feed_all("250\r\n250 ok\n451 5.0.0 class differs\r\n", 100);
    ASSERT_EQ(r.replies.size(), 3u);
    EXPECT_EQ(r.replies[0].text, "");
    EXPECT_EQ(r.replies[1].text, "ok");
    EXPECT_EQ(r.replies[2].enhanced, "") << "5.x.x cannot belong to a 4xx reply";
    EXPECT_EQ(r.replies[2].text, "5.0.0 class differs");
}

TEST(SmtpReply, LongLineOver512IsAccepted) {
    const std::string text(2000, 'x');
    const auto r = feed_all("250 " + text + "\r\n", 7);
    ASSERT_EQ(r.replies.size(), 1u);
    EXPECT_EQ(r.replies[0].text, text);
}

TEST(SmtpReply, EndlessLineIsAnError) {
    const auto r = feed_all("250 " + std::string(100000, 'x'), 4096);
    EXPECT_EQ(r.error, "reply line longer than 16384 bytes");
}

TEST(SmtpReply, GarbageIsAnError) {
    EXPECT_EQ(feed_all("HTTP/1.1 400 Bad Request\r\n", 100).error, "malformed reply line: HTTP/1.1 400 Bad Request");
    EXPECT_EQ(feed_all("25\r\n", 100).error, "malformed reply line: 25");
    EXPECT_EQ(feed_all("250_ok\r\n", 100).error, "malformed reply line: 250_ok");
    EXPECT_EQ(feed_all("150 ok\r\n", 100).error, "malformed reply line: 150 ok");
    EXPECT_EQ(feed_all("250-a\r\n550 b\r\n", 100).error, "reply code changed inside a multi-line reply: 550 b");
    EXPECT_EQ(feed_all("\x16\x03\x01\x02\x05\r\n", 100).error, "malformed reply line: ?????");
}

TEST(SmtpReply, TooManyLines) {
    std::string data;
    for (int i = 0; i < 600; ++i) {
        data += "250-line\r\n";
    }
    EXPECT_EQ(feed_all(data, 1000).error, "reply has more than 512 lines");
}

TEST(DotStuff, StuffsLeadingDotsAndTerminates) {
    std::string out;
    mxpress::smtp::append_dot_stuffed(out, ".start\r\nmid\r\n.\r\n..two\r\nend.\r\n");
    EXPECT_EQ(out, "..start\r\nmid\r\n..\r\n...two\r\nend.\r\n.\r\n");
    out.clear();
    mxpress::smtp::append_dot_stuffed(out, "no final crlf");
    EXPECT_EQ(out, "no final crlf\r\n.\r\n");
    out.clear();
    mxpress::smtp::append_dot_stuffed(out, "");
    EXPECT_EQ(out, "\r\n.\r\n");
}

}  // namespace
