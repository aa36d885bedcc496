"""Scripted peers, in this process, for the tests that need a peer to
misbehave on cue or to report what it saw: a DNS server (SERVFAIL, REFUSED,
silence, slow answers; a log of every query), a DNS server that sheds load
under a burst as real resolvers do, and an SMTP server (STARTTLS or
implicit TLS, a chosen range of TLS versions; the SNI name and version of
every handshake, and each message in peers.assert_exactly_once's form).

Both run in threads on loopback and stop when their `with` block ends.
"""
import email.parser
import email.policy
import heapq
import random
import select
import socket
import socketserver
import ssl
import struct
import threading
import time
import warnings

TYPES = {1: "A", 15: "MX", 28: "AAAA"}
RCODES = {"servfail": 2, "nxdomain": 3, "refused": 5}


def _name(wire, off):
    """Reads an uncompressed name (queries carry no pointers)."""
    labels = []
    while wire[off]:
        n = wire[off]
        labels.append(wire[off + 1:off + 1 + n].decode("ascii"))
        off += 1 + n
    return ".".join(labels).lower(), off + 1


def _encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


class ScriptedDns:
    """An authoritative-looking DNS server over UDP.

    zone: {name: {"MX": [(pref, host)], "A": ["127.0.0.2"], "AAAA": ["::1"]}}
    (records in the order given; a name not in the zone is NXDOMAIN).
    script: {(name, type): [action, ...]}: one action per query of that name
    and type, in turn, then normal answers. Actions: "servfail", "refused",
    "drop" (no answer: the client times out), ("delay", seconds).
    delays: {(name, type): seconds} for every answer.
    log: (monotonic time, name, type) per query received."""

    def __init__(self, zone, host="127.0.0.1", port=0, script=None, delays=None):
        self.zone = {k.lower(): v for k, v in zone.items()}
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.delays = delays or {}
        self.log = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()

    def queries(self, name, qtype):
        with self.lock:
            return [t for t, n, q in self.log if n == name and q == qtype]

    def _serve(self):
        self.sock.settimeout(0.05)  # to see _stop: close() would not wake recvfrom
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self._handle(data, peer)
            except (IndexError, UnicodeDecodeError, struct.error):
                continue  # not a query we understand: no answer

    def _handle(self, data, peer):
        qid, flags, qdcount = struct.unpack("!HHH", data[:6])
        if qdcount != 1:
            return
        name, off = _name(data, 12)
        qtype, _ = struct.unpack("!HH", data[off:off + 4])
        question = data[12:off + 4]
        tname = TYPES.get(qtype, str(qtype))
        with self.lock:
            self.log.append((time.monotonic(), name, tname))
            actions = self.script.get((name, tname))
            action = actions.pop(0) if actions else None
        delay = self.delays.get((name, tname), 0)
        if action == "drop":
            return
        if isinstance(action, tuple) and action[0] == "delay":
            delay = action[1]
        rcode = RCODES.get(action, 0) if isinstance(action, str) else 0
        answers = []
        if rcode == 0:
            records = self.zone.get(name)
            if records is None:
                rcode = RCODES["nxdomain"]
            else:
                for value in records.get(tname, []):
                    if tname == "MX":
                        rdata = struct.pack("!H", value[0]) + _encode_name(value[1])
                    elif tname == "A":
                        rdata = socket.inet_pton(socket.AF_INET, value)
                    else:
                        rdata = socket.inet_pton(socket.AF_INET6, value)
                    answers.append(struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata)
        reply = struct.pack("!HHHHHH", qid, 0x8400 | (flags & 0x0100) | 0x0080 | rcode, 1, len(answers), 0, 0)
        reply += question + b"".join(answers)

        def send():
            try:
                self.sock.sendto(reply, peer)
            except OSError:
                pass

        if delay:
            threading.Timer(delay, send).start()
        else:
            send()


def _reply(data, zone):
    """The answer to one query from `zone` (ScriptedDns's form): (id, name,
    type name, reply bytes), or None for a datagram that is not one question."""
    qid, flags, qdcount = struct.unpack("!HHH", data[:6])
    if qdcount != 1:
        return None
    name, off = _name(data, 12)
    qtype, _ = struct.unpack("!HH", data[off:off + 4])
    tname = TYPES.get(qtype, str(qtype))
    records = zone.get(name)
    rcode = 0 if records is not None else RCODES["nxdomain"]
    answers = []
    for value in (records or {}).get(tname, []):
        if tname == "MX":
            rdata = struct.pack("!H", value[0]) + _encode_name(value[1])
        elif tname == "A":
            rdata = socket.inet_pton(socket.AF_INET, value)
        else:
            rdata = socket.inet_pton(socket.AF_INET6, value)
        answers.append(struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata)
    reply = struct.pack("!HHHHHH", qid, 0x8400 | (flags & 0x0100) | 0x0080 | rcode, 1, len(answers), 0, 0)
    return qid, name, tname, reply + data[12:off + 4] + b"".join(answers)


class SheddingDns:
    """A resolver that sheds load under a burst of UDP queries as real ones
    do (dnsmasq answered 257 of 500 MX queries sent at once: its receive
    buffer holds a few hundred datagrams, the rest are dropped).

    It takes `delay` seconds to answer each query (a recursive resolver's
    work), holds at most `capacity` queries unanswered, and drops every query
    that arrives while it holds that many. With `loss`, it also drops the
    first transmission of that fraction of the questions, picked by
    random.Random over (seed, name, type): the same questions on every run,
    whatever the order they come in. A retransmission (the same id and
    question again, as c-ares asks after its timeout) is answered as usual
    unless the server is full.

    zone: as ScriptedDns. log: one dict per datagram: t (monotonic), name,
    type, retransmission (bool), dropped (None, "capacity" or "loss")."""

    def __init__(self, zone, capacity, delay, loss=0.0, seed=1, host="127.0.0.1"):
        self.zone = {k.lower(): v for k, v in zone.items()}
        self.capacity, self.delay, self.loss, self.seed = capacity, delay, loss, seed
        self.log = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # A large buffer: the kernel must not drop what the model keeps.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()

    def lost_by_design(self, name, qtype):
        return self.loss > 0 and random.Random(f"{self.seed}:{name}:{qtype}").random() < self.loss

    def _serve(self):
        pending = []  # heap of (due, seq, reply, peer): held, not yet answered
        seen = set()  # (id, name, type) of every question received
        seq = 0
        while not self._stop:
            wait = 0.01 if not pending else min(0.01, max(0.0, pending[0][0] - time.monotonic()))
            select.select([self.sock], [], [], wait)
            for _ in range(100_000):  # everything queued now, bounded
                try:
                    data, peer = self.sock.recvfrom(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    return
                try:
                    parsed = _reply(data, self.zone)
                except (IndexError, UnicodeDecodeError, struct.error):
                    continue
                if parsed is None:
                    continue
                qid, name, tname, reply = parsed
                now = time.monotonic()
                retransmission = (qid, name, tname) in seen
                seen.add((qid, name, tname))
                dropped = None
                if len(pending) >= self.capacity:
                    dropped = "capacity"
                elif not retransmission and self.lost_by_design(name, tname):
                    dropped = "loss"
                self.log.append({"t": now, "name": name, "type": tname, "retransmission": retransmission,
                                 "dropped": dropped})
                if dropped is None:
                    seq += 1
                    heapq.heappush(pending, (now + self.delay, seq, reply, peer))
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                _, _, reply, peer = heapq.heappop(pending)
                try:
                    self.sock.sendto(reply, peer)
                except OSError:
                    pass


class ScriptedSmtp:
    """An SMTP server on loopback: EHLO (STARTTLS offered when a certificate
    is given and the session is plaintext), MAIL, RCPT, DATA, RSET, NOOP,
    QUIT; one message per transaction; no PIPELINING.

    implicit: TLS from the first byte (port 465 style).
    tls_versions: (minimum, maximum) as ssl.TLSVersion; the security level
    is lowered so that TLS 1.0 and 1.1 can be offered at all.
    handshakes: one dict per TLS handshake: {"sni": name or None,
    "version": "TLSv1.3" or None, "error": text or None}.
    arrivals: one dict per message, as peers.read_record gives them, with
    "t": its arrival (time.monotonic()).
    rcpt_reply: called with each RCPT address (under the lock); a reply line
    ("421 4.7.28 ...") refuses it, None accepts it. `rcpt_refusals` keeps
    (time, address, reply) of each refusal."""

    def __init__(self, host, port, cert=None, key=None, implicit=False, tls_versions=None, family=socket.AF_INET,
                 rcpt_reply=None):
        self.rcpt_reply = rcpt_reply
        self.rcpt_refusals = []
        self.handshakes = []
        self.arrivals = []
        self.sessions = 0
        self.transcripts = []  # per session: "C: line" and "S: reply" in order
        self.lock = threading.Lock()
        self.ctx = None
        if cert:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(cert, key)
            if tls_versions:
                self.ctx.set_ciphers("ALL:@SECLEVEL=0")
                with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: that is the point
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.ctx.minimum_version, self.ctx.maximum_version = tls_versions
            self.ctx.sni_callback = self._on_sni
        self.implicit = implicit
        peer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                peer._session(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            # mxpress opens up to connections_max at once: socketserver's
            # backlog of 5 would drop the rest of the handshakes (and leave
            # the client waiting for a greeting until its timeout).
            request_queue_size = 128
            address_family = family

        self.server = Server((host.strip("[]"), port), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._sni = threading.local()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _on_sni(self, sslobj, name, ctx):
        self._sni.name = name

    def _handshake(self, sock):
        self._sni.name = None
        try:
            tls = self.ctx.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with self.lock:
                self.handshakes.append({"sni": self._sni.name, "version": None, "error": str(e)})
            return None
        with self.lock:
            self.handshakes.append({"sni": self._sni.name, "version": tls.version(), "error": None})
        return tls

    def _session(self, sock):
        transcript = []
        with self.lock:
            self.sessions += 1
            self.transcripts.append(transcript)
        sock.settimeout(30)
        if self.implicit:
            sock = self._handshake(sock)
            if sock is None:
                return
        tls = self.implicit
        f = sock.makefile("rb")

        def say(text):
            transcript.append("S: " + text)
            sock.sendall(text.encode("ascii"))

        say("220 scripted.test ESMTP\r\n")
        rcpts = []
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line.decode("utf-8", "replace").strip()
                transcript.append("C: " + cmd)
                verb = cmd.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    offer = self.ctx is not None and not tls
                    say("250-scripted.test\r\n250-8BITMIME\r\n" + ("250-STARTTLS\r\n" if offer else "") +
                        "250 SMTPUTF8\r\n")
                elif verb == "STARTTLS" and self.ctx is not None and not tls:
                    say("220 2.0.0 go ahead\r\n")
                    f.close()
                    secured = self._handshake(sock)
                    if secured is None:
                        return  # `sock` is closed below
                    sock, tls = secured, True
                    f = sock.makefile("rb")
                    rcpts = []
                elif verb == "MAIL":
                    rcpts = []
                    say("250 2.1.0 ok\r\n")
                elif verb == "RCPT":
                    addr = cmd.split(":", 1)[1].strip().split(">")[0].strip("<")
                    with self.lock:
                        refusal = self.rcpt_reply(addr) if self.rcpt_reply else None
                        if refusal:
                            self.rcpt_refusals.append((time.monotonic(), addr, refusal))
                    if refusal:
                        say(refusal + "\r\n")
                    else:
                        rcpts.append(addr)
                        say("250 2.1.5 ok\r\n")
                elif verb == "DATA" and not rcpts:
                    say("554 5.5.1 no valid recipients\r\n")
                elif verb == "DATA":
                    say("354 go ahead\r\n")
                    lines = []
                    while True:
                        body_line = f.readline()
                        if not body_line or body_line == b".\r\n":
                            break
                        lines.append(body_line[1:] if body_line.startswith(b".") else body_line)
                    text = b"".join(lines).decode("utf-8", "replace")
                    headers = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text)
                    with self.lock:
                        self.arrivals.append({"rcpt": rcpts, "to": " ".join((headers["To"] or "").split()),
                                              "code": (headers["X-Row-Code"] or "").strip(), "tls": tls,
                                              "t": time.monotonic()})
                    rcpts = []
                    say("250 2.0.0 queued\r\n")
                elif verb in ("RSET", "NOOP"):
                    rcpts = []
                    say("250 2.0.0 ok\r\n")
                elif verb == "QUIT":
                    say("221 2.0.0 bye\r\n")
                    return
                else:
                    say("502 5.5.2 not implemented\r\n")
        except (OSError, ssl.SSLError):
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass
