#!/usr/bin/python3
"""Step mail against a real receiver (mxsink --record), on a fake clock:
`mxpress steps --now T` run from a simulated cron over a simulated month,
with subscribers signing up (rows appended) and unsubscribing as it goes.
What arrives is checked against due times computed here, independently,
with Python's zoneinfo. Also `send` with a send_at column and --not-before.

  steps_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import collections
import datetime
import fcntl
import json
import os
import random
import subprocess
import sys
import time
import unittest
from zoneinfo import ZoneInfo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import Peers, free_port, journal, mxsink, read_record, record_of, run_tests  # noqa: E402

MXPRESS = None
UTC = datetime.timezone.utc

CONFIG = """
[sequence.welcome]
anchor = "signup_at"
tz = "Asia/Tokyo"
suppress = "unsubscribed.txt"

[[sequence.welcome.step]]
id = "d0"
after = "10m"
message = "d0.eml"
max_late = "6h"

[[sequence.welcome.step]]
id = "d3"
after = "3d"
at = "09:00"
days = "Mon-Fri"
message = "d3.eml"
max_late = "1d"

[[sequence.welcome.step]]
id = "d7"
after = "7d"
message = "d7.eml"
max_late = "12h"
"""
# Step: (after, at, weekdays allowed (Mon = 0), max_late), as in CONFIG.
STEPS = {
    "d0": (datetime.timedelta(minutes=10), None, None, datetime.timedelta(hours=6)),
    "d3": (datetime.timedelta(days=3), datetime.time(9, 0), {0, 1, 2, 3, 4}, datetime.timedelta(days=1)),
    "d7": (datetime.timedelta(days=7), None, None, datetime.timedelta(hours=12)),
}


def due(anchor, step, zone):
    """When `step` is due for a subscriber anchored at `anchor` (aware)."""
    after, at, days, _ = STEPS[step]
    t = anchor + after
    if at is None and days is None:
        return t
    local = t.astimezone(zone)
    day = local.date()
    cand = datetime.datetime.combine(day, at, zone) if at else local
    if cand < local:
        day += datetime.timedelta(days=1)
        cand = datetime.datetime.combine(day, at, zone)
    while days is not None and day.weekday() not in days:
        day += datetime.timedelta(days=1)
        cand = datetime.datetime.combine(day, at or datetime.time(0), zone)
    return max(t, cand)


def iso(t):
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Steps(unittest.TestCase):
    def setUp(self):
        self.sink = os.path.join(os.path.dirname(MXPRESS), "mxsink")

    def write_messages(self, peers):
        for step in STEPS:
            with open(peers.path(f"{step}.eml"), "w") as f:
                f.write(f"To: <{{{{email}}}}>\nX-Row-Code: {step}\nSubject: {step} for {{{{name}}}}\n\n"
                        f"step {step}, signed up {{{{signup_at}}}}\n")
        with open(peers.path("c.toml"), "w") as f:
            f.write(CONFIG)

    def test_a_month_each_step_once_on_time_and_never_after_unsubscribing(self):
        rnd = random.Random(20270101)
        start = datetime.datetime(2027, 1, 1, tzinfo=UTC)
        end = start + datetime.timedelta(days=31)
        zones = [None, "America/New_York", "Europe/Berlin"]
        # Forty subscribers over the first 24 days, at any hour, in three zones;
        # written as each zone's wall clock, or RFC 3339 with an offset.
        subs = []
        for k in range(40):
            zone_name = zones[k % 3]
            zone = ZoneInfo(zone_name or "Asia/Tokyo")
            signup = start + datetime.timedelta(minutes=rnd.randrange(24 * 24 * 60))
            text = (signup.astimezone(zone).strftime("%Y-%m-%d %H:%M") if k % 2 == 0
                    else signup.astimezone(zone).isoformat())
            subs.append({"email": f"s{k}@steps.test", "name": f"S{k}", "signup": signup, "text": text,
                         "tz": zone_name or "", "zone": zone})
        # An old subscriber imported on day 1 (signed up in 2025): every step long
        # overdue, so each is journaled "skipped" and none is sent.
        old = {"email": "old@steps.test", "name": "Old", "signup": datetime.datetime(2025, 5, 1, tzinfo=UTC),
               "text": "2025-05-01T00:00:00Z", "tz": "", "zone": ZoneInfo("Asia/Tokyo")}
        # Six unsubscribe during the month, some between their steps, one before any.
        unsub_at = {}
        for s in subs[:6]:
            unsub_at[s["email"]] = s["signup"] + datetime.timedelta(hours=rnd.choice([0.05, 30, 80, 100, 130, 170]))
        with Peers() as peers:
            port = free_port("127.0.0.2")
            stats = mxsink(peers, self.sink, f"127.0.0.2:{port}")
            self.write_messages(peers)
            csv, unsub = peers.path("subs.csv"), peers.path("unsubscribed.txt")
            with open(csv, "w") as f:
                f.write("email,name,signup_at,tz\n")
            open(unsub, "w").close()
            listed, unsubscribed = set(), set()
            arrivals = []  # (simulated time of the run, record line)
            seen = 0
            now = start
            runs = 0
            pending = sorted(subs, key=lambda s: s["signup"])
            pending.insert(0, old)
            cmd = [MXPRESS, "steps", "--sequence", "welcome", "--recipients", csv, "--config", peers.path("c.toml"),
                   "--from", "news@sender.test", "--route", f"*=127.0.0.2:{port}", "--progress", "off",
                   "--threads", "1"]
            while now < end:  # bounded: `now` grows by at least 3.5 h a run
                # Sign-ups before now are appended (a subscriber exists from then on).
                while pending and (pending[0]["signup"] <= now or pending[0] is old):
                    s = pending.pop(0)
                    with open(csv, "a") as f:
                        f.write(f"{s['email']},{s['name']},{s['text']},{s['tz']}\n")
                    listed.add(s["email"])
                for email, t in unsub_at.items():
                    if t <= now and email not in unsubscribed:
                        unsubscribed.add(email)
                        with open(unsub, "a") as f:
                            f.write(email + "\n")
                p = subprocess.run(cmd + ["--now", iso(now)], capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 0, f"at {iso(now)}: {p.stdout}\n{p.stderr}")
                runs += 1
                record = read_record(record_of(stats))
                arrivals += [(now, r) for r in record[seen:]]
                seen = len(record)
                # Cron every 4 hours, give or take half an hour.
                now += datetime.timedelta(minutes=240 + rnd.randrange(-30, 31))

            got = collections.defaultdict(list)
            for t, r in arrivals:
                self.assertEqual(len(r["rcpt"]), 1, r)
                got[(r["rcpt"][0], r["code"])].append(t)
            by_email = {s["email"]: s for s in subs + [old]}
            expected = 0
            for s in subs:
                for step, (_, _, _, max_late) in STEPS.items():
                    when = due(s["signup"], step, s["zone"])
                    times = got.pop((s["email"], step), [])
                    gone = unsub_at.get(s["email"])
                    self.assertEqual([t for t in times if gone is not None and t >= gone], [],
                                     f"{s['email']} {step} after unsubscribing")
                    if when >= end or (gone is not None and gone < when + datetime.timedelta(minutes=271)):
                        # Due after the month, or unsubscribed before the run that sends
                        # it may have come: at most the one sent before unsubscribing.
                        self.assertLessEqual(len(times), 1, f"{s['email']} {step}")
                        continue
                    expected += 1
                    self.assertEqual(len(times), 1, f"{s['email']} {step} due {iso(when)}: got {times}")
                    # On time: the first run at or after the due time sent it.
                    self.assertGreaterEqual(times[0], when, f"{s['email']} {step} early")
                    self.assertLess(times[0] - when, datetime.timedelta(minutes=271), f"{s['email']} {step} late")
                    self.assertLess(times[0] - when, max_late)
                    if step == "d3":
                        local = times[0].astimezone(s["zone"])
                        self.assertLess(local.weekday(), 5, f"{s['email']} d3 on a weekend: {local}")
            self.assertEqual(dict(got), {}, "messages nobody was due")
            self.assertGreater(expected, 80)
            self.assertEqual(set(listed), set(by_email))

            # The journals: one final outcome per subscriber and step at most; the old
            # subscriber's steps are "skipped", naming max_late.
            for step in STEPS:
                j = journal(peers.path(f"subs.welcome.{step}.journal.jsonl"))
                finals = collections.Counter(e["email"] for entries in j.values() for e in entries
                                             if e["status"] != "deferred")
                self.assertEqual([e for e, n in finals.items() if n > 1], [], step)
                old_entries = [e for entries in j.values() for e in entries if e["email"] == "old@steps.test"]
                self.assertEqual([e["status"] for e in old_entries], ["skipped"], step)
                self.assertIn("max_late", old_entries[0]["reply"])
            print(f"{runs} runs, {len(arrivals)} messages, {expected} due in the month", file=sys.stderr)

    def test_send_at_holds_rows_and_not_before_holds_the_run(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            stats = mxsink(peers, self.sink, f"127.0.0.2:{port}")
            csv, msg = peers.path("r.csv"), peers.path("m.eml")
            with open(msg, "w") as f:
                f.write("To: <{{email}}>\nX-Row-Code: {{email}}\nSubject: x\n\nhello\n")
            with open(csv, "w") as f:
                f.write("email,send_at,tz\n"
                        "now@a.test,,\n"
                        "past@a.test,2027-01-01 08:00,\n"
                        "tokyo@a.test,2027-01-01 18:00,Asia/Tokyo\n"       # 09:00Z: due at 10:00Z
                        "later@a.test,2027-01-02T00:00:00Z,\n"
                        "bad@a.test,tomorrow,\n")
            send = [MXPRESS, "send", "--recipients", csv, "--message", msg, "--from", "b@sender.test",
                    "--route", f"*=127.0.0.2:{port}", "--progress", "off", "--threads", "1", "--tz", "UTC"]
            p = subprocess.run(send + ["--now", "2027-01-01T10:00:00Z", "--summary-json", peers.path("s.json")],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("1 not yet due (the first at 2027-01-02T00:00:00Z", p.stdout)
            self.assertIn('r.csv:6: send_at = "tomorrow" is not a time', p.stdout)
            with open(peers.path("s.json")) as f:
                s = json.load(f)
            self.assertEqual((s["delivered"], s["later"], s["unscheduled"]), (3, 1, 1), s)
            self.assertEqual(sorted(r["code"] for r in read_record(record_of(stats))),
                             ["now@a.test", "past@a.test", "tokyo@a.test"])
            # The next day, --resume sends the held row, and only it.
            p = subprocess.run(send + ["--now", "2027-01-02T00:00:00Z", "--resume"], capture_output=True, text=True,
                               timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(sorted(r["code"] for r in read_record(record_of(stats))),
                             ["later@a.test", "now@a.test", "past@a.test", "tokyo@a.test"])

            # --not-before: the run waits; nothing arrives before that second.
            later = datetime.datetime.now(UTC).replace(microsecond=0) + datetime.timedelta(seconds=3)
            with open(csv, "w") as f:
                f.write("email\nwait@a.test\n")
            p = subprocess.run(send + ["--journal", peers.path("j2.jsonl"), "--not-before", iso(later)],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("waiting until", p.stderr)
            arrival = [r for r in read_record(record_of(stats)) if r["code"] == "wait@a.test"]
            self.assertEqual(len(arrival), 1)
            self.assertGreaterEqual(arrival[0]["t"], later.timestamp())

    def test_a_step_whose_journal_another_run_holds_is_left_to_it(self):
        with Peers() as peers:
            port = free_port("127.0.0.2")
            stats = mxsink(peers, self.sink, f"127.0.0.2:{port}")
            self.write_messages(peers)
            csv = peers.path("subs.csv")
            with open(csv, "w") as f:
                f.write("email,name,signup_at,tz\na@h.test,A,2027-01-01T00:00:00Z,\n")
            open(peers.path("unsubscribed.txt"), "w").close()
            # A week on, d0 and d3 are overdue (skipped) and d7 is due; a run
            # that holds d7's journal keeps it, and the other steps still run.
            held = open(peers.path("subs.welcome.d7.journal.jsonl"), "a")
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            cmd = [MXPRESS, "steps", "--sequence", "welcome", "--recipients", csv, "--config", peers.path("c.toml"),
                   "--from", "n@s.test", "--route", f"*=127.0.0.2:{port}", "--progress", "off", "--threads", "1",
                   "--now", "2027-01-08T06:00:00Z"]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertIn("subs.welcome.d7.journal.jsonl: this step is left to it", p.stdout)
            self.assertEqual(read_record(record_of(stats)), [])
            for step in ("d0", "d3"):
                j = journal(peers.path(f"subs.welcome.{step}.journal.jsonl"))
                self.assertEqual([e["status"] for entries in j.values() for e in entries], ["skipped"], step)
            # Once it is let go, the next run sends d7, and nothing twice.
            fcntl.flock(held, fcntl.LOCK_UN)
            held.close()
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual([r["code"] for r in read_record(record_of(stats))], ["d7"])

    def test_mistakes_exit_2_naming_the_file(self):
        with Peers() as peers:
            self.write_messages(peers)
            csv = peers.path("subs.csv")
            with open(csv, "w") as f:
                f.write("email,joined\na@b.test,2027-01-01\n")
            base = [MXPRESS, "steps", "--recipients", csv, "--config", peers.path("c.toml"), "--from", "n@s.test",
                    "--route", "*=127.0.0.2:9", "--progress", "off"]
            p = subprocess.run(base + ["--sequence", "nope"], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("no [sequence.nope] (sequences here: welcome)", p.stderr)
            p = subprocess.run(base + ["--sequence", "welcome"], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("subs.csv:1: no column 'signup_at'", p.stderr)
            with open(peers.path("c.toml"), "a") as f:
                f.write('[[sequence.welcome.step]]\nid = "d9"\nafter = "9 days"\nmessage = "d0.eml"\n')
            p = subprocess.run(base + ["--sequence", "welcome"], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertRegex(p.stderr, r"c\.toml:\d+: \[sequence\.welcome\.step\] after = \"9 days\"")
            p = subprocess.run([MXPRESS, "send", "--recipients", csv, "--message", peers.path("d0.eml"), "--from",
                                "n@s.test", "--route", "*=127.0.0.2:9", "--now", "yesterday"],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn('--now "yesterday"', p.stderr)


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    run_tests(sys.argv[3:])
