"""Independent checks of signed messages: dkimpy (python3-dkim) verifies
every DKIM-Signature with the public keys given in a records file instead
of DNS, and a header lint checks what receivers reject.

usage: dkim_verify.py RECORDS MESSAGE...
RECORDS: lines "selector._domainkey.domain TXT-value".
Prints one line per message: "NAME ok N" (N signatures verified) or
"NAME FAIL reason"; exits 0 when every message passed.
"""
import email
import email.policy
import sys

import dkim


def lint(raw):
    """What a strict receiver checks; returns a list of problems."""
    problems = []
    if b"\n" in raw.replace(b"\r\n", b""):
        problems.append("bare LF")
    if b"\r" in raw.replace(b"\r\n", b""):
        problems.append("bare CR")
    for line in raw.split(b"\r\n"):
        if len(line) > 998:
            problems.append("line over 998 octets")
            break
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    for name in ("Date", "Message-ID"):
        if len(msg.get_all(name, [])) != 1:
            problems.append(f"{len(msg.get_all(name, []))} {name} headers")
    if not msg.get_all("From"):
        problems.append("no From")
    strict = email.message_from_bytes(raw, policy=email.policy.default)
    for part in strict.walk():
        for d in part.defects:
            problems.append(f"MIME defect {type(d).__name__}")
    return problems


def main():
    records = {}
    with open(sys.argv[1], "rb") as f:
        for line in f:
            name, value = line.rstrip(b"\n").split(b" ", 1)
            records[name] = value

    def dnsfunc(name, timeout=5):
        return records.get(name.rstrip(b"."))

    failed = 0
    for path in sys.argv[2:]:
        with open(path, "rb") as f:
            raw = f.read()
        problems = lint(raw)
        count = raw.count(b"\r\nDKIM-Signature:") + raw.startswith(b"DKIM-Signature:")
        if count == 0:
            problems.append("no DKIM-Signature")
        d = dkim.DKIM(raw)
        for i in range(count):
            try:
                if not d.verify(idx=i, dnsfunc=dnsfunc):
                    problems.append(f"signature {i} does not verify")
            except dkim.DKIMException as e:
                problems.append(f"signature {i}: {e}")
        if problems:
            failed += 1
            print(f"{path} FAIL {'; '.join(problems)}")
        else:
            print(f"{path} ok {count}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
