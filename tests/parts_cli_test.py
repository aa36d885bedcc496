"""A message from parts as a user meets it: `mxpress render --subject --text
--html --attach --header-from` prints a multipart message that Python's email
package parses without defects, with each part where it belongs and every
attachment byte for byte; the same message signed verifies with dkimpy; a
missing attachment exits 2 naming it before anything is sent.

usage: parts_cli_test.py MXPRESS SOURCE_DIR
"""
import email
import email.policy
import os
import socket
import subprocess
import sys
import tempfile

from cli_harness import check, finish, publish_records, run, verify


def parse(raw):
    return email.message_from_bytes(raw, policy=email.policy.default)


def defects(msg):
    return [type(d).__name__ for p in msg.walk() for d in p.defects] + \
        [type(d).__name__ for h in msg.keys() for d in getattr(msg[h], "defects", ())]


def main():
    tmp = tempfile.mkdtemp(prefix="mxpress-parts-")
    os.chdir(tmp)
    with open("r.csv", "w") as f:
        f.write("Email,name,code\n")
        f.write("taro@example.jp,山田 太郎,a1\n")
        f.write("ann@example.org,\"Ann, Bee\",b 2>\n")
    with open("t.txt", "w") as f:
        f.write("Hello {{name}},\n\n.a line with a leading dot\nBye\n")
    with open("h.html", "w") as f:
        f.write("<p>Hello <b>{{name}}</b></p>\n")
    with open("static.html", "w") as f:
        f.write("<p>Grüße " + "x" * 1200 + "</p>\n")  # no fields, 8-bit and long: quoted-printable once
    pdf = bytes((i * 37 + 11) % 256 for i in range(5000))
    with open("report.pdf", "wb") as f:
        f.write(pdf)
    long_name = "Grüße aus 日本 — ein recht langer Dateiname für die Fortsetzungszeilen.txt"
    with open(long_name, "wb") as f:
        f.write("これは添付ファイルです\n".encode())
    with open("data.unknownext", "wb") as f:
        f.write(b"\x00\x01\x02")

    base = ["--recipients", "r.csv", "--from", "bounce@town.example", "--subject", "Für {{name}}: news",
            "--text", "t.txt", "--html", "h.html", "--header-from", "町内会 <news@town.example>"]
    attach = ["--attach", "report.pdf", "--attach", long_name, "--attach", "data.unknownext"]
    p = run("render", "--line", "2", *base, *attach)
    check("render exits 0", p.returncode == 0 and p.stderr == b"", (p.returncode, p.stderr))
    raw = p.stdout
    msg = parse(raw)
    check("no MIME defects", defects(msg) == [], defects(msg))
    check("multipart/mixed", msg.get_content_type() == "multipart/mixed", msg.get_content_type())
    check("From header", str(msg["From"]) == "町内会 <news@town.example>", str(msg["From"]))
    check("To from the email column", str(msg["To"]) == "taro@example.jp", str(msg["To"]))
    check("Subject merged", str(msg["Subject"]) == "Für 山田 太郎: news", str(msg["Subject"]))
    types = [part.get_content_type() for part in msg.walk()]
    check("part structure", types == ["multipart/mixed", "multipart/alternative", "text/plain", "text/html",
                                      "application/pdf", "text/plain", "application/octet-stream"], types)
    body = msg.get_body(("plain",))
    check("text merged", body is not None and body.get_content().replace("\r\n", "\n") ==
          "Hello 山田 太郎,\n\n.a line with a leading dot\nBye\n", body and body.get_content())
    html = msg.get_body(("html",))
    check("html merged", html is not None and "<b>山田 太郎</b>" in html.get_content(), html and html.get_content())
    atts = {a.get_filename(): a.get_payload(decode=True) for a in msg.iter_attachments()}
    check("pdf attachment byte for byte", atts.get("report.pdf") == pdf, list(atts))
    check("RFC 2231 file name decodes", atts.get(long_name) == "これは添付ファイルです\n".encode(), list(atts))
    check("unknown extension is octet-stream", atts.get("data.unknownext") == b"\x00\x01\x02", list(atts))
    lines = raw.split(b"\r\n")
    check("base64 lines of 76 columns", max(len(x) for x in lines) <= 998 and
          any(len(x) == 76 for x in lines), max(len(x) for x in lines))
    check("ASCII headers", all(b < 0x80 for b in raw.split(b"\r\n\r\n", 1)[0]))
    check("file name as filename*", b"filename*0*=UTF-8''Gr%C3%BC%C3%9Fe" in raw, raw[:3000])

    # Another row: its own values, the same attachments (encoded once at start).
    p2 = run("render", "--line", "3", *base, *attach)
    m2 = parse(p2.stdout)
    check("row 3 subject", str(m2["Subject"]) == "Für Ann, Bee: news", str(m2["Subject"]))
    check("row 3 same attachment bytes", {a.get_filename(): a.get_payload(decode=True)
                                          for a in m2.iter_attachments()} == atts)

    # Text only: one part, the renderer picks the transfer encoding per row.
    p = run("render", "--line", "2", "--recipients", "r.csv", "--subject", "x", "--text", "t.txt")
    m = parse(p.stdout)
    check("text only is single-part", p.returncode == 0 and m.get_content_type() == "text/plain" and
          not m.is_multipart() and "山田 太郎" in m.get_content(), p.stdout + p.stderr)
    # A static HTML file with long 8-bit lines goes as quoted-printable, decoded intact.
    p = run("render", "--line", "2", "--recipients", "r.csv", "--subject", "x", "--text", "t.txt", "--html",
            "static.html")
    m = parse(p.stdout)
    h = m.get_body(("html",))
    want = "<p>Grüße " + "x" * 1200 + "</p>\n"
    check("static html quoted-printable", p.returncode == 0 and h["Content-Transfer-Encoding"] == "quoted-printable"
          and h.get_content().replace("\r\n", "\n") == want and defects(m) == [], p.stdout[:2000] + p.stderr)

    # Signed: dkimpy verifies the multipart message, attachments included.
    subprocess.run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", "ed.pem"], check=True,
                   capture_output=True)
    os.chmod("ed.pem", 0o600)
    with open("dkim.toml", "w") as f:
        f.write(f'[dkim]\n[[dkim.key]]\ndomain = "town.example"\nselector = "e1"\nkey_file = "{tmp}/ed.pem"\n')
    publish_records("dkim.toml")
    for line in ("2", "3"):
        p = run("render", "--line", line, *base, *attach, "--config", "dkim.toml", "--list-unsubscribe",
                "https://town.example/u?c={{code}}")
        with open(f"signed{line}.eml", "wb") as f:
            f.write(p.stdout)
        check(f"signed render {line}", p.returncode == 0, p.stderr)
    verify("dkimpy verifies signed multipart", ["signed2.eml", "signed3.eml"], signatures=1)
    # --charset iso-2022-jp: text and headers converted per row, 7bit, signed
    # over those bytes; a character ISO-2022-JP lacks makes the row invalid.
    with open("j.csv", "w") as f:
        f.write("Email,name,note\n")
        f.write("taro@example.jp,山田 太郎,年末年始は十二月二十九日から一月三日まで休業いたします。\n")
        f.write("emoji@example.jp,絵文字 😀,x\n")
        f.write("kana@example.jp,ｶﾀｶﾅ,x\n")
    with open("j.txt", "w") as f:
        f.write("{{name}} 様\n\n{{note}}\n")
    jp = ["--recipients", "j.csv", "--from", "bounce@town.example", "--charset", "iso-2022-jp", "--subject",
          "お知らせ：年末年始の休業について（{{name}}様）", "--text", "j.txt", "--html", "h.html",
          "--header-from", "町内会 <news@town.example>", "--config", "dkim.toml"]
    p = run("render", "--line", "2", *jp)
    with open("jp.eml", "wb") as f:
        f.write(p.stdout)
    m = parse(p.stdout)
    check("iso-2022-jp render", p.returncode == 0 and p.stdout.isascii() and defects(m) == [], p.stderr)
    check("iso-2022-jp subject", str(m["Subject"]) == "お知らせ：年末年始の休業について（山田 太郎様）",
          str(m["Subject"]))
    check("iso-2022-jp From", str(m["From"]) == "町内会 <news@town.example>", str(m["From"]))
    body = m.get_body(("plain",))
    check("iso-2022-jp text part", body is not None and body.get_content_charset() == "iso-2022-jp" and
          body["Content-Transfer-Encoding"] is None and body.get_content().replace("\r\n", "\n") ==
          "山田 太郎 様\n\n年末年始は十二月二十九日から一月三日まで休業いたします。\n", body and body.as_string())
    verify("dkimpy verifies iso-2022-jp", ["jp.eml"], signatures=1)
    p = run("render", "--line", "3", *jp)
    check("emoji row invalid", p.returncode != 0 and "'😀' (U+1F600)" in p.stderr.decode() and
          "has no ISO-2022-JP form" in p.stderr.decode(), p.stderr)
    p = run("render", "--line", "4", *jp)
    check("half-width katakana row invalid", p.returncode != 0 and "'ｶ' (U+FF76)" in p.stderr.decode(), p.stderr)
    p = run("render", "--line", "2", *jp[:4], "--charset", "latin1", "--text", "j.txt")
    check("unknown charset exits 2", p.returncode == 2 and b"--charset latin1" in p.stderr, p.stderr)

    with open("signed3.eml", "rb") as f:
        signed3 = f.read()
    check("unsubscribe value percent-encoded", b"<https://town.example/u?c=b%202%3E>" in signed3, signed3[:1500])

    # Bad input: exit 2 naming the file, before anything is sent.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    p = run("send", *base, "--attach", "missing.pdf", "--route", f"*=127.0.0.1:{port}", "--journal", "j.jsonl",
            "--progress", "off")
    check("missing attachment exits 2 naming it", p.returncode == 2 and b"missing.pdf: cannot open attachment" in
          p.stderr, (p.returncode, p.stderr))
    try:
        listener.accept()
        check("nothing sent", False, "a connection was made")
    except BlockingIOError:
        pass
    check("no journal written", not os.path.exists("j.jsonl") or os.path.getsize("j.jsonl") == 0)
    with open("bad.txt", "w") as f:
        f.write("line one\nHi {{nmae}}\n")
    p = run("render", "--line", "2", "--recipients", "r.csv", "--text", "bad.txt")
    check("unknown field names the text file and line", p.returncode == 2 and
          b"bad.txt:2: unknown merge field '{{nmae}}'" in p.stderr, p.stderr)
    p = run("render", "--line", "2", "--recipients", "r.csv", "--text", "t.txt", "--message", "m.eml")
    check("--message excludes parts", p.returncode == 2 and b"cannot be combined" in p.stderr, p.stderr)
    p = run("render", "--line", "2", "--recipients", "r.csv")
    check("a message is required", p.returncode == 2 and b"a message is required" in p.stderr, p.stderr)
    p = run("render", "--line", "2", "--recipients", "r.csv", "--subject", "{{bogus}}", "--text", "t.txt")
    check("unknown field in --subject", p.returncode == 2 and b"--subject" in p.stderr and b"bogus" in p.stderr,
          p.stderr)

    return finish(tmp)


if __name__ == "__main__":
    sys.exit(main())
