"""What the command-line tests in tests/ (dkim_cli_test.py, parts_cli_test.py)
share: running the mxpress binary, collecting failed checks, publishing a
config's DKIM keys as a records file and verifying messages with dkimpy
(tests/dkim_verify.py, DNS answered from that file).

Each test is run as `python3 TEST MXPRESS SOURCE_DIR`; importing this module
reads those two arguments.
"""
import os
import subprocess
import sys

import dkim  # noqa: F401  (fail early when python3-dkim is missing)

MX = os.path.realpath(sys.argv[1])
VERIFY = os.path.join(os.path.realpath(sys.argv[2]), "tests", "dkim_verify.py")
failures = []


def check(name, cond, detail=""):
    if not cond:
        failures.append(f"{name}: {detail}")
        print(f"FAIL {name}: {detail}")


def run(*args):
    return subprocess.run([MX, *args], capture_output=True)


def publish_records(config, path="records"):
    """`dkim-record --config` -> {name: TXT value}, strings joined; also
    written to `path` as "name value" lines, the file dkim_verify.py reads."""
    p = run("dkim-record", "--config", config)
    check("dkim-record exits 0", p.returncode == 0, p.stderr)
    records = {}
    for line in p.stdout.decode().splitlines():
        records[line.split()[0].rstrip(".")] = "".join(line.split('"')[1::2])
    with open(path, "w") as f:
        for name, value in records.items():
            f.write(f"{name} {value}\n")
    return records


def dkimpy(messages, records="records"):
    """dkim_verify.py on message files: a line "NAME ok N" or "NAME FAIL why"
    each, exit 0 when all passed."""
    return subprocess.run(["/usr/bin/python3", VERIFY, records, *messages], capture_output=True, text=True)


def verify(name, messages, signatures, records="records"):
    """Checks that dkimpy verifies `signatures` signatures in each message."""
    v = dkimpy(messages, records)
    check(name, v.returncode == 0 and v.stdout.count(f" ok {signatures}\n") == len(messages), v.stdout + v.stderr)
    return v


def finish(tmp):
    subprocess.run(["rm", "-rf", tmp])
    print(f"{'FAILED' if failures else 'passed'}: {len(failures)} failures")
    return 1 if failures else 0
