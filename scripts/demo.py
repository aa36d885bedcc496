"""The main job on its embedded default; run through scripts/demo (which builds)."""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from peers import Peers, certs, free_port, wait_tcp  # noqa: E402

MX = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


def main():
    ap = argparse.ArgumentParser(description="mxpress demo on loopback")
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--threads", type=int, default=0, help="mxpress --threads (default: number of cores)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build"), help="where mxpress and mxsink are built")
    ap.add_argument("--plain", action="store_true",
                    help="plaintext SMTP (default: STARTTLS, mxsink with a throwaway certificate)")
    a = ap.parse_args()
    bin_dir = os.path.abspath(a.bin)
    with Peers() as peers:
        port = free_port("127.0.0.2")
        lines = [f"mx-host=d{k:04d}.test,mx{k % 4}.test,10" for k in range(1000)]
        lines += [f"host-record=mx{i}.test,{h}" for i, h in enumerate(MX)]
        dns = peers.dnsmasq(lines)
        tls = []
        if not a.plain:
            # Warm STARTTLS pools are what mxpress is for: mxsink offers
            # STARTTLS with a certificate made for this run; mxpress's default
            # policy (opportunistic) takes it and resumes sessions per pool.
            c = certs(peers)
            tls = ["--tls-cert", os.path.join(c, "mx.crt"), "--tls-key", os.path.join(c, "mx.key")]
        sink = subprocess.Popen([os.path.join(bin_dir, "mxsink"), "--stats-json", peers.path("sink.json")] + tls +
                                sum((["--listen", f"{h}:{port}"] for h in MX), []))
        peers.procs.append(sink)
        for h in MX:
            wait_tcp(h, port)
        recipients = peers.path("recipients.csv")
        subprocess.run(["python3", os.path.join(ROOT, "scripts/gen-recipients"), "--rows", str(a.messages),
                        "--domains", "1000", "--out", recipients], check=True)
        print(f"demo: {a.messages} recipients over 1,000 domains; MX from dnsmasq at {dns}; "
              f"mxsink on {', '.join(MX)} port {port}, "
              f"{'plaintext' if a.plain else 'STARTTLS (the tls: line counts handshakes and resumptions)'}",
              flush=True)
        args = [os.path.join(bin_dir, "mxpress"), "send", "--recipients", recipients,
                "--message", os.path.join(ROOT, "bench/templates/plain-2k.eml"), "--from", "bounce@town.example",
                "--dns", dns, "--mx-port", str(port), "--journal", peers.path("journal.jsonl")]
        if a.threads:
            args += ["--threads", str(a.threads)]
        rc = subprocess.run(args).returncode
        with open(peers.path("journal.jsonl")) as f:
            print("demo: first journal lines:")
            for _ in range(2):
                print("  " + f.readline().rstrip())
        sys.exit(rc)


if __name__ == "__main__":
    main()
