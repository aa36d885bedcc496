// mxpress/mail/suppression.hpp — suppression lists: addresses that must not
// be sent to (unsubscribed, hard-bounced earlier), checked where rows are read.
//
// Promises:
// - Matching follows RFC 5321: the local part exactly, the domain without
//   regard to case and as IDNA A-labels — the form check_address() gives, so
//   an entry matches a recipient however either spells its domain.
// - Memory is bounded and small: only a 64-bit hash per address, in one
//   open-addressing table (linear probing, load at most 3/4, power-of-two
//   size): 8 bytes per slot, 10.7 to 21.3 bytes per address (10 million
//   addresses: 128 MiB). The price is a false positive — a row suppressed
//   because its hash equals a listed one — with probability about
//   n / 2^64 per row (10 million entries: 5e-13; stated bound 1e-9).
// - A suppression file is one address per line (blank lines and lines
//   starting with '#' passed over), or a CSV whose header has an `email`
//   column (read with the recipients reader: quoting, BOM, CRLF). A line that
//   is not an address is passed over and counted; the caller warns.
// - A missing or unreadable file throws input_error naming it.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/io/unique_fd.hpp"
#include "mxpress/mail/address.hpp"
#include "mxpress/mail/csv_reader.hpp"
#include "mxpress/mail/input_error.hpp"
#include "mxpress/mail/recipients.hpp"

namespace mxpress::mail {

// MurmurHash64A (Austin Appleby, public domain): 64 well-mixed bits, so that
// equal hashes of different addresses are as rare as chance makes them.
inline std::uint64_t suppression_hash(std::string_view s) noexcept {
    constexpr std::uint64_t m = 0xc6a4a7935bd1e995ULL;
    constexpr int r = 47;
    std::uint64_t h = 0x6d78707265737321ULL ^ (s.size() * m);
    std::size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
        std::uint64_t k = 0;
        std::memcpy(&k, s.data() + i, 8);
        k *= m;
        k ^= k >> r;
        k *= m;
        h ^= k;
        h *= m;
    }
    std::uint64_t tail = 0;
    for (std::size_t j = s.size(); j > i; --j) {
        tail = (tail << 8) | static_cast<unsigned char>(s[j - 1]);
    }
    if (i < s.size()) {
        h ^= tail;
        h *= m;
    }
    h ^= h >> r;
    h *= m;
    h ^= h >> r;
    return h;
}

class suppression_set {
public:
    static constexpr std::size_t initial_slots = 1024;

    // `address` as check_address() returns it (checked_address::address).
    void insert_normalized(std::string_view address) { insert_hash(suppression_hash(address)); }
    bool contains_normalized(std::string_view address) const noexcept {
        return contains_hash(suppression_hash(address));
    }
    // Any spelling: normalized first; false for a string that is no address.
    bool contains(std::string_view raw) const {
        const checked_address a = check_address(raw);
        return a.valid() && contains_normalized(a.address);
    }
    bool insert(std::string_view raw) {
        const checked_address a = check_address(raw);
        if (!a.valid()) {
            return false;
        }
        insert_normalized(a.address);
        return true;
    }

    std::size_t size() const noexcept { return _size; }
    std::size_t bytes() const noexcept { return _slots.size() * sizeof(std::uint64_t); }

    void insert_hash(std::uint64_t h) {
        h = h == 0 ? 1 : h;  // 0 marks an empty slot
        if ((_size + 1) * 4 > _slots.size() * 3) {
            grow();
        }
        if (place(_slots, h)) {
            ++_size;
        }
    }
    bool contains_hash(std::uint64_t h) const noexcept {
        if (_slots.empty()) {
            return false;
        }
        h = h == 0 ? 1 : h;
        const std::size_t mask = _slots.size() - 1;
        // Bounded: the table is never full (load <= 3/4).
        for (std::size_t i = h & mask;; i = (i + 1) & mask) {
            if (_slots[i] == h) {
                return true;
            }
            if (_slots[i] == 0) {
                return false;
            }
        }
    }

private:
    // True when `h` was new.
    static bool place(std::vector<std::uint64_t>& slots, std::uint64_t h) noexcept {
        const std::size_t mask = slots.size() - 1;
        for (std::size_t i = h & mask;; i = (i + 1) & mask) {
            if (slots[i] == h) {
                return false;
            }
            if (slots[i] == 0) {
                slots[i] = h;
                return true;
            }
        }
    }
    void grow() {
        std::vector<std::uint64_t> bigger(_slots.empty() ? initial_slots : _slots.size() * 2, 0);
        for (std::uint64_t h : _slots) {
            if (h != 0) {
                place(bigger, h);
            }
        }
        _slots.swap(bigger);
    }

    std::vector<std::uint64_t> _slots;
    std::size_t _size = 0;
};

struct suppression_load {
    std::uint64_t added = 0;
    std::uint64_t skipped = 0;        // lines that are not an address
    std::uint64_t first_skipped = 0;  // the line of the first one
};

// Adds the addresses of `path` (one per line, or a CSV with an `email`
// column) to `set`.
inline suppression_load load_suppressions(const std::string& path, suppression_set& set) {
    suppression_load result;
    auto note = [&](bool ok, std::uint64_t line) {
        if (ok) {
            ++result.added;
        } else if (result.skipped++ == 0) {
            result.first_skipped = line;
        }
    };
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw input_error(path, 0, fmt::format("cannot open suppression list: {}", std::strerror(errno)));
    }
    std::string first;
    std::getline(in, first);
    if (first.starts_with("\xEF\xBB\xBF")) {
        first.erase(0, 3);
    }
    const std::string head = detail::to_lower_copy(detail::trim_wsp(first));
    const bool csv = head.find(',') != std::string::npos || head == "email" || head == "\"email\"";
    if (csv) {
        in.close();
        io::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd) {
            throw input_error(path, 0, fmt::format("cannot open suppression list: {}", std::strerror(errno)));
        }
        recipients_reader reader(csv_reader::from_fd(fd.get()), path);
        recipient_row row;
        while (reader.next(row)) {
            note(row.valid() && set.insert(detail::trim_wsp(row.email)), row.line);
        }
        return result;
    }
    std::string line = first;
    std::uint64_t line_no = 1;
    // Bounded by the file: one pass, a line at a time.
    do {
        std::string_view v = detail::trim_wsp(line);
        if (v.ends_with('\r')) {
            v = detail::trim_wsp(v.substr(0, v.size() - 1));
        }
        if (!v.empty() && !v.starts_with('#')) {
            note(set.insert(v), line_no);
        }
        ++line_no;
    } while (std::getline(in, line));
    if (in.bad()) {
        throw input_error(path, 0, fmt::format("cannot read suppression list: {}", std::strerror(errno)));
    }
    return result;
}

}  // namespace mxpress::mail
