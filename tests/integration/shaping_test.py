#!/usr/bin/python3
"""Shaping against a real receiver (mxsink --record, which stamps each
message with its arrival time): a domain with max_message_rate is sent at
that pace, measured where the mail arrives, while another domain routed to
the same host is not held back by it; a [provider."…"] whose domains live
on both shards gets one budget of messages and of connections (counted by
the kernel at the receiver's port), not one per shard; three providers at
once, each played by an mxsink that refuses what is over its limits, each
get their own rate and nothing refused; SIGHUP applies new limits; every
row arrives exactly once.

  shaping_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import (CODED_TEMPLATE, Peers, assert_exactly_once, free_port, mxsink, read_record,  # noqa: E402
                   record_of, run_tests, stop_and_read_stats, write_coded_recipients)

MXPRESS = None
FAST = 3000


def sanitized():
    """An ASan/TSan build takes tens of ms per transaction: two connections
    cannot carry 40 a second, so the rates are lower there (same windows)."""
    out = subprocess.run(["ldd", MXPRESS], capture_output=True, text=True).stdout
    return "libasan" in out or "libtsan" in out


def wait_for_first_delivery(journal, p, seconds=60):
    """Returns once the run's journal has a delivered line: the run is
    sending (a sanitizer build beside other tests may take seconds to start,
    and a rate measured from a fixed time after the start would be its own)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and p.poll() is None:
        if os.path.exists(journal):
            with open(journal, encoding="utf-8") as f:
                if '"status":"delivered"' in f.read():
                    return
        time.sleep(0.05)
    raise AssertionError(f"no delivery in the journal after {seconds} s (exit status {p.poll()})")


def run_counting_sessions(args, listeners, timeout):
    """Runs `args` while counting each listener's established sessions as
    the kernel sees them (ss, every 20 ms); listeners = {key: "addr:port"}.
    Returns (completed process, {key: most sessions at once})."""
    most, stop = {key: 0 for key in listeners}, threading.Event()

    def watch():
        while not stop.is_set():
            for key, listen in listeners.items():
                out = subprocess.run(["ss", "-Htn", "state", "established", "src", listen],
                                     capture_output=True, text=True).stdout
                most[key] = max(most[key], sum(1 for line in out.splitlines() if line.strip()))
            time.sleep(0.02)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout), most
    finally:
        stop.set()
        watcher.join()


def most_within_a_second(times):
    """The most arrivals (sorted times, seconds) in any window of 1 s."""
    most, j = 0, 0
    for i in range(len(times)):
        while j < len(times) and times[j] - times[i] <= 1.0:
            j += 1
        most = max(most, j - i)
    return most


class Shaping(unittest.TestCase):
    def test_a_paced_domain_arrives_at_its_rate_and_holds_nobody_else_back(self):
        RATE = 10 if sanitized() else 40  # per second, for slow.test
        SLOW = int(RATE * 11.5)  # 11.5 s of mail at RATE: the window the rate is measured over
        with Peers() as peers:
            port = free_port("127.0.0.2")
            stats = mxsink(peers, os.path.join(os.path.dirname(MXPRESS), "mxsink"), f"127.0.0.2:{port}")
            # Interleaved as a real list is: the paced domain's rows come first
            # and among the others, so a reader that waited on them would stall.
            emails = [f"s{k}@slow.test" for k in range(SLOW)]
            emails[SLOW // 4:SLOW // 4] = [f"f{k}@fast.test" for k in range(FAST)]
            recipients, message, config = peers.path("r.csv"), peers.path("m.eml"), peers.path("c.toml")
            codes = write_coded_recipients(recipients, emails)
            with open(message, "w") as f:
                f.write(CODED_TEMPLATE)
            with open(config, "w") as f:
                f.write(f'[domain."slow.test"]\nmax_message_rate = "{RATE}/s,burst=5"\nconnections_max = 2\n')
            summary = peers.path("s.json")
            p = subprocess.run([MXPRESS, "send", "--recipients", recipients, "--message", message, "--from",
                                "b@sender.test", "--route", f"*=127.0.0.2:{port}", "--config", config,
                                "--journal", peers.path("j.jsonl"), "--progress", "off", "--threads", "2",
                                "--summary-json", summary], capture_output=True, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr)
            # The summary says the run was held back, and by how much: all but
            # the burst of slow.test's rows waited, the last about SLOW/RATE s.
            with open(summary) as f:
                s = json.load(f)
            self.assertGreaterEqual(s["throttled"], SLOW - 10, p.stdout)
            self.assertLessEqual(s["throttled"], SLOW, p.stdout)
            self.assertGreater(s["throttle_wait_seconds"], (SLOW / RATE) * (SLOW - 10) / 2 * 0.9)
            self.assertIn(f"shaping: {s['throttled']} sends waited for a max_message_rate slot", p.stdout)
            stop_and_read_stats(peers, stats)
            arrivals = read_record(record_of(stats))
            assert_exactly_once(self, arrivals, codes)

            slow = sorted(a["t"] for a in arrivals if a["rcpt"][0].endswith("@slow.test"))
            fast = sorted(a["t"] for a in arrivals if a["rcpt"][0].endswith("@fast.test"))
            span = slow[-1] - slow[0]
            self.assertGreaterEqual(span, 10.0, "the rate is measured over at least 10 s")
            measured = (len(slow) - 5) / span
            self.assertAlmostEqual(measured / RATE, 1.0, delta=0.10,
                                   msg=f"slow.test got {measured:.2f}/s over {span:.1f} s, max_message_rate {RATE}/s")
            # Never faster than the limit over any one-second window: the rate,
            # the burst, and what two connections can have in flight.
            busiest = most_within_a_second(slow)
            self.assertLessEqual(busiest, RATE + 5 + 4, f"{busiest} messages to slow.test within 1 s")
            # The other domain on the same host flowed at full speed meanwhile.
            self.assertLess(fast[-1] - slow[0], span / 2,
                            f"fast.test's last message came {fast[-1] - slow[0]:.1f} s into slow.test's {span:.1f} s")
            print(f"slow.test: {len(slow)} messages at {measured:.2f}/s over {span:.1f} s; fast.test: {len(fast)} in "
                  f"{fast[-1] - fast[0]:.2f} s", file=sys.stderr)


    def test_sighup_applies_new_limits_within_a_second_and_a_bad_file_changes_nothing(self):
        fast_rate, slow_rate = (10, 4) if sanitized() else (40, 10)
        rows = fast_rate * 4 + slow_rate * 8
        with Peers() as peers:
            port = free_port("127.0.0.2")
            stats = mxsink(peers, os.path.join(os.path.dirname(MXPRESS), "mxsink"), f"127.0.0.2:{port}")
            recipients, message, config = peers.path("r.csv"), peers.path("m.eml"), peers.path("c.toml")
            codes = write_coded_recipients(recipients, [f"s{k}@slow.test" for k in range(rows)])
            with open(message, "w") as f:
                f.write(CODED_TEMPLATE)

            def limits(rate, connections):
                with open(config, "w") as f:
                    f.write(f'[domain."slow.test"]\nmax_message_rate = "{rate}/s,burst=2"\n'
                            f'connections_max = {connections}\n')

            limits(fast_rate, 2)
            p = subprocess.Popen([MXPRESS, "send", "--recipients", recipients, "--message", message, "--from",
                                  "b@sender.test", "--route", f"*=127.0.0.2:{port}", "--config", config,
                                  "--journal", peers.path("j.jsonl"), "--progress", "off", "--threads", "2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                wait_for_first_delivery(peers.path("j.jsonl"), p)
                time.sleep(1.0)
                # A file that does not parse: the run goes on as it was, and says why.
                with open(config, "w") as f:
                    f.write('[domain."slow.test"]\nmax_message_rate = "fast"\n')
                bad_at = time.time()
                p.send_signal(signal.SIGHUP)
                time.sleep(2.0)
                limits(slow_rate, 1)
                hup_at = time.time()
                p.send_signal(signal.SIGHUP)
                out, err = p.communicate(timeout=120)
            finally:
                if p.poll() is None:
                    p.kill()
            self.assertEqual(p.returncode, 0, err)
            self.assertIn(f"mxpress: SIGHUP: {config}:2:", err)
            self.assertIn("the configuration in force stays", err)
            self.assertIn(f"mxpress: SIGHUP: {config} reloaded", err)
            stop_and_read_stats(peers, stats)
            arrivals = read_record(record_of(stats))
            assert_exactly_once(self, arrivals, codes)
            t = sorted(a["t"] for a in arrivals)

            def rate_between(a, b):
                return sum(1 for x in t if a <= x < b) / (b - a)

            # Between the bad file and the good one, the first rate held.
            kept = rate_between(bad_at + 0.3, hup_at)
            self.assertAlmostEqual(kept / fast_rate, 1.0, delta=0.25,
                                   msg=f"{kept:.1f}/s after the bad file, max_message_rate {fast_rate}/s")
            # From a second after the good one: the new rate, over what is left.
            after = [x for x in t if x >= hup_at + 1.0]
            self.assertGreaterEqual(len(after), slow_rate * 5, "enough mail left to measure the new rate")
            measured = (len(after) - 1) / (after[-1] - after[0])
            self.assertAlmostEqual(measured / slow_rate, 1.0, delta=0.10,
                                   msg=f"{measured:.2f}/s after SIGHUP, max_message_rate {slow_rate}/s")
            busiest = most_within_a_second(after)
            self.assertLessEqual(busiest, slow_rate + 2 + 2, f"{busiest} messages within 1 s after SIGHUP")
            print(f"slow.test: {kept:.1f}/s after the bad file, {measured:.2f}/s after SIGHUP "
                  f"({len(after)} messages)", file=sys.stderr)

    def test_a_provider_budget_is_one_across_shards(self):
        rate = 6 if sanitized() else 50
        conns, rows = 3, rate * 12  # 12 s of mail at the provider's rate
        with Peers() as peers:
            port = free_port("127.0.0.2")
            stats = mxsink(peers, os.path.join(os.path.dirname(MXPRESS), "mxsink"), f"127.0.0.2:{port}")
            # 16 domains (hashed to both shards), MX hosts named as the provider's.
            lines = []
            for k in range(16):
                lines += [f"mx-host=p{k}.test,mx{k % 4}.prov.test,10"]
            lines += [f"host-record=mx{k}.prov.test,127.0.0.2" for k in range(4)]
            dns = peers.dnsmasq(lines)
            emails = [f"u{k}@p{k % 16}.test" for k in range(rows)]
            recipients, message, config = peers.path("r.csv"), peers.path("m.eml"), peers.path("c.toml")
            codes = write_coded_recipients(recipients, emails)
            with open(message, "w") as f:
                f.write(CODED_TEMPLATE)
            with open(config, "w") as f:
                f.write(f'[provider."prov"]\nmatch = ["*.prov.test"]\nmax_message_rate = "{rate}/s,burst=5"\n'
                        f"connections_max = {conns}\n")
            # The receiver's established sessions, as the kernel counts them.
            p, most = run_counting_sessions([MXPRESS, "send", "--recipients", recipients, "--message", message,
                                             "--from", "b@sender.test", "--dns", dns, "--mx-port", str(port),
                                             "--config", config, "--journal", peers.path("j.jsonl"),
                                             "--progress", "off", "--threads", "2"],
                                            {0: f"127.0.0.2:{port}"}, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr)
            stop_and_read_stats(peers, stats)
            arrivals = read_record(record_of(stats))
            assert_exactly_once(self, arrivals, codes)
            t = sorted(a["t"] for a in arrivals)
            span = t[-1] - t[0]
            measured = (len(t) - 5) / span
            self.assertAlmostEqual(measured / rate, 1.0, delta=0.10,
                                   msg=f"the provider got {measured:.2f}/s over {span:.1f} s, max_message_rate {rate}/s")
            self.assertGreater(most[0], 0, "the watcher saw no session")
            self.assertLessEqual(most[0], conns, f"{most[0]} sessions at once, connections_max {conns}")
            print(f"provider: {len(t)} messages at {measured:.2f}/s over {span:.1f} s, at most {most[0]} sessions",
                  file=sys.stderr)

    def test_three_providers_each_get_their_rate_from_sinks_that_enforce_them(self):
        # Issue 10's rehearsal: mxsink plays three providers, each on its own
        # address, each refusing (421) a client over its connection cap or
        # over its accept rate. The [provider] sections keep under both;
        # every provider's domains hash to both shards. Each provider
        # must get its rate within 10% over its >= 10 s, and no sink may
        # refuse anything.
        # A TSan build with three TSan sinks beside it cannot carry 20
        # messages a second on two cores: a tenth the rates there.
        libs = subprocess.run(["ldd", MXPRESS], capture_output=True, text=True).stdout
        k = 10 if "libtsan" in libs else 5 if sanitized() else 1
        providers = [  # name, address, domains, max_message_rate, connections_max
            ("gmail", "127.0.0.2", 6, 60 // k, 4),
            ("outlook", "127.0.0.3", 4, 30 // k, 2),
            ("yahoo", "127.0.0.4", 2, 10 // k, 1),
        ]
        burst = 2
        seconds = 12
        with Peers() as peers:
            port = free_port("127.0.0.2")
            sink = os.path.join(os.path.dirname(MXPRESS), "mxsink")
            lines, emails, config, stats = [], [], "", {}
            for name, addr, domains, rate, conns in providers:
                # The sink takes a fifth more than the provider's rate from
                # one client (a GCRA: mxpress at its rate with its bursts
                # conforms), and refuses the rest with a 421.
                prof = peers.path(f"{name}.toml")
                with open(prof, "w") as f:
                    f.write(f'[default]\nconnections_max = {conns}\n'
                            f'client_accept_rate = "{rate + max(1, rate // 5)}/s,burst=10"\n'
                            'throttle_reply = "421 4.7.0 over the accept rate of this sink"\n')
                stats[name] = mxsink(peers, sink, f"{addr}:{port}", profile=prof, seed=1)
                lines += [f"host-record=mx{m}.{name}.test,{addr}" for m in range(2)]
                for d in range(domains):
                    lines.append(f"mx-host=d{d}.{name}.test,mx{d % 2}.{name}.test,10")
                rows = rate * seconds
                emails += [(f"u{r}@d{r % domains}.{name}.test", r / rate) for r in range(rows)]
                config += (f'[provider."{name}"]\nmatch = ["*.{name}.test"]\n'
                           f'max_message_rate = "{rate}/s,burst={burst}"\nconnections_max = {conns}\n')
            dns = peers.dnsmasq(lines)
            # The providers' rows interleaved as a list would have them.
            emails = [e for e, _ in sorted(emails, key=lambda x: x[1])]
            recipients, message, cfg = peers.path("r.csv"), peers.path("m.eml"), peers.path("c.toml")
            codes = write_coded_recipients(recipients, emails)
            with open(message, "w") as f:
                f.write(CODED_TEMPLATE)
            with open(cfg, "w") as f:
                f.write('[defaults]\nretry_initial = "1s"\nretry_max = "2s"\n' + config)
            p, most = run_counting_sessions([MXPRESS, "send", "--recipients", recipients, "--message", message,
                                             "--from", "b@sender.test", "--dns", dns, "--mx-port", str(port),
                                             "--config", cfg, "--journal", peers.path("j.jsonl"),
                                             "--progress", "off", "--threads", "2"],
                                            {name: f"{addr}:{port}" for name, addr, *_ in providers}, timeout=180)
            self.assertEqual(p.returncode, 0, p.stderr)
            stop_and_read_stats(peers, stats["gmail"])  # stops every sink
            arrivals, seen = [], {}
            for name, addr, domains, rate, conns in providers:
                with open(stats[name]) as f:
                    refused = json.load(f)["refused"]
                got = read_record(record_of(stats[name]))
                arrivals += got
                t = sorted(a["t"] for a in got)
                span = t[-1] - t[0]
                seen[name] = (refused, len(t), span, (len(t) - burst) / span)
                print(f"{name}: {len(t)} messages at {seen[name][3]:.2f}/s (max {rate}/s) over {span:.1f} s, "
                      f"at most {most[name]} of {conns} sessions, refused {sum(refused.values())}", file=sys.stderr)
            for name, addr, domains, rate, conns in providers:
                refused, n, span, measured = seen[name]
                self.assertEqual(sum(refused.values()), 0, f"{name} refused: {refused}")
                self.assertGreaterEqual(span, 10.0, f"{name}: {n} messages over {span:.1f} s")
                self.assertAlmostEqual(measured / rate, 1.0, delta=0.10,
                                       msg=f"{name} got {measured:.2f}/s over {span:.1f} s, max_message_rate {rate}/s")
                self.assertGreater(most[name], 0, f"{name}: the watcher saw no session")
                self.assertLessEqual(most[name], conns, f"{name}: {most[name]} sessions, connections_max {conns}")
            assert_exactly_once(self, arrivals, codes)


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    run_tests(sys.argv[3:])
