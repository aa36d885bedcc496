#!/usr/bin/python3
"""`send --metrics-textfile DIR` against the real collector: Debian's
prometheus-node-exporter, textfile collector only, on loopback, scraped over
HTTP while a send runs and after it. Every series node_exporter serves must
parse (a strict reader of the text exposition format below), the collector
must report no textfile error, the run's counters must move during the run,
and the final ones must equal the journal's outcomes by status and the
summary's counts. A second run into the same directory must not collide
with the first. A directory that cannot take the file: exit 2, naming it.

  metrics_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import collections
import json
import math
import os
import re
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import CODED_TEMPLATE, SHORT_CONFIG, Peers, free_port, journal, mxsink, run_tests, wait_tcp  # noqa: E402

MXPRESS = None
# Debian 12's package prometheus-node-exporter (scripts/setup); the variable
# points elsewhere (a missing file shows the skip: ctest "Skipped", and a
# failure under MXPRESS_REQUIRE_ALL=1).
NODE_EXPORTER = os.environ.get("MXPRESS_NODE_EXPORTER", "/usr/bin/prometheus-node-exporter")
STATUSES = ("delivered", "bounced", "expired", "in-doubt", "invalid", "suppressed")

# ---- A strict reader of the Prometheus text exposition format (0.0.4) ----

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)(?: (-?\d+))?$")
LABEL = re.compile(rf'({LABEL_NAME})="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def parse_value(text):
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise ValueError(f"not a sample value: {text!r}")
    return float(text)


def parse_labels(text):
    labels = {}
    at = 0
    while at < len(text):
        m = LABEL.match(text, at)
        if not m:
            raise ValueError(f"bad labels at {text[at:]!r}")
        if m.group(1) in labels:
            raise ValueError(f"label {m.group(1)} twice")
        labels[m.group(1)] = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), m.group(2))
        at = m.end()
    return labels


def parse_exposition(text):
    """Returns ({family: type}, [(name, labels, value)]); raises ValueError on
    any line that is not HELP, TYPE, another comment or a well-formed sample,
    on a TYPE after its family's samples, and on a sample given twice."""
    if text and not text.endswith("\n"):
        raise ValueError("the text does not end with a newline")
    types, samples, seen = {}, [], set()
    for n, line in enumerate(text.split("\n")[:-1], 1):
        try:
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] == "TYPE":
                    if not re.fullmatch(NAME, parts[2]) or len(parts) != 4 or parts[3] not in TYPES:
                        raise ValueError("bad TYPE line")
                    if parts[2] in types or any(s[0] == parts[2] for s in samples):
                        raise ValueError("TYPE repeated or after samples")
                    types[parts[2]] = parts[3]
                elif len(parts) >= 3 and parts[1] == "HELP" and not re.fullmatch(NAME, parts[2]):
                    raise ValueError("bad HELP line")
                continue
            if not line:
                continue
            m = SAMPLE.match(line)
            if not m:
                raise ValueError("not a sample")
            labels = parse_labels(m.group(2) or "")
            key = (m.group(1), tuple(sorted(labels.items())))
            if key in seen:
                raise ValueError("sample given twice")
            seen.add(key)
            samples.append((m.group(1), labels, parse_value(m.group(3))))
        except ValueError as e:
            raise ValueError(f"line {n}: {e}: {line!r}") from None
    return types, samples


class ParserSelfTest(unittest.TestCase):
    """The reader refuses what a broken exporter would write."""

    def test_parser_refuses_malformed_lines(self):
        types, samples = parse_exposition('# HELP a_total x\n# TYPE a_total counter\na_total{k="v\\"w",z="1"} 3\n')
        self.assertEqual(types, {"a_total": "counter"})
        self.assertEqual(samples, [("a_total", {"k": 'v"w', "z": "1"}, 3.0)])
        for bad in ("a{k=v} 1\n", "a 1x\n", "a{k=\"v\"}1\n", "a 1\na 2\n", "a 1", "1a 1\n", "a{k=\"v\" 1\n",
                    "# TYPE a counter\n# TYPE a gauge\n", "a 1\n# TYPE a gauge\n"):
            with self.assertRaises(ValueError, msg=bad):
                parse_exposition(bad)


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode("utf-8")


def series_of(samples, run=None):
    """{name or name{label}: value} of mxpress_ samples (of one run)."""
    out = {}
    for name, labels, value in samples:
        if not name.startswith("mxpress_") or (run is not None and labels.get("run") != run):
            continue
        rest = {k: v for k, v in labels.items() if k != "run"}
        key = name + "".join(f"{{{k}={v}}}" for k, v in sorted(rest.items()))
        out[key] = value
    return out


def check_scrape(test, text):
    """Parses a scrape; checks the collector's verdict and mxpress's naming.
    Returns {run: series_of(that run)}."""
    types, samples = parse_exposition(text)
    verdict = [v for n, _, v in samples if n == "node_textfile_scrape_error"]
    test.assertEqual(verdict, [0.0], "node_exporter reported a textfile error:\n" + text[:4000])
    runs = collections.defaultdict(dict)
    for name, labels, value in samples:
        if not name.startswith("mxpress_"):
            continue
        test.assertIn(name, types, f"{name} has no TYPE")
        test.assertEqual(name.endswith("_total"), types[name] == "counter", name)
        test.assertTrue(set(labels) <= {"run", "status", "class", "version", "action", "provider", "transfer"}, labels)
        test.assertIn("run", labels)
    for run in {labels["run"] for name, labels, _ in samples if name.startswith("mxpress_")}:
        runs[run] = series_of(samples, run)
    return runs


def write_rows(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("email,name,code\n")
        for email in rows:
            f.write(f"{email},N,c\n")


class Metrics(unittest.TestCase):
    def send_args(self, peers, recipients, jpath, routes, textdir, extra=()):
        message, config = peers.path("m.eml"), peers.path("c.toml")
        with open(message, "w") as f:
            f.write(CODED_TEMPLATE)
        with open(config, "w") as f:
            # Every host here is 127.0.0.2: one [provider], for its series.
            f.write(SHORT_CONFIG + '\n[provider.loop]\nmatch = ["127.0.0.2"]\n')
        args = [MXPRESS, "send", "--recipients", recipients, "--message", message, "--from", "b@sender.test",
                "--config", config, "--journal", jpath, "--progress", "off", "--threads", "2"]
        for r in routes:
            args += ["--route", r]
        if textdir:
            args += ["--metrics-textfile", textdir]
        return args + list(extra)

    def test_node_exporter_serves_every_series_and_the_final_counts_match_the_journal(self):
        if not os.access(NODE_EXPORTER, os.X_OK):
            self.skipTest(f"{NODE_EXPORTER} is not installed (apt-get install prometheus-node-exporter)")
        with Peers() as peers:
            sink_port, dead_port = free_port("127.0.0.2"), free_port("127.0.0.2")  # nothing listens on dead_port
            mxsink(peers, os.path.join(os.path.dirname(MXPRESS), "mxsink"), f"127.0.0.2:{sink_port}")
            textdir = peers.path("textfile")
            os.makedirs(textdir)
            os.chmod(textdir, 0o755)
            ne_port = free_port()
            log = open(peers.path("node_exporter.log"), "w")
            peers.stops.append(log.close)
            peers.procs.append(subprocess.Popen(
                [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{ne_port}", "--collector.disable-defaults",
                 "--collector.textfile", f"--collector.textfile.directory={textdir}"],
                stdout=log, stderr=log))
            wait_tcp("127.0.0.1", ne_port)
            check_scrape(self, scrape(ne_port))  # an empty directory is no error either

            # Delivered to mxsink, deferred then expired at a dead host (max_age 3 s:
            # the run lasts that long at least), invalid, suppressed.
            rows = [f"u{k}@d{k % 50}.test" for k in range(20000)]
            rows += [f"x{k}@dead.test" for k in range(30)] + ["not-an-address", "two@@d1.test"]
            rows += [f"s{k}@d2.test" for k in range(7)]
            recipients, suppress = peers.path("r.csv"), peers.path("suppress.txt")
            write_rows(recipients, rows)
            with open(suppress, "w") as f:
                f.write("".join(f"s{k}@d2.test\n" for k in range(7)))
            jpath, summary_path = peers.path("j.jsonl"), peers.path("summary.json")
            routes = [f"dead.test=127.0.0.2:{dead_port}", f"*=127.0.0.2:{sink_port}"]
            send = self.send_args(peers, recipients, jpath, routes, textdir,
                                  ["--metrics-interval", "0.2", "--suppress", suppress, "--summary-json",
                                   summary_path])
            p = subprocess.Popen(send, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            during = []
            while p.poll() is None:
                for run, series in check_scrape(self, scrape(ne_port)).items():
                    if series.get("mxpress_run_ended") == 0:
                        during.append(series)
                time.sleep(0.15)
            out, err = p.communicate(timeout=120)
            self.assertEqual(p.returncode, 0, err)

            # During the run: files the collector read, counters that only grew.
            self.assertGreaterEqual(len(during), 3, "scrapes that saw the run in progress")
            for before, after in zip(during, during[1:]):
                for key, value in before.items():
                    if "_total" in key:
                        self.assertLessEqual(value, after[key], key)
            self.assertLess(during[0]["mxpress_recipients_total{status=expired}"], 30)

            # After it: the last write, equal to the journal and the summary.
            runs = check_scrape(self, scrape(ne_port))
            self.assertEqual(len(runs), 1, runs.keys())
            (run, m), = runs.items()
            with open(summary_path) as f:
                summary = json.load(f)
            self.assertEqual(run, summary["run"])
            self.assertEqual(m["mxpress_run_ended"], 1)
            self.assertEqual(m["mxpress_build_info{version=0.1.0}"], 1)
            final = collections.Counter()
            for line, entries in journal(jpath).items():
                self.assertEqual(len(entries), 1, entries)
                final[entries[0]["status"]] += 1
            self.assertEqual(sum(final.values()), len(rows))
            for status in STATUSES:
                self.assertEqual(m[f"mxpress_recipients_total{{status={status}}}"], final[status], status)
            self.assertEqual((final["delivered"], final["expired"], final["invalid"], final["suppressed"]),
                             (20000, 30, 2, 7))
            for key, name in (("rows", "mxpress_rows_read_total"), ("skipped", "mxpress_rows_skipped_total"),
                              ("delivered", "mxpress_recipients_total{status=delivered}"),
                              ("bounced", "mxpress_recipients_total{status=bounced}"),
                              ("expired", "mxpress_recipients_total{status=expired}"),
                              ("in_doubt", "mxpress_recipients_total{status=in-doubt}"),
                              ("invalid", "mxpress_recipients_total{status=invalid}"),
                              ("suppressed", "mxpress_recipients_total{status=suppressed}"),
                              ("deferrals", "mxpress_deferrals_total"), ("attempts", "mxpress_attempts_total"),
                              ("connections", "mxpress_connections_opened_total"),
                              ("sent_bytes", "mxpress_sent_bytes_total"),
                              ("sent_bdat", "mxpress_messages_sent_total{transfer=bdat}"),
                              ("sent_data", "mxpress_messages_sent_total{transfer=data}"),
                              ("tls_handshakes", "mxpress_tls_handshakes_total"),
                              ("tls_resumed", "mxpress_tls_resumptions_total"),
                              ("tls_failures", "mxpress_tls_handshake_failures_total")):
                self.assertEqual(m[name], summary[key], name)
            self.assertEqual(m["mxpress_smtp_replies_total{class=2xx}"], 20000)
            # The provider's own series: every reply came from its host.
            self.assertEqual(m["mxpress_provider_smtp_replies_total{class=2xx}{provider=loop}"], 20000)
            self.assertEqual(m["mxpress_provider_smtp_replies_total{class=4xx}{provider=loop}"], 0)
            self.assertEqual(m["mxpress_provider_connections_open{provider=loop}"], 0)
            self.assertIn("mxpress_provider_throttle_wait_seconds_total{provider=loop}", m)
            self.assertTrue(any(s.get("mxpress_provider_connections_open{provider=loop}", 0) > 0 for s in during),
                            "connections to the provider's host were open during the run")
            self.assertEqual(m["mxpress_attempts_total"], 20000)  # the dead host never took a transaction
            self.assertGreaterEqual(m["mxpress_deferrals_total"], 30)
            self.assertEqual(m["mxpress_connections_open"], 0)
            self.assertEqual(m["mxpress_transactions_in_flight"], 0)
            self.assertGreater(m["mxpress_sent_bytes_total"], 20000 * len(CODED_TEMPLATE))
            self.assertLessEqual(m["mxpress_start_time_seconds"], m["mxpress_last_progress_time_seconds"])
            self.assertLessEqual(m["mxpress_last_progress_time_seconds"], time.time())
            self.assertGreaterEqual(m["mxpress_last_progress_time_seconds"] - m["mxpress_start_time_seconds"], 2.5,
                                    "the expiries after ~3 s were the last progress")
            self.assertEqual(sorted(os.listdir(textdir)), [f"mxpress_{run}.prom"], "no temporary file left")

            # A second run into the same directory: its own file, no collision.
            write_rows(peers.path("r2.csv"), ["a@d1.test", "b@d2.test"])
            p = subprocess.run(self.send_args(peers, peers.path("r2.csv"), peers.path("j2.jsonl"), routes[1:],
                                              textdir), capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            runs = check_scrape(self, scrape(ne_port))
            self.assertEqual(len(runs), 2, runs.keys())
            self.assertEqual(runs[run], m, "the first run's file is untouched")
            (second,) = [s for r, s in runs.items() if r != run]
            self.assertEqual(second["mxpress_recipients_total{status=delivered}"], 2)

    def test_a_directory_that_cannot_take_the_file_exits_2_naming_it(self):
        with Peers() as peers:
            write_rows(peers.path("r.csv"), ["a@d1.test"])
            jpath = peers.path("j.jsonl")
            with open(peers.path("plain"), "w") as f:
                f.write("x")
            for bad, why in ((peers.path("missing"), "No such file or directory"),
                             (peers.path("plain"), "not a directory")):
                p = subprocess.run(self.send_args(peers, peers.path("r.csv"), jpath, ["*=127.0.0.2:9"], bad),
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertIn(f"--metrics-textfile '{bad}': {why}", p.stderr)
                self.assertFalse(os.path.exists(jpath), "nothing started")


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    run_tests(sys.argv[3:])
