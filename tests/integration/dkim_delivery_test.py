#!/usr/bin/python3
"""DKIM over the wire: messages that `mxpress send` signs and delivers to
Postfix's smtp-sink (dump) still verify with dkimpy, after dot-stuffing and
SMTP; Message-IDs are distinct per recipient.

  dkim_delivery_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import SHORT_CONFIG, Peers, free_port, journal, read_dumps, run_tests  # noqa: E402

MXPRESS = None
ROOT = None


def make_keys(peers):
    paths = {}
    for name, args in (("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("ed", ["-algorithm", "ED25519"])):
        path = peers.path(f"{name}.pem")
        subprocess.run(["openssl", "genpkey", *args, "-out", path], check=True, capture_output=True)
        os.chmod(path, 0o600)
        paths[name] = path
    return paths


def wire_to_message(dump_text):
    """smtp-sink's dump (LF line ends, envelope lines first) -> the message as
    the receiver got it, with CRLF line ends and its Received line."""
    lines = dump_text.split("\n")
    while lines and (lines[0].startswith("X-Mail-Args:") or lines[0].startswith("X-Rcpt-Args:")):
        lines.pop(0)
    return "\r\n".join(lines).encode()


class Dkim(unittest.TestCase):
    def test_signed_messages_verify_after_the_wire(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            dump = peers.smtp_sink("127.0.0.2", port)
            keys = make_keys(peers)
            config = SHORT_CONFIG + (
                '[dkim]\ncanonicalization = "relaxed/simple"\n'
                f'[[dkim.key]]\ndomain = "sender.test"\nselector = "r1"\nkey_file = "{keys["rsa"]}"\n'
                f'[[dkim.key]]\ndomain = "sender.test"\nselector = "e1"\nkey_file = "{keys["ed"]}"\n')
            cfg = peers.path("dkim.toml")
            with open(cfg, "w") as f:
                f.write(config)
            recipients, message = peers.path("r.csv"), peers.path("m.eml")
            count = 30
            with open(recipients, "w", encoding="utf-8") as f:
                f.write("email,name\n")
                for i in range(count):
                    f.write(f"user{i}@d{i % 3}.test,利用者 {i}\n")
            with open(message, "w", encoding="utf-8") as f:
                f.write("From: 送信者 <news@sender.test>\nTo: {{name}} <{{email}}>\nSubject: {{name}}様 お知らせ\n\n"
                        ".starts with a dot\n..two dots\n.\nFrom the top\n{{name}}様\n\n\n")
            jpath = peers.path("journal.jsonl")
            p = subprocess.run([MXPRESS, "send", "--recipients", recipients, "--message", message, "--from",
                                "bounce@sender.test", "--route", f"*=127.0.0.2:{port}", "--threads", "2",
                                "--journal", jpath, "--config", cfg, "--progress", "off", "--list-unsubscribe",
                                "https://sender.test/u?e={{email}}"], capture_output=True, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            statuses = [e["status"] for entries in journal(jpath).values() for e in entries]
            self.assertEqual(statuses, ["delivered"] * count, p.stdout)

            records = subprocess.run([MXPRESS, "dkim-record", "--config", cfg], capture_output=True, text=True,
                                     check=True).stdout
            with open(peers.path("records"), "w") as f:
                for line in records.splitlines():
                    f.write(line.split()[0].rstrip(".") + " " + "".join(line.split('"')[1::2]) + "\n")
            received = read_dumps(dump)
            self.assertEqual(len(received), count)
            files = []
            ids = set()
            for i, (rcpts, text) in enumerate(received):
                path = peers.path(f"got{i}.eml")
                raw = wire_to_message(text)
                with open(path, "wb") as f:
                    f.write(raw)
                files.append(path)
                ids.update(line for line in raw.split(b"\r\n") if line.startswith(b"Message-ID:"))
            self.assertEqual(len(ids), count, "one distinct Message-ID per recipient")
            v = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tests", "dkim_verify.py"),
                                peers.path("records"), *files], capture_output=True, text=True)
            self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
            self.assertEqual(v.stdout.count(" ok 2\n"), count, v.stdout)


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    ROOT = os.path.abspath(sys.argv[2])
    run_tests(sys.argv[3:])
