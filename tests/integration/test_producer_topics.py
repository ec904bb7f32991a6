"""aiokafka 0.14 narrows a producer's metadata to the topics it tracks when it first sends to a topic it
had no metadata for; records queued for the others then lose their leader and fail after
request_timeout_ms. The daemon's first freeze stalled it 30 s this way (watcher.breaker is created after
the producer starts). TopicTracker keeps every topic written to in the producer's metadata."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.helpers import make_settings
from watcher.sources.kafka import TopicTracker, ensure_topics, producer

pytestmark = pytest.mark.integration


async def _send_after_a_new_topic(bootstrap: str, unique: str, track: bool) -> list[object]:
    s = make_settings(bootstrap, unique, partitions=2)
    await ensure_topics(s.kafka)
    # queued for 0.5 s (linger), so the new topic's metadata arrives first; fails after 3 s
    p = producer(s.kafka, request_timeout_ms=3000, linger_ms=500)
    await p.start()
    try:
        tracker = TopicTracker(p) if track else (lambda topic: None)
        tracker(s.kafka.dead_letter_topic)
        await (await p.send(s.kafka.dead_letter_topic, b"warm-up", key=b"a"))
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(f"late-{unique}-{track}", 2, 1)])
        finally:
            await admin.close()
        futures = []
        for topic in (s.kafka.decisions_topic, f"late-{unique}-{track}"):
            tracker(topic)
            futures.append(await p.send(topic, b"v", key=b"agent"))
        return await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await p.stop()


async def test_a_new_topic_does_not_strand_records_queued_for_known_ones(kafka_bootstrap, unique):
    results = await _send_after_a_new_topic(kafka_bootstrap, unique, track=True)
    assert not [r for r in results if isinstance(r, BaseException)], results


async def test_without_tracking_aiokafka_strands_them(kafka_bootstrap, unique):
    """The control: the failure TopicTracker prevents still happens without it (if aiokafka fixes this,
    this test says so, and TopicTracker can go)."""
    results = await _send_after_a_new_topic(kafka_bootstrap, unique, track=False)
    assert type(results[0]).__name__ == "NotLeaderForPartitionError", results
