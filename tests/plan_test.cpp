// Tests for engine/plan.hpp (grouping, bin-packing, plan.json), the JSON
// reader under it (detail/json_tree.hpp) and engine/report.hpp (merging
// shard journals).
#include "mxpress/engine/plan.hpp"

#include "mxpress/engine/report.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>

#include "test_util.hpp"

namespace {

using namespace mxpress::engine;
using mxpress::detail::json_node;
using mxpress::detail::parse_json_document;
using mxpress::test::temp_dir;

planned_domain dom(std::string name, std::uint64_t rows, std::vector<std::string> hosts) {
    planned_domain d;
    d.domain = std::move(name);
    d.rows = rows;
    d.resolved = !hosts.empty();
    d.hosts = std::move(hosts);
    return d;
}

config with_provider(std::string name, std::vector<std::string> match) {
    config c;
    provider_config p;
    p.name = std::move(name);
    p.match = std::move(match);
    c.providers.push_back(p);
    return c;
}

const plan_group* find_group(const std::vector<plan_group>& groups, std::string_view key) {
    for (const plan_group& g : groups) {
        if (g.key == key) {
            return &g;
        }
    }
    return nullptr;
}

TEST(PlanGroups, ProviderWhenEveryHostIsItsElseMxSetElseTheDomainAlone) {
    const config c = with_provider("big", {"*.big.test"});
    const std::vector<planned_domain> domains = {
        dom("a.test", 10, {"mx1.big.test", "mx2.big.test"}),
        dom("b.test", 20, {"mx2.big.test"}),
        dom("mixed.test", 5, {"mx1.big.test", "mx.other.test"}),  // not all the provider's: by MX set
        dom("c.test", 7, {"mx.other.test", "mx1.big.test"}),      // the same set, other order
        dom("solo.test", 3, {"mx.solo.test"}),
        dom("nx.test", 4, {}),  // lookup failed
    };
    const std::vector<plan_group> g = group_domains(domains, c);
    ASSERT_EQ(g.size(), 4u);
    const plan_group* big = find_group(g, "provider:big");
    ASSERT_NE(big, nullptr);
    EXPECT_EQ(big->domains, (std::vector<std::string>{"a.test", "b.test"}));
    EXPECT_EQ(big->rows, 30u);
    const plan_group* mixed = find_group(g, "mx:mx.other.test,mx1.big.test");
    ASSERT_NE(mixed, nullptr);
    EXPECT_EQ(mixed->domains, (std::vector<std::string>{"c.test", "mixed.test"}));
    EXPECT_EQ(mixed->rows, 12u);
    ASSERT_NE(find_group(g, "mx:mx.solo.test"), nullptr);
    const plan_group* nx = find_group(g, "domain:nx.test");
    ASSERT_NE(nx, nullptr);
    EXPECT_EQ(nx->kind, "unresolved");
    EXPECT_EQ(nx->rows, 4u);
}

TEST(PlanPack, LargestFirstOntoTheLightestShard) {
    std::vector<plan_group> groups;
    for (auto [key, rows] : std::vector<std::pair<std::string, std::uint64_t>>{
             {"g:a", 7}, {"g:b", 5}, {"g:c", 4}, {"g:d", 3}, {"g:e", 3}, {"g:f", 2}}) {
        plan_group g;
        g.key = key;
        g.rows = rows;
        g.domains = {key.substr(2) + ".test"};
        groups.push_back(g);
    }
    const std::vector<plan_shard> shards = bin_pack(groups, 3);
    ASSERT_EQ(shards.size(), 3u);
    // LPT by hand: a(7)->0, b(5)->1, c(4)->2, d(3)->2 (4<5), e(3)->1 (5<7), f(2)->0 (7=7=8? 0:7,1:8,2:7 -> 0).
    EXPECT_EQ(shards[0].groups, (std::vector<std::string>{"g:a", "g:f"}));
    EXPECT_EQ(shards[1].groups, (std::vector<std::string>{"g:b", "g:e"}));
    EXPECT_EQ(shards[2].groups, (std::vector<std::string>{"g:c", "g:d"}));
    EXPECT_EQ(shards[0].rows + shards[1].rows + shards[2].rows, 24u);
    EXPECT_EQ(shards[0].rows, 9u);
    EXPECT_EQ(shards[1].rows, 8u);
    EXPECT_EQ(shards[2].rows, 7u);
    for (const plan_group& g : groups) {
        const auto& on = shards[g.shard].groups;
        EXPECT_NE(std::find(on.begin(), on.end(), g.key), on.end()) << g.key;
    }
}

TEST(PlanPack, EveryGroupOnExactlyOneShardAndTheSpreadIsTight) {
    std::vector<plan_group> groups;
    std::uint64_t total = 0;
    std::uint64_t largest = 0;
    for (unsigned k = 0; k < 500; ++k) {
        plan_group g;
        g.key = fmt::format("g:{}", k);
        g.rows = 1 + (k * 7919) % 1000;
        total += g.rows;
        largest = std::max(largest, g.rows);
        for (unsigned d = 0; d < 1 + k % 3; ++d) {
            g.domains.push_back(fmt::format("d{}-{}.test", k, d));
        }
        groups.push_back(g);
    }
    auto again = groups;
    const std::vector<plan_shard> shards = bin_pack(groups, 7);
    std::set<std::string> seen;
    std::uint64_t sum = 0;
    std::uint64_t lo = UINT64_MAX;
    std::uint64_t hi = 0;
    for (const plan_shard& s : shards) {
        sum += s.rows;
        lo = std::min(lo, s.rows);
        hi = std::max(hi, s.rows);
        for (const std::string& d : s.domains) {
            EXPECT_TRUE(seen.insert(d).second) << d << " on two shards";
        }
    }
    EXPECT_EQ(sum, total);
    EXPECT_LE(hi - lo, largest) << "LPT leaves at most one group's rows between the heaviest and the lightest";
    // Deterministic: the same groups pack the same way.
    const std::vector<plan_shard> shards2 = bin_pack(again, 7);
    for (std::size_t s = 0; s < shards.size(); ++s) {
        EXPECT_EQ(shards[s].groups, shards2[s].groups);
    }
}

TEST(PlanPack, OneShardTakesEverythingAndMoreShardsThanGroupsLeaveSomeEmpty) {
    std::vector<plan_group> groups(2);
    groups[0].key = "g:a";
    groups[0].rows = 3;
    groups[0].domains = {"a.test"};
    groups[1].key = "g:b";
    groups[1].rows = 1;
    groups[1].domains = {"b.test"};
    EXPECT_EQ(bin_pack(groups, 1)[0].rows, 4u);
    const auto shards = bin_pack(groups, 4);
    EXPECT_EQ(shards[0].rows, 3u);
    EXPECT_EQ(shards[1].rows, 1u);
    EXPECT_EQ(shards[2].rows + shards[3].rows, 0u);
}

shard_plan sample_plan() {
    shard_plan p;
    p.recipients = "lists/r \"q\".csv";
    p.fingerprint.size = 1234;
    p.fingerprint.mtime_ns = 1700000000123456789;
    p.fingerprint.hash = "0123456789abcdef";
    p.config = "c.toml";
    p.providers = providers_fingerprint(with_provider("big", {"*.big.test"}));
    p.shard_count = 2;
    p.rows = 20;
    p.invalid_rows = 1;
    p.unresolved = 1;
    const config c = with_provider("big", {"*.big.test"});
    p.groups = group_domains({dom("a.test", 10, {"mx.big.test"}), dom("b.test", 5, {"mx.big.test"}),
                              dom("c.test", 3, {"mx.c.test"}), dom("nx.test", 1, {})},
                             c);
    p.shards = bin_pack(p.groups, p.shard_count);
    p.index();
    return p;
}

TEST(PlanJson, RoundTripsAndIsValidJson) {
    const shard_plan p = sample_plan();
    const std::string text = plan_to_json(p);
    const shard_plan q = plan_from_json(text, "plan.json");
    EXPECT_EQ(q.recipients, p.recipients);
    EXPECT_EQ(q.fingerprint.size, 1234u);
    EXPECT_EQ(q.fingerprint.mtime_ns, 1700000000123456789);
    EXPECT_EQ(q.fingerprint.hash, "0123456789abcdef");
    EXPECT_EQ(q.config, "c.toml");
    EXPECT_EQ(q.providers, p.providers);
    EXPECT_NE(q.providers, providers_fingerprint(with_provider("big", {"*.big.example"})));
    EXPECT_NE(q.providers, providers_fingerprint(config{}));
    EXPECT_EQ(q.shard_count, 2u);
    EXPECT_EQ(q.rows, 20u);
    EXPECT_EQ(q.invalid_rows, 1u);
    EXPECT_EQ(q.unresolved, 1u);
    ASSERT_EQ(q.groups.size(), p.groups.size());
    for (std::size_t k = 0; k < q.groups.size(); ++k) {
        EXPECT_EQ(q.groups[k].key, p.groups[k].key);
        EXPECT_EQ(q.groups[k].domains, p.groups[k].domains);
        EXPECT_EQ(q.groups[k].shard, p.groups[k].shard);
        EXPECT_EQ(q.groups[k].rows, p.groups[k].rows);
    }
    EXPECT_EQ(plan_to_json(q), text);
    // The provider's domains share a shard; a row without an address is shard 0's.
    EXPECT_EQ(q.shard_of("a.test"), q.shard_of("b.test"));
    EXPECT_EQ(q.shard_of("a.test"), 0u);  // the biggest group goes first, onto shard 0
    EXPECT_EQ(q.shard_of(""), 0u);
    bool known = true;
    const unsigned s = q.shard_of("elsewhere.test", &known);
    EXPECT_FALSE(known);
    EXPECT_LT(s, 2u);
    EXPECT_EQ(q.shard_of("elsewhere.test"), s) << "an unknown domain's shard is stable";
    EXPECT_TRUE(q.shard_of("c.test", &known) < 2 && known);
}

TEST(PlanJson, RefusesPlansThatAreNotWhole) {
    const std::string good = plan_to_json(sample_plan());
    auto refused = [](const std::string& text, const std::string& why) {
        try {
            plan_from_json(text, "p.json");
        } catch (const mxpress::mail::input_error& e) {
            EXPECT_NE(e.describe().find(why), std::string::npos) << e.describe();
            return true;
        }
        return false;
    };
    auto replaced = [&](std::string from, std::string to) {
        std::string t = good;
        const std::size_t at = t.find(from);
        EXPECT_NE(at, std::string::npos) << from;
        return at == std::string::npos ? t : t.substr(0, at) + to + t.substr(at + from.size());
    };
    EXPECT_NO_THROW(plan_from_json(good, "p.json"));
    EXPECT_TRUE(refused(replaced("\"mxpress_plan\":1", "\"mxpress_plan\":2"), "plan version 2"));
    EXPECT_TRUE(refused(replaced("\"shard_count\":2", "\"shard_count\":3"), "2 shards listed"));
    EXPECT_TRUE(refused(replaced("\"shard\":1,\"domains\":[\"c.test\"]", "\"shard\":5,\"domains\":[\"c.test\"]"),
                        "on shard 5 of 2"));
    EXPECT_TRUE(refused(replaced("\"domains\":[\"nx.test\"]}", "\"domains\":[\"a.test\"]}"), "in two groups"));
    EXPECT_TRUE(refused(replaced("\"domains\":[\"c.test\",\"nx.test\"]", "\"domains\":[\"c.test\"]"), "disagree"));
    EXPECT_TRUE(refused(replaced("\"domains\":[\"c.test\",\"nx.test\"]", "\"domains\":[\"c.test\",\"a.test\"]"),
                        "shard 1 lists a.test"));
    EXPECT_TRUE(refused(replaced("\"hash\":", "\"hush\":"), "'hash' is missing"));
    EXPECT_TRUE(refused(replaced("\"rows\":20", "\"rows\":-20"), "not a count"));
    EXPECT_TRUE(refused(good.substr(0, good.size() - 3), "not valid JSON"));
    EXPECT_TRUE(refused("[1,2]", "not a JSON object"));
}

TEST(JsonTree, NestedValuesEscapesAndStrictness) {
    const json_node n =
        parse_json_document(R"( {"a":[1,-2.5e3,true,false,null,{"b":"x\"\\\/\n\u00e9\ud83d\ude00"}],"c":{}, "d":[]} )");
    ASSERT_TRUE(n.is(json_node::kind::object));
    const json_node* a = n.find("a");
    ASSERT_NE(a, nullptr);
    ASSERT_EQ(a->items.size(), 6u);
    EXPECT_EQ(a->items[0].text, "1");
    EXPECT_EQ(a->items[1].text, "-2.5e3");
    EXPECT_TRUE(a->items[2].flag);
    EXPECT_TRUE(a->items[3].is(json_node::kind::boolean) && !a->items[3].flag);
    EXPECT_TRUE(a->items[4].is(json_node::kind::null));
    EXPECT_EQ(a->items[5].find("b")->text, "x\"\\/\n\xc3\xa9\xf0\x9f\x98\x80");
    EXPECT_TRUE(n.find("c")->is(json_node::kind::object));
    EXPECT_TRUE(n.find("d")->items.empty());
    EXPECT_EQ(n.find("e"), nullptr);
    using mxpress::detail::json_syntax_error;
    for (const char* bad : {"{\"a\":1,}", "[1,]", "{\"a\":1,\"a\":2}", "01", "\"\\ud800\"", "{\"a\" 1}", "[1] 2",
                            "\"tab\there\"", "", "nul", "1.", "-"}) {
        EXPECT_THROW(parse_json_document(bad), json_syntax_error) << bad;
    }
    EXPECT_THROW(parse_json_document(std::string(100, '[') + std::string(100, ']')), json_syntax_error)
        << "nesting is bounded";
    EXPECT_NO_THROW(parse_json_document(std::string(30, '[') + std::string(30, ']')));
}

TEST(Report, MergesShardJournalsCountsFinalOutcomesAndFlagsDuplicates) {
    temp_dir dir;
    const std::string j0 = dir.file("r.shard-0-of-2.journal.jsonl");
    const std::string j1 = dir.file("r.shard-1-of-2.journal.jsonl");
    const std::string hdr = R"({"mxpress_journal":1,"run":"r1","ts":"t","recipients":"x","template":"y"})";
    {
        std::ofstream f(j0);
        f << hdr << "\n"
          << R"({"line":2,"email":"a@x.test","status":"delivered"})"
          << "\n"
          << R"({"line":3,"email":"b@x.test","status":"deferred","next_attempt":"t"})"
          << "\n"
          << hdr << "\n"
          << R"({"line":3,"email":"b@x.test","status":"delivered","transfer":"BDAT"})"
          << "\n"
          << R"({"line":4,"email":"bad","status":"invalid","reply":"no @"})"
          << "\n"
          << R"({"line":7,"email":"g@y.test","status":"deferred","next_attempt":"t"})"
          << "\n";
    }
    {
        std::ofstream f(j1);
        f << hdr << "\n"
          << R"({"line":5,"email":"c@y.test","status":"bounced","code":550})"
          << "\n"
          << R"({"line":6,"email":"d@y.test","status":"dry-run"})"
          << "\n"
          << R"({"line":2,"email":"a@x.test","status":"delivered"})"
          << "\n"                                     // shard 0's row: a duplicate
          << R"({"line":8,"email":"h@y.test","sta)";  // torn by a crash
    }
    merged_report m = merge_journals({j0, j1});
    EXPECT_EQ(m.rows, 5u);  // lines 2, 3, 4, 5, 7
    EXPECT_EQ(m.final_rows, 4u);
    EXPECT_EQ(m.unfinished, 1u);
    EXPECT_EQ(m.statuses["delivered"], 2u);
    EXPECT_EQ(m.statuses["invalid"], 1u);
    EXPECT_EQ(m.statuses["bounced"], 1u);
    EXPECT_EQ(m.statuses["deferred"], 1u);
    EXPECT_EQ(m.delivered_by, (std::map<std::string, std::uint64_t>{{"BDAT", 1}, {"unknown", 1}}));
    EXPECT_EQ(m.duplicates, 1u);
    ASSERT_EQ(m.duplicate_list.size(), 1u);
    EXPECT_EQ(m.duplicate_list[0].line, 2u);
    EXPECT_EQ(m.duplicate_list[0].journals, (std::vector<std::string>{j0, j1}));
    ASSERT_EQ(m.journals.size(), 2u);
    EXPECT_EQ(m.journals[0].runs, 2u);
    EXPECT_EQ(m.journals[0].rows, 4u);
    m.planned_rows = 8;
    EXPECT_EQ(m.missing(), 4u);
    const json_node j = parse_json_document(report_json(m));
    EXPECT_EQ(j.find("duplicates")->text, "1");
    EXPECT_EQ(j.find("missing")->text, "4");
    EXPECT_EQ(j.find("statuses")->find("delivered")->text, "2");
    EXPECT_EQ(j.find("delivered_by")->find("BDAT")->text, "1");
    const std::string text = report_text(m);
    EXPECT_NE(text.find("delivered: 1 by BDAT, 1 by unknown"), std::string::npos) << text;
    EXPECT_NE(text.find("DUPLICATES: 1 rows"), std::string::npos) << text;
    EXPECT_NE(text.find("line 2 (a@x.test)"), std::string::npos) << text;

    // A foreign line in the middle is an error naming the file and line.
    {
        std::ofstream f(j1, std::ios::app);
        f << "\nnot json\n"
          << R"({"line":9,"email":"i@y.test","status":"delivered"})"
          << "\n";
    }
    EXPECT_THROW(merge_journals({j0, j1}), mxpress::mail::input_error);
}

}  // namespace
