// Tests for mail/csv_reader.hpp: RFC 4180 shapes, line numbers, every way a
// record can be cut by a buffer boundary, and each malformed input.
#include "mxpress/mail/csv_reader.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using mxpress::mail::csv_error;
using mxpress::mail::csv_limits;
using mxpress::mail::csv_reader;
using mxpress::mail::csv_record;

struct row {
    std::uint64_t line;
    std::vector<std::string> fields;
    csv_error error;
    bool operator==(const row&) const = default;
};

std::vector<row> parse(std::string_view text, csv_limits limits = {}) {
    csv_reader r = csv_reader::from_string(text, limits);
    csv_record rec;
    std::vector<row> out;
    while (r.next(rec)) {
        out.push_back(row{rec.line, std::vector<std::string>(rec.fields.begin(), rec.fields.end()), rec.error});
    }
    return out;
}

TEST(CsvReader, PlainRowsWithLfAndCrlf) {
    const auto rows = parse("a,b\r\n1,2\n3,4");
    ASSERT_EQ(rows.size(), 3u);
    EXPECT_EQ(rows[0], (row{1, {"a", "b"}, csv_error::none}));
    EXPECT_EQ(rows[1], (row{2, {"1", "2"}, csv_error::none}));
    EXPECT_EQ(rows[2], (row{3, {"3", "4"}, csv_error::none}));
}

TEST(CsvReader, QuotedFieldsCommasDoubledQuotesAndNewlines) {
    const auto rows = parse("h1,h2\n\"a,b\",\"say \"\"hi\"\"\"\n\"multi\nline\r\nfield\",x\nlast,row\n");
    ASSERT_EQ(rows.size(), 4u);
    EXPECT_EQ(rows[1].fields, (std::vector<std::string>{"a,b", "say \"hi\""}));
    EXPECT_EQ(rows[2].fields, (std::vector<std::string>{"multi\nline\r\nfield", "x"}));
    EXPECT_EQ(rows[2].line, 3u);
    EXPECT_EQ(rows[3].line, 6u) << "a record after a 3-line record starts on line 6";
}

TEST(CsvReader, BomIsSkippedOnlyAtStart) {
    const auto rows = parse(
        "\xEF\xBB\xBF"
        "email\n\xEF\xBB\xBFx\n");
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_EQ(rows[0].fields[0], "email");
    EXPECT_EQ(rows[1].fields[0], "\xEF\xBB\xBFx");
}

TEST(CsvReader, EmptyFieldsAndTrailingComma) {
    const auto rows = parse(",,\na,\n,b");
    ASSERT_EQ(rows.size(), 3u);
    EXPECT_EQ(rows[0].fields, (std::vector<std::string>{"", "", ""}));
    EXPECT_EQ(rows[1].fields, (std::vector<std::string>{"a", ""}));
    EXPECT_EQ(rows[2].fields, (std::vector<std::string>{"", "b"}));
}

TEST(CsvReader, BareCrEndsALine) {
    const auto rows = parse("a\rb\r");
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_EQ(rows[1].fields[0], "b");
}

// A quote never closed ends its record at the end of its own line: the
// lines after it are rows again (issue 14: they used to be swallowed).
TEST(CsvReader, UnterminatedQuoteEndsItsRecordAtItsOwnLine) {
    const auto rows = parse("a,b\n1,\"open\nstill open");
    ASSERT_EQ(rows.size(), 3u);
    EXPECT_EQ(rows[1].error, csv_error::unterminated_quote);
    EXPECT_EQ(rows[1].line, 2u);
    EXPECT_EQ(rows[2], (row{3, {"still open"}, csv_error::none}));
    const std::string text = "email,n\na@x.org,\"open\r\nb@x.org,1\rc@x.org,2\nd@x.org,3";
    const auto expected = parse(text);
    ASSERT_EQ(expected.size(), 5u);
    EXPECT_EQ(expected[1].error, csv_error::unterminated_quote);
    EXPECT_EQ(expected[2], (row{3, {"b@x.org", "1"}, csv_error::none}));
    EXPECT_EQ(expected[3], (row{4, {"c@x.org", "2"}, csv_error::none}));
    EXPECT_EQ(expected[4], (row{5, {"d@x.org", "3"}, csv_error::none}));
    for (std::size_t chunk = 1; chunk <= text.size(); ++chunk) {
        csv_limits limits;
        limits.read_chunk_bytes = chunk;
        EXPECT_EQ(parse(text, limits), expected) << "chunk size " << chunk;
    }
}

// Issue 14: a row over the limit with an odd number of '"' swallowed the
// rest of the file (3 valid rows lost); with CR-only line ends too. Now the
// reader seeks back to the line end after the open quote.
TEST(CsvReader, OverlongRowWithAnOpenQuoteDoesNotSwallowTheRowsAfterIt) {
    for (const char* eol : {"\n", "\r", "\r\n"}) {
        std::string text = std::string("email,blob") + eol;
        text += "a@x.org,\"" + std::string(300, 'z') + eol;
        text += std::string("b@x.org,1") + eol + "c@x.org,2" + eol + "d@x.org,3" + eol;
        csv_limits whole;
        whole.record_bytes_max = 256;
        const auto expected = parse(text, whole);
        ASSERT_EQ(expected.size(), 5u) << "eol " << int(eol[0]);
        EXPECT_EQ(expected[1].error, csv_error::unterminated_quote);
        EXPECT_EQ(expected[1].line, 2u);
        EXPECT_EQ(expected[2], (row{3, {"b@x.org", "1"}, csv_error::none}));
        EXPECT_EQ(expected[4], (row{5, {"d@x.org", "3"}, csv_error::none}));
        for (std::size_t chunk : {1u, 7u, 64u, 1000u}) {
            csv_limits limits = whole;
            limits.read_chunk_bytes = chunk;
            EXPECT_EQ(parse(text, limits), expected) << "chunk size " << chunk;
        }
    }
    // An overlong row without quotes, CR-only line ends: skipped to its CR.
    std::string text = "email,blob\ra@x.org," + std::string(300, 'z') + "\rb@x.org,1\rc@x.org,2\r";
    csv_limits limits;
    limits.record_bytes_max = 256;
    limits.read_chunk_bytes = 16;
    const auto rows = parse(text, limits);
    ASSERT_EQ(rows.size(), 4u);
    EXPECT_EQ(rows[1].error, csv_error::record_too_long);
    EXPECT_EQ(rows[3], (row{4, {"c@x.org", "2"}, csv_error::none}));
}

// The lines a record covers: an invalid one names them all.
TEST(CsvReader, RecordsSayWhichLinesTheyCover) {
    csv_reader r = csv_reader::from_string("a,b\n\"x\ny\nz\",1\nok,2\n\"p\nq\"junk,3\n");
    csv_record rec;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;
    while (r.next(rec)) {
        spans.emplace_back(rec.line, rec.last_line);
    }
    const std::vector<std::pair<std::uint64_t, std::uint64_t>> want = {{1, 1}, {2, 4}, {5, 5}, {6, 7}};
    EXPECT_EQ(spans, want);
}

TEST(CsvReader, StrayQuoteAndTextAfterQuote) {
    const auto rows = parse("ab\"c,d\n\"x\"y,z\nok,ok\n");
    ASSERT_EQ(rows.size(), 3u);
    EXPECT_EQ(rows[0].error, csv_error::stray_quote);
    EXPECT_EQ(rows[1].error, csv_error::text_after_quote);
    EXPECT_EQ(rows[2].error, csv_error::none) << "one bad row must not spoil the next";
}

TEST(CsvReader, NulBytesAreReported) {
    using namespace std::string_literals;
    const auto rows = parse("a,b\nx\0y,z\n\"q\0\",w\nfine,row\n"s);
    ASSERT_EQ(rows.size(), 4u);
    EXPECT_EQ(rows[1].error, csv_error::nul_byte);
    EXPECT_EQ(rows[2].error, csv_error::nul_byte);
    EXPECT_EQ(rows[3].error, csv_error::none);
}

TEST(CsvReader, OverlongRecordIsSkippedToItsEnd) {
    csv_limits limits;
    limits.read_chunk_bytes = 64;
    limits.record_bytes_max = 100;
    std::string text = "email,name\n";
    text += "a@x.org," + std::string(500, 'n') + "\n";
    text += "b@x.org,\"" + std::string(300, 'q') + "\nstill quoted\"\n";
    text += "c@x.org,ok\n";
    const auto rows = parse(text, limits);
    ASSERT_EQ(rows.size(), 4u);
    EXPECT_EQ(rows[1].error, csv_error::record_too_long);
    EXPECT_EQ(rows[1].line, 2u);
    EXPECT_EQ(rows[2].error, csv_error::record_too_long);
    EXPECT_EQ(rows[2].line, 3u);
    EXPECT_EQ(rows[3], (row{5, {"c@x.org", "ok"}, csv_error::none}));
}

// Found by fuzz_csv: skipping an overlong record used to toggle on every
// '"', so a stray quote in an unquoted field (or junk after a closing quote)
// swallowed the line end, and a bare CR did not end the record: the records
// after it depended on how the input was cut into reads.
TEST(CsvReader, OverlongRecordEndsWhereAWholeReadEndsIt) {
    const std::string long_field(300, 'n');
    std::string text = "email,name\n";
    text += "a@x.org," + long_field + "\"stray,x\n";      // stray quote
    text += "b@x.org,\"" + long_field + "\"junk\"x\r\n";  // junk after the closing quote
    text += "c@x.org," + long_field + "\r";               // a bare CR ends the record
    text += "d@x.org,\"" + long_field + "\"\"\r\n\"\n";   // "" then a line end inside quotes
    text += "e@x.org,ok\n";
    csv_limits whole;
    whole.record_bytes_max = 256;
    const auto expected = parse(text, whole);
    ASSERT_EQ(expected.size(), 6u);
    EXPECT_EQ(expected[1], (row{2, {}, csv_error::record_too_long}));
    EXPECT_EQ(expected[2], (row{3, {}, csv_error::record_too_long}));
    EXPECT_EQ(expected[3], (row{4, {}, csv_error::record_too_long}));
    EXPECT_EQ(expected[4], (row{5, {}, csv_error::record_too_long}));
    EXPECT_EQ(expected[5], (row{7, {"e@x.org", "ok"}, csv_error::none}));
    for (std::size_t chunk = 1; chunk <= 64; ++chunk) {
        csv_limits limits = whole;
        limits.read_chunk_bytes = chunk;
        EXPECT_EQ(parse(text, limits), expected) << "chunk size " << chunk;
    }
}

TEST(CsvReader, OneMegabyteLineWithDefaultLimitsIsOneInvalidRow) {
    std::string text = "email,blob\n";
    text += "a@x.org," + std::string(2u << 20, 'z') + "\n";
    text += "b@x.org,small\n";
    const auto rows = parse(text);
    ASSERT_EQ(rows.size(), 3u);
    EXPECT_EQ(rows[1].error, csv_error::record_too_long);
    EXPECT_EQ(rows[2].fields[0], "b@x.org");
}

TEST(CsvReader, TooManyFields) {
    csv_limits limits;
    limits.fields_max = 4;
    const auto rows = parse("a,b,c,d,e,f\nx\n", limits);
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_EQ(rows[0].error, csv_error::too_many_fields);
    EXPECT_EQ(rows[1].error, csv_error::none);
}

TEST(CsvReader, EmptyInputHasNoRecords) {
    EXPECT_TRUE(parse("").empty());
    EXPECT_TRUE(parse("\xEF\xBB\xBF").empty());
}

// Every chunk size from 1 byte up must give the same records as one read:
// this is what exercises the restart-after-refill logic.
TEST(CsvReader, SameResultForEveryChunkSize) {
    const std::string text =
        "\xEF\xBB\xBF"
        "email,name,note\r\n"
        "a@x.org,\"Doe, Jane\",\"she said \"\"hi\"\"\"\r\n"
        "b@x.org,Bob,\"two\r\nlines\"\r\n"
        "c@x.org,,\r"
        "\n"
        "d@x.org,\"\",\"\"\"\"\n"
        "e@x.org,broken\"quote,x\n"
        "f@x.org,\"unterminated";
    const auto expected = parse(text);
    ASSERT_EQ(expected.size(), 7u);
    for (std::size_t chunk = 1; chunk <= text.size() + 1; ++chunk) {
        csv_limits limits;
        limits.read_chunk_bytes = chunk;
        EXPECT_EQ(parse(text, limits), expected) << "chunk size " << chunk;
    }
}

}  // namespace
