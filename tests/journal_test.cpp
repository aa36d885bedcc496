// Tests for engine/journal.hpp. Validity of every line is checked by
// Python's json module, an independent parser.
#include "mxpress/engine/journal.hpp"

#include "mxpress/engine/shared_journal.hpp"

#include <gtest/gtest.h>

#include <fstream>

#include "test_util.hpp"

namespace {

using namespace mxpress::engine;
using mxpress::test::temp_dir;

TEST(Journal, NastyRepliesStillGiveValidJsonLines) {
    temp_dir dir;
    const std::string path = dir.file("j.jsonl");
    const std::vector<std::string> replies = {
        "550 5.1.1 \"quoted\" and \\backslash\\",
        std::string("control \x01\x02\x1f and \t tab \r\n newline"),
        "invalid utf-8 \xC3\x28 \xFF\xFE end",
        "surrogate \xED\xA0\x80 overlong \xC0\xAF",
        "日本語 ok",
        std::string("nul \0 inside", 12),
    };
    {
        journal_writer w = journal_writer::open(path, false);
        for (std::size_t i = 0; i < replies.size(); ++i) {
            journal_entry e;
            e.line = i + 2;
            e.email = "a\"b@x.org";
            e.status = outcome_status::bounced;
            e.code = 550;
            e.enhanced = "5.1.1";
            e.reply = replies[i];
            e.mx = "mx.x.org";
            e.attempts = 1;
            w.append(e);
        }
        w.sync();
    }
    int status = 0;
    const std::string out = mxpress::test::run(
        std::string(mxpress::test::python3()) +
            " -c \"import json,sys\nfor l in open(sys.argv[1],encoding='utf-8'):\n  o=json.loads(l)\n  "
            "print(o['line'], o['status'], o['code'], o['enhanced'], o['attempts'], repr(o['reply']))\" " +
            path,
        status);
    ASSERT_EQ(status, 0) << out;
    EXPECT_NE(out.find("2 bounced 550 5.1.1 1 '550 5.1.1 \"quoted\" and \\\\backslash\\\\'"), std::string::npos) << out;
    EXPECT_NE(out.find("'control \\x01\\x02\\x1f and \\t tab \\r\\n newline'"), std::string::npos) << out;
    EXPECT_NE(out.find("'invalid utf-8 \uFFFD( \uFFFD\uFFFD end'"), std::string::npos) << out;
    EXPECT_NE(out.find("'日本語 ok'"), std::string::npos) << out;
    EXPECT_NE(out.find("'nul \\x00 inside'"), std::string::npos) << out;
}

TEST(Journal, ReaderFindsFinalLinesAndToleratesATornTail) {
    temp_dir dir;
    const std::string path = dir.file("j.jsonl");
    {
        journal_writer w = journal_writer::open(path, false);
        journal_entry e;
        e.email = "a@x.org";
        for (auto [line, st] : std::vector<std::pair<int, outcome_status>>{{2, outcome_status::delivered},
                                                                           {3, outcome_status::dry_run},
                                                                           {5, outcome_status::invalid},
                                                                           {7, outcome_status::expired}}) {
            e.line = static_cast<std::uint64_t>(line);
            e.status = st;
            w.append(e);
        }
    }
    // A crash cut the last write.
    std::ofstream(path, std::ios::app) << "{\"line\":9,\"email\":\"a@x.or";
    journal_state st = read_journal(path);
    EXPECT_EQ(st.entries, 4u);
    EXPECT_EQ(st.final_entries, 3u);
    EXPECT_EQ(st.delivery_entries, 2u);
    EXPECT_EQ(st.torn_lines, 1u);
    EXPECT_TRUE(st.has_final(2));
    EXPECT_FALSE(st.has_final(3)) << "dry-run is not final";
    EXPECT_TRUE(st.has_final(5));
    EXPECT_TRUE(st.has_final(7));
    EXPECT_FALSE(st.has_final(9));
    EXPECT_FALSE(st.has_final(1000));
    // Appending after the torn line starts a fresh line, and the file reads again.
    {
        journal_writer w = journal_writer::open(path, true);
        journal_entry e;
        e.line = 9;
        e.status = outcome_status::bounced;
        w.append(e);
    }
    st = read_journal(path);
    EXPECT_TRUE(st.has_final(9));
    EXPECT_EQ(st.torn_lines, 1u);
}

// Issue 14: the header line, deferred lines left by a stop, address tags
// (escaped or not: the fast path and the general parser agree), and a
// final line after a deferred one.
TEST(Journal, ResumeStateHoldsHeaderTagsAndDeferredRows) {
    temp_dir dir;
    const std::string path = dir.file("j.jsonl");
    {
        journal_writer w = journal_writer::open(path, false);
        std::string lines;
        journal_header h{"r1", "2026-11-27T12:00:00.000Z", "cols", "tmpl"};
        append_journal_header(lines, h);
        journal_entry e;
        e.line = 2;
        e.email = "a@x.org";
        e.status = outcome_status::delivered;
        append_journal_line(lines, e);
        e.line = 3;
        e.email = "q\"uote@x.org";  // escaped in the line
        append_journal_line(lines, e);
        e.line = 4;
        e.email = "d@x.org";
        e.status = outcome_status::deferred;
        e.next_attempt = "2026-11-27T12:01:00.500Z";
        e.attempts = 2;
        append_journal_line(lines, e);
        e.line = 5;
        e.in_doubt = true;
        append_journal_line(lines, e);
        e.status = outcome_status::bounced;  // line 5 ended in a later run
        append_journal_line(lines, e);
        w.append_raw(lines);
    }
    const journal_state st = read_journal(path);
    ASSERT_TRUE(st.header.has_value());
    EXPECT_EQ(st.header->run, "r1");
    EXPECT_EQ(st.header->templ, "tmpl");
    EXPECT_EQ(st.final_tag(2), email_tag("a@x.org"));
    EXPECT_EQ(st.final_tag(3), email_tag("q\"uote@x.org"));
    EXPECT_FALSE(st.has_final(4));
    ASSERT_NE(st.deferred_at(4), nullptr);
    EXPECT_EQ(st.deferred_at(4)->attempts, 2u);
    EXPECT_FALSE(st.deferred_at(4)->in_doubt);
    std::int64_t ms = 0;
    ASSERT_TRUE(parse_timestamp("2026-11-27T12:01:00.500Z", ms));
    EXPECT_EQ(st.deferred_at(4)->next_attempt_ms, ms);
    EXPECT_TRUE(st.has_final(5));
    EXPECT_EQ(st.deferred_at(5), nullptr) << "a final line supersedes the deferred one";
    std::string ts;
    format_timestamp(ts, std::chrono::system_clock::time_point(std::chrono::milliseconds(ms)));
    EXPECT_EQ(ts, "2026-11-27T12:01:00.500Z");
}

// Issue 14 #8: a second writer on the same journal is refused while the
// first holds it, and does not truncate it.
TEST(Journal, SecondWriterIsRefusedAndTruncatesNothing) {
    temp_dir dir;
    const std::string path = dir.file("j.jsonl");
    journal_writer first = journal_writer::open(path, false);
    journal_entry e;
    e.line = 2;
    e.email = "a@x.org";
    e.status = outcome_status::delivered;
    first.append(e);
    first.flush();
    try {
        journal_writer second = journal_writer::open(path, false);
        FAIL() << "a second writer got the journal";
    } catch (const mxpress::mail::input_error& err) {
        EXPECT_NE(err.describe().find("in use by another mxpress run"), std::string::npos) << err.describe();
    }
    EXPECT_TRUE(read_journal(path).has_final(2)) << "the refused open truncated the journal";
}

TEST(Journal, ForeignLineIsAnErrorNamingTheLine) {
    temp_dir dir;
    const std::string path = dir.write("j.jsonl", "{\"line\":2,\"status\":\"delivered\"}\n{\"line\":3}\n");
    try {
        read_journal(path);
        FAIL() << "expected an error";
    } catch (const mxpress::mail::input_error& e) {
        EXPECT_EQ(e.line(), 2u);
        EXPECT_NE(e.describe().find("missing or bad \"line\" or \"status\""), std::string::npos) << e.describe();
    }
}

TEST(Journal, MissingJournalIsEmptyAndUnwritablePathIsAnError) {
    EXPECT_EQ(read_journal("/nonexistent/dir/j.jsonl").entries, 0u);
    EXPECT_THROW(journal_writer::open("/nonexistent/dir/j.jsonl", false), mxpress::mail::input_error);
}

// Batches reach the file whole, in order, and before write_batch returns (a
// crash loses only what was not handed over).
TEST(Journal, SharedJournalWritesEveryBatchWholeAndInOrder) {
    temp_dir dir;
    const std::string path = dir.file("j.jsonl");
    std::string expected;
    {
        shared_journal j(journal_writer::open(path, false));
        for (int b = 0; b < 200; ++b) {
            std::string lines;
            for (int k = 0; k < 50; ++k) {
                journal_entry e;
                e.line = static_cast<std::uint64_t>(b * 50 + k + 2);
                e.email = "a@b.test";
                e.status = outcome_status::delivered;
                append_journal_line(lines, e);
            }
            expected += lines;
            j.write_batch(lines);
            EXPECT_TRUE(lines.empty());
            if (b % 50 == 0) {  // in the file already, without sync()
                std::ifstream in(path, std::ios::binary);
                const std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
                EXPECT_EQ(got, expected);
            }
        }
        j.sync();
        std::ifstream in(path, std::ios::binary);
        const std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        EXPECT_EQ(got, expected);  // on disk at sync, before the journal closes
    }
}

// A full disk is a run failure the shard hears about from the very batch
// that failed (exit 1 in main), not a usage error; every later batch and
// sync() hear it too, and nothing is queued meanwhile.
TEST(Journal, SharedJournalReportsAFullDisk) {
    shared_journal j(journal_writer::open("/dev/full", false));
    std::string lines(1024, 'x');
    lines.back() = '\n';
    for (int i = 0; i < 3; ++i) {
        std::string batch = lines;
        try {
            j.write_batch(batch);
            ADD_FAILURE() << "batch " << i << " was accepted by /dev/full";
        } catch (const journal_error& e) {
            EXPECT_NE(std::string(e.what()).find("/dev/full: cannot write journal"), std::string::npos) << e.what();
        }
        EXPECT_TRUE(batch.empty());
    }
    EXPECT_THROW(j.sync(), journal_error);
}

TEST(Journal, FlatJsonParserDecodesEscapes) {
    std::string got;
    const std::string err = mxpress::detail::parse_flat_json_object(
        R"({"k":"a\"b\\c\u00e9\ud83d\ude00\n","n":-1.5e3,"t":true,"z":null})",
        [&](const std::string& k, const mxpress::detail::json_value& v) { got += k + "=" + v.text + ";"; });
    EXPECT_EQ(err, "");
    EXPECT_EQ(got, "k=a\"b\\c\xC3\xA9\xF0\x9F\x98\x80\n;n=-1.5e3;t=;z=;");
    EXPECT_NE(mxpress::detail::parse_flat_json_object(R"({"k":"\ud800"})", [](auto&, auto&) {}), "");
    EXPECT_NE(mxpress::detail::parse_flat_json_object(R"({"k":1} x)", [](auto&, auto&) {}), "");
}

}  // namespace
