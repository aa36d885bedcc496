// Unit tests of `check-sender`'s findings (engine/sender_check.hpp): each
// check's ok, warning and FATAL, from TXT answers given here (no DNS; the
// lookups against dnsmasq are tests/integration/check_sender_test.py).
#include "mxpress/engine/sender_check.hpp"
#include "mxpress/engine/public_suffix.hpp"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace {

namespace sc = mxpress::engine::sender_check;
namespace dkim = mxpress::mail::dkim;
namespace psl = mxpress::engine::public_suffix;
using mxpress::net::txt_answer;
using sc::severity;

const std::string rsa_p = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtest";
const std::string ed_p = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

sc::configured_key key(const std::string& domain, const std::string& selector, dkim::algorithm alg, unsigned bits,
                       const std::string& p) {
    sc::configured_key k;
    k.spec.domain = domain;
    k.spec.selector = selector;
    k.spec.key_file = "/keys/" + selector + ".pem";
    dkim::loaded_key l;
    l.domain = domain;
    l.selector = selector;
    l.file = k.spec.key_file;
    l.alg = alg;
    l.bits = bits;
    l.public_b64 = p;
    k.key = l;
    return k;
}

txt_answer found(std::vector<std::string> records) {
    txt_answer a;
    a.state = txt_answer::status::found;
    a.records = std::move(records);
    return a;
}
txt_answer none() {
    txt_answer a;
    a.state = txt_answer::status::none;
    return a;
}
txt_answer failed(const std::string& name) {
    txt_answer a;
    a.state = txt_answer::status::failed;
    a.error = name + ": Server failure";
    return a;
}

// A small public suffix list in the file's format: both sections, a
// wildcard and its exceptions, comments, text after a rule.
constexpr const char* sender_check_psl_text = R"(// ===BEGIN ICANN DOMAINS===
uk
co.uk
example
jp
// kawasaki.jp : wildcard, with an exception
*.kawasaki.jp
!city.kawasaki.jp
ck
*.ck
!www.ck
COM
// ===END ICANN DOMAINS===

// ===BEGIN PRIVATE DOMAINS===
blogspot.com   text after the rule is ignored
// ===END PRIVATE DOMAINS===
)";

const psl::list& sender_check_psl() {
    static const psl::list l = [] {
        std::string error;
        auto parsed = psl::list::parse(sender_check_psl_text, error);
        EXPECT_TRUE(parsed.has_value()) << error;
        return parsed.value_or(psl::list{});
    }();
    return l;
}

constexpr std::time_t sender_check_now = 1'780'000'000;  // 2026-05-28 UTC

// A sender that passes every check: one RSA-2048 key for town.example.
struct setup {
    dkim::settings settings;
    std::vector<sc::configured_key> keys;
    sc::txt_map txt;
    std::string from = "town.example";  // the header From's domain
    std::string envelope;               // empty: the same as `from`

    setup() {
        keys.push_back(key("town.example", "r1", dkim::algorithm::rsa_sha256, 2048, rsa_p));
        settings.keys.push_back(keys.back().spec);
        // The record as zone files split it: FWS inside p= is allowed.
        txt["r1._domainkey.town.example"] =
            found({"v=DKIM1; k=rsa; p=" + rsa_p.substr(0, 20) + " " + rsa_p.substr(20)});
        txt["_dmarc.town.example"] = found({"v=DMARC1; p=none; rua=mailto:d@town.example"});
        txt["town.example"] = found({"google-site-verification=abc", "v=spf1 ip4:192.0.2.1 -all"});
    }
    sc::context ctx{&sender_check_psl(), {}, sender_check_now};

    sc::sender_domains domains() const { return {from, envelope.empty() ? from : envelope}; }
    std::vector<std::string> names() const { return sc::names_to_query(settings, domains(), ctx); }
    std::vector<sc::finding> run() const { return sc::check(settings, keys, domains(), txt, ctx); }
};

// The one finding whose text contains `part` (fails the test unless exactly one).
sc::finding one(const std::vector<sc::finding>& f, const std::string& part) {
    std::vector<sc::finding> hits;
    for (const sc::finding& x : f) {
        if (x.text.find(part) != std::string::npos) {
            hits.push_back(x);
        }
    }
    EXPECT_EQ(hits.size(), 1u) << "findings containing '" << part << "'";
    return hits.empty() ? sc::finding{severity::ok, "(none)"} : hits.front();
}

std::string dump(const std::vector<sc::finding>& f) {
    std::string out;
    for (const sc::finding& x : f) {
        out += std::string(sc::to_string(x.level)) + " " + x.text + "\n";
    }
    return out;
}

TEST(SenderCheck, AGoodSetupIsAllOk) {
    const setup s;
    const auto f = s.run();
    for (const sc::finding& x : f) {
        EXPECT_EQ(x.level, severity::ok) << x.text;
    }
    EXPECT_FALSE(sc::any_fatal(f));
    EXPECT_EQ(one(f, "r1._domainkey.town.example publishes").level, severity::ok);
    EXPECT_EQ(one(f, "SPF").text, "SPF (envelope domain town.example): \"v=spf1 ip4:192.0.2.1 -all\"");
    EXPECT_EQ(f.size(), 6u) << dump(f);  // key length, key record, DMARC, SPF, alignment, headers
}

TEST(SenderCheck, NamesToQueryCoverEveryCheck) {
    setup s;
    s.from = "news.town.example";
    EXPECT_EQ(s.names(), (std::vector<std::string>{"r1._domainkey.town.example", "_dmarc.news.town.example",
                                                   "_dmarc.town.example", "news.town.example"}));
    s.from = "town.example";
    EXPECT_EQ(s.names().size(), 3u);  // no _dmarc.example
}

TEST(SenderCheck, KeyRecordMissingMismatchedWrongTypeOrRevokedIsFatal) {
    {
        setup s;
        s.txt["r1._domainkey.town.example"] = none();
        const auto f = s.run();
        EXPECT_EQ(one(f, "no DKIM key record at r1._domainkey.town.example").level, severity::fatal) << dump(f);
        EXPECT_NE(one(f, "no DKIM key record").text.find("v=DKIM1; k=rsa; p=" + rsa_p), std::string::npos);
    }
    {
        setup s;  // a TXT record that is no key record counts as none
        s.txt["r1._domainkey.town.example"] = found({"hello"});
        EXPECT_EQ(one(s.run(), "no DKIM key record").level, severity::fatal);
    }
    {
        setup s;
        s.txt["r1._domainkey.town.example"] = found({"v=DKIM1; k=rsa; p=" + rsa_p + "X"});
        const auto f = s.run();
        EXPECT_EQ(one(f, "DKIM selector r1 (d=town.example): r1._domainkey.town.example does not match").level,
                  severity::fatal)
            << dump(f);
        EXPECT_NE(one(f, "does not match").text.find("not the public half of /keys/r1.pem"), std::string::npos);
        EXPECT_TRUE(sc::any_fatal(f));
    }
    {
        setup s;
        s.txt["r1._domainkey.town.example"] = found({"v=DKIM1; k=ed25519; p=" + rsa_p});
        EXPECT_NE(one(s.run(), "does not match").text.find("k=ed25519 but /keys/r1.pem is an rsa key"),
                  std::string::npos);
    }
    {
        setup s;  // no k=: rsa by default (RFC 6376 §3.6.1), so an Ed25519 key does not match
        s.keys[0] = key("town.example", "r1", dkim::algorithm::ed25519_sha256, 256, ed_p);
        s.txt["r1._domainkey.town.example"] = found({"v=DKIM1; p=" + ed_p});
        EXPECT_EQ(one(s.run(), "does not match").level, severity::fatal);
        s.txt["r1._domainkey.town.example"] = found({"v=DKIM1; k=ed25519; p=" + ed_p});
        EXPECT_FALSE(sc::any_fatal(s.run())) << dump(s.run());
    }
    {
        setup s;
        s.txt["r1._domainkey.town.example"] = found({"v=DKIM1; k=rsa; p="});
        EXPECT_NE(one(s.run(), "does not match").text.find("revoked"), std::string::npos);
    }
    {
        setup s;
        s.txt["r1._domainkey.town.example"] = failed("r1._domainkey.town.example");
        EXPECT_EQ(one(s.run(), "cannot check the key record: r1._domainkey.town.example: Server failure").level,
                  severity::fatal);
    }
    {
        setup s;
        s.keys[0].key.reset();
        s.keys[0].error = "/keys/r1.pem: not a PEM private key";
        EXPECT_EQ(one(s.run(), "cannot load /keys/r1.pem").level, severity::fatal);
    }
}

TEST(SenderCheck, TestingModeAndSeveralRecordsWarn) {
    setup s;
    s.txt["r1._domainkey.town.example"] = found({"v=DKIM1; k=rsa; t=y; p=" + rsa_p});
    EXPECT_EQ(one(s.run(), "testing mode").level, severity::warning);
    s.txt["r1._domainkey.town.example"] = found({"v=DKIM1; k=rsa; p=" + rsa_p, "v=DKIM1; k=rsa; p=OLD"});
    EXPECT_EQ(one(s.run(), "2 key records").level, severity::warning);
    EXPECT_FALSE(sc::any_fatal(s.run()));
}

TEST(SenderCheck, RsaKeyLength) {
    setup s;
    s.keys[0].key->bits = 1023;
    EXPECT_EQ(one(s.run(), "RSA key of 1023 bits").level, severity::fatal);
    s.keys[0].key->bits = 1024;
    EXPECT_EQ(one(s.run(), "RSA key of 1024 bits").level, severity::warning);
    EXPECT_FALSE(sc::any_fatal(s.run()));
    s.keys[0].key->bits = 2048;
    EXPECT_EQ(one(s.run(), "RSA key of 2048 bits").level, severity::ok);
    s.keys[0].key->bits = 4096;
    EXPECT_EQ(one(s.run(), "RSA key of 4096 bits").level, severity::ok);
}

TEST(SenderCheck, DmarcAtTheDomainOrItsParentElseAWarning) {
    setup s;
    s.from = "news.town.example";
    s.txt["_dmarc.news.town.example"] = none();
    EXPECT_EQ(one(s.run(), "DMARC (From domain news.town.example): _dmarc.town.example").level,
              severity::ok);  // the parent's record
    s.txt["_dmarc.news.town.example"] = found({"v=DMARC1; p=reject"});
    EXPECT_EQ(one(s.run(), "_dmarc.news.town.example: \"v=DMARC1; p=reject\"").level, severity::ok);
    s.txt["_dmarc.news.town.example"] = found({"v=spf1 -all"});  // not a DMARC record
    s.txt["_dmarc.town.example"] = none();
    const auto f = s.run();
    EXPECT_EQ(one(f,
                  "DMARC (From domain news.town.example): no record (v=DMARC1) at _dmarc.news.town.example nor at "
                  "_dmarc.town.example")
                  .level,
              severity::warning)
        << dump(f);
    s.txt["_dmarc.town.example"] = found({"v=DMARC1; p=none", "v=DMARC1; p=reject"});
    EXPECT_EQ(one(s.run(), "2 records at _dmarc.town.example").level, severity::warning);
    s.txt["_dmarc.town.example"] = failed("_dmarc.town.example");
    EXPECT_EQ(one(s.run(), "DMARC (From domain news.town.example): cannot check: _dmarc.town.example").level,
              severity::fatal);
    s.txt.erase("_dmarc.town.example");
    EXPECT_EQ(one(s.run(), "cannot check: _dmarc.town.example: not looked up").level, severity::fatal);
}

TEST(SenderCheck, SpfNoneWarnsTwoAreFatal) {
    setup s;
    s.txt["town.example"] = found({"v=spf10 nonsense", "google-site-verification=abc"});
    EXPECT_EQ(one(s.run(), "SPF (envelope domain town.example): no record (v=spf1) at town.example").level,
              severity::warning);
    s.txt["town.example"] = none();
    EXPECT_EQ(one(s.run(), "no record (v=spf1)").level, severity::warning);
    EXPECT_FALSE(sc::any_fatal(s.run()));
    s.txt["town.example"] = found({"v=spf1 -all", "V=SPF1 include:_spf.example.net ~all"});
    EXPECT_EQ(one(s.run(), "SPF (envelope domain town.example): 2 records (v=spf1) at town.example").level,
              severity::fatal);
    s.txt["town.example"] = failed("town.example");
    EXPECT_EQ(one(s.run(), "SPF (envelope domain town.example): cannot check: town.example: Server failure").level,
              severity::fatal);
}

TEST(SenderCheck, HeaderFromAndEnvelopeDomainsAreCheckedApart) {
    setup s;  // From: news@town.example, MAIL FROM: bounce@bounce.example
    s.envelope = "bounce.example";
    s.txt["town.example"] = none();  // no SPF at the From domain: it is not asked
    s.txt["bounce.example"] = found({"v=spf1 ip4:192.0.2.9 -all"});
    EXPECT_EQ(s.names(),
              (std::vector<std::string>{"r1._domainkey.town.example", "_dmarc.town.example", "bounce.example"}));
    const auto f = s.run();
    EXPECT_FALSE(sc::any_fatal(f)) << dump(f);
    EXPECT_EQ(one(f, "SPF").text, "SPF (envelope domain bounce.example): \"v=spf1 ip4:192.0.2.9 -all\"");
    EXPECT_EQ(one(f, "DMARC (From domain town.example): _dmarc.town.example").level, severity::ok) << dump(f);
    EXPECT_EQ(one(f, "alignment: d=town.example is aligned with From domain town.example").level, severity::ok);
    s.from = "bounce.example";  // a From in the envelope's domain: d=town.example is not aligned with it
    s.envelope = "town.example";
    s.txt["_dmarc.bounce.example"] = found({"v=DMARC1; p=reject"});
    s.txt["town.example"] = found({"v=spf1 -all"});
    EXPECT_EQ(one(s.run(), "alignment: no [[dkim.key]] domain (town.example) is bounce.example").level, severity::fatal)
        << dump(s.run());
}

TEST(SenderCheck, AlignmentFatalUnderDmarcElseAWarning) {
    setup s;
    s.from = "news.town.example";  // d=town.example is a parent: aligned
    s.txt["_dmarc.news.town.example"] = none();
    s.txt["news.town.example"] = s.txt["town.example"];
    EXPECT_EQ(one(s.run(), "alignment: d=town.example is aligned with From domain news.town.example").level,
              severity::ok);
    s.from = "other.example";  // d=town.example is not
    s.txt["_dmarc.other.example"] = found({"v=DMARC1; p=quarantine"});
    s.txt["other.example"] = s.txt["town.example"];
    auto f = s.run();
    EXPECT_EQ(one(f, "alignment: no [[dkim.key]] domain (town.example) is other.example").level, severity::fatal)
        << dump(f);
    s.txt["_dmarc.other.example"] = none();
    f = s.run();
    EXPECT_EQ(one(f, "alignment: no [[dkim.key]] domain").level, severity::warning) << dump(f);
    EXPECT_FALSE(sc::any_fatal(f)) << dump(f);
    s.from = "maintown.example";  // a suffix that is no parent
    s.txt["maintown.example"] = s.txt["town.example"];
    EXPECT_EQ(one(s.run(), "alignment: no [[dkim.key]] domain").level, severity::warning);
}

TEST(SenderCheckPsl, RulesWildcardsExceptionsAndTheDefaultRule) {
    const psl::list& l = sender_check_psl();
    EXPECT_EQ(l.size(), 11u);
    EXPECT_EQ(l.organizational_domain("news.town.example.co.uk"), "example.co.uk");  // co.uk, not uk
    EXPECT_EQ(l.public_suffix("news.town.example.co.uk"), "co.uk");
    EXPECT_EQ(l.organizational_domain("News.Town.Example."), "town.example");  // lowercase, no trailing dot
    EXPECT_EQ(l.organizational_domain("a.b.foo.ck"), "b.foo.ck");              // *.ck: foo.ck is a suffix
    EXPECT_EQ(l.organizational_domain("a.www.ck"), "www.ck");                  // !www.ck: ck is the suffix
    EXPECT_EQ(l.public_suffix("www.ck"), "ck");
    EXPECT_EQ(l.organizational_domain("x.y.city.kawasaki.jp"), "city.kawasaki.jp");
    EXPECT_EQ(l.organizational_domain("x.y.other.kawasaki.jp"), "y.other.kawasaki.jp");
    EXPECT_EQ(l.organizational_domain("me.blogspot.com"), "me.blogspot.com");  // the PRIVATE section counts
    EXPECT_EQ(l.organizational_domain("a.b.example.com"), "example.com");      // COM, lowercased
    EXPECT_EQ(l.organizational_domain("a.b.unlisted"), "b.unlisted");          // the default rule *
    EXPECT_EQ(l.organizational_domain("co.uk"), "co.uk");                      // a suffix is its own
}

TEST(SenderCheckPsl, TheReaderIsBounded) {
    std::string error;
    std::string many;
    for (std::size_t i = 0; i <= psl::rules_max; ++i) {
        many += "r" + std::to_string(i) + "\n";
    }
    EXPECT_FALSE(psl::list::parse(many, error).has_value());
    EXPECT_EQ(error, "more than 100000 rules");
    EXPECT_FALSE(psl::list::parse(std::string(psl::rule_octets_max + 1, 'a'), error).has_value());
    EXPECT_FALSE(psl::load("/nonexistent/public_suffix_list.dat", error).has_value());
    EXPECT_EQ(error, "/nonexistent/public_suffix_list.dat: cannot open");
}

TEST(SenderCheck, DmarcAndRelaxedAlignmentUseTheOrganizationalDomain) {
    setup s;  // From news.town.example.co.uk: its organizational domain is example.co.uk, not co.uk's parent
    s.from = "news.town.example.co.uk";
    s.keys[0] = key("example.co.uk", "r1", dkim::algorithm::rsa_sha256, 2048, rsa_p);
    s.settings.keys[0] = s.keys[0].spec;
    s.txt["r1._domainkey.example.co.uk"] = found({"v=DKIM1; k=rsa; p=" + rsa_p});
    s.txt["_dmarc.news.town.example.co.uk"] = none();
    s.txt["_dmarc.example.co.uk"] = found({"v=DMARC1; p=reject"});
    s.txt["news.town.example.co.uk"] = found({"v=spf1 -all"});
    EXPECT_EQ(s.names(), (std::vector<std::string>{"r1._domainkey.example.co.uk", "_dmarc.news.town.example.co.uk",
                                                   "_dmarc.example.co.uk", "news.town.example.co.uk"}));
    auto f = s.run();
    EXPECT_FALSE(sc::any_fatal(f)) << dump(f);
    EXPECT_EQ(one(f, "_dmarc.example.co.uk: \"v=DMARC1; p=reject\"").level, severity::ok) << dump(f);
    EXPECT_EQ(one(f, "alignment: d=example.co.uk is aligned").level, severity::ok);
    // d=co.uk is a parent the signer would sign with, but a public suffix: not aligned.
    s.settings.keys[0].domain = "co.uk";
    f = s.run();
    EXPECT_EQ(one(f,
                  "alignment: no [[dkim.key]] domain (co.uk) is news.town.example.co.uk or a parent of it "
                  "within example.co.uk")
                  .level,
              severity::fatal)
        << dump(f);
}

TEST(SenderCheck, WithoutAPublicSuffixListOneLabelLessAndAWarning) {
    setup s;
    s.ctx = sc::context{nullptr, "/usr/share/publicsuffix/public_suffix_list.dat: cannot open"};
    s.from = "news.town.example.co.uk";
    s.keys[0].spec.domain = s.settings.keys[0].domain = "co.uk";
    EXPECT_EQ(s.names(), (std::vector<std::string>{"r1._domainkey.co.uk", "_dmarc.news.town.example.co.uk",
                                                   "_dmarc.town.example.co.uk", "news.town.example.co.uk"}));
    const auto f = s.run();
    EXPECT_EQ(one(f,
                  "organizational domain: no public suffix list (/usr/share/publicsuffix/public_suffix_list.dat: "
                  "cannot open): one label less stands in for it (town.example.co.uk)")
                  .level,
              severity::warning)
        << dump(f);
    EXPECT_EQ(one(f, "alignment: d=co.uk is aligned").level, severity::ok);  // as before the list
}

TEST(SenderCheck, AKeyPastNotAfterIsNotAligned) {
    setup s;
    s.txt["_dmarc.town.example"] = found({"v=DMARC1; p=quarantine"});
    s.settings.keys[0].not_after = sender_check_now + 1;  // still signs: aligned
    EXPECT_FALSE(sc::any_fatal(s.run())) << dump(s.run());
    EXPECT_EQ(one(s.run(), "alignment: d=town.example is aligned").level, severity::ok);
    s.settings.keys[0].not_after = 1'779'926'399;  // 2026-05-27 23:59:59 UTC: the signer skips it
    const auto f = s.run();
    EXPECT_EQ(one(f, "DKIM selector r1 (d=town.example): not_after passed: expired on 2026-05-27, not used").level,
              severity::warning)
        << dump(f);
    EXPECT_EQ(one(f, "alignment: no [[dkim.key]] domain (town.example (expired)) is town.example").level,
              severity::fatal)
        << dump(f);
    // A second, current key for the domain aligns.
    s.settings.keys.push_back(s.settings.keys[0]);
    s.settings.keys[1].selector = "r2";
    s.settings.keys[1].not_after = 0;
    EXPECT_EQ(one(s.run(), "alignment: d=town.example is aligned").level, severity::ok);
}

TEST(SenderCheck, UnalignedIsFatalUnderQuarantineOrRejectAWarningUnderNone) {
    setup s;
    s.from = "other.example";  // d=town.example is not aligned with it
    s.txt["other.example"] = s.txt["town.example"];
    for (const char* p : {"quarantine", "reject", "REJECT"}) {
        s.txt["_dmarc.other.example"] = found({std::string("v=DMARC1; p=") + p});
        const auto f = s.run();
        EXPECT_EQ(one(f, "alignment: no [[dkim.key]] domain (town.example) is other.example").level, severity::fatal)
            << dump(f);
        EXPECT_NE(one(f, "alignment:").text.find("so receivers apply p="), std::string::npos) << dump(f);
    }
    s.txt["_dmarc.other.example"] = found({"v=DMARC1; p=none; rua=mailto:d@other.example"});
    const auto f = s.run();
    EXPECT_EQ(one(f, "alignment: no [[dkim.key]] domain").level, severity::warning) << dump(f);
    EXPECT_NE(one(f, "alignment:").text.find("p=none is monitoring only"), std::string::npos) << dump(f);
    EXPECT_FALSE(sc::any_fatal(f)) << dump(f);
}

TEST(SenderCheck, SubdomainPolicyAndStrictDkimAlignment) {
    setup s;
    s.from = "news.town.example";  // DMARC found at the organizational domain: sp= applies
    s.txt["_dmarc.news.town.example"] = none();
    s.txt["news.town.example"] = s.txt["town.example"];
    s.txt["_dmarc.town.example"] = found({"v=DMARC1; p=none; sp=reject; adkim=s"});
    auto f = s.run();  // adkim=s: d=town.example is not news.town.example exactly
    EXPECT_EQ(one(f, "alignment: no [[dkim.key]] domain (town.example) is news.town.example (adkim=s: exactly)").level,
              severity::fatal)
        << dump(f);
    EXPECT_NE(one(f, "alignment:").text.find("apply p=reject"), std::string::npos) << dump(f);
    s.txt["_dmarc.town.example"] = found({"v=DMARC1; p=reject; sp=none; adkim=s"});
    EXPECT_EQ(one(s.run(), "alignment: no [[dkim.key]] domain").level, severity::warning);  // sp=none
    s.txt["_dmarc.town.example"] = found({"v=DMARC1; p=reject; adkim=r"});
    EXPECT_EQ(one(s.run(), "alignment: d=town.example is aligned with From domain news.town.example (relaxed").level,
              severity::ok);
    s.from = "town.example";  // the From domain itself: p= applies, and d= equals it
    s.txt["_dmarc.town.example"] = found({"v=DMARC1; p=reject; sp=none; adkim=s"});
    f = s.run();
    EXPECT_EQ(one(f, "alignment: d=town.example is aligned with From domain town.example (strict, adkim=s").level,
              severity::ok)
        << dump(f);
}

TEST(SenderCheck, AMalformedDmarcRecordIsAWarningNamingWhatIsWrong) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"p=reject; v=DMARC1", "v=DMARC1 is not its first tag"},
        {"v=DMARC1; rua=mailto:d@town.example", "it has no p="},
        {"v=DMARC1; p=block", "p=block is not none, quarantine or reject"},
        {"v=DMARC1; p=reject; sp=maybe", "sp=maybe is not none, quarantine or reject"},
        {"v=DMARC1; p=reject; adkim=x", "adkim=x is not r or s"},
        {"v=DMARC1; p=reject; aspf=relaxed", "aspf=relaxed is not r or s"},
    };
    for (const auto& [record, why] : cases) {
        setup s;
        s.from = "other.example";  // unaligned: a malformed record sets no policy, so only a warning
        s.txt["other.example"] = s.txt["town.example"];
        s.txt["_dmarc.other.example"] = found({record});
        const auto f = s.run();
        EXPECT_EQ(one(f, "DMARC (From domain other.example): _dmarc.other.example: malformed record \"" + record +
                             "\": " + why)
                      .level,
                  severity::warning)
            << dump(f);
        EXPECT_EQ(one(f, "alignment: no [[dkim.key]] domain").level, severity::warning) << dump(f);
        EXPECT_FALSE(sc::any_fatal(f)) << dump(f);
    }
    EXPECT_EQ(sc::detail_sender_check::parse_dmarc(" v = DMARC1 ;p=Quarantine; aspf=s").policy, "quarantine");
}

TEST(SenderCheck, UnsubscribeHeadersMustBeSigned) {
    setup s;
    s.settings.headers = {"from", "to", "subject", "list-unsubscribe", "LIST-UNSUBSCRIBE-POST"};
    EXPECT_EQ(one(s.run(), "headers:").level, severity::ok);
    s.settings.headers = {"From", "To", "Subject", "List-Unsubscribe"};
    EXPECT_EQ(one(s.run(), "headers: [dkim] headers lacks List-Unsubscribe-Post:").level, severity::warning);
    s.settings.headers = {"From", "To", "Subject"};
    EXPECT_EQ(one(s.run(), "lacks List-Unsubscribe and List-Unsubscribe-Post").level, severity::warning);
}

TEST(SenderCheck, NoKeyIsFatal) {
    setup s;
    s.keys.clear();
    s.settings.keys.clear();
    const auto f = s.run();
    EXPECT_EQ(one(f, "no [[dkim.key]] in the configuration").level, severity::fatal);
}

}  // namespace
