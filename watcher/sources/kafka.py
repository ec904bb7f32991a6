"""aiokafka clients built from settings, and topic creation.

Producers use acks="all" without idempotence (the Tansu broker refuses InitProducerId; on real Kafka the
effects downstream are idempotent by record id anyway).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from watcher.config import KafkaSettings
from watcher.errors import BrokerError
from watcher.pipeline.eventtime import records_left

log = logging.getLogger(__name__)


def producer(k: KafkaSettings, **extra) -> AIOKafkaProducer:
    opts = dict(bootstrap_servers=k.bootstrap, client_id=f"{k.client_id}-producer", acks="all",
                enable_idempotence=False, linger_ms=5, max_batch_size=512 * 1024,
                max_request_size=2 * 1024 * 1024, request_timeout_ms=30_000)
    opts.update(extra)
    return AIOKafkaProducer(**opts)


class TopicTracker:
    """Tracks every topic a producer writes to in its metadata, before the first record goes out.

    aiokafka (0.14) does not track a topic whose metadata it already has from the startup fetch; the first
    send to a topic it lacks then narrows the producer's metadata to the tracked topics only, and records
    already queued for the others lose their leader and wait out request_timeout_ms (30 s) before failing
    with NotLeaderForPartitionError. That stalled the daemon right after its first freeze (watcher.breaker
    is created after the producer starts)."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._client = producer.client
        self._tracked: set[str] = set()

    def __call__(self, topic: str) -> None:
        if topic not in self._tracked:
            self._tracked.add(topic)
            self._client.add_topic(topic)


def group_consumer(k: KafkaSettings, **extra) -> AIOKafkaConsumer:
    """Consumer in the daemon's group. RangePartitionAssignor gives partition p of both input topics to
    the same member, so one shard owns one wallet range across facilitator and chain records."""
    opts = dict(bootstrap_servers=k.bootstrap, group_id=k.group, client_id=f"{k.client_id}-consumer",
                enable_auto_commit=False, auto_offset_reset="earliest",
                partition_assignment_strategy=(RangePartitionAssignor,),
                session_timeout_ms=k.session_timeout_ms, heartbeat_interval_ms=k.heartbeat_interval_ms,
                max_poll_records=k.max_batch, fetch_max_bytes=16 * 1024 * 1024,
                fetch_max_wait_ms=k.fetch_max_wait_ms,
                max_partition_fetch_bytes=4 * 1024 * 1024)
    opts.update(extra)
    return AIOKafkaConsumer(**opts)


async def ensure_topics(k: KafkaSettings, *, timeout_s: float = 30.0) -> None:
    """Create the topics spendwatch uses if they are missing; check the input topics' partition counts."""
    admin = AIOKafkaAdminClient(bootstrap_servers=k.bootstrap, client_id=f"{k.client_id}-admin",
                                request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (KafkaConnectionError, asyncio.TimeoutError) as exc:
        raise BrokerError(f"cannot reach Kafka at {k.bootstrap!r}: {exc!r}; check kafka.bootstrap / "
                          "--bootstrap, or leave it empty for the embedded broker") from None
    try:
        existing = set(await admin.list_topics())
        wanted = {k.payments_topic: k.partitions, k.chain_topic: k.partitions,
                  k.dead_letter_topic: k.partitions, k.findings_topic: k.partitions,
                  k.decisions_topic: k.partitions, k.checkpoint_topic: 1}
        # checkpoints are written to be compacted (each generation's chunks, then tombstones for the last):
        # without compaction a restore reads every checkpoint ever written and soon runs out of time
        configs = {k.checkpoint_topic: {"cleanup.policy": "compact"}}
        missing = [NewTopic(t, n, k.replication_factor, topic_configs=configs.get(t, {}))
                   for t, n in wanted.items() if t not in existing]
        if missing and k.create_topics:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s", ", ".join(t.name for t in missing))
        elif missing:
            raise BrokerError(f"topics missing and kafka.create_topics is false: "
                              f"{', '.join(t.name for t in missing)}")
        meta = await admin.describe_topics([k.payments_topic, k.chain_topic])
        counts = {m["topic"]: len(m["partitions"]) for m in meta}
        if len(set(counts.values())) > 1:
            raise BrokerError(f"input topics must have the same number of partitions (both are keyed by "
                              f"payer wallet and partition p of each belongs to one shard): {counts}")
        if counts and set(counts.values()) != {k.partitions}:
            # admin actions on an agent not seen yet route by murmur2(wallet) % kafka.partitions: a wrong
            # count would put a hold on another partition's breakers
            raise BrokerError(f"kafka.partitions is {k.partitions} but the input topics have "
                              f"{next(iter(counts.values()))} partitions ({counts}); set kafka.partitions "
                              f"(SPENDWATCH_KAFKA__PARTITIONS) to {next(iter(counts.values()))}")
        if k.checkpoint_topic in existing:
            await _warn_unless_compacted(admin, k.checkpoint_topic)
    finally:
        await admin.close()


async def _warn_unless_compacted(admin: AIOKafkaAdminClient, topic: str) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    try:
        res = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = {e[0]: e[1] for r in res for e in r.resources[0][4]}
    except Exception as exc:  # noqa: BLE001 - some brokers (Tansu) do not describe configs: nothing to check
        log.debug("cannot describe %s's configuration: %r", topic, exc)
        return
    policy = entries.get("cleanup.policy")
    if policy is not None and "compact" not in policy:
        log.warning("checkpoint topic %s has cleanup.policy=%s, not compact: restores read every checkpoint "
                    "ever kept and slow down until they time out; run kafka-configs --alter --entity-type "
                    "topics --entity-name %s --add-config cleanup.policy=compact", topic, policy, topic)


async def partitions_behind(consumer: AIOKafkaConsumer, topics: tuple[str, ...], partitions) -> set[int]:
    """The partitions with records still to read on any of `topics`: the position (of the records handed
    out so far) below the highwater mark of the last fetch, or either not known yet. The highwater, not
    end_offsets(): Tansu reports the latter too low."""
    out = set()
    for p in partitions:
        for topic in topics:
            tp = TopicPartition(topic, p)
            try:
                hw = consumer.highwater(tp)
                # known highwater: a fetch answered at the current position, so position() does not wait
                pos = None if hw is None else await consumer.position(tp)
            except Exception:  # not (or no longer) assigned: not known
                hw = pos = None
            if records_left(hw, pos):
                out.add(p)
                break
    return out


async def input_partition_count(consumer: AIOKafkaConsumer, topic: str) -> int:
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    return len(parts or ())


async def committed_input_offsets(k: KafkaSettings) -> int:
    """The group's committed offsets over both input topics, summed (progress, for tests and benches)."""
    from aiokafka import TopicPartition

    admin = AIOKafkaAdminClient(bootstrap_servers=k.bootstrap, client_id=f"{k.client_id}-admin")
    await admin.start()
    try:
        tps = [TopicPartition(t, p) for t in (k.payments_topic, k.chain_topic) for p in range(k.partitions)]
        offs = await admin.list_consumer_group_offsets(k.group, partitions=tps)
        return sum(max(0, o.offset) for o in offs.values())
    finally:
        await admin.close()


async def read_to_end(bootstrap: str, topic: str, *, timeout_s: float = 30.0, client_id: str = "spendwatch-reader",
                      keep: Callable[[Any], Any] | None = None) -> tuple[list, bool]:
    """Every record of every partition of `topic`, from the beginning up to the high-water marks seen while
    reading (Tansu does not answer end_offsets reliably), and whether every partition got there within
    `timeout_s`. No consumer group: nothing is committed. With `keep`, what it returns for each record
    instead (None: nothing), as the records arrive: memory holds what is kept, not the topic."""
    import time

    from aiokafka import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", client_id=client_id)
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()  # a failed start leaves its client open
        raise
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return [], True
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list = []
        deadline = time.monotonic() + timeout_s
        while True:
            for msgs in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
                if keep is None:
                    out += msgs
                else:
                    out += [k for k in map(keep, msgs) if k is not None]
            behind = [tp for tp in tps
                      if consumer.highwater(tp) is None or await consumer.position(tp) < consumer.highwater(tp)]
            if not behind:
                return out, True
            if time.monotonic() > deadline:
                return out, False
    finally:
        await consumer.stop()


def unreachable(bootstrap: str, exc: BaseException) -> BrokerError:
    """The error of a command that could not reach the Kafka it was given."""
    return BrokerError(f"cannot reach Kafka at {bootstrap!r} ({exc}); check --bootstrap / kafka.bootstrap")


async def read_whole(bootstrap: str, topic: str, *, timeout_s: float, client_id: str, otherwise: str,
                     keep: Callable[[Any], Any] | None = None) -> list:
    """`read_to_end`, or BrokerError when Kafka cannot be reached or the topic was not read to its end (a
    partial read would look whole to whoever reads what is made of it). `otherwise` says what was not done."""
    from aiokafka.errors import KafkaConnectionError

    try:
        records, complete = await read_to_end(bootstrap, topic, timeout_s=timeout_s, client_id=client_id,
                                              keep=keep)
    except KafkaConnectionError as exc:
        raise unreachable(bootstrap, exc) from None
    if not complete:
        raise BrokerError(f"{topic} was not read to the end of every partition within {timeout_s:.0f} s; "
                          f"{otherwise}: raise --timeout or check the brokers")
    return records
