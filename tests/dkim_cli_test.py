"""DKIM as a user meets it: `mxpress dkim-record` publishes the keys of a
config, `mxpress render --config` prints signed messages that dkimpy
(python3-dkim) verifies with those records (dnsfunc instead of DNS), and bad
keys or options exit 2 naming the file.

usage: dkim_cli_test.py MXPRESS SOURCE_DIR
"""
import os
import subprocess
import sys
import tempfile

from cli_harness import check, dkimpy, finish, publish_records, run, verify


def main():
    tmp = tempfile.mkdtemp(prefix="mxpress-dkim-")
    os.chdir(tmp)
    for name, args in (("rsa.pem", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("ed.pem", ["-algorithm", "ED25519"]),
                       ("ec.pem", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])):
        subprocess.run(["openssl", "genpkey", *args, "-out", name], check=True, capture_output=True)
        os.chmod(name, 0o600)
    key_block = ('[[dkim.key]]\ndomain = "town.example"\nselector = "r2026a"\nkey_file = "{rsa}"\n'
                 '[[dkim.key]]\ndomain = "town.example"\nselector = "e2026a"\nkey_file = "{ed}"\n')
    with open("dkim.toml", "w") as f:
        f.write('[dkim]\ncanonicalization = "relaxed/relaxed"\nexpiration = "7d"\n' +
                key_block.format(rsa=os.path.abspath("rsa.pem"), ed=os.path.abspath("ed.pem")))
    with open("r.csv", "w") as f:
        f.write("email,name,code\n")
        f.write("taro@example.jp,山田 太郎,a1\n")
        f.write('ann@example.org,"Ann ""The Long"" Name, with a comma and a very long display name that folds",b2\n')
        f.write("bo@example.net,Bo,c3\n")
    with open("m.eml", "w") as f:
        f.write("From: 町内会 <news@town.example>\nTo: {{name}} <{{email}}>\n"
                "Subject: 【重要】{{name}}様へ 町内清掃のお知らせ、そして長い件名が折り返されることを確かめるための文\n\n"
                "{{name}}様\n\n.一行目はドットで始まる\n..二つのドット\nFrom the committee  \n\n\n\n")

    records = publish_records("dkim.toml")
    check("two records", set(records) == {"r2026a._domainkey.town.example", "e2026a._domainkey.town.example"},
          records)

    messages = []
    for line in (2, 3, 4):
        p = run("render", "--recipients", "r.csv", "--message", "m.eml", "--line", str(line), "--from",
                "bounce@town.example", "--config", "dkim.toml", "--list-unsubscribe",
                "https://town.example/u?id={{code}}")
        check(f"render line {line}", p.returncode == 0 and p.stderr == b"", p.stderr)
        path = f"line{line}.eml"
        with open(path, "wb") as f:
            f.write(p.stdout)
        messages.append(path)
        check(f"line {line} one-click", b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in p.stdout and
              f"<https://town.example/u?id={'abc'[line - 2]}{line - 1}>".encode() in p.stdout, p.stdout[:2000])
        parts = p.stdout.split(b"\th=", 1)
        h_tag = parts[1].split(b";", 1)[0].replace(b"\r\n\t", b"") if len(parts) == 2 else b"(no h= tag)"
        check(f"line {line} unsubscribe headers signed",
              b":list-unsubscribe:" in h_tag and b":list-unsubscribe-post:" in h_tag, h_tag)
    verify("dkimpy verifies every rendered message", messages, signatures=2)

    # The same row renders the same Message-ID every time (a retry, a resume).
    again = run("render", "--recipients", "r.csv", "--message", "m.eml", "--line", "2", "--from",
                "bounce@town.example", "--config", "dkim.toml", "--list-unsubscribe",
                "https://town.example/u?id={{code}}").stdout
    mid = lambda m: [h for h in m.split(b"\r\n") if h.startswith(b"Message-ID:")]
    with open("line2.eml", "rb") as f:
        first = f.read()
    check("stable Message-ID", mid(again) == mid(first) and mid(first) != [], (mid(again), mid(first)))
    with open("line3.eml", "rb") as f:
        check("distinct Message-IDs", mid(f.read()) != mid(first))

    # Tampering after signing breaks it.
    tampered = first[:-8] + b"tampered\r\n"
    with open("tampered.eml", "wb") as f:
        f.write(tampered)
    v = dkimpy(["tampered.eml"])
    check("tampered message fails", v.returncode == 1 and "FAIL" in v.stdout, v.stdout)

    # check-config shows the effective [dkim]; dkim-record needs a key or a config.
    p = run("check-config", "dkim.toml")
    check("check-config shows [dkim]", p.returncode == 0 and b'selector = "e2026a"' in p.stdout and
          b'canonicalization = "relaxed/relaxed"' in p.stdout and b'expiration = "604800s"' in p.stdout, p.stdout)
    p = run("dkim-record")
    check("dkim-record without a key", p.returncode == 2 and b"needs --key FILE or --config FILE" in p.stderr,
          p.stderr)
    p = run("dkim-record", "--key", "ed.pem", "--domain", "town.example", "--selector", "e2026a")
    check("dkim-record --key", p.returncode == 0 and p.stdout.decode().strip() ==
          f'e2026a._domainkey.town.example. IN TXT ( "{records["e2026a._domainkey.town.example"]}" )', p.stdout)

    # A dry run signs every row.
    p = run("send", "--dry-run", "--recipients", "r.csv", "--message", "m.eml", "--from", "bounce@town.example",
            "--config", "dkim.toml", "--progress", "off")
    check("dry run with [dkim]", p.returncode == 0 and b"3 valid, 0 invalid" in p.stdout, p.stdout + p.stderr)

    # Bad input: exit 2, naming the file; nothing sent.
    def bad(name, toml_keys, want, *extra):
        with open(f"{name}.toml", "w") as f:
            f.write("[dkim]\n" + toml_keys)
        p = run("render", "--recipients", "r.csv", "--message", "m.eml", "--line", "2", "--config", f"{name}.toml",
                *extra)
        check(name, p.returncode == 2 and want.encode() in p.stderr and p.stdout == b"", (p.returncode, p.stderr))

    one = '[[dkim.key]]\ndomain = "town.example"\nselector = "s"\nkey_file = "{}"\n'
    bad("missing_key", one.format(os.path.abspath("nope.pem")), "nope.pem: cannot read DKIM key")
    bad("wrong_type", one.format(os.path.abspath("ec.pem")), "ec.pem: key type id-ecPublicKey cannot sign DKIM")
    bad("directory_key", one.format(tmp), "DKIM key is not a regular file")
    bad("bad_canon", 'canonicalization = "strict"\n' + one.format("x"),
        'bad_canon.toml:2: [dkim] canonicalization = "strict"')
    bad("http_unsubscribe", one.format(os.path.abspath("ed.pem")), "needs an https:// URL", "--list-unsubscribe",
        "http://town.example/u")

    # A key others can read: a warning naming it, the message still signed.
    os.chmod("ed.pem", 0o644)
    p = run("render", "--recipients", "r.csv", "--message", "m.eml", "--line", "2", "--config", "dkim.toml")
    check("loose key mode warns", p.returncode == 0 and
          f"{os.path.abspath('ed.pem')} is accessible by others (mode 0644)".encode() in p.stderr, p.stderr)
    os.chmod("ed.pem", 0o600)

    return finish(tmp)


if __name__ == "__main__":
    sys.exit(main())
