"""End-to-end delivery benchmark; run through scripts/bench (which builds)."""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from peers import Peers, free_port, wait_tcp  # noqa: E402

MX = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


def timed(args, **kw):
    """Runs a command under /usr/bin/time; returns (wall s, cpu s, peak RSS KiB, stdout)."""
    fmt = "@@TIME %e %U %S %M"
    p = subprocess.run(["/usr/bin/time", "-f", fmt] + args, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(args[:2])} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    line = [l for l in p.stderr.splitlines() if l.startswith("@@TIME")][-1].split()
    return float(line[1]), float(line[2]) + float(line[3]), int(line[4]), p.stdout


def start_sink(peers, port):
    mxsink = os.path.join(ROOT, "build", "mxsink")
    args = [mxsink, "--threads", "1"] + sum((["--listen", f"{h}:{port}"] for h in MX), [])
    p = subprocess.Popen(args)
    peers.procs.append(p)
    for h in MX:
        wait_tcp(h, port)
    return p


def proc_cpu_seconds(pid):
    """user+sys CPU seconds of a running process, from /proc (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_smtp_sinks(peers, port):
    """Postfix's smtp-sink, one process per MX address (it is single-threaded)."""
    sinks = []
    for h in MX:
        args = ["smtp-sink"] + (["-u", "nobody"] if os.geteuid() == 0 else []) + [f"{h}:{port}", "1000"]
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peers.procs.append(p)
        sinks.append(p)
    for h in MX:
        wait_tcp(h, port)
    return sinks


def sink_comparison(peers, port, n, send_mxpress):
    """CPU per message of mxsink and of Postfix's smtp-sink (x4) under the
    same load: smtp-source x4 (no pipelining), then mxpress (pipelined)."""
    out = []
    for load in ("smtp-source", "mxpress"):
        for name in ("mxsink", "smtp-sink"):
            sinks = [start_sink(peers, port)] if name == "mxsink" else start_smtp_sinks(peers, port)
            if load == "smtp-source":
                procs = [subprocess.Popen(["smtp-source", "-d", "-s", "20", "-m", str(n // len(MX)), "-l", "2000",
                                           "-f", "a@x.test", "-t", "b@y.test", f"{h}:{port}"]) for h in MX]
                for p in procs:
                    p.wait()
                msgs = n // len(MX) * len(MX)
            else:
                msgs = send_mxpress()
            cpu = sum(proc_cpu_seconds(p.pid) for p in sinks)
            for p in sinks:
                p.terminate()
                p.wait()
            out.append({"load": load, "sink": name, "cpu_s": cpu, "cpu_us_per_msg": cpu / msgs * 1e6})
    return out


def main():
    ap = argparse.ArgumentParser(description="end-to-end delivery benchmark (loopback)")
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--threads", default="1,2", help="mxpress --threads values to run, comma separated")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--no-sinks", action="store_true", help="skip the mxsink vs smtp-sink CPU comparison")
    a = ap.parse_args()
    n = a.messages
    results = {"messages": n, "runs": []}
    with Peers() as peers:
        port = free_port("127.0.0.2")
        lines = [f"mx-host=d{k:04d}.test,mx{k % 4}.test,10" for k in range(1000)]
        lines += [f"host-record=mx{i}.test,{h}" for i, h in enumerate(MX)]
        dns = peers.dnsmasq(lines)
        recipients = peers.path("r.csv")
        subprocess.run(["python3", os.path.join(ROOT, "scripts/gen-recipients"), "--rows", str(n), "--domains",
                        "1000", "--out", recipients], check=True)
        message = os.path.join(ROOT, "bench/templates/plain-2k.eml")
        mxpress = os.path.join(ROOT, "build", "mxpress")

        for threads in [int(t) for t in a.threads.split(",")]:
            sink = start_sink(peers, port)
            j = peers.path(f"j{threads}.jsonl")
            wall, cpu, rss, out = timed([mxpress, "send", "--recipients", recipients, "--message", message,
                                         "--from", "bounce@town.example", "--dns", dns, "--mx-port", str(port),
                                         "--threads", str(threads), "--journal", j, "--progress", "off",
                                         "--summary-json", peers.path("s.json")])
            with open(peers.path("s.json")) as f:
                s = json.load(f)
            if s["delivered"] != n:
                sys.exit(f"bench: only {s['delivered']} of {n} delivered:\n{out}")
            sink.terminate()
            sink.wait()
            results["runs"].append({"name": f"mxpress --threads {threads}", "wall_s": wall, "cpu_s": cpu,
                                    "peak_rss_kib": rss})

        # Reference: smtp-source, one process per MX address, same sink.
        sink = start_sink(peers, port)
        per = n // len(MX)
        procs = []
        start = time.monotonic()
        for h in MX:
            procs.append(subprocess.Popen(["/usr/bin/time", "-f", "@@TIME %e %U %S %M", "smtp-source", "-d", "-s",
                                           "20", "-m", str(per), "-l", "2000", "-f", "a@x.test", "-t", "b@y.test",
                                           f"{h}:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        cpu = 0.0
        rss = 0
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                sys.exit(f"bench: smtp-source failed: {err}")
            f = [l for l in err.splitlines() if l.startswith("@@TIME")][-1].split()
            cpu += float(f[2]) + float(f[3])
            rss = max(rss, int(f[4]))
        wall = time.monotonic() - start
        sink.terminate()
        sink.wait()
        ref = {"name": f"smtp-source x{len(MX)} (-d -s 20 -l 2000)", "wall_s": wall, "cpu_s": cpu,
               "peak_rss_kib": rss, "messages": per * len(MX)}
        results["reference"] = ref
        if not a.no_sinks:
            def send_mxpress():
                jp = peers.path("jsink.jsonl")
                if os.path.exists(jp):
                    os.unlink(jp)
                timed([mxpress, "send", "--recipients", recipients, "--message", message, "--from",
                       "bounce@town.example", "--dns", dns, "--mx-port", str(port), "--journal", jp,
                       "--progress", "off"])
                return n
            results["sinks"] = sink_comparison(peers, port, n, send_mxpress)

    def rate(r, msgs):
        return msgs / r["wall_s"]

    ref_msgs = ref["messages"]
    print(f"\n{n} personalized 2 KB messages, 1,000 domains, 4 MX addresses, mxsink on loopback\n")
    print(f"{'run':<38} {'msgs/s':>9} {'msgs/hour':>12} {'CPU s/100k':>11} {'us/msg':>7} {'RSS MB':>7}"
          f" {'rate x':>7} {'CPU x':>6}")
    ref_rate = rate(ref, ref_msgs)
    ref_us = ref["cpu_s"] / ref_msgs * 1e6
    for r in results["runs"] + [ref]:
        msgs = r.get("messages", n)
        us = r["cpu_s"] / msgs * 1e6
        r.update(msgs_per_s=rate(r, msgs), msgs_per_hour=rate(r, msgs) * 3600, cpu_us_per_msg=us,
                 rate_ratio=rate(r, msgs) / ref_rate, cpu_ratio=us / ref_us)
        print(f"{r['name']:<38} {r['msgs_per_s']:>9.0f} {r['msgs_per_hour'] / 1e6:>11.1f}M "
              f"{us * 1e5 / 1e6:>11.2f} {us:>7.1f} {r['peak_rss_kib'] / 1024:>7.1f} {r['rate_ratio']:>7.2f}"
              f" {r['cpu_ratio']:>6.2f}")
    runs = {r["name"]: r for r in results["runs"]}
    if "mxpress --threads 1" in runs and "mxpress --threads 2" in runs:
        eff = runs["mxpress --threads 2"]["msgs_per_s"] / (2 * runs["mxpress --threads 1"]["msgs_per_s"])
        print(f"\nscaling 1 -> 2 threads: {eff:.2f} of linear (sink and sender share the 2 cores here)")
    if "sinks" in results:
        print()
        for load in ("smtp-source", "mxpress"):
            s = {x["sink"]: x for x in results["sinks"] if x["load"] == load}
            print(f"sink CPU under {load} load: mxsink {s['mxsink']['cpu_us_per_msg']:.1f} us/msg, "
                  f"smtp-sink x4 {s['smtp-sink']['cpu_us_per_msg']:.1f} us/msg "
                  f"(ratio {s['mxsink']['cpu_us_per_msg'] / s['smtp-sink']['cpu_us_per_msg']:.2f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
