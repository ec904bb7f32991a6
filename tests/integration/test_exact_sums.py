"""10,000 events with ~1% malformed through the real broker: exact per-agent sums, expected dead letters."""

from __future__ import annotations

import time

import pytest
from aiokafka import AIOKafkaConsumer

from tests.integration.helpers import agent_sums, run_until, make_settings
from watcher.daemon import Daemon
from watcher.simulate.fleet import Fleet
from watcher.simulate.publish import publish_records
from watcher.sources.deadletter import decode_dead_letter
from watcher.sources.kafka import ensure_topics

pytestmark = pytest.mark.integration


async def test_ten_thousand_events_exact(kafka_bootstrap, unique):
    s = make_settings(kafka_bootstrap, unique)
    await ensure_topics(s.kafka)
    fleet = Fleet(agents=200, seed=11, malformed_ratio=0.012, duplicate_ratio=0.02, runaway_after_s=30)
    start = int(time.time() * 1000) - 3_600_000
    records = fleet.events(6_000, start, rate_per_s=300)
    assert len(records) >= 10_000
    await publish_records(s.kafka, records)
    daemon = Daemon(s, live_clock=False)
    await run_until(daemon, lambda d: d.counters.consumed >= len(records))
    c = daemon.counters
    # events in = events processed + events dead-lettered
    assert c.consumed == len(records)
    assert c.consumed == c.processed + c.dead_lettered
    assert c.dead_lettered == fleet.truth.malformed > 30
    assert c.duplicates >= fleet.truth.duplicates
    got = agent_sums(daemon)
    truth = {a: (fleet.truth.spend[a], fleet.truth.payments[a]) for a in fleet.truth.spend}
    assert got == truth

    # every dead letter is on the topic with its reason and source offset
    consumer = AIOKafkaConsumer(s.kafka.dead_letter_topic, bootstrap_servers=kafka_bootstrap,
                                auto_offset_reset="earliest", group_id=f"dl-{unique}")
    await consumer.start()
    letters = []
    try:
        deadline = time.monotonic() + 30
        while len(letters) < c.dead_lettered and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                letters.extend(decode_dead_letter(m.value) for m in msgs)
    finally:
        await consumer.stop()
    assert len(letters) == c.dead_lettered
    assert {d.reason for d in letters} <= {"bad_json", "bad_schema"}
    assert all(d.topic == s.kafka.payments_topic and d.offset >= 0 for d in letters)
    assert len({(d.partition, d.offset) for d in letters}) == len(letters)
