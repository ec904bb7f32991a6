"""When the daemon's own code raises on one record or in one stage: dead-letter or count, log, and go on.

A record that makes a pipeline step raise would otherwise stop `spendwatch run`; the restart replays the
same records from the checkpoint, they raise again, and the whole fleet goes unwatched (a poison pill). So:

  decode           a record whose decoding raises anything but a validation error is dead-lettered with
                   reason `internal_error` (a validation error has its own reason).
  shard fold       a record whose fold (dedupe, join, windows) raises is left out of the shard, which stays as
                   it was before that record (`watcher.pipeline.shard` says exactly what may remain), and is
                   dead-lettered with reason `internal_error`, the exception as its detail and its source
                   topic, partition, offset, key, bytes and headers: `spendwatch deadletters --redrive
                   --reason internal_error` replays it once the cause is fixed (the daemon counts an event
                   once by its dedupe key, which the failed fold does not keep). Alert
                   RecordsFailedInternally (critical). Its traceback is logged once per exception type.
  a stage          a stage (detection, breakers, statements, metrics) raising on a partition's batch is
                   logged with the partition and the batch's source offsets, counted in
                   `spendwatch_stage_errors_total{stage}` (alert StageFailing, critical) and skipped for that
                   batch: the later stages still run on it, the batch is committed, the daemon goes on.

A stage that raised has run half of the batch, and its state is whatever it had reached: what it already
appended to the batch's decisions and records to publish is kept (later stages act on those decisions and
the records are published, so its state and its output stay together); nothing is retried, and the batch
is not replayed to it. For the daemon's stages that means:
  DetectStage      a decision is handed on as soon as it is taken (its agent marked frozen or escalated),
                   so those taken before the exception reach the breaker and the decisions topic; the
                   candidates after it in the batch are not judged, and the baselines and the fleet model
                   may have learned part of the batch. An escalation whose timeout decision raised stays
                   pending (tried again at the next tick).
  BreakerStage     each decision's change is applied to the agent's breaker, then queued for its webhook and
                   published, then notified (Slack, PagerDuty) and told to the detector; an exception in
                   between leaves that agent's breaker changed without what follows, and the batch's later
                   decisions unapplied.
  StatementStage,  counts of the batch may be missing from a statement or a metric (never counted twice).
  MetricsStage
A stage that raises on every batch is counted on every batch, its traceback logged once per exception type
and a line at most every LOG_INTERVAL_SECONDS after that. What a half-run stage left undone cannot be made
safe by the daemon: StageFailing pages so a person reads the log, fixes the cause and checks the agents of
those records.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable, Sequence

from watcher.batch import BatchContext, Stage

INTERNAL_ERROR = "internal_error"
LOG_INTERVAL_SECONDS = 60.0
MAX_TRACED = 64   # (stage, exception type) pairs whose traceback was logged: bounded

log = logging.getLogger("watcher.daemon")

Span = tuple[str, int, int] | None   # (source topic, first offset, last offset) of a batch; None: a clock tick


def stage_name(stage: object) -> str:
    """The `stage` label: the class name without `Stage`, lower case (DetectStage -> detect)."""
    name = type(stage).__name__
    return (name[:-5] if name.endswith("Stage") and len(name) > 5 else name).lower()


def describe(partition: int, span: Span) -> str:
    if span is None:
        return f"partition {partition}, no records (clock tick)"
    topic, first, last = span
    return f"{topic}[{partition}]@{first}..{last}"


class StageErrors:
    """Runs the stages on a batch, each isolated from the others' exceptions; counts failures per stage."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts: Counter[str] = Counter()
        self.clock = clock
        self._traced: set[tuple[str, type]] = set()
        self._logged_at: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()   # failures not logged since the stage's last line

    def run(self, stages: Sequence[Stage], ctx: BatchContext, span: Span) -> None:
        for stage in stages:
            try:
                stage.on_batch(ctx)
            except Exception as exc:
                self.failed(stage_name(stage), ctx.partition, span, exc)

    def first_trace(self, name: str, exc: BaseException) -> bool:
        """Whether to log this exception's traceback: once per (name, exception type), for MAX_TRACED pairs."""
        key = (name, type(exc))
        if key in self._traced or len(self._traced) >= MAX_TRACED:
            return False
        self._traced.add(key)
        return True

    def failed(self, name: str, partition: int, span: Span, exc: Exception) -> None:
        self.counts[name] += 1
        now = self.clock()
        first = self.first_trace(name, exc)
        if not first and now - self._logged_at.get(name, float("-inf")) < LOG_INTERVAL_SECONDS:
            self._quiet[name] += 1
            return
        quiet = self._quiet.pop(name, 0)
        self._logged_at[name] = now
        since = f" ({quiet} more failure(s) of this stage since its last line)" if quiet else ""
        log.error("stage %s raised on %s: %r%s; its outputs so far are kept, the later stages ran, the daemon "
                  "goes on (spendwatch_stage_errors_total{stage=%r})", name, describe(partition, span), exc, since,
                  name, exc_info=exc if first else None)
