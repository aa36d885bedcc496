#!/usr/bin/python3
"""CHUNKING (RFC 3030) against real receivers: mxpress sends BDAT where the
server offers CHUNKING and DATA where it does not (or `[defaults] chunking =
false`), and the receiver gets the same bytes either way.

- a private Postfix smtpd (which offers CHUNKING): every message arrives
  once with its dot lines intact (BDAT is not dot-stuffed), and Postfix's
  own disconnect counters say bdat=, not data=; with chunking = false they
  say data=;
- mxsink --record: every recipient exactly once, every message came by BDAT
  (its bdat_messages counter), and each recipient's recorded size and
  SHA-256 equal those of a run against mxsink --no-chunking (DATA).
- in both, mxpress's own count of the messages it sent by BDAT and by DATA
  (the summary line, --summary-json's sent_bdat and sent_data, the
  metric mxpress_messages_sent_total{transfer}, each journal line's
  "transfer" and `mxpress report`'s delivered_by) agrees with the receiver's.

  chunking_test.py MXPRESS ROOT [Class.test_name ...]
"""
import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import (SHORT_CONFIG, Peers, assert_exactly_once, free_port, journal, mbox_arrivals,  # noqa: E402
                   mxsink, postfix_smtpd, read_record, record_of, run_tests, stop_and_read_stats,
                   write_coded_recipients)

MXPRESS = None
ROOT = None

# Lines a dot-stuffing mistake would change: a lone ".", leading dots, "..".
# Date and Message-ID fixed, so that two runs (and `mxpress render`) give
# the same bytes per recipient.
TEMPLATE = ("Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <{{code}}@sender.test>\n"
            "From: News <news@sender.test>\nTo: <{{email}}>\nX-Row-Code: {{code}}\nSubject: Hello {{name}}\n\n"
            "Dear {{name}},\n.\n..two dots\n.leading dot\nyour code is {{code}}\n. \nbye.\n")
BODY = "\n.\n..two dots\n.leading dot\nyour code is {code}\n. \nbye.\n"


def job(peers, count, name="r.csv"):
    recipients, message = peers.path(name), peers.path("m.eml")
    codes = write_coded_recipients(recipients, [f"user{k}@d{k % 7}.test" for k in range(count)])
    with open(message, "w", encoding="utf-8") as f:
        f.write(TEMPLATE)
    return recipients, message, codes


def send(peers, recipients, message, route, config=SHORT_CONFIG, tag="run"):
    cfg = peers.path(f"{tag}.toml")
    with open(cfg, "w") as f:
        f.write(config)
    jpath = peers.path(f"{tag}.jsonl")
    summary = peers.path(f"{tag}-summary.json")
    metrics = peers.path(f"{tag}-metrics")
    os.mkdir(metrics)
    args = [MXPRESS, "send", "--recipients", recipients, "--message", message, "--from", "bounce@sender.test",
            "--journal", jpath, "--config", cfg, "--progress", "off", "--threads", "2", "--summary-json", summary,
            "--metrics-textfile", metrics, "--route", route]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    return p, journal(jpath)


def assert_transfers(test, p, tag, peers, bdat, data):
    """mxpress's summary (text and JSON), final metrics, journal lines and
    `mxpress report` of run `tag` say `bdat` messages went by BDAT and
    `data` by DATA."""
    test.assertIn(f"; {bdat} by BDAT, {data} by DATA\n", p.stdout)
    want = {k: n for k, n in (("BDAT", bdat), ("DATA", data)) if n > 0}
    jpath = peers.path(f"{tag}.jsonl")
    test.assertEqual(dict(collections.Counter(e[-1].get("transfer") for e in journal(jpath).values())), want)
    r = subprocess.run([MXPRESS, "report", "--json", jpath], capture_output=True, text=True, timeout=60)
    test.assertEqual(r.returncode, 0, r.stderr)
    test.assertEqual(json.loads(r.stdout)["delivered_by"], want, r.stdout)
    with open(peers.path(f"{tag}-summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    test.assertEqual((summary["sent_bdat"], summary["sent_data"]), (bdat, data), summary)
    metrics = peers.path(f"{tag}-metrics")
    (prom,) = [n for n in os.listdir(metrics) if n.endswith(".prom")]
    with open(os.path.join(metrics, prom), encoding="utf-8") as f:
        text = f.read()
    sent = dict(re.findall(r'^mxpress_messages_sent_total\{run="\w+",transfer="(\w+)"\} (\d+)$', text, re.M))
    test.assertEqual(sent, {"bdat": str(bdat), "data": str(data)}, text)


def disconnect_counters(maillog):
    """Postfix's "disconnect from ..." lines: the sum of each command's count
    (ehlo=, mail=, rcpt=, data=, bdat=, ...)."""
    total = {}
    with open(maillog, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "disconnect from" not in line:
                continue
            for k, v in re.findall(r" (\w+)=(\d+)(?:/\d+)?", line):
                total[k] = total.get(k, 0) + int(v)
    return total


def count_in(path, text):
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().count(text)


def wait_for(path, text, want, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and count_in(path, text) < want:
        time.sleep(0.1)


class Chunking(unittest.TestCase):
    def sink_binary(self):
        return os.path.join(os.path.dirname(MXPRESS), "mxsink")

    def test_postfix_smtpd_gets_bdat_byte_exact_and_data_when_turned_off(self):
        if os.geteuid() != 0:
            self.skipTest("postfix start needs root")
        with Peers() as peers:
            port = free_port("127.0.0.2")
            mbox, maillog = postfix_smtpd(peers, "127.0.0.2", port)
            recipients, message, codes = job(peers, 200)
            p, j = send(peers, recipients, message, f"*=127.0.0.2:{port}")
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual(len(j), 200)
            for entries in j.values():
                self.assertEqual([e["status"] for e in entries], ["delivered"], entries)
            wait_for(mbox, "\nDelivered-To: ", 200)
            arrived = mbox_arrivals(mbox)
            assert_exactly_once(self, arrived, codes)
            for m in arrived:
                self.assertIn(BODY.format(code=m["code"]), m["text"], "the body as written, dots and all")
            wait_for(maillog, "disconnect from", 1)
            counters = disconnect_counters(maillog)
            self.assertEqual(counters.get("bdat"), 200, counters)
            self.assertNotIn("data", counters, "every message by BDAT")
            assert_transfers(self, p, "run", peers, bdat=200, data=0)

            # The switch: DATA to the same server.
            recipients2, _, codes2 = job(peers, 20, name="r2.csv")
            before = counters
            p, j = send(peers, recipients2, message, f"*=127.0.0.2:{port}",
                        config=SHORT_CONFIG + "chunking = false\n", tag="off")
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual(len(j), 20)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and disconnect_counters(maillog).get("data", 0) < 20:
                time.sleep(0.1)
            counters = disconnect_counters(maillog)
            self.assertEqual(counters.get("data"), 20, counters)
            self.assertEqual(counters.get("bdat"), before.get("bdat"), counters)
            assert_transfers(self, p, "off", peers, bdat=0, data=20)

    def test_mxsink_records_bdat_exactly_once_and_as_data_would(self):
        with Peers() as peers:
            recipients, message, codes = job(peers, 3000)
            records = {}
            for chunking in (True, False):
                port = free_port("127.0.0.2")
                stats = mxsink(peers, self.sink_binary(), f"127.0.0.2:{port}", chunking=chunking)
                p, j = send(peers, recipients, message, f"*=127.0.0.2:{port}", tag=f"c{int(chunking)}")
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                self.assertEqual(len(j), 3000)
                for entries in j.values():
                    self.assertEqual([e["status"] for e in entries], ["delivered"], entries)
                sink = stop_and_read_stats(peers, stats)
                self.assertEqual(sink["messages"], 3000)
                self.assertEqual(sink["bdat_messages"], 3000 if chunking else 0, sink)
                assert_transfers(self, p, f"c{int(chunking)}", peers, bdat=sink["bdat_messages"],
                                 data=sink["messages"] - sink["bdat_messages"])
                got = read_record(record_of(stats))
                assert_exactly_once(self, got, codes)
                records[chunking] = {r["rcpt"][0]: (r["size"], r["sha256"]) for r in got}
            self.assertEqual(records[True], records[False], "BDAT and DATA deliver the same bytes")
            for line in (2, 3, 1001):
                want = subprocess.run([MXPRESS, "render", "--recipients", recipients, "--message", message,
                                       "--from", "bounce@sender.test", "--line", str(line)],
                                      capture_output=True, check=True).stdout
                self.assertEqual(records[True][f"user{line - 2}@d{(line - 2) % 7}.test"],
                                 (len(want), hashlib.sha256(want).hexdigest()), want.decode())


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    ROOT = os.path.abspath(sys.argv[2])
    run_tests(sys.argv[3:])
