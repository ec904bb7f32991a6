"""The durable outbox: the Kafka topic `watcher.breaker` (key: the agent's wallet), read back on restart.

Records (JSON, tagged by "type"):
    change     every breaker change, with the full breaker after it and, when the wallet service must
               hear of it, the webhook body: {"type": "change", "seq", "partition", "id", "agent", "kind",
               "webhook", "previous", "state", "at_ms", "by", "cause", "reason", "breaker", "body",
               "answered" (kind approved: the escalation's decision id)}
    delivered  how a webhook ended: {"type": "delivered", "id", "partition", "agent", "outcome"
               (delivered | dead | disabled), "attempts", "at_ms", "detail"}. `delivered` and `dead`
               end it; `disabled` (no webhook.url at the time, nothing was sent) is only noted: the
               webhook stays undelivered and the first start with a url sends it

Changes caused by decisions are published through the daemon's batch (so they are on the broker before
the input offsets that caused them are committed); changes made by a person are published and awaited
before the admin API answers. `BreakerLog` reads the whole topic when the daemon starts and then follows
it, folding per input partition the newest breaker of each agent, the applied causes and the webhooks
that no `delivered` record has ended yet. A partition's restore merges its checkpoint with that fold, so
a change made after the last checkpoint (a person's hold, a freeze just before a SIGKILL) survives, and
every undelivered webhook is sent again with its original id and body.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from watcher.breaker.state import APPLIED_MAX, Breaker, Effect, answered_key
from watcher.breaker.webhook import Delivery
from watcher.sources.clients import stop_client

log = logging.getLogger("watcher.breaker.outbox")


class ChangeRecord(msgspec.Struct, tag_field="type", tag="change", frozen=True):
    seq: int
    partition: int
    id: str
    agent: str
    kind: str
    webhook: str | None
    previous: str
    state: str
    at_ms: int
    by: str
    cause: str
    reason: str
    breaker: Breaker
    body: str | None = None
    created_ms: int = 0
    answered: str | None = None     # kind approved: the escalation a person answered


class DeliveredRecord(msgspec.Struct, tag_field="type", tag="delivered", frozen=True):
    id: str
    partition: int
    agent: str
    outcome: str
    attempts: int
    at_ms: int
    detail: str = ""


Record = ChangeRecord | DeliveredRecord
# outcomes that end a webhook; "disabled" does not: it was never sent (webhook.url was empty)
FINAL_OUTCOMES = frozenset({"delivered", "dead"})
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Record)


def change_record(partition: int, e: Effect, body: bytes | None, created_ms: int) -> ChangeRecord:
    answered = e.evidence.get("escalation") if e.kind == "approved" else None
    return ChangeRecord(e.breaker.seq, partition, e.id, e.agent, e.kind, e.webhook, e.previous, e.state, e.at_ms,
                        e.by, e.cause, e.reason, e.breaker, body.decode() if body is not None else None, created_ms,
                        answered)


def encode_record(r: Record) -> bytes:
    return _enc.encode(r)


def decode_record(raw: bytes) -> Record:
    return _dec.decode(raw)


def delivery_of(r: ChangeRecord) -> Delivery | None:
    if r.webhook is None or r.body is None:
        return None
    return Delivery(r.id, r.partition, r.agent, r.webhook, r.body.encode(), r.created_ms or r.at_ms, r.seq)


class PartitionFold:
    """What the log says about one input partition."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[int, Breaker]] = {}
        self.causes: dict[str, None] = {}
        self.pending: dict[str, Delivery] = {}
        self.done: dict[str, None] = {}
        self.answered: dict[str, int] = {}    # agent -> seq of its latest approval of an escalation
        self.max_seq = 0

    def _cause(self, cause: str) -> None:
        self.causes[cause] = None
        if len(self.causes) > APPLIED_MAX:
            del self.causes[next(iter(self.causes))]

    def add(self, r: Record) -> None:
        if isinstance(r, ChangeRecord):
            self.max_seq = max(self.max_seq, r.seq)
            cur = self.latest.get(r.agent)
            if cur is None or r.seq >= cur[0]:
                self.latest[r.agent] = (r.seq, r.breaker)
            self._cause(r.cause)
            if r.answered:
                self._cause(answered_key(r.answered))
                self.answered[r.agent] = max(r.seq, self.answered.get(r.agent, 0))
            d = delivery_of(r)
            if d is not None and r.id not in self.done:
                self.pending[r.id] = d
        elif r.outcome in FINAL_OUTCOMES:
            self.pending.pop(r.id, None)
            self.done[r.id] = None
            if len(self.done) > 4 * APPLIED_MAX:
                del self.done[next(iter(self.done))]


async def ensure_topic(bootstrap: str, topic: str, partitions: int, replication: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="spendwatch-breaker-admin")
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            try:
                # the audit trail, and the history the tap's breaker view is rebuilt from: kept, not aged out
                # after the broker's default 7 days (a week-old hold must still hold)
                await admin.create_topics([NewTopic(topic, partitions, replication,
                                                    topic_configs={"retention.ms": "-1"})])
                log.info("created topic %s (%d partitions, kept forever)", topic, partitions)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


class BreakerLog:
    """Reads `topic` from the beginning, then follows it. Async context manager; entering returns once
    the reader has reached the end of every partition (or `catchup_timeout_s` passed, logged)."""

    def __init__(self, bootstrap: str, topic: str, *, partitions: int = 8, replication: int = 1,
                 catchup_timeout_s: float = 60.0) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.partitions, self.replication = partitions, replication
        self.catchup_timeout_s = catchup_timeout_s
        self.folds: dict[int, PartitionFold] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.task: asyncio.Task | None = None
        self.records = 0
        self.bad = 0

    def undelivered(self) -> int:
        """Webhooks on the log (all partitions) that no `delivered` or `dead` record has ended."""
        return sum(len(f.pending) for f in self.folds.values())

    def fold(self, partition: int) -> PartitionFold:
        return self.folds.setdefault(partition, PartitionFold())

    def _add(self, msgs) -> None:
        for m in msgs:
            try:
                r = decode_record(m.value)
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
                self.bad += 1
                log.warning("unreadable record %s[%d]@%d skipped: %s", m.topic, m.partition, m.offset, exc)
                continue
            self.records += 1
            self.fold(r.partition).add(r)

    async def __aenter__(self) -> "BreakerLog":
        await ensure_topic(self.bootstrap, self.topic, self.partitions, self.replication)
        c = self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                             enable_auto_commit=False, auto_offset_reset="earliest",
                                             client_id="spendwatch-breaker-log", fetch_max_wait_ms=200)
        await c.start()
        parts = c.partitions_for_topic(self.topic)
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        t0 = time.monotonic()
        while True:
            batch = await c.getmany(timeout_ms=100, max_records=10_000)
            for msgs in batch.values():
                self._add(msgs)
            behind = [tp for tp in tps if c.highwater(tp) is None or await c.position(tp) < c.highwater(tp)]
            if not behind:
                break
            if time.monotonic() - t0 > self.catchup_timeout_s:
                log.error("breaker log: not caught up after %.0f s on %s; continuing without the rest. "
                          "Breaker changes and undelivered webhooks recorded there are missing from this "
                          "start's restore: they are re-sent only at the next start (or when a rebalance "
                          "assigns their partition to this replica again). Raise "
                          "checkpoint.restore_timeout_seconds if the topic is this slow to read",
                          self.catchup_timeout_s, behind)
                break
        log.info("breaker log %s read: %d records, %d undelivered webhooks", self.topic, self.records,
                 self.undelivered())
        self.task = asyncio.create_task(self._follow(), name="breaker log")
        return self

    async def _follow(self) -> None:
        while True:
            try:
                batch = await self.consumer.getmany(timeout_ms=500, max_records=10_000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following; the fold only matters at the next restore
                log.warning("breaker log read failed: %r", exc)
                await asyncio.sleep(1)
                continue
            for msgs in batch.values():
                self._add(msgs)

    async def __aexit__(self, *exc) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        if self.consumer is not None:
            await stop_client(self.consumer, "breaker outbox consumer")
            self.consumer = None
