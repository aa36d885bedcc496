// tests/sim/sim_server.hpp — a simulated SMTP server session for the
// delivery core's simulator: bytes in, reply bytes out, faults drawn from a
// seeded generator. No sockets, no clock of its own.
//
// Promises:
// - It speaks enough ESMTP for the core's client: greeting, EHLO/HELO,
//   PIPELINING (every complete line in a chunk is answered in order),
//   STARTTLS, MAIL, RCPT, DATA with a dot-terminated body, RSET, NOOP, QUIT,
//   and CHUNKING when its profile offers it (BDAT <n> [LAST]: n octets,
//   read even when refused; the dot and drop faults apply to BDAT LAST and
//   to the chunk as they do to the final "." and the body).
// - Every fault is decided by the server's profile and the world's seeded
//   generator, so a seed replays exactly.
// - It records what a receiver would: each message it accepted (250 to the
//   final dot), with its recipient and whether the session was encrypted.
#pragma once

#include <cstdint>
#include <random>
#include <deque>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace mxpress::sim {

// A host that limits its accepted messages per minute, as the big
// providers do: beyond the limit, RCPT gets their throttling reply (which
// the built-in rule gmail-rate matches). The simulator owns it and its clock.
struct host_throttle {
    std::uint32_t per_minute = 0;
    std::deque<std::int64_t> accepted_ms;  // the last minute's accepted RCPTs
    std::uint64_t refused = 0;
    std::uint64_t accepted = 0;
    std::vector<std::int64_t> refused_ms;  // when each refusal was sent
    std::function<std::int64_t()> now_ms;
};

// A host that refuses one RCPT, the first at or after `at_ms`, with `text`
// (the --recovery scenario: one reply that a rule fires on, then good ones).
// Shared by a domain's hosts; the simulator owns it and its clock.
struct one_refusal {
    std::int64_t at_ms = 0;
    std::string text;                 // the reply line, CRLF included
    std::int64_t refused_at_ms = -1;  // -1: not yet
    std::function<std::int64_t()> now_ms;
};

// How one simulated MX host behaves. Probabilities are per command.
struct server_profile {
    bool offers_starttls = true;
    bool offers_chunking = false;       // CHUNKING in the EHLO reply: BDAT is taken
    bool starttls_refused = false;      // 454 to STARTTLS
    double tls_handshake_fail = 0;      // the handshake fails
    bool tls_handshake_stalls = false;  // the handshake never completes
    bool connect_blackhole = false;     // connect never completes (until the core gives up)
    std::int64_t refuse_until_ms = 0;   // connections refused before this simulated time
    double greeting_421 = 0;            // "421 too busy" at the greeting
    double mail_4xx = 0;
    double rcpt_4xx = 0;
    double rcpt_5xx = 0;
    double dot_4xx = 0;
    double dot_5xx = 0;
    double mid_421 = 0;                 // 421 to MAIL, then the connection ends
    double drop_in_body = 0;            // the connection drops while the body arrives
    double drop_after_dot = 0;          // the message is taken, the connection drops before the reply
    double stall = 0;                   // stops answering for good (per command)
    std::uint32_t max_sessions = 0;     // 0: no limit; over it: 421 at the greeting
    host_throttle* throttle = nullptr;  // null: no per-minute limit
    one_refusal* refusal = nullptr;     // null: none scheduled
};

struct accepted_message {
    std::string rcpt;
    bool tls = false;
    bool reply_sent = false;  // false: taken, then the connection dropped (a duplicate may follow)
    bool bdat = false;        // it came by BDAT, not DATA
};

class server_session {
public:
    enum class after { keep_open, close };

    server_session(const server_profile& p, std::mt19937_64& rng, bool tls_from_start)
        : _p(p), _rng(rng), _tls(tls_from_start) {}

    // The greeting; close when the server turns the client away.
    after greet(std::string& out, bool over_limit) {
        if (over_limit || chance(_p.greeting_421)) {
            out += "421 4.7.0 sim: too many connections, try later\r\n";
            return after::close;
        }
        out += "220 sim ESMTP\r\n";
        return after::keep_open;
    }

    // Bytes from the client (plaintext: TLS is simulated as identity).
    // Appends replies to `out`; close when the server ends the connection.
    after receive(std::string_view bytes, std::string& out, std::vector<accepted_message>& accepted) {
        if (_stalled) {
            return after::keep_open;
        }
        _in.append(bytes);
        after result = after::keep_open;
        std::size_t pos = 0;
        while (result == after::keep_open && !_stalled) {
            if (_in_chunk) {
                const std::size_t n = std::min<std::size_t>(_chunk_left, _in.size() - pos);
                if (!_chunk_refused) {
                    _body.append(_in, pos, n);
                }
                pos += n;
                _chunk_left -= n;
                if (_chunk_left > 0) {
                    if (chance(_p.drop_in_body)) {
                        result = after::close;
                    }
                    break;
                }
                _in_chunk = false;
                result = end_of_chunk(out, accepted);
                continue;
            }
            if (_in_body) {
                _body.append(_in, pos);
                pos = _in.size();
                const std::size_t from = _body_scanned >= 4 ? _body_scanned - 4 : 0;
                const std::size_t end = _body.find("\r\n.\r\n", from);
                if (end == std::string::npos) {
                    _body_scanned = _body.size();
                    if (chance(_p.drop_in_body)) {
                        result = after::close;
                    }
                    break;
                }
                _in = _body.substr(end + 5);  // pipelined commands behind the dot
                pos = 0;
                _body.resize(end + 2);
                _in_body = false;
                result = end_of_data(out, accepted);
                continue;
            }
            const std::size_t eol = _in.find("\r\n", pos);
            if (eol == std::string::npos) {
                break;
            }
            const std::string line = _in.substr(pos, eol - pos);
            pos = eol + 2;
            if (chance(_p.stall)) {
                _stalled = true;
                break;
            }
            result = command(line, out);
            if (_in_body) {
                _body.clear();
                _body_scanned = 0;
            }
        }
        if (_in_body) {
            _in.clear();  // all of it went into the body
        } else {
            _in.erase(0, pos);
        }
        return result;
    }

    bool tls() const noexcept { return _tls; }
    // STARTTLS was answered 220: the next bytes are the handshake.
    bool tls_pending() const noexcept { return _tls_pending; }
    void tls_started() noexcept {
        _tls_pending = false;
        _tls = true;
        _ehlo_seen = false;  // RFC 3207: the session starts over
    }
    // MAIL FROM arrived on a session without TLS.
    std::uint64_t plaintext_mail() const noexcept { return _plaintext_mail; }

private:
    bool chance(double p) {
        if (p <= 0) {
            return false;
        }
        return std::uniform_real_distribution<double>(0, 1)(_rng) < p;
    }

    static bool starts_with_ci(std::string_view s, std::string_view prefix) {
        if (s.size() < prefix.size()) {
            return false;
        }
        for (std::size_t i = 0; i < prefix.size(); ++i) {
            char a = s[i];
            if (a >= 'a' && a <= 'z') {
                a = static_cast<char>(a - 'a' + 'A');
            }
            if (a != prefix[i]) {
                return false;
            }
        }
        return true;
    }

    after command(const std::string& line, std::string& out) {
        if (starts_with_ci(line, "EHLO")) {
            _ehlo_seen = true;
            out += "250-sim\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n";
            if (_p.offers_starttls && !_tls) {
                out += "250-STARTTLS\r\n";
            }
            if (_p.offers_chunking) {
                out += "250-CHUNKING\r\n";
            }
            out += "250 SIZE 10000000\r\n";
            return after::keep_open;
        }
        if (starts_with_ci(line, "HELO")) {
            _ehlo_seen = true;
            out += "250 sim\r\n";
            return after::keep_open;
        }
        if (starts_with_ci(line, "STARTTLS")) {
            if (_tls || !_p.offers_starttls) {
                out += "503 5.5.1 sim: no STARTTLS here\r\n";
            } else if (_p.starttls_refused) {
                out += "454 4.7.0 sim: TLS not available\r\n";
            } else {
                out += "220 2.0.0 sim: go ahead\r\n";
                _tls_pending = true;
            }
            return after::keep_open;
        }
        if (starts_with_ci(line, "MAIL FROM:")) {
            _rcpt.clear();
            _chunk_started = false;
            if (!_tls) {
                ++_plaintext_mail;
            }
            if (chance(_p.mid_421)) {
                out += "421 4.3.2 sim: shutting down\r\n";
                return after::close;
            }
            if (chance(_p.mail_4xx)) {
                out += "451 4.3.0 sim: try MAIL later\r\n";
                _mail_ok = false;
                return after::keep_open;
            }
            _mail_ok = true;
            out += "250 2.1.0 ok\r\n";
            return after::keep_open;
        }
        if (starts_with_ci(line, "RCPT TO:<")) {
            if (!_mail_ok) {
                out += "503 5.5.1 sim: MAIL first\r\n";
                return after::keep_open;
            }
            if (chance(_p.rcpt_5xx)) {
                out += "550 5.1.1 sim: no such user\r\n";
                return after::keep_open;
            }
            if (chance(_p.rcpt_4xx)) {
                out += "450 4.2.1 sim: mailbox busy\r\n";
                return after::keep_open;
            }
            if (one_refusal* o = _p.refusal; o != nullptr && o->refused_at_ms < 0 && o->now_ms() >= o->at_ms) {
                o->refused_at_ms = o->now_ms();
                out += o->text;
                return after::keep_open;
            }
            if (host_throttle* t = _p.throttle; t != nullptr) {
                const std::int64_t now = t->now_ms();
                while (!t->accepted_ms.empty() && now - t->accepted_ms.front() >= 60'000) {
                    t->accepted_ms.pop_front();
                }
                if (t->accepted_ms.size() >= t->per_minute) {
                    ++t->refused;
                    t->refused_ms.push_back(now);
                    out += "421 4.7.28 sim: our system has detected an unusual rate of unsolicited mail\r\n";
                    return after::keep_open;
                }
                t->accepted_ms.push_back(now);
                ++t->accepted;
            }
            const std::size_t end = line.find('>');
            _rcpt = line.substr(9, end == std::string::npos ? std::string::npos : end - 9);
            out += "250 2.1.5 ok\r\n";
            return after::keep_open;
        }
        if (starts_with_ci(line, "BDAT ") && _p.offers_chunking) {
            // RFC 3030 §2: the octets follow whatever the reply will be.
            const std::size_t sp = line.find(' ', 5);
            _chunk_left = std::stoull(line.substr(5, sp == std::string::npos ? std::string::npos : sp - 5));
            _chunk_last = sp != std::string::npos && starts_with_ci(line.substr(sp + 1), "LAST");
            _chunk_refused = !_mail_ok || _rcpt.empty();
            _in_chunk = true;
            if (!_chunk_started) {
                _body.clear();
                _chunk_started = true;
            }
            return after::keep_open;
        }
        if (starts_with_ci(line, "DATA")) {
            if (!_mail_ok || _rcpt.empty()) {
                out += "554 5.5.1 sim: no valid recipients\r\n";
                return after::keep_open;
            }
            _in_body = true;
            out += "354 go ahead\r\n";
            return after::keep_open;
        }
        if (starts_with_ci(line, "RSET")) {
            _mail_ok = false;
            _rcpt.clear();
            _chunk_started = false;
            out += "250 2.0.0 ok\r\n";
            return after::keep_open;
        }
        if (starts_with_ci(line, "NOOP")) {
            out += "250 2.0.0 ok\r\n";
            return after::keep_open;
        }
        if (starts_with_ci(line, "QUIT")) {
            out += "221 2.0.0 bye\r\n";
            return after::close;
        }
        out += "500 5.5.2 sim: unknown command\r\n";
        return after::keep_open;
    }

    // A whole BDAT chunk arrived. A refused one leaves MAIL as it was (the
    // client must RSET); the LAST one ends the transaction as the final "."
    // does, with the same faults.
    after end_of_chunk(std::string& out, std::vector<accepted_message>& accepted) {
        if (_chunk_refused) {
            out += "554 5.5.1 sim: no valid recipients\r\n";
            _chunk_started = false;
            return after::keep_open;
        }
        if (!_chunk_last) {
            out += "250 2.0.0 sim: chunk ok\r\n";
            return after::keep_open;
        }
        _chunk_started = false;
        const std::size_t before = accepted.size();
        const after a = end_of_data(out, accepted);
        if (accepted.size() > before) {
            accepted.back().bdat = true;
        }
        return a;
    }

    after end_of_data(std::string& out, std::vector<accepted_message>& accepted) {
        const std::string rcpt = _rcpt;
        _mail_ok = false;
        _rcpt.clear();
        if (chance(_p.dot_5xx)) {
            out += "554 5.6.0 sim: message refused\r\n";
            return after::keep_open;
        }
        if (chance(_p.dot_4xx)) {
            out += "451 4.3.0 sim: try the message later\r\n";
            return after::keep_open;
        }
        // The message must carry its own recipient (no mixed-up slots).
        const bool own = _body.find("To: " + rcpt + "\r\n") != std::string::npos;
        if (chance(_p.drop_after_dot)) {
            accepted.push_back(accepted_message{own ? rcpt : "<wrong message for " + rcpt + ">", _tls, false});
            return after::close;
        }
        accepted.push_back(accepted_message{own ? rcpt : "<wrong message for " + rcpt + ">", _tls, true});
        out += "250 2.0.0 ok: queued\r\n";
        return after::keep_open;
    }

    const server_profile& _p;
    std::mt19937_64& _rng;
    bool _tls = false;
    bool _tls_pending = false;
    bool _ehlo_seen = false;
    bool _mail_ok = false;
    bool _in_body = false;
    bool _in_chunk = false;       // reading a BDAT chunk's octets
    bool _chunk_last = false;     // it is the LAST one
    bool _chunk_refused = false;  // its reply will be an error: the octets are dropped
    bool _chunk_started = false;  // a chunk of this transaction came: _body holds the chunks so far
    std::uint64_t _chunk_left = 0;
    bool _stalled = false;
    std::uint64_t _plaintext_mail = 0;
    std::string _rcpt;
    std::string _in;
    std::string _body;
    std::size_t _body_scanned = 0;
};

}  // namespace mxpress::sim
