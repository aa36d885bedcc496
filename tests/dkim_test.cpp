// Tests for mail/dkim.hpp and the [dkim] config. Signatures are verified by
// dkimpy (python3-dkim, tests/dkim_verify.py), an independent implementation,
// with the public keys that `txt_record` publishes.
#include "mxpress/mail/dkim.hpp"

#include <gtest/gtest.h>

#include <sys/stat.h>

#include "mxpress/engine/config.hpp"
#include "mxpress/mail/message_template.hpp"
#include "test_util.hpp"

namespace {

namespace dkim = mxpress::mail::dkim;
using mxpress::mail::input_error;
using mxpress::mail::message_template;
using mxpress::mail::renderer;
using mxpress::mail::renderer_options;
using mxpress::test::fixed_clock;
using mxpress::test::temp_dir;

const std::vector<std::string> columns = {"email", "name", "city"};

// Makes a private key with the openssl CLI; mode 0600 like a real key.
std::string make_key(const temp_dir& dir, const std::string& name, const std::string& genpkey_args) {
    const std::string path = dir.file(name);
    int rc = 0;
    mxpress::test::run("openssl genpkey " + genpkey_args + " -out '" + path + "' 2>&1", rc);
    EXPECT_EQ(rc, 0) << genpkey_args;
    ::chmod(path.c_str(), 0600);
    return path;
}

struct keys_fixture {
    temp_dir dir;
    std::string rsa = make_key(dir, "rsa.pem", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048");
    std::string ed = make_key(dir, "ed.pem", "-algorithm ED25519");

    dkim::settings settings(const std::string& canon) const {
        dkim::settings s;
        EXPECT_TRUE(dkim::parse_canonicalization(canon, s.header_canon, s.body_canon));
        s.keys.push_back({"sender.example", "r1", rsa, 0, 0});
        s.keys.push_back({"sender.example", "e1", ed, 0, 0});
        return s;
    }
};

std::shared_ptr<const dkim::key_set> load(const dkim::settings& s) {
    std::vector<std::string> warnings;
    auto ks = dkim::load_keys(s, warnings);
    EXPECT_TRUE(warnings.empty()) << warnings.front();
    return ks;
}

std::string render_signed(const std::string& tmpl, const std::vector<std::string_view>& fields,
                          std::shared_ptr<const dkim::key_set> keys, std::string* error = nullptr) {
    const auto t = message_template::compile(tmpl, "m.eml", columns);
    renderer_options o;
    o.from = "bounce@sender.example";
    o.clock = fixed_clock;
    o.message_id_seed = 7;
    o.dkim = std::move(keys);
    renderer r(t, o);
    std::string out;
    const auto res = r.render(fields, out);
    if (error != nullptr) {
        *error = res.error;
    } else {
        EXPECT_TRUE(res.ok()) << res.error;
    }
    return out;
}

// Runs dkimpy over the messages; returns its report, `status` its exit code.
std::string verify(const dkim::key_set& ks, const std::vector<std::string>& messages, int& status) {
    temp_dir dir;
    std::string records;
    for (const auto& k : ks.keys) {
        records += k.selector + "._domainkey." + k.domain + " " + dkim::txt_record(k) + "\n";
    }
    std::string cmd = std::string(mxpress::test::python3()) + " " MXPRESS_SOURCE_DIR "/tests/dkim_verify.py '" +
                      dir.write("records", records) + "'";
    for (std::size_t i = 0; i < messages.size(); ++i) {
        cmd += " '" + dir.write("m" + std::to_string(i) + ".eml", messages[i]) + "'";
    }
    return mxpress::test::run(cmd + " 2>&1", status);
}

// Messages that stress canonicalization: Japanese headers and body, long
// folded headers, an authored multipart with an attachment, trailing blank
// lines, lines starting with "." or "From ", runs of whitespace, no body.
const std::vector<std::pair<std::string, std::vector<std::string_view>>> samples = {
    {"From: 山田商店 <news@sender.example>\nTo: {{name}} <{{email}}>\nSubject: 【お知らせ】{{name}}様、{{city}}店の"
     "営業時間が変わります\n\n{{name}}様\n\nいつもご利用ありがとうございます。\n{{city}}店は12月から10時開店です。\n",
     {"a@example.org", "山田 太郎", "東京"}},
    {"From: news@sender.example\nTo: {{email}}\nSubject: A long subject line that goes on and on, well past the "
     "seventy-eight octets of a folded header line, so that {{name}} sees it folded in several places by the "
     "renderer\nX-Note:   spaces    and\ttabs\t inside  \n\nBody\n",
     {"b@example.org", "Ann", "Oslo"}},
    {"From: news@sender.example\nTo: {{email}}\nSubject: photos\nMIME-Version: 1.0\nContent-Type: multipart/mixed; "
     "boundary=\"b1\"\n\n--b1\nContent-Type: text/plain; charset=utf-8\n\nHello {{name}}\n--b1\nContent-Type: "
     "application/pdf; name=\"menu.pdf\"\nContent-Disposition: attachment; filename=\"menu.pdf\"\n"
     "Content-Transfer-Encoding: base64\n\nJVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c+PgplbmRvYmoK\n--b1--\n",
     {"c@example.org", "Bo", "Rome"}},
    {"From: news@sender.example\nTo: {{email}}\nSubject: trailing\n\nHi {{name}}\n\n\n\n", {"d@example.org", "Cy", ""}},
    {"From: news@sender.example\nTo: {{email}}\nSubject: dots\n\n.\n..leading dots\nFrom here on\ntrailing "
     "space  \t\n \n.\n",
     {"e@example.org", "Di", ""}},
    {"From: news@sender.example\nTo: {{email}}\nSubject: empty\n\n", {"f@example.org", "Ed", ""}},
};

TEST(DkimCanon, RelaxedHeaderAsInRfc6376Example) {
    // RFC 6376 §3.4.5: "A: X" and "B : Y<TAB><CRLF><TAB>Z  " -> "a:X", "b:Y Z".
    std::vector<dkim::header_field> fields;
    dkim::split_header_fields("A: X\r\nB : Y\t\r\n\tZ  \r\n", fields);
    ASSERT_EQ(fields.size(), 2u);
    std::string out;
    for (const auto& f : fields) {
        dkim::canonicalize_header_relaxed(out, f.name, f.value);
    }
    EXPECT_EQ(out, "a:X\r\nb:Y Z\r\n");
}

TEST(DkimCanon, BodiesAsInRfc6376Example) {
    const std::string body = " C \r\nD \t E\r\n\r\n\r\n";
    std::string relaxed;
    dkim::canonicalize_body(relaxed, body, dkim::canonicalization::relaxed);
    EXPECT_EQ(relaxed, " C\r\nD E\r\n");
    std::string simple;
    dkim::canonicalize_body(simple, body, dkim::canonicalization::simple);
    EXPECT_EQ(simple, " C \r\nD \t E\r\n");
    // Empty bodies: simple is one CRLF, relaxed is nothing (RFC 6376 §3.4.3, §3.4.4).
    std::string e1;
    dkim::canonicalize_body(e1, "\r\n\r\n", dkim::canonicalization::simple);
    EXPECT_EQ(e1, "\r\n");
    std::string e2;
    dkim::canonicalize_body(e2, "\r\n \r\n", dkim::canonicalization::relaxed);
    EXPECT_EQ(e2, "");
}

TEST(DkimCanon, FromDomainAndAlignment) {
    EXPECT_EQ(dkim::from_domain(" \"Shop, Inc\" <News@Mail.Town.Example>"), "mail.town.example");
    EXPECT_EQ(dkim::from_domain(" news@town.example"), "town.example");
    EXPECT_TRUE(dkim::aligned("town.example", "mail.town.example"));
    EXPECT_TRUE(dkim::aligned("town.example", "town.example"));
    EXPECT_FALSE(dkim::aligned("town.example", "eviltown.example"));
    EXPECT_FALSE(dkim::aligned("mail.town.example", "town.example"));
}

TEST(DkimSign, DkimpyVerifiesEverySampleInEveryCanonicalization) {
    keys_fixture f;
    for (const char* canon : {"relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed"}) {
        const auto ks = load(f.settings(canon));
        std::vector<std::string> messages;
        for (const auto& [tmpl, fields] : samples) {
            messages.push_back(render_signed(tmpl, fields, ks));
        }
        int status = 0;
        const std::string report = verify(*ks, messages, status);
        EXPECT_EQ(status, 0) << canon << "\n" << report;
        // Two signatures (RSA and Ed25519) on each message.
        std::size_t pos = 0;
        int ok = 0;
        while ((pos = report.find(" ok 2\n", pos)) != std::string::npos) {
            ++ok;
            ++pos;
        }
        EXPECT_EQ(ok, static_cast<int>(samples.size())) << canon << "\n" << report;
    }
}

TEST(DkimSign, TamperedMessagesFail) {
    keys_fixture f;
    const auto ks = load(f.settings("relaxed/relaxed"));
    const std::string m = render_signed(samples[0].first, samples[0].second, ks);
    std::string body = m;
    body.insert(body.size() - 2, "x");
    std::string subject = m;
    subject.replace(subject.find("Subject:"), 8, "Subject: Re:");
    // Oversigned: an added Cc (absent from the original) breaks the signature.
    std::string added = m + "";
    added.insert(added.find("\r\nFrom:") + 2, "Cc: evil@attacker.example\r\n");
    int status = 0;
    const std::string report = verify(*ks, {body, subject, added}, status);
    EXPECT_EQ(status, 1) << report;
    std::size_t fails = 0;
    for (std::size_t pos = 0; (pos = report.find(" FAIL ", pos)) != std::string::npos; ++pos) {
        ++fails;
    }
    EXPECT_EQ(fails, 3u) << report;
}

TEST(DkimSign, OversignListsEachHeaderOnceMore) {
    keys_fixture f;
    dkim::settings s = f.settings("relaxed/relaxed");
    s.headers = {"From", "To", "Cc", "Subject"};
    const std::string tmpl = "From: news@sender.example\nTo: {{email}}\nSubject: hi\n\nx\n";
    const std::string over = render_signed(tmpl, samples[0].second, load(s));
    EXPECT_NE(over.find("h=from:from:to:to:cc:subject:subject;"), std::string::npos) << over;
    s.oversign = false;
    const auto ks = load(s);
    const std::string plain = render_signed(tmpl, samples[0].second, ks);
    EXPECT_NE(plain.find("h=from:to:subject;"), std::string::npos) << plain;
    // Without oversigning, an added Cc still verifies: what oversign is for.
    std::string added = plain;
    added.insert(added.find("\r\nFrom:") + 2, "Cc: evil@attacker.example\r\n");
    int status = 0;
    const std::string report = verify(*ks, {added}, status);
    EXPECT_EQ(status, 0) << report;
}

TEST(DkimSign, TimestampExpirationAndKeyChoice) {
    keys_fixture f;
    dkim::settings s = f.settings("relaxed/relaxed");
    s.expiration_s = 7 * 86400;
    s.keys[1].not_after = fixed_clock() - 1;  // the Ed25519 key has retired
    s.keys.push_back({"other.example", "o1", f.ed, 0, 0});
    const std::string tmpl = "From: news@mail.sender.example\nTo: {{email}}\n\nx\n";
    const std::string m = render_signed(tmpl, samples[0].second, load(s));
    EXPECT_NE(m.find("t=1795000000;"), std::string::npos) << m;
    EXPECT_NE(m.find("x=1795604800;"), std::string::npos) << m;
    EXPECT_NE(m.find("d=sender.example;"), std::string::npos) << m;
    EXPECT_EQ(m.find("a=ed25519-sha256"), std::string::npos) << m;  // past not_after
    EXPECT_EQ(m.find("d=other.example"), std::string::npos) << m;   // not aligned
    std::string error;
    render_signed("From: x@unrelated.example\n\nx\n", samples[0].second, load(s), &error);
    EXPECT_NE(error.find("no key aligned with the From domain unrelated.example"), std::string::npos) << error;
}

TEST(DkimKeys, BadKeysAreClearErrorsAndLooseModesWarn) {
    temp_dir dir;
    std::vector<std::string> warnings;
    auto error_of = [&](const std::string& path) -> std::string {
        try {
            dkim::load_key(path, warnings);
        } catch (const input_error& e) {
            return e.describe();
        }
        return "no error";
    };
    EXPECT_NE(error_of(dir.file("missing.pem")).find("missing.pem: cannot read DKIM key: No such file"),
              std::string::npos);
    const std::string ec = make_key(dir, "ec.pem", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256");
    EXPECT_NE(error_of(ec).find("ec.pem: key type id-ecPublicKey cannot sign DKIM"), std::string::npos) << error_of(ec);
    const std::string small = make_key(dir, "small.pem", "-algorithm RSA -pkeyopt rsa_keygen_bits:768");
    EXPECT_NE(error_of(small).find("RSA key of 768 bits is too short"), std::string::npos) << error_of(small);
    EXPECT_NE(error_of(dir.write("junk.pem", "hello\n")).find("not a PEM private key"), std::string::npos);
    ::chmod(dir.file("junk.pem").c_str(), 0600);

    const std::string ed = make_key(dir, "ed.pem", "-algorithm ED25519");
    warnings.clear();
    EXPECT_EQ(error_of(ed), "no error");
    EXPECT_TRUE(warnings.empty());
    ::chmod(ed.c_str(), 0644);
    EXPECT_EQ(error_of(ed), "no error");
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find(ed + " is accessible by others (mode 0644)"), std::string::npos) << warnings[0];
}

TEST(DkimConfig, ParsesTheDkimTableAndNamesBadLines) {
    const auto c = mxpress::engine::parse_config(
        "[dkim]\ncanonicalization = \"relaxed/simple\"\nheaders = [\"From\", \"Subject\"]\noversign = false\n"
        "expiration = \"2d\"\n[[dkim.key]]\ndomain = \"Town.Example\"\nselector = \"r1\"\nkey_file = \"/k.pem\"\n"
        "not_after = \"2026-12-31\"\n",
        "c.toml");
    EXPECT_EQ(c.dkim.header_canon, dkim::canonicalization::relaxed);
    EXPECT_EQ(c.dkim.body_canon, dkim::canonicalization::simple);
    EXPECT_EQ(c.dkim.headers, (std::vector<std::string>{"From", "Subject"}));
    EXPECT_FALSE(c.dkim.oversign);
    EXPECT_EQ(c.dkim.expiration_s, 2u * 86400);
    ASSERT_EQ(c.dkim.keys.size(), 1u);
    EXPECT_EQ(c.dkim.keys[0].domain, "town.example");
    EXPECT_EQ(c.dkim.keys[0].not_after, 1798761599);  // 2026-12-31T23:59:59Z

    auto error_of = [](const std::string& text) -> std::string {
        try {
            mxpress::engine::parse_config(text, "c.toml");
        } catch (const input_error& e) {
            return e.describe();
        }
        return "no error";
    };
    const std::string key = "[[dkim.key]]\ndomain = \"a.example\"\nselector = \"s\"\nkey_file = \"/k\"\n";
    EXPECT_EQ(error_of("[dkim]\ncanonicalization = \"loose\"\n" + key),
              "c.toml:2: [dkim] canonicalization = \"loose\": expected HEADER/BODY, each simple or relaxed");
    EXPECT_NE(error_of("[dkim]\nsign = true\n" + key).find("c.toml:2: unknown key 'sign' in [dkim]"),
              std::string::npos);
    EXPECT_NE(error_of("[[dkim.key]]\ndomain = \"a.example\"\nselector = \"s\"\n").find("needs key_file"),
              std::string::npos);
    EXPECT_NE(error_of("[dkim]\noversign = true\n").find("has no [[dkim.key]]"), std::string::npos);
    EXPECT_NE(error_of(key + "not_after = \"31/12/2026\"\n").find("c.toml:5: [[dkim.key]] not_after"),
              std::string::npos)
        << error_of(key + "not_after = \"31/12/2026\"\n");
}

TEST(MessageId, StablePerRowWithARunKeyAndFreshWithout) {
    const auto t = message_template::compile("Subject: x\n\nbody\n", "m.eml", columns);
    renderer_options o;
    o.from = "bounce@sender.example";
    o.message_id_run_key = mxpress::mail::run_key({"template", "/lists/r.csv", "bounce@sender.example"});
    auto id_of = [](const std::string& m) {
        const std::size_t at = m.find("Message-ID: ");
        return m.substr(at, m.find("\r\n", at) - at);
    };
    std::string a;
    std::string b;
    std::string c;
    renderer r1(t, o);
    r1.render({"a@x.org", "", ""}, a, 2);
    renderer r2(t, o);  // another shard, or a resumed run
    r2.render({"a@x.org", "", ""}, b, 2);
    r2.render({"b@x.org", "", ""}, c, 3);
    EXPECT_EQ(id_of(a), id_of(b));
    EXPECT_NE(id_of(a), id_of(c));
    EXPECT_NE(id_of(a).find("@sender.example>"), std::string::npos) << id_of(a);
    o.message_id_run_key = mxpress::mail::run_key({"template2", "/lists/r.csv", "bounce@sender.example"});
    renderer r3(t, o);
    r3.render({"a@x.org", "", ""}, c, 2);
    EXPECT_NE(id_of(a), id_of(c));  // another run
    o.message_id_run_key = 0;
    renderer r4(t, o);
    r4.render({"a@x.org", "", ""}, a, 2);
    r4.render({"a@x.org", "", ""}, b, 2);
    EXPECT_NE(id_of(a), id_of(b));  // no run key: a fresh ID per attempt
}

}  // namespace

namespace {

TEST(DkimPrefix, HashablePrefixEndsAfterALineWithText) {
    EXPECT_EQ(dkim::hashable_prefix("Dear all,\r\n\r\nHello "), "Dear all,\r\n");
    EXPECT_EQ(dkim::hashable_prefix("a\r\n \t\r\n\r\nb"), "a\r\n");
    EXPECT_EQ(dkim::hashable_prefix("  \r\n\r\nx"), "");
    EXPECT_EQ(dkim::hashable_prefix("Hi "), "");
    EXPECT_EQ(dkim::hashable_prefix(""), "");
}

// A body hashed from the cached prefix state signs exactly as one hashed
// whole, in both body canonicalizations, whatever follows the prefix.
TEST(DkimPrefix, ClonedPrefixStateSignsLikeAWholeBody) {
    keys_fixture f;
    for (const char* canon : {"relaxed/relaxed", "simple/simple"}) {
        const auto ks = load(f.settings(canon));
        dkim::signer whole(ks);
        dkim::signer cached(ks);
        const std::string head = "From: a@sender.example\r\nSubject: x\r\n\r\n";
        const std::string prefix = "Dear reader,\r\n  spaced\t line \r\n\r\nlast fixed\r\n";
        for (const std::string rest : {"", "\r\n", "\r\n\r\n \r\n", "x\r\n", " tail  \r\n\r\n", "more"}) {
            const std::string m = head + prefix + rest;
            std::string a;
            std::string b;
            ASSERT_EQ(whole.sign(m, fixed_clock(), a), "");
            ASSERT_EQ(cached.sign(m, fixed_clock(), b, dkim::hashable_prefix(prefix)), "");
            EXPECT_EQ(a, b) << canon << " rest=[" << rest << "]";
        }
        EXPECT_EQ(cached.prefix_hits(), 6u);
        // A body that does not start with the prefix is hashed whole.
        std::string a;
        std::string b;
        ASSERT_EQ(whole.sign(head + "other\r\n", fixed_clock(), a), "");
        ASSERT_EQ(cached.sign(head + "other\r\n", fixed_clock(), b, prefix), "");
        EXPECT_EQ(a, b);
        EXPECT_EQ(cached.prefix_hits(), 6u);
    }
}

TEST(DkimPrefix, RendererUsesTheTemplatesFixedBodyStart) {
    keys_fixture f;
    const auto t =
        message_template::compile("From: n@sender.example\n\nDear reader,\n\nHello {{name}}\n", "m.eml", columns);
    renderer_options o;
    o.from = "bounce@sender.example";
    o.dkim = load(f.settings("relaxed/relaxed"));
    renderer r(t, o);
    std::string out;
    ASSERT_TRUE(r.render({"a@x.org", "Ann", ""}, out).ok());
    ASSERT_TRUE(r.render({"b@x.org", "Bo", ""}, out).ok());
    EXPECT_EQ(r.dkim_prefix_hits(), 2u);
    int status = 0;
    const std::string report = verify(*o.dkim, {out}, status);
    EXPECT_EQ(status, 0) << report;
}

}  // namespace
