#!/usr/bin/python3
"""mxpress_floor (bench/floor_sender.cpp), the reference scripts/bench
measures mxpress against, checked at the receiver so that it cannot cheat:
every message it reports arrived at mxsink exactly once (one recipient each,
r0..rN-1), byte-exact (mxsink --record's size and SHA-256 of the un-stuffed
message), in plaintext and over STARTTLS; and a refusal fails its run.

  floor_test.py FLOOR_BINARY MXSINK_BINARY REPO_ROOT [TestName...]
"""
import hashlib
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import Peers, certs, free_port, read_record, run_tests, wait_tcp  # noqa: E402

FLOOR = MXSINK = None
HOSTS = ["127.0.0.2", "127.0.0.3"]
# Lines a framing bug would get wrong: leading dots, a lone dot, a double
# dot, a long line, 8-bit text, an empty line before the end.
MESSAGE = ("From: <a@sender.test>\r\nTo: <r@floor.test>\r\nSubject: floor\r\n\r\n.leading dot\r\n.\r\n..\r\n"
           + "x" * 990 + "\r\nStra\u00dfe\r\n" + "body line\r\n" * 200 + "\r\n").encode("utf-8")


def dot_stuff(data):
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in data.split(b"\r\n"))


class Floor(unittest.TestCase):
    def send(self, peers, messages, connections, threads, tls=False, profile=None):
        """Starts mxsink on HOSTS, runs the floor; returns (process, summary, record)."""
        port = free_port(HOSTS[0])
        stats = peers.path(f"sink-{port}.json")
        record = peers.path(f"sink-{port}.record.jsonl")
        args = [MXSINK, "--threads", "1", "--stats-json", stats, "--record", record]
        args += sum((["--listen", f"{h}:{port}"] for h in HOSTS), [])
        if tls:
            c = certs(peers)
            args += ["--tls-cert", os.path.join(c, "mx.crt"), "--tls-key", os.path.join(c, "mx.key")]
        if profile:
            path = peers.path("profile.toml")
            with open(path, "w") as f:
                f.write(profile)
            args += ["--profile", path, "--seed", "1"]
        sink = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peers.procs.append(sink)
        for h in HOSTS:
            wait_tcp(h, port)
        msg = peers.path("message.eml")
        with open(msg, "wb") as f:
            f.write(dot_stuff(MESSAGE))
        p = subprocess.run([FLOOR, "--messages", str(messages), "--connections", str(connections), "--threads",
                            str(threads), "--message", msg, "--from", "a@sender.test", "--to", "r{}@floor.test",
                            "--timeout", "60"] + sum((["--connect", f"{h}:{port}"] for h in HOSTS), [])
                           + (["--tls"] if tls else []), capture_output=True, text=True, timeout=90)
        sink.terminate()  # flushes the record
        sink.wait(timeout=10)
        summary = json.loads(p.stdout) if p.stdout.strip() else None
        return p, summary, read_record(record)

    def check_arrivals(self, summary, arrivals, messages):
        self.assertEqual(summary["messages"], messages)
        self.assertEqual(summary["errors"], 0)
        self.assertTrue(all(len(a["rcpt"]) == 1 for a in arrivals), "one recipient per message")
        rcpts = sorted(a["rcpt"][0] for a in arrivals)
        self.assertEqual(rcpts, sorted(f"r{k}@floor.test" for k in range(messages)), "each message once")
        digest = hashlib.sha256(MESSAGE).hexdigest()
        bad = [a for a in arrivals if a["size"] != len(MESSAGE) or a["sha256"] != digest]
        self.assertEqual(bad[:3], [], "messages not byte-exact at the receiver")

    def test_plaintext_every_message_arrives_once_byte_exact(self):
        with Peers() as peers:
            p, summary, arrivals = self.send(peers, 400, 6, 2)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.check_arrivals(summary, arrivals, 400)

    def test_starttls_every_message_arrives_once_byte_exact_and_sessions_resume(self):
        with Peers() as peers:
            p, summary, arrivals = self.send(peers, 300, 6, 2, tls=True)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.check_arrivals(summary, arrivals, 300)
            self.assertEqual(summary["tls_handshakes"], 6)
            # The first connection per thread and address does a full
            # handshake, the others resume its session.
            self.assertEqual(summary["tls_resumed"], 6 - 2 * len(HOSTS))

    def test_a_refused_message_fails_the_run_and_names_the_reply(self):
        with Peers() as peers:
            p, summary, _ = self.send(peers, 300, 4, 1, profile="[default]\ndata_4xx = 0.1\n"
                                      "data_4xx_reply = \"451 4.3.0 try later\"\n")
            self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
            self.assertIn("451 4.3.0 try later", p.stderr)
            self.assertGreater(summary["errors"], 0)


if __name__ == "__main__":
    FLOOR, MXSINK = sys.argv[1], sys.argv[2]
    run_tests(sys.argv[4:])
