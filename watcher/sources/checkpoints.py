"""Shard checkpoints on a Kafka topic, together with the input offsets they cover.

A checkpoint of partition p is written as generation g: chunks under keys `<group>/<p>/<g>/<i>`, then a
manifest under `<group>/<p>/manifest` naming g, the chunk count, the byte size, a CRC and the input
offsets ({topic: next offset to read}). A checkpoint counts only once its manifest is written, so a crash
in the middle leaves the previous one in force. After a manifest, the previous generation's chunks get
tombstones, so a compacted topic (cleanup.policy=compact on real Kafka) keeps one checkpoint per shard.

A tombstone (null value) written by hand under `<group>/<p>/manifest` discards partition p's checkpoint:
the next owner starts p over, reading its input from the earliest offset the input topics still hold.
It is the way out when a checkpoint cannot be restored (lost chunks) or no longer fits the configuration
(an added window); the daemon's error names the key and topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from dataclasses import dataclass

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from watcher.errors import CheckpointError, SpendwatchError

log = logging.getLogger(__name__)


class Manifest(msgspec.Struct):
    partition: int
    gen: int
    chunks: int
    size: int
    crc: int
    offsets: dict[str, int]
    written_at: float


@dataclass
class Restored:
    manifest: Manifest
    blob: bytes


class CheckpointStore:
    def __init__(self, producer: AIOKafkaProducer, bootstrap: str, topic: str, group: str,
                 chunk_bytes: int = 900_000) -> None:
        self.producer, self.bootstrap, self.topic, self.group = producer, bootstrap, topic, group
        self.chunk_bytes = chunk_bytes
        self.generation: dict[int, int] = {}
        self._prev_chunks: dict[int, int] = {}
        self._enc = msgspec.msgpack.Encoder()

    def _key(self, partition: int | str, suffix: str) -> bytes:
        return f"{self.group}/{partition}/{suffix}".encode()

    async def write(self, partition: int, blob: bytes, offsets: dict[str, int]) -> Manifest:
        prev = self.generation.get(partition, 0)
        gen = max(prev + 1, int(time.time() * 1000))
        chunks = [blob[i: i + self.chunk_bytes] for i in range(0, len(blob), self.chunk_bytes)] or [b""]
        futs = [await self.producer.send(self.topic, c, key=self._key(partition, f"{gen}/{i}"))
                for i, c in enumerate(chunks)]
        await asyncio.gather(*futs)
        m = Manifest(partition, gen, len(chunks), len(blob), zlib.crc32(blob), dict(offsets), time.time())
        await (await self.producer.send(self.topic, self._enc.encode(m), key=self._key(partition, "manifest")))
        if prev:
            prev_chunks = self._prev_chunks.get(partition, 0)
            for i in range(prev_chunks):
                await self.producer.send(self.topic, None, key=self._key(partition, f"{prev}/{i}"))
        self.generation[partition] = gen
        self._prev_chunks[partition] = len(chunks)
        return m

    def unrestorable(self, partitions: set[int], exc: BaseException) -> CheckpointError:
        """The error that stops the daemon when `partitions` cannot be restored: what, where, the way out."""
        why = str(exc) if isinstance(exc, SpendwatchError) else repr(exc)
        return CheckpointError(
            f"cannot restore the state of input partition(s) {sorted(partitions)} from checkpoint topic "
            f"{self.topic} (group {self.group}): {why}. spendwatch stops rather than run a partition without "
            "its state (its spend would count from zero). To start a partition over instead, replaying its "
            "input from the earliest offset the input topics still hold (exact only if they keep the longest "
            "window plus dedupe.horizon_seconds), write a tombstone (null value) with key "
            f"{self._key('<partition>', 'manifest').decode()} to topic {self.topic}, then start spendwatch again")

    async def read_latest(self, partitions: set[int], timeout_s: float = 60.0) -> dict[int, Restored]:
        """Scan the checkpoint topic once; return the newest complete checkpoint of each asked partition."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    fetch_max_bytes=32 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024)
        await consumer.start()
        manifests: dict[int, Manifest] = {}
        chunks: dict[tuple[int, int, int], bytes] = {}
        prefix = f"{self.group}/"
        dec = msgspec.msgpack.Decoder(Manifest)
        try:
            tps = [TopicPartition(self.topic, p) for p in (consumer.partitions_for_topic(self.topic) or {0})]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            deadline = time.monotonic() + timeout_s
            while True:
                done = True
                for tp in tps:
                    hw = consumer.highwater(tp)
                    if hw is None or await consumer.position(tp) < hw:
                        done = False
                if done:
                    break
                if time.monotonic() > deadline:
                    raise CheckpointError(f"reading checkpoints from {self.topic} took over {timeout_s} s; "
                                          "raise checkpoint.restore_timeout_seconds")
                batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for msgs in batch.values():
                    for msg in msgs:
                        key = (msg.key or b"").decode(errors="replace")
                        if not key.startswith(prefix):
                            continue
                        part, _, rest = key[len(prefix):].partition("/")
                        if not part.isdigit() or int(part) not in partitions:
                            continue
                        p = int(part)
                        if rest == "manifest":
                            if msg.value is None:  # discarded by hand: start the partition over
                                manifests.pop(p, None)
                            else:
                                manifests[p] = dec.decode(msg.value)
                        else:
                            g, _, i = rest.partition("/")
                            if msg.value is None:
                                chunks.pop((p, int(g), int(i)), None)
                            else:
                                chunks[(p, int(g), int(i))] = msg.value
        finally:
            await consumer.stop()
        out: dict[int, Restored] = {}
        damaged: list[str] = []
        for p, m in sorted(manifests.items()):
            parts = [chunks.get((p, m.gen, i)) for i in range(m.chunks)]
            lost = [i for i, c in enumerate(parts) if c is None]
            if lost:
                damaged.append(f"the checkpoint of partition {p} (generation {m.gen}) is missing chunk(s) {lost} "
                               f"of {m.chunks} (keys {self.group}/{p}/{m.gen}/<i>)")
                continue
            blob = b"".join(parts)
            if len(blob) != m.size or zlib.crc32(blob) != m.crc:
                damaged.append(f"the checkpoint of partition {p} (generation {m.gen}) fails its size or CRC "
                               f"check ({len(blob)} bytes read, {m.size} written)")
                continue
            out[p] = Restored(m, blob)
            self.generation[p] = m.gen
            self._prev_chunks[p] = m.chunks
        if damaged:
            raise CheckpointError("; ".join(damaged) + f": records of topic {self.topic} were lost or altered "
                                  "(it must be compacted, cleanup.policy=compact, never trimmed by retention)")
        return out
