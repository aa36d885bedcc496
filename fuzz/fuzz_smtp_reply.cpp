// Fuzzes the SMTP reply parser and the client state machine with server
// bytes, cut at a position taken from the input: a plain session, and a
// relay session through STARTTLS and AUTH (relay_session).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "mxpress/smtp/client.hpp"

namespace {

// Where complete replies end in a byte stream, parsed independently of the
// client: after feed(piece), ends_clean() says whether the stream so far
// ends exactly at the end of a reply (no bytes of a next one).
class reply_boundaries {
public:
    void feed(std::string_view piece) {
        _total += piece.size();
        std::size_t offset = _total - piece.size();
        while (!_failed && !piece.empty()) {
            std::size_t used = 0;
            const auto s = _parser.feed(piece, used);
            piece.remove_prefix(used);
            offset += used;
            if (s == mxpress::smtp::reply_parser::status::error) {
                _failed = true;
            } else if (s == mxpress::smtp::reply_parser::status::reply_ready) {
                _parser.take();
                _last_end = offset;
            } else {
                break;
            }
        }
    }
    bool ends_clean() const { return !_failed && _last_end == _total; }

private:
    mxpress::smtp::reply_parser _parser;
    std::size_t _total = 0;
    std::size_t _last_end = 0;
    bool _failed = false;
};

// A relay session: credentials set, STARTTLS whenever offered, the handshake
// "done" as soon as the client asks for it, then AUTH and a transaction.
// The input is the server's side, cut into reads at each 0xFF byte (so that
// a seed can answer each command in its own read, or several in one).
// Promises checked on every input:
// - no AUTH command (no credentials) goes out before TLS is up;
// - the 220 to STARTTLS is taken only when nothing follows it in the same
//   read: plaintext after it must end the session (CVE-2011-0411).
constexpr char read_separator = '\xff';

void relay_session(std::string_view bytes) {
    mxpress::smtp::client c("fuzz.example");
    c.set_credentials("user@x.org", "pass word");
    mxpress::smtp::envelope env;
    env.mail_from = "a@x.org";
    env.rcpt_to = {"b@y.org"};
    const std::string message = "Subject: x\r\n\r\nbody\r\n";
    reply_boundaries boundaries;
    bool tls_up = false;
    while (!bytes.empty() && c.current_state() != mxpress::smtp::client::state::closed) {
        const std::size_t sep = bytes.find(read_separator);
        const std::string_view piece = bytes.substr(0, sep);
        bytes = sep == std::string_view::npos ? std::string_view{} : bytes.substr(sep + 1);
        c.receive(piece);
        boundaries.feed(piece);
        if (c.current_state() == mxpress::smtp::client::state::tls_handshake && !boundaries.ends_clean()) {
            std::abort();  // bytes after the 220 to STARTTLS were not refused
        }
        for (bool progress = true; progress;) {
            const std::string_view out = c.output();
            if (!tls_up && out.find("AUTH") != std::string_view::npos) {
                std::abort();  // credentials before TLS
            }
            c.consume_output(out.size());
            progress = false;
            while (auto e = c.next_event()) {
                progress = true;
                if (e->kind == mxpress::smtp::event_kind::tls_start &&
                    c.current_state() == mxpress::smtp::client::state::tls_handshake) {
                    tls_up = true;
                    c.tls_established();
                }
                if (e->kind == mxpress::smtp::event_kind::ready &&
                    c.current_state() == mxpress::smtp::client::state::ready) {
                    if (!c.tls_active() && c.caps().starttls) {
                        c.starttls();
                    } else {
                        c.start_transaction(env, message);
                    }
                }
            }
        }
        if (c.authenticated() && !tls_up) {
            std::abort();
        }
    }
    c.connection_lost("end of input");
}

}  // namespace

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
    relay_session(bytes);
    return 0;
}
