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
- without --dns, the resolver is the one /etc/resolv.conf names.

  dns_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import collections
import os
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import Peers, assert_exactly_once, free_port, journal, run_tests, write_coded_recipients  # noqa: E402
from scripted_peers import ScriptedDns, ScriptedSmtp  # noqa: E402

MXPRESS = None

TEMPLATE = "To: <{{email}}>\nX-Row-Code: {{code}}\nSubject: hi {{name}}\n\nhello {{name}}\n"

CONFIG = """[defaults]
retry_initial = "100ms"
retry_max = "100ms"
max_age = "20s"
connect_timeout = "2s"
"""


def send(peers, emails, port, dns=None, config=CONFIG, threads=1, wrap=()):
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
                         "--threads", str(threads), "--mx-port", str(port)]
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
        delays = {(d, "MX"): 0.1 * k for k, d in enumerate(domains)}
        with Peers() as peers, ScriptedDns(zone, delays=delays) as dns, ScriptedSmtp("127.0.0.2", port) as mx:
            p, j, codes = send(peers, [f"u{k}@{d}" for d in domains for k in range(2)], port, dns.address)
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


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    run_tests(sys.argv[3:])
