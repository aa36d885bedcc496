"""Real peers on loopback for integration tests: dnsmasq for MX answers,
Postfix's smtp-sink and a private Postfix smtpd (TLS) as receivers, a private
Exim daemon (TLS by GnuTLS; unpacked by scripts/setup, not installed), mxsink,
and an aiosmtpd submission server for relays. Every process is started here, on
127.0.0.0/8 only, and stopped by PID when the fixture ends.

Each helper below notes the traps of its peer on Debian 12.

Each test file ends with run_tests(): a run where a test was skipped exits
with SKIP_EXIT (77), which tests/CMakeLists.txt declares as ctest's
SKIP_RETURN_CODE, so a skip shows as "Skipped", never as "Passed".
"""
import collections
import email.parser
import email.policy
import glob
import hashlib
import json
import mailbox
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import sys
import time
import unittest

# Exit status of a run in which a test was skipped (and none failed): ctest's
# SKIP_RETURN_CODE for every integration test (the automake convention).
SKIP_EXIT = 77


def run_tests(argv):
    """Runs the unittest cases named in argv (all when none); exits 1 on a
    failure or error, SKIP_EXIT when a test was skipped, else 0."""
    program = unittest.main(module="__main__", argv=[sys.argv[0]] + list(argv), verbosity=2, exit=False)
    result = program.result
    if not result.wasSuccessful():
        sys.exit(1)
    if result.testsRun == 0:
        print("no test ran", file=sys.stderr)
        sys.exit(1)
    if result.skipped:
        for test, reason in result.skipped:
            print(f"SKIPPED {test.id()}: {reason}", file=sys.stderr)
        sys.exit(SKIP_EXIT)
    sys.exit(0)


# Short retries so that "defer, then expire" ends within seconds.
SHORT_CONFIG = """[defaults]
retry_initial = "200ms"
retry_max = "400ms"
max_age = "3s"
connect_timeout = "2s"
"""


def journal(path):
    """Reads a journal: {line: [entries]} (a line with two entries is a bug).
    Header lines (one per run: {"mxpress_journal":1,"run":...}) and event
    lines ({"event":"rule",...}) are skipped, and so is a line cut by a crash
    (kill -9 mid-write: not ending in '}'), as mxpress's own reader does; a
    resumed run starts a new line after it."""
    entries = collections.defaultdict(list)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                o = json.loads(line)
            except json.JSONDecodeError:
                if line.rstrip("\n").endswith("}"):
                    raise
                continue
            if "mxpress_journal" in o or "event" in o:
                continue  # a run's header, or a rule's firing (README: Adaptive rules)
            entries[o["line"]].append(o)
    return entries


# Ports handed out by free_port(), one file each, shared by every test
# process: integration tests run in parallel, and a test listens on its port
# at several addresses (127.0.0.2-5), so a port free on one address when
# picked is not enough. Two tests that picked the same port at the same
# moment once talked to each other's servers. A claim older than
# PORT_CLAIM_S is stale (its test is long over).
PORT_CLAIMS = os.path.join(tempfile.gettempdir(), "mxpress-test-ports")
PORT_CLAIM_S = 900


def free_port(host="127.0.0.1", kind=socket.SOCK_STREAM):
    """A port free on `host` now and claimed by no other test (TCP and UDP share claims)."""
    os.makedirs(PORT_CLAIMS, exist_ok=True)
    for _ in range(200):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        claim = os.path.join(PORT_CLAIMS, str(port))
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return port
        except FileExistsError:
            try:
                if time.time() - os.stat(claim).st_mtime > PORT_CLAIM_S:
                    os.utime(claim)  # stale: take it over
                    return port
            except FileNotFoundError:
                pass
    raise RuntimeError(f"no unclaimed port on {host} after 200 tries ({PORT_CLAIMS})")


def wait_tcp(host, port, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {seconds}s")


def shard_placement(domains, shards):
    """The runner's shard for each domain, the domains of the rows in the
    order they are read (engine/shard_router.hpp): a domain is placed when
    its first row is read, on the shard with the fewest rows so far (ties:
    the lowest index)."""
    rows, placed = [0] * shards, {}
    for d in domains:
        if d not in placed:
            placed[d] = min(range(shards), key=lambda k: (rows[k], k))
        rows[placed[d]] += 1
    return placed


class Peers:
    """Starts and stops processes; use as a context manager."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mxpress-it-")
        os.chmod(self.dir, 0o755)
        self.procs = []
        self.stops = []
        self._certs = None
        self.dnsmasq_proc = None  # the dnsmasq that answered (earlier tries may have exited)
        self.unbound_proc = None  # the unbound that answered, likewise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for stop in self.stops:
            stop()
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

    def dnsmasq(self, lines, query_log=None):
        """Serves the given dnsmasq config lines on 127.0.0.1; returns 'ip:port'.
        query_log: a file where dnsmasq writes one line per query it read
        ("query[MX] d1.test from 127.0.0.1"), see dnsmasq_queries()."""
        conf = self.path("dnsmasq.conf")
        with open(conf, "w") as f:
            f.write("local=/test/\n")
            f.write("\n".join(lines) + "\n")
        # A port picked free may be taken before dnsmasq binds it (another
        # test's peer): dnsmasq then exits, and it is started again on
        # another. Each start gets 30 s to answer (a loaded machine, a long
        # configuration).
        for _ in range(3):
            port = free_port(kind=socket.SOCK_DGRAM)
            args = ["dnsmasq", "--keep-in-foreground", f"--port={port}", "--listen-address=127.0.0.1",
                    "--bind-interfaces", "--no-resolv", "--no-hosts", f"--conf-file={conf}",
                    f"--pid-file={self.path('dnsmasq.pid')}", f"--log-facility={query_log or '-'}", "--quiet-dhcp"]
            if query_log:
                args.append("--log-queries")
            if os.geteuid() == 0:
                args.append("--user=nobody")
            p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append(p)
            if answers(p, port):
                self.dnsmasq_proc = p
                return f"127.0.0.1:{port}"
            if p.poll() is None:
                break  # running but silent: starting another would not help
        raise RuntimeError("dnsmasq did not answer")

    def unbound(self, records, query_log=None):
        """Serves `records` ([(name, type, data)], e.g. ("d1.test", "MX",
        "10 mx0.test.")) from unbound's local data on 127.0.0.1, answering
        nothing else (a `static` local zone for test.); returns 'ip:port'.
        query_log: a file where unbound writes one line per query it read,
        see unbound_queries().

        The benchmarks' resolver for many domains: dnsmasq scans its
        mx-host list per query (about 220 µs a query with 21,000 of them),
        where unbound keeps local data in a tree, as a caching resolver
        keeps its cache. It is the Debian package's binary, unpacked by
        scripts/setup and not installed (see UNBOUND_BINARY), run in the
        foreground with a private config: no daemon, no root hints, no
        remote control, no chroot."""
        binary = unbound_binary()
        if binary is None:
            raise RuntimeError(f"no unbound at {UNBOUND_BINARY} or on PATH (scripts/setup unpacks it)")
        for _ in range(3):  # a port picked free may be taken first, as for dnsmasq
            port = free_port(kind=socket.SOCK_DGRAM)
            conf = self.path(f"unbound-{port}.conf")
            with open(conf, "w") as f:
                f.write(f"""server:
  interface: 127.0.0.1@{port}
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{self.dir}"
  pidfile: ""
  use-syslog: no
  logfile: "{query_log or ''}"
  log-queries: {'yes' if query_log else 'no'}
  verbosity: 0
  num-threads: 1
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  local-zone: "test." static
""")
                for name, kind, data in records:
                    f.write(f'  local-data: "{name}. 300 IN {kind} {data}"\n')
                f.write("remote-control:\n  control-enable: no\n")
            err = self.path(f"unbound-{port}.err")
            with open(err, "w") as err_file:
                p = subprocess.Popen([binary, "-d", "-c", conf], stdout=subprocess.DEVNULL, stderr=err_file)
            self.procs.append(p)
            if answers(p, port):
                self.unbound_proc = p
                return f"127.0.0.1:{port}"
            if p.poll() is None:
                break
        with open(err, encoding="utf-8", errors="replace") as f:
            said = f.read()[-2000:]
        raise RuntimeError(f"unbound did not answer; it said: {said or '(nothing)'}")

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


def answers(p, port):
    """Whether the resolver `p` just started answers on 127.0.0.1:port
    within 30 s (a loaded machine, a long configuration); False as soon as
    it exits (its port was taken before it could bind)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and p.poll() is None:
        out = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(port), "@127.0.0.1",
                              "probe.invalid.test", "A"], capture_output=True, text=True)
        if out.returncode == 0 and "connection refused" not in out.stdout:
            return True
        time.sleep(0.1)
    return False


def dnsmasq_queries(query_log):
    """The queries in a dnsmasq query log: [(type, name)] in the order read."""
    out = []
    with open(query_log, encoding="utf-8", errors="replace") as f:
        for line in f:
            words = line.split()
            for k, w in enumerate(words[:-1]):
                if w.startswith("query[") and w.endswith("]"):
                    out.append((w[len("query["):-1], words[k + 1]))
                    break
    return out


def unbound_queries(query_log):
    """The queries in an unbound query log: [(type, name)] in the order read
    ("[1795880260] unbound[11442:0] info: 127.0.0.1 d1.test. MX IN"), the
    name without its final dot."""
    out = []
    with open(query_log, encoding="utf-8", errors="replace") as f:
        for line in f:
            words = line.split()
            if len(words) == 7 and words[2] == "info:" and words[6] == "IN":
                out.append((words[5], words[4].rstrip(".")))
    return out


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


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def certs(peers):
    """Test CA and certificates (scripts/make-test-certs), made once per fixture."""
    if peers._certs is None:
        d = peers.path("certs")
        subprocess.run([os.path.join(ROOT, "scripts/make-test-certs"), d], check=True)
        peers._certs = d
    return peers._certs


def mxsink(peers, binary, listen, tls=None, listen_tls=(), fault=None, threads=1, profile=None, seed=None,
           chunking=True):
    """Starts mxsink; tls = (cert, key); profile = a --profile file (with
    --seed seed); chunking=False: --no-chunking (DATA only). Returns the path
    of its --stats-json; what it received is in record_of(that path) (see
    read_record)."""
    stats = peers.path(f"mxsink-{listen.replace(':', '_')}-{len(peers.procs)}.json")
    args = [binary, "--listen", listen, "--threads", str(threads), "--stats-json", stats,
            "--record", record_of(stats)]
    for l in listen_tls:
        args += ["--listen-tls", l]
    if tls:
        args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    if fault:
        args += ["--fault", fault]
    if profile:
        args += ["--profile", profile]
    if seed is not None:
        args += ["--seed", str(seed)]
    if not chunking:
        args += ["--no-chunking"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peers.procs.append(p)
    host, port = listen.rsplit(":", 1)
    wait_tcp(host, int(port))
    return stats


def record_of(stats_path):
    """The --record file of the mxsink started by mxsink() with these stats."""
    return stats_path[:-len(".json")] + ".record.jsonl"


def read_record(path):
    """mxsink --record lines: one dict per message (rcpt, size, sha256, to, code, t)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def dump_arrivals(dump_dir):
    """smtp-sink dumps as read_record's dicts (no size or hash: smtp-sink
    rewrites line ends). An empty dump file (a transaction the client gave up
    before DATA, e.g. on a slow RCPT reply) carries no message."""
    out = []
    for rcpts, text in read_dumps(dump_dir):
        if not text:
            continue
        headers = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text)
        out.append({"rcpt": rcpts, "to": " ".join((headers["To"] or "").split()),
                    "code": (headers["X-Row-Code"] or "").strip(), "text": text})
    return out


def row_codes(emails, seed=0):
    """A unique code per recipient ({email: code}) for the X-Row-Code header
    and the template body: what only that recipient's message may carry."""
    return {e: hashlib.sha256(f"{seed}:{k}:{e}".encode()).hexdigest()[:12] for k, e in enumerate(emails)}


# A template that carries each row's own fields where the receiver records
# them: its address in To:, its code in X-Row-Code: and in the body.
CODED_TEMPLATE = ("To: <{{email}}>\nX-Row-Code: {{code}}\nSubject: hi {{name}}\n\n"
                  ".leading dot\nhello {{name}}, your code is {{code}}\n")


def write_coded_recipients(path, emails, seed=0):
    """Writes a recipients file (email,name,code) for CODED_TEMPLATE; returns
    the codes ({email: code})."""
    codes = row_codes(emails, seed)
    with open(path, "w", encoding="utf-8") as f:
        f.write("email,name,code\n")
        for k, e in enumerate(emails):
            f.write(f"{e},Name {k},{codes[e]}\n")
    return codes


def assert_exactly_once(test, arrivals, expected):
    """Checks at the receiver: each recipient in `expected` ({email: code})
    got exactly one message, addressed To: it and carrying its own code, and
    nobody else got anything. `arrivals` comes from read_record or
    dump_arrivals (several receivers: add the lists)."""
    got = collections.defaultdict(list)
    for a in arrivals:
        test.assertEqual(len(a["rcpt"]), 1, f"one recipient per message: {a}")
        got[a["rcpt"][0]].append(a)
    test.assertEqual(sorted(set(got) - set(expected)), [], "messages for recipients that should get none")
    test.assertEqual(sorted(set(expected) - set(got)), [], "recipients without a message")
    test.assertEqual({r: len(v) for r, v in got.items() if len(v) > 1}, {}, "recipients with more than one message")
    for rcpt, (a,) in got.items():
        test.assertIn(f"<{rcpt}>", a["to"], f"To: of {rcpt}'s message")
        test.assertEqual(a["code"], expected[rcpt], f"{rcpt} got another row's message")


def stop_and_read_stats(peers, stats_path):
    """Stops every mxsink started by `peers` and returns the stats of one."""
    for p in peers.procs:
        if p.args and os.path.basename(str(p.args[0])) == "mxsink" and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)
    with open(stats_path) as f:
        return json.load(f)


def relay_peer(peers, port, mode, user, password_file):
    """aiosmtpd submission server (STARTTLS or implicit TLS, AUTH required);
    returns the directory where it writes each message it accepts."""
    c = certs(peers)
    out = peers.path(f"relay-{port}")
    os.makedirs(out)
    args = ["/usr/bin/python3", os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay_peer.py"),
            "--port", str(port), "--mode", mode, "--cert", os.path.join(c, "mx.crt"),
            "--key", os.path.join(c, "mx.key"), "--user", user, "--password-file", password_file, "--out", out]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peers.procs.append(p)
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError("relay_peer.py did not start")
    return out


def strict_peer(peers, host, port):
    """aiosmtpd in strict ASCII mode: no 8BITMIME, 500 to 8-bit data. Returns
    the directory where it writes each message it accepts."""
    out = peers.path(f"strict-{port}")
    os.makedirs(out)
    args = ["/usr/bin/python3", os.path.join(os.path.dirname(os.path.abspath(__file__)), "strict_peer.py"),
            "--host", host, "--port", str(port), "--out", out]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peers.procs.append(p)
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError("strict_peer.py did not start")
    return out


def relay_arrivals(out):
    """What relay_peer accepted, as read_record's dicts."""
    arrivals = []
    for m in relay_messages(out):
        headers = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(m["data"])
        arrivals.append({"rcpt": m["rcpt_tos"], "to": " ".join((headers["To"] or "").split()),
                         "code": (headers["X-Row-Code"] or "").strip()})
    return arrivals


def mbox_arrivals(path):
    """What a Postfix virtual mailbox holds, as read_record's dicts (the
    recipient from Delivered-To:)."""
    arrivals = []
    for m in mailbox.mbox(path, create=False):
        arrivals.append({"rcpt": m.get_all("Delivered-To", []), "to": " ".join((m["To"] or "").split()),
                         "code": (m["X-Row-Code"] or "").strip(), "text": m.as_string()})
    return arrivals


def relay_messages(out):
    msgs = []
    for name in sorted(glob.glob(os.path.join(out, "*.json"))):
        with open(name, encoding="utf-8") as f:
            msgs.append(json.load(f))
    return msgs


POSTFIX_SERVICES = """\
pickup    unix  n  -  n  60  1  pickup
cleanup   unix  n  -  n  -   0  cleanup
qmgr      unix  n  -  n  300 1  qmgr
tlsmgr    unix  -  -  n  1000? 1 tlsmgr
rewrite   unix  -  -  n  -   -  trivial-rewrite
bounce    unix  -  -  n  -   0  bounce
defer     unix  -  -  n  -   0  bounce
trace     unix  -  -  n  -   0  bounce
verify    unix  -  -  n  -   1  verify
flush     unix  n  -  n  1000? 0 flush
proxymap  unix  -  -  n  -   -  proxymap
showq     unix  n  -  n  -   -  showq
error     unix  -  -  n  -   -  error
retry     unix  -  -  n  -   -  error
discard   unix  -  -  n  -   -  discard
virtual   unix  -  n  n  -   -  virtual
anvil     unix  -  -  n  -   1  anvil
scache    unix  -  -  n  -   1  scache
postlog   unix-dgram n - n - 1  postlogd
"""


def postfix_smtpd(peers, host, port, extra=""):
    """A private Postfix (its own config and queue directories; /etc/postfix
    untouched) receiving on host:port with STARTTLS offered, delivering every
    recipient into one mbox file; `extra` lines are added to main.cf (its
    limits). Returns (mbox path, maillog path). Needs
    root (postfix start); stopped with postfix stop when the fixture ends.

    Traps: inet_interfaces must name a configured address
    (127.0.0.2 is routable but not on lo, so "loopback-only" here, and the
    listener's own address in master.cf); postfix start/check print their
    errors only to a terminal or syslog: run `script -qc "postfix -c DIR
    check" /dev/null` to see them."""
    c = certs(peers)
    d = peers.path(f"postfix-{port}")
    for sub in ("queue", "data", "mail"):
        os.makedirs(os.path.join(d, sub))
    pw = pwd.getpwnam("postfix")
    for sub in ("data", "mail"):
        os.chown(os.path.join(d, sub), pw.pw_uid, pw.pw_gid)
    maillog = os.path.join(d, "maillog")
    with open(os.path.join(d, "main.cf"), "w") as f:
        f.write(f"""compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = mx.test
mydestination =
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = static:all
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = static:inbox
virtual_uid_maps = static:{pw.pw_uid}
virtual_gid_maps = static:{pw.pw_gid}
virtual_mailbox_limit = 0
message_size_limit = 0
smtpd_tls_cert_file = {c}/mx.crt
smtpd_tls_key_file = {c}/mx.key
smtpd_tls_security_level = may
smtpd_tls_received_header = yes
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
maillog_file = {maillog}
maillog_file_prefixes = {d}
alias_maps =
alias_database =
biff = no
""" + extra)
    with open(os.path.join(d, "master.cf"), "w") as f:
        f.write(f"{host}:{port} inet n - n - - smtpd\n" + POSTFIX_SERVICES)
    started = subprocess.run(["postfix", "-c", d, "start"], capture_output=True, text=True)
    if started.returncode != 0:
        log = open(maillog).read() if os.path.exists(maillog) else ""
        raise RuntimeError(f"postfix -c {d} start: {started.stdout}{started.stderr}{log[-2000:]}")
    pid_file = os.path.join(d, "queue", "pid", "master.pid")

    def stop():
        subprocess.run(["postfix", "-c", d, "stop"], capture_output=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(pid_file) as pf:
                    os.kill(int(pf.read().strip()), 0)
            except (OSError, ValueError):
                return
            time.sleep(0.1)
        subprocess.run(["postfix", "-c", d, "abort"], capture_output=True)

    peers.stops.append(stop)
    wait_tcp(host, port)
    return os.path.join(d, "mail", "inbox"), maillog


# Where scripts/setup unpacks Exim (exim4-daemon-light, GnuTLS): not
# installed, since it conflicts with Postfix. MXPRESS_EXIM_CACHE moves it.
EXIM_CACHE = os.environ.get("MXPRESS_EXIM_CACHE", "/var/cache/mxpress/exim")
EXIM_BINARY = os.path.join(EXIM_CACHE, "root/usr/sbin/exim4")


# Where scripts/setup unpacks unbound (the benchmarks' resolver for many
# domains): not installed, since the package starts a system resolver.
# MXPRESS_UNBOUND_CACHE moves it.
UNBOUND_CACHE = os.environ.get("MXPRESS_UNBOUND_CACHE", "/var/cache/mxpress/unbound")
UNBOUND_BINARY = os.path.join(UNBOUND_CACHE, "root/usr/sbin/unbound")


def unbound_binary():
    """The unpacked unbound, else one installed on PATH, else None."""
    if os.access(UNBOUND_BINARY, os.X_OK):
        return UNBOUND_BINARY
    return shutil.which("unbound")


def exim_missing():
    """Why exim() cannot run here (a test skips with it), or None."""
    if os.geteuid() != 0:
        return "Exim's daemon and its deliveries (user Debian-exim) need root"
    if not os.access(EXIM_BINARY, os.X_OK):
        return f"no unpacked Exim at {EXIM_BINARY} (scripts/setup unpacks it)"
    try:
        pwd.getpwnam("Debian-exim")
    except KeyError:
        return "no user Debian-exim, which the Exim binary needs (scripts/setup adds it)"
    return None


class Exim:
    """A private Exim daemon (see exim()): its directories, logs and how to
    deliver what it queued."""

    def __init__(self, d, conf):
        self.dir, self.conf = d, conf
        self.mainlog = os.path.join(d, "log", "mainlog")
        self.maildir = os.path.join(d, "mail", "inbox")

    def deliver(self):
        """Delivers every queued message into the maildir (a foreground
        queue run, done when it returns)."""
        p = subprocess.run([EXIM_BINARY, "-C", self.conf, "-qff"], capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"exim -qff: {p.stdout}{p.stderr}")

    def log(self):
        with open(self.mainlog, encoding="utf-8", errors="replace") as f:
            return f.read()

    def messages(self):
        """The maildir's messages as {"rcpt": [Envelope-to], "to", "code",
        "data": the bytes mxpress sent (the Envelope-to: and Received: that
        Exim prepends removed), "received": the Received: header}."""
        out = []
        for name in sorted(glob.glob(os.path.join(self.maildir, "new", "*"))):
            with open(name, "rb") as f:
                raw = f.read()
            lines = raw.split(b"\r\n")
            k, prepended = 0, {}
            for field in (b"Envelope-to:", b"Received:"):
                if lines[k].startswith(field):
                    start = k
                    k += 1
                    while lines[k][:1] in (b" ", b"\t"):
                        k += 1
                    prepended[field] = b"\r\n".join(lines[start:k]).decode()
            data = b"\r\n".join(lines[k:])
            headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
            out.append({"rcpt": [prepended.get(b"Envelope-to:", "")[len("Envelope-to:"):].strip()],
                        "to": " ".join((headers["To"] or "").split()), "code": (headers["X-Row-Code"] or "").strip(),
                        "data": data, "received": prepended.get(b"Received:", "")})
        return out


def exim(peers, host, port, extra=""):
    """An Exim daemon (the binary scripts/setup unpacks: Debian's
    exim4-daemon-light, TLS by GnuTLS) on host:port, with its own config,
    spool, logs and maildir under the fixture's directory; STARTTLS offered
    with the test CA's mx.crt; `extra` lines are added to the main section
    (its limits). Messages are queued, not delivered, until
    Exim.deliver(). Returns an Exim. Skip first when exim_missing().

    Traps: the binary refuses to start without the user Debian-exim (its
    compiled-in exim_user); root may not be a delivery user (never_users is
    fixed to root), so the transport delivers as Debian-exim, which owns the
    spool, log and mail directories; a path built from the address is
    tainted (refused), so one maildir for everyone and Envelope-to: says
    whose; after 10 messages in one connection Exim queues rather than
    delivers unless smtp_accept_queue_per_connection = 0 (moot with
    queue_only, set anyway); -bdf keeps the daemon in the foreground (-bd
    forks away from its PID); a config error is printed to stderr and the
    paniclog only. Server-side TLS resumption is off unless
    tls_resumption_hosts is set (it is here); log_selector
    +tls_resumption marks a resumed session's X= with a trailing '*'."""
    c = certs(peers)
    d = peers.path(f"exim-{port}")
    for sub in ("spool", "log", "mail"):
        os.makedirs(os.path.join(d, sub))
    pw = pwd.getpwnam("Debian-exim")
    for sub in ("spool", "log", "mail"):
        os.chown(os.path.join(d, sub), pw.pw_uid, pw.pw_gid)
    conf = os.path.join(d, "exim.conf")
    with open(conf, "w") as f:
        f.write(f"""primary_hostname = mx.test
spool_directory = {d}/spool
log_file_path = {d}/log/%slog
pid_file_path = {d}/exim.pid
local_interfaces = {host}
keep_environment =
host_lookup =
rfc1413_hosts =
tls_advertise_hosts = *
tls_certificate = {c}/mx.crt
tls_privatekey = {c}/mx.key
tls_resumption_hosts = *
log_selector = +tls_resumption +smtp_connection +received_recipients +pid
acl_smtp_rcpt = accept
queue_only = true
smtp_accept_queue_per_connection = 0
smtp_accept_max = 100
message_size_limit = 0
""" + extra + f"""
begin routers
everyone:
  driver = accept
  transport = inbox

begin transports
inbox:
  driver = appendfile
  directory = {d}/mail/inbox
  maildir_format
  create_directory
  use_crlf
  envelope_to_add
  user = Debian-exim
  group = Debian-exim
""")
    log = open(os.path.join(d, "stderr"), "w")
    p = subprocess.Popen([EXIM_BINARY, "-C", conf, "-bdf", "-oX", str(port)], stdout=log, stderr=log)
    log.close()
    peers.procs.append(p)
    try:
        wait_tcp(host, port)
    except RuntimeError:
        with open(os.path.join(d, "stderr")) as f:
            raise RuntimeError(f"exim did not start: {f.read()}")
    return Exim(d, conf)
