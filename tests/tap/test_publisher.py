"""TapPublisher: bounded buffer and counted drops when Kafka is unreachable; delivery to the real broker."""

from __future__ import annotations

import asyncio
import threading

import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from tests.tap.conftest import PAYER, TX, body
from watcher.chain.devnet import free_port
from watcher.events import Decoder
from watcher.tap.metrics import TapMetrics
from watcher.tap.publisher import TapPublisher
from watcher.tap.records import settle_record

DEC = Decoder(max_future_skew_ms=None)


def rec(i: int) -> dict:
    b = body(nonce="0x" + f"{i:064x}")
    return settle_record(b["paymentPayload"], b["paymentRequirements"], {"success": True, "transaction": TX},
                         facilitator="t")


async def test_unreachable_kafka_buffers_then_drops_and_counts():
    metrics = TapMetrics(CollectorRegistry())
    pub = TapPublisher(f"127.0.0.1:{free_port()}", "x402.payments", max_buffer=5, metrics=metrics,
                       retry_min_seconds=0.05, retry_max_seconds=0.1, flush_timeout_seconds=0.5,
                       request_timeout_ms=1000)
    assert pub.offer(rec(0)) is False                      # not started: counted, not raised
    async with pub:
        results = [pub.offer(rec(i)) for i in range(8)]
        # from another thread too (the sync SDK facilitator runs its hooks in worker threads)
        t = threading.Thread(target=lambda: results.append(pub.offer(rec(99))))
        t.start()
        t.join()
        await asyncio.sleep(0.3)
        assert results[:5] == [True] * 5 and results[5:] == [False] * 4
        assert pub.buffered == 5 and not pub.connected
    assert pub.dropped == 1 + 4 + 5                        # 5 still buffered at close are dropped too
    assert metrics.records.labels("x402.settle", "dropped")._value.get() == 10
    assert pub.buffered == 0


@pytest.mark.integration
async def test_records_reach_the_broker_keyed_by_payer(kafka_bootstrap, unique):
    topic = f"pay-{unique}"
    async with TapPublisher(kafka_bootstrap, topic) as pub:
        for i in range(20):
            assert pub.offer(rec(i))
        t = threading.Thread(target=lambda: pub.offer(rec(20)))
        t.start()
        t.join()
        for _ in range(200):
            if pub.published == 21:
                break
            await asyncio.sleep(0.05)
    assert pub.published == 21 and pub.dropped == 0
    c = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False)
    await c.start()
    try:
        got = []
        for _ in range(100):
            for msgs in (await c.getmany(timeout_ms=200)).values():
                got.extend(msgs)
            if len(got) >= 21:
                break
    finally:
        await c.stop()
    assert len(got) == 21
    assert {m.key for m in got} == {PAYER.encode()}
    assert len({DEC.decode(m.value).event_id for m in got}) == 21
