#!/usr/bin/python3
"""A receiver without 8BITMIME, from python3-aiosmtpd in strict ASCII mode
(decode_data=True): it does not offer 8BITMIME and answers "500 Error:
strict ASCII mode" to a message with 8-bit bytes. Each accepted message is
written to OUT/NNNNNN.json with its envelope and text.

  strict_peer.py --host H --port P --out DIR
Runs until SIGTERM. Prints "ready" on stdout once it accepts connections.
"""
import argparse
import itertools
import json
import os
import signal
import sys
import threading

from aiosmtpd.controller import Controller


class Store:
    def __init__(self, out):
        self.out = out
        self.count = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            n = next(self.count)
        record = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                  "mail_options": envelope.mail_options, "data": envelope.content}
        with open(os.path.join(self.out, f"{n:06d}.json"), "w", encoding="utf-8") as f:
            json.dump(record, f)
        return "250 2.0.0 OK queued"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    controller = Controller(Store(a.out), hostname=a.host, port=a.port, decode_data=True)
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
