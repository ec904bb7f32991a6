"""The Decision record, published to the Kafka topic `watcher.decisions` (key: the agent's wallet).

    {"type": "decision", "id": "d-<24 hex>", "kind": "observe" | "warn" | "escalate" | "freeze",
     "agent": "0x...", "rule": "cap_1m", "source": "policy" | "model" | "finding" | "clock",
     "observed": 2013000, "threshold": 2000000,
     "unit": "usdc_base_units" | "count" | "ratio" | "z" | "score" | "seconds",
     "window": "1m" | "1h" | "24h" | "payment" | ..., "eventIds": ["..."],
     "occurredAt": "2026-11-23T10:00:00.123Z", "reason": "...", "merchant": "0x..." | null,
     "category": "search" | null, "team": "research" | null, "policyVersion": "..."}

`eventIds` names the events behind the decision: the one that crossed the threshold, or for a count rule
(`failed_verifications`, `new_merchant_burst`) every event counted, in time order, that one last (at most
64 and 16: see watcher/detect/candidates.py); for a finding, its payment's records (the settle, then
its transfers; at most 64, FINDING_IDS: the finding on watcher.findings names them all).
`id` is a hash of (agent, rule, the triggering event id or escalation id), so a re-run over the same
events yields the same ids and a consumer can drop repeats. An `escalation_timeout` (source "clock") is
triggered by no event: its `eventIds` holds the id of the unanswered escalation decision, whose own
`eventIds` name the payments, and its observed value and threshold are the timeout in seconds. Money is
integer base units when `unit` is usdc_base_units. `occurredAt` is event time (the triggering event's),
not wall time.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Literal

import msgspec

Kind = Literal["observe", "warn", "escalate", "freeze"]
Source = Literal["policy", "model", "finding", "clock"]
KINDS: tuple[str, ...] = ("observe", "warn", "escalate", "freeze")


class Decision(msgspec.Struct, frozen=True, tag_field="type", tag="decision", rename="camel"):
    id: str
    kind: Kind
    agent: str
    rule: str
    source: Source
    observed: int | float
    threshold: int | float
    unit: str
    window: str | None
    event_ids: list[str]
    occurred_at: str
    reason: str
    merchant: str | None = None
    category: str | None = None
    team: str | None = None
    policy_version: str = ""

    @property
    def at_ms(self) -> int:
        return parse_ms(self.occurred_at)


def decision_id(agent: str, rule: str, anchor: str) -> str:
    return "d-" + hashlib.sha256(f"{agent}|{rule}|{anchor}".encode()).hexdigest()[:24]


def rfc3339(ms: int) -> str:
    """UTC epoch ms -> '2026-11-23T10:00:00.123Z'."""
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_ms(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1000 + dt.microsecond // 1000


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Decision)


def encode_decision(d: Decision) -> bytes:
    return _enc.encode(d)


def encode_decisions(ds: list[Decision]) -> bytes:
    """JSON lines (each decision then a newline), as `spendwatch replay` writes them."""
    return b"".join(_enc.encode(d) + b"\n" for d in ds)


def decode_decision(raw: bytes) -> Decision:
    return _dec.decode(raw)
