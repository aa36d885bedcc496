#!/usr/bin/python3
"""The progress line in a real terminal: `mxpress send --progress auto` runs
in a tmux pane 100 columns wide against mxsink, paced by max_message_rate so
that it lasts about 4 s; the pane is captured while it runs. The line has the
bar, the percentage, `done / total`, the rate per hour and the ETA, is
redrawn in place (one progress line on the screen, whose percentage moves),
never wraps, and is gone when the summary is printed. Skipped when tmux is
not installed.

  progress_test.py MXPRESS_BINARY REPO_ROOT [TestName...]
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import (CODED_TEMPLATE, Peers, assert_exactly_once, free_port, mxsink, read_record,  # noqa: E402
                   record_of, run_tests, stop_and_read_stats, write_coded_recipients)

MXPRESS = None
WIDTH = 100
ROWS = 2000
RATE = 500  # per second: ROWS take about 4 s


def sanitized():
    """Paced sending falls far short of the rate in ASan/TSan builds (84 of
    500/s under ASan; TSan did not finish 2,000 rows in 60 s): fewer rows at
    a lower rate there, still about 5 s."""
    out = subprocess.run(["ldd", MXPRESS], capture_output=True, text=True).stdout
    return "libasan" in out or "libtsan" in out

# `[=====>....]  44%  880 / 2,000  1.80M/h  ETA 2s ...`
BAR = re.compile(r"\[[=>.]+\] +(\d+)%  ([\d,]+) / ([\d,]+)  [\d.]+[kMG]?/h  ETA \S+")


class Progress(unittest.TestCase):
    def test_a_terminal_shows_a_bar_redrawn_in_place_within_its_width(self):
        global ROWS, RATE
        if sanitized():
            ROWS, RATE = 100, 20
        tmux = shutil.which("tmux")
        if tmux is None:
            self.skipTest("tmux is not installed (scripts/setup installs it)")
        with Peers() as peers:
            port = free_port("127.0.0.2")
            stats = mxsink(peers, os.path.join(os.path.dirname(MXPRESS), "mxsink"), f"127.0.0.2:{port}")
            recipients, message, config = peers.path("r.csv"), peers.path("m.eml"), peers.path("c.toml")
            codes = write_coded_recipients(recipients, [f"r{k}@paced.test" for k in range(ROWS)])
            with open(message, "w") as f:
                f.write(CODED_TEMPLATE)
            with open(config, "w") as f:
                f.write(f'[defaults]\nmax_message_rate = "{RATE}/s"\n')
            done = peers.path("done")
            send = [MXPRESS, "send", "--recipients", recipients, "--message", message, "--from", "b@sender.test",
                    "--route", f"*=127.0.0.2:{port}", "--config", config, "--journal", peers.path("j.jsonl"),
                    "--progress", "auto", "--threads", "1"]
            script = peers.path("run.sh")
            with open(script, "w") as f:
                # The pane stays after the run, for the capture of its end.
                f.write(f"{shlex.join(send)}\necho $? >{shlex.quote(done)}\nexec sleep 120\n")
            sock = peers.path("tmux.sock")
            tm = [tmux, "-S", sock, "-f", "/dev/null"]
            env = dict(os.environ, TERM="xterm")
            subprocess.run(tm + ["new-session", "-d", "-x", str(WIDTH), "-y", "20", f"bash {shlex.quote(script)}"],
                           check=True, env=env, timeout=30)
            try:
                screens = []
                deadline = time.monotonic() + 60
                while not os.path.exists(done) and time.monotonic() < deadline:
                    # -J: a wrapped line comes back as one, longer than the pane.
                    p = subprocess.run(tm + ["capture-pane", "-p", "-J"], capture_output=True, text=True,
                                       timeout=10)
                    screens.append(p.stdout)
                    time.sleep(0.2)
                time.sleep(0.3)
                end = subprocess.run(tm + ["capture-pane", "-p", "-J"], capture_output=True, text=True,
                                     timeout=10).stdout
            finally:
                subprocess.run(tm + ["kill-server"], capture_output=True, timeout=30)
            self.assertTrue(os.path.exists(done), "the send did not end within 60 s")
            with open(done) as f:
                self.assertEqual(f.read().strip(), "0", end)

            percents = set()
            for screen in screens:
                lines = screen.split("\n")
                for line in lines:
                    # The progress line must fit; the summary after it may wrap
                    # (its journal path is as long as the path is).
                    if line.startswith("[") or BAR.search(line):
                        self.assertLessEqual(len(line), WIDTH, f"a progress line wider than the pane:\n{screen}")
                bars = [line for line in lines if BAR.search(line)]
                self.assertLessEqual(len(bars), 1, f"the progress line was not redrawn in place:\n{screen}")
                for line in bars:
                    m = BAR.search(line)
                    self.assertTrue(line.startswith("["), line)
                    self.assertEqual(m.group(3), f"{ROWS:,}", line)
                    done_rows = int(m.group(2).replace(",", ""))
                    self.assertEqual(int(m.group(1)), done_rows * 100 // ROWS, line)
                    percents.add(int(m.group(1)))
            shown = [s for s in screens if BAR.search(s)]
            self.assertGreaterEqual(len(shown), 3, "the bar was seen in fewer than 3 captures:\n" +
                                    "\n----\n".join(screens[-5:]))
            self.assertGreaterEqual(len(percents - {0, 100}), 2, f"the percentage hardly moved: {sorted(percents)}")
            # The summary starts on a cleared line: no progress left on screen.
            self.assertIsNone(BAR.search(end), end)
            self.assertRegex(end, rf"(?m)^sent: {ROWS} rows, {ROWS} delivered")
            print(f"percentages seen: {sorted(percents)}; a capture:\n{shown[len(shown) // 2]}", file=sys.stderr)

            stop_and_read_stats(peers, stats)
            assert_exactly_once(self, read_record(record_of(stats)), codes)


if __name__ == "__main__":
    MXPRESS = os.path.abspath(sys.argv[1])
    run_tests(sys.argv[3:])
