"""The benchmark suite; run through scripts/bench (which builds first).

Workloads (seeded, reproducible; recipients skewed over 1,000 domains):
  plain-2k   personalized 2 KB message, plaintext, mxsink (and smtp-sink x4)
  plain-32k  the same with a 32 KB HTML message
  tls-2k     plain-2k over STARTTLS against plain-2k in plaintext, both to
             mxsink, three alternating pairs: medians, rate ratio (goal >= 0.8),
             handshakes and resumed handshakes per 100k messages
  dkim-rsa-2k, dkim-ed25519-2k
             plain-2k signed with one DKIM key (RSA-2048 or Ed25519) against
             plain-2k unsigned, both to mxsink, three alternating pairs:
             medians, CPU per message and rate ratios (signed / unsigned)
  shaped-2k  the cost of shaping when nothing is limited: plain-2k with a
             [domain."…"] section for each of the 1,000 domains and a
             [provider."…"] for the four MX hosts (rates and limits set so
             high they never bind) against plain-2k without them, both to
             mxsink, three alternating pairs: medians, rate ratio (goal >=
             0.95). Neither file has a [[rule]] or a [rules] section, so both
             runs carry the built-in rules (on by default); mxsink answers
             no 4xx or 5xx here, so no reply is ever matched against them.
  domains-1k MX lookups against none: 100,000 messages (plain-2k, skewed over
             1,000 domains, four MX hosts) with lookups through the resolver
             (--resolver: unbound, the default, or dnsmasq) against the same
             with every domain routed (--route) to its MX address, both to
             mxsink, alternating, --domain-runs times (default 10): medians,
             time ratio (goal <= 1.3), and the runs with a retry stall (a DNS
             query asked again after a timeout, or dropped at the resolver's
             socket)
  domains-20k
             100,000 messages over 20,000 domains (5 each, one row per domain
             in turn: 20,000 lookups at the start) through the same resolver,
             in the same rounds as domains-1k: rate ratio to domains-1k's
             lookups (goal >= 0.7), CPU per message, retry stalls. dnsmasq
             scans its MX records per query (about 220 us each with 21,000),
             so with --resolver dnsmasq this run measures dnsmasq
  scale      plain-2k at --threads 1, 2, ... up to the core count
  memory     10 million rows through --dry-run: peak RSS
Every delivery workload runs Postfix's smtp-source (-d -s 20 -l SIZE, one
process per MX address) against the same sink in the same run, and reports
mxpress/reference ratios for rate and CPU per message.

The floor (issue 13): plain-2k, plain-32k and tls-2k also run mxpress_floor
(bench/floor_sender.cpp: one pre-rendered message, no CSV, rendering or
journal, pipelined SMTP on io_uring, every reply checked) in the same
rounds, against the same sink, with mxpress's connection and thread counts
of that round, and report "CPU x floor" (mxpress CPU per message / the
floor's) and "rate x floor": how close mxpress is to the cheapest sender of
the same mail. n/a where the floor cannot run the workload (DNS, DKIM,
shaping). --quick runs the floor once, after the gate's pairs (not gated).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from peers import Peers, certs, free_port, wait_tcp  # noqa: E402

MX = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
MXPRESS = os.path.join(ROOT, "build", "mxpress")
MXSINK = os.path.join(ROOT, "build", "mxsink")
FLOOR = os.path.join(ROOT, "build", "bench", "mxpress_floor")
# domains-1k and domains-20k (issue 14, item 12): same run, medians.
DOMAINS_MESSAGES = 100_000
DOMAINS_RUNS = 10
LOOKUP_TIME_RATIO_MAX = 1.3  # lookups through the resolver / routed, 1,000 domains
DOMAINS_20K_RATE_RATIO_MIN = 0.7  # 20,000-domain rate / 1,000-domain rate
TEMPLATES = {"plain-2k": "bench/templates/plain-2k.eml", "plain-32k": "bench/templates/html-32k.eml"}
DEFAULT_TARGET_PER_HOUR = 20_000_000
# issue 11: a signed send against `openssl speed` on the shards' cores, same run
DKIM_SPEED_RATIO_MIN = {"rsa": 0.90, "ed25519": 0.70}
TLS_RATE_RATIO_MIN = 0.80  # issue 4: STARTTLS rate >= 0.8x plaintext, same run
# The CI gate (--quick): GATE_PAIRS alternating pairs (smtp-source, then
# mxpress, on the same sink), a ratio per pair, the medians of the ratios.
# It fails when mxpress's CPU per message exceeds GATE_CPU_RATIO_MAX times
# smtp-source's, or its rate falls below GATE_RATE_RATIO_MIN times
# smtp-source's. Measured on the 2-core CI machine class, 4 gate runs (20
# pairs, 50,000 messages each): CPU ratio 0.23-0.29 per pair, medians
# 0.24-0.25, so 0.40 is crossed by a 1.6x CPU regression and not by noise.
# The rate ratio is bimodal (1.08-1.22 or 2.8-3.7 per pair: in some runs
# mxpress waits about 1.4 s more), medians 1.20-3.32, so its floor only
# catches a collapse below the slow mode.
# The CPU ratio also moves with the machine, not only the code: the same
# build gave a median of 0.27 in one CI run and 0.37 on another machine of
# the same class a day later (0.33 there after the render change that cut
# 2k rendering from 2.7 to 1.0 us). A tighter maximum would fail on the
# machine drawn, so 0.40 stays.
GATE_PAIRS = 5
GATE_CPU_RATIO_MAX = 0.40
GATE_RATE_RATIO_MIN = 0.90
# Every mxpress run of the bench: a transient 4xx or refused connection is
# retried after 200 ms, not after the default minute (which would fail a gate
# on one hiccup of the sink).
BENCH_CONFIG = """[defaults]
retry_initial = "200ms"
retry_max = "1s"
"""


def timed(args, **kw):
    """Runs a command under /usr/bin/time: (wall s, user+sys s, peak RSS KiB, stdout)."""
    p = subprocess.run(["/usr/bin/time", "-f", "@@TIME %e %U %S %M"] + args, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(args[:2])} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-2000:]}")
    f = [l for l in p.stderr.splitlines() if l.startswith("@@TIME")][-1].split()
    return float(f[1]), float(f[2]) + float(f[3]), int(f[4]), p.stdout


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, peers, messages):
        self.peers = peers
        self.port = free_port("127.0.0.2")
        lines = [f"mx-host=d{k:04d}.test,mx{k % 4}.test,10" for k in range(1000)]
        lines += [f"host-record=mx{i}.test,{h}" for i, h in enumerate(MX)]
        self.dns = peers.dnsmasq(lines)
        self.recipients = peers.path("r.csv")
        self.config = peers.path("bench.toml")
        with open(self.config, "w") as f:
            f.write(BENCH_CONFIG)
        self.messages = messages
        self.floor_messages = {}  # template: its rendered, dot-stuffed file
        subprocess.run(["python3", os.path.join(ROOT, "scripts/gen-recipients"), "--rows", str(messages),
                        "--domains", "1000", "--out", self.recipients], check=True)

    def start_sinks(self, kind):
        # A fresh port for every sink: a new connection to the port of the
        # previous run can meet one of its connections in TIME_WAIT and be
        # refused (seen as smtp-source's "connect: Connection refused").
        self.port = free_port("127.0.0.2")
        if kind in ("mxsink", "mxsink-tls"):
            tls = []
            if kind == "mxsink-tls":
                c = certs(self.peers)
                tls = ["--tls-cert", os.path.join(c, "mx.crt"), "--tls-key", os.path.join(c, "mx.key")]
            p = subprocess.Popen([MXSINK, "--threads", "1"] + tls +
                                 sum((["--listen", f"{h}:{self.port}"] for h in MX), []))
            procs = [p]
        else:  # Postfix's smtp-sink: single-threaded, one process per address
            procs = []
            for h in MX:
                args = ["smtp-sink"] + (["-u", "nobody"] if os.geteuid() == 0 else []) + [f"{h}:{self.port}", "1000"]
                procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.peers.procs.extend(procs)
        for h in MX:
            wait_tcp(h, self.port)
        return procs

    @staticmethod
    def stop_sinks(procs):
        cpu = sum(proc_cpu_seconds(p.pid) for p in procs)
        for p in procs:
            p.terminate()
            p.wait()
        return cpu

    def mxpress(self, template, threads, sink, extra=(), recipients=None, dns=None, messages=None):
        """extra: more arguments, or a function of the sinks' port that gives them."""
        procs = self.start_sinks(sink)
        if callable(extra):
            extra = extra(self.port)
        j = self.peers.path("journal.jsonl")
        if os.path.exists(j):
            os.unlink(j)
        messages = messages or self.messages
        args = [MXPRESS, "send", "--recipients", recipients or self.recipients, "--message",
                os.path.join(ROOT, template), "--from", "bounce@town.example", "--dns", dns or self.dns,
                "--mx-port", str(self.port), "--journal", j,
                "--progress", "off", "--summary-json", self.peers.path("s.json"), "--config", self.config] + list(extra)
        if threads:
            args += ["--threads", str(threads)]
        wall, cpu, rss, out = timed(args)
        sink_cpu = self.stop_sinks(procs)
        with open(self.peers.path("s.json")) as f:
            s = json.load(f)
        if s["delivered"] != messages:
            sys.exit(f"bench: only {s['delivered']} of {messages} delivered:\n{out}")
        return dict(sender=f"mxpress --threads {s['threads']}", sink=sink, messages=messages, wall_s=wall,
                    cpu_s=cpu, peak_rss_kib=rss, sink_cpu_s=sink_cpu, threads=s["threads"],
                    connections=s["connections"], tls_handshakes=s.get("tls_handshakes", 0),
                    tls_resumed=s.get("tls_resumed", 0), tls_failures=s.get("tls_failures", 0),
                    dns_queries=s.get("dns_queries", 0), dns_retries=s.get("dns_retries", 0),
                    dns_in_flight_peak=s.get("dns_in_flight_peak", 0))

    def floor_message(self, template):
        """The message the recipients file's first row gets (`mxpress render`),
        CRLF and dot-stuffed: what mxpress_floor sends every time."""
        if template not in self.floor_messages:
            out = subprocess.run([MXPRESS, "render", "--recipients", self.recipients, "--message",
                                  os.path.join(ROOT, template), "--line", "2", "--from", "bounce@town.example"],
                                 capture_output=True, check=True).stdout
            lines = out.replace(b"\r\n", b"\n").split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            path = self.peers.path(os.path.basename(template) + ".floor")
            with open(path, "wb") as f:
                f.write(b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines))
            self.floor_messages[template] = path
        return self.floor_messages[template]

    def floor(self, template, connections, threads, sink):
        """mxpress_floor: the same message count over `connections`
        connections (round-robin over the MX addresses) from `threads`
        threads, as mxpress used in its run."""
        procs = self.start_sinks(sink)
        args = [FLOOR, "--messages", str(self.messages), "--connections", str(connections), "--threads",
                str(threads), "--message", self.floor_message(template), "--from", "bounce@town.example", "--to",
                "r{}@d0000.test", "--timeout", "300"] + sum((["--connect", f"{h}:{self.port}"] for h in MX), [])
        if sink == "mxsink-tls":
            args.append("--tls")
        wall, cpu, rss, out = timed(args)
        sink_cpu = self.stop_sinks(procs)
        s = json.loads(out)
        if s["messages"] != self.messages or s["errors"]:
            sys.exit(f"bench: the floor delivered {s['messages']} of {self.messages}:\n{out}")
        return dict(sender=f"floor {connections} conns x{threads}", sink=sink, messages=self.messages, wall_s=wall,
                    cpu_s=cpu, peak_rss_kib=rss, sink_cpu_s=sink_cpu, threads=threads, connections=connections,
                    tls_handshakes=s["tls_handshakes"], tls_resumed=s["tls_resumed"], floor=True)

    def smtp_source(self, size, sink):
        procs = self.start_sinks(sink)
        per = self.messages // len(MX)
        start = time.monotonic()
        clients = [subprocess.Popen(["/usr/bin/time", "-f", "@@TIME %e %U %S %M", "smtp-source", "-d", "-s", "20",
                                     "-m", str(per), "-l", str(size), "-f", "a@x.test", "-t", "b@y.test",
                                     f"{h}:{self.port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for h in MX]
        cpu, rss = 0.0, 0
        for c in clients:
            _, err = c.communicate()
            if c.returncode != 0:
                sinks = ", ".join(f"pid {p.pid}: " + ("running" if p.poll() is None else f"exited {p.returncode}")
                                  for p in procs)
                sys.exit(f"bench: smtp-source failed: {err[-2000:]}\nsinks: {sinks}")
            f = [l for l in err.splitlines() if l.startswith("@@TIME")][-1].split()
            cpu += float(f[2]) + float(f[3])
            rss = max(rss, int(f[4]))
        wall = time.monotonic() - start
        sink_cpu = self.stop_sinks(procs)
        return dict(sender=f"smtp-source x{len(MX)}", sink=sink, messages=per * len(MX), wall_s=wall, cpu_s=cpu,
                    peak_rss_kib=rss, sink_cpu_s=sink_cpu)


def with_ratios(run, ref):
    r = dict(run)
    r["msgs_per_s"] = r["messages"] / r["wall_s"]
    r["msgs_per_hour"] = r["msgs_per_s"] * 3600
    r["cpu_us_per_msg"] = r["cpu_s"] / r["messages"] * 1e6
    r["sink_cpu_us_per_msg"] = r["sink_cpu_s"] / r["messages"] * 1e6
    if ref is not None:
        ref_rate = ref["messages"] / ref["wall_s"]
        ref_us = ref["cpu_s"] / ref["messages"] * 1e6
        r["rate_ratio"] = r["msgs_per_s"] / ref_rate
        r["cpu_ratio"] = r["cpu_us_per_msg"] / ref_us
    return r


def with_floor(run, floor):
    """mxpress's rate and CPU per message against the floor's (same sink,
    same round): floor_rate_ratio, floor_cpu_ratio."""
    run["floor_rate_ratio"] = run["msgs_per_s"] / floor["msgs_per_s"]
    run["floor_cpu_ratio"] = run["cpu_us_per_msg"] / floor["cpu_us_per_msg"]
    return run


MEDIAN_KEYS = ("wall_s", "cpu_s", "peak_rss_kib", "sink_cpu_s", "msgs_per_s", "msgs_per_hour", "cpu_us_per_msg",
               "sink_cpu_us_per_msg")
RATIO_KEYS = ("rate_ratio", "cpu_ratio", "floor_rate_ratio", "floor_cpu_ratio")


def median_row(rows):
    """One row of medians (ratios: the median of the per-round ratios)."""
    m = dict(rows[0])
    for k in MEDIAN_KEYS + RATIO_KEYS + ("tls_handshakes", "tls_resumed"):
        if k in m:
            m[k] = median(r[k] for r in rows)
    if len(rows) > 1:
        m["sender"] += f" (median of {len(rows)})"
        for k in RATIO_KEYS:
            if k in m:
                m[k + "s"] = [r[k] for r in rows]
    return m


def print_table(title, rows):
    print(f"\n{title}")
    print(f"  {'sender':<32} {'sink':<10} {'msgs/s':>8} {'msgs/hour':>10} {'CPU s/100k':>10} {'us/msg':>7}"
          f" {'RSS MB':>7} {'sink us/msg':>11} {'rate x':>7} {'CPU x':>6} {'rate x fl':>9} {'CPU x fl':>8}")

    def vs_floor(r, k, width):
        if r.get("floor"):
            return f"{1:>{width}.2f}"
        return f"{r[k]:>{width}.2f}" if k in r else f"{'n/a':>{width}}"

    for r in rows:
        print(f"  {r['sender']:<32} {r['sink']:<10} {r['msgs_per_s']:>8.0f} {r['msgs_per_hour'] / 1e6:>9.1f}M"
              f" {r['cpu_us_per_msg'] / 10:>10.2f} {r['cpu_us_per_msg']:>7.1f} {r['peak_rss_kib'] / 1024:>7.1f}"
              f" {r['sink_cpu_us_per_msg']:>11.1f} {r.get('rate_ratio', 1):>7.2f} {r.get('cpu_ratio', 1):>6.2f}"
              f" {vs_floor(r, 'floor_rate_ratio', 9)} {vs_floor(r, 'floor_cpu_ratio', 8)}")


def floor_summary(run, floor, ref=None):
    """The "how close to the limit" figures of a workload, for --json and the
    line under its table."""
    out = dict(mxpress_cpu_us_per_msg=run["cpu_us_per_msg"], floor_cpu_us_per_msg=floor["cpu_us_per_msg"],
               cpu_ratio=run["floor_cpu_ratio"], mxpress_msgs_per_s=run["msgs_per_s"],
               floor_msgs_per_s=floor["msgs_per_s"], rate_ratio=run["floor_rate_ratio"],
               connections=floor["connections"], threads=floor["threads"])
    if ref is not None:
        out.update(smtp_source_cpu_us_per_msg=ref["cpu_us_per_msg"], smtp_source_msgs_per_s=ref["msgs_per_s"])
    print(f"  vs floor: mxpress {run['cpu_us_per_msg']:.1f} us/msg, floor {floor['cpu_us_per_msg']:.1f} us/msg "
          f"({run['floor_cpu_ratio']:.2f}x CPU); rate {run['msgs_per_s']:.0f} vs {floor['msgs_per_s']:.0f} msgs/s "
          f"({run['floor_rate_ratio']:.2f}x)"
          + (f"; smtp-source {ref['cpu_us_per_msg']:.1f} us/msg, {ref['msgs_per_s']:.0f} msgs/s" if ref else ""))
    return out


def delivery_workload(b, name, sinks, rounds=1):
    """Per sink, `rounds` rounds of smtp-source, mxpress, then the floor with
    mxpress's connections and threads of that round. Returns the rows (per
    sink: the medians of mxpress, the floor and smtp-source, then each
    round's when there are several) and the floor figures of the first sink."""
    size = 2000 if name == "plain-2k" else 32000
    rows, summary = [], None
    for sink in sinks:
        refs, runs, floors = [], [], []
        for _ in range(rounds):
            ref = with_ratios(b.smtp_source(size, sink), None)
            run = with_ratios(b.mxpress(TEMPLATES[name], 0, sink), ref)
            floor = with_ratios(b.floor(TEMPLATES[name], run["connections"], run["threads"], sink), ref)
            runs.append(with_floor(run, floor))
            floors.append(floor)
            refs.append(ref)
        med = [median_row(runs), median_row(floors), median_row(refs)]
        rows += med + ([r for trio in zip(runs, floors, refs) for r in trio] if rounds > 1 else [])
        if summary is None:
            summary = med
    return rows, summary


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def gate_workload(b, pairs):
    """The CI gate: `pairs` alternating (smtp-source, mxpress) pairs on mxsink,
    so that drift on the machine hits both sides alike, then one floor run
    (about a second; reported, not gated). Returns the rows (the medians
    first: mxpress with the medians of the per-pair ratios, then
    smtp-source, then the floor) and the per-pair ratios."""
    runs, refs = [], []
    for _ in range(pairs):
        ref = with_ratios(b.smtp_source(2000, "mxsink"), None)
        runs.append(with_ratios(b.mxpress(TEMPLATES["plain-2k"], 0, "mxsink"), ref))
        refs.append(ref)
    ratios = {"cpu_ratio": [r["cpu_ratio"] for r in runs], "rate_ratio": [r["rate_ratio"] for r in runs]}
    med_run, med_ref = dict(runs[0]), dict(refs[0])
    for k in ("wall_s", "cpu_s", "peak_rss_kib", "sink_cpu_s", "msgs_per_s", "msgs_per_hour", "cpu_us_per_msg",
              "sink_cpu_us_per_msg"):
        med_run[k] = median(r[k] for r in runs)
        med_ref[k] = median(r[k] for r in refs)
    med_run["cpu_ratio"] = median(ratios["cpu_ratio"])
    med_run["rate_ratio"] = median(ratios["rate_ratio"])
    med_run["sender"] += f" (median of {pairs})"
    med_ref["sender"] += f" (median of {pairs})"
    floor = with_ratios(b.floor(TEMPLATES["plain-2k"], runs[-1]["connections"], runs[-1]["threads"], "mxsink"),
                        med_ref)
    with_floor(med_run, floor)
    return [med_run, med_ref, floor] + [r for pair in zip(runs, refs) for r in pair], ratios


def tls_workload(b):
    """STARTTLS against plaintext, alternating, three rounds (mxpress
    plaintext, mxpress STARTTLS, the floor over STARTTLS with mxpress's
    connections and threads, and the floor in plaintext); medians. The
    floor's own STARTTLS / plaintext rate ratio is what this machine allows
    a sender that does nothing but TLS: the sink decrypts on the same cores."""
    plain, tls, floors, plain_floors = [], [], [], []
    for _ in range(3):
        p = with_ratios(b.mxpress(TEMPLATES["plain-2k"], 0, "mxsink"), None)
        plain.append(p)
        plain_floors.append(with_ratios(b.floor(TEMPLATES["plain-2k"], p["connections"], p["threads"], "mxsink"),
                                        None))
        t = with_ratios(b.mxpress(TEMPLATES["plain-2k"], 0, "mxsink-tls"), None)
        floor = with_ratios(b.floor(TEMPLATES["plain-2k"], t["connections"], t["threads"], "mxsink-tls"), None)
        tls.append(with_floor(t, floor))
        floors.append(floor)

    def summary(rows):
        keep = dict(rows[0])
        for k in ("wall_s", "cpu_s", "peak_rss_kib", "sink_cpu_s", "msgs_per_s", "msgs_per_hour", "cpu_us_per_msg",
                  "sink_cpu_us_per_msg", "tls_handshakes", "tls_resumed"):
            keep[k] = median(r[k] for r in rows)
        return keep

    p, t = summary(plain), summary(tls)
    t["rate_ratio"] = t["msgs_per_s"] / p["msgs_per_s"]
    t["cpu_ratio"] = t["cpu_us_per_msg"] / p["cpu_us_per_msg"]
    t["handshakes_per_100k"] = t["tls_handshakes"] / t["messages"] * 100_000
    t["resumed_per_100k"] = t["tls_resumed"] / t["messages"] * 100_000
    t["pairs"] = [(x["msgs_per_s"], y["msgs_per_s"]) for x, y in zip(plain, tls)]
    t["floor_rate_ratio"] = median(r["floor_rate_ratio"] for r in tls)
    t["floor_cpu_ratio"] = median(r["floor_cpu_ratio"] for r in tls)
    t["floor_cpu_ratios"] = [r["floor_cpu_ratio"] for r in tls]
    f_tls, f_plain = median_row(floors), median_row(plain_floors)
    t["floor_tls_rate_ratio"] = f_tls["msgs_per_s"] / f_plain["msgs_per_s"]
    return [t, p, f_tls, f_plain]


def kernel_tls():
    """Whether this kernel offers the tls ULP (kernel TLS). mxpress encrypts
    in user space either way (README: TLS); the line says what a kernel TLS
    path could be measured against here."""
    try:
        with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
            ulps = f.read().split()
    except OSError as e:
        return f"unknown ({e.strerror})"
    if "tls" in ulps:
        return "the tls ULP is offered; mxpress does not use it yet"
    release = os.uname().release
    modules = os.path.join("/lib/modules", release)
    loadable = any(f.startswith("tls.ko") for _, _, files in os.walk(modules) for f in files)
    if loadable:
        return (f"a tls module is under {modules} but not loaded (tcp_available_ulp: {' '.join(ulps) or 'none'}); "
                "mxpress does not use it yet")
    return (f"not offered by this kernel {release} (tcp_available_ulp: {' '.join(ulps) or 'none'}, no tls module); "
            "user-space TLS only")


def openssl_sign_rate(algorithm, processes):
    """Signatures a second from `openssl speed -multi PROCESSES` (RSA-2048 or
    Ed25519), summed over the processes: the machine's ceiling for signing."""
    name = "rsa2048" if algorithm == "rsa" else "ed25519"
    out = subprocess.run(["openssl", "speed", "-seconds", "3", "-mr", "-multi", str(processes), name],
                         capture_output=True, text=True, check=True).stdout
    # -mr's totals line: "+F2:IDX:BITS:SIGN/s:VERIFY/s" (RSA), "+F6:IDX:BITS:Ed25519:SIGN/s:VERIFY/s".
    tag = "+F2:" if algorithm == "rsa" else "+F6:"
    totals = [l for l in out.splitlines() if l.startswith(tag)]
    if not totals:
        raise RuntimeError(f"openssl speed {name}: no {tag} line in its output")
    return float(totals[-1].split(":")[-2])


def dkim_workload(b, algorithm):
    """plain-2k signed with one DKIM key against unsigned, alternating, three
    pairs, both to mxsink; medians. The template's From is news@town.example."""
    key = b.peers.path(f"dkim-{algorithm}.pem")
    gen = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"] if algorithm == "rsa" else ["-algorithm", "ED25519"]
    subprocess.run(["openssl", "genpkey", *gen, "-out", key], check=True, capture_output=True)
    os.chmod(key, 0o600)
    plain_config = b.config
    signed_config = b.peers.path(f"bench-dkim-{algorithm}.toml")
    with open(plain_config) as f, open(signed_config, "w") as out:
        out.write(f.read() + f'[dkim]\n[[dkim.key]]\ndomain = "town.example"\nselector = "b1"\nkey_file = "{key}"\n')
    plain, signed = [], []
    try:
        for _ in range(3):
            b.config = plain_config
            plain.append(with_ratios(b.mxpress(TEMPLATES["plain-2k"], 0, "mxsink"), None))
            b.config = signed_config
            row = with_ratios(b.mxpress(TEMPLATES["plain-2k"], 0, "mxsink"), None)
            row["sender"] += f" DKIM {algorithm}"
            signed.append(row)
    finally:
        b.config = plain_config

    def summary(rows):
        keep = dict(rows[0])
        for k in ("wall_s", "cpu_s", "peak_rss_kib", "sink_cpu_s", "msgs_per_s", "msgs_per_hour", "cpu_us_per_msg",
                  "sink_cpu_us_per_msg"):
            keep[k] = median(r[k] for r in rows)
        return keep

    p, t = summary(plain), summary(signed)
    t["rate_ratio"] = t["msgs_per_s"] / p["msgs_per_s"]
    t["cpu_ratio"] = t["cpu_us_per_msg"] / p["cpu_us_per_msg"]
    t["pairs"] = [(x["msgs_per_s"], y["msgs_per_s"]) for x, y in zip(plain, signed)]
    # The reference: OpenSSL alone signing on as many cores as mxpress had
    # shards. speed_ratio is the figure (signed messages a second
    # against signatures a second); cpu_speed_ratio compares CPU per message
    # with CPU per signature, which the sink's share of the cores does not move.
    shards = t["threads"]
    t["openssl_sign_per_s"] = openssl_sign_rate(algorithm, shards)
    t["speed_ratio"] = t["msgs_per_s"] / t["openssl_sign_per_s"]
    t["cpu_speed_ratio"] = (1e6 / t["openssl_sign_per_s"] * shards) / t["cpu_us_per_msg"]
    return [t, p]


SHAPED_RATIO_MIN = 0.95


def shaped_workload(b):
    """plain-2k with every shaping section checked on every message but none
    binding, against plain-2k without them; three alternating pairs."""
    plain_config = b.config
    shaped_config = b.peers.path("bench-shaped.toml")
    with open(plain_config) as f, open(shaped_config, "w") as out:
        out.write(f.read())
        out.write('\n[provider."bench"]\nmatch = ["mx0.test", "mx1.test", "mx2.test", "mx3.test"]\n'
                  'max_message_rate = "1000000000/h,burst=1000000"\nconnections_max = 10000\n')
        for k in range(1000):
            out.write(f'\n[domain."d{k:04d}.test"]\nmax_message_rate = "1000000/s,burst=100000"\n')
    plain, shaped = [], []
    try:
        for _ in range(3):
            b.config = plain_config
            plain.append(with_ratios(b.mxpress(TEMPLATES["plain-2k"], 0, "mxsink"), None))
            b.config = shaped_config
            row = with_ratios(b.mxpress(TEMPLATES["plain-2k"], 0, "mxsink"), None)
            row["sender"] += " shaped"
            shaped.append(row)
    finally:
        b.config = plain_config
    keys = ("wall_s", "cpu_s", "peak_rss_kib", "sink_cpu_s", "msgs_per_s", "msgs_per_hour", "cpu_us_per_msg",
            "sink_cpu_us_per_msg")
    p, s = dict(plain[0]), dict(shaped[0])
    for k in keys:
        p[k] = median(r[k] for r in plain)
        s[k] = median(r[k] for r in shaped)
    s["rate_ratio"] = s["msgs_per_s"] / p["msgs_per_s"]
    s["cpu_ratio"] = s["cpu_us_per_msg"] / p["cpu_us_per_msg"]
    s["pairs"] = [(x["msgs_per_s"], y["msgs_per_s"]) for x, y in zip(plain, shaped)]
    return [s, p]


def udp_socket_drops(address):
    """Datagrams the kernel dropped at the UDP socket bound to `address`
    ("127.0.0.1:PORT"): a full receive buffer. /proc/net/udp's last column."""
    host, port = address.rsplit(":", 1)
    local = "".join(f"{int(x):02X}" for x in reversed(host.split("."))) + f":{int(port):04X}"
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local:
                return int(fields[-1])
    return 0


def domains_workloads(b, names, runs, messages, resolver):
    """domains-1k (lookups against --route to the MX addresses) and
    domains-20k, in the same rounds: each round runs 1k with lookups, 1k
    routed, then 20k, so drift hits them alike. Lookups go to `resolver`
    ("unbound" or "dnsmasq"), which serves both lists' MX records and the
    four MX hosts' addresses. A run has a retry stall when mxpress asked a
    DNS question again after a timeout (summary dns_retries) or the
    resolver's socket dropped a query."""
    r1k, r20k = b.peers.path("domains-1k.csv"), b.peers.path("domains-20k.csv")
    gen = ["python3", os.path.join(ROOT, "scripts/gen-recipients"), "--rows", str(messages)]
    subprocess.run(gen + ["--domains", "1000", "--out", r1k], check=True)
    subprocess.run(gen + ["--domains", "20000", "--uniform", "--domain-pattern", "e{:05d}.test", "--out", r20k],
                   check=True)
    mx_of = [(f"d{k:04d}.test", k % 4) for k in range(1000)] + [(f"e{k:05d}.test", k % 4) for k in range(20000)]
    if resolver == "unbound":
        dns = b.peers.unbound([(d, "MX", f"10 mx{i}.test.") for d, i in mx_of]
                              + [(f"mx{i}.test", "A", h) for i, h in enumerate(MX)])
        resolver_pid = b.peers.unbound_proc.pid
    else:
        dns = b.peers.dnsmasq([f"mx-host={d},mx{i}.test,10" for d, i in mx_of]
                              + [f"host-record=mx{i}.test,{h}" for i, h in enumerate(MX)])
        resolver_pid = b.peers.dnsmasq_proc.pid

    def routes(port):  # every domain to its MX host's address, as the resolver answers
        return sum((["--route", f"d{k:04d}.test={MX[k % 4]}:{port}"] for k in range(1000)), [])

    kinds = [("lookups", r1k, ())] if "domains-1k" in names or "domains-20k" in names else []
    if "domains-1k" in names:
        kinds.append(("routed", r1k, routes))
    if "domains-20k" in names:
        kinds.append(("20k", r20k, ()))
    rows = {k: [] for k, _, _ in kinds}
    for _ in range(runs):
        for kind, recipients, extra in kinds:
            before, resolver_cpu = udp_socket_drops(dns), proc_cpu_seconds(resolver_pid)
            row = with_ratios(b.mxpress(TEMPLATES["plain-2k"], 0, "mxsink", extra=extra, recipients=recipients,
                                        dns=dns, messages=messages), None)
            row["dns_drops"] = udp_socket_drops(dns) - before
            row["resolver_cpu_s"] = proc_cpu_seconds(resolver_pid) - resolver_cpu
            row["stall"] = row["dns_retries"] > 0 or row["dns_drops"] > 0
            row["sender"] += {"lookups": f" 1k {resolver}", "routed": " 1k --route", "20k": f" 20k {resolver}"}[kind]
            rows[kind].append(row)
    keys = ("wall_s", "cpu_s", "peak_rss_kib", "sink_cpu_s", "msgs_per_s", "msgs_per_hour", "cpu_us_per_msg",
            "sink_cpu_us_per_msg")
    med = {}
    for kind, rs in rows.items():
        m = dict(rs[0])
        for k in keys:
            m[k] = median(r[k] for r in rs)
        m["sender"] += f" (median of {len(rs)})"
        m["stalls"] = sum(1 for r in rs if r["stall"])
        m["runs"] = len(rs)
        m["walls"] = [r["wall_s"] for r in rs]
        m["resolver_cpu_s"] = median(r["resolver_cpu_s"] for r in rs)
        med[kind] = m
    out = {}
    look = med["lookups"]
    if "routed" in med:
        routed = med["routed"]
        ratios = [x["wall_s"] / y["wall_s"] for x, y in zip(rows["lookups"], rows["routed"])]
        look["time_ratio_to_routed"] = median(ratios)
        look["time_ratios"] = ratios
        look["rate_ratio"] = look["msgs_per_s"] / routed["msgs_per_s"]
        look["cpu_ratio"] = look["cpu_us_per_msg"] / routed["cpu_us_per_msg"]
        out["domains-1k"] = [look, routed]
    if "20k" in med:
        t = med["20k"]
        ratios = [y["wall_s"] / x["wall_s"] for x, y in zip(rows["lookups"], rows["20k"])]  # rate 20k / rate 1k
        t["rate_ratio"] = t["msgs_per_s"] / look["msgs_per_s"]
        t["rate_ratios"] = [1 / r for r in ratios]
        t["cpu_ratio"] = t["cpu_us_per_msg"] / look["cpu_us_per_msg"]
        out["domains-20k"] = [t, look]
    return out


def memory_workload(peers, rows):
    path = peers.path("big.csv")
    subprocess.run(["python3", os.path.join(ROOT, "scripts/gen-recipients"), "--rows", str(rows), "--domains",
                    "1000", "--out", path], check=True)
    wall, cpu, rss, out = timed([MXPRESS, "send", "--dry-run", "--recipients", path, "--message",
                                 os.path.join(ROOT, TEMPLATES["plain-2k"]), "--from", "b@town.example",
                                 "--journal", peers.path("big.jsonl"), "--progress", "off"])
    os.unlink(path)
    os.unlink(peers.path("big.jsonl"))
    return dict(rows=rows, wall_s=wall, cpu_s=cpu, peak_rss_mb=rss / 1024)


def profile(workload, messages):
    """CPU profile of mxpress on a workload: perf where it works, else callgrind."""
    with Peers() as peers:
        b = Bench(peers, messages)
        procs = b.start_sinks("mxsink")
        args = [MXPRESS, "send", "--recipients", b.recipients, "--message", os.path.join(ROOT, TEMPLATES[workload]),
                "--from", "bounce@town.example", "--dns", b.dns, "--mx-port", str(b.port), "--journal",
                peers.path("j.jsonl"), "--progress", "off", "--threads", "1"]
        data = peers.path("perf.data")
        perf = shutil.which("perf")
        if perf and subprocess.run([perf, "record", "-q", "-o", data, "--", "true"],
                                   capture_output=True).returncode == 0:
            subprocess.run([perf, "record", "-q", "-g", "-o", data, "--"] + args, check=True,
                           stdout=subprocess.DEVNULL)
            report = subprocess.run([perf, "report", "-i", data, "--no-children", "--sort", "sym", "-g", "none",
                                     "--stdio"], capture_output=True, text=True).stdout
            lines = [l for l in report.splitlines() if l.strip() and not l.startswith("#")]
            print(f"perf profile of mxpress send ({workload}, {messages} messages, --threads 1), top 30:")
            print("\n".join(lines[:30]))
        else:
            out = peers.path("callgrind.out")
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + args, check=True,
                           capture_output=True)
            report = subprocess.run(["callgrind_annotate", out], capture_output=True, text=True).stdout
            print(f"callgrind profile of mxpress send ({workload}, {messages} messages), top functions:")
            print("\n".join(report.splitlines()[:45]))
        Bench.stop_sinks(procs)


def micro(json_out):
    exe = os.path.join(ROOT, "build", "bench", "mxpress_micro_bench")
    args = [exe, "--benchmark_repetitions=5", "--benchmark_report_aggregates_only=true"]
    if json_out:
        args += [f"--benchmark_out={json_out}", "--benchmark_out_format=json"]
    subprocess.run(args, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"plain-2k only, {GATE_PAIRS} alternating pairs against smtp-source, mxsink, "
                         "medians; the CI gate")
    ap.add_argument("--pairs", type=int, default=GATE_PAIRS, help="pairs for --quick")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of plain-2k and plain-32k (smtp-source, mxpress, floor each); medians (default 1)")
    ap.add_argument("--messages", type=int, help="messages per delivery workload (default 200,000)")
    ap.add_argument("--workloads",
                    default="plain-2k,plain-32k,tls-2k,dkim-rsa-2k,dkim-ed25519-2k,shaped-2k,domains-1k,domains-20k,scale,"
                            "memory")
    ap.add_argument("--memory-rows", type=int, default=10_000_000)
    ap.add_argument("--domain-runs", type=int, default=DOMAINS_RUNS,
                    help=f"rounds of domains-1k and domains-20k (default {DOMAINS_RUNS})")
    ap.add_argument("--domain-messages", type=int, default=DOMAINS_MESSAGES,
                    help=f"messages per domains-1k and domains-20k run (default {DOMAINS_MESSAGES:,})")
    ap.add_argument("--resolver", choices=("unbound", "dnsmasq"), default="unbound",
                    help="the resolver of domains-1k and domains-20k (default unbound: dnsmasq scans its MX "
                         "records per query, which bounds the 20,000-domain run by the resolver's CPU)")
    ap.add_argument("--bin", help="the directory of the mxpress and mxsink to measure (default: build/)")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--target-per-hour", type=float, default=DEFAULT_TARGET_PER_HOUR,
                    help=f"exit 1 when plain-2k's mxpress rate is below this (default {DEFAULT_TARGET_PER_HOUR:,})")
    ap.add_argument("--profile", metavar="WORKLOAD", help="record a CPU profile of mxpress on WORKLOAD and stop")
    ap.add_argument("--micro", action="store_true", help="run the Google Benchmark micro benches and stop")
    a = ap.parse_args()
    if a.bin:
        global MXPRESS, MXSINK
        MXPRESS, MXSINK = os.path.join(a.bin, "mxpress"), os.path.join(a.bin, "mxsink")

    if a.micro:
        micro(a.json)
        return 0
    if a.profile:
        if a.profile not in TEMPLATES:
            sys.exit(f"bench: --profile takes one of {', '.join(TEMPLATES)}")
        profile(a.profile, a.messages or 50_000)
        return 0

    workloads = ["plain-2k"] if a.quick else a.workloads.split(",")
    messages = a.messages or (50_000 if a.quick else 200_000)
    results = {"messages": messages, "cores": os.cpu_count(), "workloads": {}, "vs_floor": {}}
    failed = []
    missed = []  # goals not met on this machine: printed and in --json, exit status unchanged
    with Peers() as peers:
        b = Bench(peers, messages)
        domain_names = [w for w in workloads if w in ("domains-1k", "domains-20k")]
        if domain_names:
            domain_rows = domains_workloads(b, domain_names, a.domain_runs, a.domain_messages, a.resolver)
        for w in workloads:
            if w == "plain-2k" and a.quick:
                rows, ratios = gate_workload(b, a.pairs)
                results["workloads"][w] = rows
                results["gate_ratios"] = ratios
                print_table(f"gate: {messages:,} messages per run, {a.pairs} alternating pairs, medians first, "
                            "then one floor run", rows)
                for k, v in ratios.items():
                    print(f"  {k} per pair: {' '.join(f'{x:.2f}' for x in v)} (spread {max(v) - min(v):.2f})")
                results["vs_floor"][w] = floor_summary(rows[0], rows[2], rows[1])
            elif w in ("plain-2k", "plain-32k"):
                sinks = ["mxsink"] if a.quick or w == "plain-32k" else ["mxsink", "smtp-sink"]
                rows, (run, floor, ref) = delivery_workload(b, w, sinks, a.rounds)
                results["workloads"][w] = rows
                print_table(f"{w}: {messages:,} personalized messages, 1,000 domains, 4 MX addresses on loopback"
                            + (f", medians of {a.rounds} rounds first" if a.rounds > 1 else ""), rows)
                results["vs_floor"][w] = floor_summary(run, floor, ref)
            elif w == "scale":
                threads = list(range(1, (os.cpu_count() or 1) + 1))
                ref = with_ratios(b.smtp_source(2000, "mxsink"), None)
                rows = [with_ratios(b.mxpress(TEMPLATES["plain-2k"], t, "mxsink"), ref) for t in threads] + [ref]
                results["workloads"]["scale"] = rows
                print_table("scale: plain-2k by --threads", rows)
                if len(threads) > 1:
                    eff = rows[len(threads) - 1]["msgs_per_s"] / (threads[-1] * rows[0]["msgs_per_s"])
                    results["scale_efficiency"] = eff
                    print(f"  1 -> {threads[-1]} threads: {eff:.2f} of linear (sender, sink and kernel share "
                          f"{os.cpu_count()} cores)")
            elif w == "tls-2k":
                rows = tls_workload(b)
                results["workloads"][w] = rows
                t = rows[0]
                print_table(f"tls-2k: {messages:,} messages over STARTTLS against plaintext, mxsink, medians of 3 "
                            "(ratios: STARTTLS / plaintext)", rows)
                results["vs_floor"][w] = floor_summary(t, rows[2])
                print(f"  handshakes: {t['handshakes_per_100k']:.0f} per 100k messages, "
                      f"{t['resumed_per_100k']:.0f} of them resumed; rate ratio {t['rate_ratio']:.2f} "
                      f"(goal >= {TLS_RATE_RATIO_MIN}), CPU ratio {t['cpu_ratio']:.2f}")
                print(f"  the floor's own STARTTLS / plaintext rate: {t['floor_tls_rate_ratio']:.2f} (what these "
                      f"{os.cpu_count()} cores allow when the sink decrypts beside the sender)")
                print(f"  kernel TLS: {kernel_tls()}")
                if t["rate_ratio"] < TLS_RATE_RATIO_MIN:
                    # Reported, not failed (like scale's efficiency): on a
                    # 2-core box the TLS sink competes with the sender for the
                    # same cores, so the ratio says as much about the machine.
                    missed.append(f"tls-2k: STARTTLS rate {t['rate_ratio']:.2f}x plaintext "
                                  f"(goal >= {TLS_RATE_RATIO_MIN})")
            elif w in ("dkim-rsa-2k", "dkim-ed25519-2k"):
                algorithm = "rsa" if w == "dkim-rsa-2k" else "ed25519"
                rows = dkim_workload(b, algorithm)
                results["workloads"][w] = rows
                t = rows[0]
                print_table(f"{w}: {messages:,} messages signed ({algorithm}) against unsigned, mxsink, medians of 3 "
                            "(ratios: signed / unsigned)", rows)
                print(f"  signing adds {t['cpu_us_per_msg'] - rows[1]['cpu_us_per_msg']:.1f} us CPU per message; "
                      f"rate ratio {t['rate_ratio']:.2f}, CPU ratio {t['cpu_ratio']:.2f}")
                goal = DKIM_SPEED_RATIO_MIN[algorithm]
                print(f"  openssl speed -multi {t['threads']}: {t['openssl_sign_per_s']:,.0f} signatures/s; signed "
                      f"send {t['speed_ratio']:.2f}x that (goal >= {goal}); CPU per message against CPU per "
                      f"signature {t['cpu_speed_ratio']:.2f}x")
                if t["speed_ratio"] < goal:
                    # Reported, not failed: here mxsink and the two shards share
                    # two cores, so part of what OpenSSL had goes to the sink.
                    missed.append(f"{w}: signed rate {t['speed_ratio']:.2f}x openssl speed (goal >= {goal})")
            elif w == "shaped-2k":
                rows = shaped_workload(b)
                results["workloads"][w] = rows
                t = rows[0]
                print_table(f"shaped-2k: {messages:,} messages with 1,000 domain sections and a provider (none "
                            "binding) against none, mxsink, medians of 3 (ratios: shaped / plain)", rows)
                print(f"  rate ratio {t['rate_ratio']:.2f} (goal >= {SHAPED_RATIO_MIN}), CPU ratio "
                      f"{t['cpu_ratio']:.2f}; pairs (msgs/s plain, shaped): "
                      + ", ".join(f"{x:.0f}/{y:.0f}" for x, y in t["pairs"]))
                if t["rate_ratio"] < SHAPED_RATIO_MIN:
                    # Reported, not failed: one pair's noise on a shared 2-core
                    # box is larger than the cost measured (see the pairs).
                    missed.append(f"shaped-2k: rate {t['rate_ratio']:.2f}x unshaped (goal >= {SHAPED_RATIO_MIN})")
            elif w == "domains-1k":
                rows = domain_rows[w]
                results["workloads"][w] = rows
                t, routed = rows
                print_table(f"domains-1k: {a.domain_messages:,} messages over 1,000 domains, lookups through {a.resolver} "
                            f"against --route to the MX addresses, mxsink, medians of {t['runs']} (ratios: lookups "
                            "/ routed)", rows)
                print(f"  time ratio {t['time_ratio_to_routed']:.2f} (goal <= {LOOKUP_TIME_RATIO_MAX}), per run: "
                      + " ".join(f"{x:.2f}" for x in t["time_ratios"]))
                for r in rows:
                    print(f"  {r['sender']}: wall s " + " ".join(f"{x:.2f}" for x in r["walls"])
                          + f"; retry stalls in {r['stalls']} of {r['runs']} runs; {a.resolver} CPU "
                          f"{r['resolver_cpu_s']:.2f} s (median)")
                if t["time_ratio_to_routed"] > LOOKUP_TIME_RATIO_MAX:
                    missed.append(f"domains-1k: lookups take {t['time_ratio_to_routed']:.2f}x the routed time "
                                  f"(goal <= {LOOKUP_TIME_RATIO_MAX})")
                if t["stalls"] or routed["stalls"]:
                    missed.append(f"domains-1k: a retry stall in {t['stalls']} of {t['runs']} runs (goal: none)")
            elif w == "domains-20k":
                rows = domain_rows[w]
                results["workloads"][w] = rows
                t = rows[0]
                print_table(f"domains-20k: {a.domain_messages:,} messages over 20,000 domains (5 each) against "
                            f"1,000 domains, both through {a.resolver}, mxsink, medians of {t['runs']} (ratios: 20k / 1k)",
                            rows)
                print(f"  rate ratio {t['rate_ratio']:.2f} (goal >= {DOMAINS_20K_RATE_RATIO_MIN}), per run: "
                      + " ".join(f"{x:.2f}" for x in t["rate_ratios"]) + f"; CPU ratio {t['cpu_ratio']:.2f}")
                print(f"  {t['sender']}: wall s " + " ".join(f"{x:.2f}" for x in t["walls"])
                      + f"; retry stalls in {t['stalls']} of {t['runs']} runs; {a.resolver} CPU "
                      f"{t['resolver_cpu_s']:.2f} s (median)")
                if t["rate_ratio"] < DOMAINS_20K_RATE_RATIO_MIN:
                    missed.append(f"domains-20k: rate {t['rate_ratio']:.2f}x the 1,000-domain rate "
                                  f"(goal >= {DOMAINS_20K_RATE_RATIO_MIN})")
                if t["stalls"]:
                    missed.append(f"domains-20k: a retry stall in {t['stalls']} of {t['runs']} runs (goal: none)")
            elif w == "memory":
                m = memory_workload(peers, a.memory_rows)
                results["workloads"]["memory"] = m
                print(f"\nmemory: {m['rows']:,} rows through --dry-run in {m['wall_s']:.1f} s, "
                      f"peak RSS {m['peak_rss_mb']:.1f} MB (limit 200 MB)")
                if m["peak_rss_mb"] >= 200:
                    failed.append(f"memory: peak RSS {m['peak_rss_mb']:.1f} MB >= 200 MB")
            else:
                sys.exit(f"bench: unknown workload {w}")

    main_rows = results["workloads"].get("plain-2k")
    if main_rows:
        run = next(r for r in main_rows if r["sender"].startswith("mxpress") and r["sink"] == "mxsink")
        if run["msgs_per_hour"] < a.target_per_hour:
            failed.append(f"plain-2k: {run['msgs_per_hour'] / 1e6:.1f}M messages/hour is below the target of "
                          f"{a.target_per_hour / 1e6:.1f}M")
        if a.quick:
            if run["cpu_ratio"] > GATE_CPU_RATIO_MAX:
                failed.append(f"gate: CPU per message {run['cpu_ratio']:.2f}x smtp-source's (max {GATE_CPU_RATIO_MAX})")
            if run["rate_ratio"] < GATE_RATE_RATIO_MIN:
                failed.append(f"gate: rate {run['rate_ratio']:.2f}x smtp-source's (min {GATE_RATE_RATIO_MIN})")
            print(f"\ngate: median CPU ratio {run['cpu_ratio']:.2f} (max {GATE_CPU_RATIO_MAX}), median rate ratio "
                  f"{run['rate_ratio']:.2f} (min {GATE_RATE_RATIO_MIN}), target {a.target_per_hour / 1e6:.0f}M/h")
    for w in workloads:  # delivery workloads the floor cannot run: DNS, DKIM, shaping, thread counts
        if w != "memory" and w not in results["vs_floor"]:
            results["vs_floor"][w] = "n/a"
    results["failed"] = failed
    results["goals_missed"] = missed
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    for m in missed:
        print(f"bench: goal missed: {m}", file=sys.stderr)
    for f in failed:
        print(f"bench: FAILED: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
