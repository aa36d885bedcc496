// mxpress/engine/commands.hpp — what the delivery core asks of its driver.
//
// The core is sans-I/O: it consumes events (a recipient arrived, a DNS
// answer, connected, bytes received, a send done, the clock moved) and
// emits commands. The io_uring shard turns them into lookups and SQEs; the
// simulator turns them into simulated servers' work.
//
// Promises:
// - Commands come out in the order the core made them; a driver executes
//   them in that order and may feed events back at once (the core queues,
//   it never re-enters itself through a command).
// - `send` hands the bytes over (moved): the driver owns them until it
//   reports send_done() and gives the buffer back for reuse. With
//   shard_options::gather_sends, message bodies may come as `pieces`
//   beside the bytes, each to be sent before data[at] and held (it is
//   shared) until the send is done; send_done's count includes them.
// - After `close` the core has forgotten the connection: events for it are
//   ignored, so a driver may deliver late completions without care.
// - Outcomes go to an outcome_sink at once (a journal line, a simulator's
//   record); a sink must not call back into the core.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <sys/socket.h>

#include "mxpress/engine/connection.hpp"
#include "mxpress/engine/journal.hpp"
#include "mxpress/engine/recipient.hpp"
#include "mxpress/engine/throttle.hpp"
#include "mxpress/smtp/client.hpp"
#include "mxpress/smtp/reply.hpp"

namespace mxpress::engine {

enum class command_kind : std::uint8_t {
    resolve_mx,    // name: a domain; answer with dns_answer(name, …)
    resolve_host,  // name: a domain, host: its route's host; answer with dns_answer(name, …)
    connect,       // conn, addr: open a TCP connection; answer with connected(conn, res)
    send,          // conn, data (and pieces): send all of it; answer with send_done(conn, res, data)
    close,         // conn: end the connection (shutdown, close); no answer
};

struct command {
    command_kind kind{};
    conn_id conn = 0;
    std::string name;
    std::string host;
    sockaddr_storage addr{};
    socklen_t addr_len = 0;
    std::string data;
    std::vector<smtp::body_piece> pieces;  // send: bodies between data's bytes, ascending `at`
};

// A send carries at most this many body pieces; more (only a server that
// answers before it reads lets a client's output pile up) go copied into
// the bytes. Normally a send has one or two: a client has at most two
// transactions in flight.
inline constexpr std::size_t send_pieces_max = 4;

// Where final outcomes go.
class outcome_sink {
public:
    virtual ~outcome_sink() = default;
    // `mx`: the host that answered (empty when none did); `tls`: how the last
    // attempt travelled ("TLSv1.3", "none").
    virtual void final_outcome(const recipient& r, outcome_status st, const smtp::reply& rep, std::string_view mx,
                               std::string_view tls) = 0;
    // A recipient that leaves unfinished because the run stops (drain()):
    // not final, due again at `next_attempt`. `in_doubt`: its transaction was
    // torn down mid-way (abort_connections()), so the server may have taken
    // it. r.last_reply, r.last_mx and r.last_tls say what happened last.
    virtual void unfinished_outcome(const recipient& r, clock::time_point next_attempt, bool in_doubt) = 0;
    // A rule fired (core_rules.hpp): the journal's event line.
    virtual void rule_fired(const rule_firing& /*f*/) {}
};

}  // namespace mxpress::engine
