"""Findings of the settle/transfer join, published to the topic `watcher.findings`.

    {"type": "finding", "id": "<kind>:<chainId>:<tx>", "kind": "unsettled" | "shadow_spend" |
     "amount_mismatch", "agent": "0x...", "merchant": "0x...", "chainId": 8453, "tx": "0x...",
     "settledAmount": "1000" | null, "transferredAmount": "990" | null, "observedAt": "...Z",
     "eventIds": ["..."], "detail": "..."}

`eventIds` names the payment's records: the settle's id (if any), then each transfer record of the
transaction (one per log index), all of them. A decision on a finding names the first 64 (FINDING_IDS in
watcher/detect/candidates.py, the count rules' bound).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

FindingKind = Literal["unsettled", "shadow_spend", "amount_mismatch"]


class Finding(msgspec.Struct, frozen=True, tag_field="type", tag="finding"):
    id: str
    kind: FindingKind
    agent: str
    merchant: str
    chainId: int
    tx: str
    observedAt: datetime
    settledAmount: str | None = None
    transferredAmount: str | None = None
    eventIds: list[str] = []
    detail: str = ""
