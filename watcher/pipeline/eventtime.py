"""Judging by event time: where a stream of observations is cut into batches, and which clock a
partition's batch is judged by.

A window rule is checked at the end of a batch, over the payments of the batch still inside the window
then. A batch that spans more event time than a window would let a payment early in it fall out of the
window before it is checked, so a burst that crossed a 1m cap inside the batch would go unseen. Replay
(watcher/detect/replay.py) and the daemon while it catches up a backlog therefore cut batches where event
time enters a new CUT_MS bucket (the finest bucket of the default windows): within a batch every payment
is in the same bucket, and the rules are exact.

The clock of a partition (`PartitionClock`), chosen by the daemon per batch:

    caught up (nothing left to read on any of its input topics at the previous batch)
        now_ms = the wall clock: the shard is advanced to it, so idle partitions age and sweep
    catching up (records still to read, or not known yet: just assigned, never fetched)
        now_ms = the shard's own event time (its watermark): the shard is not advanced, and decisions are
        those replay makes over the same records; a confirmed transfer's `shadow_spend` deadline waits for
        the payments topic to be read past it (`Clocks.catching_up`, `Shard.apply(hold_shadows=True)`)

`BatchContext.real_from_ms` (watcher/batch.py) is where the time a person gets to answer an escalation
starts: for a question about events that are already old (catching up) at the wall clock, so its deadline
is never past on arrival; caught up, at the event's own time (0: no floor), so live decisions do not depend
on when a batch happened to run. Everything else (windows, cool-downs of warnings and of breakers, the
webhook bodies) follows event time, so the same records give the same decisions and bodies.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, NamedTuple, Sequence

from watcher.events.observation import Observation

CUT_MS = 10_000
log = logging.getLogger("watcher.daemon")


def event_runs(batch: Sequence[Observation], cut_ms: int = CUT_MS) -> Iterator[Sequence[Observation]]:
    """Consecutive runs of `batch`, cut before each observation whose event time enters a later `cut_ms`
    bucket than any before it (an older one stays in the run: late records do not cut). An empty batch is
    one empty run."""
    start, top = 0, None
    for i, obs in enumerate(batch):
        b = obs.ts_ms // cut_ms
        if top is None or b > top:
            if i > start:
                yield batch[start:i]
                start = i
            top = b
    yield batch[start:]


def records_left(highwater: int | None, position: int | None) -> bool:
    """A topic partition still has records to read: its position is below the highwater mark, or either
    is not known yet (no fetch answered since it was assigned). A topic that never had a record has
    highwater 0 and position 0: nothing left."""
    return highwater is None or position is None or position < highwater


class PartitionClock(NamedTuple):
    now_ms: int          # what the partition's stages judge by
    wall_ms: int         # the real time of the batch
    catching_up: bool


class Clocks:
    """Which owned partitions have caught up, and the clock of each partition's batch. A partition's records
    are judged by what was known at the previous batch (the last records of a backlog are still backlog);
    after the batch, `update` says whether anything is left to read. Without a live clock (benchmarks,
    tests) every batch is judged by event time, with no floor for real-world durations."""

    def __init__(self, live_clock: bool = True) -> None:
        self.live_clock = live_clock
        self.live: set[int] = set()
        self._announced: set[int] = set()   # caught up once since assigned (said at INFO once)

    def of(self, p: int, watermark_ms: int, wall_ms: int) -> PartitionClock:
        if not self.live_clock:
            return PartitionClock(watermark_ms, wall_ms, False)
        if p in self.live:
            return PartitionClock(wall_ms, wall_ms, False)
        return PartitionClock(watermark_ms, wall_ms, True)

    def catching_up(self, p: int) -> bool:
        """Partition p's batch is judged by its own event time (records were left to read): its shadow
        deadlines wait for the payments topic (`Shard.apply(hold_shadows=True)`). Never without a live clock:
        nothing would judge what was held."""
        return self.live_clock and p not in self.live

    def update(self, behind: Iterable[int], owned: Iterable[int]) -> None:
        """After a batch: `behind` have records left to read, the other `owned` partitions have caught up."""
        if not self.live_clock:
            return
        behind = set(behind)
        for p in owned:
            if p in behind and p in self.live:   # common under steady traffic: said at DEBUG only
                self.live.discard(p)
                log.debug("partition %d: records left to read; judged by their own time until read", p)
            elif p not in behind and p not in self.live:
                self.live.add(p)
                first = p not in self._announced
                self._announced.add(p)
                log.log(logging.INFO if first else logging.DEBUG, "partition %d: caught up%s; judged by the wall "
                        "clock", p, " with its backlog" if first else "")

    def forget(self, p: int) -> None:
        self.live.discard(p)
        self._announced.discard(p)
