// mxpress/smtp/client.hpp — sans-I/O SMTP client session (RFC 5321, 2920,
// 1870, 6152, 6531, 3207, 2034).
//
// Bytes in (receive()), bytes out (output()/consume_output()), events out
// (next_event()); no sockets, no clocks. The engine moves the bytes and arms
// a timer for timeout() after every change; tests drive it with transcripts.
//
// Session: greeting → EHLO (HELO when EHLO is refused) → ready. From ready:
// start_transaction(), starttls(), reset(), quit(). A transaction is sent
// pipelined when the server offers PIPELINING (MAIL, every RCPT and DATA in
// one write; replies matched in order), else one command per reply. The body
// goes only after DATA's 354; when every RCPT was refused and the server still
// says 354, a lone "." ends the empty data (RFC 2920 §3.1). A transaction
// that ends without a final reply to the data leaves the server with state
// to clear: the next transaction starts with RSET.
//
// CHUNKING (RFC 3030): when the server offers it (and set_chunking() left it
// on), the body goes as one "BDAT <n> LAST" chunk instead of DATA: raw, not
// dot-stuffed, no "." line, and no 354 to wait for. With PIPELINING, MAIL,
// every RCPT, the BDAT command and the body leave in one write (RFC 3030
// §4.2); without it, BDAT waits for the last RCPT's reply, and is not sent
// when no RCPT was accepted. When every pipelined RCPT was refused the BDAT
// still went: its (error) reply ends the transaction and each recipient
// keeps its own RCPT reply. A refused BDAT leaves the server's MAIL state
// in doubt: the next transaction starts with RSET. The reply to BDAT LAST
// is the final reply, under data_term's timeout; a session that ends before
// it, once the body is out, leaves the message in doubt as after a ".".
//
// Back to back: with PIPELINING, once a transaction's body is out the next
// transaction may start before the final reply arrives (RFC 2920 §3.1 lets
// message content lead a group), so its MAIL, RCPTs and DATA travel in the
// same write as the previous "." and a message costs one round trip, not
// two. With BDAT the body leaves with MAIL, before any reply, so the next
// transaction waits until MAIL and some RCPT were accepted (then BDAT LAST
// ends the server's transaction whatever its reply; a MAIL pipelined behind
// a refused one could meet "503 nested MAIL"). can_start_transaction() says
// when; at most two are in flight.
// transaction_done events come in order, each with the tag it started with.
//
// AUTH (RFC 4954, relays): with credentials set, the client authenticates
// after the EHLO that follows TLS, PLAIN (RFC 4616) when offered, else
// LOGIN, before reporting ready. It never sends credentials without TLS: an
// EHLO in plaintext reports ready as usual (the engine starts TLS or gives
// up), and a server that offers neither mechanism ends the session.
//
// Lifetime: the message passed to start_transaction() as a string_view is
// borrowed and must stay valid until that transaction's transaction_done
// event. Passed as a shared string it is shared instead, and a BDAT body
// is then not copied into the output: take_output() with a body_piece list
// hands it over as a piece of its own (a gather write), held as long as
// whoever took it needs it.
#pragma once

#include <cassert>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <stdexcept>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/mail/mime.hpp"
#include "mxpress/smtp/dot_stuff.hpp"
#include "mxpress/smtp/reply.hpp"

namespace mxpress::smtp {

// RFC 5321 §4.5.3.2 timeouts, as data: the engine arms them. Milliseconds,
// so that a configured "500ms" is what the engine waits.
struct timeouts {
    std::chrono::milliseconds greeting{std::chrono::minutes(5)};    // §4.5.3.2.1 initial 220
    std::chrono::milliseconds ehlo{std::chrono::minutes(5)};        // not in the RFC; as MAIL
    std::chrono::milliseconds mail{std::chrono::minutes(5)};        // §4.5.3.2.2
    std::chrono::milliseconds rcpt{std::chrono::minutes(5)};        // §4.5.3.2.3
    std::chrono::milliseconds data_init{std::chrono::minutes(2)};   // §4.5.3.2.4 reply to DATA
    std::chrono::milliseconds data_block{std::chrono::minutes(3)};  // §4.5.3.2.5 each send of body data
    std::chrono::milliseconds data_term{std::chrono::minutes(10)};  // §4.5.3.2.6 reply to the final "."
    std::chrono::milliseconds other{std::chrono::minutes(5)};       // RSET, STARTTLS, AUTH, NOOP
    std::chrono::milliseconds quit{std::chrono::seconds(5)};        // the 221 to QUIT
};

struct capabilities {
    bool esmtp = false;
    bool pipelining = false;
    bool starttls = false;
    bool eight_bit_mime = false;
    bool smtputf8 = false;
    bool chunking = false;
    bool enhanced_status_codes = false;
    bool size_advertised = false;
    std::uint64_t size_max = 0;  // 0: no limit given
    std::vector<std::string> auth_mechanisms;
};

// Parses the lines of a 250 reply to EHLO (the first line is the greeting).
inline capabilities parse_capabilities(const reply& r) {
    capabilities caps;
    caps.esmtp = true;
    std::string_view text(r.text);
    bool first = true;
    while (!text.empty() || first) {
        const std::size_t nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        if (first) {
            first = false;
            continue;
        }
        line = detail::trim_wsp(line);
        const std::size_t sp = line.find(' ');
        const std::string_view key = line.substr(0, sp);
        const std::string_view params = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
        if (detail::iequals(key, "PIPELINING")) {
            caps.pipelining = true;
        } else if (detail::iequals(key, "STARTTLS")) {
            caps.starttls = true;
        } else if (detail::iequals(key, "8BITMIME")) {
            caps.eight_bit_mime = true;
        } else if (detail::iequals(key, "SMTPUTF8")) {
            caps.smtputf8 = true;
        } else if (detail::iequals(key, "CHUNKING")) {
            caps.chunking = true;
        } else if (detail::iequals(key, "ENHANCEDSTATUSCODES")) {
            caps.enhanced_status_codes = true;
        } else if (detail::iequals(key, "SIZE")) {
            caps.size_advertised = true;
            std::uint64_t v = 0;
            bool ok = !params.empty();
            for (char c : detail::trim_wsp(params)) {
                if (!detail::is_digit(c) || v > (UINT64_MAX - 9) / 10) {
                    ok = false;
                    break;
                }
                v = v * 10 + static_cast<std::uint64_t>(c - '0');
            }
            caps.size_max = ok ? v : 0;
        } else if (detail::iequals(key, "AUTH")) {
            std::string_view p = params;
            while (!p.empty()) {
                const std::size_t s = p.find(' ');
                const std::string_view m = p.substr(0, s);
                if (!m.empty()) {
                    caps.auth_mechanisms.emplace_back(m);
                }
                p = s == std::string_view::npos ? std::string_view{} : p.substr(s + 1);
            }
        }
        if (text.empty()) {
            break;
        }
    }
    return caps;
}

// A message body that is not in the output bytes: it goes on the wire
// right before output byte `at` (see client::take_output).
struct body_piece {
    std::size_t at = 0;
    std::shared_ptr<const std::string> body;
};

// Puts each piece's body into `bytes` at its place and empties `pieces`:
// what the wire gets from bytes and pieces, as one string.
inline void flatten(std::string& bytes, std::vector<body_piece>& pieces) {
    if (pieces.empty()) {
        return;
    }
    std::string flat;
    std::size_t size = bytes.size();
    for (const body_piece& p : pieces) {
        size += p.body->size();
    }
    flat.reserve(size);
    std::size_t from = 0;
    for (const body_piece& p : pieces) {
        assert(p.at >= from && p.at <= bytes.size());
        flat.append(bytes, from, p.at - from);
        flat += *p.body;
        from = p.at;
    }
    flat.append(bytes, from);
    pieces.clear();
    bytes.swap(flat);
}

struct envelope {
    std::string mail_from;             // reverse-path without brackets; empty = null sender
    std::vector<std::string> rcpt_to;  // forward-paths without brackets
    bool eight_bit = false;            // body is 8bit: BODY=8BITMIME
    bool smtputf8 = false;             // addresses or headers need SMTPUTF8
};

struct transaction_result {
    reply mail;                     // reply to MAIL FROM
    std::vector<reply> recipients;  // final outcome for each RCPT, in order
    bool data_sent = false;         // the body went out and got a final reply to its "."
    bool bdat = false;              // the body went (or was to go) by BDAT, not DATA (CHUNKING)
    // The body went out after a 354 and the session ended before the reply
    // to its final ".": the server may have taken the message.
    bool in_doubt = false;
};

enum class event_kind {
    ready,             // session established (after greeting/EHLO, after STARTTLS+EHLO, after RSET)
    transaction_done,  // outcomes of the last start_transaction()
    tls_start,         // 220 to STARTTLS: the engine runs the TLS handshake now
    tls_refused,       // STARTTLS was not accepted; the session is still usable in plaintext
    closed,            // the session is over (QUIT answered, 421, refusal, or protocol error)
};

struct event {
    event_kind kind;
    reply last_reply;                          // the reply that caused it (synthesized when local)
    std::optional<transaction_result> result;  // for transaction_done
    bool protocol_error = false;               // closed because the peer broke the protocol
    std::uint64_t tag = 0;                     // for transaction_done: start_transaction's tag
};

class client {
public:
    enum class state { greeting, ehlo, helo, auth, ready, starttls, tls_handshake, transaction, rset, quit, closed };

    explicit client(std::string helo_name, timeouts t = {}) : _helo_name(std::move(helo_name)), _timeouts(t) {}

    // Whether BDAT may replace DATA when the server offers CHUNKING (on by
    // default; the [defaults] chunking setting).
    void set_chunking(bool on) noexcept { _chunking_allowed = on; }
    // The transactions that use BDAT: the server offers CHUNKING and it is allowed.
    bool uses_chunking() const noexcept { return _chunking_allowed && _caps.chunking; }

    // Credentials for AUTH (relays). Set before the session starts.
    void set_credentials(std::string user, std::string password) {
        _user = std::move(user);
        _password = std::move(password);
        _authenticate = true;
    }

    // The connection is TLS from its first byte (implicit TLS, port 465):
    // the engine calls this before feeding the greeting.
    void implicit_tls() {
        if (_state != state::greeting) {
            throw std::logic_error("smtp::client::implicit_tls after the greeting");
        }
        _tls_active = true;
    }

    bool authenticated() const noexcept { return _authenticated; }
    // STARTTLS was sent and TLS is not up yet (true also once the session
    // closed in between: the engine then knows the failure was TLS's).
    bool tls_handshake_pending() const noexcept { return _starttls_sent && !_tls_active; }

    // Feeds received bytes; events become available from next_event().
    void receive(std::string_view bytes) {
        while (!bytes.empty() && _state != state::closed) {
            std::size_t used = 0;
            const auto s = _parser.feed(bytes, used);
            bytes.remove_prefix(used);
            if (s == reply_parser::status::need_more) {
                return;
            }
            if (s == reply_parser::status::error) {
                protocol_failure(_parser.error());
                return;
            }
            on_reply(_parser.take());
            if (_state == state::tls_handshake && !bytes.empty()) {
                // Bytes after 220 to STARTTLS were sent in plaintext before TLS:
                // accepting them would let an attacker inject commands (CVE-2011-0411 class).
                protocol_failure("data received after the reply to STARTTLS");
                return;
            }
        }
    }

    // The peer closed the connection (or it failed): pending work fails as transient.
    void connection_lost(std::string_view why) {
        if (_state == state::closed) {
            return;
        }
        if (_state == state::quit) {
            finish_closed(synthesized(221, "", "connection closed after QUIT"), false);
            return;
        }
        finish_closed(synthesized(421, "4.4.2", std::string("connection lost: ") + std::string(why)), false);
    }

    // A deadline from timeout() passed.
    void timed_out() {
        if (_state == state::closed) {
            return;
        }
        finish_closed(synthesized(421, "4.4.2", std::string("timeout waiting for ") + waiting_for()), false);
    }

    // Output to write to the peer, in order. Call consume_output() with what
    // was written. Precondition: no body pieces (only transactions started
    // with a shared message make them; take them with take_output()).
    std::string_view output() const noexcept {
        assert(_pieces.empty());
        return std::string_view(_out).substr(_out_begin);
    }
    void consume_output(std::size_t n) {
        _out_begin += n;
        if (_out_begin == _out.size()) {
            _out.clear();
            _out_begin = 0;
        }
    }
    bool has_output() const noexcept { return _out_begin < _out.size() || !_pieces.empty(); }

    // Moves all pending output into `dst` (its old content is dropped, its
    // buffer reused for later output): the same as output() followed by
    // consume_output(), without copying the bytes when none were consumed.
    // Body pieces are copied in at their places (TLS takes them this way:
    // they become records).
    void take_output(std::string& dst) {
        std::vector<body_piece> pieces;
        take_output(dst, pieces);
        flatten(dst, pieces);
    }

    // The same without copying bodies: the bytes go to `dst`, and each body
    // piece to `pieces` (replacing what it held), `at` counted in `dst`.
    // The wire gets dst[0, at1), piece 1, dst[at1, at2), piece 2, … dst[atN, end).
    void take_output(std::string& dst, std::vector<body_piece>& pieces) {
        pieces.clear();
        pieces.swap(_pieces);
        for (body_piece& p : pieces) {
            assert(p.at >= _out_begin);
            p.at -= _out_begin;
        }
        take_bytes(dst);
    }

private:
    void take_bytes(std::string& dst) {
        if (_out_begin == 0) {
            dst.swap(_out);
            _out.clear();
        } else {
            dst.assign(_out, _out_begin);
            _out.clear();
            _out_begin = 0;
        }
    }

public:
    std::optional<event> next_event() {
        if (_events.empty()) {
            return std::nullopt;
        }
        event e = std::move(_events.front());
        _events.pop_front();
        return e;
    }

    // Deadline for the current wait, per RFC 5321 §4.5.3.2; nullopt when idle.
    std::optional<std::chrono::milliseconds> timeout() const noexcept {
        switch (_state) {
            case state::greeting: return _timeouts.greeting;
            case state::ehlo:
            case state::helo: return _timeouts.ehlo;
            case state::transaction:
                if (_expected.empty()) {
                    return std::nullopt;
                }
                if (_expected.back().what == command::bdat) {
                    // The body went with the commands: a server may answer
                    // MAIL and RCPT only once it has taken the message.
                    return has_output() ? _timeouts.data_block : _timeouts.data_term;
                }
                switch (_expected.front().what) {
                    case command::mail: return _timeouts.mail;
                    case command::rcpt: return _timeouts.rcpt;
                    case command::data: return _timeouts.data_init;
                    case command::body:
                    case command::bdat: return has_output() ? _timeouts.data_block : _timeouts.data_term;
                    default: return _timeouts.other;
                }
            case state::auth:
            case state::starttls:
            case state::rset: return _timeouts.other;
            case state::quit: return _timeouts.quit;
            case state::ready:
            case state::tls_handshake:
            case state::closed: return std::nullopt;
        }
        return std::nullopt;
    }

    state current_state() const noexcept { return _state; }
    const capabilities& caps() const noexcept { return _caps; }
    bool tls_active() const noexcept { return _tls_active; }
    std::uint64_t transactions_completed() const noexcept { return _transactions; }

    // True when start_transaction() may be called now: the session is ready,
    // or (with PIPELINING) the one transaction in flight has sent its body
    // and waits only for the final reply.
    bool can_start_transaction() const noexcept {
        if (_state == state::ready) {
            return true;
        }
        if (_state != state::transaction || !_caps.pipelining || _txns.size() != 1 || !_txns.front().body_sent ||
            !_unsent.empty()) {
            return false;
        }
        const txn& t = _txns.front();
        // BDAT: only the final reply is outstanding and the server took MAIL
        // and a recipient, so BDAT LAST closes its transaction either way.
        return !t.bdat || (_expected.size() == 1 && _expected.front().what == command::bdat && !t.discard &&
                           t.accepted > 0 && t.result.mail.positive());
    }

    // Starts a mail transaction; `tag` comes back in its transaction_done
    // event. Precondition: can_start_transaction(). A message the server
    // cannot take (SMTPUTF8 not offered, over its SIZE) fails at once with a
    // synthesized 5xx, without a byte on the wire.
    void start_transaction(const envelope& env, std::string_view message, std::uint64_t tag = 0) {
        start(env, message, nullptr, tag);
    }
    // The same with a shared message: a BDAT body then leaves as a body
    // piece (take_output), not copied into the output.
    void start_transaction(const envelope& env, std::shared_ptr<const std::string> message, std::uint64_t tag = 0) {
        assert(message != nullptr);
        const std::string_view view = *message;
        start(env, view, std::move(message), tag);
    }

private:
    void start(const envelope& env, std::string_view message, std::shared_ptr<const std::string> owner,
               std::uint64_t tag) {
        if (!can_start_transaction()) {
            throw std::logic_error("smtp::client::start_transaction while the session cannot take one");
        }
        const bool local_failure = (env.smtputf8 && !_caps.smtputf8) ||
                                   (_caps.size_max != 0 && message.size() > _caps.size_max) || env.rcpt_to.empty();
        if (local_failure && !_txns.empty()) {
            // Keep events in order: fail it after the transaction in flight.
            _deferred_failures.push_back(deferred_failure{env, tag, message.size()});
            return;
        }
        if (env.smtputf8 && !_caps.smtputf8) {
            fail_locally(tag, env.rcpt_to.size(),
                         synthesized(553, "5.6.7", "the message needs SMTPUTF8, which the server does not offer"));
            return;
        }
        if (_caps.size_max != 0 && message.size() > _caps.size_max) {
            fail_locally(
                tag, env.rcpt_to.size(),
                synthesized(552, "5.3.4",
                            "message size exceeds the server's SIZE limit of " + std::to_string(_caps.size_max)));
            return;
        }
        if (env.rcpt_to.empty()) {
            fail_locally(tag, 1, synthesized(554, "5.5.1", "no recipients"));
            return;
        }
        txn t;
        t.tag = tag;
        t.message = message;
        t.owner = std::move(owner);
        t.bdat = uses_chunking();
        t.result.bdat = t.bdat;
        t.result.recipients.assign(env.rcpt_to.size(), reply{});
        _txns.push_back(std::move(t));
        _state = state::transaction;
        if (_needs_rset) {
            _needs_rset = false;
            queue(command::rset, "RSET\r\n");
        }
        std::string mail = "MAIL FROM:<" + env.mail_from + ">";
        if (_caps.size_advertised) {
            mail += " SIZE=" + std::to_string(message.size());
        }
        if (env.eight_bit && _caps.eight_bit_mime) {
            mail += " BODY=8BITMIME";
        }
        if (env.smtputf8) {
            mail += " SMTPUTF8";
        }
        mail += "\r\n";
        queue(command::mail, std::move(mail));
        for (std::size_t i = 0; i < env.rcpt_to.size(); ++i) {
            queue(command::rcpt, "RCPT TO:<" + env.rcpt_to[i] + ">\r\n", i);
        }
        if (_txns.back().bdat) {
            // The size counts the CRLF that ends the last line, which DATA
            // would add too (the renderer's messages end with one already).
            const bool add_crlf = !message.ends_with("\r\n");
            queue(command::bdat, "BDAT " + std::to_string(message.size() + (add_crlf ? 2 : 0)) + " LAST\r\n");
        } else {
            queue(command::data, "DATA\r\n");
        }
        send_queued();
    }

public:
    // Sends STARTTLS. Precondition: state ready and the server offers it.
    void starttls() {
        if (_state != state::ready) {
            throw std::logic_error("smtp::client::starttls outside the ready state");
        }
        _state = state::starttls;
        _starttls_sent = true;
        _out += "STARTTLS\r\n";
    }

    // The engine finished the TLS handshake: EHLO again (RFC 3207 §4.2).
    void tls_established() {
        if (_state != state::tls_handshake) {
            throw std::logic_error("smtp::client::tls_established without a STARTTLS in progress");
        }
        _tls_active = true;
        _caps = capabilities{};
        send_ehlo();
    }

    // Sends RSET to check a reused session; ready follows on success.
    void reset() {
        if (_state != state::ready) {
            throw std::logic_error("smtp::client::reset outside the ready state");
        }
        _state = state::rset;
        _needs_rset = false;
        _out += "RSET\r\n";
    }

    void quit() {
        if (_state == state::closed || _state == state::quit) {
            return;
        }
        _state = state::quit;
        _out += "QUIT\r\n";
    }

private:
    // bdat: "BDAT <n> LAST" and the body after it, answered by one final reply.
    enum class command : std::uint8_t { rset, mail, rcpt, data, body, bdat };

    struct pending {
        command what;
        std::size_t index = 0;
        std::string bytes;
    };

    static reply synthesized(int code, std::string enhanced, std::string text) {
        reply r;
        r.code = code;
        r.enhanced = std::move(enhanced);
        r.text = std::move(text);
        return r;
    }

    const char* waiting_for() const noexcept {
        switch (_state) {
            case state::greeting: return "the greeting";
            case state::ehlo: return "the reply to EHLO";
            case state::helo: return "the reply to HELO";
            case state::transaction:
                if (!_expected.empty()) {
                    switch (_expected.front().what) {
                        case command::mail: return "the reply to MAIL FROM";
                        case command::rcpt: return "the reply to RCPT TO";
                        case command::data: return "the reply to DATA";
                        case command::rset: return "the reply to RSET";
                        case command::body: return "the reply to the end of data";
                        case command::bdat: return "the reply to BDAT";
                    }
                }
                return "a reply";
            case state::starttls: return "the reply to STARTTLS";
            case state::auth: return "the reply to AUTH";
            case state::rset: return "the reply to RSET";
            case state::quit: return "the reply to QUIT";
            default: return "the server";
        }
    }

    void queue(command what, std::string bytes, std::size_t index = 0) {
        _unsent.push_back(pending{what, index, std::move(bytes)});
    }

    // Pipelined: everything queued goes at once; else one command per reply.
    void send_queued() {
        while (!_unsent.empty()) {
            pending p = std::move(_unsent.front());
            _unsent.pop_front();
            _out += p.bytes;
            p.bytes.clear();
            if (p.what == command::bdat) {
                // The BDAT in _unsent is the newest transaction's: a second
                // one starts only once the first has nothing unsent.
                txn& t = _txns.back();
                if (t.owner != nullptr) {
                    _pieces.push_back(body_piece{_out.size(), t.owner});  // a gather write, not a copy
                } else {
                    _out += t.message;
                }
                if (!t.message.ends_with("\r\n")) {
                    _out += "\r\n";
                }
                t.body_sent = true;
            }
            _expected.push_back(std::move(p));
            if (!_caps.pipelining) {
                break;
            }
        }
    }

    void send_ehlo() {
        _state = state::ehlo;
        _out += "EHLO " + _helo_name + "\r\n";
    }

    void push(event_kind kind, reply r) { _events.push_back(event{kind, std::move(r), std::nullopt, false}); }

    void fail_locally(std::uint64_t tag, std::size_t recipients, reply r) {
        transaction_result result;
        result.mail = r;
        result.recipients.assign(std::max<std::size_t>(recipients, 1), r);
        event e{event_kind::transaction_done, std::move(r), std::move(result), false};
        e.tag = tag;
        _events.push_back(std::move(e));
    }

    void protocol_failure(const std::string& why) {
        finish_closed(synthesized(421, "4.5.0", "protocol error: " + why), true);
    }

    // Ends the session. Every transaction in flight ends with `r` as the
    // outcome of each recipient that has no final answer yet.
    void finish_closed(reply r, bool protocol_error) {
        // A 421 that answered MAIL or RCPT came before the BDAT was read: no
        // BDAT transaction is in doubt then but the one whose BDAT it answered.
        bool bdat_answered = _closed_at_reply && !_expected.empty() && _expected.front().what == command::bdat;
        while (!_txns.empty()) {
            txn& t = _txns.front();
            const bool reached = !_closed_at_reply || bdat_answered;
            bdat_answered = false;  // a later transaction's BDAT was not read
            if (t.body_sent && !t.discard && (!t.bdat || (reached && might_take(t)))) {
                t.result.in_doubt = true;
            }
            for (reply& rr : t.result.recipients) {
                if (rr.code == 0 || rr.positive()) {
                    // No answer yet, or accepted but the data never got its
                    // final reply: not delivered as far as we can know.
                    rr = r;
                }
            }
            if (t.result.mail.code == 0) {
                t.result.mail = r;
            }
            event e{event_kind::transaction_done, r, std::move(t.result), false};
            e.tag = t.tag;
            _events.push_back(std::move(e));
            _txns.pop_front();
        }
        flush_deferred_failures();
        _state = state::closed;
        _unsent.clear();
        _expected.clear();
        _out.clear();
        _out_begin = 0;
        _pieces.clear();
        _events.push_back(event{event_kind::closed, std::move(r), std::nullopt, protocol_error});
    }

    void flush_deferred_failures() {
        while (!_deferred_failures.empty()) {
            deferred_failure f = std::move(_deferred_failures.front());
            _deferred_failures.pop_front();
            reply why =
                (f.env.smtputf8 && !_caps.smtputf8)
                    ? synthesized(553, "5.6.7", "the message needs SMTPUTF8, which the server does not offer")
                : f.env.rcpt_to.empty()
                    ? synthesized(554, "5.5.1", "no recipients")
                    : synthesized(552, "5.3.4",
                                  "message size exceeds the server's SIZE limit of " + std::to_string(_caps.size_max));
            fail_locally(f.tag, f.env.rcpt_to.size(), std::move(why));
        }
    }

    void on_reply(reply r) {
        if (r.code == 421 && _state != state::quit) {
            // §3.8: the server is shutting the channel down. It answered the
            // oldest command waiting: nothing after it was taken.
            _closed_at_reply = true;
            finish_closed(std::move(r), false);
            return;
        }
        switch (_state) {
            case state::greeting:
                if (r.code == 220) {
                    send_ehlo();
                } else {
                    finish_closed(std::move(r), false);
                }
                return;
            case state::ehlo:
                if (r.code == 250) {
                    _caps = parse_capabilities(r);
                    if (_authenticate && _tls_active && !_authenticated) {
                        start_auth(std::move(r));
                        return;
                    }
                    _state = state::ready;
                    push(event_kind::ready, std::move(r));
                } else if (r.code >= 500 && !_tls_active) {
                    // §4.1.4: an old server; HELO and no extensions.
                    _state = state::helo;
                    _out += "HELO " + _helo_name + "\r\n";
                } else {
                    finish_closed(std::move(r), false);
                }
                return;
            case state::helo:
                if (r.code == 250) {
                    _caps = capabilities{};
                    _state = state::ready;
                    push(event_kind::ready, std::move(r));
                } else {
                    finish_closed(std::move(r), false);
                }
                return;
            case state::auth: on_auth_reply(std::move(r)); return;
            case state::starttls:
                if (r.code == 220) {
                    _state = state::tls_handshake;
                    push(event_kind::tls_start, std::move(r));
                } else {
                    _starttls_sent = false;
                    _state = state::ready;
                    push(event_kind::tls_refused, std::move(r));
                }
                return;
            case state::rset:
                if (r.positive()) {
                    _state = state::ready;
                    push(event_kind::ready, std::move(r));
                } else {
                    finish_closed(std::move(r), false);
                }
                return;
            case state::quit: finish_closed(std::move(r), false); return;
            case state::transaction: on_transaction_reply(std::move(r)); return;
            case state::ready:
            case state::tls_handshake:
            case state::closed: protocol_failure("unexpected reply: " + r.one_line()); return;
        }
    }

    void on_transaction_reply(reply r) {
        if (_expected.empty() || _txns.empty()) {
            protocol_failure("reply without a command: " + r.one_line());
            return;
        }
        const pending p = std::move(_expected.front());
        _expected.pop_front();
        if (p.what == command::rset) {
            if (!r.positive()) {
                finish_closed(synthesized(421, "4.4.0", "RSET refused: " + r.one_line()), false);
                return;
            }
            send_queued();
            return;
        }
        txn& t = _txns.front();
        switch (p.what) {
            case command::mail:
                t.result.mail = r;
                if (!r.positive()) {
                    for (reply& rr : t.result.recipients) {
                        rr = r;
                    }
                    if (!_caps.pipelining) {
                        end_front(false, std::move(r));
                        return;
                    }
                }
                break;
            case command::rcpt:
                if (t.result.mail.positive()) {
                    t.result.recipients[p.index] = r;
                    if (r.positive()) {
                        ++t.accepted;
                    }
                }
                if (!_caps.pipelining && _unsent.size() == 1 && t.accepted == 0) {
                    // Last RCPT answered, none accepted: no DATA (§3.3).
                    _unsent.clear();
                    end_front(false, std::move(r));
                    return;
                }
                break;
            case command::data:
                if (r.code == 354) {
                    if (t.accepted > 0 && t.result.mail.positive()) {
                        append_dot_stuffed(_out, t.message);
                    } else {
                        // RFC 2920 §3.1: every RCPT failed yet DATA went on; end it empty.
                        _out += ".\r\n";
                        t.discard = true;
                    }
                    t.body_sent = true;
                    _expected.push_back(pending{command::body, 0, {}});
                    return;
                }
                for (reply& rr : t.result.recipients) {
                    if (rr.positive()) {
                        rr = r;
                    }
                }
                end_front(false, std::move(r));
                return;
            case command::bdat:
                if (t.discard || t.accepted == 0 || !t.result.mail.positive()) {
                    // Every RCPT (or MAIL) was refused and the BDAT went
                    // pipelined: its error changes nobody's outcome.
                    t.discard = true;
                    end_front(false, std::move(r));
                    return;
                }
                [[fallthrough]];
            case command::body:
                if (t.discard) {
                    end_front(false, std::move(r));
                    return;
                }
                for (reply& rr : t.result.recipients) {
                    if (rr.positive()) {
                        rr = r;
                    }
                }
                t.result.data_sent = true;
                end_front(true, std::move(r));
                return;
            case command::rset: break;
        }
        send_queued();
    }

    // The oldest transaction is over: report it. A transaction that opened
    // MAIL but sent no data leaves state on the server: RSET comes next.
    void end_front(bool completed, reply last) {
        txn t = std::move(_txns.front());
        _txns.pop_front();
        if (t.result.mail.positive() && (!t.body_sent || (t.bdat && !last.positive()))) {
            // No data sent, or a refused BDAT (the server may still hold the
            // sender: RFC 3030 does not say the transaction ends).
            _needs_rset = true;
        }
        if (completed) {
            ++_transactions;
        }
        if (_txns.empty()) {
            _state = state::ready;
            _expected.clear();
            _unsent.clear();
        }
        event e{event_kind::transaction_done, std::move(last), std::move(t.result), false};
        e.tag = t.tag;
        _events.push_back(std::move(e));
        if (_txns.empty()) {
            flush_deferred_failures();
        }
    }

    // RFC 4954 §4: PLAIN with an initial response, else LOGIN's two prompts.
    void start_auth(reply ehlo) {
        const auto offered = [&](std::string_view m) {
            for (const std::string& x : _caps.auth_mechanisms) {
                if (detail::iequals(x, m)) {
                    return true;
                }
            }
            return false;
        };
        _state = state::auth;
        _ehlo_reply = std::move(ehlo);
        if (offered("PLAIN")) {
            std::string token;
            token += '\0';
            token += _user;
            token += '\0';
            token += _password;
            _out += "AUTH PLAIN ";
            mail::append_base64(_out, token);
            _out += "\r\n";
            _auth_step = 2;
        } else if (offered("LOGIN")) {
            _out += "AUTH LOGIN\r\n";
            _auth_step = 0;
        } else {
            std::string list;
            for (const std::string& x : _caps.auth_mechanisms) {
                list += list.empty() ? x : " " + x;
            }
            finish_closed(synthesized(530, "5.7.4",
                                      "the server offers no AUTH mechanism mxpress supports (PLAIN, LOGIN); offered: " +
                                          (list.empty() ? std::string("none") : list)),
                          false);
        }
    }

    void on_auth_reply(reply r) {
        if (r.code == 334 && _auth_step < 2) {
            // LOGIN: the username, then the password (prompts are not checked:
            // servers word them differently).
            mail::append_base64(_out, _auth_step == 0 ? _user : _password);
            _out += "\r\n";
            ++_auth_step;
            return;
        }
        if (r.code == 235) {
            _authenticated = true;
            _state = state::ready;
            push(event_kind::ready, std::move(_ehlo_reply));
            return;
        }
        if (r.code == 334) {
            // A challenge after the credentials went: cancel (§4).
            _out += "*\r\n";
            return;
        }
        finish_closed(std::move(r), false);
    }

    struct txn {
        std::uint64_t tag = 0;
        transaction_result result;
        std::string_view message;
        std::shared_ptr<const std::string> owner;  // holds `message` when it was passed shared
        std::size_t accepted = 0;
        bool body_sent = false;  // the body (or a lone ".", or BDAT and the body) is in the output
        bool discard = false;    // a lone "." ended data nobody accepted (or a BDAT nobody could take)
        bool bdat = false;       // BDAT instead of DATA (CHUNKING)
    };

    // A BDAT transaction whose session ended before its final reply: the
    // server may have the message unless MAIL or every RCPT was refused.
    static bool might_take(const txn& t) {
        if (t.result.mail.code != 0 && !t.result.mail.positive()) {
            return false;
        }
        for (const reply& rr : t.result.recipients) {
            if (rr.code == 0 || rr.positive()) {
                return true;
            }
        }
        return false;
    }

    struct deferred_failure {
        envelope env;
        std::uint64_t tag;
        std::size_t size;
    };

    std::string _helo_name;
    timeouts _timeouts;
    state _state = state::greeting;
    reply_parser _parser;
    capabilities _caps;
    std::string _out;
    std::size_t _out_begin = 0;
    std::vector<body_piece> _pieces;  // bodies that go between output bytes (take_output)
    std::deque<event> _events;
    std::deque<pending> _unsent;
    std::deque<pending> _expected;
    std::deque<txn> _txns;  // in flight, oldest first; at most two
    std::deque<deferred_failure> _deferred_failures;
    std::uint64_t _transactions = 0;
    bool _needs_rset = false;
    bool _chunking_allowed = true;
    bool _closed_at_reply = false;  // the session ends on a 421 reply (not a drop or timeout)
    bool _tls_active = false;
    bool _starttls_sent = false;
    bool _authenticate = false;
    bool _authenticated = false;
    int _auth_step = 0;  // LOGIN: 0 username next, 1 password next, 2 sent
    std::string _user;
    std::string _password;
    reply _ehlo_reply;  // reported with ready once AUTH succeeds
};

}  // namespace mxpress::smtp
