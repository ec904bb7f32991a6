"""Publish a Fleet's traffic to Kafka in real time."""

from __future__ import annotations

import asyncio
import logging
import time

from watcher.config import KafkaSettings
from watcher.simulate.fleet import Fleet
from watcher.sources import kafka as kafka_io

log = logging.getLogger("watcher.simulate")


async def publish_records(k: KafkaSettings, records: list[tuple[str, bytes, bytes]], producer=None) -> None:
    """Publish pre-built (topic-kind, key, value) records and wait until the broker has them all."""
    own = producer is None
    if own:
        producer = kafka_io.producer(k)
        await producer.start()
    try:
        topics = {"payments": k.payments_topic, "chain": k.chain_topic}
        futs = [await producer.send(topics[t], v, key=key) for t, key, v in records]
        await asyncio.gather(*futs)
    finally:
        if own:
            await producer.stop()


async def run_simulator(k: KafkaSettings, fleet: Fleet, *, rate_per_s: float, duration_s: float | None,
                        stop: asyncio.Event, tick_s: float = 0.1) -> int:
    """Real-time traffic until `duration_s` passes or `stop` is set. Returns records published."""
    producer = kafka_io.producer(k)
    await producer.start()
    sent = 0
    try:
        start = time.time()
        start_ms = int(start * 1000)
        next_t = start
        while not stop.is_set() and (duration_s is None or time.time() - start < duration_s):
            now_ms = int(next_t * 1000)
            records = fleet.tick(start_ms, now_ms, int(tick_s * 1000), rate_per_s)
            await publish_records(k, records, producer)
            sent += len(records)
            next_t += tick_s
            delay = next_t - time.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        # the chain goes on after the last payment: its transfers still waiting for their block are mined,
        # else a watcher left running reports the last seconds' settles `unsettled` an hour later
        later = fleet.flush()
        await publish_records(k, later, producer)
        sent += len(later)
    finally:
        await producer.stop()
        log.info("simulator published %d records", sent)
    return sent
