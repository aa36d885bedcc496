#!/usr/bin/python3
"""Integration tests of MX resolution as README promises it (Delivery, MX
lookup), with c-ares on the shard's ring against a scripted DNS server that
logs every query and misbehaves on cue (scripted_peers.ScriptedDns), and
in-process SMTP servers that record what they received:

- RFC 5321 §5.1 order: preference whatever the order on the wire, random
  among equal preferences, each host's IPv4 addresses before its IPv6 ones;
- SERVFAIL, REFUSED and timeouts are retried (not bounced), and a failed
  lookup is remembered for [dns] failure_cache_ttl;
- a host's addresses are looked up once and shared by the domains that
  name it;
- without --dns, the resolver is the one /etc/resolv.conf names;
- a burst of lookups (1,000 domains at once) never holds more queries at
  the resolver than [dns] queries_in_flight_max, against a scripted resolver
  that drops what it cannot hold (scripted_peers.SheddingDns) and against
  dnsmasq; a query lost all the same is asked again within a few hundred
  milliseconds, not seconds.

  dns_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers as peers_module  # noqa: E402
from peers import (Peers, assert_exactly_once, dnsmasq_queries, free_port, journal, mxsink, read_record,  # noqa: E402
                   record_of, run_tests, shard_placement, stop_and_read_stats, unbound_queries,
                   write_coded_recipients)
from scripted_peers import ScriptedDns, ScriptedSmtp, SheddingDns  # noqa: E402

MXPRESS = None

TEMPLATE = "To: <{{email}}>\nX-Row-Code: {{code}}\nSubject: hi {{name}}\n\nhello {{name}}\n"

CONFIG = """[defaults]
retry_initial = "100ms"
retry_max = "100ms"
max_age = "20s"
connect_timeout = "2s"
"""


def send(peers, emails, port, dns=None, config=CONFIG, threads=1, wrap=(), extra=()):
    """Runs mxpress send for these recipients, MX delivery on `port` (MX
    lookup through `dns`, or resolv.conf when None, with `wrap` before the
    command); returns (process, journal by line, codes)."""
    recipients, message, cfg = peers.path("r.csv"), peers.path("m.eml"), peers.path("c.toml")
    codes = write_coded_recipients(recipients, emails)
    with open(message, "w") as f:
        f.write(TEMPLATE)
    with open(cfg, "w") as f:
        f.write(config)
    jpath = peers.path("journal.jsonl")
    if os.path.exists(jpath):
        os.unlink(jpath)
    args = list(wrap) + [MXPRESS, "send", "--recipients", recipients, "--message", message, "--from",
                         "bounce@sender.test", "--journal", jpath, "--config", cfg, "--progress", "off",
                         "--threads", str(threads), "--mx-port", str(port)] + list(extra)
    if dns:
        args += ["--dns", dns]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    return p, (journal(jpath) if os.path.exists(jpath) else {}), codes


def by_email(j):
    for line, entries in j.items():
        assert len(entries) == 1, f"line {line}: {entries}"
    return {e[0]["email"]: e[0] for e in j.values()}


class Dns(unittest.TestCase):

    def test_mx_order_preference_random_among_equals_ipv4_first(self):
        port = free_port("127.0.0.2")
        zone = {"mxa.test": {"A": ["127.0.0.2"]}, "mxb.test": {"A": ["127.0.0.3"]},
                "mx46.test": {"A": ["127.0.0.4"], "AAAA": ["::1"]}, "v46.test": {"MX": [(10, "mx46.test")]}}
        pref = [f"pref{k}.test" for k in range(20)]
        equal = [f"eq{k}.test" for k in range(40)]
        for d in pref:
            zone[d] = {"MX": [(20, "mxb.test"), (10, "mxa.test")]}  # the backup first on the wire
        for d in equal:
            zone[d] = {"MX": [(10, "mxa.test"), (10, "mxb.test")]}
        emails = [f"u@{d}" for d in pref + equal] + [f"u{k}@v46.test" for k in range(5)]
        # The A answer comes after the AAAA answer: the order is the
        # resolver's, not the network's.
        with Peers() as peers, ScriptedDns(zone, delays={("mx46.test", "A"): 0.3}) as dns, \
                ScriptedSmtp("127.0.0.2", port) as a, ScriptedSmtp("127.0.0.3", port) as b, \
                ScriptedSmtp("127.0.0.4", port) as v4, \
                ScriptedSmtp("::1", port, family=socket.AF_INET6) as v6:
            p, j, codes = send(peers, emails, port, dns.address, threads=2)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            got = by_email(j)
            self.assertEqual(collections.Counter(e["status"] for e in got.values()), {"delivered": len(emails)})
            for d in pref:
                self.assertEqual(got[f"u@{d}"]["mx"], "mxa.test", f"{d}: preference 10 first")
            hosts = collections.Counter(got[f"u@{d}"]["mx"] for d in equal)
            # Random per lookup: 40 domains all on one host has odds 2^-39.
            self.assertEqual(set(hosts), {"mxa.test", "mxb.test"}, f"equal preferences in a fixed order: {hosts}")
            self.assertEqual(len(v6.arrivals), 0, "IPv6 tried before IPv4")
            assert_exactly_once(self, a.arrivals + b.arrivals + v4.arrivals + v6.arrivals, codes)
            self.assertEqual(len(v4.arrivals), 5)

    def test_servfail_refused_and_timeout_are_retried_and_remembered(self):
        port = free_port("127.0.0.2")
        zone = {"mxa.test": {"A": ["127.0.0.2"]}}
        for d in ("servfail.test", "refused.test", "timeout.test"):
            zone[d] = {"MX": [(10, "mxa.test")]}
        # The first lookup fails in both of its rounds ([dns] tries = 2: with
        # one server, c-ares asks it again after a SERVFAIL or REFUSED too).
        script = {("servfail.test", "MX"): ["servfail"] * 2, ("refused.test", "MX"): ["refused"] * 2,
                  ("timeout.test", "MX"): ["drop"] * 2}
        # The failure is remembered 600 ms while the recipients retry every
        # 100 ms: the next query comes after the 600 ms, not at the first retry.
        config = CONFIG + '[dns]\ntimeout = "500ms"\ntries = 2\nfailure_cache_ttl = "600ms"\n'
        emails = [f"u{k}@{d}" for d in ("servfail.test", "refused.test", "timeout.test") for k in range(3)]
        with Peers() as peers, ScriptedDns(zone, script=script) as dns, ScriptedSmtp("127.0.0.2", port) as mx:
            p, j, codes = send(peers, emails, port, dns.address, config=config)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            got = by_email(j)
            for e, o in got.items():
                self.assertEqual(o["status"], "delivered", o)
            assert_exactly_once(self, mx.arrivals, codes)
            self.assertNotIn(" 0 deferrals", p.stdout, "the failed lookups deferred the recipients")
            for d in ("servfail.test", "refused.test", "timeout.test"):
                q = dns.queries(d, "MX")
                failed_queries = 2
                self.assertEqual(len(q), failed_queries + 1, f"{d}: one lookup failed, the next one answered: {q}")
                gap = q[-1] - q[-2]
                self.assertGreaterEqual(gap, 0.5, f"{d}: asked again {gap:.3f} s after a failure remembered 600 ms")

    def test_host_addresses_are_looked_up_once_for_every_domain(self):
        port = free_port("127.0.0.2")
        zone = {"mxs.test": {"A": ["127.0.0.2"]}}
        domains = [f"s{k}.test" for k in range(8)]
        for d in domains:
            zone[d] = {"MX": [(10, "mxs.test")]}
        # The MX answers come 100 ms apart: each domain's lookup finds the
        # host's addresses from the first one, not a lookup still under way.
        # (Answers up to 0.7 s late: a first timeout of 2 s, so that c-ares
        # does not ask again meanwhile.)
        delays = {(d, "MX"): 0.1 * k for k, d in enumerate(domains)}
        config = CONFIG + '[dns]\ntimeout = "2s"\n'
        with Peers() as peers, ScriptedDns(zone, delays=delays) as dns, ScriptedSmtp("127.0.0.2", port) as mx:
            p, j, codes = send(peers, [f"u{k}@{d}" for d in domains for k in range(2)], port, dns.address,
                               config=config)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            assert_exactly_once(self, mx.arrivals, codes)
            for d in domains:
                self.assertEqual(len(dns.queries(d, "MX")), 1, d)
            self.assertEqual(len(dns.queries("mxs.test", "A")), 1, "the host's A record asked more than once")
            self.assertEqual(len(dns.queries("mxs.test", "AAAA")), 1, "the host's AAAA record asked more than once")

    def test_without_dns_option_the_resolver_is_the_one_resolv_conf_names(self):
        port = free_port("127.0.0.2")
        if os.geteuid() != 0:
            self.skipTest("needs root: a private mount namespace, and port 53")
        if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
            self.skipTest("unshare -m is not allowed here")
        zone = {"rc.test": {"MX": [(10, "mxa.test")]}, "mxa.test": {"A": ["127.0.0.2"]}}
        with Peers() as peers, ScriptedDns(zone, host="127.0.0.35", port=53) as dns, \
                ScriptedSmtp("127.0.0.2", port) as mx:
            conf = peers.path("resolv.conf")
            with open(conf, "w") as f:
                f.write("nameserver 127.0.0.35\noptions timeout:1 attempts:2\n")
            # mxpress sees `conf` as /etc/resolv.conf; nothing else does.
            wrap = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', conf]
            p, j, codes = send(peers, ["u1@rc.test", "u2@rc.test"], port, wrap=wrap)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual({e["status"] for e in by_email(j).values()}, {"delivered"}, j)
            self.assertEqual(len(dns.queries("rc.test", "MX")), 1)
            assert_exactly_once(self, mx.arrivals, codes)


# Bursts: 1,000 domains whose MX hosts are four names on one mxsink address.
BURST_DOMAINS = 1000
# The queries a run may have at the resolver at once: [dns]
# queries_in_flight_max's default, whatever the number of shards.
QUERIES_IN_FLIGHT_MAX = 128
# A lookup stalled by a lost query: with the old 2 s first timeout a run
# waited at least this long more; with 300 ms it is asked again well before.
STALL_S = 1.5


def burst_zone(domains):
    zone = {f"mx{i}.burst.test": {"A": ["127.0.0.2"]} for i in range(4)}
    for k, d in enumerate(domains):
        zone[d] = {"MX": [(10, f"mx{k % 4}.burst.test")]}
    return zone


class DnsBurst(unittest.TestCase):
    """A burst of lookups against resolvers that drop what they cannot hold."""

    def send_burst(self, peers, dns, domains, threads, extra_config=""):
        """One recipient per domain to mxsink; returns (process, summary, codes,
        what mxsink received, read once it stopped)."""
        port = free_port("127.0.0.2")
        stats = mxsink(peers, os.path.join(os.path.dirname(MXPRESS), "mxsink"), f"127.0.0.2:{port}")
        summary = peers.path("summary.json")
        p, j, codes = send(peers, [f"u@{d}" for d in domains], port, dns, config=CONFIG + extra_config,
                           threads=threads, extra=["--summary-json", summary])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(collections.Counter(e["status"] for e in by_email(j).values()), {"delivered": len(domains)})
        with open(summary) as f:
            s = json.load(f)
        stop_and_read_stats(peers, stats)
        return p, s, codes, read_record(record_of(stats))

    def assert_each_question_once(self, queries, domains, threads):
        """queries: Counter of (type, name) read by the resolver. A domain
        lives on one shard: its MX question is asked once. Each shard asks
        for each MX host's addresses once (its own cache)."""
        again = {q: n for q, n in queries.items() if n > (1 if q[0] == "MX" else threads)}
        self.assertEqual(again, {}, f"{len(again)} questions asked again")
        self.assertEqual(sum(1 for q in queries if q[0] == "MX"), len(domains))

    def test_a_burst_never_holds_more_queries_at_the_resolver_than_it_takes(self):
        # The resolver holds 150 queries (each answered after 20 ms) and
        # drops the rest: mxpress must never send it more than 128 at once,
        # with 2 shards as with 1 (the budget is the run's), and so never
        # wait for a lost query.
        domains = [f"d{k:04d}.burst.test" for k in range(BURST_DOMAINS)]
        capacity = 150
        with Peers() as peers, SheddingDns(burst_zone(domains), capacity=capacity, delay=0.02) as dns:
            p, s, codes, record = self.send_burst(peers, dns.address, domains, threads=2)
            log = dns.log
            assert_exactly_once(self, record, codes)
        first = [q for q in log if not q["retransmission"]]
        dropped = [q for q in first if q["dropped"] == "capacity"]
        self.assertEqual(len(dropped), 0, f"{len(dropped)} queries sent while the resolver held {capacity}: "
                         f"first {dropped[:3]}")
        retried = [q for q in log if q["retransmission"]]
        self.assertEqual(retried, [], "queries asked again: a lost or late answer stalled the run")
        span = log[-1]["t"] - log[0]["t"]
        self.assertLess(span, STALL_S, f"the lookups took {span:.2f} s")
        # Each shard caches the hosts it looked up: A and AAAA per host for
        # each shard that has a domain there (domain k's host is mx{k % 4}).
        shard = shard_placement(domains, 2)
        expected = BURST_DOMAINS + 2 * len({(shard[d], k % 4) for k, d in enumerate(domains)})
        self.assertEqual(len(first), expected, "one MX query per domain, A and AAAA per MX host and shard")
        self.assertEqual(s["dns_queries"], expected)
        self.assertEqual(s["dns_retries"], 0)
        self.assertLessEqual(s["dns_in_flight_peak"], QUERIES_IN_FLIGHT_MAX)
        self.assertIn(f"dns: {expected} queries, 0 asked again", p.stdout)

    def test_a_lost_query_is_asked_again_within_a_few_hundred_ms(self):
        # The resolver drops the first transmission of a seeded 4% of the
        # questions, as a lossy path or a shedding resolver would: each must
        # be asked again after the first timeout (300 ms, plus up to a 50 ms
        # tick), not after seconds, and every recipient still gets its mail.
        domains = [f"l{k:03d}.burst.test" for k in range(300)]
        with Peers() as peers, SheddingDns(burst_zone(domains), capacity=100_000, delay=0.002, loss=0.04,
                                           seed=7) as dns:
            start = time.monotonic()
            p, s, codes, record = self.send_burst(peers, dns.address, domains, threads=2)
            wall = time.monotonic() - start
            log = dns.log
            assert_exactly_once(self, record, codes)
        lost = [q for q in log if q["dropped"] == "loss"]
        self.assertGreaterEqual(len(lost), 5, "the seed should lose a few questions")
        gaps = []
        for q in lost:
            again = [r["t"] for r in log if r["retransmission"] and r["name"] == q["name"] and r["type"] == q["type"]
                     and r["t"] > q["t"]]
            self.assertTrue(again, f"{q['name']} {q['type']} never asked again")
            gaps.append(again[0] - q["t"])
        self.assertLess(max(gaps), 0.75, f"a lost query was asked again after {max(gaps):.2f} s (all: "
                        + ", ".join(f"{g:.2f}" for g in sorted(gaps)) + ")")
        self.assertGreaterEqual(min(gaps), 0.25, "asked again before the first timeout")
        self.assertGreaterEqual(s["dns_retries"], len(lost))
        self.assertLess(wall, 2 * STALL_S, f"the run took {wall:.2f} s")

    def test_a_burst_through_dnsmasq_is_answered_without_a_retry(self):
        # The real local resolver, made as busy as it is beside a loaded
        # sender: stopped 30 ms of every 50 (SIGSTOP/SIGCONT), so queries
        # wait in its socket's own receive buffer (net.core.rmem_default:
        # some hundreds of datagrams) and the kernel drops the rest. 1,000
        # domains over 4 shards: sending every shard's lookups at once lost
        # some (a question asked again, seconds later); within the run's
        # budget of 128 none is lost.
        domains = [f"d{k:04d}.burst.test" for k in range(BURST_DOMAINS)]
        threads = 4
        with Peers() as peers:
            lines = [f"mx-host={d},mx{k % 4}.burst.test,10" for k, d in enumerate(domains)]
            lines += [f"host-record=mx{i}.burst.test,127.0.0.2" for i in range(4)]
            qlog = peers.path("dnsmasq-queries.log")
            dns = peers.dnsmasq(lines, query_log=qlog)
            dnsmasq = peers.dnsmasq_proc  # not an earlier try that lost its port
            port = int(dns.rsplit(":", 1)[1])
            drops_before = udp_socket_drops(port)
            with busy(dnsmasq.pid, stopped=0.03, running=0.02):
                p, s, codes, record = self.send_burst(peers, dns, domains, threads=threads)
            drops = udp_socket_drops(port) - drops_before
            assert_exactly_once(self, record, codes)
            time.sleep(0.2)  # dnsmasq writes its log as it goes
            queries = collections.Counter(q for q in dnsmasq_queries(qlog) if q[1].endswith(".burst.test"))
        # A dropped datagram never reaches dnsmasq (nor its log): the kernel
        # counts it against the socket.
        self.assertEqual(drops, 0, f"dnsmasq's socket dropped {drops} queries (its receive buffer was full)")
        self.assert_each_question_once(queries, domains, threads)
        self.assertEqual(s["dns_retries"], 0)
        self.assertLessEqual(s["dns_in_flight_peak"], QUERIES_IN_FLIGHT_MAX)

    def test_a_burst_through_unbound_is_answered_once_per_question(self):
        # The second real resolver (the benchmarks' for many domains): its
        # answers are laid out unlike dnsmasq's (authority and TTLs from
        # its local zone), and 1,000 domains over 4 shards must each be
        # asked once, every host's addresses once per shard, none again,
        # and every recipient get its mail.
        unbound_binary = peers_module.unbound_binary()
        if unbound_binary is None:
            self.skipTest(f"no unbound at {peers_module.UNBOUND_BINARY} or on PATH (scripts/setup unpacks it)")
        domains = [f"d{k:04d}.burst.test" for k in range(BURST_DOMAINS)]
        threads = 4
        with Peers() as peers:
            records = [(d, "MX", f"10 mx{k % 4}.burst.test.") for k, d in enumerate(domains)]
            records += [(f"mx{i}.burst.test", "A", "127.0.0.2") for i in range(4)]
            qlog = peers.path("unbound-queries.log")
            dns = peers.unbound(records, query_log=qlog)
            port = int(dns.rsplit(":", 1)[1])
            drops_before = udp_socket_drops(port)
            p, s, codes, record = self.send_burst(peers, dns, domains, threads=threads)
            drops = udp_socket_drops(port) - drops_before
            assert_exactly_once(self, record, codes)
            time.sleep(0.2)  # unbound writes its log as it goes
            queries = collections.Counter(q for q in unbound_queries(qlog) if q[1].endswith(".burst.test"))
        self.assertEqual(drops, 0, f"unbound's socket dropped {drops} queries")
        self.assert_each_question_once(queries, domains, threads)
        shard = shard_placement(domains, threads)
        expected = len(domains) + 2 * len({(shard[d], k % 4) for k, d in enumerate(domains)})
        self.assertEqual(sum(queries.values()), expected, "one MX query per domain, A and AAAA per MX host and shard")
        self.assertEqual(s["dns_queries"], expected)
        self.assertEqual(s["dns_retries"], 0)


def udp_socket_drops(port):
    """Datagrams the kernel dropped for the UDP socket bound to
    127.0.0.1:port (its receive buffer was full): /proc/net/udp's last column."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local:
                return int(fields[-1])
    raise AssertionError(f"no UDP socket on 127.0.0.1:{port}")


class busy:
    """Stops and continues a process we started (by its PID), `stopped`
    then `running` seconds, until the block ends; it is left running."""

    def __init__(self, pid, stopped, running):
        self.pid, self.stopped, self.running = pid, stopped, running
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._cycle, daemon=True)

    def _cycle(self):
        while not self._stop.is_set():
            os.kill(self.pid, signal.SIGSTOP)
            self._stop.wait(self.stopped)
            os.kill(self.pid, signal.SIGCONT)
            self._stop.wait(self.running)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        os.kill(self.pid, signal.SIGCONT)

if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    run_tests(sys.argv[3:])
