// mxpress/engine/recipient.hpp — one recipient as it travels from the reader
// to a shard and through delivery attempts.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mxpress/smtp/reply.hpp"

namespace mxpress::engine {

using clock = std::chrono::steady_clock;

struct domain_state;

struct recipient {
    std::uint64_t line = 0;       // input line, the journal's key
    std::string email;            // checked, domain in lowercase A-labels
    std::uint32_t domain_at = 0;  // offset of the domain in email
    bool smtputf8 = false;
    std::string values;               // every merge field, concatenated
    std::vector<std::uint32_t> ends;  // end offset of each field in values
    std::uint64_t row_offset = 0;     // the row's bytes in the recipients file:
    std::uint32_t row_size = 0;       // a row_source reads them again after parking
    bool parked = false;              // values dropped while it waits for a retry
    bool paced = false;               // holds a slot of its domain's max_message_rate (core_routing.hpp: enqueue)

    // Delivery state (shard-local).
    std::uint32_t attempts = 0;
    std::uint32_t mx_index = 0;  // which of the domain's targets to try next
    bool started = false;
    std::uint8_t in_doubt = 0;   // attempts that ended after the body went out, before the server's reply
    bool retried_fresh = false;  // requeued once after a reused session ended under it
    clock::time_point first_attempt{};
    clock::time_point sent_at{};  // its last transaction started (a reply to it counts for rules after that)
    clock::time_point not_before{};
    smtp::reply last_reply;
    std::string last_mx;
    std::string last_ip;             // "address:port" of the MX host that answered last
    const char* last_tls = "none";   // static string: the last attempt's TLS version
    const char* last_transfer = "";  // static string: how the message was last sent, "BDAT" or "DATA" ("": never)
    domain_state* domain = nullptr;

    std::string_view domain_name() const noexcept { return std::string_view(email).substr(domain_at); }

    void fields(std::vector<std::string_view>& out) const {
        out.clear();
        std::uint32_t begin = 0;
        for (std::uint32_t end : ends) {
            out.emplace_back(values.data() + begin, end - begin);
            begin = end;
        }
    }
};

}  // namespace mxpress::engine
