"""Breaker views: the watcher.breaker topic (records made by the breaker's own code) and the admin API."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from tests.polling import wait_for
from tests.tap.conftest import PAYER, serving
from watcher.breaker.outbox import change_record, encode_record, ensure_topic
from watcher.breaker.state import Breakers
from watcher.broker import TansuBroker
from watcher.tap.breakers import AdminBreakerView, Gate, TopicBreakerView
from watcher.tap.metrics import TapMetrics

OTHER = "0x36b38A5349EE961C604E029Be36faEc12Ed57f47"


class _Decision:
    def __init__(self, id, agent, kind="freeze", at_ms=1000, reason="spend cap"):
        self.id, self.agent, self.kind, self.at_ms, self.reason = id, agent, kind, at_ms, reason


@pytest.mark.integration
async def test_topic_view_follows_the_breaker_log(kafka_bootstrap, unique):
    topic = f"brk-{unique}"
    br = Breakers()
    await ensure_topic(kafka_bootstrap, topic, 2)
    prod = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await prod.start()

    async def send(effect):
        await prod.send_and_wait(topic, encode_record(change_record(0, effect, None, effect.at_ms)),
                                 key=effect.agent.encode())

    try:
        (e,) = br.on_decision(_Decision("d1", PAYER))          # opened, before the view starts
        await send(e)
        await prod.send_and_wait(topic, b"not json", key=b"x")
        async with TopicBreakerView(kafka_bootstrap, topic) as view:
            await asyncio.wait_for(view.caught_up.wait(), 20)
            assert view.is_blocked(PAYER) is True and view.state(PAYER) == "open"
            assert view.is_blocked(PAYER.lower()) is True
            assert view.is_blocked(OTHER) is False and view.bad == 1
            e2 = br.hold(OTHER, 2000, "admin:ops", "cmd-1", "investigating")
            await send(e2)
            await wait_for(lambda: view.state(OTHER) == "held", 30, "the view to show the hold",
                           show=lambda: view.states)
            e3 = br.release(PAYER, 3000, "admin:ops", "cmd-2", "ok")   # open -> half_open: may pay again
            await send(e3)
            await wait_for(lambda: view.is_blocked(PAYER) is False, 30, "the view to show the release",
                           show=lambda: view.states)
            assert view.state(PAYER) == "half_open"
    finally:
        await prod.stop()


@pytest.mark.integration
async def test_topic_view_goes_stale_when_the_broker_is_gone(unique):
    """A fetch from an unreachable broker returns nothing rather than failing: the view must still go stale,
    the gauge say so, fail-closed refuse, and leaving the view must not raise."""
    topic = f"brk-{unique}"
    registry = CollectorRegistry()
    async with TansuBroker() as broker:        # this test's own broker: it is stopped half-way
        await ensure_topic(broker.bootstrap, topic, 1)
        prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await prod.start()
        try:
            (e,) = Breakers().on_decision(_Decision("d1", PAYER))
            await prod.send_and_wait(topic, encode_record(change_record(0, e, None, e.at_ms)), key=PAYER.encode())
        finally:
            await prod.stop()
        view = TopicBreakerView(broker.bootstrap, topic, stale_after_seconds=3)
        gate = Gate(view, fail_mode="closed", metrics=TapMetrics(registry))

        def stale_gauge():
            return registry.get_sample_value("spendwatch_tap_breaker_view_stale")

        async with view:
            await asyncio.wait_for(view.caught_up.wait(), 30)
            await wait_for(view.fresh, 30, "the view to be fresh")
            assert gate.check(PAYER).state == "open" and gate.check(OTHER) is None and stale_gauge() == 0
            await asyncio.get_running_loop().run_in_executor(None, broker.stop)
            await wait_for(lambda: not view.fresh(), 60, "the view to go stale")  # generous: a slow machine
            assert view.probe_failures >= 1 and stale_gauge() == 1
            assert view.state(PAYER) is None and view.is_blocked(OTHER) is None
            for payer in (PAYER, OTHER):                     # fail closed: refused as unknown, frozen or not
                refusal = gate.check(payer)
                assert refusal is not None and refusal.state == "unknown"
                assert refusal.reason == "spendwatch_breaker_unavailable"
        assert view._consumer is None                        # left without raising, the consumer closed


async def test_topic_view_is_unknown_until_caught_up():
    view = TopicBreakerView("127.0.0.1:1", "nothing")
    assert view.is_blocked(PAYER) is None


@contextlib.asynccontextmanager
async def admin_view(agents):
    """An AdminBreakerView of a stub admin API whose GET /v1/agents is `agents`, after its first poll."""
    app = web.Application()
    app.router.add_get("/v1/agents", agents)
    async with serving(app) as url, AdminBreakerView(url, "tok", refresh_seconds=0.1) as view:
        await asyncio.wait_for(view.ready.wait(), 10)
        yield view


async def test_admin_view_polls_open_and_held_agents():
    seen = []

    async def agents(request):
        seen.append(request.headers.get("Authorization"))
        st = request.query["state"]
        rows = {"open": [{"agent": PAYER.lower(), "breaker": {"state": "open"}}],
                "held": [{"agent": OTHER, "breaker": {"state": "held"}}]}[st]
        return web.json_response({"agents": rows})

    async with admin_view(agents) as view:
        assert view.state(PAYER) == "open" and view.state(OTHER) == "held"
        assert view.is_blocked("0x" + "11" * 20) is False
    assert seen[0] == "Bearer tok"
    stale = AdminBreakerView("http://127.0.0.1:1", "tok")
    assert stale.is_blocked(PAYER) is None
    await stale._client.aclose()


async def test_admin_view_with_a_full_page_counts_unlisted_agents_as_unknown():
    """More open agents than the admin API lists in one answer: an agent not listed may be open too, so
    it is unknown (the fail mode decides), not closed (let through)."""
    listed = ["0x" + f"{i:040x}" for i in range(1, 1001)]           # the API answers at most 1000

    async def agents(request):
        rows = [{"agent": a, "breaker": {"state": "open"}} for a in listed] if request.query["state"] == "open" else []
        return web.json_response({"agents": rows})

    async with admin_view(agents) as view:
        assert view.state(listed[0]) == "open" and view.state(OTHER) is None
        gate = Gate(view, fail_mode="closed", metrics=TapMetrics(CollectorRegistry()))
        assert gate.check(OTHER).state == "unknown" and gate.check(listed[-1]).state == "open"
