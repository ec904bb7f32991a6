"""The real WebhookSender against a loopback aiohttp receiver (no broker): the dead letter after the retry
budget (metric, log, the `dead` record the stage writes and the outbox reader counts as done), the bound of
`webhook.max_concurrency`, and per-agent order while the receiver refuses a freeze whose unfreeze is
already queued. Short back-offs; waits poll for a state, nothing asserts a duration."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from tests.breaker.conftest import SECRET, wallet
from tests.polling import stays, wait_for
from watcher.breaker import BreakerStage, load_breaker_config
from watcher.breaker.config import WebhookSettings
from watcher.breaker.metrics import BreakerMetrics
from watcher.breaker.outbox import DeliveredRecord, PartitionFold, change_record, decode_record
from watcher.breaker.signing import EVENT_HEADER, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, SignatureError, verify
from watcher.breaker.state import Breakers
from watcher.breaker.webhook import Delivery, WebhookSender, webhook_body


@dataclass
class Req:
    key: str
    event: str
    sig_ok: bool
    status: int = 0


@dataclass
class Receiver:
    """Answers 200 unless `fail` says otherwise: `fail[(key)] = n` refuses that webhook's first n attempts
    with 503, `always_fail` refuses everything. While `hold` is set every request waits, unanswered, until
    `release()` lets it go (oldest first)."""

    fail: dict[str, int] = field(default_factory=dict)
    always_fail: bool = False
    reqs: list[Req] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    hold: bool = False
    held: list[asyncio.Event] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(body, request.headers.get(SIGNATURE_HEADER, ""), [SECRET.encode()])
            ok = True
        except SignatureError:
            ok = False
        req = Req(request.headers[IDEMPOTENCY_HEADER], request.headers[EVENT_HEADER], ok)
        self.reqs.append(req)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold:
                go = asyncio.Event()
                self.held.append(go)
                await go.wait()
        finally:
            self.in_flight -= 1
        left = self.fail.get(req.key, 0)
        if self.always_fail or left > 0:
            self.fail[req.key] = left - 1
            req.status = 503
        else:
            req.status = 200
        return web.Response(status=req.status)

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"
        return self

    def release(self, n: int | None = None) -> None:
        """Let the `n` oldest held requests (all if None) be answered."""
        for go in self.held[:n]:
            go.set()
        del self.held[:n]

    async def stop(self) -> None:
        self.hold = False
        self.release()
        if self.runner is not None:
            await self.runner.cleanup()

    def of(self, key: str) -> list[Req]:
        return [r for r in self.reqs if r.key == key]


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


def settings(url: str, **kw) -> WebhookSettings:
    return WebhookSettings(url=url, secrets=[SECRET], retry_initial_seconds=0.01, retry_max_seconds=0.05,
                           timeout_seconds=5, **kw)


def delivery(key: str, agent: str, kind: str = "freeze", seq: int = 0, created_ms: int | None = None) -> Delivery:
    return Delivery(key, 0, agent, kind, b'{"id": "%s"}' % key.encode(),
                    int(time.time() * 1000) if created_ms is None else created_ms, seq)


class Results:
    def __init__(self) -> None:
        self.got: list[tuple[str, str, int, str]] = []

    def __call__(self, d: Delivery, outcome: str, attempts: int, detail: str) -> None:
        self.got.append((d.id, outcome, attempts, detail))

    def of(self, key: str):
        return [g for g in self.got if g[0] == key]


class FakeProducer:
    """What BreakerStage.on_result needs of aiokafka's producer: `send` (a coroutine)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.sent.append((topic, key, value))


async def test_dead_letter_after_the_retry_budget(receiver, caplog):
    """The receiver refuses everything: the webhook is retried, re-signed, with one key, until the budget
    is spent; then it is dead: the metric rises, the log says so, and the stage writes a `dead` record
    that the outbox reader counts as ended."""
    receiver.always_fail = True
    agent = wallet(5)
    # a budget many times what one refused POST takes even on a loaded machine, with back-offs of at most
    # 0.05 s: tens of attempts fit, so a second one is certain, and the test still ends within seconds
    cfg = load_breaker_config(None, webhook={"url": receiver.url, "secrets": [SECRET], "retry_initial_seconds": 0.01,
                                             "retry_max_seconds": 0.05, "retry_budget_seconds": 2.0})
    metrics = BreakerMetrics(CollectorRegistry())
    stage = BreakerStage(cfg, metrics=metrics)
    stage.producer = FakeProducer()
    caplog.set_level(logging.ERROR, logger="watcher.breaker.webhook")
    async with WebhookSender(cfg.webhook, stage.on_result, metrics) as sender:
        now = int(time.time() * 1000)      # the budget runs from the change: make it now, not before the set-up
        e = Breakers().hold(agent, now, "admin:test", "cmd-dead", "test")
        body = webhook_body(e)
        d = Delivery(e.id, 0, agent, e.webhook, body, now, e.breaker.seq)
        stage.outbox[0] = {d.id: d}
        assert sender.submit(d)
        await wait_for(lambda: stage.producer.sent, 30, "the dead record",
                       show=lambda: f"{len(receiver.of(d.id))} attempts refused so far")
    (topic, key, value), = stage.producer.sent
    rec = decode_record(value)
    assert topic == cfg.breaker.topic and key == agent.encode()
    assert isinstance(rec, DeliveredRecord) and (rec.id, rec.outcome, rec.partition) == (d.id, "dead", 0)
    tries = receiver.of(d.id)
    assert rec.attempts == len(tries) >= 2 and all(r.status == 503 and r.sig_ok for r in tries)
    assert metrics.dead_letters._value.get() == 1.0
    assert metrics.deliveries.labels("freeze", "dead")._value.get() == 1.0
    assert stage.undelivered() == 0
    assert any(f"DEAD after {len(tries)} attempts" in r.getMessage() for r in caplog.records)
    fold = PartitionFold()
    fold.add(change_record(0, e, body, now))
    assert set(fold.pending) == {d.id}
    fold.add(rec)
    assert fold.pending == {} and d.id in fold.done


async def test_at_most_max_concurrency_in_flight(receiver):
    """Ten agents' freezes, a limit of 3. The receiver holds every request unanswered: exactly 3 reach it
    and, while they are held, no 4th follows (a sender past its bound sends all ten at once); each one
    answered makes room for exactly one more; all ten are delivered, never more than 3 in flight."""
    receiver.hold = True
    results = Results()

    def seen() -> str:
        return f"{len(receiver.reqs)} requests received, {receiver.in_flight} in flight, {len(results.got)} done"

    async with WebhookSender(settings(receiver.url, max_concurrency=3), results) as sender:
        for i in range(10):
            sender.submit(delivery(f"c-{i}", wallet(100 + i)))
        await wait_for(lambda: len(receiver.reqs) >= 3, 30, "three requests held by the receiver", show=seen)
        await stays(lambda: len(receiver.reqs) == 3, 1.0, "three requests and no more while they are held", show=seen)
        for n in range(4, 11):
            receiver.release(1)
            await wait_for(lambda: len(receiver.reqs) >= n, 30, f"request {n}, once one was answered", show=seen)
            assert len(receiver.reqs) == n and receiver.in_flight == 3, seen()
        receiver.release()
        await wait_for(lambda: len(results.got) == 10, 30, "all ten delivered", show=seen)
    assert receiver.max_in_flight == 3
    assert sorted(g[0] for g in results.got if g[1] == "delivered") == sorted(f"c-{i}" for i in range(10))


async def test_freeze_then_unfreeze_in_order_while_the_freeze_is_refused(receiver):
    """The receiver refuses agent A's freeze (503) until it has refused it three times and agent B's
    freeze got through; A's unfreeze was queued before the first answer. The unfreeze reaches the
    receiver only after the freeze got its 2xx: an unfreeze that overtook the freeze would fail this."""
    a, b = wallet(200), wallet(201)
    freeze, unfreeze, other = delivery("a-freeze", a, seq=1), delivery("a-unfreeze", a, "unfreeze", seq=2), \
        delivery("b-freeze", b, seq=1)
    receiver.fail[freeze.id] = 10**6
    results = Results()
    async with WebhookSender(settings(receiver.url), results) as sender:
        assert sender.submit(freeze) and sender.submit(unfreeze) and sender.submit(other)
        assert not sender.submit(freeze)  # a repeat of a queued id is ignored
        await wait_for(lambda: results.of(other.id) and len(receiver.of(freeze.id)) >= 3, 30,
                       "B delivered while A's freeze is refused")
        assert receiver.of(unfreeze.id) == [] and sender.pending() == 2
        receiver.fail[freeze.id] = 0
        await wait_for(lambda: len(results.got) == 3, 30, "A's freeze and unfreeze delivered")
    assert [g[0] for g in results.got] == [other.id, freeze.id, unfreeze.id]
    assert all(g[1] == "delivered" for g in results.got)
    refused = len(receiver.of(freeze.id)) - 1
    assert refused >= 3 and results.of(freeze.id)[0][2] == refused + 1 and results.of(unfreeze.id)[0][2] == 1
    seen = [(r.key, r.status) for r in receiver.reqs if r.key != other.id]
    assert seen == [(freeze.id, 503)] * refused + [(freeze.id, 200), (unfreeze.id, 200)]
    assert all(r.sig_ok for r in receiver.reqs)


async def test_without_a_url_nothing_is_sent_and_the_outcome_is_disabled():
    results = Results()
    async with WebhookSender(WebhookSettings(), results) as sender:
        sender.submit(delivery("n-1", wallet(300)))
        await wait_for(lambda: results.got, 10, "the outcome")
    assert results.got == [("n-1", "disabled", 0, "no url")]


async def test_a_webhook_queued_after_a_rebalance_is_delivered(receiver):
    """A rebalance (aiokafka revokes every partition, then assigns them again) while agent A's freeze is
    being retried: the sender forgets the partition, the restore submits its outbox again, and a new
    change of A (its unfreeze) is queued behind the freeze in flight. All of them reach the receiver, in
    order; none is left queued where no worker looks."""
    a = wallet(400)
    freeze, unfreeze = delivery("r-freeze", a, seq=1), delivery("r-unfreeze", a, "unfreeze", seq=2)
    later = delivery("r-freeze-2", a, seq=3)
    receiver.fail[freeze.id] = 10**6
    results = Results()
    async with WebhookSender(settings(receiver.url), results) as sender:
        assert sender.submit(freeze) and sender.submit(unfreeze)
        await wait_for(lambda: len(receiver.of(freeze.id)) >= 2, 30, "the freeze refused and retried")
        sender.forget_partition(0)              # revoked ...
        sender.submit(freeze)                   # ... assigned again: the restored outbox is submitted
        sender.submit(unfreeze)
        assert sender.submit(later)             # and a new change of the agent
        receiver.fail[freeze.id] = 0
        await wait_for(lambda: len(results.got) == 3, 30, "the three webhooks delivered",
                       show=lambda: (results.got, sender.pending()))
    assert [g[:2] for g in results.got] == [(freeze.id, "delivered"), (unfreeze.id, "delivered"),
                                             (later.id, "delivered")]
    assert [r.key for r in receiver.reqs if r.status == 200] == [freeze.id, unfreeze.id, later.id]


async def test_a_webhook_older_than_the_budget_still_gets_the_budget(receiver):
    """A webhook kept undelivered for longer than the retry budget (webhook.url unset for a day, or the
    daemon down) is retried for the budget from this start, not dead-lettered after one refused attempt."""
    old = delivery("o-1", wallet(500), created_ms=int(time.time() * 1000) - 86_400_000)
    receiver.fail[old.id] = 2
    results = Results()
    async with WebhookSender(settings(receiver.url, retry_budget_seconds=600), results) as sender:
        sender.submit(old)
        await wait_for(lambda: results.got, 30, "the outcome")
    assert results.got == [("o-1", "delivered", 3, "HTTP 200")]
