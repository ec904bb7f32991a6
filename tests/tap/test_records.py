"""Record building and ids, with plain values; every record must pass the watcher's own decoder."""

from __future__ import annotations

import msgspec
import pytest

from tests.tap.conftest import MERCHANT, PAYER, TX, body
from watcher.events import Decoder
from watcher.events.observation import Kind
from watcher.tap.records import encode, key_of, payer_of, record_id, settle_record, verify_record

DEC = Decoder(max_future_skew_ms=None)


@pytest.mark.parametrize("version", [1, 2])
def test_settle_record_decodes_and_keeps_the_request_unchanged(version):
    b = body(version)
    resp = {"success": True, "payer": PAYER, "transaction": TX, "network": b["paymentRequirements"]["network"],
            "amount": None}
    rec = settle_record(b["paymentPayload"], b["paymentRequirements"], resp, facilitator="t",
                        declared_version=version)
    assert rec["paymentPayload"] is b["paymentPayload"] and rec["paymentRequirements"] is b["paymentRequirements"]
    assert "amount" not in rec["settleResponse"]            # exclude_none
    assert rec["x402Version"] == version and rec["observedAt"].endswith("Z")
    obs = DEC.decode(encode(rec))
    assert obs.kind == Kind.SETTLE and obs.agent == PAYER and obs.merchant == MERCHANT
    assert obs.amount == 10_000 and obs.tx == TX and obs.status == "settled" and obs.source == "t"
    assert key_of(rec) == PAYER.encode()


@pytest.mark.parametrize("version", [1, 2])
def test_verify_record_decodes(version):
    b = body(version)
    rec = verify_record(b["paymentPayload"], b["paymentRequirements"],
                        {"isValid": False, "invalidReason": "spendwatch_agent_frozen"}, facilitator="t")
    obs = DEC.decode(encode(rec))
    assert obs.kind == Kind.VERIFY and obs.status == "invalid" and obs.reason == "spendwatch_agent_frozen"
    assert obs.agent == PAYER and rec["verifyResponse"]["payer"] == PAYER


def test_failed_settle_without_transaction_decodes():
    b = body()
    rec = settle_record(b["paymentPayload"], b["paymentRequirements"],
                        {"success": False, "errorReason": "x" * 500}, facilitator="t")
    assert len(rec["settleResponse"]["errorReason"]) == 200
    obs = DEC.decode(encode(rec))
    assert obs.status == "failed" and obs.tx is None


def test_ids_are_stable_and_distinct():
    a, b = body(nonce="0x" + "01" * 32), body(nonce="0x" + "02" * 32)
    ida = record_id("x402.settle", True, a["paymentPayload"], a["paymentRequirements"])
    again = record_id("x402.settle", True, body(nonce="0x" + "01" * 32)["paymentPayload"], a["paymentRequirements"])
    assert ida == again                                                           # same payment, same id
    assert ida != record_id("x402.settle", True, b["paymentPayload"], b["paymentRequirements"])   # other nonce
    assert ida != record_id("x402.settle", False, a["paymentPayload"], a["paymentRequirements"])  # other outcome
    assert ida != record_id("x402.verify", True, a["paymentPayload"], a["paymentRequirements"])   # other kind
    # the same payment seen by two taps (SDK hook and proxy) with different names: same id
    r1 = settle_record(a["paymentPayload"], a["paymentRequirements"], {"success": True, "transaction": TX},
                       facilitator="hook")
    r2 = settle_record(a["paymentPayload"], a["paymentRequirements"], {"success": True, "transaction": TX},
                       facilitator="proxy")
    assert r1["id"] == r2["id"] == ida


def test_id_without_nonce_uses_the_signature_or_the_payload():
    b = body()
    pp = msgspec.json.decode(msgspec.json.encode(b["paymentPayload"]))
    del pp["payload"]["authorization"]["nonce"]
    i1 = record_id("x402.settle", True, pp, b["paymentRequirements"])
    pp["payload"]["signature"] = "0x" + "22" * 65
    assert record_id("x402.settle", True, pp, b["paymentRequirements"]) != i1


def test_payer_is_checksummed():
    b = body(payer=PAYER.lower())
    assert payer_of(b["paymentPayload"]) == PAYER
    assert payer_of(b["paymentPayload"], {"payer": PAYER.lower()}) == PAYER
