"""Shared pieces of the tap tests: plain-value payment bodies (v1 and v2) and a fake SDK scheme."""

from __future__ import annotations

import contextlib

import pytest
from aiohttp import web
from x402.schemas import SettleResponse, VerifyResponse

from watcher.simulate.records import settle_record as sim_settle

PAYER = "0xC763cc03A7642b8AF0B7ae195673a7F61bA74869"
MERCHANT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
TX = "0x" + "ab" * 32


def body(version: int = 2, *, amount: int = 10_000, nonce: str = "0x" + "01" * 32, payer: str = PAYER) -> dict:
    """A facilitator request body {x402Version, paymentPayload, paymentRequirements} in the wire form."""
    rec = sim_settle(event_id="x", ts_ms=0, payer=payer, pay_to=MERCHANT, amount=amount, tx=TX, version=version,
                     nonce=nonce)
    return {"x402Version": version, "paymentPayload": rec["paymentPayload"],
            "paymentRequirements": rec["paymentRequirements"]}


class FakeExact:
    """An 'exact' scheme that answers what it is told (no chain)."""

    scheme = "exact"
    caip_family = "eip155:*"

    def __init__(self) -> None:
        self.valid = True
        self.settle_ok = True
        self.raise_on_settle: Exception | None = None
        self.calls = 0

    def get_extra(self, network):
        return None

    def get_signers(self, network):
        return ["0x70997970C51812dc3A010C7d01b50e0d17dc79C8"]

    def verify(self, payload, requirements, context=None):
        self.calls += 1
        payer = payload.payload["authorization"]["from"]
        if self.valid:
            return VerifyResponse(is_valid=True, payer=payer)
        return VerifyResponse(is_valid=False, invalid_reason="invalid_exact_evm_payload_signature", payer=payer)

    def settle(self, payload, requirements, context=None):
        self.calls += 1
        if self.raise_on_settle is not None:
            raise self.raise_on_settle
        payer = payload.payload["authorization"]["from"]
        if self.settle_ok:
            return SettleResponse(success=True, payer=payer, transaction=TX, network=requirements.network)
        return SettleResponse(success=False, error_reason="transaction_failed", payer=payer, transaction="",
                              network=requirements.network)


class ListPublisher:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def offer(self, record: dict) -> bool:
        self.records.append(record)
        return True


@pytest.fixture
def listpub() -> ListPublisher:
    return ListPublisher()


@contextlib.asynccontextmanager
async def serving(app: web.Application):
    """Serve `app` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()
