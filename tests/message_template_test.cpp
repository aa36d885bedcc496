// Tests for mail/message_template.hpp. Decoding is checked by Python's email
// package (a real, independent MIME implementation), not by our own code.
#include "mxpress/mail/message_template.hpp"

#include <gtest/gtest.h>

#include <cctype>
#include <set>

#include "test_util.hpp"

namespace {

using mxpress::mail::input_error;
using mxpress::mail::message_template;
using mxpress::mail::render_result;
using mxpress::mail::renderer;
using mxpress::mail::renderer_options;
using mxpress::test::fixed_clock;
using mxpress::test::temp_dir;

const std::vector<std::string> columns = {"email", "name", "city"};

renderer_options options(bool eight_bit = true) {
    renderer_options o;
    o.from = "bounce@sender.example";
    o.eight_bit_allowed = eight_bit;
    o.clock = fixed_clock;
    o.message_id_seed = 42;
    return o;
}

std::string render(const std::string& tmpl, std::vector<std::string_view> fields, render_result* result = nullptr,
                   bool eight_bit = true) {
    const auto t = message_template::compile(tmpl, "m.eml", columns);
    renderer r(t, options(eight_bit));
    std::string out;
    const auto res = r.render(fields, out);
    if (result != nullptr) {
        *result = res;
    }
    return out;
}

std::string compile_error(const std::string& tmpl) {
    try {
        message_template::compile(tmpl, "m.eml", columns);
    } catch (const input_error& e) {
        return e.describe();
    }
    return "no error";
}

// Parses a rendered message with Python's email package and prints what a
// mail reader would show: the decoded headers named in `names`, then the body.
std::string python_decode(const std::string& message, const std::string& names) {
    temp_dir dir;
    const std::string path = dir.write("msg.eml", message);
    const std::string script = dir.write("decode.py",
                                         "import sys, email, email.policy\n"
                                         "m = email.message_from_bytes(open(sys.argv[1],'rb').read(), "
                                         "policy=email.policy.default)\n"
                                         "for n in sys.argv[2].split(','):\n"
                                         "    print(n + '=' + str(m[n]))\n"
                                         "print('BODY=' + m.get_content().replace('\\r\\n', '\\n'))\n"
                                         "print('DEFECTS=' + str(sum(len(p.defects) for p in m.walk()) + "
                                         "sum(len(m[h].defects) for h in m.keys())))\n");
    int status = 0;
    std::string out =
        mxpress::test::run(std::string(mxpress::test::python3()) + " " + script + " " + path + " " + names, status);
    EXPECT_EQ(status, 0) << out;
    return out;
}

// The Message-ID header line of a rendered message ("" when there is none).
std::string message_id_line(const std::string& message) {
    const std::size_t b = message.find("\r\nMessage-ID: ");
    if (b == std::string::npos) {
        return "";
    }
    const std::size_t e = message.find("\r\n", b + 2);
    return message.substr(b + 2, e - b - 2);
}

// "Message-ID: <dot-atom@sender.example>" with a dot-atom of letters and
// digits (what the renderer makes; checked by hand: std::regex trips GCC 12's
// -Wmaybe-uninitialized under the sanitizers).
bool is_message_id_line(const std::string& line) {
    const std::string head = "Message-ID: <";
    const std::string tail = "@sender.example>";
    if (line.size() <= head.size() + tail.size() || !line.starts_with(head) || !line.ends_with(tail)) {
        return false;
    }
    const std::string atom = line.substr(head.size(), line.size() - head.size() - tail.size());
    bool part_empty = true;
    for (char ch : atom) {
        if (ch == '.') {
            if (part_empty) {
                return false;
            }
            part_empty = true;
        } else if (std::isalnum(static_cast<unsigned char>(ch))) {
            part_empty = false;
        } else {
            return false;
        }
    }
    return !part_empty;
}

TEST(MessageTemplate, RendersFieldsAndAddsMissingHeaders) {
    const auto t = message_template::compile("Subject: Hi {{name}}\nTo: <{{email}}>\n\nHello {{ name }} in {{CITY}}.\n",
                                             "m.eml", columns);
    renderer r(t, options());
    std::string out;
    ASSERT_TRUE(r.render({"a@x.org", "Ann", "Oslo"}, out).ok());
    // Message-ID: RFC 5322 msg-id with a dot-atom left of '@' and the
    // sender's domain right of it; its value is the renderer's own business.
    const std::string id = message_id_line(out);
    EXPECT_TRUE(is_message_id_line(id)) << id;
    EXPECT_FALSE(is_message_id_line("Message-ID: <a..b@sender.example>"));
    EXPECT_FALSE(is_message_id_line("Message-ID: <a b@sender.example>"));
    std::string rest = out;
    rest.replace(rest.find(id), id.size(), "Message-ID: (checked above)");
    EXPECT_EQ(rest,
              "Subject: Hi Ann\r\n"
              "To: <a@x.org>\r\n"
              "From: <bounce@sender.example>\r\n"
              "Date: Wed, 18 Nov 2026 11:06:40 +0000\r\n"
              "Message-ID: (checked above)\r\n"
              "MIME-Version: 1.0\r\n"
              "\r\n"
              "Hello Ann in Oslo.\r\n");
    // The next message from the same renderer, same row, same second: a new id.
    std::string again;
    ASSERT_TRUE(r.render({"a@x.org", "Ann", "Oslo"}, again).ok());
    EXPECT_TRUE(is_message_id_line(message_id_line(again))) << message_id_line(again);
    EXPECT_NE(message_id_line(again), id);
}

TEST(MessageTemplate, KeepsTemplateDateMessageIdMimeVersionAndFrom) {
    const std::string out = render(
        "From: a@b.org\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@y>\r\nMIME-Version: 1.0\r\n\r\nb\r\n",
        {"a@x.org", "", ""});
    EXPECT_EQ(
        out,
        "From: a@b.org\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@y>\r\nMIME-Version: 1.0\r\n\r\nb\r\n");
}

TEST(MessageTemplate, MessageIdsAreUnique) {
    const auto t = message_template::compile("Subject: x\n\nb\n", "m.eml", columns);
    renderer_options o;
    o.from = "bounce@sender.example";
    renderer r1(t, o);
    renderer r2(t, o);
    std::set<std::string> ids;
    std::string out;
    for (int i = 0; i < 5000; ++i) {
        for (renderer* r : {&r1, &r2}) {
            r->render({"a@x.org", "", ""}, out);
            const auto b = out.find("Message-ID: <");
            const auto e = out.find('>', b);
            ASSERT_NE(b, std::string::npos);
            const std::string id = out.substr(b, e - b);
            EXPECT_TRUE(id.ends_with("@sender.example"));
            ids.insert(id);
        }
    }
    EXPECT_EQ(ids.size(), 10000u);
}

TEST(MessageTemplate, UnknownFieldIsAnErrorNamingFieldAndLine) {
    EXPECT_EQ(compile_error("Subject: hi\n\nline two\nDear {{nmae}},\n"),
              "m.eml:4: unknown merge field '{{nmae}}': the recipients file has columns email, name, city");
    EXPECT_EQ(compile_error("Subject: {{ bogus }}\n\nx\n"),
              "m.eml:1: unknown merge field '{{bogus}}': the recipients file has columns email, name, city");
    EXPECT_EQ(compile_error("Subject: x\n\nDear {{name\n}}\n"),
              "m.eml:3: '{{' without a closing '}}' on the same line");
    EXPECT_EQ(compile_error("Subject: x\n\n{{}}\n"), "m.eml:3: empty merge field '{{}}'");
}

// Found by fuzz_template: Content-Type went out as written, 8-bit included.
TEST(MessageTemplate, NonAsciiContentTypeIsAnError) {
    EXPECT_EQ(compile_error("Subject: x\nContent-Type: text/plain; name=\"caf\xC3\xA9\"\n\nb\n"),
              "m.eml:2: non-ASCII text is not allowed in Content-Type");
}

TEST(MessageTemplate, MissingBlankLineBetweenHeadersAndBody) {
    EXPECT_EQ(compile_error("Subject: hi\nDear friend,\nmore\n"),
              "m.eml:2: expected a header line 'Name: value' or a blank line ending the headers (is the blank "
              "line between headers and body missing?)");
    EXPECT_EQ(compile_error("Hello there\n"),
              "m.eml:1: expected a header line 'Name: value' or a blank line ending the headers (is the blank "
              "line between headers and body missing?)");
    EXPECT_EQ(compile_error(""), "m.eml: template is empty");
    EXPECT_EQ(compile_error(" folded\n\nx"),
              "m.eml:1: continuation line before the first header (expected 'Name: value')");
}

TEST(MessageTemplate, FieldValueCannotInjectAHeader) {
    const std::string out =
        render("To: {{name}} <{{email}}>\nSubject: {{name}}\n\nHi\n", {"a@x.org", "x\r\nBcc: evil@x", ""});
    // No line of the header block starts with "Bcc:".
    const std::string headers = out.substr(0, out.find("\r\n\r\n") + 2);
    EXPECT_EQ(headers.find("\r\nBcc:"), std::string::npos) << headers;
    EXPECT_NE(headers.find("Subject: x  Bcc: evil@x\r\n"), std::string::npos) << headers;
    EXPECT_NE(headers.find("To: \"x  Bcc: evil@x\" <a@x.org>\r\n"), std::string::npos) << headers;
    const std::string decoded = python_decode(out, "To,Subject,Bcc");
    EXPECT_NE(decoded.find("Bcc=None"), std::string::npos) << decoded;
}

TEST(MessageTemplate, DisplayNameWithCommaStaysOneMailbox) {
    const std::string out = render("To: {{name}} <{{email}}>\n\nx\n", {"a@x.org", "Doe, John", ""});
    EXPECT_NE(out.find("To: \"Doe, John\" <a@x.org>\r\n"), std::string::npos) << out;
}

TEST(MessageTemplate, JapaneseHeadersAreEncodedAndDecodeBack) {
    const std::string tmpl =
        "From: \"{{city}}\" <news@example.jp>\n"
        "To: {{name}} <{{email}}>\n"
        "Subject: "
        "【お知らせ】{{name}}様、{{city}}からの重要なお知らせです。本文をご確認ください。よろしくお願いいたします。\n"
        "\n"
        "{{name}}様\n本文です。\n";
    render_result res;
    const std::string out = render(tmpl, {"taro@例え.jp", "山田太郎", "東京"}, &res);
    ASSERT_TRUE(res.ok()) << res.error;
    EXPECT_FALSE(res.needs_smtputf8) << "the domain goes as A-labels";
    EXPECT_TRUE(res.eight_bit);
    const std::string headers = out.substr(0, out.find("\r\n\r\n"));
    EXPECT_TRUE(mxpress::detail::all_ascii(headers)) << headers;
    std::size_t start = 0;
    while (start < headers.size()) {
        std::size_t end = headers.find("\r\n", start);
        end = end == std::string::npos ? headers.size() : end;
        EXPECT_LE(end - start, 78u) << headers.substr(start, end - start);
        start = end + 2;
    }
    const std::string decoded = python_decode(out, "From,To,Subject");
    EXPECT_NE(decoded.find("From=東京 <news@example.jp>\n"), std::string::npos) << decoded;
    EXPECT_NE(decoded.find("To=山田太郎 <taro@xn--r8jz45g.jp>\n"), std::string::npos) << decoded;
    EXPECT_NE(
        decoded.find(
            "Subject="
            "【お知らせ】山田太郎様、東京からの重要なお知らせです。本文をご確認ください。よろしくお願いいたします。\n"),
        std::string::npos)
        << decoded;
    EXPECT_NE(decoded.find("BODY=山田太郎様\n本文です。\n"), std::string::npos) << decoded;
    EXPECT_NE(decoded.find("DEFECTS=0"), std::string::npos) << decoded;
}

TEST(MessageTemplate, NonAsciiBodyIsQuotedPrintableWithout8bit) {
    render_result res;
    const std::string out = render("Subject: x\n\nCafé {{name}}\n", {"a@x.org", "Zoë", ""}, &res, false);
    ASSERT_TRUE(res.ok());
    EXPECT_FALSE(res.eight_bit);
    EXPECT_NE(out.find("Content-Transfer-Encoding: quoted-printable\r\n"), std::string::npos);
    EXPECT_NE(out.find("Content-Type: text/plain; charset=utf-8\r\n"), std::string::npos);
    EXPECT_TRUE(mxpress::detail::all_ascii(out));
    const std::string decoded = python_decode(out, "Subject");
    EXPECT_NE(decoded.find("BODY=Café Zoë\n"), std::string::npos) << decoded;
}

TEST(MessageTemplate, TemplateContentTypeGetsCharsetWhenNeeded) {
    const std::string out = render("Content-Type: text/html\nSubject: x\n\n<p>{{name}}</p>\n", {"a@x.org", "Zoë", ""});
    EXPECT_NE(out.find("Content-Type: text/html; charset=utf-8\r\n"), std::string::npos) << out;
    EXPECT_EQ(out.find("Content-Type: text/html\r\n"), std::string::npos) << "declared once";
    const std::string ascii =
        render("Content-Type: text/html\nSubject: x\n\n<p>{{name}}</p>\n", {"a@x.org", "Zoe", ""});
    EXPECT_NE(ascii.find("Content-Type: text/html\r\n"), std::string::npos) << ascii;
}

TEST(MessageTemplate, LongBodyLinesBecomeQuotedPrintable) {
    const std::string long_value(3000, 'x');
    render_result res;
    const std::string out = render("Subject: x\n\n{{name}}\nend\n", {"a@x.org", long_value, ""}, &res);
    ASSERT_TRUE(res.ok());
    EXPECT_NE(out.find("Content-Transfer-Encoding: quoted-printable"), std::string::npos);
    std::size_t start = 0;
    while (start < out.size()) {
        std::size_t end = out.find("\r\n", start);
        end = end == std::string::npos ? out.size() : end;
        EXPECT_LE(end - start, 76u);
        start = end + 2;
    }
    const std::string decoded = python_decode(out, "Subject");
    EXPECT_NE(decoded.find("BODY=" + long_value + "\nend\n"), std::string::npos);
}

TEST(MessageTemplate, LongHeadersAreFolded) {
    std::string words;
    for (int i = 0; i < 300; ++i) {
        words += "word" + std::to_string(i) + " ";
    }
    const std::string out = render("Subject: {{name}}\n\nx\n", {"a@x.org", words, ""});
    const std::string decoded = python_decode(out, "Subject");
    EXPECT_NE(decoded.find("Subject=" + words.substr(0, words.size() - 1)), std::string::npos) << decoded;
    std::size_t start = 0;
    while (start < out.size()) {
        std::size_t end = out.find("\r\n", start);
        end = end == std::string::npos ? out.size() : end;
        EXPECT_LE(end - start, 78u);
        start = end + 2;
    }
}

TEST(MessageTemplate, UnfoldableStructuredHeaderMakesTheRowInvalid) {
    render_result res;
    render("List-Unsubscribe: <https://x.example/u/{{name}}>\n\nx\n", {"a@x.org", std::string(1200, 'u'), ""}, &res);
    EXPECT_FALSE(res.ok());
    EXPECT_EQ(res.error, "header List-Unsubscribe (template line 1): a line would exceed 998 octets");
    render("List-Id: {{name}}\n\nx\n", {"a@x.org", "Zoë", ""}, &res);
    EXPECT_EQ(res.error, "header List-Id (template line 1): non-ASCII text is not allowed there");
}

TEST(MessageTemplate, AuthorsMultipartBodyIsKeptAsIs) {
    const std::string tmpl =
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/alternative; boundary=\"b1\"\n"
        "Subject: x\n\n"
        "--b1\nContent-Type: text/plain\n\nHi {{name}}\n--b1--\n";
    render_result res;
    const std::string out = render(tmpl, {"a@x.org", "Ann", ""}, &res);
    ASSERT_TRUE(res.ok());
    // Its text part declares no charset: it gains charset=utf-8.
    EXPECT_NE(out.find("\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHi Ann\r\n--b1--\r\n"),
              std::string::npos)
        << out;
    EXPECT_EQ(out.find("Content-Transfer-Encoding"), std::string::npos);
    // Its text part declares no transfer encoding: one is chosen per row.
    const std::string long_row = render(tmpl, {"a@x.org", std::string(1000, 'n'), ""}, &res);
    ASSERT_TRUE(res.ok()) << res.error;
    EXPECT_NE(long_row.find("--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
                            "Content-Transfer-Encoding: quoted-printable\r\n\r\nHi nnn"),
              std::string::npos)
        << long_row;
    EXPECT_TRUE(long_row.ends_with("nnnn\r\n--b1--\r\n")) << long_row;  // the delimiter CRLF only
}

TEST(MessageTemplate, AuthorsTextPartsWithoutACharsetSayUtf8) {
    // A folded Content-Type without charset, and a part with no headers
    // (text/plain; charset=us-ascii by RFC 2045 5.2): non-ASCII values must
    // not go out labelled us-ascii.
    const std::string tmpl =
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=\"b1\"\n"
        "Subject: x\n\n"
        "--b1\nContent-Type: text/plain;\n format=flowed\n\nA {{name}}\n"
        "--b1\n\nB {{name}}\n"
        "--b1\nContent-Type: text/html; charset=utf-8\n\n<p>C {{name}}</p>\n--b1--\n";
    render_result res;
    const std::string out = render(tmpl, {"a@x.org", "J\xc3\xb6rg", ""}, &res, false);
    ASSERT_TRUE(res.ok()) << res.error;
    EXPECT_NE(out.find("--b1\r\nContent-Type: text/plain;\r\n format=flowed; charset=utf-8\r\n"
                       "Content-Transfer-Encoding: quoted-printable\r\n\r\nA J=C3=B6rg\r\n--b1\r\n"),
              std::string::npos)
        << out;
    EXPECT_NE(out.find("--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
                       "Content-Transfer-Encoding: quoted-printable\r\n\r\nB J=C3=B6rg\r\n--b1\r\n"),
              std::string::npos)
        << out;
    // A part that names its charset keeps its header as written.
    EXPECT_NE(out.find("--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: "),
              std::string::npos)
        << out;
    EXPECT_EQ(out.find("charset=utf-8; charset"), std::string::npos) << out;
}

TEST(MessageTemplate, AuthorsMultipartPartsThatDeclareTheirEncodingAreKept) {
    const std::string tmpl =
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=\"b1\"\n"
        "Subject: x\n\n"
        "preamble\n--b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nA {{name}}\n"
        "--b1\nContent-Type: text/plain; charset=utf-8\n\nB {{name}}\n--b1--\nepilogue\n";
    render_result res;
    // The first part is the author's (8bit): refused for a server without 8BITMIME.
    render(tmpl, {"a@x.org", "Zoë", ""}, &res, false);
    EXPECT_TRUE(res.needs_8bitmime) << res.error;
    // With 8BITMIME both go 8bit; the second says so itself.
    std::string out = render(tmpl, {"a@x.org", "Zoë", ""}, &res, true);
    ASSERT_TRUE(res.ok()) << res.error;
    EXPECT_TRUE(res.eight_bit);
    EXPECT_NE(out.find("\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
                       "Content-Transfer-Encoding: 8bit\r\n\r\nA Zoë\r\n--b1\r\nContent-Type: text/plain; "
                       "charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nB Zoë\r\n--b1--\r\nepilogue\r\n"),
              std::string::npos)
        << out;
}

TEST(MessageTemplate, BodyValuesGetCrlfAndDotsSurvive) {
    const std::string out = render("Subject: x\n\n{{name}}\n.dot line\n", {"a@x.org", "l1\nl2\rl3", ""});
    EXPECT_TRUE(out.ends_with("\r\n\r\nl1\r\nl2\r\nl3\r\n.dot line\r\n")) << out;
}

TEST(MessageTemplate, BccIsDroppedAndCrlfTemplatesWork) {
    const std::string out = render("Subject: x\r\nBcc: list@x.org\r\n\r\nbody\r\n", {"a@x.org", "", ""});
    EXPECT_EQ(out.find("Bcc"), std::string::npos);
    EXPECT_TRUE(out.ends_with("\r\n\r\nbody\r\n"));
}

TEST(MessageTemplate, FoldedTemplateHeaderIsUnfolded) {
    const std::string out = render("Subject: one\n  two {{name}}\n\nb\n", {"a@x.org", "N", ""});
    EXPECT_NE(out.find("Subject: one  two N\r\n"), std::string::npos) << out;
}

}  // namespace

namespace {

// Issue 14.4: a merged value in an address position is one mailbox, checked
// like the envelope address; anything else makes the row invalid, naming the
// header and the field.
TEST(MessageTemplate, MergedAddressIsExactlyOneMailbox) {
    const std::string tmpl = "Reply-To: {{name}}\nCc: {{city}}\nSubject: x\n\nb\n";
    render_result res;
    render(tmpl, {"a@x.org", "a@x.test, b@evil.test", ""}, &res);
    EXPECT_EQ(res.error, "header Reply-To (template line 1): field 'name' is not one mailbox: " +
                             mxpress::mail::check_address("a@x.test, b@evil.test").error);
    render(tmpl, {"a@x.org", "a@x.test\r\nBcc: b@evil.test", ""}, &res);
    EXPECT_FALSE(res.ok());
    EXPECT_NE(res.error.find("field 'name' is not one mailbox"), std::string::npos) << res.error;
    render("To: <{{email}}>\n\nb\n", {"a@x.test>, <b@evil.test", "", ""}, &res);
    EXPECT_NE(res.error.find("header To (template line 1): field 'email' is not one mailbox"), std::string::npos)
        << res.error;
    render("To: {{name}} <{{email}}>\n\nb\n", {"", "Ann", ""}, &res);
    EXPECT_EQ(res.error, "header To (template line 1): field 'email' is not one mailbox: no address");

    // One mailbox, with or without a display name from the value: accepted,
    // the name quoted or encoded, the domain as A-labels.
    std::string out = render(tmpl, {"a@x.org", "\"Doe, John\" <j@X.test>", "Zoë <z@例え.jp>"}, &res);
    ASSERT_TRUE(res.ok()) << res.error;
    EXPECT_NE(out.find("Reply-To: \"Doe, John\" <j@x.test>\r\n"), std::string::npos) << out;
    std::string decoded = python_decode(out, "Reply-To,Cc");
    EXPECT_NE(decoded.find("Reply-To=\"Doe, John\" <j@x.test>\n"), std::string::npos) << decoded;
    EXPECT_NE(decoded.find("Cc=Zoë <z@xn--r8jz45g.jp>\n"), std::string::npos) << decoded;
    EXPECT_NE(decoded.find("DEFECTS=0"), std::string::npos) << decoded;

    // An optional header whose merged value is empty is left out; From is not optional.
    out = render(tmpl, {"a@x.org", "r@x.test", ""}, &res);
    ASSERT_TRUE(res.ok()) << res.error;
    EXPECT_EQ(out.find("Cc:"), std::string::npos) << out;
    EXPECT_NE(out.find("Reply-To: r@x.test\r\n"), std::string::npos) << out;
    out = render("To: {{name}} <{{email}}>, <{{city}}>\nSubject: {{city}}\n\nb\n", {"a@x.org", "", ""}, &res);
    ASSERT_TRUE(res.ok()) << res.error;
    EXPECT_NE(out.find("To: <a@x.org>\r\nFrom:"), std::string::npos) << out;
    EXPECT_EQ(out.find("Subject:"), std::string::npos) << out;
    render("From: {{name}}\n\nb\n", {"a@x.org", "", ""}, &res);
    EXPECT_EQ(res.error, "header From (template line 1): empty after merging");

    // Found by fuzz_template: a stray quote in the template's own address
    // beside a merged display name shifted how readers split the header.
    EXPECT_NE(compile_error("From: \"{{name}}\" <a\"b@x.org>, b@x.org\n\nb\n")
                  .find("m.eml:1: header From: address 'a\"b@x.org' is not valid"),
              std::string::npos)
        << compile_error("From: \"{{name}}\" <a\"b@x.org>, b@x.org\n\nb\n");

    // Group syntax cannot hold merge fields safely: refused at load.
    EXPECT_EQ(compile_error("To: friends: {{email}};\n\nb\n"),
              "m.eml:1: header To: merge fields in an address header need plain mailboxes (no group syntax, "
              "unbalanced quotes or comments)");
}

// Issue 14.5: a value that looks like an RFC 2047 encoded-word is encoded,
// so a reader shows it as the text it is and never decodes a CR/LF from it.
TEST(MessageTemplate, EncodedWordLookalikeInAValueIsEncoded) {
    const std::string trap = "=?UTF-8?B?SGVsbG8NCkJjYzogZXZpbEB4LnRlc3Q=?=";  // "Hello\r\nBcc: evil@x.test"
    render_result res;
    const std::string out =
        render("Subject: News {{name}} today\nTo: {{name}} <{{email}}>\n\nb\n", {"a@x.org", trap, ""}, &res);
    ASSERT_TRUE(res.ok()) << res.error;
    const std::string headers = out.substr(0, out.find("\r\n\r\n") + 2);
    EXPECT_EQ(headers.find(trap), std::string::npos) << headers;
    const std::string decoded = python_decode(out, "Subject,To,Bcc");
    EXPECT_NE(decoded.find("Subject=News " + trap + " today\n"), std::string::npos) << decoded;
    EXPECT_NE(decoded.find("Bcc=None"), std::string::npos) << decoded;
    EXPECT_EQ(decoded.find("Hello"), std::string::npos) << decoded;
    // The template's own encoded-words are the author's: kept as written.
    const std::string own = render("Subject: " + trap + " {{city}}\n\nb\n", {"a@x.org", "", "Oslo"});
    EXPECT_NE(own.find("Subject: " + trap + " Oslo\r\n"), std::string::npos) << own;
}

// Issue 11 (part): limits the fixed text alone breaks fail at load, naming
// file and line; a non-UTF-8 template names the line.
TEST(MessageTemplate, FixedTextOverALimitFailsAtLoadWithItsLine) {
    const std::string word(1000, 'w');
    EXPECT_EQ(compile_error("To: <{{email}}>\nSubject: " + word + "\n\nb\n"),
              "m.eml:2: header Subject (template line 2): a line would exceed 998 octets");
    EXPECT_EQ(compile_error("To: <{{email}}>\nSubject: Hi {{name}} " + word + "\n\nb\n"),
              "m.eml:2: header Subject (template line 2): a line would exceed 998 octets");
    EXPECT_EQ(compile_error("Subject: x\nList-Id: caf\xC3\xA9 {{name}}\n\nb\n"),
              "m.eml:2: header List-Id (template line 2): non-ASCII text is not allowed there");
    EXPECT_EQ(compile_error("Subject: x\nContent-Transfer-Encoding: 8bit\n\nok {{name}}\n" + word + "\n"),
              "m.eml:5: body line over 998 octets (the template declares its own Content-Transfer-Encoding or "
              "multipart body)");
    EXPECT_EQ(compile_error("Subject: x\n\nline 3\ncaf\xE9\n"), "m.eml:4: template is not valid UTF-8");
    EXPECT_EQ(compile_error("Subject: \xFF\n\nb\n"), "m.eml:1: template is not valid UTF-8");
    // Long values still fold or make only their row invalid.
    EXPECT_EQ(compile_error("Subject: Hi {{name}}\n\nb\n"), "no error");
}

}  // namespace

namespace {

// Issue 11.3: values merged into --list-unsubscribe's URL are percent-encoded.
TEST(MessageTemplate, ListUnsubscribeUrlValuesArePercentEncoded) {
    auto t = message_template::compile("Subject: x\n\nb\n", "m.eml", columns);
    t.add_header("List-Unsubscribe", "<https://u.example/x?n={{name}}&c={{city}}>", columns, true);
    renderer r(t, options());
    std::string out;
    ASSERT_TRUE(r.render({"a@x.org", "a b>, <https://evil.test/", "Zoë"}, out).ok());
    EXPECT_NE(
        out.find("List-Unsubscribe: <https://u.example/x?n=a%20b%3E%2C%20%3Chttps%3A%2F%2Fevil.test%2F&c=Zo%C3%AB>"
                 "\r\n"),
        std::string::npos)
        << out;
}

}  // namespace

// choose_encoding's line measure (detail::longest_crlf_line) against the
// byte-at-a-time definition it replaced, on seeded random texts made of the
// octets that matter (CR, LF, ASCII, 8-bit), and the edges by hand.
TEST(MessageTemplate, LongestCrlfLineMatchesTheByteByByteDefinition) {
    auto by_bytes = [](std::string_view t) {
        std::size_t longest = 0;
        std::size_t line = 0;
        for (std::size_t i = 0; i < t.size(); ++i) {
            if (t[i] == '\r' && i + 1 < t.size() && t[i + 1] == '\n') {
                longest = std::max(longest, line);
                line = 0;
                ++i;
                continue;
            }
            ++line;
        }
        return std::max(longest, line);
    };
    using mxpress::detail::longest_crlf_line;
    EXPECT_EQ(longest_crlf_line(""), 0u);
    EXPECT_EQ(longest_crlf_line("\r\n"), 0u);
    EXPECT_EQ(longest_crlf_line("\n"), 1u);
    EXPECT_EQ(longest_crlf_line("ab\r\ncdef"), 4u);
    EXPECT_EQ(longest_crlf_line("abc\r\r\n"), 4u);
    EXPECT_EQ(longest_crlf_line("a\nb\r\nc"), 3u);
    EXPECT_EQ(longest_crlf_line(std::string(998, 'x') + "\r\n" + std::string(999, 'y')), 999u);
    std::uint64_t state = 0x9e3779b97f4a7c15ULL;
    const char alphabet[] = {'\r', '\n', 'a', '.', static_cast<char>(0xe3)};
    for (int round = 0; round < 2000; ++round) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        std::string t(static_cast<std::size_t>(state >> 54), 'x');  // up to 1023 octets
        for (char& c : t) {
            state = state * 6364136223846793005ULL + 1442695040888963407ULL;
            const auto k = (state >> 33) % 16;
            c = k < 5 ? alphabet[k] : 'x';
        }
        ASSERT_EQ(longest_crlf_line(t), by_bytes(t)) << "round " << round;
    }
}

// The quick path's measure: literals' shapes and values' shapes joined by a
// line_meter give the longest line and ASCII-ness of the merged text, as
// scanning it would (values' CR, LF and CRLF become CRLF when merged).
TEST(MessageTemplate, LineMeterOfShapesMatchesAScanOfTheMergedText) {
    using mxpress::detail::line_meter;
    std::uint64_t state = 0x2545f4914f6cdd1dULL;
    auto next = [&](std::uint64_t n) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        return (state >> 33) % n;
    };
    const std::string_view literal_pieces[] = {"\r\n", "abc", "x", "\xc3\xa9", std::string_view("\r\n\r\n", 4)};
    const std::string_view value_pieces[] = {"\r", "\n", "\r\n", "v", "yy", "\xe3\x81\x82"};
    for (int round = 0; round < 3000; ++round) {
        line_meter m;
        std::string merged;
        const auto pieces = next(12);
        for (std::uint64_t p = 0; p < pieces; ++p) {
            std::string text;
            const bool value = next(2) == 1;
            for (auto n = next(40); n > 0; --n) {
                text += value ? value_pieces[next(std::size(value_pieces))]
                              : literal_pieces[next(std::size(literal_pieces))];
            }
            if (next(7) == 0) {
                text += std::string(900 + next(200), 'L');  // around the 998-octet limit
            }
            if (value) {
                m.add(mxpress::detail::shape_of_value(text));
                for (std::size_t i = 0; i < text.size(); ++i) {  // the body's merge: line ends as CRLF
                    if (text[i] == '\r' || text[i] == '\n') {
                        merged += "\r\n";
                        i += text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n' ? 1 : 0;
                    } else {
                        merged += text[i];
                    }
                }
            } else {
                const mxpress::detail::line_shape s = mxpress::detail::shape_of_crlf_text(text);
                ASSERT_TRUE(s.clean);
                m.add(s);
                merged += text;
            }
        }
        ASSERT_EQ(m.longest(), mxpress::detail::longest_crlf_line(merged)) << "round " << round;
        ASSERT_EQ(m.ascii(), mxpress::detail::all_ascii(merged)) << "round " << round;
    }
    EXPECT_FALSE(mxpress::detail::shape_of_crlf_text("a\rb").clean);
    EXPECT_FALSE(mxpress::detail::shape_of_crlf_text("a\nb").clean);
    EXPECT_FALSE(mxpress::detail::shape_of_crlf_text("ab\r").clean);
}

// The renderer's quick path (encoding from line shapes, body merged into the
// message) against the reference (merge, scan, encode): the same bytes and
// flags for seeded templates, single-part and multipart, whose literals and
// values hold CR, LF, CRLF, 8-bit text, lines around 998 octets and a
// missing column, with and without 8BITMIME.
TEST(MessageTemplate, QuickEncodingRendersWhatTheScanningPathRenders) {
    std::uint64_t state = 0x5851f42d4c957f2dULL;
    auto next = [&](std::uint64_t n) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        return (state >> 33) % n;
    };
    auto piece = [&](bool value) {
        const std::string_view literal_pieces[] = {"\n", "Dear ", ".dot\n", "\xc3\xa9t\xc3\xa9", "x"};
        const std::string_view value_pieces[] = {"\r", "\n", "\r\n", "v", "\xe3\x81\x82", " "};
        std::string text;
        for (auto n = next(12); n > 0; --n) {
            text +=
                value ? value_pieces[next(std::size(value_pieces))] : literal_pieces[next(std::size(literal_pieces))];
        }
        if (next(5) == 0) {
            text += std::string(980 + next(40), value ? 'V' : 'L');  // around the 998-octet limit
        }
        return text;
    };
    const std::vector<std::string> cols = {"email", "a", "b"};
    int quick_taken = 0;
    for (int round = 0; round < 400; ++round) {
        const bool multipart = next(3) == 0;
        std::string body;
        for (auto k = next(8); k > 0; --k) {
            body += piece(false);
            body += next(2) == 0 ? "{{a}}" : "{{b}}";
        }
        body += piece(false);
        std::string tmpl = "From: <s@sender.example>\nTo: {{email}}\nSubject: s\n";
        if (multipart) {
            tmpl +=
                "MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"B\"\n\n--B\n"
                "Content-Type: text/plain; charset=utf-8\n\n" +
                body + "\n--B\nContent-Type: text/html; charset=utf-8\n\n<p>" + body + "</p>\n--B--\n";
        } else {
            tmpl += "\n" + body;
        }
        const auto t = message_template::compile(tmpl, "m.eml", cols);
        const std::string a = piece(true);
        const std::string b = piece(true);
        std::vector<std::string_view> fields = {"ann@x.example", a, b};
        if (next(10) == 0) {
            fields.pop_back();  // a row short of a column: its value is empty
        }
        const bool eight_bit = next(2) == 0;
        renderer_options quick_options = options(eight_bit);
        renderer_options scan_options = options(eight_bit);
        scan_options.measure_by_scan = true;
        renderer quick(t, quick_options);
        renderer scan(t, scan_options);
        std::string quick_out;
        std::string scan_out;
        const render_result rq = quick.render(fields, quick_out, 7);
        const render_result rs = scan.render(fields, scan_out, 7);
        ASSERT_EQ(rq.error, rs.error) << "round " << round;
        ASSERT_EQ(rq.eight_bit, rs.eight_bit) << "round " << round;
        ASSERT_EQ(quick_out, scan_out) << "round " << round << "\n" << tmpl;
        quick_taken +=
            quick_out.find("quoted-printable") == std::string::npos && quick_out.find("base64") == std::string::npos
                ? 1
                : 0;
    }
    EXPECT_GT(quick_taken, 50);  // both paths were exercised
    EXPECT_LT(quick_taken, 350);
}
