"""The `x402.settle` / `x402.verify` records of issue A, built from what a facilitator saw (pure).

    {"type": "x402.settle", "id", "observedAt", "facilitator", "x402Version", "paymentPayload",
     "paymentRequirements", "settleResponse"}        (x402.verify: "verifyResponse")

`paymentPayload` and `paymentRequirements` are the request's own (camelCase wire form, unchanged); the
response is the facilitator's, camelCase, with null fields left out. The Kafka key is the payer wallet
(checksum address, UTF-8).

The id is stable: the same payment seen twice (a retried publish, the SDK hook and the proxy both
watching) gives the same id, so the watcher counts it once. It hashes the kind, the outcome, the
network, the payer and the authorization nonce (or, for payloads without one, the signature, or else the
whole payload), so a failed settle and the successful retry of the same authorization stay distinct.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

import msgspec

_enc = msgspec.json.Encoder(order="sorted")
MAX_REASON = 200


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _checksum(addr: str) -> str:
    try:
        from eth_utils import to_checksum_address
        return to_checksum_address(addr)
    except Exception:  # not an EVM address (another family): kept as given
        return addr


# the x402 SDK's exact EVM facilitator pays from `permit2Authorization` whenever a payload has one
# (x402.mechanisms.evm.types.is_permit2_payload), else from the EIP-3009 `authorization`
AUTH_KEYS = ("permit2Authorization", "authorization")


def _authorizations(payload: dict) -> list[dict]:
    inner = payload.get("payload") if isinstance(payload, dict) else None
    if not isinstance(inner, dict):
        return []
    return [a for a in (inner.get(k) for k in AUTH_KEYS) if isinstance(a, dict)]


def authorization(payload: dict) -> dict | None:
    """The authorization a facilitator pays from inside a PaymentPayload dict: the permit2 one if there
    is one, else the EIP-3009 one."""
    found = _authorizations(payload)
    return found[0] if found else None


def payers_of(payload: dict) -> list[str]:
    """Every wallet a payload's authorizations name as `from`, checksummed, the paying one first. The
    agent writes its payload: a frozen payer must not pass behind a decoy authorization of another wallet,
    whichever of the two an upstream facilitator pays from."""
    out: list[str] = []
    for auth in _authorizations(payload):
        who = auth.get("from")
        if isinstance(who, str) and who:
            c = _checksum(who)
            if c not in out:
                out.append(c)
    return out


def payer_of(payload: dict, response: dict | None = None) -> str | None:
    """The payer wallet, checksummed: the response's `payer`, else the authorization's `from`."""
    who = (response or {}).get("payer")
    if not who:
        auth = authorization(payload)
        who = auth.get("from") if auth else None
    return _checksum(who) if isinstance(who, str) and who else None


def network_of(payload: dict, requirements: dict) -> str:
    return str(requirements.get("network") or payload.get("network") or "")


def record_id(kind: str, ok: bool, payload: dict, requirements: dict) -> str:
    """`<kind>:<40 hex>`, equal for the same payment and outcome whoever reports it."""
    auth = authorization(payload) or {}
    inner = payload.get("payload") if isinstance(payload.get("payload"), dict) else {}
    token = auth.get("nonce") or inner.get("signature")
    if not token:
        token = hashlib.sha256(_enc.encode(payload)).hexdigest()
    payer = payer_of(payload) or ""
    text = f"{kind}|{'ok' if ok else 'fail'}|{network_of(payload, requirements)}|{payer.lower()}|{str(token).lower()}"
    return f"{kind}:{hashlib.sha256(text.encode()).hexdigest()[:40]}"


def _clean(resp: dict) -> dict:
    out = {k: v for k, v in resp.items() if v is not None}
    for k in ("errorReason", "invalidReason"):
        if isinstance(out.get(k), str) and len(out[k]) > MAX_REASON:
            out[k] = out[k][:MAX_REASON]
    return out


def _version(payload: dict, declared: Any) -> int:
    v = payload.get("x402Version", declared)
    return 1 if v == 1 else 2


def settle_record(payload: dict, requirements: dict, response: dict, *, facilitator: str,
                  declared_version: Any = None, observed_at: str | None = None) -> dict:
    resp = _clean(response)
    resp.setdefault("transaction", "")
    resp.setdefault("network", network_of(payload, requirements))
    if "payer" not in resp and (p := payer_of(payload)):
        resp["payer"] = p
    ok = bool(resp.get("success"))
    return {"type": "x402.settle", "id": record_id("x402.settle", ok, payload, requirements),
            "observedAt": observed_at or now_rfc3339(), "facilitator": facilitator,
            "x402Version": _version(payload, declared_version), "paymentPayload": payload,
            "paymentRequirements": requirements, "settleResponse": resp}


def verify_record(payload: dict, requirements: dict, response: dict, *, facilitator: str,
                  declared_version: Any = None, observed_at: str | None = None) -> dict:
    resp = _clean(response)
    if "payer" not in resp and (p := payer_of(payload)):
        resp["payer"] = p
    ok = bool(resp.get("isValid"))
    return {"type": "x402.verify", "id": record_id("x402.verify", ok, payload, requirements),
            "observedAt": observed_at or now_rfc3339(), "facilitator": facilitator,
            "x402Version": _version(payload, declared_version), "paymentPayload": payload,
            "paymentRequirements": requirements, "verifyResponse": resp}


def key_of(record: dict) -> bytes:
    """The Kafka key: the payer wallet (checksum address), or the record id when no payer is known."""
    kind = "settleResponse" if record["type"] == "x402.settle" else "verifyResponse"
    payer = payer_of(record["paymentPayload"], record.get(kind))
    return (payer or record["id"]).encode()


def encode(record: dict) -> bytes:
    return msgspec.json.encode(record)
