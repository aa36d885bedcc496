#!/usr/bin/python3
"""Integration tests of sending one list from several machines (issue 12,
section 2): `mxpress plan`, N local `mxpress send --plan` processes told
their index by JOB_COMPLETION_INDEX (as a Kubernetes Indexed Job does), one
of them killed with SIGKILL and resumed alone, and `mxpress report`. MX
answers come from dnsmasq, every MX host is one mxsink on 127.0.0.2, and
what arrived is checked at its --record: every recipient exactly once
(after kill -9: at most the killed index's transactions in flight twice).
Also: the usage errors that must exit 2 (a pod failure policy fails the
index at once), and the manifest in deploy/kubernetes.

  plan_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import (CODED_TEMPLATE, Peers, assert_exactly_once, free_port, journal, mxsink,  # noqa: E402
                   read_record, record_of, run_tests, write_coded_recipients)

MXPRESS = None
ROOT = None
SHARDS = 3
PROVIDER_DOMAINS = [f"p{k}.test" for k in range(6)]  # MX hosts mx0/mx1.prov.test: one [provider]
OTHER_DOMAINS = [f"o{k}.test" for k in range(9)]     # each its own MX host
NX_DOMAIN = "nx.test"                                  # NXDOMAIN: bounced, still planned
CONFIG = '[provider."prov"]\nmatch = ["*.prov.test"]\n'


def sanitized(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return "libasan" in out or "libtsan" in out


def stop_sinks(peers):
    for p in peers.procs:
        if p.args and os.path.basename(str(p.args[0])) == "mxsink" and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)


class World:
    """dnsmasq, one mxsink, a coded recipients list, a template, a config."""

    def __init__(self, peers, rows):
        self.peers = peers
        self.port = free_port("127.0.0.2")
        self.stats = mxsink(peers, os.path.join(os.path.dirname(MXPRESS), "mxsink"), f"127.0.0.2:{self.port}")
        lines = [f"mx-host={d},mx{k % 2}.prov.test,10" for k, d in enumerate(PROVIDER_DOMAINS)]
        lines += [f"mx-host={d},mx.{d},10" for d in OTHER_DOMAINS]
        lines += [f"host-record=mx{k}.prov.test,127.0.0.2" for k in range(2)]
        lines += [f"host-record=mx.{d},127.0.0.2" for d in OTHER_DOMAINS]
        self.dns = peers.dnsmasq(lines)
        domains = PROVIDER_DOMAINS + OTHER_DOMAINS + [NX_DOMAIN]
        # Uneven domains: the provider's six carry more rows than the others.
        self.emails = []
        for k in range(rows):
            d = PROVIDER_DOMAINS[k % 6] if k % 3 == 0 else domains[k % len(domains)]
            self.emails.append(f"u{k}@{d}")
        self.emails.append("not-an-address")
        self.recipients = peers.path("r.csv")
        self.codes = write_coded_recipients(self.recipients, self.emails)
        self.message = peers.path("m.eml")
        with open(self.message, "w") as f:
            f.write(CODED_TEMPLATE)
        self.config = peers.path("c.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)
        self.plan = peers.path("plan.json")
        # Who must get a message: everyone but the NXDOMAIN rows and the invalid one.
        self.expected = {e: c for e, c in self.codes.items() if "@" in e and not e.endswith("@" + NX_DOMAIN)}

    def make_plan(self):
        p = subprocess.run([MXPRESS, "plan", "--recipients", self.recipients, "--shards", str(SHARDS), "--config",
                            self.config, "--dns", self.dns, "--out", self.plan], capture_output=True, text=True,
                           timeout=120)
        if p.returncode != 0:
            raise AssertionError(f"plan exited {p.returncode}: {p.stdout}{p.stderr}")
        with open(self.plan) as f:
            return json.load(f)

    def journal_path(self, index):
        return self.peers.path(f"r.shard-{index}-of-{SHARDS}.journal.jsonl")

    def send_args(self, index):
        # As the Job's pod runs it: the plan names the list; always --resume,
        # so a retried index continues its own journal.
        return [MXPRESS, "send", "--plan", self.plan, "--message", self.message, "--from", "b@sender.test",
                "--dns", self.dns, "--mx-port", str(self.port), "--config", self.config, "--threads", "1",
                "--progress", "off", "--resume", "--summary-json", self.peers.path(f"s{index}.json")]

    def env(self, index):
        e = {k: v for k, v in os.environ.items() if k not in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID")}
        e["JOB_COMPLETION_INDEX"] = str(index)
        return e

    def start(self, index):
        return subprocess.Popen(self.send_args(index), env=self.env(index), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def summary(self, index):
        with open(self.peers.path(f"s{index}.json")) as f:
            return json.load(f)

    def received(self):
        stop_sinks(self.peers)
        return read_record(record_of(self.stats))

    def report(self, *extra):
        p = subprocess.run([MXPRESS, "report", "--json", *extra] + [self.journal_path(i) for i in range(SHARDS)],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise AssertionError(f"report exited {p.returncode}: {p.stderr}")
        return json.loads(p.stdout)


def domain_of(email):
    return email.rsplit("@", 1)[1] if "@" in email else ""


class Plan(unittest.TestCase):
    def check_plan(self, world, plan):
        """The plan covers every domain once, keeps the provider together and
        balances by rows."""
        self.assertEqual(plan["shard_count"], SHARDS)
        self.assertEqual(plan["rows"], len(world.emails))
        self.assertEqual(plan["invalid_rows"], 1)
        self.assertEqual(plan["recipients"]["size"], os.path.getsize(world.recipients))
        groups = {g["key"]: g for g in plan["groups"]}
        self.assertEqual(sorted(groups["provider:prov"]["domains"]), sorted(PROVIDER_DOMAINS))
        self.assertEqual(groups[f"domain:{NX_DOMAIN}"]["kind"], "unresolved")
        for d in OTHER_DOMAINS:
            self.assertEqual(groups[f"mx:mx.{d}"]["domains"], [d])
        listed = [d for s in plan["shards"] for d in s["domains"]]
        self.assertEqual(sorted(listed), sorted(set(listed)), "a domain on two shards")
        self.assertEqual(sorted(listed), sorted(PROVIDER_DOMAINS + OTHER_DOMAINS + [NX_DOMAIN]))
        rows = collections.Counter(domain_of(e) for e in world.emails)
        for s in plan["shards"]:
            self.assertEqual(s["rows"], sum(rows[d] for d in s["domains"]))
        # LPT: the heaviest shard exceeds the lightest by at most the largest group.
        loads = [s["rows"] for s in plan["shards"]]
        self.assertLessEqual(max(loads) - min(loads), max(g["rows"] for g in plan["groups"]), loads)
        return {d: s["index"] for s in plan["shards"] for d in s["domains"]}

    def check_journals(self, world, shard_of):
        """Each journal holds exactly its shard's rows, each once, all final."""
        total = 0
        for i in range(SHARDS):
            j = journal(world.journal_path(i))
            for line, entries in j.items():
                final = [e for e in entries if e["status"] not in ("deferred", "dry-run")]
                self.assertEqual(len(final), 1, f"shard {i} line {line}: {entries}")
                d = domain_of(final[0]["email"])
                self.assertEqual(shard_of.get(d, 0), i, f"{final[0]['email']} journaled by shard {i}")
            total += len(j)
        self.assertEqual(total, len(world.emails), "every row in exactly one shard journal")

    def test_three_indexes_deliver_the_list_exactly_once_and_a_provider_stays_on_one_shard(self):
        rows = 600 if sanitized(MXPRESS) else 6000
        with Peers() as peers:
            world = World(peers, rows)
            shard_of = self.check_plan(world, world.make_plan())
            self.assertEqual(len({shard_of[d] for d in PROVIDER_DOMAINS}), 1, "the provider is split")
            procs = [world.start(i) for i in range(SHARDS)]
            for i, p in enumerate(procs):
                out, err = p.communicate(timeout=240)
                self.assertEqual(p.returncode, 0, f"index {i}: {out}{err}")
                self.assertIn(f"plan: shard {i} of {SHARDS}", out)
                self.assertNotIn("warning", err)
            self.check_journals(world, shard_of)
            # The provider's rows were journaled by one process only.
            provider_journals = {i for i in range(SHARDS) for es in journal(world.journal_path(i)).values()
                                 if domain_of(es[0]["email"]) in PROVIDER_DOMAINS}
            self.assertEqual(provider_journals, {shard_of[PROVIDER_DOMAINS[0]]})
            assert_exactly_once(self, world.received(), world.expected)
            r = world.report("--plan", world.plan)
            summaries = [world.summary(i) for i in range(SHARDS)]
            self.assertEqual(r["rows"], len(world.emails))
            self.assertEqual(r["final"], len(world.emails))
            self.assertEqual((r["duplicates"], r["missing"], r["unfinished"]), (0, 0, 0))
            self.assertEqual(r["statuses"]["delivered"], len(world.expected))
            self.assertEqual(r["statuses"]["delivered"], sum(s["delivered"] for s in summaries))
            self.assertEqual(r["statuses"]["bounced"], sum(1 for e in world.emails if e.endswith("@" + NX_DOMAIN)))
            self.assertEqual(r["statuses"]["invalid"], 1)
            self.assertEqual(sum(s["elsewhere"] for s in summaries), (SHARDS - 1) * len(world.emails))
            text = subprocess.run([MXPRESS, "report"] + [world.journal_path(i) for i in range(SHARDS)],
                                  capture_output=True, text=True, timeout=60).stdout
            self.assertIn(f"{len(world.emails)} rows with an outcome", text)
            self.assertIn("duplicates: none", text)
            print(f"plan: {rows} rows on {SHARDS} shards: {[s['rows'] for s in summaries]} rows each",
                  file=sys.stderr)

    def test_a_killed_index_resumed_alone_finishes_its_rows(self):
        rows = 4500 if sanitized(MXPRESS) else 45000
        with Peers() as peers:
            world = World(peers, rows)
            shard_of = self.check_plan(world, world.make_plan())
            victim = 1
            victim_rows = sum(1 for e in world.emails if shard_of.get(domain_of(e), 0) == victim)
            others = [world.start(i) for i in range(SHARDS) if i != victim]
            p = world.start(victim)
            jpath = world.journal_path(victim)

            def lines():
                if not os.path.exists(jpath):
                    return 0
                with open(jpath, "rb") as f:
                    return f.read().count(b"\n")
            deadline = time.monotonic() + 120
            # Kill it a quarter of the way through its rows: mid-run, transactions in flight.
            while time.monotonic() < deadline and p.poll() is None and lines() < victim_rows // 4:
                time.sleep(0.002)
            p.kill()
            p.communicate(timeout=60)
            self.assertEqual(p.returncode, -signal.SIGKILL, "index 1 ended before it was killed: make the list longer")
            done_at_kill = sum(1 for es in journal(jpath).values() if any(e["status"] != "deferred" for e in es))
            self.assertLess(done_at_kill, victim_rows, "the kill came after the last row")
            for q in others:
                out, err = q.communicate(timeout=240)
                self.assertEqual(q.returncode, 0, out + err)
            # The retried index alone, with the same command (it always says --resume).
            r = subprocess.run(world.send_args(victim), env=world.env(victim), capture_output=True, text=True,
                               timeout=240)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            resumed = world.summary(victim)
            self.assertEqual(resumed["skipped"], done_at_kill)
            self.check_journals(world, shard_of)
            got = collections.Counter(a["rcpt"][0] for a in world.received())
            self.assertEqual(sorted(set(world.expected) - set(got)), [], "recipients never received")
            self.assertEqual(sorted(set(got) - set(world.expected)), [], "messages for nobody")
            dups = {a: n for a, n in got.items() if n > 1}
            # kill -9's window (README: the journal): at most the transactions in flight.
            self.assertLessEqual(len(dups), resumed["in_flight_peak"], dups)
            self.assertEqual({shard_of[domain_of(a)] for a in dups} - {victim}, set(),
                             "a duplicate outside the killed index")
            rep = world.report("--plan", world.plan)
            self.assertEqual((rep["final"], rep["duplicates"], rep["missing"]), (len(world.emails), 0, 0))
            self.assertEqual(rep["statuses"]["delivered"], len(world.expected))
            print(f"kill -9 at {done_at_kill} of {victim_rows} rows of index {victim}; {len(dups)} received twice "
                  f"(window {resumed['in_flight_peak']})", file=sys.stderr)

    def test_usage_errors_exit_2_and_say_why(self):
        with Peers() as peers:
            recipients = peers.path("u.csv")
            write_coded_recipients(recipients, [f"u{k}@d{k % 5}.test" for k in range(50)] + ["bad"])
            message = peers.path("m.eml")
            with open(message, "w") as f:
                f.write(CODED_TEMPLATE)
            plan = peers.path("u.plan.json")
            route = "*=127.0.0.2:25"  # no lookups: one group, one shard carries all
            p = subprocess.run([MXPRESS, "plan", "--recipients", recipients, "--shards", "3", "--route", route,
                                "--out", plan], capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            with open(plan) as f:
                self.assertEqual(sorted(s["rows"] for s in json.load(f)["shards"]), [0, 0, 51 - 1])
            clean = {k: v for k, v in os.environ.items() if k not in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID")}
            base = [MXPRESS, "send", "--plan", plan, "--message", message, "--from", "b@sender.test", "--route",
                    route, "--progress", "off"]

            def run(args, env=None, code=2, says=""):
                r = subprocess.run(args, env=dict(clean, **(env or {})), capture_output=True, text=True, timeout=60)
                self.assertEqual(r.returncode, code, f"{args} {env}: {r.stdout}{r.stderr}")
                self.assertIn(says, r.stderr)
                return r

            run(base, says="--plan needs a shard index")
            # A configuration whose [provider] sections the plan did not group by: a warning, not an error.
            other = peers.path("other.toml")
            with open(other, "w") as f:
                f.write(CONFIG)
            r = run(base + ["--shard-index", "1", "--config", other, "--journal", peers.path("w.jsonl")], code=0)
            self.assertIn("differ from those the plan grouped by", r.stderr)
            run(base, {"JOB_COMPLETION_INDEX": "x1"}, says="JOB_COMPLETION_INDEX='x1' is not a shard index")
            run(base + ["--shard-index", "3"], says="--shard-index 3: the plan")
            run(base, {"SLURM_ARRAY_TASK_ID": "7"}, says="SLURM_ARRAY_TASK_ID 7")
            run([MXPRESS, "send", "--recipients", recipients, "--message", message, "--from", "b@sender.test",
                 "--shard-index", "0", "--dry-run"], says="--shard-index needs --plan")
            # SLURM_ARRAY_TASK_ID picks the index when JOB_COMPLETION_INDEX is absent; a dry run journals only its rows.
            with open(plan) as f:
                shards = json.load(f)["shards"]
            busy = next(s["index"] for s in shards if s["rows"] > 0)
            r = run(base + ["--dry-run"], {"SLURM_ARRAY_TASK_ID": str(busy)}, code=0)
            dry = journal(peers.path(f"u.shard-{busy}-of-3.dry-run.jsonl"))
            self.assertEqual(len(dry), 50 + (1 if busy == 0 else 0), r.stdout)
            # JOB_COMPLETION_INDEX wins over SLURM_ARRAY_TASK_ID.
            idle = next(s["index"] for s in shards if s["rows"] == 0 and s["index"] != 0)
            r = run(base + ["--dry-run"], {"SLURM_ARRAY_TASK_ID": str(busy), "JOB_COMPLETION_INDEX": str(idle)},
                    code=0)
            self.assertEqual(len(journal(peers.path(f"u.shard-{idle}-of-3.dry-run.jsonl"))), 0, r.stdout)
            # Another list than the planned one: exit 2, before anything is sent.
            changed = peers.path("changed.csv")
            shutil.copy(recipients, changed)
            with open(changed, "a") as f:
                f.write("late@d1.test,Late,ffff\n")
            run(base + ["--recipients", changed, "--shard-index", "0"], says="not the recipients file")
            with open(recipients, "r+") as f:  # the same size, one byte changed
                text = f.read()
                f.seek(0)
                f.write(text.replace("u1@d1.test", "u1@d2.test", 1))
            run(base + ["--shard-index", "0"], says="not the recipients file")
            with open(plan, "a") as f:
                f.write("]")
            run(base + ["--shard-index", "0"], says="plan is not valid JSON")

    def manifest(self):
        import yaml  # python3-yaml (scripts/setup)
        path = os.path.join(ROOT, "deploy/kubernetes/job.yaml")
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        return path, docs

    def test_manifest_has_what_an_indexed_job_needs(self):
        path, docs = self.manifest()
        jobs = [d for d in docs if d.get("kind") == "Job"]
        self.assertEqual(len(jobs), 1, f"{path}: one Job")
        job = jobs[0]
        self.assertEqual(job["apiVersion"], "batch/v1")
        spec = job["spec"]
        self.assertEqual(spec["completionMode"], "Indexed")
        self.assertIsInstance(spec["completions"], int)
        self.assertEqual(spec["completions"], spec["parallelism"], "completions = parallelism = N")
        self.assertGreaterEqual(spec["backoffLimitPerIndex"], 1)
        pod = spec["template"]["spec"]
        self.assertEqual(pod["restartPolicy"], "Never", "a pod failure policy needs restartPolicy Never")
        (container,) = [c for c in pod["containers"] if c["name"] == "mxpress"]
        rules = spec["podFailurePolicy"]["rules"]
        fail_index = [r for r in rules if r["action"] == "FailIndex"]
        self.assertTrue(fail_index, "a FailIndex rule")
        codes = fail_index[0]["onExitCodes"]
        self.assertEqual(codes["operator"], "In")
        self.assertIn(2, codes["values"], "exit 2 (configuration) must not be retried")
        self.assertNotIn(1, codes["values"], "exit 1 (transient) must be retried")
        self.assertEqual(codes.get("containerName", "mxpress"), "mxpress")
        command = " ".join(container.get("command", []) + container.get("args", []))
        for word in ("send", "--plan", "--resume"):
            self.assertIn(word, command)
        self.assertNotIn("--shard-index", command, "the index comes from JOB_COMPLETION_INDEX")
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertTrue(set(mounts) <= set(volumes))
        self.assertTrue(any("persistentVolumeClaim" in v for v in volumes.values()),
                        "the list and the journals live on a volume that outlives the pods")
        # The plan and the list are read from the mounted volume.
        words = container.get("command", []) + container.get("args", [])
        at = next(k for k, w in enumerate(words) if w == "--plan" or w.startswith("--plan="))
        plan_arg = words[at].split("=", 1)[1] if "=" in words[at] else words[at + 1]
        self.assertTrue(any(plan_arg.startswith(m + "/") for m in mounts.values()), plan_arg)
        with open(os.path.join(ROOT, "deploy/kubernetes/Containerfile")) as f:
            build = f.read()
        self.assertIn("FROM debian:12", build)
        self.assertIn("scripts/setup", build)
        # The runtime stage installs the package of every shared library
        # the binary needs (a library added to the build and forgotten
        # here gives an image whose mxpress cannot start).
        runtime = build[build.rindex("FROM debian:12"):].replace("\\\n", " ").replace("\n", " ") + " "
        needed = [line.split("[")[1].rstrip("]") for line in subprocess.run(
            ["readelf", "-d", MXPRESS], capture_output=True, text=True, check=True).stdout.splitlines()
            if "(NEEDED)" in line]
        paths = dict(line.split("=>")[0].strip().split()[0:1] + [line.split("=>")[1].split("(")[0].strip()]
                     for line in subprocess.run(["ldd", MXPRESS], capture_output=True, text=True, check=True)
                     .stdout.splitlines() if "=>" in line)
        self.assertIn("libssl.so.3", needed)
        base = ("libc6", "libstdc++6", "libgcc-s1")  # in debian:12 itself
        sanitizer = ("libasan", "libubsan", "libtsan")  # the test's own build, not the image's
        for name in needed:
            if name.startswith(sanitizer):
                continue
            lib = paths[name]
            owner = subprocess.run(["dpkg", "-S", lib], capture_output=True, text=True)
            if owner.returncode != 0:  # merged /usr: the package lists the other spelling
                owner = subprocess.run(["dpkg", "-S", os.path.realpath(lib)], capture_output=True, text=True)
            self.assertEqual(owner.returncode, 0, f"no Debian package owns {lib}")
            package = owner.stdout.split(":")[0]
            if package not in base:
                self.assertIn(f" {package} ", runtime, f"the image's runtime stage lacks {package} ({name})")


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    ROOT = os.path.abspath(sys.argv[2])
    run_tests(sys.argv[3:])
