"""What the daemon hands its stages: one partition's batch (BatchContext), the Stage protocol, and the
daemon's own counters. Pure data, so stages and tests import it without the Kafka shell."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from watcher.events.observation import Observation
from watcher.pipeline.shard import Outcome, Shard


@dataclass
class BatchContext:
    """What one partition's batch produced, handed through the stages in order.

    A stage reads `outcome` (and `observations`), may append to `decisions` for later stages, and appends
    records to publish as (topic, key, value) to `publish`; the daemon publishes them all and waits for the
    broker before it commits the batch's offsets. Stages are also called with an empty outcome on every
    poll, so clock-driven work (timeouts) runs without traffic.

    Clocks (watcher/pipeline/eventtime.py): `now_ms` is what the partition is judged by, the wall clock once
    it has caught up and its own event time (the shard's watermark) while it catches up a backlog;
    `wall_ms` is the real time (event latencies, how often to publish); the time a person gets to answer
    an escalation starts no earlier than `real_from_ms`.
    """

    partition: int
    shard: Shard
    outcome: Outcome
    observations: list[Observation]
    now_ms: int
    decisions: list = field(default_factory=list)
    publish: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    wall_ms: int | None = None       # None: now_ms (a live batch)
    catching_up: bool = False

    def __post_init__(self) -> None:
        if self.wall_ms is None:
            self.wall_ms = self.now_ms

    @property
    def real_from_ms(self) -> int:
        """Escalation deadlines start no earlier than this: the wall clock for decisions about a backlog
        (their events are old: a person still needs the whole time to answer), else 0 (from the event's
        own time). Breaker cool-downs do not use it: see watcher/breaker/stage.py."""
        return self.wall_ms if self.catching_up else 0


class Stage(Protocol):
    """A stage after the shard (detection, breakers), with state per input partition."""

    def on_batch(self, ctx: BatchContext) -> None: ...
    def snapshot(self, partition: int) -> object: ...
    def restore(self, partition: int, data: object | None) -> None: ...
    def drop(self, partition: int) -> None: ...


class Counters(msgspec.Struct):
    consumed: int = 0
    processed: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    findings: int = 0
    batches: int = 0
    checkpoints: int = 0
    restored_partitions: int = 0
    refetched: int = 0
    not_owned: int = 0
    skipped_offsets: int = 0   # input offsets never delivered (retention, transaction markers)
