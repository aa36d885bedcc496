"""Real peers on loopback for integration tests: dnsmasq for MX answers and
Postfix's smtp-sink as receivers. Every process is started here, on
127.0.0.0/8 only, and stopped by PID when the fixture ends.

See ../shared/PEERS.md for how each peer behaves on this machine.
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time


def free_port(host="127.0.0.1", kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_tcp(host, port, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {seconds}s")


class Peers:
    """Starts and stops processes; use as a context manager."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mxpress-it-")
        os.chmod(self.dir, 0o755)
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def dnsmasq(self, lines):
        """Serves the given dnsmasq config lines on 127.0.0.1; returns 'ip:port'."""
        port = free_port(kind=socket.SOCK_DGRAM)
        conf = self.path("dnsmasq.conf")
        with open(conf, "w") as f:
            f.write("local=/test/\n")
            f.write("\n".join(lines) + "\n")
        args = ["dnsmasq", "--keep-in-foreground", f"--port={port}", "--listen-address=127.0.0.1",
                "--bind-interfaces", "--no-resolv", "--no-hosts", f"--conf-file={conf}",
                f"--pid-file={self.path('dnsmasq.pid')}", "--log-facility=-", "--quiet-dhcp"]
        if os.geteuid() == 0:
            args.append("--user=nobody")
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        # Wait until it answers.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(port), "@127.0.0.1",
                                  "probe.invalid.test", "A"], capture_output=True, text=True)
            if out.returncode == 0 and "connection refused" not in out.stdout:
                return f"127.0.0.1:{port}"
            time.sleep(0.1)
        raise RuntimeError("dnsmasq did not answer")

    def smtp_sink(self, host, port, flags=(), dump=True):
        """Starts smtp-sink on host:port; returns its dump directory (or None)."""
        args = ["smtp-sink"]
        dump_dir = None
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        if dump:
            dump_dir = self.path(f"dump-{host.strip('[]').replace(':', '_')}-{port}")
            os.makedirs(dump_dir)
            os.chmod(dump_dir, 0o777)
            args += ["-d", dump_dir + "/%H%M%S."]
        args += list(flags) + [f"{host}:{port}", "1000"]
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_tcp(host.strip("[]"), port)
        return dump_dir


def read_dumps(dump_dir):
    """Parses smtp-sink dump files: returns a list of (recipients, message text)."""
    out = []
    for name in sorted(os.listdir(dump_dir)):
        with open(os.path.join(dump_dir, name), "rb") as f:
            text = f.read().decode("utf-8", "replace")
        rcpts = []
        for line in text.split("\n"):
            if line.startswith("X-Rcpt-Args: "):
                rcpts.append(line[len("X-Rcpt-Args: "):].strip().strip("<>").split(">")[0])
        out.append((rcpts, text))
    return out
