#!/usr/bin/python3
"""Suppression lists against a real receiver (mxsink --record): rows on a
--suppress list never arrive, every other row arrives exactly once, the
journal says `suppressed` (final: --resume without the list sends none of
them), and `mxpress suppressions` turns an earlier journal's hard bounces
into such a list.

  suppression_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import (CODED_TEMPLATE, Peers, assert_exactly_once, free_port, journal, mxsink, read_record,  # noqa: E402
                   record_of, run_tests, stop_and_read_stats, write_coded_recipients)

MXPRESS = None


class Suppression(unittest.TestCase):
    def test_suppressed_rows_never_arrive_and_stay_final(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            stats = mxsink(peers, os.path.join(os.path.dirname(MXPRESS), "mxsink"), f"127.0.0.2:{port}")
            emails = [f"u{k}@s.test" for k in range(40)] + ["u40@xn--bcher-kva.test", "U41@s.test"]
            recipients, message = peers.path("r.csv"), peers.path("m.eml")
            codes = write_coded_recipients(recipients, emails)
            with open(message, "w") as f:
                f.write(CODED_TEMPLATE)

            # An earlier run's journal: hard bounces (5xx; a null MX's 5.1.10 with code 0)
            # become the list; a deferral that expired and a delivery do not.
            earlier = peers.path("earlier.jsonl")
            with open(earlier, "w") as f:
                for line, email, status, code, enhanced in (
                        (2, "u6@S.test", "bounced", 550, "5.1.1"), (3, "u7@s.test", "bounced", 0, "5.1.10"),
                        (4, "u8@s.test", "expired", 451, "4.3.0"), (5, "u9@s.test", "delivered", 250, "2.0.0"),
                        (6, "u6@s.test", "bounced", 550, "5.1.1")):
                    f.write(json.dumps({"line": line, "email": email, "status": status, "code": code,
                                        "enhanced": enhanced, "reply": "x", "attempts": 1}) + "\n")
            hard = peers.path("hard.txt")
            p = subprocess.run([MXPRESS, "suppressions", earlier], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
            with open(hard, "w") as f:
                f.write(p.stdout)
            listed = [l for l in p.stdout.splitlines() if l and not l.startswith("#")]
            self.assertEqual(listed, ["u6@s.test", "u7@s.test"], p.stdout)

            # One address per line: the domain in any case, an IDN in U-labels
            # (matches its A-label row); the local part is exact (U2 is not u2).
            plain = peers.path("plain.txt")
            with open(plain, "w") as f:
                f.write("# unsubscribed\nu1@S.TEST\r\nU2@s.test\n\nu40@bücher.test\nnot an address\n")
            csv = peers.path("list.csv")
            with open(csv, "w") as f:
                f.write('name,Email\n"Three, Ms",u3@s.test\nFour,u4@s.test\n')
            suppressed = {"u1@s.test", "u3@s.test", "u4@s.test", "u6@s.test", "u7@s.test", "u40@xn--bcher-kva.test"}

            jpath = peers.path("j.jsonl")
            send = [MXPRESS, "send", "--recipients", recipients, "--message", message, "--from", "b@sender.test",
                    "--route", f"*=127.0.0.2:{port}", "--journal", jpath, "--progress", "off", "--threads", "2"]
            p = subprocess.run(send + ["--suppress", plain, "--suppress", csv, "--suppress", hard, "--summary-json",
                                       peers.path("summary.json")], capture_output=True, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn(f"{len(emails) - len(suppressed)} delivered", p.stdout)
            self.assertIn(f"{len(suppressed)} suppressed", p.stdout)
            self.assertIn("plain.txt:6: 1 line(s) that are not an address passed over", p.stderr)
            with open(peers.path("summary.json")) as f:
                self.assertEqual(json.load(f)["suppressed"], len(suppressed))
            expected = {e: c for e, c in codes.items() if e not in suppressed}
            j = journal(jpath)
            self.assertEqual(len(j), len(emails))
            for (entry,) in j.values():
                want = "suppressed" if entry["email"] in suppressed else "delivered"
                self.assertEqual(entry["status"], want, entry)

            # Final: a resumed run without the lists sends nothing more.
            p = subprocess.run(send + ["--resume"], capture_output=True, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn(f"{len(emails)} already final", p.stdout)

            # A list that cannot be read: exit 2 naming it, nothing sent, no journal.
            bad = [a if a != jpath else peers.path("j2.jsonl") for a in send]
            p = subprocess.run(bad + ["--suppress", peers.path("missing.txt")], capture_output=True, text=True,
                               timeout=60)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("missing.txt: cannot open suppression list", p.stderr)
            self.assertFalse(os.path.exists(peers.path("j2.jsonl")))

            # At the receiver, over all three runs: each unsuppressed row exactly once, nothing else.
            sink = stop_and_read_stats(peers, stats)
            self.assertEqual(sink["messages"], len(expected))
            assert_exactly_once(self, read_record(record_of(stats)), expected)


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    run_tests(sys.argv[3:])
