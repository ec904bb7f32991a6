"""The proxy judges the payer the facilitator will charge (a stub upstream on loopback, no broker).

The x402 SDK's exact EVM facilitator verifies and settles a payload's `permit2Authorization` whenever the
payload has one (x402.mechanisms.evm.types.is_permit2_payload), whatever else it carries. An agent writes
its own payload: a frozen agent that pays with Permit2 and adds a decoy EIP-3009 `authorization` naming
another wallet must still be refused.
"""

from __future__ import annotations

import json

import httpx
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from tests.tap.conftest import PAYER, ListPublisher, body, serving
from watcher.tap.breakers import Gate, StaticBreakerView
from watcher.tap.metrics import TapMetrics
from watcher.tap.proxy import TapProxy
from watcher.tap.records import payer_of

FROZEN = "0x36b38A5349EE961C604E029Be36faEc12Ed57f47"


def permit2_body_with_decoy() -> dict:
    """A v2 verify body paid with Permit2 from FROZEN, plus an EIP-3009 authorization naming PAYER."""
    b = body(2)
    inner = b["paymentPayload"]["payload"]
    decoy = dict(inner["authorization"])                        # from PAYER, an honest agent
    inner["permit2Authorization"] = {
        "from": FROZEN, "permitted": {"token": b["paymentRequirements"]["asset"], "amount": "10000"},
        "spender": "0x4020615294c913F045dc10f0a5cdEbd86c280001", "nonce": "7", "deadline": "9999999999",
        "witness": {"to": b["paymentRequirements"]["payTo"], "validAfter": "0"}}
    inner["authorization"] = decoy
    return b


def test_the_payer_of_a_permit2_payload_is_the_permit2_signer():
    b = permit2_body_with_decoy()
    assert payer_of(b["paymentPayload"]) == FROZEN
    assert payer_of(body(2)["paymentPayload"]) == PAYER         # plain EIP-3009: unchanged


async def test_a_frozen_permit2_payer_with_a_decoy_authorization_is_refused():
    calls = []

    async def upstream(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"isValid": True, "payer": FROZEN})

    app = web.Application()
    app.router.add_post("/verify", upstream)
    pub = ListPublisher()
    async with serving(app) as url, TapProxy(url, pub, Gate(StaticBreakerView({FROZEN}))) as proxy:
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{proxy.url}/verify", json=permit2_body_with_decoy())
    assert r.status_code == 200
    assert r.json()["isValid"] is False and r.json()["invalidReason"] == "spendwatch_agent_frozen"
    assert r.json()["payer"] == FROZEN and calls == []          # upstream never asked
    (rec,) = pub.records
    assert rec["verifyResponse"]["payer"] == FROZEN


def test_the_sdk_hooks_refuse_it_too(listpub):
    from x402 import x402FacilitatorSync
    from x402.schemas import PaymentAbortedError, parse_payment_payload, parse_payment_requirements

    from tests.tap.conftest import FakeExact
    from watcher.tap.hooks import wire_facilitator

    fac, scheme = x402FacilitatorSync(), FakeExact()
    fac.register(["eip155:8453"], scheme)
    wire_facilitator(fac, listpub, StaticBreakerView({FROZEN}))
    b = permit2_body_with_decoy()
    pp = parse_payment_payload(b["paymentPayload"])
    req = parse_payment_requirements(pp.x402_version, b["paymentRequirements"])
    with pytest.raises(PaymentAbortedError) as exc:
        fac.verify(pp, req)
    assert exc.value.reason == "spendwatch_agent_frozen" and scheme.calls == 0


def payerless_body() -> dict:
    """A v2 body whose authorization names no `from`: the tap cannot tell whose breaker to check."""
    b = body(2)
    del b["paymentPayload"]["payload"]["authorization"]["from"]
    return b


async def _post_to_a_counting_upstream(gate: Gate, call: str, content: bytes):
    calls = []

    async def upstream(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"isValid": True} if call == "verify" else {"success": True})

    app = web.Application()
    app.router.add_post(f"/{call}", upstream)
    pub = ListPublisher()
    async with serving(app) as url, TapProxy(url, pub, gate) as proxy:
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{proxy.url}/{call}", content=content, headers={"Content-Type": "application/json"})
    return r, calls, pub


PAYERLESS = {"no authorization from": json.dumps(payerless_body()).encode(), "not JSON": b"{not json",
             "no paymentPayload": b'{"x402Version": 2, "paymentRequirements": {}}'}


@pytest.mark.parametrize("call", ["verify", "settle"])
@pytest.mark.parametrize("content", PAYERLESS.values(), ids=PAYERLESS.keys())
async def test_fail_closed_refuses_a_payment_whose_payer_cannot_be_read(call, content):
    metrics = TapMetrics(CollectorRegistry())
    gate = Gate(StaticBreakerView({FROZEN}), fail_mode="closed", metrics=metrics)
    r, calls, pub = await _post_to_a_counting_upstream(gate, call, content)
    assert r.status_code == 200 and calls == []                 # upstream never asked
    answer = r.json()
    if call == "verify":
        assert answer["isValid"] is False and answer["invalidReason"] == "spendwatch_payer_unknown"
        assert "cannot tell who pays" in answer["invalidMessage"]
    else:
        assert answer["success"] is False and answer["errorReason"] == "spendwatch_payer_unknown"
    assert "payer" not in answer and pub.records == []          # no wallet to key a record by
    assert metrics.refused.labels(call, "no_payer")._value.get() == 1
    assert metrics.breaker_unknown.labels("closed")._value.get() == 1


@pytest.mark.parametrize("content", PAYERLESS.values(), ids=PAYERLESS.keys())
async def test_fail_open_forwards_a_payment_whose_payer_cannot_be_read_and_counts_it(content):
    metrics = TapMetrics(CollectorRegistry())
    gate = Gate(StaticBreakerView({FROZEN}), fail_mode="open", metrics=metrics)
    r, calls, _ = await _post_to_a_counting_upstream(gate, "verify", content)
    assert r.status_code == 200 and r.json() == {"isValid": True} and calls == ["/verify"]
    assert metrics.breaker_unknown.labels("open")._value.get() == 1
    assert metrics.refused.labels("verify", "no_payer")._value.get() == 0


def test_the_sdk_hooks_fail_closed_on_a_payment_whose_payer_cannot_be_read(listpub):
    from x402 import x402FacilitatorSync
    from x402.schemas import PaymentAbortedError, parse_payment_payload, parse_payment_requirements

    from tests.tap.conftest import FakeExact
    from watcher.tap.hooks import wire_facilitator

    fac, scheme = x402FacilitatorSync(), FakeExact()
    fac.register(["eip155:8453"], scheme)
    metrics = TapMetrics(CollectorRegistry())
    wire_facilitator(fac, listpub, Gate(StaticBreakerView(), fail_mode="closed", metrics=metrics))
    b = payerless_body()
    pp = parse_payment_payload(b["paymentPayload"])
    req = parse_payment_requirements(pp.x402_version, b["paymentRequirements"])
    for call in (fac.verify, fac.settle):
        with pytest.raises(PaymentAbortedError) as exc:
            call(pp, req)
        assert exc.value.reason == "spendwatch_payer_unknown"
    assert scheme.calls == 0 and listpub.records == []
    assert metrics.refused.labels("settle", "no_payer")._value.get() == 1
