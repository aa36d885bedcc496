// Fuzzes the recipients reader: any bytes, cut into chunks of a size taken
// from the input, must give records without crashing, and the same records
// as a single read (the restart-after-refill logic is the risky part), also
// where a record exceeds record_bytes_max (256 here).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "mxpress/mail/address.hpp"
#include "mxpress/mail/recipients.hpp"

namespace {

struct record {
    std::uint64_t line;
    std::vector<std::string> fields;
    mxpress::mail::csv_error error;
    bool operator==(const record&) const = default;
};

std::vector<record> read_all(std::string_view text, std::size_t chunk) {
    mxpress::mail::csv_limits limits;
    limits.read_chunk_bytes = chunk;
    limits.record_bytes_max = 256;
    limits.fields_max = 64;
    auto reader = mxpress::mail::csv_reader::from_string(text, limits);
    mxpress::mail::csv_record rec;
    std::vector<record> out;
    while (reader.next(rec)) {
        out.push_back(record{rec.line, std::vector<std::string>(rec.fields.begin(), rec.fields.end()), rec.error});
        if (out.size() > 100000) {
            std::abort();  // more records than bytes: a loop that does not advance
        }
    }
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) {
        return 0;
    }
    const std::size_t chunk = 1 + data[0] % 17;
    const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
    // One read of the whole input against reads of 1..17 bytes: the same
    // records, overlong ones included (record_too_long, on the same line,
    // without fields, and the records after it the same).
    const auto whole = read_all(text, text.size() + 1);
    const auto cut = read_all(text, chunk);
    if (whole != cut) {
        std::abort();
    }
    // The recipients layer and the address check on top must not crash either.
    try {
        mxpress::mail::csv_limits small;
        small.read_chunk_bytes = 512;
        small.record_bytes_max = 512;
        mxpress::mail::recipients_reader rr(mxpress::mail::csv_reader::from_string(text, small), "fuzz.csv");
        mxpress::mail::recipient_row row;
        while (rr.next(row)) {
            if (row.valid()) {
                (void)mxpress::mail::check_address(row.email);
            }
        }
    } catch (const mxpress::mail::input_error&) {
    }
    return 0;
}
