"""Fixtures for breaker tests: a loopback HTTP recorder standing in for the wallet service, Slack and
PagerDuty; a small detection stage over the real Detector; helpers to publish payments."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import msgspec
import pytest
from aiohttp import web

from watcher.breaker.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, SignatureError, verify
from watcher.detect import Detector, Policy

SECRET = "test-secret-0123456789abcdef"
TOKEN = "test-admin-token-0123456789"
U = 1_000_000
POLICY = """
[defaults]
per_payment_max_usdc = 0
[defaults.caps]
per_minute_usdc = 5
per_hour_usdc = 0
per_day_usdc = 0
[defaults.escalation]
payment_above_usdc = 2
window_above_usdc = 0
timeout_seconds = 4
[defaults.anomaly]
enabled = false
fleet = false
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Hit:
    path: str
    key: str | None
    signature: str | None
    body: bytes
    at: float
    sig_ok: bool | None = None
    status: int = 200          # what the recorder answered

    def json(self):
        return msgspec.json.decode(self.body)


@dataclass
class Recorder:
    """An aiohttp server on 127.0.0.1 recording every request. Webhook requests (path /hook) are verified
    like a real receiver: a bad or stale signature gets 401. `status` forces an answer (e.g. 503);
    `refuse` holds (wallet, type) pairs whose webhooks get 503 while they are in it."""

    port: int = field(default_factory=free_port)
    secrets: list[bytes] = field(default_factory=lambda: [SECRET.encode()])
    hits: list[Hit] = field(default_factory=list)
    status: int | None = None
    refuse: set[tuple[str, str]] = field(default_factory=set)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        hit = Hit(request.path, request.headers.get(IDEMPOTENCY_HEADER), request.headers.get(SIGNATURE_HEADER),
                  body, time.time())
        if request.path == "/hook":
            try:
                verify(body, hit.signature or "", self.secrets)
                hit.sig_ok = True
            except SignatureError:
                hit.sig_ok = False
        self.hits.append(hit)
        if self.status is not None:
            hit.status = self.status
        elif hit.sig_ok is False:
            hit.status = 401
        elif request.path == "/hook" and self.refuse and (hit.json()["wallet"], hit.json()["type"]) in self.refuse:
            hit.status = 503
        if hit.status != 200:
            return web.Response(status=hit.status, text="refused")
        return web.json_response({"ok": True})

    async def start(self) -> "Recorder":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def at(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]


@pytest.fixture
async def recorder():
    r = Recorder()
    yield r
    await r.stop()


class DetectStage:
    """A minimal detection stage over the real Detector (one per partition), with the control surface
    BreakerStage uses. Stands in for the lead's DetectStage in these tests."""

    def __init__(self, policy_text: str = POLICY) -> None:
        self.policy = Policy.from_text(policy_text)
        self.detectors: dict[int, Detector] = {}

    def on_batch(self, ctx) -> None:
        det = self.detectors.setdefault(ctx.partition, Detector(self.policy))
        if ctx.outcome.deltas or ctx.outcome.signals or ctx.outcome.findings:
            ctx.decisions.extend(det.on_batch(ctx.outcome, ctx.shard, ctx.now_ms, ctx.observations))
        ctx.decisions.extend(det.tick(ctx.now_ms))

    def snapshot(self, p):
        d = self.detectors.get(p)
        return d.snapshot() if d else None

    def restore(self, p, data):
        self.detectors[p] = Detector.restore(data, self.policy) if data else Detector(self.policy)

    def drop(self, p):
        self.detectors.pop(p, None)

    def release(self, p, agent):
        return self.detectors[p].release(agent)

    def approve(self, p, agent, only_pending=False):
        return self.detectors[p].approve(agent, only_pending=only_pending)

    def is_frozen(self, p, agent):
        return self.detectors[p].is_frozen(agent)


def wallet(i: int) -> str:
    from eth_utils import to_checksum_address
    return to_checksum_address("0x" + f"{i:040x}")


MERCHANT = wallet(0xBEEF)


def payments(agent: str, n: int, amount: int, tag: str) -> list[tuple[str, bytes, bytes]]:
    from watcher.simulate.records import encode, fake_hash, settle_record
    now = int(time.time() * 1000)
    return [("payments", agent.encode(), encode(settle_record(
        event_id=f"{tag}-{i}", ts_ms=now + i, payer=agent, pay_to=MERCHANT, amount=amount,
        tx=fake_hash(tag, i)))) for i in range(n)]

