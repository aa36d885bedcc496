// Fuzzes the SMTP reply parser and the client state machine with server
// bytes, cut at a position taken from the input.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "mxpress/smtp/client.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    {
        mxpress::smtp::reply_parser p;
        std::string_view rest = bytes;
        while (!rest.empty()) {
            std::size_t used = 0;
            const auto s = p.feed(rest, used);
            if (used > rest.size()) {
                std::abort();
            }
            rest.remove_prefix(used);
            if (s == mxpress::smtp::reply_parser::status::error) {
                break;
            }
            if (s == mxpress::smtp::reply_parser::status::reply_ready) {
                const auto r = p.take();
                if (r.code < 200 || r.code > 599) {
                    std::abort();
                }
            } else if (used == 0) {
                std::abort();  // no progress
            }
        }
    }
    {
        // A session fed the same bytes in two pieces; starts a transaction
        // whenever it becomes ready.
        mxpress::smtp::client c("fuzz.example");
        mxpress::smtp::envelope env;
        env.mail_from = "a@x.org";
        env.rcpt_to = {"b@y.org", "c@y.org"};
        const std::string message = "Subject: x\r\n\r\n.body\r\n";
        const std::size_t cut = size == 0 ? 0 : data[0] % (size + 1);
        for (std::string_view piece : {bytes.substr(0, cut), bytes.substr(cut)}) {
            c.receive(piece);
            c.consume_output(c.output().size());
            while (auto e = c.next_event()) {
                if (e->kind == mxpress::smtp::event_kind::transaction_done &&
                    e->result->recipients.size() != env.rcpt_to.size()) {
                    std::abort();
                }
                if (e->kind == mxpress::smtp::event_kind::ready &&
                    c.current_state() == mxpress::smtp::client::state::ready) {
                    c.start_transaction(env, message);
                }
                if (e->kind == mxpress::smtp::event_kind::tls_start) {
                    c.tls_established();
                }
            }
        }
        c.connection_lost("end of input");
    }
    return 0;
}
