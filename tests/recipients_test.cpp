// Tests for mail/recipients.hpp: the header row and per-row validity.
#include "mxpress/mail/recipients.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "mxpress/io/input_wait.hpp"
#include "mxpress/io/unique_fd.hpp"

namespace {

using mxpress::mail::csv_reader;
using mxpress::mail::input_error;
using mxpress::mail::recipient_row;
using mxpress::mail::recipients_reader;

recipients_reader open(std::string_view text) {
    return recipients_reader(csv_reader::from_string(text), "r.csv");
}

std::string header_error(std::string_view text) {
    try {
        open(text);
    } catch (const input_error& e) {
        return e.describe();
    }
    return "no error";
}

TEST(Recipients, HeaderFindsEmailCaseInsensitively) {
    auto r = open("Name,EMAIL,City\nAl,a@x.org,Rome\n");
    EXPECT_EQ(r.email_column(), 1u);
    EXPECT_EQ(r.find_column("city"), 2u);
    recipient_row row;
    ASSERT_TRUE(r.next(row));
    EXPECT_TRUE(row.valid());
    EXPECT_EQ(row.email, "a@x.org");
    EXPECT_EQ(row.line, 2u);
    EXPECT_FALSE(r.next(row));
}

TEST(Recipients, HeaderErrorsNameFileAndLine) {
    EXPECT_EQ(header_error(""), "r.csv: file is empty: expected a header row with an 'email' column");
    EXPECT_EQ(header_error("name,city\n"), "r.csv:1: header row has no 'email' column (columns: name, city)");
    EXPECT_EQ(header_error("email,Name,NAME\n"), "r.csv:1: header row: columns 2 and 3 are both named 'NAME'");
    EXPECT_EQ(header_error("email,,x\n"), "r.csv:1: header row: column 2 has no name");
    EXPECT_EQ(header_error("\"email\n"), "r.csv:1: header row: unterminated quoted field at end of file");
}

TEST(Recipients, RowsOfTheWrongShapeAreInvalidNotDropped) {
    auto r = open("email,name\na@x.org\nb@x.org,B,extra\n\nc@x.org,\"C\"\n");
    recipient_row row;
    ASSERT_TRUE(r.next(row));
    EXPECT_EQ(row.error, "row has 1 field, header has 2");
    EXPECT_EQ(row.email, "a@x.org");
    ASSERT_TRUE(r.next(row));
    EXPECT_EQ(row.error, "row has 3 fields, header has 2");
    ASSERT_TRUE(r.next(row)) << "the blank line is passed over, the next row is read";
    EXPECT_TRUE(row.valid());
    EXPECT_EQ(row.line, 5u);
    EXPECT_FALSE(r.next(row));
}

TEST(Recipients, InvalidUtf8AndNulMakeARowInvalid) {
    using namespace std::string_literals;
    auto r = open("email,name\na@x.org,\xC3\x28\nb@x.org,n\0l\n"s);
    recipient_row row;
    ASSERT_TRUE(r.next(row));
    EXPECT_EQ(row.error, "column 'name' is not valid UTF-8");
    ASSERT_TRUE(r.next(row));
    EXPECT_EQ(row.error, "NUL byte in row");
}

TEST(Recipients, OverlongRowNamesTheLimit) {
    std::string text = "email,blob\na@x.org," + std::string(1500000, 'x') + "\nb@x.org,y\n";
    auto r = open(text);
    recipient_row row;
    ASSERT_TRUE(r.next(row));
    EXPECT_EQ(row.error, "row too long (limit 1048576 bytes)");
    ASSERT_TRUE(r.next(row));
    EXPECT_TRUE(row.valid());
    EXPECT_EQ(row.line, 3u);
}

}  // namespace

// A list read from a pipe (io/input_wait.hpp): before a read would wait for
// the writer, on_block runs; a cancelled read ends the rows without taking
// the part of a line that came before it for a row.
TEST(Recipients, PipeReadAnnouncesWaitsAndACancelEndsRowsWithoutAPartialLine) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    mxpress::io::unique_fd read_end(fds[0]);
    mxpress::io::unique_fd write_end(fds[1]);
    mxpress::io::input_wait wait;
    int blocked = 0;
    recipient_row row;
    const std::string_view first = "email,name\na@x.org,Al\nb@x.org,B";  // the second row is cut
    ASSERT_EQ(::write(write_end.get(), first.data(), first.size()), static_cast<ssize_t>(first.size()));
    recipients_reader r(csv_reader::from_fd(read_end.get(), {}, &wait), "pipe.csv");
    wait.on_block([&] {
        if (++blocked == 1) {
            wait.cancel();  // as the runner's stop callback would, while the reader waits
        }
    });
    // Should the cancel not wake the read, the writer's end is closed after
    // 10 s: the read then ends and the cut row comes back, failing the test
    // instead of hanging it.
    struct watchdog {
        mxpress::io::unique_fd& fd;
        std::atomic<bool> done{false};
        std::thread t{[this] {
            for (int i = 0; i < 1000 && !done.load(); ++i) {
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            if (!done.load()) {
                fd.reset();
            }
        }};
        ~watchdog() {
            done.store(true);
            t.join();
        }
    } guard{write_end};
    ASSERT_TRUE(r.next(row));
    EXPECT_EQ(row.email, "a@x.org");
    EXPECT_FALSE(r.next(row));  // cancelled: "b@x.org,B" without its line end is not a row
    EXPECT_EQ(blocked, 1);
    EXPECT_FALSE(r.next(row));  // and it stays cancelled
}

TEST(Recipients, PipeAtItsEndIsTheEndOfRows) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    mxpress::io::unique_fd read_end(fds[0]);
    mxpress::io::unique_fd write_end(fds[1]);
    mxpress::io::input_wait wait;
    const std::string_view text = "email\na@x.org\nb@x.org";  // the last line has no line end
    ASSERT_EQ(::write(write_end.get(), text.data(), text.size()), static_cast<ssize_t>(text.size()));
    write_end.reset();
    recipients_reader r(csv_reader::from_fd(read_end.get(), {}, &wait), "pipe.csv");
    recipient_row row;
    ASSERT_TRUE(r.next(row));
    ASSERT_TRUE(r.next(row));
    EXPECT_EQ(row.email, "b@x.org");
    EXPECT_FALSE(r.next(row));
}
