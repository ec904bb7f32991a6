"""Decoding and validation of the wire records, with fixtures built from the x402 package's own types."""

from __future__ import annotations

from datetime import datetime

import msgspec
import pytest
from x402.schemas import PaymentPayload, PaymentRequirements, ResourceInfo, SettleResponse, VerifyResponse
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from watcher.errors import EventError
from watcher.events import Decoder, Kind
from watcher.simulate.records import (BASE_USDC, encode, fake_hash, progress_record, settle_record, transfer_record,
                                     verify_record)

PAYER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PAY_TO = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
TX = fake_hash("tx")
T = 1_790_000_000_000


def dec() -> Decoder:
    return Decoder(max_future_skew_ms=None)


def _auth(value: str) -> dict:
    return {"from": PAYER, "to": PAY_TO, "value": value, "validAfter": "0", "validBefore": "9999999999",
            "nonce": "0x" + "ab" * 32}


def test_v2_settle_record_from_sdk_types():
    req = PaymentRequirements(scheme="exact", network="eip155:8453", asset=BASE_USDC, amount="10000",
                              pay_to=PAY_TO, max_timeout_seconds=60, extra={"name": "USD Coin", "version": "2"})
    pp = PaymentPayload(x402_version=2, accepted=req, resource=ResourceInfo(url="https://api.x/v1/q"),
                        payload={"signature": "0x" + "22" * 65, "authorization": _auth("10000")})
    resp = SettleResponse(success=True, payer=PAYER, transaction=TX, network="eip155:8453")
    rec = {"type": "x402.settle", "id": "s-1", "observedAt": "2026-09-21T10:00:00Z", "facilitator": "cdp",
           "x402Version": 2, "paymentPayload": pp.model_dump(by_alias=True, exclude_none=True),
           "paymentRequirements": req.model_dump(by_alias=True, exclude_none=True),
           "settleResponse": resp.model_dump(by_alias=True, exclude_none=True)}
    obs = dec().decode(encode(rec))
    assert obs.kind == Kind.SETTLE and obs.status == "settled" and obs.is_spend
    assert obs.agent == PAYER and obs.merchant == PAY_TO and obs.amount == 10_000
    assert obs.network == "eip155:8453" and obs.chain_id == 8453 and obs.tx == TX
    assert obs.resource == "https://api.x/v1/q" and obs.ts_ms == 1_789_984_800_000
    assert isinstance(obs.amount, int)


def test_v1_verify_record_from_sdk_types_with_failure_reason():
    req = PaymentRequirementsV1(scheme="exact", network="base-sepolia", max_amount_required="2500",
                                resource="https://api.x/v1/data", description="", mime_type="application/json",
                                pay_to=PAY_TO.lower(), max_timeout_seconds=60, asset=BASE_USDC)
    pp = PaymentPayloadV1(x402_version=1, scheme="exact", network="base-sepolia",
                          payload={"signature": "0x" + "22" * 65, "authorization": _auth("2500")})
    resp = VerifyResponse(is_valid=False, invalid_reason="insufficient_funds", payer=PAYER)
    rec = {"type": "x402.verify", "id": "v-1", "observedAt": "2026-09-21T10:00:00+00:00", "facilitator": "f",
           "x402Version": 1, "paymentPayload": pp.model_dump(by_alias=True, exclude_none=True),
           "paymentRequirements": req.model_dump(by_alias=True, exclude_none=True),
           "verifyResponse": resp.model_dump(by_alias=True, exclude_none=True)}
    obs = dec().decode(encode(rec))
    assert obs.kind == Kind.VERIFY and obs.status == "invalid" and obs.reason == "insufficient_funds"
    assert obs.network == "eip155:84532" and obs.merchant == PAY_TO  # lower-case input is checksummed
    assert not obs.is_spend and obs.amount == 2500 and obs.resource == "https://api.x/v1/data"


def test_chain_transfer_attributed_to_authorizer():
    rec = transfer_record(ts_ms=T, payer=PAYER, to=PAY_TO, amount=7, tx=TX, log_index=3, status="confirmed",
                          authorizer=PAYER, nonce="0x" + "cd" * 32)
    obs = dec().decode(encode(rec))
    assert obs.kind == Kind.TRANSFER and obs.agent == PAYER and obs.log_index == 3 and obs.status == "confirmed"
    assert obs.event_id == f"8453:{TX}:3" and obs.dedupe_key != obs.event_id


def _settle(**kw) -> dict:
    base = dict(event_id="e", ts_ms=T, payer=PAYER, pay_to=PAY_TO, amount=5, tx=TX)
    base.update(kw)
    return settle_record(**base)


@pytest.mark.parametrize("mutate, reason", [
    (lambda r: r["settleResponse"].update(payer="0x123"), "bad_address"),
    (lambda r: r["settleResponse"].update(payer=PAYER.replace("C", "c", 1)), "bad_address"),  # bad checksum
    (lambda r: r["settleResponse"].update(transaction="0xdead"), "bad_hash"),
    (lambda r: r["paymentPayload"]["payload"]["authorization"].update(value="-5"), "bad_amount"),
    (lambda r: r["paymentPayload"]["payload"]["authorization"].update(value=str(2**256)), "bad_amount"),
    (lambda r: r["paymentPayload"]["payload"]["authorization"].update(value="1.5"), "bad_amount"),
    (lambda r: r["paymentRequirements"].update(network="solana:mainnet"), "unknown_network"),
    (lambda r: r["paymentRequirements"].update(network="eip155:999999"), "unknown_network"),
    (lambda r: r.update(observedAt="yesterday"), "bad_schema"),
    (lambda r: r.update(observedAt="2026-09-21T10:00:00"), "bad_time"),
    (lambda r: r.update(x402Version=3), "bad_schema"),
    (lambda r: r["paymentPayload"].update(x402Version=1), "bad_version"),
    (lambda r: r["paymentRequirements"].pop("amount"), "missing_field"),
    (lambda r: r.pop("id"), "bad_schema"),
])
def test_bad_records_are_refused_with_a_reason(mutate, reason):
    rec = _settle()
    mutate(rec)
    with pytest.raises(EventError) as err:
        dec().decode(encode(rec))
    assert err.value.reason == reason, err.value


def test_size_limit_and_garbage():
    d = Decoder(max_event_bytes=1000, max_future_skew_ms=None)
    with pytest.raises(EventError, match="too_large"):
        d.decode(encode(_settle()))
    with pytest.raises(EventError, match="bad_json"):
        d.decode(b"{not json")


def test_future_timestamps_are_refused_in_live_mode():
    d = Decoder(max_future_skew_ms=60_000, clock=lambda: T / 1000)
    d.decode(encode(_settle(ts_ms=T + 30_000)))
    with pytest.raises(EventError, match="bad_time"):
        d.decode(encode(_settle(ts_ms=T + 120_000)))


def test_a_record_ahead_of_the_clock_within_the_skew_happened_now():
    """Left 290 s ahead, one such record moved its partition's event time on: every current payment of every
    agent there fell out of the 1m and 5m windows (caps blind) until the clock caught up."""
    from watcher.pipeline import Shard

    d = Decoder(max_future_skew_ms=300_000, clock=lambda: T / 1000)
    assert d.decode(encode(_settle(ts_ms=T + 290_000))).ts_ms == T
    assert d.decode(encode(_settle(ts_ms=T - 5_000))).ts_ms == T - 5_000          # the past is left alone
    sh = Shard()
    sh.apply([d.decode(encode(_settle(ts_ms=T + 290_000, event_id="ahead", payer="0x" + "11" * 20,
                                                tx="0x" + "ab" * 32)))])
    sh.apply([d.decode(encode(_settle(ts_ms=T, event_id="now", payer="0x" + "33" * 20, amount=7_000_000)))])
    sums, counts = sh.agent_totals("0x" + "33" * 20)
    assert list(counts) == [1, 1, 1, 1] and list(sums) == [7_000_000] * 4


def test_times_convert_to_the_exact_millisecond():
    """int(timestamp() * 1000) was 1 ms early for about 1 time in 250,000 (binary fractions), e.g. this one."""
    import random
    from datetime import datetime, timedelta, timezone

    from watcher.events.decode import _epoch_ms

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    odd = datetime(2038, 1, 30, 8, 31, 15, 621_000, tzinfo=timezone.utc)
    assert _epoch_ms(odd, "t") == (odd - epoch) // timedelta(milliseconds=1)
    assert dec().decode(encode(_settle(ts_ms=(odd - epoch) // timedelta(milliseconds=1)))).ts_ms % 1000 == 621
    r = random.Random(7)
    sample = [epoch + timedelta(microseconds=r.randrange(0, 4 * 10**15)) for _ in range(50_000)]
    assert [dt for dt in sample if _epoch_ms(dt, "t") != (dt - epoch) // timedelta(milliseconds=1)] == []


def test_a_permit2_payment_counts_what_permit2_pays():
    """The x402 SDK pays from `permit2Authorization` whenever a payload has one. The decoder read only the
    EIP-3009 `authorization`: a frozen-cap agent paying 5 USDC by Permit2 with a decoy authorization of 1 base
    unit was counted at 1, and stayed under its caps."""
    rec = _settle(amount=5_000_000)
    decoy = dict(rec["paymentPayload"]["payload"]["authorization"], value="1", **{"from": "0x" + "99" * 20})
    rec["paymentPayload"]["payload"] = {"authorization": decoy, "permit2Authorization": {
        "from": PAYER, "permitted": {"token": rec["paymentRequirements"]["asset"], "amount": "5000000"},
        "spender": "0x" + "44" * 20, "nonce": "12345", "deadline": "9999999999",
        "witness": {"to": PAY_TO, "validAfter": "0"}}}
    rec["settleResponse"].pop("amount", None)
    rec["settleResponse"]["payer"] = None
    obs = dec().decode(encode(rec))
    assert (obs.amount, obs.agent, obs.nonce) == (5_000_000, PAYER, None)
    rec["paymentPayload"]["payload"]["permit2Authorization"]["permitted"]["amount"] = "x"
    with pytest.raises(EventError, match="permit2Authorization.permitted.amount"):
        dec().decode(encode(rec))


def test_failed_settle_is_a_signal_not_spend():
    obs = dec().decode(encode(_settle(success=False, error_reason="insufficient_funds")))
    assert obs.status == "failed" and not obs.is_spend and obs.reason == "insufficient_funds"


def test_amounts_are_exact_integers_and_bounded():
    from watcher.events import parse_amount

    assert parse_amount(str(2**256 - 1), "v") == 2**256 - 1
    rec = _settle()
    rec["paymentPayload"]["payload"]["authorization"]["value"] = str(2**62 - 1)
    assert dec().decode(encode(rec)).amount == 2**62 - 1
    rec["paymentPayload"]["payload"]["authorization"]["value"] = str(2**62)
    with pytest.raises(EventError, match="amount_too_large"):
        dec().decode(encode(rec))


def test_verify_record_builder_round_trips():
    obs = dec().decode(encode(verify_record(event_id="v", ts_ms=T, payer=PAYER, pay_to=PAY_TO, amount=9,
                                            version=1)))
    assert obs.kind == Kind.VERIFY and obs.status == "valid"
    assert msgspec.json.decode(encode(verify_record(event_id="v", ts_ms=T, payer=PAYER, pay_to=PAY_TO,
                                                    amount=9)))["x402Version"] == 2


# -- chain.progress: the chain bridge's heartbeat ---------------------------------------------------------------
def _progress(**kw) -> dict:
    base = dict(ts_ms=T, block_number=123)
    base.update(kw)
    return progress_record(**base)


def test_chain_progress_is_an_observation_of_no_agent_and_no_money():
    obs = dec().decode(encode(_progress(block_hash="0x" + "AB" * 32)))
    assert obs.kind == Kind.PROGRESS and obs.status == "progress" and not obs.is_spend
    assert obs.ts_ms == T and obs.chain_id == 8453 and obs.network == "eip155:8453" and obs.block_number == 123
    assert obs.agent == "" and obs.merchant == "" and obs.amount == 0 and obs.tx is None
    assert obs.event_id == "8453:123" and obs.block_hash == "0x" + "ab" * 32


def test_chain_progress_names_its_bridge_token_and_first_block_read_and_older_records_still_decode():
    obs = dec().decode(encode(_progress(token=BASE_USDC.lower(), read_from=(100, T - 46_000))))
    assert obs.asset == BASE_USDC and obs.read_from_ms == T - 46_000          # the token checksummed
    old = dec().decode(encode(_progress(token=None)))                           # a bridge from before them
    assert old.asset == "" and old.read_from_ms is None and old.ts_ms == T and not old.watches_all
    assert dec().decode(encode(_progress(watches_all=True))).watches_all


class OldChainProgress(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="chain.progress"):
    """The record type of the release before tokens, as it was: it forbids no unknown field."""
    id: str
    observedAt: datetime
    chainId: int
    blockNumber: int
    blockHash: str
    blockTime: datetime


def test_an_older_reader_skips_the_new_progress_fields():
    rec = msgspec.json.decode(encode(_progress(read_from=(100, T - 46_000))), type=OldChainProgress)
    assert rec.blockNumber == 123 and rec.chainId == 8453


@pytest.mark.parametrize("mutate, reason, detail", [
    (lambda r: r.update(blockHash="0xdead"), "bad_hash", "blockHash"),
    (lambda r: r.update(blockHash="0x" + "zz" * 32), "bad_hash", "blockHash"),
    (lambda r: r.update(blockNumber=-1, id="8453:-1"), "bad_schema", "non-negative"),
    (lambda r: r.update(id="8453:124"), "bad_schema", "<chainId>:<blockNumber>"),   # the id names another block
    (lambda r: r.update(chainId=999_999, id="999999:123"), "unknown_network", "999999"),
    (lambda r: r.update(blockTime="2026-09-21T10:00:00"), "bad_time", "blockTime"),
    (lambda r: r.update(observedAt="2026-09-21T10:00:00"), "bad_time", "observedAt"),
    (lambda r: r.update(blockTime=None), "bad_schema", "$.blockTime"),     # the time is what the watcher reads
    (lambda r: r.pop("blockHash"), "bad_schema", "blockHash"),
    (lambda r: r.update(blockNumber="123"), "bad_schema", "$.blockNumber"),
    (lambda r: r.update(token="0x1234"), "bad_address", "token"),
    (lambda r: r.update(readFrom=124, readFromTime=r["blockTime"]), "bad_schema", "readFrom 124 is above"),
    (lambda r: r.update(readFrom=-1), "bad_schema", "readFrom"),
    (lambda r: r.update(readFrom=120, readFromTime="2026-09-21T10:00:00"), "bad_time", "readFromTime"),
])
def test_bad_progress_records_are_refused_with_a_reason(mutate, reason, detail):
    rec = _progress()
    mutate(rec)
    with pytest.raises(EventError) as err:
        dec().decode(encode(rec))
    assert err.value.reason == reason and detail in err.value.detail, err.value


def test_progress_from_the_future_is_refused_in_live_mode():
    d = Decoder(max_future_skew_ms=60_000, clock=lambda: T / 1000)
    d.decode(encode(_progress(ts_ms=T + 30_000)))
    with pytest.raises(EventError, match="bad_time"):
        d.decode(encode(_progress(ts_ms=T + 120_000)))


# -- found by tests/unit/test_decode_fuzz.py ------------------------------------------------------------------
@pytest.mark.parametrize("raw", [
    encode(_progress()).replace(b'"chain.progress"', b'"\x80chain.progress"'),
    encode(_progress()).replace(b'"8453:123"', b'"\xed\xa0\x80"'),   # a lone surrogate, as UTF-8 bytes
    encode(_settle()).replace(b'"simulator"', b'"\xff\xfe"'),
])
def test_bytes_that_are_not_utf8_are_bad_json(raw):
    with pytest.raises(EventError) as err:
        dec().decode(raw)
    assert err.value.reason == "bad_json" and "UTF-8" in err.value.detail, err.value


@pytest.mark.parametrize("field, text", [
    ("observedAt", "0001-01-01T00:00:00+14:00"),   # the year 0 in UTC: no date to write a decision with
    ("observedAt", "9999-12-31T10:00:00Z"),        # any deadline after it is past the year 9999
    ("observedAt", "1969-12-31T23:59:59.999Z"),
    ("observedAt", "9000-01-01T00:00:00Z"),
    ("blockTime", "0001-01-01T00:00:00Z"),
    ("blockTime", "9999-12-31T23:59:59-12:00"),
])
def test_times_outside_1970_to_9000_are_bad_time(field, text):
    other = _settle() if field == "observedAt" else transfer_record(ts_ms=T, payer=PAYER, to=PAY_TO, amount=7, tx=TX)
    for rec in (_progress(), other):
        rec[field] = text
        with pytest.raises(EventError) as err:
            dec().decode(encode(rec))
        assert err.value.reason == "bad_time" and field in err.value.detail, (rec["type"], err.value)


def test_times_at_the_ends_of_the_range_are_accepted():
    assert dec().decode(encode(_settle(ts_ms=0))).ts_ms == 0
    rec = _settle()
    rec["observedAt"] = "8999-12-31T23:59:59.999+00:00"
    assert dec().decode(encode(rec)).ts_ms == 221_845_392_000_000 - 1


@pytest.mark.parametrize("field, value", [("logIndex", 2**63), ("blockNumber", 2**64), ("logIndex", -1)])
def test_block_numbers_and_log_indexes_beyond_int64_are_bad_schema(field, value):
    # a checkpoint (msgpack) cannot hold a log index past 2^64: the daemon stopped at every checkpoint
    rec = transfer_record(ts_ms=T, payer=PAYER, to=PAY_TO, amount=7, tx=TX)
    rec[field] = value
    with pytest.raises(EventError) as err:
        dec().decode(encode(rec))
    assert err.value.reason == "bad_schema" and field in err.value.detail, err.value
    rec[field] = 2**63 - 1
    assert dec().decode(encode(rec))


def test_progress_block_number_beyond_int64_is_bad_schema():
    with pytest.raises(EventError) as err:
        dec().decode(encode(_progress(block_number=2**63)))
    assert err.value.reason == "bad_schema" and "blockNumber" in err.value.detail, err.value
