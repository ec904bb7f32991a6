"""The one internal shape every input record is turned into, after validation."""

from __future__ import annotations

from enum import IntEnum

from msgspec import Struct


class Kind(IntEnum):
    SETTLE = 0
    VERIFY = 1
    TRANSFER = 2
    PROGRESS = 3    # the chain bridge's heartbeat: no agent, no money (only the join reads it)


class Observation(Struct, frozen=True, gc=False):
    """A validated record. Money in integer token base units; time in UTC epoch milliseconds.

    `status`: settle -> settled|failed; verify -> valid|invalid; transfer -> pending|confirmed|reverted;
    progress -> "progress" (`agent` and `merchant` empty, `asset` the bridge's token or empty from an older
    bridge, `amount` 0, `ts_ms` the block's time, `read_from_ms` the time of the first block the bridge read
    or None, `watches_all` whether the bridge publishes every wallet's transfers).
    `dedupe_key` is the same for a redelivery of the same record and different for a new fact
    (a transfer's status update has the id of the transfer but another dedupe key).
    """

    kind: int
    event_id: str
    dedupe_key: str
    ts_ms: int
    agent: str
    merchant: str
    amount: int
    chain_id: int
    network: str
    asset: str
    status: str
    tx: str | None = None
    resource: str | None = None
    reason: str | None = None
    source: str | None = None
    block_number: int | None = None
    block_hash: str | None = None
    log_index: int | None = None
    nonce: str | None = None
    required_amount: int | None = None
    read_from_ms: int | None = None
    watches_all: bool = False

    @property
    def is_spend(self) -> bool:
        """True for a record that moves money (a successful settle or a transfer)."""
        return self.kind == Kind.TRANSFER or (self.kind == Kind.SETTLE and self.status == "settled")
