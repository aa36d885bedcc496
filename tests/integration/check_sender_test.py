#!/usr/bin/python3
"""`mxpress check-sender` against dnsmasq serving the records with
`txt-record=` on loopback: keys made by openssl, their records as
`mxpress dkim-record --key` prints them (a 2048-bit RSA p= split into
character-strings of at most 255 octets, as zone files split it):

- a good setup (RSA and Ed25519 selectors, DMARC, SPF, aligned d=) is all
  ok and exits 0;
- a selector publishing another key's p= is FATAL naming the selector,
  exit 2;
- no DMARC record is a warning, exit 0;
- a resolver that does not answer is FATAL ("cannot check"), naming the
  name, exit 2;
- --header-from apart from --from: DMARC and alignment are checked at the
  header From's domain, SPF at the envelope's, each finding naming it.

  check_sender_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import os
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import Peers, free_port, run_tests  # noqa: E402

MXPRESS = None
ROOT = None


def make_key(peers, name, args):
    path = peers.path(f"{name}.pem")
    subprocess.run(["openssl", "genpkey", *args, "-out", path], check=True, capture_output=True)
    os.chmod(path, 0o600)
    return path


def record_of(key):
    """The TXT value `mxpress dkim-record --key` prints for a key file."""
    out = subprocess.run([MXPRESS, "dkim-record", "--key", key], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def txt_line(name, value):
    """A dnsmasq txt-record= line: the value as strings of at most 255 octets."""
    parts = [value[i:i + 255] for i in range(0, len(value), 255)]
    return f"txt-record={name}," + ",".join(f'"{p}"' for p in parts)


def config(peers, name, domain, keys):
    path = peers.path(f"{name}.toml")
    with open(path, "w") as f:
        f.write("[dkim]\n")
        for selector, key in keys:
            f.write(f'[[dkim.key]]\ndomain = "{domain}"\nselector = "{selector}"\nkey_file = "{key}"\n')
    return path


def check_sender(cfg, sender, dns, header_from=None):
    extra = [] if header_from is None else ["--header-from", header_from]
    return subprocess.run([MXPRESS, "check-sender", "--config", cfg, "--from", sender, "--dns", dns, *extra],
                          capture_output=True, text=True, timeout=60)


class CheckSender(unittest.TestCase):
    def setUp(self):
        self.peers = Peers()
        self.rsa = make_key(self.peers, "rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        self.ed = make_key(self.peers, "ed", ["-algorithm", "ED25519"])
        self.other = make_key(self.peers, "other", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        rsa, ed, other = record_of(self.rsa), record_of(self.ed), record_of(self.other)
        self.assertGreater(len(rsa), 255)  # so the record is several character-strings, joined by the lookup
        lines = []
        for domain in ("good.test", "bad.test", "nodmarc.test"):
            lines.append(txt_line(f"r1._domainkey.{domain}", other if domain == "bad.test" else rsa))
            lines.append(txt_line(f"e1._domainkey.{domain}", ed))
            lines.append(txt_line(domain, "v=spf1 ip4:127.0.0.1 -all"))
            if domain != "nodmarc.test":
                lines.append(txt_line(f"_dmarc.{domain}", "v=DMARC1; p=reject"))
        lines.append(txt_line("bounce.test", "v=spf1 ip4:127.0.0.2 -all"))  # an envelope domain: SPF only
        self.dns = self.peers.dnsmasq(lines)

    def tearDown(self):
        self.peers.__exit__(None, None, None)

    def run_for(self, domain):
        cfg = config(self.peers, domain, domain, [("r1", self.rsa), ("e1", self.ed)])
        return check_sender(cfg, f"news@{domain}", self.dns)

    def test_a_good_setup_is_all_ok_and_exits_0(self):
        r = self.run_for("good.test")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        findings = r.stdout.strip().split("\n")[:-1]
        self.assertEqual(len(findings), 8, r.stdout)  # 2 x (length, record), DMARC, SPF, alignment, headers
        for line in findings:
            self.assertTrue(line.startswith("ok "), line)
        self.assertIn("r1._domainkey.good.test publishes this key (k=rsa)", r.stdout)
        self.assertIn("e1._domainkey.good.test publishes this key (k=ed25519)", r.stdout)
        self.assertIn('DMARC (From domain good.test): _dmarc.good.test: "v=DMARC1; p=reject"', r.stdout)
        self.assertTrue(r.stdout.endswith("check-sender good.test: 8 ok, 0 warnings, 0 fatal\n"), r.stdout)

    def test_a_selector_publishing_another_key_is_fatal_and_exits_2(self):
        r = self.run_for("bad.test")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        fatal = [line for line in r.stdout.split("\n") if line.startswith("FATAL")]
        self.assertEqual(len(fatal), 1, r.stdout)
        self.assertIn("DKIM selector r1 (d=bad.test): r1._domainkey.bad.test does not match", fatal[0])
        self.assertIn(record_of(self.rsa), fatal[0])  # says what to publish
        self.assertIn("e1._domainkey.bad.test publishes this key", r.stdout)

    def test_no_dmarc_record_warns_and_exits_0(self):
        r = self.run_for("nodmarc.test")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        warnings = [line for line in r.stdout.split("\n") if line.startswith("warning")]
        self.assertEqual(len(warnings), 1, r.stdout)
        self.assertIn("DMARC (From domain nodmarc.test): no record (v=DMARC1) at _dmarc.nodmarc.test", warnings[0])
        self.assertNotIn("FATAL", r.stdout)

    def test_a_resolver_that_does_not_answer_is_fatal_naming_the_name(self):
        cfg = config(self.peers, "good", "good.test", [("r1", self.rsa)])
        silent = f"127.0.0.1:{free_port(kind=socket.SOCK_DGRAM)}"
        r = check_sender(cfg, "news@good.test", silent)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"FATAL +DKIM selector r1 \(d=good.test\): cannot check the key record: "
                                   r"r1._domainkey.good.test: ")
        self.assertIn("SPF (envelope domain good.test): cannot check: good.test: ", r.stdout)

    def test_header_from_and_envelope_domains_are_checked_apart(self):
        cfg = config(self.peers, "split", "good.test", [("r1", self.rsa)])
        r = check_sender(cfg, "bounce@bounce.test", self.dns, header_from="Town Hall <news@good.test>")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('SPF (envelope domain bounce.test): "v=spf1 ip4:127.0.0.2 -all"', r.stdout)
        self.assertIn('DMARC (From domain good.test): _dmarc.good.test: "v=DMARC1; p=reject"', r.stdout)
        self.assertIn("alignment: d=good.test is aligned with From domain good.test", r.stdout)
        self.assertEqual([line for line in r.stdout.splitlines() if line.startswith("warning")], [], r.stdout)
        self.assertTrue(r.stdout.endswith("check-sender good.test (envelope bounce.test): 6 ok, 0 warnings, 0 fatal\n"),
                        r.stdout)
        # The same envelope as the From: d=good.test does not align with bounce.test, which has no DMARC record.
        r = check_sender(cfg, "bounce@bounce.test", self.dns)
        self.assertIn("alignment: no [[dkim.key]] domain (good.test) is bounce.test", r.stdout)


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    ROOT = sys.argv[2]
    run_tests(sys.argv[3:])
