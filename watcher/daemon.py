"""The async shell around the pure core: Kafka in, shards, dead letters, findings and checkpoints out.

Per batch: getmany() -> decode each record (bad ones to the dead-letter topic) -> Shard.apply per input
partition, in runs cut where event time enters a new 10 s bucket, each run judged by the stages before the
next -> publish findings and stage outputs -> wait for every publish -> commit offsets.

Clocks (watcher/pipeline/eventtime.py): a partition with records left to read on any input topic (after a
restart, an outage, a handoff, a slow replica) is judged by its own event time, as `spendwatch replay`
judges the same records: its shard is not advanced to the wall clock, so a backlog is not counted late
and its window caps still fire (its two input topics are read as fetched, not merged by time: see the
README's Catching up; a transfer's shadow_spend waits for its settle to be read, `hold_shadows`). Once
nothing is left to read it is advanced to the wall clock every batch (idle partitions age, join deadlines
pass). Escalations raised while catching up get their whole timeout from the wall clock
(`BatchContext.real_from_ms`).

State is checkpointed with the input offsets it covers every `checkpoint.interval_seconds`, when
partitions are revoked, and at shutdown; on assignment a partition's shard is restored and its input
replayed from the covered offsets (no checkpoint: from the earliest offset), so a restart counts nothing
twice or never.

Shutdown (SIGTERM/SIGINT set a flag): stop intake, finish the batch, checkpoint, commit, close.

A record whose decoding or shard fold raises is dead-lettered (`internal_error`) and a stage that raises is
counted and skipped for that batch: the daemon goes on (`watcher.failures` has the design).

A partition whose state cannot be restored (a restore timeout, a damaged checkpoint, a checkpoint that no
longer fits the configured windows) is never run without it: it stays paused, the daemon stops as on
SIGTERM (checkpointing what it does own) and `run()` then raises a CheckpointError naming the partition,
the cause and the fix, so `spendwatch run` exits 1. aiokafka only logs what a rebalance listener raises,
so the listener records the error (`Daemon.fatal`) instead of raising it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter, deque
from contextlib import AsyncExitStack
from typing import AsyncContextManager, Awaitable, Callable

import msgspec
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from watcher.batch import BatchContext, Counters, Stage
from watcher.config import Settings
from watcher.errors import BrokerError, CheckpointError, EventError, SpendwatchError
from watcher.events.decode import Decoder
from watcher.events.observation import Observation
from watcher.failures import INTERNAL_ERROR, Span, StageErrors
from watcher.pipeline.categories import CategoryMap
from watcher.pipeline.eventtime import Clocks, PartitionClock, event_runs
from watcher.pipeline.shard import Outcome, Shard
from watcher.sources import kafka as kafka_io
from watcher.sources.checkpoints import CheckpointStore
from watcher.sources.clients import stop_client
from watcher.sources.deadletter import dead_letter_headers, dead_letter_key, dead_letter_value, make_dead_letter

log = logging.getLogger("watcher.daemon")
_enc = msgspec.json.Encoder()


Outgoing = tuple  # (topic, key bytes | None, value bytes, headers | None)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon

    # The callbacks run in aiokafka's coordinator task, concurrently with the daemon's loop whenever that
    # awaits (publishing, checkpointing, committing): the lock makes a rebalance wait for the batch in hand.
    # aiokafka logs and swallows what a callback raises, so errors are handed to the daemon to stop it.
    async def on_partitions_revoked(self, revoked):
        partitions = {tp.partition for tp in revoked}
        try:
            async with self.daemon.lock:
                await self.daemon._release(partitions)
        except Exception as exc:
            self.daemon._fail(f"partition(s) {sorted(partitions)}: the checkpoint on revocation failed",
                              CheckpointError(f"checkpointing partition(s) {sorted(partitions)} on revocation "
                                              f"failed: {exc!r}; their next owner restores the previous "
                                              "checkpoint and replays the input after it"), exc)

    async def on_partitions_assigned(self, assigned):
        consumer = self.daemon.consumer
        consumer.pause(*assigned)  # no records for a partition until its state is restored
        fresh = {tp.partition for tp in assigned} - set(self.daemon.shards)
        try:
            async with self.daemon.lock:
                try:
                    await self.daemon._acquire(fresh)
                except BaseException:
                    self.daemon._forget(fresh)  # all or nothing: a half-done restore may not have seeked yet
                    raise
        except Exception as exc:
            self.daemon._fail(f"partition(s) {sorted(fresh)}: the state cannot be restored",
                              self.daemon.store.unrestorable(fresh, exc), exc)
        finally:
            # a partition without its state stays paused (its records would only be fetched and rewound)
            consumer.resume(*[tp for tp in assigned
                              if tp in consumer.assignment() and tp.partition in self.daemon.shards])
            log.info("rebalance: this replica owns partitions %s of %d (new: %s)", sorted(self.daemon.shards),
                     self.daemon.k.partitions, sorted(fresh) or "none")


class Daemon:
    PUBLISH_RETRIES = 12  # about a minute of back-off in all
    def __init__(self, settings: Settings, stages: list[Stage] | None = None, *,
                 services: list[Callable[["Daemon"], AsyncContextManager]] | None = None,
                 categorize: Callable[[str, str | None], str | None] | None = None,
                 live_clock: bool = True, on_batch: Callable[["Daemon"], Awaitable[None] | None] | None = None) -> None:
        """`services` are factories of async context managers (webhook sender, admin API, ...) entered
        once the producer is up and exited after the consumer has closed (so outboxes can flush)."""
        self.settings = settings
        self.k = settings.kafka
        self.stages = stages or []
        self.services = services or []
        self.live_clock = live_clock
        self.on_batch = on_batch
        self.decoder = Decoder(max_event_bytes=settings.events.max_event_bytes,
                               max_future_skew_ms=(settings.events.max_future_skew_seconds * 1000
                                                   if live_clock else None),
                               extra_chain_ids=frozenset(settings.events.extra_chain_ids))
        self.categorize = categorize or CategoryMap(settings.categories)
        self.shards: dict[int, Shard] = {}
        self.covered: dict[int, dict[str, int]] = {}
        self.clocks = Clocks(live_clock)   # which partitions have caught up (judged by the wall clock)
        self._inputs = (self.k.payments_topic, self.k.chain_topic)
        self.counters = Counters()
        self.dlq_reasons: Counter[str] = Counter()
        self.stage_errors = StageErrors()
        self.recent_decisions: deque = deque(maxlen=50)  # for views: the newest decisions of any stage
        self.decision_counts: Counter[str] = Counter()
        self.stopping = asyncio.Event()
        self.started = asyncio.Event()
        self._last_checkpoint = time.monotonic()
        self.producer = None
        self._track = lambda topic: None   # kafka_io.TopicTracker once the producer runs
        self.consumer = None
        self._inflight: list[tuple[Outgoing, asyncio.Future]] = []
        self._uncommitted: dict[TopicPartition, OffsetAndMetadata] = {}
        self._last_commit = time.monotonic()
        self.store: CheckpointStore | None = None
        self.lock = asyncio.Lock()  # one batch, checkpoint or rebalance callback at a time
        self.fatal: SpendwatchError | None = None  # what stops the daemon; run() raises it after closing

    # -- lifecycle -----------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        if not self.stopping.is_set():
            log.info("stop requested: finishing the current batch, then checkpoint, commit, close")
        self.stopping.set()

    def _fail(self, what: str, error: SpendwatchError, cause: BaseException | None = None) -> None:
        """Stop the daemon because of `error`: run() raises it once everything is closed (and the command
        line logs it in full then: here only `what` happened, so the long message is not logged twice)."""
        error.__cause__ = cause
        if self.fatal is None:
            self.fatal = error
        log.error("%s (%s); stopping, then exiting with the error", what, type(cause or error).__name__)
        self.request_stop()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def run(self) -> None:
        await kafka_io.ensure_topics(self.k)
        self.producer = kafka_io.producer(self.k)
        await self.producer.start()
        self._track = kafka_io.TopicTracker(self.producer)
        for topic in (self.k.checkpoint_topic, self.k.dead_letter_topic, self.k.findings_topic,
                      self.k.decisions_topic):
            self._track(topic)
        try:
            async with AsyncExitStack() as services:
                for factory in self.services:
                    await services.enter_async_context(factory(self))
                await self._consume()
        except KafkaError as exc:
            raise BrokerError(f"lost Kafka at {self.k.bootstrap!r} ({exc}): stopped. Nothing is lost: offsets are "
                              "committed only after the state is checkpointed, so a restart resumes from the last "
                              "checkpoint once Kafka is back (run it under a supervisor that restarts it)") from exc
        finally:
            await stop_client(self.producer, "producer")
            self._log_summary("stopped")
        if self.fatal is not None:
            raise self.fatal

    async def _consume(self) -> None:
        self.store = CheckpointStore(self.producer, self.k.bootstrap, self.k.checkpoint_topic, self.k.group,
                                     self.settings.checkpoint.chunk_bytes)
        self.consumer = kafka_io.group_consumer(self.k)
        self.consumer.subscribe([self.k.payments_topic, self.k.chain_topic], listener=_Rebalance(self))
        await self.consumer.start()
        try:
            await self._loop()
            async with self.lock:
                await self._checkpoint_all()
                await self._commit()
        finally:
            await stop_client(self.consumer, "consumer")
            log.info("consumer closed (left group %s)", self.k.group)

    async def _loop(self) -> None:
        last_log = time.monotonic()
        while not self.stopping.is_set():
            batch = await self.consumer.getmany(timeout_ms=self.k.poll_timeout_ms, max_records=self.k.max_batch)
            if not self.started.is_set() and self.consumer.assignment():
                self.started.set()
            async with self.lock:
                await self._process(batch)
                if time.monotonic() - self._last_checkpoint >= self.settings.checkpoint.interval_seconds:
                    await self._checkpoint_all()
            if time.monotonic() - last_log >= 10:
                self._log_summary("running")
                last_log = time.monotonic()
            if self.on_batch is not None:
                res = self.on_batch(self)
                if asyncio.iscoroutine(res):
                    await res

    # -- one batch -----------------------------------------------------------------------------
    def _gap(self, tp: TopicPartition, covered: int, first: int) -> None:
        """Offsets [covered, first) never reached us: a transaction marker takes one, retention deletes
        records a lagging (or long stopped) watcher never read. Counted; said when more than a marker."""
        self.counters.skipped_offsets += first - covered
        if first - covered > 1:
            log.warning("%s[%s]: offsets %s..%s were never delivered (deleted by retention before they were "
                        "read, or transaction markers): %s record(s) not counted", tp.topic, tp.partition, covered,
                        first - 1, first - covered)

    async def _process(self, batch) -> None:
        pending: list[Outgoing] = []
        commits: dict[TopicPartition, OffsetAndMetadata] = {}
        wall_ms = int(time.time() * 1000)
        # positions are past this batch already: who has more to read after it (watcher.pipeline.eventtime)
        behind = (await kafka_io.partitions_behind(self.consumer, self._inputs, list(self.shards))
                  if self.live_clock else set())
        judged: set[int] = set()
        for tp, msgs in batch.items():
            shard = self.shards.get(tp.partition)
            if shard is None:
                # fetched before this partition's state was restored, or after it was revoked: never
                # skip past it. Rewind if still ours (the restore's own seek wins if it comes later).
                self.counters.not_owned += len(msgs)
                if tp in self.consumer.assignment():
                    self.consumer.seek(tp, msgs[0].offset)
                continue
            covered = self.covered[tp.partition].get(tp.topic, -1)
            if msgs[0].offset < covered:  # a re-fetch after a seek: those offsets are in the state already
                fresh = [m for m in msgs if m.offset >= covered]
                self.counters.refetched += len(msgs) - len(fresh)
                msgs = fresh
                if not msgs:
                    continue
            elif msgs[0].offset > covered >= 0:
                self._gap(tp, covered, msgs[0].offset)
            obs = []
            src = []   # the Kafka message of each observation (those dead-lettered here have none)
            decode = self.decoder.decode
            for m in msgs:
                try:
                    if m.value is None:
                        raise EventError("bad_json", "empty record (null value)")
                    obs.append(decode(m.value))
                    src.append(m)
                    continue
                except EventError as exc:
                    reason, detail, error = exc.reason, exc.detail, None
                except Exception as exc:  # a bug must not stop the daemon or lose the record
                    reason, detail, error = INTERNAL_ERROR, f"decoding: {exc!r}", exc
                pending.append(self._dead_letter(reason, detail, m, error))
            p = tp.partition
            start = 0
            # catching up, the chain topic may be read far ahead of the payments topic: a transfer's shadow
            # deadline waits for its settle to be read (Shard.apply; a caught-up partition's advance judges it)
            hold = self.clocks.catching_up(p)
            # each run is judged before the next is applied, at the shard's state after it (window rules
            # are exact per run: eventtime.event_runs); a live batch is one run, or two across a 10 s boundary
            for run in event_runs(obs):
                n = len(run)
                outcome = shard.apply(run, hold_shadows=hold)
                span = (tp.topic, src[start].offset, src[start + n - 1].offset) if n else None
                if outcome.failed:   # records whose fold raised: left out of the shard, dead-lettered
                    for i, exc in outcome.failed:
                        pending.append(self._dead_letter(INTERNAL_ERROR, f"folding into the shard: {exc!r}",
                                                         src[start + i], exc))
                    run = outcome.without_failed(run)
                start += n
                self.counters.processed += outcome.processed
                self.counters.duplicates += outcome.duplicates
                self._judge(p, shard, outcome, run, self.clocks.of(p, shard.watermark_ms, wall_ms), pending, span)
            judged.add(p)
            self.counters.consumed += len(msgs)
            self.covered[p][tp.topic] = msgs[-1].offset + 1
            commits[tp] = OffsetAndMetadata(msgs[-1].offset + 1, "")
        self.clocks.update(behind, self.shards)
        for p, shard in self.shards.items():
            clock = self.clocks.of(p, shard.watermark_ms, wall_ms)
            found = None
            if p in self.clocks.live:  # caught up: the shard ages by the wall clock (idle ones sweep)
                found = shard.advance(wall_ms)
            elif shard.join.held_shadows and not await kafka_io.partitions_behind(
                    self.consumer, (self.k.payments_topic,), [p]):
                # catching up on the chain topic only: every settle published is read, none is coming
                found = shard.judge_held_shadows()
            if found:
                self._judge(p, shard, Outcome(findings=found), [], clock, pending)
                continue
            if p not in judged:
                self._judge(p, shard, Outcome(), [], clock, pending)
        if pending:
            await self._send(pending)
        if commits:
            self.counters.batches += 1
            self._uncommitted.update(commits)
        if self._uncommitted and (len(self._inflight) > 20_000 or
                                  time.monotonic() - self._last_commit >= self.k.commit_interval_ms / 1000):
            await self._flush()
            try:
                await self.consumer.commit(self._uncommitted)
            except Exception as exc:  # dropped from the group after a pause: the checkpoints still rule
                log.warning("offset commit failed (%r); the next owner restores from the checkpoint", exc)
            self._uncommitted = {}
            self._last_commit = time.monotonic()

    def _judge(self, p: int, shard: Shard, outcome: Outcome, obs: list[Observation], clock: PartitionClock,
               pending: list[Outgoing], span: Span = None) -> None:
        """Findings out, then every stage over one run (or a tick) of partition p; a stage that raises is
        logged with `span` and counted (`watcher.failures`), and the later stages still run."""
        for f in outcome.findings:
            self.counters.findings += 1
            pending.append((self.k.findings_topic, f.agent.encode(), _enc.encode(f), None))
        if not self.stages:
            return
        ctx = BatchContext(p, shard, outcome, obs, clock.now_ms, wall_ms=clock.wall_ms,
                           catching_up=clock.catching_up)
        self.stage_errors.run(self.stages, ctx, span)
        for d in ctx.decisions:
            self.recent_decisions.append(d)
            self.decision_counts[d.kind] += 1
        for topic, key, value in ctx.publish:
            pending.append((topic, key, value, None))

    def _dead_letter(self, reason: str, detail: str, m, error: BaseException | None = None) -> "Outgoing":
        """The dead letter of message `m`; `error`: our own code raised on it (logged with its traceback, once
        per exception type and `reason`: a cause that fails every record must not log thousands of them)."""
        self.counters.dead_lettered += 1
        self.dlq_reasons[reason] += 1
        trace = error if error is not None and self.stage_errors.first_trace(reason, error) else None
        log.log(logging.WARNING if error is None else logging.ERROR, "dead-lettered %s[%d]@%d: %s: %s", m.topic,
                m.partition, m.offset, reason, detail[:200], exc_info=trace)
        dl = make_dead_letter(reason, detail, m.topic, m.partition, m.offset, m.key, m.value, m.headers)
        return (self.k.dead_letter_topic, dead_letter_key(m.key), dead_letter_value(dl), dead_letter_headers(dl))

    async def _send(self, records: list["Outgoing"]) -> None:
        """Hand records to the producer without waiting; `_flush` waits for (and retries) them."""
        self._inflight += await self._submit(records)

    async def _submit(self, records: list["Outgoing"]) -> list[tuple["Outgoing", asyncio.Future]]:
        out = []
        for rec in records:
            topic, key, value, headers = rec
            try:
                self._track(topic)  # a stage's own topic (watcher.breaker, watcher.statements) on first use
                fut = await self.producer.send(topic, value, key=key, headers=headers)
            except Exception as exc:  # e.g. metadata for a new topic not available yet: retried by _flush
                fut = asyncio.get_running_loop().create_future()
                fut.set_exception(exc)
            out.append((rec, fut))
        return out

    async def _flush(self) -> None:
        """Wait for the broker's acknowledgement of every record sent, retrying failures with a back-off
        (a topic just created, a leader moving). Offsets are committed and state checkpointed only after
        this returns; if the broker stays unreachable past the retries, the error stops the daemon and a
        restart resumes from the last checkpoint, so nothing is lost."""
        todo, self._inflight = self._inflight, []
        attempt = 0
        while todo:
            results = await asyncio.gather(*(f for _, f in todo), return_exceptions=True)
            failed = [rec for (rec, _), res in zip(todo, results) if isinstance(res, BaseException)]
            if not failed:
                return
            attempt += 1
            first = next(r for r in results if isinstance(r, BaseException))
            if attempt > self.PUBLISH_RETRIES:
                raise first
            log.warning("publishing %d of %d records failed (%r, topics %s); retry %d of %d", len(failed),
                        len(todo), first, ", ".join(sorted({r[0] for r in failed})), attempt, self.PUBLISH_RETRIES)
            await asyncio.sleep(min(5.0, 0.05 * 2 ** attempt))
            todo = await self._submit(failed)

    # -- partitions and checkpoints --------------------------------------------------------------
    def _new_shard(self) -> Shard:
        return Shard(self.settings.shard_config(), self.categorize)

    async def _acquire(self, partitions: set[int]) -> None:
        fresh = partitions - set(self.shards)
        if not fresh:
            return
        restored = await self.store.read_latest(fresh, self.settings.checkpoint.restore_timeout_seconds)
        for p in sorted(fresh):
            r = restored.get(p)
            if r is not None:
                try:
                    snap = msgspec.msgpack.decode(r.blob)
                    shard = Shard.restore(snap["shard"], self.settings.shard_config(), self.categorize)
                    for i, stage in enumerate(self.stages):
                        stage.restore(p, snap.get("stages", [None] * len(self.stages))[i])
                except Exception as exc:
                    why = str(exc) if isinstance(exc, SpendwatchError) else repr(exc)
                    raise CheckpointError(f"partition {p}, checkpoint generation {r.manifest.gen}: {why}") from exc
                self.shards[p] = shard
                self.covered[p] = dict(r.manifest.offsets)
                self.counters.restored_partitions += 1
                log.info("partition %d: restored checkpoint gen %d (%d agents) covering %s", p, r.manifest.gen,
                         len(self.shards[p].agents), r.manifest.offsets)
            else:
                self.shards[p] = self._new_shard()
                for stage in self.stages:
                    stage.restore(p, None)
                self.covered[p] = {}
                log.info("partition %d: no checkpoint; reading its input from the earliest offset", p)
            for topic in (self.k.payments_topic, self.k.chain_topic):
                tp = TopicPartition(topic, p)
                off = self.covered[p].get(topic)
                if off is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, off)

    async def _release(self, partitions: set[int]) -> None:
        gone = partitions & set(self.shards)
        if not gone:
            return
        try:
            for p in sorted(gone):
                await self._checkpoint(p)
            await self._commit()
        finally:  # never keep (and later checkpoint over the new owner) a partition no longer ours
            self._forget(gone)
        log.info("released partitions %s", sorted(gone))

    def _forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.shards.pop(p, None)
            self.covered.pop(p, None)
            self.clocks.forget(p)
            for stage in self.stages:
                stage.drop(p)

    async def _checkpoint(self, p: int) -> None:
        await self._flush()  # the state to be saved assumes its outputs are on the broker
        snap = {"shard": self.shards[p].snapshot(), "stages": [s.snapshot(p) for s in self.stages]}
        blob = msgspec.msgpack.encode(snap)
        m = await self.store.write(p, blob, self.covered[p])
        self.counters.checkpoints += 1
        log.debug("partition %d: checkpoint gen %d, %d bytes, offsets %s", p, m.gen, m.size, m.offsets)

    async def _checkpoint_all(self) -> None:
        for p in sorted(self.shards):
            await self._checkpoint(p)
        self._last_checkpoint = time.monotonic()

    async def _commit(self) -> None:
        await self._flush()
        self._uncommitted = {}
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "")
                   for p, cov in self.covered.items() for t, o in cov.items()}
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except Exception as exc:  # a commit after a lost membership is harmless: checkpoints rule
                log.warning("offset commit failed (%r); the checkpoint still covers these offsets", exc)

    # -- views ---------------------------------------------------------------------------------
    def tracked_agents(self) -> int:
        return sum(len(s.agents) for s in self.shards.values())

    def _log_summary(self, state: str) -> None:
        c = self.counters
        log.info("%s: consumed=%d processed=%d dead_lettered=%d duplicates=%d findings=%d agents=%d "
                 "partitions=%s checkpoints=%d", state, c.consumed, c.processed, c.dead_lettered, c.duplicates,
                 c.findings, self.tracked_agents(), sorted(self.shards), c.checkpoints)
