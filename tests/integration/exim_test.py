#!/usr/bin/python3
"""Exim as a second real TLS peer (Debian 12's exim4-daemon-light, whose TLS
is GnuTLS where Postfix's and mxsink's is OpenSSL), unpacked by
scripts/setup and run with a private config (peers.exim):

- a batch over STARTTLS: every recipient journaled delivered, and what Exim
  stored is, byte for byte, what `mxpress render` gives for that row (the
  Envelope-to: and Received: that Exim prepends removed); Exim's own log
  says TLS 1.3 for every message;
- Exim's smtp_accept_max_per_host = 2 (421 beyond it) against mxpress's 10
  connections: every message arrives once, and Exim's log counts a handful
  of refused connections, not a storm; with the built-in rules on, its 421
  ("Too many concurrent SMTP connections from this IP address; please try
  again later.") fires no rule: a concurrency limit is not a rate limit
  (server-busy matches "try again later" but is a scale rule);
- Exim's smtp_accept_max_per_connection = 5 (421 to the next MAIL, then
  the connection closes) against mxpress's 1,000: every message arrives
  once, no session of Exim's log carried more than 5;
- TLS session resumption with a GnuTLS server (tls_resumption_hosts = *):
  mxpress resumes, and Exim's log marks the same sessions resumed.

  exim_test.py MXPRESS ROOT [Class.test_name ...]
"""
import collections
import json
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import (SHORT_CONFIG, Peers, assert_exactly_once, exim, exim_missing, free_port, journal,  # noqa: E402
                   run_tests, write_coded_recipients)

MXPRESS = None
ROOT = None

# Date and Message-ID fixed, so that `mxpress render` gives the bytes `send`
# sends; lines a dot-stuffing (DATA) or chunking (BDAT) mistake would change.
TEMPLATE = ("Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <{{code}}@sender.test>\n"
            "From: News <news@sender.test>\nTo: <{{email}}>\nX-Row-Code: {{code}}\nSubject: Hello {{name}}\n\n"
            "Dear {{name}},\n.\n..two dots\n.leading dot\nyour code is {{code}}\n. \nbye.\n")

# Exim's mainlog line for a message it took: "<= sender H=... P=esmtps X=TLS1.3:...".
ARRIVAL = re.compile(r"^\S+ \S+ \[(\d+)\] \S+ <= .* P=(\S+) (?:X=(\S+) )?")


def write_job(peers, count, domains):
    recipients, message = peers.path("r.csv"), peers.path("m.eml")
    emails = [f"user{k}@{domains[k % len(domains)]}" for k in range(count)]
    codes = write_coded_recipients(recipients, emails)
    with open(message, "w", encoding="utf-8") as f:
        f.write(TEMPLATE)
    return recipients, message, emails, codes


def send(peers, recipients, message, route, config=SHORT_CONFIG, threads=2):
    cfg = peers.path("c.toml")
    with open(cfg, "w") as f:
        f.write(config)
    jpath, summary = peers.path("j.jsonl"), peers.path("summary.json")
    args = [MXPRESS, "send", "--recipients", recipients, "--message", message, "--from", "bounce@sender.test",
            "--journal", jpath, "--config", cfg, "--progress", "off", "--threads", str(threads),
            "--summary-json", summary, "--route", route]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    s = None
    if os.path.exists(summary):
        with open(summary) as f:
            s = json.load(f)
    return p, journal(jpath), s


def arrivals_in_log(log):
    """Exim's "<=" lines: [(pid, protocol, X= cipher or None)]; one process
    (pid) per SMTP connection."""
    out = []
    for line in log.splitlines():
        m = ARRIVAL.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3)))
    return out


class Exim(unittest.TestCase):
    def setUp(self):
        why = exim_missing()
        if why:
            self.skipTest(why)

    def test_starttls_batch_arrives_byte_exact(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            mx = exim(peers, "127.0.0.2", port)
            recipients, message, emails, codes = write_job(peers, 200, ("a.test", "b.test", "c.test"))
            # 50 messages a connection: at least four connections, each its own handshake.
            p, j, s = send(peers, recipients, message, f"*=127.0.0.2:{port}",
                           config=SHORT_CONFIG + "messages_per_connection_max = 50\n")
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual(len(j), 200)
            for entries in j.values():
                self.assertEqual([(e["status"], e["tls"]) for e in entries], [("delivered", "TLSv1.3")], entries)
            self.assertGreaterEqual(s["connections"], 4, s)
            self.assertEqual(s["tls_handshakes"], s["connections"], s)

            # Exim's record: every message over TLS 1.3 (its X= field).
            arrived = arrivals_in_log(mx.log())
            self.assertEqual(len(arrived), 200, mx.log()[-3000:])
            self.assertEqual(collections.Counter((proto, (x or "").split(":")[0]) for _, proto, x in arrived),
                             {("esmtps", "TLS1.3"): 200})

            # What Exim stored: each recipient once, the bytes mxpress rendered.
            mx.deliver()
            got = mx.messages()
            assert_exactly_once(self, got, codes)
            by_rcpt = {m["rcpt"][0]: m for m in got}
            for line, email in enumerate(emails, start=2):
                m = by_rcpt[email]
                self.assertIn("with esmtps", m["received"])
                self.assertIn(f"for {email};", m["received"])
                # The bytes of every 8th row and the last (26 of the 200):
                # a render is a process of its own, 0.25 s each under ASan.
                if line % 8 != 2 and line != len(emails) + 1:
                    continue
                want = subprocess.run([MXPRESS, "render", "--recipients", recipients, "--message", message,
                                       "--from", "bounce@sender.test", "--line", str(line)],
                                      capture_output=True, check=True).stdout
                self.assertEqual(m["data"], want, f"{email}: stored {m['data']!r}")

    def test_connection_limit_is_not_hammered(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            mx = exim(peers, "127.0.0.2", port, extra="smtp_accept_max_per_host = 2\n")
            recipients, message, emails, codes = write_job(peers, 300, ("limited.test",))
            # The built-in rules on: the 421s fire none (the test below).
            p, j, s = send(peers, recipients, message, f"*=127.0.0.2:{port}", threads=1,
                           config=SHORT_CONFIG.replace('max_age = "3s"', 'max_age = "60s"'))
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual({e[0]["status"] for e in j.values()}, {"delivered"}, p.stdout)
            log = mx.log()
            refused = log.count("refused: too many connections from that IP address")
            self.assertGreater(refused, 0, "the limit was reached (else the test proves nothing)")
            print(f"exim refused {refused} connections; mxpress: {p.stdout}", file=sys.stderr)
            # The first burst opens up to connections_max (10) at once; after
            # that a few spaced probes, as against Postfix's limit (protocol_test.py).
            self.assertLessEqual(refused, 20, f"{refused} connections refused:\n{p.stdout}")
            mx.deliver()
            assert_exactly_once(self, mx.messages(), codes)

    def test_connection_limit_refusals_do_not_throttle_the_rate(self):
        peers = Peers()
        self.addCleanup(peers.__exit__, None, None, None)
        port = free_port("127.0.0.2")
        exim(peers, "127.0.0.2", port, extra="smtp_accept_max_per_host = 2\n")
        recipients, message, emails, codes = write_job(peers, 100, ("limited.test",))
        cfg, jpath = peers.path("c.toml"), peers.path("j.jsonl")
        with open(cfg, "w") as f:
            f.write(SHORT_CONFIG.replace('max_age = "3s"', 'max_age = "60s"'))
        p = subprocess.Popen([MXPRESS, "send", "--recipients", recipients, "--message", message, "--from",
                              "bounce@sender.test", "--journal", jpath, "--config", cfg, "--progress", "off",
                              "--threads", "1", "--route", f"*=127.0.0.2:{port}"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = p.communicate(timeout=15)  # 1 s without the rule
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        with open(jpath, encoding="utf-8") as f:
            fired = [json.loads(line) for line in f if '"event":"rule"' in line]
        self.assertEqual(fired, [], "a concurrency limit is not a rate limit")
        self.assertEqual(p.returncode, 0, out)
        self.assertEqual({e[0]["status"] for e in journal(jpath).values()}, {"delivered"}, out)

    def test_messages_per_connection_limit_is_met_by_reconnecting(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            mx = exim(peers, "127.0.0.2", port, extra="smtp_accept_max_per_connection = 5\n")
            recipients, message, emails, codes = write_job(peers, 60, ("m.test",))
            p, j, s = send(peers, recipients, message, f"*=127.0.0.2:{port}", threads=1,
                           config=SHORT_CONFIG.replace('max_age = "3s"', 'max_age = "60s"'))
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual({e[0]["status"] for e in j.values()}, {"delivered"}, p.stdout)
            # Exim refused a sixth MAIL (421) somewhere: that row took a second attempt.
            self.assertGreater(sum(1 for e in j.values() if e[0]["attempts"] > 1), 0, "the limit was reached")
            per_session = collections.Counter(pid for pid, _, _ in arrivals_in_log(mx.log()))
            self.assertEqual(sum(per_session.values()), 60)
            self.assertLessEqual(max(per_session.values()), 5, per_session)
            self.assertGreaterEqual(len(per_session), 12)
            mx.deliver()
            assert_exactly_once(self, mx.messages(), codes)

    def test_tls_sessions_resume_against_gnutls(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            mx = exim(peers, "127.0.0.2", port)
            recipients, message, emails, codes = write_job(peers, 60, ("r.test",))
            # One shard (one pool), 5 messages a connection: 12 connections or more.
            p, j, s = send(peers, recipients, message, f"*=127.0.0.2:{port}", threads=1,
                           config=SHORT_CONFIG + "messages_per_connection_max = 5\n")
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual({(e[0]["status"], e[0]["tls"]) for e in j.values()}, {("delivered", "TLSv1.3")})
            self.assertGreaterEqual(s["tls_handshakes"], 12, s)
            # The pool's first handshake is full; the others resume its session.
            self.assertGreaterEqual(s["tls_resumed"], s["tls_handshakes"] - 1, s)
            self.assertIn(f"tls: {s['tls_handshakes']} handshakes, {s['tls_resumed']} resumed", p.stdout)

            # Exim's side: one process per connection; log_selector
            # +tls_resumption ends a resumed session's X= with '*'.
            sessions = {}
            for pid, proto, x in arrivals_in_log(mx.log()):
                self.assertEqual(proto, "esmtps")
                sessions.setdefault(pid, set()).add(x.endswith("*"))
            self.assertTrue(all(len(v) == 1 for v in sessions.values()), sessions)
            resumed = sum(1 for v in sessions.values() if True in v)
            full = len(sessions) - resumed
            print(f"exim: {len(sessions)} sessions with mail, {resumed} resumed; mxpress: {s['tls_handshakes']} "
                  f"handshakes, {s['tls_resumed']} resumed", file=sys.stderr)
            self.assertGreaterEqual(len(sessions), 12)
            self.assertGreaterEqual(resumed, len(sessions) - 1, "Exim resumed what mxpress resumed")
            self.assertLessEqual(resumed, s["tls_resumed"])
            self.assertLessEqual(full, s["tls_handshakes"] - s["tls_resumed"])
            mx.deliver()
            assert_exactly_once(self, mx.messages(), codes)


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    ROOT = os.path.abspath(sys.argv[2])
    run_tests(sys.argv[3:])
