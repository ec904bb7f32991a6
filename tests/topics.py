"""Reading a topic from the tests: every record of every partition, up to the high-water marks
(`watcher.sources.kafka.read_to_end`), strictly: a read that does not reach the end fails the test."""

from __future__ import annotations

import asyncio
import time

from aiokafka.structs import ConsumerRecord

from watcher.sources.kafka import read_to_end


async def read_records(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """Every record of `topic` now (all partitions, from the beginning up to their high-water marks)."""
    records, complete = await read_to_end(bootstrap, topic, timeout_s=timeout_s, client_id="spendwatch-tests")
    if not complete:
        raise AssertionError(f"reading {topic} took over {timeout_s} s")
    return records


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
