"""Where records go: Kafka topic x402.chain, keyed by payer wallet (checksum address, utf-8).

`KafkaPublisher` is an async context manager over aiokafka's AIOKafkaProducer with acks="all" and no
idempotence (Tansu refuses it; ordering per key holds because records of one payer go to one partition
and `publish` awaits every acknowledgement before it returns).

`progress` sends one `chain.progress` record to every partition of the topic (named explicitly; the count
comes from the producer's metadata, so partitions added later are found at its next refresh) and awaits
every acknowledgement: called after `publish` returned, it lands after the transfers it vouches for on
each partition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer

from watcher.chain.errors import PublishError
from watcher.errors import ClosedError
from watcher.events.wire import ChainProgress, ChainTransfer, encode_wire

PROGRESS_KEY = b"chain.progress"


def payer_key(rec: ChainTransfer) -> bytes:
    return (rec.authorizer or rec.from_).encode()


class Sink(Protocol):
    async def publish(self, records: Sequence[ChainTransfer]) -> None: ...
    async def progress(self, record: ChainProgress) -> None: ...


class KafkaPublisher:
    def __init__(self, bootstrap: str, topic: str = "x402.chain", *, client_id: str = "spendwatch-chain",
                 linger_ms: int = 2, request_timeout_ms: int = 30_000) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, acks="all",
                                          enable_idempotence=False, linger_ms=linger_ms,
                                          request_timeout_ms=request_timeout_ms, max_batch_size=256 * 1024)
        self._state = "new"
        self.published = 0

    async def __aenter__(self) -> KafkaPublisher:
        if self._state != "new":
            raise ClosedError("a KafkaPublisher can be started once")
        try:
            await self._producer.start()
        except Exception as exc:
            await self._producer.stop()
            raise PublishError(f"cannot reach Kafka at {self._producer.client._bootstrap_servers}: {exc!r}; "
                               "fix: check chain.kafka_bootstrap") from exc
        self._state = "open"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._state == "open":
            self._state = "closed"
            await self._producer.stop()

    async def publish(self, records: Sequence[ChainTransfer]) -> None:
        """Send and wait until Kafka acknowledged every record (in order per payer)."""
        if self._state != "open":
            raise ClosedError(f"publisher is {self._state}")
        if not records:
            return
        try:
            futures = [await self._producer.send(self.topic, value=encode_wire(r), key=payer_key(r))
                       for r in records]
            await asyncio.gather(*futures)
        except Exception as exc:
            raise PublishError(f"Kafka did not acknowledge {len(records)} records on {self.topic}: {exc!r}") from exc
        self.published += len(records)

    async def progress(self, record: ChainProgress) -> None:
        """Send `record` to every partition of the topic and wait until Kafka acknowledged each copy."""
        if self._state != "open":
            raise ClosedError(f"publisher is {self._state}")
        try:
            partitions = sorted(await self._producer.partitions_for(self.topic))
            value = encode_wire(record)
            futures = [await self._producer.send(self.topic, value=value, key=PROGRESS_KEY, partition=p)
                       for p in partitions]
            await asyncio.gather(*futures)
        except Exception as exc:
            raise PublishError(f"Kafka did not acknowledge chain.progress {record.id} on every partition of "
                               f"{self.topic}: {exc!r}") from exc
