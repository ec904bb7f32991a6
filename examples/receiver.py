"""A minimal wallet-service receiver of spendwatch webhooks (standard library only).

    SPENDWATCH_WEBHOOK_SECRET=... python examples/receiver.py --port 8080
    (several secrets during a rotation: SPENDWATCH_WEBHOOK_SECRET=new,old)

It verifies `Spendwatch-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of "<t>.<body>">` in constant time,
refuses timestamps more than five minutes from its clock (401), acts once per webhook id (a repeat gets
200 again without acting), and prints what it would do. The id is read from the signed body, not from the
Idempotency-Key header (the same value, but unsigned): a request captured and replayed within the five
minutes under another header value must not act twice. Answer 2xx only once the action is durable:
spendwatch retries anything else for hours.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 300


def verify(body: bytes, header: str, secrets: list[bytes], now: float | None = None) -> bool:
    parts = [p.strip().partition("=") for p in (header or "").split(",")]
    ts = [v for k, _, v in parts if k == "t" and v.isdigit()]
    sigs = [v for k, _, v in parts if k == "v1"]
    if len(ts) != 1 or not sigs:
        return False
    signed = ts[0].encode() + b"." + body
    expected = [hmac.new(s, signed, hashlib.sha256).hexdigest() for s in secrets]
    if not any(hmac.compare_digest(e, s) for e in expected for s in sigs):
        return False
    return abs((time.time() if now is None else now) - int(ts[0])) <= TOLERANCE_SECONDS


class Handler(BaseHTTPRequestHandler):
    secrets: list[bytes] = []
    seen: set[str] = set()          # use your database: the key must survive a restart

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not verify(body, self.headers.get("Spendwatch-Signature", ""), self.secrets):
            return self._answer(401, {"error": "bad or stale signature"})
        event = json.loads(body)
        key = event["id"]               # signed; equals the Idempotency-Key header, which is not
        if key in self.seen:
            return self._answer(200, {"ok": True, "repeat": True})
        # here: freeze / unfreeze the wallet in your wallet service, durably, then remember the key
        print(f"{event['type']:<8} {event['wallet']} breaker={event['breaker']['state']} reason={event['reason']}",
              flush=True)
        self.seen.add(key)
        self._answer(200, {"ok": True})

    def _answer(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    secrets = [s.strip().encode() for s in os.environ.get("SPENDWATCH_WEBHOOK_SECRET", "").split(",") if s.strip()]
    if not secrets:
        raise SystemExit("set SPENDWATCH_WEBHOOK_SECRET (the daemon's webhook secret)")
    Handler.secrets = secrets
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
