"""Fuzzing the decoder and what it feeds: any bytes become an Observation or an EventError with a known reason,
and an accepted Observation goes through the shard, the detector, their checkpoint and the published decisions
without an exception (an exception there stops the daemon, and a restart at the same offset stops it again).

Valid records of every type (settle and verify of x402 v1 and v2, transfer, progress) are mutated: any field
at any depth replaced by another JSON type, an extreme number, an odd timestamp or odd text; fields deleted or
added; the bytes truncated, flipped or cut into. Each accepted record is replayed with the records it joins
(the settle and the transfer of one payment) under a policy that decides on everything, then the clock runs
past every deadline.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher.detect.decision import encode_decision
from watcher.detect.detector import Detector
from watcher.detect.policy import Policy
from watcher.detect.replay import Replay
from watcher.errors import EventError
from watcher.events import Decoder, Kind, Observation
from watcher.events.decode import MAX_TRACKED_AMOUNT, REASONS
from watcher.pipeline import Shard
from watcher.simulate.records import (BASE_USDC, encode, fake_hash, progress_record, settle_record, transfer_record,
                                     verify_record)

PAYER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PAY_TO = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
TX = fake_hash("tx")
T = 1_790_000_000_000
DRAIN_MS = 30 * 3600 * 1000   # past the unsettled hold, the escalation timeout and the dedupe horizon

# every payment escalates (then freezes unanswered), every refused verification and every finding decides
POLICY = Policy.from_text("""
[defaults]
per_payment_max_usdc = 1000
[defaults.caps]
per_minute_usdc = 2
[defaults.escalation]
payment_above_usdc = 0.000001
timeout_seconds = 60
[defaults.findings]
failed_verifications = 1
failed_reasons = ["insufficient_funds"]
[[rate_card]]
merchant = "https://api.example/*"
category = "data"
price_usdc = 0.01
""")

_PAY = dict(ts_ms=T, payer=PAYER, pay_to=PAY_TO, amount=5_000_000)
_SETTLE = settle_record(event_id="s", tx=TX, **_PAY)
_TRANSFER = transfer_record(ts_ms=T, payer=PAYER, to=PAY_TO, amount=5_000_000, tx=TX, status="confirmed",
                            authorizer=PAYER, nonce="0x" + "cd" * 32, log_index=2, block_number=42)
BASES: dict[str, dict] = {
    "settle.v2": _SETTLE,
    "settle.v1": settle_record(event_id="s1", tx=TX, version=1, **_PAY),
    "settle.failed": settle_record(event_id="sf", tx=TX, success=False, error_reason="insufficient_funds", **_PAY),
    "verify.v2": verify_record(event_id="v", valid=False, invalid_reason="insufficient_funds", **_PAY),
    "verify.v1": verify_record(event_id="v1", version=1, **_PAY),
    "transfer": _TRANSFER,
    "transfer.pending": transfer_record(ts_ms=T, payer=PAYER, to=PAY_TO, amount=1, tx=TX),
    "progress": progress_record(ts_ms=T, block_number=42),
}
# what each record is replayed with: the other half of its payment, and a heartbeat
PARTNERS = {name: [encode(_TRANSFER if name.startswith("settle") else _SETTLE),
                   encode(progress_record(ts_ms=T + 1000, block_number=43))] for name in BASES}

EXTREME_INTS = [0, -1, 1, 8453, 31337, 2**31, 2**53 + 1, 2**62 - 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
                -2**63, -2**63 - 1, 2**256 - 1, 2**256, 10**100, -10**100]
ODD_TEXT = ["", " ", "\x00", "\ud800", "\udfff\ud800", "é", "٣", "²", "１２", "\u202e", "🦊", "0", "-0", "+5",
            " 5", "5 ", "1e6", "1.0", "0x10", "0" * 78, "9" * 78, "9" * 79, str(2**62), str(2**256),
            str(2**256 - 1), "0x" + "a" * 40, "0x" + "A" * 40, PAYER.lower(), PAYER.upper().replace("0X", "0x"),
            PAYER.replace("C", "c", 1), BASE_USDC, "0x" + "ab" * 32, "0X" + "ab" * 32, "0x" + "ab" * 33, TX.upper(),
            "eip155:8453", "eip155:", "eip155:-1", "eip155:0008453", "eip155:99999999999999", "eip155:٣",
            "base", "BASE", "solana:mainnet", "https://☃.example/ü?q=\u202e", "https://api.example/" + "a" * 2040,
            "a" * 2049, "a" * 20_000, "8453:42", "8453:042", "x402.settle", "x402.verify", "chain.transfer",
            "chain.progress", "pending", "confirmed", "reverted", "null", "true"]

_EDGES = [datetime(1, 1, 1), datetime(1, 1, 1, 9, 59, 59), datetime(1969, 12, 31, 23, 59, 59, 999_999),
          datetime(1970, 1, 1), datetime(2026, 9, 21, 14, 13, 20), datetime(9999, 12, 31, 10, 0),
          datetime(9999, 12, 31, 23, 59, 59, 999_999)]
_dates = st.sampled_from(_EDGES) | st.datetimes(min_value=datetime(1, 1, 1))
_minutes = st.sampled_from([0, 0, 14 * 60, -12 * 60, 23 * 60 + 59, -23 * 60 - 59]) | st.integers(-1439, 1439)
_fractions = st.sampled_from(["", ".", ".5", ".123", ".123456", ".1234567", ".123456789123456789"])


@st.composite
def rfc3339_times(draw) -> str:
    """Valid RFC 3339 times from the year 1 to 9999, with any offset (+14:00, -23:59, ...), any fraction."""
    dt, minutes = draw(_dates), draw(_minutes)
    digits = draw(st.sampled_from([0, 3, 6, 9, 18]))
    frac = "." + (f"{dt.microsecond:06d}" + "123456789123")[:digits] if digits else ""
    sign = "-" if minutes < 0 else "+"
    offset = ("Z" if draw(st.booleans()) else "+00:00") if minutes == 0 else \
        f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}{frac}{offset}"


@st.composite
def odd_times(draw) -> str:
    """Nearly RFC 3339: the year 0 or 10000, leap seconds, 24:00, day 32, no offset, odd separators."""
    year = draw(st.sampled_from([0, 1, 1969, 2026, 9999, 10000]))
    month = draw(st.sampled_from([1, 2, 12, 0, 13]))
    day = draw(st.sampled_from([1, 28, 29, 30, 31, 0, 32]))
    hms = draw(st.sampled_from([(0, 0, 0), (23, 59, 59), (23, 59, 60), (24, 0, 0), (12, 30, 61)]))
    sep = draw(st.sampled_from(["T", "t", " ", "_"]))
    offset = draw(st.sampled_from(["Z", "z", "-00:00", "+24:00", "", "+0530", "+05", " Z", "+05:30:15"]))
    return f"{year:04d}-{month:02d}-{day:02d}{sep}{hms[0]:02d}:{hms[1]:02d}:{hms[2]:02d}{draw(_fractions)}{offset}"


TIMES = st.one_of(rfc3339_times(), rfc3339_times(), odd_times())

_scalars = (st.none() | st.booleans() | st.sampled_from(EXTREME_INTS) | st.integers()
            | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(ODD_TEXT)
            | st.text(max_size=20) | TIMES)
VALUES = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=3)
                      | st.dictionaries(st.sampled_from(["", "type", "id", "from", "x", "🦊"]), kids, max_size=3),
                      max_leaves=4)


def _like(old) -> st.SearchStrategy:
    """Values near the kind already there (they pass the schema and reach the checks and the stages)."""
    if isinstance(old, bool) or old is None:
        return VALUES
    if isinstance(old, int):
        return st.sampled_from(EXTREME_INTS) | st.integers()
    if isinstance(old, str):
        return st.sampled_from(ODD_TEXT) | TIMES | st.text(max_size=20)
    return VALUES


def _paths(node, at=()) -> list[tuple]:
    """Every position in a JSON tree, the root included."""
    out = [at]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, at + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, at + (i,))
    return out


def _mutate(data, rec):
    """Replace, delete or add one field somewhere in `rec`; returns the (possibly new) root."""
    path = data.draw(st.sampled_from(_paths(rec)), label="path")
    op = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]), label="op")
    if not path:
        return data.draw(VALUES, label="root") if op == "replace" else rec
    parent = rec
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if op == "replace":
        parent[key] = data.draw(st.one_of(_like(parent[key]), VALUES), label="value")
    elif op == "delete":
        del parent[key]
    else:  # an unknown field in the object there, or beside the value there
        target = parent[key] if isinstance(parent[key], dict) else parent
        if isinstance(target, dict):
            name = data.draw(st.sampled_from(["extra", "from_", "type", "x402Version", "🦊"]), label="new field")
            target[name] = data.draw(VALUES, label="new value")
    return rec


def _to_bytes(data, rec) -> bytes:
    """JSON text as a producer might write it; lone surrogates become escapes or invalid UTF-8."""
    text = json.dumps(rec, ensure_ascii=data.draw(st.booleans(), label="ascii"))
    return text.encode("utf-8", "surrogatepass")


def _mangle(data, raw: bytes) -> bytes:
    """Cut, flip or insert bytes."""
    op = data.draw(st.sampled_from(["truncate", "flip", "insert"]), label="byte op")
    i = data.draw(st.integers(0, len(raw)), label="at")
    if op == "truncate":
        return raw[:i]
    if op == "flip" and i < len(raw):
        return raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1:]
    return raw[:i] + data.draw(st.binary(min_size=1, max_size=8)) + raw[i:]


def decoded_or_refused(raw: bytes) -> Observation | None:
    """The decoder's contract: an Observation, or an EventError with a documented reason."""
    try:
        obs = Decoder(max_future_skew_ms=None).decode(raw)
    except EventError as exc:
        assert exc.reason in REASONS, exc
        return None
    assert isinstance(obs, Observation)
    assert type(obs.amount) is int and 0 <= obs.amount < MAX_TRACKED_AMOUNT
    assert obs.kind in set(Kind) and type(obs.ts_ms) is int
    return obs


def through_the_pipeline(lines: list[bytes]) -> None:
    """Shard, detector, join deadlines and escalation timeouts, decisions as published, and a checkpoint
    written and read back, as the daemon does them."""
    rp = Replay(POLICY, strict=True)
    for d in rp.run(lines, drain_ms=DRAIN_MS):
        encode_decision(d)
    blob = msgspec.msgpack.encode({"shard": rp.shard.snapshot(), "detector": rp.detector.snapshot()})
    snap = msgspec.msgpack.decode(blob)
    Shard.restore(snap["shard"])
    Detector.restore(snap["detector"], POLICY)


FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.data())
def test_a_mutated_record_is_an_observation_or_a_reasoned_refusal_and_never_crashes_downstream(data):
    name = data.draw(st.sampled_from(sorted(BASES)), label="record")
    rec = copy.deepcopy(BASES[name])
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        rec = _mutate(data, rec)
    raw = _to_bytes(data, rec)
    if decoded_or_refused(raw) is not None:
        through_the_pipeline([raw, *PARTNERS[name]])


@FUZZ
@given(st.data())
def test_mangled_bytes_are_an_observation_or_a_reasoned_refusal(data):
    name = data.draw(st.sampled_from(sorted(BASES)), label="record")
    raw = encode(BASES[name])
    for _ in range(data.draw(st.integers(1, 3), label="manglings")):
        raw = _mangle(data, raw)
    if decoded_or_refused(raw) is not None:
        through_the_pipeline([raw, *PARTNERS[name]])


@FUZZ
@given(name=st.sampled_from(sorted(BASES)), field=st.sampled_from(["observedAt", "blockTime"]), ts=TIMES)
def test_odd_times_are_an_observation_or_a_reasoned_refusal_and_never_crash_downstream(name, field, ts):
    rec = copy.deepcopy(BASES[name])
    rec[field] = ts
    raw = encode(rec)
    if decoded_or_refused(raw) is not None:
        through_the_pipeline([raw, *PARTNERS[name]])


@FUZZ
@given(block=st.sampled_from(EXTREME_INTS), log_index=st.sampled_from(EXTREME_INTS),
       amount=st.sampled_from([0, 1, MAX_TRACKED_AMOUNT - 1, MAX_TRACKED_AMOUNT, 2**256 - 1]),
       status=st.sampled_from(["pending", "confirmed", "reverted"]), n=st.integers(1, 4))
def test_transfers_at_the_limits_never_crash_downstream(block, log_index, amount, status, n):
    """Several transfers of one payment (distinct log indexes) at the largest tracked amount, plus its settle."""
    lines = [encode(transfer_record(ts_ms=T, payer=PAYER, to=PAY_TO, amount=amount, tx=TX, status=status,
                                    block_number=block, log_index=log_index - i)) for i in range(n)]
    accepted = [raw for raw in lines if decoded_or_refused(raw) is not None]
    if accepted:
        through_the_pipeline([*accepted, encode(settle_record(event_id="s", tx=TX, **{**_PAY, "amount": 1}))])
