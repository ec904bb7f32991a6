"""The proxy judges the payer the facilitator will charge (a stub upstream on loopback, no broker).

The x402 SDK's exact EVM facilitator verifies and settles a payload's `permit2Authorization` whenever the
payload has one (x402.mechanisms.evm.types.is_permit2_payload), whatever else it carries. An agent writes
its own payload: a frozen agent that pays with Permit2 and adds a decoy EIP-3009 `authorization` naming
another wallet must still be refused.
"""

from __future__ import annotations

import httpx
from aiohttp import web

from tests.tap.conftest import PAYER, ListPublisher, body, serving
from watcher.tap.breakers import Gate, StaticBreakerView
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
    import pytest
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
