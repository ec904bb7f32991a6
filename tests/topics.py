"""Reading a topic from the tests: every record of every partition, up to the high-water marks.

Tansu answers `end_offsets` unreliably, so the end is each partition's high-water mark as fetched.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord


async def read_records(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """Every record of `topic` now (all partitions, from the beginning up to their high-water marks)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    try:
        parts = c.partitions_for_topic(topic)
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        out: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while True:
            batch = await c.getmany(timeout_ms=200, max_records=10_000)
            for msgs in batch.values():
                out += msgs
            behind = [tp for tp in tps if c.highwater(tp) is None or await c.position(tp) < c.highwater(tp)]
            if not behind:
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {topic} took over {timeout_s} s")
    finally:
        await c.stop()


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[bytes]:
    """The values of `read_records` (tombstones left out)."""
    return [m.value for m in await read_records(bootstrap, topic, timeout_s) if m.value is not None]


async def read_at_least(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """`read_records`, repeated until the topic holds at least `n` records."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await read_records(bootstrap, topic, timeout_s)
        if len(got) >= n:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic} holds {len(got)} records after {timeout_s} s, want {n}")
        await asyncio.sleep(0.3)
