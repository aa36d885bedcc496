#!/usr/bin/python3
"""Integration tests of TLS delivery against real peers on loopback: Postfix's
smtpd with STARTTLS, mxsink with STARTTLS and implicit TLS (and its faults),
smtp-sink without STARTTLS, an aiosmtpd submission server with AUTH for
relay mode, and scripted_peers.ScriptedSmtp where the test needs a chosen
range of TLS versions or to see each handshake's SNI (TLS 1.2 minimum, SNI,
port 465). Every policy decision of issue 4 has a case here.

  tls_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import collections
import json
import os
import ssl
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import (SHORT_CONFIG as SHORT, Peers, assert_exactly_once, certs, dump_arrivals,  # noqa: E402
                   free_port, journal, mbox_arrivals, mxsink, postfix_smtpd, read_record, record_of,
                   relay_arrivals, relay_messages, relay_peer, run_tests, stop_and_read_stats,
                   write_coded_recipients)
from scripted_peers import ScriptedSmtp  # noqa: E402

MXPRESS = None
ROOT = None


def job(peers, count, domains=("a.test", "b.test")):
    """Recipients user{k}@{domain} with their own codes; returns (recipients,
    message, {email: code}) (see peers.assert_exactly_once)."""
    recipients, message = peers.path("r.csv"), peers.path("m.eml")
    codes = write_coded_recipients(recipients, [f"user{k}@{domains[k % len(domains)]}" for k in range(count)])
    with open(message, "w", encoding="utf-8") as f:
        f.write("From: News <news@sender.test>\nTo: <{{email}}>\nX-Row-Code: {{code}}\nSubject: Hello {{name}}\n\n"
                "Dear {{name}},\n.\nyour code is {{code}}\nbye\n")
    return recipients, message, codes


def only(codes, domain):
    return {e: c for e, c in codes.items() if e.endswith("@" + domain)}


def send(peers, recipients, message, args, config=SHORT, env=None):
    cfg = peers.path("c.toml")
    with open(cfg, "w") as f:
        f.write(config)
    jpath = peers.path("journal.jsonl")
    if os.path.exists(jpath):
        os.unlink(jpath)
    summary = peers.path("summary.json")
    cmd = [MXPRESS, "send", "--recipients", recipients, "--message", message, "--from", "bounce@sender.test",
           "--journal", jpath, "--config", cfg, "--progress", "off", "--threads", "2",
           "--summary-json", summary] + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    s = None
    if os.path.exists(summary):
        with open(summary) as f:
            s = json.load(f)
    return p, jpath, s


class Tls(unittest.TestCase):
    def sink_binary(self):
        return os.path.join(os.path.dirname(MXPRESS), "mxsink")

    def test_postfix_smtpd_receives_everything_over_starttls(self):
        if os.geteuid() != 0:
            self.skipTest("postfix start needs root")
        with Peers() as peers:
            port = free_port("127.0.0.2")
            mbox, maillog = postfix_smtpd(peers, "127.0.0.2", port)
            recipients, message, codes = job(peers, 300)
            p, jpath, s = send(peers, recipients, message, ["--route", f"*=127.0.0.2:{port}"])
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            j = journal(jpath)
            self.assertEqual(len(j), 300)
            for entries in j.values():
                self.assertEqual(len(entries), 1)
                self.assertEqual(entries[0]["status"], "delivered", entries[0])
                self.assertEqual(entries[0]["tls"], "TLSv1.3", entries[0])
            self.assertGreaterEqual(s["tls_handshakes"], 1)
            # What Postfix delivered: every recipient once, each received
            # "with ESMTPS" (Postfix's own record of a TLS session).
            # Postfix delivers after it accepted: wait (at most 20 s) for the mbox.
            deadline = time.monotonic() + 20
            text = ""
            while time.monotonic() < deadline and text.count("\nDelivered-To: ") < 300:
                time.sleep(0.1)
                with open(mbox, encoding="utf-8", errors="replace") if os.path.exists(mbox) else open(os.devnull) as f:
                    text = f.read()
            arrived = mbox_arrivals(mbox)
            assert_exactly_once(self, arrived, codes)
            for m in arrived:
                self.assertIn("with ESMTPS", m["text"])
                self.assertIn("using TLSv1.3", m["text"])
                self.assertIn(f"your code is {m['code']}\n", m["text"])

    def test_mxsink_starttls_resumes_sessions(self):
        with Peers() as peers:
            c = certs(peers)
            port = free_port("127.0.0.2")
            stats = mxsink(peers, self.sink_binary(), f"127.0.0.2:{port}", tls=(f"{c}/mx.crt", f"{c}/mx.key"))
            recipients, message, codes = job(peers, 5000, domains=tuple(f"d{k}.test" for k in range(20)))
            # Few messages per connection: many connections, most of them resumed.
            cfg = SHORT + "messages_per_connection_max = 100\n"
            p, jpath, s = send(peers, recipients, message, ["--route", f"*=127.0.0.2:{port}"], config=cfg)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            j = journal(jpath)
            self.assertEqual(collections.Counter(e[0]["tls"] for e in j.values()), {"TLSv1.3": 5000})
            sink = stop_and_read_stats(peers, stats)
            self.assertEqual(sink["messages"], 5000)
            assert_exactly_once(self, read_record(record_of(stats)), codes)
            self.assertEqual(s["tls_handshakes"], sink["tls_handshakes"])
            self.assertEqual(s["tls_resumed"], sink["tls_resumed"], "both ends agree on what was resumed")
            self.assertGreaterEqual(s["tls_handshakes"], 50)
            # One full handshake per pool (one pool per shard here); the rest resume.
            self.assertGreaterEqual(s["tls_resumed"], s["tls_handshakes"] - 2, s)
            self.assertIn(f"tls: {s['tls_handshakes']} handshakes, {s['tls_resumed']} resumed", p.stdout)

    def test_required_never_sends_to_a_server_without_starttls(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            dump = peers.smtp_sink("127.0.0.2", port)  # no STARTTLS offered
            recipients, message, codes = job(peers, 20)
            cfg = SHORT + '\n[domain."a.test"]\ntls = "required"\n'
            p, jpath, s = send(peers, recipients, message, ["--route", f"*=127.0.0.2:{port}"], config=cfg)
            self.assertEqual(p.returncode, 0, p.stderr)
            j = journal(jpath)
            for entries in j.values():
                e = entries[0]
                if e["email"].endswith("@a.test"):
                    self.assertEqual(e["status"], "expired", e)
                    self.assertEqual(e["enhanced"], "4.7.4", e)
                    self.assertIn("does not offer STARTTLS", e["reply"])
                    self.assertGreaterEqual(e["attempts"], 2, "deferred, then tried again before expiring")
                else:
                    # Same MX, default policy (opportunistic): plaintext is fine.
                    self.assertEqual(e["status"], "delivered", e)
                    self.assertEqual(e["tls"], "none")
            # No plaintext message for the required domain; b.test's once each.
            assert_exactly_once(self, dump_arrivals(dump), only(codes, "b.test"))

    def test_verify_defers_with_the_verification_reason(self):
        with Peers() as peers:
            c = certs(peers)
            good, selfsigned = free_port("127.0.0.2"), free_port("127.0.0.3")
            sinks = [mxsink(peers, self.sink_binary(), f"127.0.0.2:{good}", tls=(f"{c}/mx.crt", f"{c}/mx.key")),
                     mxsink(peers, self.sink_binary(), f"127.0.0.3:{selfsigned}", tls=(f"{c}/self.crt", f"{c}/self.key"))]
            dns = peers.dnsmasq(["mx-host=ok.test,mx.test,10", "host-record=mx.test,127.0.0.2",
                                 "mx-host=wrongname.test,other.test,10", "host-record=other.test,127.0.0.2",
                                 "mx-host=untrusted.test,mx.test,10"])
            recipients, message, codes = job(peers, 30, domains=("ok.test", "wrongname.test", "untrusted.test"))
            cfg = SHORT + f'tls = "verify"\ntls_ca_file = "{c}/ca.crt"\n'
            # untrusted.test's MX answers on the other port: route it there.
            p, jpath, s = send(peers, recipients, message,
                               ["--dns", dns, "--mx-port", str(good), "--route",
                                f"untrusted.test=127.0.0.3:{selfsigned}"], config=cfg)
            self.assertEqual(p.returncode, 0, p.stderr)
            seen = collections.Counter()
            for entries in journal(jpath).values():
                e = entries[0]
                domain = e["email"].split("@")[1]
                seen[domain] += 1
                if domain == "ok.test":
                    self.assertEqual((e["status"], e["tls"]), ("delivered", "TLSv1.3"), e)
                elif domain == "wrongname.test":
                    self.assertEqual(e["status"], "expired", e)
                    self.assertEqual(e["enhanced"], "4.7.5")
                    self.assertIn("certificate verification failed: hostname mismatch", e["reply"])
                else:
                    self.assertEqual(e["status"], "expired", e)
                    self.assertIn("certificate verification failed: self-signed certificate", e["reply"])
            self.assertEqual(seen, {"ok.test": 10, "wrongname.test": 10, "untrusted.test": 10})
            self.assertGreater(s["tls_failures"], 0)
            stop_and_read_stats(peers, sinks[0])
            assert_exactly_once(self, read_record(record_of(sinks[0])) + read_record(record_of(sinks[1])),
                                only(codes, "ok.test"))

    def test_opportunistic_falls_back_to_plaintext_when_the_handshake_fails(self):
        for fault in ("tls-garbage", "tls-drop", "tls-stall"):
            with self.subTest(fault=fault), Peers() as peers:
                c = certs(peers)
                port = free_port("127.0.0.2")
                stats = mxsink(peers, self.sink_binary(), f"127.0.0.2:{port}", tls=(f"{c}/mx.crt", f"{c}/mx.key"),
                               fault=fault)
                recipients, message, codes = job(peers, 50)
                # Five messages per connection: at least ten connections to the host.
                cfg = (SHORT.replace('max_age = "3s"', 'max_age = "30s"') + "messages_per_connection_max = 5\n"
                       '[timeouts]\ntls_handshake = "1s"\n')
                p, jpath, s = send(peers, recipients, message, ["--route", f"*=127.0.0.2:{port}"], config=cfg)
                self.assertEqual(p.returncode, 0, p.stderr)
                j = journal(jpath)
                self.assertEqual(collections.Counter((e[0]["status"], e[0]["tls"]) for e in j.values()),
                                 {("delivered", "none"): 50})
                self.assertEqual(s["tls_handshakes"], 0)
                sink = stop_and_read_stats(peers, stats)
                self.assertEqual(sink["tls_handshakes"], 0)
                assert_exactly_once(self, read_record(record_of(stats)), codes)
                # After the failure the host gets plaintext: one failed STARTTLS
                # per pool (one pool per shard, --threads 2), not one per connection.
                self.assertGreaterEqual(sink["connections"], 10, sink)
                self.assertGreaterEqual(s["tls_failures"], 1, s)
                self.assertLessEqual(s["tls_failures"], 2, s)

    def test_required_with_a_broken_handshake_defers_then_expires(self):
        with Peers() as peers:
            c = certs(peers)
            port = free_port("127.0.0.2")
            stats = mxsink(peers, self.sink_binary(), f"127.0.0.2:{port}", tls=(f"{c}/mx.crt", f"{c}/mx.key"),
                           fault="tls-garbage")
            recipients, message, codes = job(peers, 10)
            p, jpath, s = send(peers, recipients, message, ["--route", f"*=127.0.0.2:{port}"],
                               config=SHORT + 'tls = "required"\n')
            self.assertEqual(p.returncode, 0, p.stderr)
            for entries in journal(jpath).values():
                e = entries[0]
                self.assertEqual((e["status"], e["enhanced"]), ("expired", "4.7.5"), e)
                self.assertIn("TLS with 127.0.0.2", e["reply"])
            self.assertEqual(stop_and_read_stats(peers, stats)["messages"], 0)
            self.assertEqual(read_record(record_of(stats)), [])

    def test_implicit_tls_route_and_disabled_policy(self):
        with Peers() as peers:
            c = certs(peers)
            plain, implicit = free_port("127.0.0.2"), free_port("127.0.0.1")
            # The certificate names 127.0.0.1 (and mx.test, localhost).
            def start_sink():
                return mxsink(peers, self.sink_binary(), f"127.0.0.2:{plain}", tls=(f"{c}/mx.crt", f"{c}/mx.key"),
                              listen_tls=[f"127.0.0.1:{implicit}"])
            stats = start_sink()
            recipients, message, codes = job(peers, 40)
            # disabled: never STARTTLS even though it is offered.
            p, jpath, s = send(peers, recipients, message, ["--route", f"*=127.0.0.2:{plain}"],
                               config=SHORT + 'tls = "disabled"\n')
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual({e[0]["tls"] for e in journal(jpath).values()}, {"none"})
            sink = stop_and_read_stats(peers, stats)
            self.assertEqual(sink["tls_handshakes"], 0, "the receiver saw no handshake")
            assert_exactly_once(self, read_record(record_of(stats)), codes)
            stats = start_sink()
            # implicit TLS through a relay URL (no AUTH): verified against the test CA.
            p, jpath, s = send(peers, recipients, message, ["--relay", f"smtps://127.0.0.1:{implicit}"],
                               config=SHORT + f'tls_ca_file = "{c}/ca.crt"\n[mx."127.0.0.1"]\ntls = "verify"\n')
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual(collections.Counter((e[0]["status"], e[0]["tls"]) for e in journal(jpath).values()),
                             {("delivered", "TLSv1.3"): 40})
            sink = stop_and_read_stats(peers, stats)
            self.assertGreaterEqual(sink["tls_handshakes"], 1)
            assert_exactly_once(self, read_record(record_of(stats)), codes)


    def test_tls_below_1_2_is_refused(self):
        # README (TLS, Engine): TLS 1.2 minimum. An OpenSSL configuration
        # that allows TLS 1.0 (MinProtocol, security level 0) is given to
        # mxpress, so that only mxpress's own minimum can refuse it.
        with Peers() as peers:
            c = certs(peers)
            conf = peers.path("openssl.cnf")
            with open(conf, "w") as f:
                f.write("openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = allow_old\n"
                        "[allow_old]\nMinProtocol = TLSv1\nCipherString = ALL:@SECLEVEL=0\n")
            env = dict(os.environ, OPENSSL_CONF=conf)
            old_port, ok_port = free_port("127.0.0.2"), free_port("127.0.0.3")
            recipients, message, codes = job(peers, 10, domains=("old.test", "ok.test"))
            cert = (f"{c}/mx.crt", f"{c}/mx.key")
            with ScriptedSmtp("127.0.0.2", old_port, *cert,
                              tls_versions=(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)) as old, \
                    ScriptedSmtp("127.0.0.3", ok_port, *cert,
                                 tls_versions=(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_2)) as ok:
                p, jpath, s = send(peers, recipients, message,
                                   ["--route", f"old.test=127.0.0.2:{old_port}",
                                    "--route", f"ok.test=127.0.0.3:{ok_port}"],
                                   config=SHORT.replace('max_age = "3s"', 'max_age = "1s"') + 'tls = "required"\n',
                                   env=env)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                for entries in journal(jpath).values():
                    e = entries[0]
                    if e["email"].endswith("@old.test"):
                        self.assertEqual((e["status"], e["enhanced"]), ("expired", "4.7.5"), e)
                        self.assertIn("TLS with 127.0.0.2", e["reply"])
                    else:
                        self.assertEqual((e["status"], e["tls"]), ("delivered", "TLSv1.2"), e)
                self.assertGreaterEqual(len(old.handshakes), 1)
                self.assertEqual([h for h in old.handshakes if h["error"] is None], [],
                                 "a handshake below TLS 1.2 succeeded")
                self.assertEqual({h["version"] for h in ok.handshakes}, {"TLSv1.2"})
                assert_exactly_once(self, old.arrivals + ok.arrivals, only(codes, "ok.test"))

    def test_sni_is_the_mx_host_name(self):
        # README (TLS, Engine): SNI = the MX host name; none for an IP
        # address (RFC 6066 §3); the relay's name for --relay.
        with Peers() as peers:
            c = certs(peers)
            cert = (f"{c}/mx.crt", f"{c}/mx.key")
            port = free_port("127.0.0.2")
            dns = peers.dnsmasq(["mx-host=sni.test,mx.sni.test,10", "host-record=mx.sni.test,127.0.0.2"])
            recipients, message, codes = job(peers, 10, domains=("sni.test", "ip.test"))
            with ScriptedSmtp("127.0.0.2", port, *cert) as named, ScriptedSmtp("127.0.0.3", port, *cert) as literal:
                p, jpath, s = send(peers, recipients, message,
                                   ["--dns", dns, "--mx-port", str(port), "--route", f"ip.test=127.0.0.3:{port}"])
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                self.assertEqual({e[0]["tls"] for e in journal(jpath).values()}, {"TLSv1.3"})
                assert_exactly_once(self, named.arrivals + literal.arrivals, codes)
                self.assertEqual(len(named.arrivals), 5)
                self.assertEqual({h["sni"] for h in named.handshakes}, {"mx.sni.test"})
                self.assertEqual({h["sni"] for h in literal.handshakes}, {None})
            relay_port = free_port()
            with ScriptedSmtp("127.0.0.1", relay_port, *cert) as relay:
                p, jpath, s = send(peers, recipients, message, ["--relay", f"localhost:{relay_port}"],
                                   config=SHORT + 'tls = "required"\n')
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                assert_exactly_once(self, relay.arrivals, codes)
                # The pre-flight session and the shards' sessions.
                self.assertGreaterEqual(len(relay.handshakes), 2)
                self.assertEqual({h["sni"] for h in relay.handshakes}, {"localhost"})

    def test_mxsink_names_bad_certificate_files(self):
        with Peers() as peers:
            c = certs(peers)
            port = free_port("127.0.0.2")
            cases = [
                (["--tls-cert", f"{c}/missing.crt", "--tls-key", f"{c}/mx.key"], "missing.crt: cannot load the certificate"),
                (["--tls-cert", f"{c}/mx.crt", "--tls-key", f"{c}/self.key"], "mismatch"),
                (["--tls-cert", f"{c}/mx.crt"], "--tls-cert and --tls-key go together"),
                (["--listen-tls", f"127.0.0.2:{port}"], "--listen-tls needs --tls-cert"),
                (["--fault", "tls-drop"], "--fault tls-drop needs --tls-cert"),
            ]
            for args, expected in cases:
                with self.subTest(expected=expected):
                    p = subprocess.run([self.sink_binary(), "--listen", f"127.0.0.2:{port}", "--max-seconds", "5"] + args,
                                       capture_output=True, text=True, timeout=30)
                    self.assertEqual(p.returncode, 2, p.stderr)
                    self.assertIn(expected, p.stderr)


class Relay(unittest.TestCase):
    def test_relay_with_auth_over_starttls_and_implicit_tls(self):
        with Peers() as peers:
            c = certs(peers)
            pw = peers.path("password")
            with open(pw, "w") as f:
                f.write("s3cret pass\n")
            p587, p465 = free_port(), free_port()
            out587 = relay_peer(peers, p587, "starttls", "alice@sender.test", pw)
            out465 = relay_peer(peers, p465, "implicit", "alice@sender.test", pw)
            recipients, message, codes = job(peers, 30)
            cfg = SHORT + f'tls_ca_file = "{c}/ca.crt"\n'
            p, jpath, s = send(peers, recipients, message,
                               ["--relay", f"localhost:{p587}", "--auth-user", "alice@sender.test",
                                "--auth-password-file", pw], config=cfg)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertNotIn("s3cret", p.stdout + p.stderr)
            msgs = relay_messages(out587)
            assert_exactly_once(self, relay_arrivals(out587), codes)
            self.assertTrue(all(m["tls"] and m["user"] == "alice@sender.test" for m in msgs))
            self.assertEqual({e[0]["tls"] for e in journal(jpath).values()}, {"TLSv1.3"})

            env = dict(os.environ, MXPRESS_AUTH_PASSWORD="s3cret pass")
            p, jpath, s = send(peers, recipients, message,
                               ["--relay", f"smtps://127.0.0.1:{p465}", "--auth-user", "alice@sender.test"],
                               config=cfg, env=env)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            assert_exactly_once(self, relay_arrivals(out465), codes)
            self.assertTrue(all(m["tls"] and m["user"] for m in relay_messages(out465)))

    def test_relay_port_465_means_implicit_tls(self):
        # README (--relay): implicit TLS with smtps:// or port 465. A server
        # that speaks TLS from the first byte, on port 465 itself.
        if os.geteuid() != 0:
            self.skipTest("port 465 needs root")
        with Peers() as peers:
            c = certs(peers)
            recipients, message, codes = job(peers, 6)
            with ScriptedSmtp("127.0.0.7", 465, f"{c}/mx.crt", f"{c}/mx.key", implicit=True) as relay:
                for spec in ("127.0.0.7:465", "smtps://127.0.0.7"):
                    with self.subTest(relay=spec):
                        relay.arrivals.clear()
                        p, jpath, s = send(peers, recipients, message, ["--relay", spec],
                                           config=SHORT + 'tls = "required"\n')
                        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                        self.assertEqual({e[0]["tls"] for e in journal(jpath).values()}, {"TLSv1.3"})
                        assert_exactly_once(self, relay.arrivals, codes)
                        self.assertTrue(all(a["tls"] for a in relay.arrivals))
                self.assertEqual([h for h in relay.handshakes if h["error"]], [])

    def test_relay_errors_exit_2_before_sending(self):
        with Peers() as peers:
            c = certs(peers)
            pw = peers.path("password")
            with open(pw, "w") as f:
                f.write("right\n")
            wrong = peers.path("wrong")
            with open(wrong, "w") as f:
                f.write("wrong\n")
            port = free_port()
            out = relay_peer(peers, port, "starttls", "alice", pw)
            recipients, message, codes = job(peers, 5)
            ca = SHORT + f'tls_ca_file = "{c}/ca.crt"\n'
            cases = [
                (["--auth-user", "alice", "--auth-password-file", wrong], ca, "AUTH failed: 535 5.7.8"),
                (["--auth-user", "alice", "--auth-password-file", pw], SHORT, "certificate verification failed"),
                (["--auth-user", "alice", "--auth-password-file", peers.path("missing")], ca,
                 "cannot open password file"),
                (["--auth-user", "alice"], ca, "MXPRESS_AUTH_PASSWORD"),
                (["--auth-user", "alice", "--auth-password-file", pw], ca.replace("[defaults]\n", '[defaults]\ntls = "opportunistic"\n'),
                 "credentials are only sent over TLS"),
                ([], SHORT + 'tls_ca_file = "/nonexistent/ca.pem"\n', "tls_ca_file: cannot read /nonexistent/ca.pem"),
            ]
            env = dict(os.environ)
            env.pop("MXPRESS_AUTH_PASSWORD", None)
            for args, cfg, expected in cases:
                with self.subTest(expected=expected):
                    p, jpath, s = send(peers, recipients, message, ["--relay", f"127.0.0.1:{port}"] + args,
                                       config=cfg, env=env)
                    self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
                    self.assertIn(expected, p.stderr)
                    self.assertFalse(os.path.exists(jpath) and os.path.getsize(jpath) > 0)
            self.assertEqual(relay_messages(out), [], "nothing reached the relay")
            # A relay whose port is closed.
            p, _, _ = send(peers, recipients, message, ["--relay", f"127.0.0.1:{free_port()}"], config=ca)
            self.assertEqual(p.returncode, 2)
            self.assertIn("cannot connect", p.stderr)

    def test_relay_honours_disabled_and_opportunistic_without_auth(self):
        # The pre-flight decides TLS as the engine does: without credentials,
        # "disabled" and "opportunistic" relay in plaintext to a relay that
        # offers no STARTTLS (or breaks it), and only "required" refuses.
        with Peers() as peers:
            c = certs(peers)
            sink = os.path.join(os.path.dirname(MXPRESS), "mxsink")
            plain_port, broken_port = free_port(), free_port()
            mxsink(peers, sink, f"127.0.0.1:{plain_port}")
            mxsink(peers, sink, f"127.0.0.1:{broken_port}", tls=(f"{c}/mx.crt", f"{c}/mx.key"), fault="tls-garbage")
            recipients, message, _ = job(peers, 20)
            for policy, port in [("disabled", plain_port), ("opportunistic", plain_port),
                                 ("opportunistic", broken_port)]:
                with self.subTest(policy=policy, port=port):
                    cfg = SHORT.replace("[defaults]\n", f'[defaults]\ntls = "{policy}"\n')
                    p, jpath, s = send(peers, recipients, message, ["--relay", f"127.0.0.1:{port}"], config=cfg)
                    self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                    j = journal(jpath)
                    self.assertEqual(len(j), 20)
                    for entries in j.values():
                        self.assertEqual(entries[-1]["status"], "delivered", entries[-1])
                        self.assertEqual(entries[-1]["tls"], "none", entries[-1])
            for port in (plain_port, broken_port):
                cfg = SHORT.replace("[defaults]\n", '[defaults]\ntls = "required"\n')
                p, jpath, _ = send(peers, recipients, message, ["--relay", f"127.0.0.1:{port}"], config=cfg)
                self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
                self.assertIn("TLS is required (required), but the relay does not offer STARTTLS"
                              if port == plain_port else "TLS with the relay failed", p.stderr)
                self.assertFalse(os.path.exists(jpath) and os.path.getsize(jpath) > 0)


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    ROOT = os.path.abspath(sys.argv[2])
    run_tests(sys.argv[3:])
