#!/usr/bin/python3
"""mxsink --profile: the sink plays a provider, and mxpress (built-in rules,
no shaping configured) copes with it:

- a domain accepted at 20/s with Gmail's "421 4.7.28 ... unusual rate"
  beyond it: the built-in rule gmail-rate fires (journal and summary), and
  every row still arrives exactly once;
- the same --seed gives the same refusals (each row's outcome and attempts,
  and mxsink's "refused" counts), another seed other ones;
- connections_max per client address is enforced with "421 4.7.0 too many
  connections" at the greeting, and mxpress still delivers everything.

  sink_profile_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import (CODED_TEMPLATE, Peers, assert_exactly_once, free_port, mxsink, read_record,  # noqa: E402
                   record_of, run_tests, stop_and_read_stats, write_coded_recipients)

MXPRESS = None
# Retries within seconds, so that the refused rows arrive in the test's time;
# nothing else: the built-in rules and no shaping.
RETRY = '[defaults]\nretry_initial = "1s"\nretry_max = "2s"\n'


def journal_rows(path):
    """{email: (status, attempts, code)} of the journal's row lines."""
    out = {}
    with open(path) as f:
        for line in f:
            j = json.loads(line)
            if "line" in j:
                out[j["email"]] = (j["status"], j.get("attempts"), j.get("code"))
    return out


def rule_events(path):
    with open(path) as f:
        return [json.loads(line) for line in f if '"event":"rule"' in line]


class SinkProfile(unittest.TestCase):
    def send(self, peers, port, emails, profile, seed=1, tag="", extra_config=""):
        """Runs mxpress against a fresh mxsink playing `profile`; returns
        (process, stats, arrivals, codes, journal)."""
        sink = os.path.join(os.path.dirname(MXPRESS), "mxsink")
        prof = peers.path(f"profile{tag}.toml")
        with open(prof, "w") as f:
            f.write(profile)
        stats = mxsink(peers, sink, f"127.0.0.2:{port}", profile=prof, seed=seed)
        recipients, message, config = peers.path(f"r{tag}.csv"), peers.path("m.eml"), peers.path(f"c{tag}.toml")
        journal = peers.path(f"j{tag}.jsonl")
        codes = write_coded_recipients(recipients, emails)
        with open(message, "w") as f:
            f.write(CODED_TEMPLATE)
        with open(config, "w") as f:
            f.write(RETRY + extra_config)
        p = subprocess.run([MXPRESS, "send", "--recipients", recipients, "--message", message, "--from",
                            "b@sender.test", "--route", f"*=127.0.0.2:{port}", "--config", config, "--journal",
                            journal, "--progress", "off", "--threads", "1"], capture_output=True, text=True,
                           timeout=180)
        s = stop_and_read_stats(peers, stats)
        return p, s, read_record(record_of(stats)), codes, journal

    def test_a_throttled_domain_fires_the_builtin_rate_rule_and_everything_arrives_once(self):
        # Three connections, as a provider allows a sender it does not know:
        # mxpress's default of 10 would bring ten throttling replies at once,
        # each three of them a firing of the rule.
        profile = ('[default]\nconnections_max = 3\n'
                   '[domain."gmail.test"]\naccept_rate = "20/s,burst=5"\n'
                   'throttle_reply = "421 4.7.28 [127.0.0.2] Our system has detected an unusual rate of '
                   'unsolicited mail originating from your IP address."\n')
        emails = [f"g{k}@gmail.test" for k in range(80)]
        with Peers() as peers:
            p, stats, arrivals, codes, journal = self.send(peers, free_port("127.0.0.2"), emails, profile)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            assert_exactly_once(self, arrivals, codes)
            self.assertGreaterEqual(stats["refused"]["throttle"], 3, stats)
            ev = rule_events(journal)
            self.assertTrue(ev, "no rule fired")
            self.assertEqual({(e["rule"], e["scope"], e["action"]) for e in ev},
                             {("gmail-rate", "domain:gmail.test", "scale")})
            self.assertIn("4.7.28", ev[0]["reply"])
            self.assertIn("rule gmail-rate: domain:gmail.test scaled", p.stdout)
            print(f"refused {stats['refused']}, rule fired {len(ev)} times", file=sys.stderr)

    def test_the_same_seed_gives_the_same_refusals(self):
        # Small enough that the longest chain of retried 4xx is a few seconds
        # (it was 50 s at 200 rows and 35% 4xx, 130 s under TSan).
        profile = ('[default]\nrcpt_4xx = 0.1\nrcpt_5xx = 0.05\ndata_4xx = 0.1\ndata_5xx = 0.05\n'
                   'data_4xx_reply = "451 4.3.0 Mail server temporarily rejected message"\n')
        emails = [f"r{k}@seed{k % 3}.test" for k in range(100)]
        runs = []
        with Peers() as peers:
            for tag, seed in (("a", 42), ("b", 42), ("c", 43)):
                p, stats, arrivals, codes, journal = self.send(peers, free_port("127.0.0.2"), emails, profile,
                                                               seed=seed, tag=tag)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                rows = journal_rows(journal)
                bounced = {e for e, r in rows.items() if r[0] == "bounced"}
                self.assertTrue(bounced, "rcpt_5xx bounced nobody")
                self.assertEqual({e for e, r in rows.items() if r[0] == "delivered"}, set(emails) - bounced)
                assert_exactly_once(self, arrivals, {e: c for e, c in codes.items() if e not in bounced})
                runs.append((rows, stats["refused"]))
        (rows_a, refused_a), (rows_b, refused_b), (rows_c, refused_c) = runs
        self.assertGreater(refused_a["rcpt_4xx"] + refused_a["data_4xx"], 8, refused_a)
        self.assertEqual(rows_a, rows_b, "same seed, other outcomes or attempts")
        self.assertEqual(refused_a, refused_b)
        self.assertNotEqual(rows_a, rows_c, "another seed, the same outcomes")

    def test_connections_max_per_client_is_enforced_and_everything_arrives(self):
        profile = '[default]\nconnections_max = 2\n'
        emails = [f"c{k}@d{k % 5}.test" for k in range(400)]
        with Peers() as peers:
            p, stats, arrivals, codes, journal = self.send(peers, free_port("127.0.0.2"), emails, profile,
                                                           extra_config="connections_max = 6\n")
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            assert_exactly_once(self, arrivals, codes)
            self.assertGreaterEqual(stats["refused"]["connections"], 1, stats)
            self.assertEqual(stats["messages"], len(emails))


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    run_tests(sys.argv[3:])
