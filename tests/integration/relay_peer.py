#!/usr/bin/python3
"""A submission server for relay tests, from python3-aiosmtpd: STARTTLS (587
style) or implicit TLS (465 style), AUTH PLAIN/LOGIN required, only over TLS.
Each accepted message is written to OUT/NNNNNN.json with its envelope, the
authenticated user and whether it came over TLS.

  relay_peer.py --port P --mode starttls|implicit --cert F --key F
                --user U --password-file F --out DIR
Runs until SIGTERM. Prints "ready" on stdout once it accepts connections.
"""
import argparse
import itertools
import json
import os
import signal
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Store:
    def __init__(self, out):
        self.out = out
        self.count = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            n = next(self.count)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            # session.ssl is set by STARTTLS only; implicit TLS shows on the transport.
            "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
            "user": session.auth_data.login.decode() if session.auth_data else None,
            "data": envelope.original_content.decode("utf-8", "replace"),
        }
        with open(os.path.join(self.out, f"{n:06d}.json"), "w", encoding="utf-8") as f:
            json.dump(record, f)
        return "250 2.0.0 OK queued"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["starttls", "implicit"], required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(a.password_file) as f:
        password = f.readline().rstrip("\n")

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login.decode() == a.user and auth_data.password.decode() == password
        # handled=False: aiosmtpd then answers 535 itself (its default, True,
        # means "already answered" and leaves the client waiting).
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.cert, a.key)
    kwargs = dict(authenticator=authenticator, auth_required=True, auth_require_tls=True)
    if a.mode == "starttls":
        controller = Controller(Store(a.out), hostname=a.host, port=a.port, tls_context=ctx,
                                require_starttls=True, **kwargs)
    else:
        # aiosmtpd does not count implicit TLS as TLS for auth_require_tls; the
        # whole connection is TLS here, so AUTH may be offered from the start.
        kwargs["auth_require_tls"] = False
        controller = Controller(Store(a.out), hostname=a.host, port=a.port, ssl_context=ctx, **kwargs)
    controller.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
