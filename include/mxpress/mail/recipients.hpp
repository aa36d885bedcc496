// mxpress/mail/recipients.hpp — the recipients file: CSV with a header row.
//
// Promises:
// - The header row names the merge fields; column `email` (any case) is
//   required; duplicate names (case-insensitive) and empty names are errors.
// - Every data row after the header yields exactly one recipient_row, either
//   usable or carrying `error` (why it is invalid). Only lines with nothing
//   on them are passed over, as editors leave them at the end of files.
// - Field values are checked for NUL bytes and valid UTF-8 here, so that the
//   template never sees bytes it cannot encode.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/detail/utf8.hpp"
#include "mxpress/mail/address.hpp"
#include "mxpress/mail/csv_reader.hpp"
#include "mxpress/mail/input_error.hpp"

namespace mxpress::mail {

struct recipient_row {
    std::uint64_t line = 0;
    // One view per header column; empty when the row is invalid because its
    // shape is wrong. Valid until the next call to next().
    const std::vector<std::string_view>* fields = nullptr;
    std::string_view email;
    std::string error;  // empty when the row is well-formed
    // Where the row's bytes are in the file (a row_source reads them again).
    std::uint64_t offset = 0;
    std::uint64_t size = 0;

    bool valid() const noexcept { return error.empty(); }
};

class recipients_reader {
public:
    // `file_name` is used in error messages only. Throws input_error when the
    // header is missing or unusable.
    recipients_reader(csv_reader reader, std::string file_name)
        : _reader(std::move(reader)), _file(std::move(file_name)) {
        read_header();
    }

    const std::vector<std::string>& columns() const noexcept { return _columns; }
    std::size_t email_column() const noexcept { return _email_column; }
    const std::string& file_name() const noexcept { return _file; }
    std::uint64_t bytes_consumed() const noexcept { return _reader.bytes_consumed(); }

    // Index of a column by name (case-insensitive), or npos.
    std::size_t find_column(std::string_view name) const noexcept {
        for (std::size_t i = 0; i < _columns.size(); ++i) {
            if (detail::iequals(_columns[i], name)) {
                return i;
            }
        }
        return npos;
    }
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);

    // Returns false at end of file, or when a stop cancelled the read
    // (io/input_wait.hpp; the row being read is not returned). Throws
    // input_error when the file cannot be read any further.
    bool next(recipient_row& row) {
        for (;;) {
            const std::uint64_t begin = _reader.bytes_consumed();
            try {
                if (!_reader.next(_record)) {
                    return false;
                }
            } catch (const std::system_error& e) {
                if (e.code() == std::errc::operation_canceled) {
                    return false;
                }
                throw input_error(_file, 0, fmt::format("read failed: {}", e.code().message()));
            }
            if (_record.blank() && _record.error == csv_error::none) {
                continue;
            }
            row.line = _record.line;
            row.offset = begin;
            row.size = _reader.bytes_consumed() - begin;
            row.error.clear();
            row.email = {};
            row.fields = &_record.fields;
            if (_record.error != csv_error::none) {
                row.error = std::string(describe(_record.error));
                if (_record.error == csv_error::record_too_long) {
                    row.error += fmt::format(" (limit {} bytes)", record_bytes_max);
                }
                if (_record.last_line > _record.line) {
                    // Every line it consumed is accounted for in its journal line.
                    row.error += fmt::format(" (lines {}-{})", _record.line, _record.last_line);
                }
            } else if (_record.fields.size() != _columns.size()) {
                row.error = fmt::format("row has {} field{}, header has {}", _record.fields.size(),
                                        _record.fields.size() == 1 ? "" : "s", _columns.size());
            } else {
                for (std::size_t i = 0; i < _record.fields.size(); ++i) {
                    if (!detail::valid_utf8(_record.fields[i])) {
                        row.error = fmt::format("column '{}' is not valid UTF-8", _columns[i]);
                        break;
                    }
                }
            }
            if (_email_column < _record.fields.size()) {
                row.email = _record.fields[_email_column];
            }
            return true;
        }
    }

    static constexpr std::size_t record_bytes_max = csv_limits{}.record_bytes_max;

private:
    void read_header() {
        bool got = false;
        try {
            // Leading blank lines before the header are tolerated.
            while ((got = _reader.next(_record)) && _record.blank() && _record.error == csv_error::none) {
            }
        } catch (const std::system_error& e) {
            throw input_error(_file, 0, fmt::format("read failed: {}", e.code().message()));
        }
        if (!got) {
            throw input_error(_file, 0, "file is empty: expected a header row with an 'email' column");
        }
        if (_record.error != csv_error::none) {
            throw input_error(_file, _record.line, fmt::format("header row: {}", describe(_record.error)));
        }
        _email_column = npos;
        for (std::size_t i = 0; i < _record.fields.size(); ++i) {
            const std::string_view name = detail::trim_wsp(_record.fields[i]);
            if (name.empty()) {
                throw input_error(_file, _record.line, fmt::format("header row: column {} has no name", i + 1));
            }
            if (!detail::valid_utf8(name)) {
                throw input_error(_file, _record.line,
                                  fmt::format("header row: column {} name is not valid UTF-8", i + 1));
            }
            for (std::size_t k = 0; k < _columns.size(); ++k) {
                if (detail::iequals(_columns[k], name)) {
                    throw input_error(_file, _record.line,
                                      fmt::format("header row: columns {} and {} are both named '{}'", k + 1, i + 1,
                                                  std::string(name)));
                }
            }
            _columns.emplace_back(name);
            if (detail::iequals(name, "email")) {
                _email_column = i;
            }
        }
        if (_email_column == npos) {
            throw input_error(_file, _record.line,
                              fmt::format("header row has no 'email' column (columns: {})", fmt::join(_columns, ", ")));
        }
    }

    csv_reader _reader;
    std::string _file;
    csv_record _record;
    std::vector<std::string> _columns;
    std::size_t _email_column = npos;
};

// Why a row cannot be sent (its shape, then its address), or "" when it
// can; `address` then holds the checked address. The reason is what the
// journal's `reply` says for an invalid row.
inline std::string check_row(const recipient_row& row, checked_address& address) {
    if (!row.valid()) {
        return row.error;
    }
    address = check_address(row.email);
    if (!address.valid()) {
        return "invalid address: " + address.error;
    }
    return {};
}

}  // namespace mxpress::mail
