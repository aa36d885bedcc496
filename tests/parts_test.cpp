// Tests for mail/parts.hpp through the renderer: each merged text part of a
// message from parts picks its transfer encoding per row, and --charset
// iso-2022-jp converts text and headers per row. Decoding is checked by
// Python's email package, not by our own code.
#include "mxpress/mail/parts.hpp"

#include <gtest/gtest.h>

#include "test_util.hpp"

namespace {

using mxpress::mail::build_template;
using mxpress::mail::input_error;
using mxpress::mail::message_parts;
using mxpress::mail::message_template;
using mxpress::mail::render_result;
using mxpress::mail::renderer;
using mxpress::mail::renderer_options;
using mxpress::test::temp_dir;

const std::vector<std::string> parts_columns = {"email", "name", "note"};

renderer_options parts_options(bool eight_bit) {
    renderer_options o;
    o.from = "bounce@sender.example";
    o.eight_bit_allowed = eight_bit;
    o.clock = mxpress::test::fixed_clock;
    o.message_id_seed = 42;
    return o;
}

struct rendered {
    std::string message;
    render_result result;
};

// The message for one row of a parts message (text and HTML, so multipart).
rendered render_parts(const message_parts& parts, std::vector<std::string_view> row, bool eight_bit) {
    const auto t = message_template::compile(build_template(parts, parts_columns, "email"), "parts", parts_columns);
    renderer r(t, parts_options(eight_bit));
    rendered out;
    out.result = r.render(row, out.message);
    return out;
}

message_parts text_and_html(const temp_dir& dir, std::string_view charset = "") {
    message_parts p;
    p.subject = "お知らせ：年末年始の休業について {{name}}";
    p.header_from = "山田商店 <news@sender.example>";
    p.text_file = dir.write("t.txt", "Dear {{name}},\n\n{{note}}\n");
    p.html_file = dir.write("h.html", "<p>Dear {{name}},</p>\n<p>{{note}}</p>\n");
    p.charset = std::string(charset);
    return p;
}

// Python's view of a message: decoded Subject and From (via
// email.header.decode_header), then per text part its Content-Type,
// Content-Transfer-Encoding and get_content(), and the defect count.
std::string python_parts(const std::string& message) {
    temp_dir dir;
    const std::string path = dir.write("msg.eml", message);
    const std::string script =
        dir.write("parts.py",
                  "import sys, email, email.policy, email.header\n"
                  "raw = open(sys.argv[1], 'rb').read()\n"
                  "m = email.message_from_bytes(raw, policy=email.policy.default)\n"
                  "def dh(v):\n"
                  "    return str(email.header.make_header(email.header.decode_header(v)))\n"
                  "c = email.message_from_bytes(raw, policy=email.policy.compat32)\n"
                  "print('Subject=' + dh(c['Subject']))\n"
                  "print('From=' + dh(c['From']))\n"
                  "for p in m.walk():\n"
                  "    if p.get_content_maintype() == 'text':\n"
                  "        print('PART ' + p.get_content_type() + ' ' + str(p.get_content_charset()) + ' | ' +\n"
                  "              str(p['Content-Transfer-Encoding']))\n"
                  "        print(p.get_content().replace('\\r\\n', '\\n'), end='')\n"
                  "print('DEFECTS=' + str(sum(len(p.defects) for p in m.walk())))\n");
    int status = 0;
    std::string out = mxpress::test::run(std::string(mxpress::test::python3()) + " " + script + " " + path, status);
    EXPECT_EQ(status, 0) << out;
    return out;
}

// The Content-Transfer-Encoding of each text part, in order ("-" when none).
std::vector<std::string> part_encodings(const std::string& message) {
    std::vector<std::string> out;
    for (std::size_t p = message.find("Content-Type: text/"); p != std::string::npos;
         p = message.find("Content-Type: text/", p + 1)) {
        const std::size_t blank = message.find("\r\n\r\n", p);
        const std::string head = message.substr(p, blank - p);
        const std::size_t cte = head.find("Content-Transfer-Encoding: ");
        out.push_back(cte == std::string::npos ? "-" : head.substr(cte + 27, head.find("\r\n", cte) - cte - 27));
    }
    return out;
}

TEST(Parts, MergedTextPartsPickTheirEncodingPerRow) {
    temp_dir dir;
    const message_parts parts = text_and_html(dir);
    const std::string japanese = "年末年始は十二月二十九日から一月三日まで休業いたします。ご不便をおかけします。";
    struct row_case {
        std::string name;
        std::string note;
        bool eight_bit;  // the session offers 8BITMIME
        std::string want;
    };
    const std::vector<row_case> cases = {
        {"Ann", "plain ASCII", false, "-"},                                    // 7bit: no header at all
        {"Zoë", "Grüße aus Köln", true, "8bit"},                               // 8-bit text, the server takes it
        {"Zoë", "Grüße aus Köln und viele Grüße", false, "quoted-printable"},  // mostly ASCII
        {"山田 太郎", japanese, false, "base64"},                              // mostly non-ASCII: QP would triple it
        {"Ann", std::string(1500, 'x'), true, "quoted-printable"},             // a line over 998 octets
    };
    for (const row_case& c : cases) {
        const rendered r = render_parts(parts, {"a@x.example", c.name, c.note}, c.eight_bit);
        ASSERT_TRUE(r.result.ok()) << r.result.error;
        EXPECT_EQ(r.result.eight_bit, c.want == "8bit") << c.note;
        EXPECT_EQ(part_encodings(r.message), (std::vector<std::string>{c.want, c.want})) << r.message;
        if (!c.eight_bit) {
            EXPECT_TRUE(mxpress::detail::all_ascii(r.message)) << c.note;
        }
        const std::string seen = python_parts(r.message);
        EXPECT_NE(seen.find("Subject=お知らせ：年末年始の休業について " + c.name + "\n"), std::string::npos) << seen;
        const std::string cte = c.want == "-" ? std::string("None") : c.want;
        EXPECT_NE(seen.find("PART text/plain utf-8 | " + cte + "\nDear " + c.name + ",\n\n" + c.note + "\n"),
                  std::string::npos)
            << seen;
        EXPECT_NE(seen.find("PART text/html utf-8 | " + cte + "\n<p>Dear " + c.name + ",</p>\n<p>" + c.note + "</p>\n"),
                  std::string::npos)
            << seen;
        EXPECT_NE(seen.find("DEFECTS=0"), std::string::npos) << seen;
    }
}

TEST(Parts, Iso2022JpConvertsTextAndHeadersPerRow) {
    temp_dir dir;
    const message_parts parts = text_and_html(dir, "iso-2022-jp");
    const std::string note = "お知らせ：年末年始の休業について。十二月二十九日から一月三日まで休業いたします。";
    const rendered r = render_parts(parts, {"a@x.example", "山田 太郎", note}, true);
    ASSERT_TRUE(r.result.ok()) << r.result.error;
    EXPECT_FALSE(r.result.eight_bit);
    EXPECT_TRUE(mxpress::detail::all_ascii(r.message)) << r.message;
    EXPECT_NE(r.message.find("Content-Type: text/plain; charset=ISO-2022-JP\r\n\r\n"), std::string::npos)
        << "7bit: no transfer-encoding header";
    EXPECT_EQ(part_encodings(r.message), (std::vector<std::string>{"-", "-"}));
    // Headers: ISO-2022-JP encoded-words of at most 75 octets, each ending
    // in the ASCII state (checked on the decoded bytes by Python below).
    const std::string head = r.message.substr(0, r.message.find("\r\n\r\n"));
    EXPECT_NE(head.find("Subject: =?ISO-2022-JP?B?"), std::string::npos) << head;
    EXPECT_EQ(head.find("UTF-8"), std::string::npos) << head;
    for (std::size_t p = head.find("=?"); p != std::string::npos; p = head.find("=?", p + 2)) {
        const std::size_t e = head.find("?=", p + 17);
        EXPECT_LE(e + 2 - p, 75u);
        p = e;
    }
    const std::string seen = python_parts(r.message);
    EXPECT_NE(seen.find("Subject=お知らせ：年末年始の休業について 山田 太郎\n"), std::string::npos) << seen;
    EXPECT_NE(seen.find("From=山田商店 <news@sender.example>\n"), std::string::npos) << seen;
    EXPECT_NE(seen.find("PART text/plain iso-2022-jp | None\nDear 山田 太郎,\n\n" + note + "\n"), std::string::npos)
        << seen;
    EXPECT_NE(seen.find("DEFECTS=0"), std::string::npos) << seen;
    // Every encoded-word decodes on its own and ends in ESC ( B.
    temp_dir py;
    const std::string path = py.write("m.eml", r.message);
    const std::string script = py.write("words.py",
                                        "import sys, email, email.header\n"
                                        "m = email.message_from_bytes(open(sys.argv[1], 'rb').read())\n"
                                        "for h in ('Subject', 'From'):\n"
                                        "    for w in m[h].split():\n"
                                        "        for t, c in email.header.decode_header(w):\n"
                                        "            if c: print(t.endswith(b'\\x1b(B') and len(t) <= 36)\n");
    int status = 0;
    const std::string words =
        mxpress::test::run(std::string(mxpress::test::python3()) + " " + script + " " + path, status);
    EXPECT_EQ(status, 0);
    EXPECT_NE(words.find("True"), std::string::npos) << words;
    EXPECT_EQ(words.find("False"), std::string::npos) << words;
}

TEST(Parts, Iso2022JpRowWithACharacterItCannotCarryIsInvalid) {
    temp_dir dir;
    const message_parts parts = text_and_html(dir, "iso-2022-jp");
    rendered r = render_parts(parts, {"a@x.example", "太郎", "ご予約ありがとうございます😀"}, true);
    EXPECT_EQ(r.result.error, "text/plain part: '😀' (U+1F600) (field 'note') has no ISO-2022-JP form");
    // Half-width katakana: glibc's ISO-2022-JP (RFC 1468) has no JIS X 0201 kana.
    r = render_parts(parts, {"a@x.example", "ｶﾀｶﾅ", "x"}, true);
    EXPECT_EQ(r.result.error, "header Subject (template line 3): 'ｶ' (U+FF76) has no ISO-2022-JP form");
    r = render_parts(parts, {"a@x.example", "太郎", "𠮷野家"}, true);
    EXPECT_EQ(r.result.error, "text/plain part: '𠮷' (U+20BB7) (field 'note') has no ISO-2022-JP form");
    // In a file's own text: an error at start, naming the file and line.
    message_parts bad = parts;
    bad.text_file = dir.write("bad.txt", "こんにちは\n𠮷野家へようこそ {{name}}\n");
    try {
        static_cast<void>(build_template(bad, parts_columns, "email"));
        FAIL() << "no error";
    } catch (const input_error& e) {
        EXPECT_EQ(e.describe(), bad.text_file + ":2: '𠮷' (U+20BB7) has no ISO-2022-JP form");
    }
    bad = parts;
    bad.charset = "shift_jis";
    EXPECT_THROW(static_cast<void>(build_template(bad, parts_columns, "email")), std::invalid_argument);
}

TEST(Parts, Iso2022JpSinglePartDeclaresItsCharset) {
    temp_dir dir;
    message_parts parts = text_and_html(dir, "ISO-2022-JP");
    parts.html_file.clear();
    const rendered r = render_parts(parts, {"a@x.example", "山田", "よろしくお願いします"}, false);
    ASSERT_TRUE(r.result.ok()) << r.result.error;
    EXPECT_TRUE(mxpress::detail::all_ascii(r.message));
    const std::string seen = python_parts(r.message);
    EXPECT_NE(seen.find("PART text/plain iso-2022-jp | None\nDear 山田,\n\nよろしくお願いします\n"), std::string::npos)
        << seen;
}

}  // namespace
