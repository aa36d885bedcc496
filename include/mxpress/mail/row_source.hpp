// mxpress/mail/row_source.hpp — reads one recipients row again, by its byte
// range in the file, so that a recipient waiting for a retry need not keep
// its merge fields in memory.
//
// Promises:
// - Thread-safe: every shard may call read() at once (pread, no shared
//   state besides the descriptor, which it owns).
// - Only for regular files (a pipe cannot be read twice): make() returns
//   nothing otherwise, and the engine then keeps fields in memory.
// - read() parses the bytes with the same CSV reader as the first pass and
//   checks that the row still carries the same address; a file changed
//   under the run is an error, never a message to the wrong person.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "mxpress/io/unique_fd.hpp"
#include "mxpress/mail/address.hpp"
#include "mxpress/mail/csv_reader.hpp"

namespace mxpress::mail {

class row_source {
public:
    // A second descriptor on `path`, or nothing when it is not a regular file.
    static std::optional<row_source> make(const std::string& path, std::size_t email_column) {
        io::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        struct stat st {};
        if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
            return std::nullopt;
        }
        return row_source(std::move(fd), path, email_column);
    }

    // The merge fields of the row at [offset, offset + size), concatenated
    // into `values` with each field's end in `ends` (as engine::recipient
    // keeps them). `email`: the checked address the row had. Throws
    // std::runtime_error when the bytes are not that row any more.
    void read(std::uint64_t offset, std::uint32_t size, std::uint64_t line, std::string_view email, std::string& values,
              std::vector<std::uint32_t>& ends) const {
        std::string bytes(size, '\0');
        std::size_t got = 0;
        while (got < size) {
            const ssize_t n = ::pread(_fd.get(), bytes.data() + got, size - got, static_cast<off_t>(offset + got));
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                throw changed(line, n < 0 ? std::strerror(errno) : "the file is shorter");
            }
            got += static_cast<std::size_t>(n);
        }
        csv_reader reader = csv_reader::from_string(bytes);
        csv_record rec;
        while (reader.next(rec) && rec.blank() && rec.error == csv_error::none) {
        }
        if (rec.error != csv_error::none || rec.fields.size() <= _email_column ||
            check_address(rec.fields[_email_column]).address != email) {
            throw changed(line, "it no longer holds the same row");
        }
        values.clear();
        ends.clear();
        for (std::string_view f : rec.fields) {
            values += f;
            ends.push_back(static_cast<std::uint32_t>(values.size()));
        }
    }

private:
    row_source(io::unique_fd fd, std::string path, std::size_t email_column)
        : _fd(std::move(fd)), _path(std::move(path)), _email_column(email_column) {}

    std::runtime_error changed(std::uint64_t line, std::string_view why) const {
        return std::runtime_error(fmt::format(
            "{}: line {} cannot be read again for its retry ({}): the recipients file changed during the run", _path,
            line, why));
    }

    io::unique_fd _fd;
    std::string _path;
    std::size_t _email_column;
};

}  // namespace mxpress::mail
