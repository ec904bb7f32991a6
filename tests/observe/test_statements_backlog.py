"""Statements while the daemon catches up a backlog: the stage runs once per few seconds of event time, and a
run that closes no day must not read every row to find out."""

from __future__ import annotations

import random
from types import SimpleNamespace

from watcher.events.observation import Kind, Observation
from watcher.observe.statements import DAY_MS, StatementSettings, StatementStage
from watcher.pipeline.join import Delta
from watcher.pipeline.shard import Outcome

A = "0x" + "11" * 20
M = "0x" + "22" * 20
DAY = 20_415 * DAY_MS   # 2025-11-23T00:00Z


class ReadCounting(dict):
    """Rows that count how often they were read whole."""

    reads = 0

    def __iter__(self):
        ReadCounting.reads += 1
        return super().__iter__()

    def items(self):
        ReadCounting.reads += 1
        return super().items()


def _batch(stage, i, ts, now_ms, wall_ms, amount=5, merchant=M):
    eid = f"e{i}"
    o = Observation(kind=Kind.SETTLE, event_id=eid, dedupe_key=eid, ts_ms=ts, agent=A, merchant=merchant,
                    amount=amount, chain_id=8453, network="eip155:8453", asset=M, status="settled", tx=f"0x{i:x}")
    ctx = SimpleNamespace(partition=0, shard=None, outcome=Outcome(deltas=[Delta(A, "data", ts, amount, 1, eid)]),
                          observations=[o], now_ms=now_ms, wall_ms=wall_ms, decisions=[], publish=[])
    stage.on_batch(ctx)
    return ctx.publish


def test_a_backlog_run_that_closes_nothing_reads_no_rows():
    """10 s runs of a day's backlog (the wall clock stands still: no periodic publish): the rows are read
    when the first run learns when the day closes, then not again until it does (they were read every run)."""
    stage = StatementStage(StatementSettings(publish_interval_seconds=300, close_after_seconds=3600))
    _batch(stage, 0, DAY, DAY, wall_ms=DAY + 10 * DAY_MS)
    stage.parts[0].rows = ReadCounting(stage.parts[0].rows)
    ReadCounting.reads = 0
    for i in range(1, 200):
        assert _batch(stage, i, DAY + i * 10_000, DAY + i * 10_000, wall_ms=DAY + 10 * DAY_MS) == []
    assert ReadCounting.reads == 0
    (out,) = _batch(stage, 200, DAY + DAY_MS - 1, DAY + DAY_MS + 3_600_000, wall_ms=DAY + 10 * DAY_MS)
    assert ReadCounting.reads > 0 and b'"final":true' in out[2] and b'"count":201' in out[2]


def test_skipping_the_reads_publishes_what_reading_every_run_publishes():
    """Random backlogs over several days (late records, corrections of closed days, periodic publishes,
    retention) publish the same records and keep the same rows as a stage that reads every row every run."""
    for seed in range(30):
        rnd = random.Random(seed)
        settings = StatementSettings(publish_interval_seconds=rnd.choice([1, 60, 3600]),
                                     close_after_seconds=rnd.choice([0, 600, 3600, 2 * 86_400]),
                                     retain_days=rnd.choice([1, 2]))
        kept, every = StatementStage(settings), StatementStage(settings)
        now, wall = DAY, DAY
        for i in range(300):
            now += rnd.choice([0, 10_000, 600_000, 3_600_000, DAY_MS // 2])
            wall += rnd.choice([0, 1_000, 90_000])
            ts = now - rnd.choice([0, 0, 0, 60_000, DAY_MS, 2 * DAY_MS])   # some late records
            amount = rnd.choice([5, 7, -5])
            merchant = rnd.choice([M, "0x" + "33" * 20])
            if 0 in every.parts:
                every.parts[0].next_close_ms = 0   # read every row every run (as before)
            a = _batch(kept, i, ts, now, wall, amount, merchant)
            b = _batch(every, i, ts, now, wall, amount, merchant)
            assert a == b, (seed, i)
            assert kept.parts[0].rows == every.parts[0].rows and kept.parts[0].closed == every.parts[0].closed
