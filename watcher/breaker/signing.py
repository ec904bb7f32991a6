"""Webhook signatures: `Spendwatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.

During a secret rotation the sender signs with every configured secret (one `v1=` each) and a receiver
accepts the request if any `v1` matches any secret it knows. Receivers reject a timestamp more than
`tolerance` seconds from their clock (default five minutes), so a captured request cannot be replayed
later; the sender signs each attempt afresh (the body and the Idempotency-Key stay the same).

Pure functions over bytes, no I/O: import them in a receiver (see examples/receiver.py).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from watcher.errors import SpendwatchError

SIGNATURE_HEADER = "Spendwatch-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "Spendwatch-Event"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(SpendwatchError):
    """A webhook signature that must be refused; `reason` is malformed | no_match | stale."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"signature {reason}" + (f": {detail}" if detail else ""))


def _mac(secret: bytes, t: int, body: bytes) -> str:
    return hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secrets: list[bytes], t: int | None = None) -> str:
    """The header value for `body`, signed with each secret at time `t` (default now)."""
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    t = int(time.time()) if t is None else int(t)
    return ",".join([f"t={t}"] + [f"v1={_mac(s, t, body)}" for s in secrets])


def parse(header: str) -> tuple[int, list[str]]:
    t, sigs = None, []
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1" and value:
            sigs.append(value)
    if t is None or not sigs:
        raise SignatureError("malformed", "expected t=<unix seconds>,v1=<hex>")
    return t, sigs


def verify(body: bytes, header: str, secrets: list[bytes], *, now: float | None = None,
           tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS) -> int:
    """Check `header` against `body`; return its timestamp. Raises SignatureError (malformed, no_match,
    stale). Compares in constant time; a signature is checked before its age, so a stale but valid one
    is reported as stale."""
    t, sigs = parse(header)
    expected = [_mac(s, t, body) for s in secrets]
    if not any(hmac.compare_digest(e, s) for e in expected for s in sigs):
        raise SignatureError("no_match", "no v1 signature matches a known secret")
    now = time.time() if now is None else now
    if abs(now - t) > tolerance_seconds:
        raise SignatureError("stale", f"timestamp {t} is {abs(now - t):.0f} s from now (limit {tolerance_seconds})")
    return t
