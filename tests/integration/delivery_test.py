#!/usr/bin/python3
"""Integration tests of `mxpress send` against real peers on loopback:
dnsmasq answering MX and A queries, Postfix's smtp-sink receiving.

Every test checks at the receiver (smtp-sink's dumps, mxsink's --record)
that each recipient got exactly one message carrying its own row code and
nobody else got anything: peers.assert_exactly_once.

  delivery_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import (CODED_TEMPLATE, SHORT_CONFIG, Peers, assert_exactly_once, dump_arrivals, free_port,  # noqa: E402
                   journal, read_dumps, read_record, row_codes, run_tests, shard_placement,
                   write_coded_recipients)

MXPRESS = None
ROOT = None
MX_HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


def write_job(peers, emails, template=CODED_TEMPLATE):
    """Writes the recipients file (email,name,code) and the template; returns
    (recipients, message, {email: code})."""
    recipients, message = peers.path("r.csv"), peers.path("m.eml")
    codes = write_coded_recipients(recipients, emails)
    with open(message, "w", encoding="utf-8") as f:
        f.write(template)
    return recipients, message, codes


def arrivals(*dump_dirs):
    return [a for d in dump_dirs for a in dump_arrivals(d)]


def run_send(peers, recipients, message, dns, port, extra=(), config=SHORT_CONFIG):
    cfg = peers.path("short.toml")
    with open(cfg, "w") as f:
        f.write(config)
    jpath = peers.path("journal.jsonl")
    if os.path.exists(jpath):
        os.unlink(jpath)
    args = [MXPRESS, "send", "--recipients", recipients, "--message", message, "--from", "bounce@sender.test",
            "--dns", dns, "--mx-port", str(port), "--threads", "2", "--journal", jpath, "--config", cfg,
            "--progress", "off", "--summary-json", peers.path("summary.json")] + list(extra)
    p = subprocess.run(args, capture_output=True, text=True, timeout=240)
    return p, jpath


class Delivery(unittest.TestCase):
    def test_20000_recipients_over_200_domains(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            dumps = [peers.smtp_sink(h, port) for h in MX_HOSTS]
            dns_lines = []
            for k in range(200):
                dns_lines.append(f"mx-host=d{k:03d}.test,mx{k % 4}.test,10")
            for i, h in enumerate(MX_HOSTS):
                dns_lines.append(f"host-record=mx{i}.test,{h}")
            # A domain whose preferred MX refuses connections: the backup takes it.
            dns_lines += ["mx-host=backup.test,mxdead.test,10", "mx-host=backup.test,mx1.test,20",
                          "host-record=mxdead.test,127.0.0.9"]
            dns_lines += ["mx-host=nullmx.test,.,0"]            # RFC 7505: accepts no mail
            dns_lines += ["host-record=implicit.test,127.0.0.4"]  # no MX: its A record is the MX
            dns = peers.dnsmasq(dns_lines)

            recipients = peers.path("r.csv")
            subprocess.run(["python3", os.path.join(ROOT, "scripts/gen-recipients"),
                            "--rows", "20000", "--domains", "200", "--domain-pattern", "d{:03d}.test",
                            "--out", recipients], check=True)
            with open(recipients, "a", encoding="utf-8") as f:
                f.write("someone@nullmx.test,Null,Mx,Nowhere,basic\n")
                f.write("someone@nxdomain.test,No,Domain,Nowhere,basic\n")
                f.write("someone@implicit.test,Imp,Licit,Here,basic\n")
                f.write("someone@backup.test,Back,Up,There,basic\n")
                f.write("not-an-address,Bad,Row,X,basic\n")
                f.write("short@d001.test,Too,Few\n")
            # A code column (each row's own value, checked at the receiver).
            with open(recipients, encoding="utf-8") as f:
                lines = f.read().splitlines()
            emails = [l.split(",", 1)[0] for l in lines[1:]]
            codes = row_codes(emails)
            with open(recipients, "w", encoding="utf-8") as f:
                f.write(lines[0] + ",code\n")
                for e, l in zip(emails, lines[1:]):
                    f.write(f"{l},{codes[e]}\n" if l.count(",") >= 4 else l + "\n")
            message = peers.path("m.eml")
            with open(os.path.join(ROOT, "bench/templates/plain-2k.eml"), encoding="utf-8") as f:
                template = f.read()
            with open(message, "w", encoding="utf-8") as f:
                f.write("X-Row-Code: {{code}}\n" + template)

            p, jpath = run_send(peers, recipients, message, dns, port)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            j = journal(jpath)
            rows = 20006
            self.assertEqual(len(j), rows, "one entry per data row")
            for line, entries in j.items():
                self.assertEqual(len(entries), 1, f"line {line} has {len(entries)} outcomes")
            by_email = {e[0]["email"]: e[0] for e in j.values()}
            self.assertEqual(by_email["someone@nullmx.test"]["status"], "bounced")
            self.assertIn("null MX", by_email["someone@nullmx.test"]["reply"])
            self.assertEqual(by_email["someone@nxdomain.test"]["status"], "bounced")
            self.assertIn("NXDOMAIN", by_email["someone@nxdomain.test"]["reply"])
            self.assertEqual(by_email["someone@implicit.test"]["status"], "delivered")
            self.assertEqual(by_email["someone@backup.test"]["status"], "delivered")
            self.assertEqual(by_email["someone@backup.test"]["mx"], "mx1.test")
            self.assertEqual(by_email["not-an-address"]["status"], "invalid")
            statuses = collections.Counter(e[0]["status"] for e in j.values())
            self.assertEqual(statuses["delivered"], 20002, statuses)
            self.assertEqual(statuses["invalid"], 2, statuses)

            # What arrived: every delivered recipient exactly once, each with
            # its own personalization and the "." body line intact.
            rows_by_email = {}
            with open(recipients, encoding="utf-8") as f:
                header = f.readline().strip().split(",")
                for raw in f:
                    parts = raw.rstrip("\n").split(",")
                    rows_by_email[parts[0]] = parts
            arrived = collections.Counter()
            for d in dumps:
                for rcpts, text in read_dumps(d):
                    self.assertEqual(len(rcpts), 1)
                    rcpt = rcpts[0]
                    arrived[rcpt] += 1
                    row = rows_by_email[rcpt]
                    first, last = row[header.index("first_name")], row[header.index("last_name")]
                    self.assertIn(f"Dear {first} {last},\n", text, rcpt)
                    self.assertIn("\n.\nKind regards,", text, "dot-stuffing undone by the receiver")
            delivered = {e for e, o in by_email.items() if o["status"] == "delivered"}
            self.assertEqual(set(arrived), delivered, "none missing, none extra")
            self.assertEqual(max(arrived.values()), 1, "no duplicates")
            expected = {e: c for e, c in codes.items() if e.startswith("user")}
            expected.update({e: codes[e] for e in ("someone@implicit.test", "someone@backup.test")})
            self.assertEqual(len(expected), 20002)
            assert_exactly_once(self, arrivals(*dumps), expected)
            with open(peers.path("summary.json")) as f:
                s = json.load(f)
            self.assertEqual(s["delivered"], 20002)
            # Each valid row went to its domain's shard, placed on the least
            # loaded one when the domain's first row was read: the skewed
            # list splits as that rule says, within 5% of even (a hash of
            # the names gave 8,524 / 11,476 on this list).
            routed = [e.split("@")[1] for e in emails if e not in ("not-an-address", "short@d001.test")]
            placed = shard_placement(routed, 2)
            want = [sum(1 for d in routed if placed[d] == k) for k in range(2)]
            self.assertEqual(s["shard_rows"], want)
            self.assertLess(max(want), 1.05 * len(routed) / 2, want)
            self.assertIn(f"shards: {want[0]} / {want[1]} rows", p.stdout)

    def test_faults_hard_soft_drop_and_refused(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            # smtp-sink: -f rejects with 5xx, -r with 4xx (see its manual).
            dumps = [peers.smtp_sink("127.0.0.2", port, flags=["-f", "rcpt"]),  # 5xx to RCPT
                     peers.smtp_sink("127.0.0.3", port, flags=["-r", "rcpt"]),  # 4xx to RCPT
                     peers.smtp_sink("127.0.0.4", port, flags=["-q", "data"])]  # hangs up at DATA
            dump = peers.smtp_sink("127.0.0.5", port)
            dns = peers.dnsmasq([
                "mx-host=hard.test,mxa.test,10", "host-record=mxa.test,127.0.0.2",
                "mx-host=soft.test,mxb.test,10", "host-record=mxb.test,127.0.0.3",
                "mx-host=drop.test,mxc.test,10", "host-record=mxc.test,127.0.0.4",
                # Refused on 127.0.0.6 (nothing listens), then a soft-failing host, then a good one.
                "mx-host=chain.test,mxr.test,10", "host-record=mxr.test,127.0.0.6",
                "mx-host=chain.test,mxd.test,20", "host-record=mxd.test,127.0.0.5",
                "mx-host=dead.test,mxr.test,10",
            ])
            recipients, message, codes = write_job(
                peers, [f"{u}{k}@{d}.test" for k in range(5)
                        for u, d in (("h", "hard"), ("s", "soft"), ("d", "drop"), ("c", "chain"), ("x", "dead"))])
            p, jpath = run_send(peers, recipients, message, dns, port)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            j = journal(jpath)
            self.assertEqual(len(j), 25)
            for line, entries in j.items():
                self.assertEqual(len(entries), 1)
                o = entries[0]
                domain = o["email"].split("@")[1]
                want = {"hard.test": "bounced", "soft.test": "expired", "drop.test": "expired",
                        "chain.test": "delivered", "dead.test": "expired"}[domain]
                self.assertEqual(o["status"], want, o)
                if domain == "hard.test":
                    self.assertEqual(o["code"] // 100, 5, o)
                if domain == "soft.test":
                    self.assertEqual(o["code"] // 100, 4, o)
                    self.assertGreater(o["attempts"], 1, "retried before expiring")
                if domain == "dead.test":
                    self.assertIn("refused", o["reply"].lower(), o)
            # Only chain.test's five, through its backup MX; nothing from the others.
            assert_exactly_once(self, arrivals(dump, *dumps), {e: c for e, c in codes.items() if "@chain." in e})

    def test_custom_replies_and_slow_server(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            dumps = [peers.smtp_sink("127.0.0.2", port, flags=["-f", "rcpt", "-B", "550 5.1.1 custom hard reject"]),
                     peers.smtp_sink("127.0.0.3", port, flags=["-r", "rcpt", "-b", "451 4.7.1 custom soft reject"]),
                     # 4 s before each RCPT reply. Without -p, smtp-sink answers pipelined
                     # commands out of order while it waits (DATA's 503 before RCPT's 250).
                     peers.smtp_sink("127.0.0.4", port, flags=["-p", "-W", "rcpt:4"])]
            dns = peers.dnsmasq([
                "mx-host=hard.test,mxa.test,10", "host-record=mxa.test,127.0.0.2",
                "mx-host=soft.test,mxb.test,10", "host-record=mxb.test,127.0.0.3",
                "mx-host=slow.test,mxc.test,10", "host-record=mxc.test,127.0.0.4",
            ])
            recipients, message, _ = write_job(peers, ["h@hard.test", "s@soft.test", "w@slow.test"])
            p, jpath = run_send(peers, recipients, message, dns, port,
                                config=SHORT_CONFIG + "[timeouts]\nrcpt = \"1s\"\nmail = \"1s\"\n")
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            by_email = {e[0]["email"]: e[0] for e in journal(jpath).values()}
            self.assertEqual(by_email["h@hard.test"]["status"], "bounced")
            self.assertEqual(by_email["h@hard.test"]["enhanced"], "5.1.1")
            self.assertEqual(by_email["h@hard.test"]["reply"], "custom hard reject")
            self.assertEqual(by_email["s@soft.test"]["status"], "expired")
            self.assertEqual(by_email["s@soft.test"]["reply"], "custom soft reject")
            self.assertEqual(by_email["w@slow.test"]["status"], "expired", by_email["w@slow.test"])
            self.assertIn("timeout waiting for the reply to RCPT TO", by_email["w@slow.test"]["reply"])
            assert_exactly_once(self, arrivals(*dumps), {})

    def test_server_that_comes_up_late_gets_the_mail_on_retry(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            dns = peers.dnsmasq(["mx-host=late.test,mx.late.test,10", "host-record=mx.late.test,127.0.0.5"])
            recipients, message, codes = write_job(peers, [f"u{k}@late.test" for k in range(10)])
            cfg = peers.path("late.toml")
            with open(cfg, "w") as f:
                f.write('[defaults]\nretry_initial = "300ms"\nretry_max = "600ms"\nmax_age = "20s"\n')
            jpath = peers.path("j.jsonl")
            sender = subprocess.Popen([MXPRESS, "send", "--recipients", recipients, "--message", message, "--from",
                                       "b@sender.test", "--dns", dns, "--mx-port", str(port), "--journal", jpath,
                                       "--config", cfg, "--progress", "off"], stdout=subprocess.PIPE, text=True)
            # The first attempt finds a server that hangs up at once; only
            # then does the real one come up (waiting on the attempt, not on
            # a clock: a slow start-up under TSan must not make the test moot).
            import socket
            with socket.socket() as early:
                early.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                early.bind(("127.0.0.5", port))
                early.listen(16)
                early.settimeout(30)
                conn, _ = early.accept()
                conn.close()
            dump = peers.smtp_sink("127.0.0.5", port)
            out, _ = sender.communicate(timeout=60)
            self.assertEqual(sender.returncode, 0, out)
            j = journal(jpath)
            self.assertEqual(len(j), 10)
            for entries in j.values():
                self.assertEqual(entries[0]["status"], "delivered", entries)
                # The dropped session counts for every queued row: then the retry.
                self.assertGreaterEqual(entries[0]["attempts"], 2, entries)
            self.assertIn("deferrals", out)
            self.assertNotIn(" 0 deferrals", out, "the first attempts were deferred")
            assert_exactly_once(self, arrivals(dump), codes)

    def test_ipv6_mx_and_route(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            dump = peers.smtp_sink("[::1]", port)
            dns = peers.dnsmasq(["mx-host=v6.test,mx6.test,10", "host-record=mx6.test,::1"])
            recipients, message, codes = write_job(peers, [f"{u}{k}@{d}.test" for k in range(5)
                                                           for u, d in (("u", "v6"), ("r", "routed"))])
            p, jpath = run_send(peers, recipients, message, dns, port, extra=["--route", f"routed.test=[::1]:{port}"])
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            j = journal(jpath)
            self.assertEqual(len(j), 10)
            for entries in j.values():
                self.assertEqual(entries[0]["status"], "delivered", entries)
            assert_exactly_once(self, arrivals(dump), codes)

    def test_message_that_cannot_be_rendered_is_invalid_not_lost(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            dump = peers.smtp_sink("127.0.0.2", port)
            dns = peers.dnsmasq(["mx-host=r.test,mx.r.test,10", "host-record=mx.r.test,127.0.0.2"])
            recipients, message, codes = write_job(peers, ["ok@r.test", "bad@r.test", "ok2@r.test"],
                                                   "To: <{{email}}>\nX-Row-Code: {{code}}\nList-Id: <{{name}}.list.example>\n"
                                                   "Subject: hi\n\nhello\n")
            with open(recipients, encoding="utf-8") as f:
                rows = f.read().replace("Name 1,", "Zoë,")  # List-Id must be ASCII
            with open(recipients, "w", encoding="utf-8") as f:
                f.write(rows)
            p, jpath = run_send(peers, recipients, message, dns, port)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertIn("2 delivered, 0 bounced, 0 expired, 1 invalid", p.stdout)
            by_email = {e[0]["email"]: e[0] for e in journal(jpath).values()}
            self.assertEqual(by_email["bad@r.test"]["status"], "invalid")
            self.assertIn("non-ASCII text is not allowed", by_email["bad@r.test"]["reply"])
            del codes["bad@r.test"]
            assert_exactly_once(self, arrivals(dump), codes)

    def test_resume_sends_nothing_twice(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            dump = peers.smtp_sink("127.0.0.2", port)
            dns = peers.dnsmasq(["mx-host=r.test,mx.r.test,10", "host-record=mx.r.test,127.0.0.2"])
            recipients, message, codes = write_job(peers, [f"u{k}@r.test" for k in range(50)])
            p, jpath = run_send(peers, recipients, message, dns, port)
            self.assertEqual(p.returncode, 0, p.stderr)
            assert_exactly_once(self, arrivals(dump), codes)
            # Set the first run's messages aside: the dump then holds the resumed run's only.
            first_run = peers.path("first-run")
            shutil.move(dump, first_run)
            os.makedirs(dump)
            os.chmod(dump, 0o777)
            with open(jpath) as f:
                lines = f.read().splitlines()
            # Cut the journal as an interrupted run leaves it: its header, lines 2..21 delivered.
            kept = [l for l in lines if json.loads(l).get("line", 0) <= 21]
            with open(jpath, "w") as f:
                f.write("\n".join(kept) + "\n")
            cfg = peers.path("short.toml")
            p = subprocess.run([MXPRESS, "send", "--recipients", recipients, "--message", message, "--from",
                                "b@sender.test", "--dns", dns, "--mx-port", str(port), "--journal", jpath,
                                "--config", cfg, "--resume", "--progress", "off"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("20 already final", p.stdout)
            # Only the 30 rows without an outcome (lines 22..51: u20..u49), each once.
            assert_exactly_once(self, arrivals(dump), {f"u{k}@r.test": codes[f"u{k}@r.test"] for k in range(20, 50)})
            j = journal(jpath)
            self.assertEqual(len(j), 50)
            self.assertTrue(all(len(v) == 1 for v in j.values()))


class Sink(unittest.TestCase):
    def test_mxsink_counts_and_exits_after_n_messages(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            stats, record = peers.path("stats.json"), peers.path("record.jsonl")
            mxsink = os.path.join(os.path.dirname(MXPRESS), "mxsink")
            sink = subprocess.Popen([mxsink, "--listen", f"127.0.0.2:{port}", "--listen", f"127.0.0.3:{port}",
                                     "--threads", "2", "--stats-json", stats, "--exit-after-messages", "1000",
                                     "--max-seconds", "60", "--record", record])
            peers.procs.append(sink)
            from peers import wait_tcp
            wait_tcp("127.0.0.2", port)
            wait_tcp("127.0.0.3", port)
            # Date and Message-ID fixed by the template: `mxpress render` then
            # gives the exact bytes each recipient should get.
            recipients, message, codes = write_job(
                peers, [f"u{k}@d{k % 2}.test" for k in range(1000)],
                "Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <{{code}}@sender.test>\n" + CODED_TEMPLATE)
            jpath = peers.path("j.jsonl")
            p = subprocess.run([MXPRESS, "send", "--recipients", recipients, "--message", message, "--from",
                                "b@sender.test", "--route", f"d0.test=127.0.0.2:{port}", "--route",
                                f"d1.test=127.0.0.3:{port}", "--journal", jpath, "--progress", "off"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("1000 delivered", p.stdout)
            self.assertEqual(sink.wait(timeout=30), 0, "mxsink exits by itself after the 1000th message")
            with open(stats) as f:
                s = json.load(f)
            self.assertEqual(s["messages"], 1000)
            self.assertEqual(s["recipients"], 1000)
            self.assertGreaterEqual(s["connections"], 2)
            received = read_record(record)
            assert_exactly_once(self, received, codes)
            # Byte for byte what render shows, dots un-stuffed ("." lines), for a sample of rows.
            by_rcpt = {r["rcpt"][0]: r for r in received}
            for line in (2, 3, 500, 1001):
                want = subprocess.run([MXPRESS, "render", "--recipients", recipients, "--message", message,
                                       "--from", "b@sender.test", "--line", str(line)],
                                      capture_output=True, check=True).stdout
                got = by_rcpt[f"u{line - 2}@d{(line - 2) % 2}.test"]
                self.assertEqual((got["size"], got["sha256"]), (len(want), hashlib.sha256(want).hexdigest()),
                                 want.decode())


    def test_mxsink_parses_input_cut_anywhere_from_a_starved_buffer_ring(self):
        """--recv-buffers 1: the worker's one 16 KiB receive buffer, so 24
        sessions writing at once run its ring dry (ENOBUFS: each recv armed
        again once the buffer is back). Each client writes its session
        pipelined, cut at random (1 byte to 20 KB): command lines, the
        end-of-data marker and BDAT chunks split across receives, a chunk
        holding "\\r\\n.\\r\\n" and "QUIT". Every reply comes, every message
        arrives once, byte for byte."""
        import hashlib
        import random
        import socket
        import threading
        from peers import wait_tcp
        clients = 24
        with Peers() as peers:
            port = free_port("127.0.0.2")
            stats, record = peers.path("stats.json"), peers.path("record.jsonl")
            mxsink = os.path.join(os.path.dirname(MXPRESS), "mxsink")
            sink = subprocess.Popen([mxsink, "--listen", f"127.0.0.2:{port}", "--threads", "1", "--recv-buffers",
                                     "1", "--stats-json", stats, "--record", record, "--max-seconds", "120"])
            peers.procs.append(sink)
            wait_tcp("127.0.0.2", port)
            text = "".join(f"line {n} of the body\r\n" + (".dot line\r\n" if n % 50 == 0 else "")
                           for n in range(1500)).encode()  # about 32 KB: two buffers and more
            chunk1 = b"BDAT chunk\r\n.\r\nQUIT\r\n" + text[:9000]
            chunk2 = text[9000:] + b"\r\n"
            want = {}
            replies = [None] * clients

            def session(k):
                data_msg = f"To: <d{k}@x.test>\r\n\r\n".encode() + text
                want[f"d{k}@x.test"] = (len(data_msg), hashlib.sha256(data_msg).hexdigest())
                want[f"b{k}@x.test"] = (len(chunk1) + len(chunk2), hashlib.sha256(chunk1 + chunk2).hexdigest())
                stuffed = data_msg.replace(b"\r\n.", b"\r\n..")
                wire = (b"EHLO c\r\nMAIL FROM:<s@x.test>\r\n" + f"RCPT TO:<d{k}@x.test>\r\n".encode() +
                        b"DATA\r\n" + stuffed + b".\r\nMAIL FROM:<s@x.test>\r\n" +
                        f"RCPT TO:<b{k}@x.test>\r\nBDAT {len(chunk1)}\r\n".encode() + chunk1 +
                        f"BDAT {len(chunk2)} LAST\r\n".encode() + chunk2 + b"QUIT\r\n")
                rng = random.Random(k)
                with socket.create_connection(("127.0.0.2", port), timeout=30) as c:
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    at = 0
                    while at < len(wire):
                        n = rng.choice((1, 2, 3, 5, 7, 64, 1500, 20000))
                        c.sendall(wire[at:at + n])
                        at += n
                    got = b""
                    while True:
                        part = c.recv(65536)
                        if not part:
                            break
                        got += part
                replies[k] = [line[:3] for line in got.decode().split("\r\n") if line[3:4] == " "]

            threads = [threading.Thread(target=session, args=(k,)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=90)
            for k in range(clients):
                self.assertEqual(replies[k], ["220", "250", "250", "250", "354", "250", "250", "250", "250", "250",
                                              "221"], f"client {k}")
            sink.terminate()
            self.assertEqual(sink.wait(timeout=30), 0)
            with open(stats) as f:
                s = json.load(f)
            self.assertEqual((s["messages"], s["bdat_messages"]), (2 * clients, clients), s)
            self.assertGreater(s["recv_enobufs"], 0, "the ring ran dry at least once")
            got = {r["rcpt"][0]: (r["size"], r["sha256"]) for r in read_record(record)}
            self.assertEqual(len(read_record(record)), 2 * clients, "each message once")
            self.assertEqual(got, want)


    def test_without_multishot_recv_both_ends_read_with_a_buffer_per_session(self):
        """A kernel with buffer rings but without multishot recv (5.19)
        answers every multishot recv with EINVAL. MXPRESS_SIMULATE_NO_MULTISHOT
        makes this kernel do the same (io/recv_multishot.hpp): the startup
        probe sees EINVAL, the shards and mxsink's workers say so once and
        read with a plain recv into each session's buffer, and every message
        arrives once. Without the fallback each recv failed and every
        session was closed (or the runtime report below fired)."""
        from peers import wait_tcp
        env = dict(os.environ, MXPRESS_SIMULATE_NO_MULTISHOT="1")
        rows = 300
        with Peers() as peers:
            port = free_port("127.0.0.2")
            stats, record = peers.path("stats.json"), peers.path("record.jsonl")
            mxsink = os.path.join(os.path.dirname(MXPRESS), "mxsink")
            with open(peers.path("sink.err"), "w") as sink_err:
                sink = subprocess.Popen([mxsink, "--listen", f"127.0.0.2:{port}", "--listen", f"127.0.0.3:{port}",
                                         "--threads", "2", "--stats-json", stats, "--exit-after-messages", str(rows),
                                         "--max-seconds", "60", "--record", record], env=env, stderr=sink_err)
            peers.procs.append(sink)
            wait_tcp("127.0.0.2", port)
            wait_tcp("127.0.0.3", port)
            recipients, message, codes = write_job(peers, [f"u{k}@d{k % 2}.test" for k in range(rows)])
            p = subprocess.run([MXPRESS, "send", "--recipients", recipients, "--message", message, "--from",
                                "b@sender.test", "--route", f"d0.test=127.0.0.2:{port}", "--route",
                                f"d1.test=127.0.0.3:{port}", "--journal", peers.path("j.jsonl"), "--threads", "2",
                                "--progress", "off"], capture_output=True, text=True, timeout=60, env=env)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn(f"{rows} delivered", p.stdout)
            self.assertEqual(sink.wait(timeout=30), 0, "mxsink exits by itself after the last message")
            with open(peers.path("sink.err")) as f:
                sink_stderr = f.read()
            for who, err, said in (("mxpress", p.stderr, "mxpress: receiving with a plain recv per connection: "),
                                   ("mxsink", sink_stderr, "mxsink: receiving with a 64 KiB buffer per session: ")):
                self.assertEqual(err.count(said), 1, f"{who} says once why, for every shard or worker: {err}")
                self.assertIn("EINVAL (simulated: MXPRESS_SIMULATE_NO_MULTISHOT)", err)
                self.assertNotIn("refused a multishot recv", err, f"{who} never armed one")
            with open(stats) as f:
                s = json.load(f)
            self.assertEqual((s["messages"], s["recipients"]), (rows, rows), s)
            assert_exactly_once(self, read_record(record), codes)


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    ROOT = os.path.abspath(sys.argv[2])
    run_tests(sys.argv[3:])
