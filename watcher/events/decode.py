"""bytes -> validated Observation, or an EventError with a stable reason code.

Reason codes (the dead-letter topic's `reason` and the metric label):
    too_large, bad_json, bad_schema, bad_version, bad_address, bad_hash, bad_amount,
    unknown_network, bad_time, missing_field, amount_too_large

A `chain.progress` record (the bridge's heartbeat) is checked like a transfer's block: a known chain id
(unknown_network), a non-negative block number and an id of `<chainId>:<blockNumber>` (bad_schema), a
32-byte block hash (bad_hash), a block time with an offset (bad_time); where present, a token address
(bad_address), a `readFrom` block not above `blockNumber` (bad_schema), a `readFromTime` with an offset
(bad_time).

Times must carry an offset and lie in [1970-01-01, 9000-01-01) UTC (bad_time): windows, deadlines, findings
and decisions count in epoch milliseconds and write dates back, so a time near the year 1 or 9999 would
crash them (a date before year 1 or after 9999 does not exist). Block numbers and log indexes are below
2^63 (bad_schema), as checkpoints store them. Bytes that are not UTF-8 are bad_json.

Amounts are validated as the protocol allows (decimal strings below 2^256); the windows hold int64, so
an amount of 2^62 base units or more (4.6e12 USDC, far above the token's whole supply) is refused as
amount_too_large rather than wrapped or rounded.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import msgspec

from watcher.errors import EventError
from watcher.events.addresses import AddressBook, tx_hash
from watcher.events.networks import Networks
from watcher.events.observation import Kind, Observation
from watcher.events.wire import (Authorization, ChainProgress, ChainTransfer, SettleRecord, VerifyRecord,
                                 chain_progress_id, decode_wire)
from watcher.money import MAX_UINT256

REASONS = ("too_large", "bad_json", "bad_schema", "bad_version", "bad_address", "bad_hash",
           "bad_amount", "unknown_network", "bad_time", "missing_field", "amount_too_large")
MAX_TRACKED_AMOUNT = 2**62
MAX_INDEX = 2**63
MIN_TIME_MS = 0
MAX_TIME_MS = int(datetime(9000, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)


def parse_amount(text: str | int | None, field: str) -> int:
    """A non-negative integer below 2^256 written as a decimal string."""
    if text is None:
        raise EventError("missing_field", f"{field} is missing")
    if isinstance(text, bool) or not isinstance(text, str) or not text.isdigit() or not text.isascii():
        raise EventError("bad_amount", f"{field}={str(text)[:80]!r} is not a decimal string of base units")
    if len(text) > 78:
        raise EventError("bad_amount", f"{field} has {len(text)} digits; must be below 2^256")
    value = int(text)
    if value >= MAX_UINT256:
        raise EventError("bad_amount", f"{field} is not below 2^256")
    return value


def _amount(text, field: str) -> int:
    """parse_amount's fast path: a short plain decimal string."""
    if text.__class__ is str and text.isdigit() and text.isascii() and len(text) < 19:
        return int(text)
    return parse_amount(text, field)


def _epoch_ms(dt: datetime, field: str) -> int:
    if dt.tzinfo is None:
        raise EventError("bad_time", f"{field} has no UTC offset; write it as RFC 3339 with 'Z'")
    ms = int(dt.timestamp() // 1) * 1000 + dt.microsecond // 1000   # exact: timestamp() * 1000 was 1 ms early
    if not MIN_TIME_MS <= ms < MAX_TIME_MS:
        raise EventError("bad_time", f"{field}={dt.isoformat()} is outside 1970-01-01 .. 9000-01-01 UTC")
    return ms


def _index(value: int, field: str) -> None:
    if not 0 <= value < MAX_INDEX:
        raise EventError("bad_schema", f"{field}={str(value)[:40]} must be non-negative and below 2^63")


def _signed(auth, required: int) -> int:
    """The amount an authorization signs for (EIP-3009 `value`, Permit2 `permitted.amount`), else the
    requirements'."""
    if auth is None:
        return required
    if auth.__class__ is Authorization:
        return _amount(auth.value, "authorization.value")
    return _amount(auth.permitted.amount, "permit2Authorization.permitted.amount")


class Decoder:
    """Validates records against the protocol and local limits. One per consumer; not thread-safe.

    max_future_skew_ms: a record stamped further than this past `clock()` is refused as bad_time
    (a wrong facilitator clock would otherwise age every window). None disables the check (replay).
    """

    def __init__(self, *, max_event_bytes: int = 16_384, max_future_skew_ms: int | None = 300_000,
                 extra_chain_ids: frozenset[int] = frozenset(), clock=time.time) -> None:
        self.max_event_bytes = max_event_bytes
        self.max_future_skew_ms = max_future_skew_ms
        self.networks = Networks(extra_chain_ids)
        self.addresses = AddressBook()
        self._addr = self.addresses._cache
        self._places: dict[tuple[str, str, str], tuple[str, str, str, int]] = {}
        self._chain_networks: dict[int, str] = {}
        self._clock = clock

    def decode(self, raw: bytes) -> Observation:
        if len(raw) > self.max_event_bytes:
            raise EventError("too_large", f"{len(raw)} bytes > events.max_event_bytes={self.max_event_bytes}")
        try:
            rec = decode_wire(raw)
        except msgspec.ValidationError as exc:
            raise EventError("bad_schema", str(exc)[:300]) from None
        except msgspec.DecodeError as exc:
            raise EventError("bad_json", str(exc)[:300]) from None
        except UnicodeDecodeError as exc:  # msgspec checks UTF-8 only when it builds a str
            raise EventError("bad_json", f"not UTF-8: {exc}"[:300]) from None
        kind = type(rec)
        if kind is ChainTransfer:
            obs = self._transfer(rec)
        elif kind is ChainProgress:
            obs = self._progress(rec)
        else:
            obs = self._facilitator(rec)
        if obs.amount >= MAX_TRACKED_AMOUNT:
            raise EventError("amount_too_large", f"{obs.amount} base units >= 2^62: larger than any real "
                             "token supply; refused rather than rounded")
        if self.max_future_skew_ms is not None:
            now_ms = int(self._clock() * 1000)
            if obs.ts_ms > now_ms:
                if obs.ts_ms > now_ms + self.max_future_skew_ms:
                    raise EventError("bad_time", f"observedAt is {(obs.ts_ms - now_ms) / 1000:.0f} s in the future "
                                     "(events.max_future_skew_seconds)")
                # within the skew: it happened now. Left ahead, it moved the partition's event time on, and
                # every payment of every agent there fell behind the 1m and 5m windows until the clock caught up
                obs = msgspec.structs.replace(obs, ts_ms=now_ms)
        return obs

    # -- facilitator records -------------------------------------------------------------------
    def _place(self, req) -> tuple[str, str, str, int]:
        """(merchant, asset, network, chain id) of requirements; cached, the same few recur."""
        key = (req.payTo, req.asset, req.network)
        hit = self._places.get(key)
        if hit is None:
            book = self.addresses
            network, chain_id = self.networks.resolve(req.network)
            hit = (book.checksum(req.payTo, "paymentRequirements.payTo"),
                   book.checksum(req.asset, "paymentRequirements.asset"), network, chain_id)
            if len(self._places) >= 100_000:
                self._places.clear()
            self._places[key] = hit
        return hit

    def _facilitator(self, rec: SettleRecord | VerifyRecord) -> Observation:
        pp, req = rec.paymentPayload, rec.paymentRequirements
        version = rec.x402Version
        if pp.x402Version != version:
            raise EventError("bad_version", f"x402Version {version} but paymentPayload says {pp.x402Version}")
        if version == 2:
            required_text, resource = req.amount, (pp.resource.url if pp.resource else req.resource)
        else:
            required_text, resource = req.maxAmountRequired, req.resource
        required = _amount(required_text, "paymentRequirements.amount" if version == 2
                           else "paymentRequirements.maxAmountRequired")
        merchant, asset, network, chain_id = self._place(req)
        auth = pp.payload.permit2Authorization or pp.payload.authorization   # what a facilitator pays from
        dt = rec.observedAt
        ts = _epoch_ms(dt, "observedAt")
        settle = type(rec) is SettleRecord
        resp = rec.settleResponse if settle else rec.verifyResponse
        payer_text = resp.payer or (auth.from_ if auth else None)
        if payer_text is None:
            raise EventError("missing_field", "the response's payer and authorization.from are both missing")
        agent = self._addr.get(payer_text) or self.addresses.checksum(payer_text, "payer")
        nonce = getattr(auth, "nonce", None)   # EIP-3009's (AuthorizationUsed); Permit2 has its own scheme
        if not settle:
            amount = _signed(auth, required)
            return Observation(Kind.VERIFY, rec.id, rec.id, ts, agent, merchant, amount, chain_id, network, asset,
                               "valid" if resp.isValid else "invalid", None, resource, resp.invalidReason,
                               rec.facilitator, None, None, None, nonce, required)
        if resp.success:
            tx = tx_hash(resp.transaction, "settleResponse.transaction")
            if resp.amount is not None:
                amount = _amount(resp.amount, "settleResponse.amount")
            else:
                amount = _signed(auth, required)
        else:
            tx = tx_hash(resp.transaction, "settleResponse.transaction") if resp.transaction else None
            amount = _signed(auth, required)
        return Observation(Kind.SETTLE, rec.id, rec.id, ts, agent, merchant, amount, chain_id, network, asset,
                           "settled" if resp.success else "failed", tx, resource, resp.errorReason,
                           rec.facilitator, None, None, None, nonce, required)

    # -- chain records -------------------------------------------------------------------------
    def _chain_network(self, chain_id: int) -> str:
        network = self._chain_networks.get(chain_id)
        if network is None:
            if chain_id not in self.networks.chain_ids:
                raise EventError("unknown_network", f"chainId {chain_id} is not configured; add it to "
                                 "events.extra_chain_ids")
            network = self._chain_networks[chain_id] = f"eip155:{chain_id}"
        return network

    def _transfer(self, rec: ChainTransfer) -> Observation:
        chain_id = rec.chainId
        network = self._chain_networks.get(chain_id) or self._chain_network(chain_id)
        if not (0 <= rec.logIndex < MAX_INDEX and 0 <= rec.blockNumber < MAX_INDEX):
            _index(rec.logIndex, "logIndex")
            _index(rec.blockNumber, "blockNumber")
        cache, checksum = self._addr, self.addresses.checksum
        sender = cache.get(rec.from_) or checksum(rec.from_, "from")
        authorizer = rec.authorizer
        agent = (cache.get(authorizer) or checksum(authorizer, "authorizer")) if authorizer else sender
        ts_dt = rec.blockTime or rec.observedAt
        block_hash = tx_hash(rec.blockHash, "blockHash")
        return Observation(
            Kind.TRANSFER, rec.id, f"{rec.id}|{rec.status}|{block_hash}", _epoch_ms(ts_dt, "blockTime"),
            agent, cache.get(rec.to) or checksum(rec.to, "to"), _amount(rec.value, "value"), chain_id, network,
            cache.get(rec.token) or checksum(rec.token, "token"), rec.status, tx_hash(rec.txHash, "txHash"),
            None, None, "chain", rec.blockNumber, block_hash, rec.logIndex, rec.nonce)

    def _progress(self, rec: ChainProgress) -> Observation:
        """The bridge's heartbeat: no agent, no merchant, no money; its time is the block's."""
        chain_id = rec.chainId
        network = self._chain_network(chain_id)
        _index(rec.blockNumber, "blockNumber")
        if rec.id != chain_progress_id(chain_id, rec.blockNumber):
            raise EventError("bad_schema", f"id {rec.id[:80]!r} is not <chainId>:<blockNumber> "
                             f"({chain_progress_id(chain_id, rec.blockNumber)})")
        block_hash = tx_hash(rec.blockHash, "blockHash")
        _epoch_ms(rec.observedAt, "observedAt")
        ts = _epoch_ms(rec.blockTime, "blockTime")
        token = self.addresses.checksum(rec.token, "token") if rec.token is not None else ""
        if rec.readFrom is not None:
            _index(rec.readFrom, "readFrom")
            if rec.readFrom > rec.blockNumber:
                raise EventError("bad_schema", f"readFrom {rec.readFrom} is above blockNumber {rec.blockNumber}")
        # not checked against blockTime: a reorg may give later blocks earlier times
        read_from_ms = _epoch_ms(rec.readFromTime, "readFromTime") if rec.readFromTime is not None else None
        return Observation(Kind.PROGRESS, rec.id, f"{rec.id}|{block_hash}", ts, "", "", 0, chain_id, network,
                           token, "progress", None, None, None, "chain", rec.blockNumber, block_hash,
                           read_from_ms=read_from_ms, watches_all=rec.watchesAll)


def utc_now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)
