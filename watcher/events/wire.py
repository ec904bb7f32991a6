"""The JSON records on the Kafka topics, as frozen msgspec Structs.

`x402.settle` / `x402.verify` (topic x402.payments) carry a facilitator's own request body and its
response unchanged, plus an id, a time and the facilitator's name. Fields of protocol v1 and v2 live in
one Struct each (the version decides which must be present; see `watcher.events.decode`). Only the
fields spendwatch reads are declared: the rest (signature, `accepted`, `extra`, ...) is skipped by the
parser, so newer SDKs with extra fields still decode and decoding stays cheap.

`chain.transfer` (topic x402.chain) is published by the chain bridge:

    {"type": "chain.transfer", "id": "8453:0x<tx hash>:<log index>", "observedAt": "...Z",
     "chainId": 8453, "token": "0x...", "from": "0x...", "to": "0x...", "value": "1000000",
     "txHash": "0x...", "logIndex": 7, "blockNumber": 123, "blockHash": "0x...",
     "blockTime": "...Z" | null, "authorizer": "0x..." | null, "nonce": "0x<32 bytes>" | null,
     "status": "pending" | "confirmed" | "reverted", "confirmations": 0}

`id` is stable across status updates; a status update is a new record with the same id.

`chain.progress` (topic x402.chain) is the bridge's heartbeat, published to every partition:

    {"type": "chain.progress", "id": "8453:<blockNumber>", "observedAt": "...Z", "chainId": 8453,
     "blockNumber": 123, "blockHash": "0x...", "blockTime": "...Z",
     "token": "0x...", "readFrom": 120, "readFromTime": "...Z", "watchesAll": false}

It says "every confirmed transfer of `token` from a watched wallet in blocks readFrom..blockNumber has been
published (and acknowledged) before this record": the block is `confirmations` deep, `readFrom` the first
block the bridge read (blocks before it it never read: not vouched for). It names no agent and moves no
money; the watcher's join uses `blockTime` as how far that bridge is known to have confirmed, for settles
from `readFromTime` on (see `watcher.pipeline.join`), so an `unsettled` finding on a quiet partition need not
wait for other traffic. `watchesAll` true: the bridge publishes the transfers of every wallet (not only a
watched list), so the heartbeat vouches for every agent. `token`, `readFrom`, `readFromTime` and
`watchesAll` are optional: a bridge from before them sent none (and a bridge whose checkpoint predates
`readFrom` sends no `readFrom`). No record type here forbids
unknown fields: an older reader skips the ones it does not know.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

Str200 = Annotated[str, Meta(max_length=200)]
Str2k = Annotated[str, Meta(max_length=2048)]
Hex = Annotated[str, Meta(max_length=200)]


class Authorization(Struct, frozen=True, gc=False, rename={"from_": "from"}):
    """EIP-3009 authorization of the x402 "exact" EVM scheme."""

    from_: Hex
    to: Hex
    value: Str200
    nonce: Hex | None = None


class Permitted(Struct, frozen=True, gc=False):
    token: Hex
    amount: Str200


class Permit2Authorization(Struct, frozen=True, gc=False, rename={"from_": "from"}):
    """Permit2 PermitWitnessTransferFrom of the "exact" EVM scheme (only what is counted is read)."""

    from_: Hex
    permitted: Permitted


class SchemePayload(Struct, frozen=True, gc=False):
    """The scheme's payload: its EIP-3009 authorization, or its Permit2 one, which a facilitator pays from
    whenever there is one (as the x402 SDK does); the signature is not kept."""

    authorization: Authorization | None = None
    permit2Authorization: Permit2Authorization | None = None


class ResourceInfo(Struct, frozen=True, gc=False):
    url: Str2k


class Requirements(Struct, frozen=True, gc=False):
    """PaymentRequirements of v2 (`amount`) or v1 (`maxAmountRequired`, `resource`)."""

    network: Str200
    payTo: Hex
    asset: Hex
    amount: Str200 | None = None
    maxAmountRequired: Str200 | None = None
    resource: Str2k | None = None


class PaymentPayload(Struct, frozen=True, gc=False):
    """PaymentPayload of v2 (`accepted`, `resource`) or v1 (`scheme`, `network`); neither is read."""

    x402Version: int
    payload: SchemePayload
    resource: ResourceInfo | None = None


class SettleResponse(Struct, frozen=True, gc=False):
    success: bool
    transaction: Hex = ""
    network: Str200 = ""
    payer: Hex | None = None
    errorReason: Str200 | None = None
    amount: Str200 | None = None


class VerifyResponse(Struct, frozen=True, gc=False):
    isValid: bool
    invalidReason: Str200 | None = None
    payer: Hex | None = None


class _FacilitatorRecord(Struct, frozen=True, gc=False, tag_field="type"):
    """What a facilitator saw: its request body (payload + requirements) plus an id, a time and its name."""

    id: Str200
    observedAt: datetime
    facilitator: Str200
    x402Version: Literal[1, 2]
    paymentPayload: PaymentPayload
    paymentRequirements: Requirements


class SettleRecord(_FacilitatorRecord, frozen=True, tag="x402.settle"):
    settleResponse: SettleResponse


class VerifyRecord(_FacilitatorRecord, frozen=True, tag="x402.verify"):
    verifyResponse: VerifyResponse


TransferStatus = Literal["pending", "confirmed", "reverted"]


class ChainTransfer(Struct, frozen=True, gc=False, tag_field="type", tag="chain.transfer",
                    rename={"from_": "from"}):
    id: Str200
    observedAt: datetime
    chainId: int
    token: Hex
    from_: Hex
    to: Hex
    value: Str200
    txHash: Hex
    logIndex: int
    blockNumber: int
    blockHash: Hex
    status: TransferStatus
    blockTime: datetime | None = None
    authorizer: Hex | None = None
    nonce: Hex | None = None
    confirmations: int = 0


class ChainProgress(Struct, frozen=True, gc=False, tag_field="type", tag="chain.progress"):
    id: Str200
    observedAt: datetime
    chainId: int
    blockNumber: int
    blockHash: Hex
    blockTime: datetime
    token: Hex | None = None                # absent: a bridge from before tokens in chain.progress
    readFrom: int | None = None             # absent: unknown (a bridge checkpoint from before readFrom)
    readFromTime: datetime | None = None    # the time of block readFrom
    watchesAll: bool = False                # the bridge publishes every transfer of the token (chain.watch_all)


WireRecord = SettleRecord | VerifyRecord | ChainTransfer | ChainProgress

_decoder = msgspec.json.Decoder(WireRecord)
_encoder = msgspec.json.Encoder()


def decode_wire(raw: bytes) -> WireRecord:
    """Parse one record; raises msgspec.ValidationError / DecodeError."""
    return _decoder.decode(raw)


def encode_wire(record: WireRecord) -> bytes:
    return _encoder.encode(record)


def chain_transfer_id(chain_id: int, tx_hash: str, log_index: int) -> str:
    return f"{chain_id}:{tx_hash.lower()}:{log_index}"


def chain_progress_id(chain_id: int, block_number: int) -> str:
    return f"{chain_id}:{block_number}"
