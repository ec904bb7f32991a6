"""The clock a partition is judged by while the daemon catches up a backlog, and once it has caught up.

Pure parts (runs, lag, Clocks) with plain values; the daemon's choice through `Daemon._process` with a
stand-in consumer that reports highwater marks and positions as aiokafka does; the clocks the stages then
use for deadlines (detector escalations, breaker cool-downs) and for real-time figures (latency, statements).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from watcher.batch import BatchContext
from watcher.config import load_settings
from watcher.daemon import Daemon
from watcher.events import Decoder
from watcher.metrics import Metrics
from watcher.observe.stage import MetricsStage
from watcher.pipeline import Shard
from watcher.pipeline.eventtime import Clocks, event_runs, records_left
from watcher.simulate.records import encode, fake_hash, settle_record

A = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
M = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
U = 1_000_000
D = Decoder(max_future_skew_ms=None)


def obs_at(ts_ms: int, amount: int = U, i: int = 0):
    return D.decode(encode(settle_record(event_id=f"e{ts_ms}-{i}", ts_ms=ts_ms, payer=A, pay_to=M, amount=amount,
                                         tx=fake_hash(ts_ms, i))))


# -- pure parts --------------------------------------------------------------------------------------------
def test_runs_are_cut_where_event_time_enters_a_later_bucket():
    t = 1_790_000_000_000  # a multiple of 10 s
    batch = [obs_at(t + 1), obs_at(t + 9_000), obs_at(t + 10_000), obs_at(t + 2_000), obs_at(t + 35_000)]
    assert [[o.ts_ms - t for o in run] for run in event_runs(batch)] == [[1, 9_000], [10_000, 2_000], [35_000]]
    assert list(event_runs([])) == [[]]


def test_records_left_unknown_counts_as_behind_and_an_empty_topic_as_read():
    assert records_left(None, None) and records_left(10, None) and records_left(10, 3)
    assert not records_left(10, 10)
    assert not records_left(0, 0)      # a topic partition that never had a record


def test_clocks_event_time_until_caught_up_then_the_wall_clock():
    c = Clocks()
    assert c.of(0, 100, 5_000) == (100, 5_000, True)       # just assigned: not known, so catching up
    c.update(behind={0}, owned=[0, 1])
    assert c.of(0, 100, 5_000).catching_up and not c.of(1, 100, 5_000).catching_up
    assert c.of(1, 100, 5_000) == (5_000, 5_000, False)
    c.update(behind={1}, owned=[0, 1])                      # records arrived faster than read
    assert c.of(1, 100, 5_000) == (100, 5_000, True) and c.of(0, 100, 5_000).now_ms == 5_000
    c.forget(0)
    assert c.of(0, 100, 5_000).catching_up
    replay_like = Clocks(live_clock=False)
    replay_like.update(behind=set(), owned=[0])
    assert replay_like.of(0, 100, 5_000) == (100, 5_000, False)   # event time, no floor for deadlines


# -- the daemon's choice -------------------------------------------------------------------------------------
class FakeConsumer:
    """What `_process` asks of aiokafka: highwater (None until a fetch answered) and position per partition."""

    def __init__(self) -> None:
        self.hw: dict[TopicPartition, int | None] = {}
        self.pos: dict[TopicPartition, int] = {}

    def highwater(self, tp):
        return self.hw.get(tp)

    async def position(self, tp):
        return self.pos[tp]

    def assignment(self):
        return set(self.hw)

    async def commit(self, offsets):
        pass


class Recording:
    def __init__(self) -> None:
        self.seen: list[tuple[int, int, bool, int]] = []

    def on_batch(self, ctx) -> None:
        self.seen.append((ctx.now_ms, ctx.wall_ms, ctx.catching_up, ctx.real_from_ms))


def record(tp: TopicPartition, offset: int, value: bytes):
    return SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=offset, key=None, value=value, headers=())


async def test_daemon_judges_a_backlog_by_event_time_and_ages_by_the_wall_clock_once_caught_up():
    s = load_settings(None, kafka={"partitions": 1})
    stage = Recording()
    d = Daemon(s, stages=[stage])
    d.consumer = FakeConsumer()
    d.shards[0] = d._new_shard()
    d.covered[0] = {}
    pay, chain = TopicPartition(s.kafka.payments_topic, 0), TopicPartition(s.kafka.chain_topic, 0)
    old = (int(time.time() * 1000) - 180_000) // 10_000 * 10_000     # three minutes ago, at a bucket start
    burst = [encode(settle_record(event_id=f"b{i}", ts_ms=old + i * 500, payer=A, pay_to=M, amount=U,
                                  tx=fake_hash("b", i))) for i in range(8)]

    # a backlog of 20 records on the payments topic, 8 read so far; the chain topic never had a record
    d.consumer.hw.update({pay: 20, chain: 0})
    d.consumer.pos.update({pay: 8, chain: 0})
    before = int(time.time() * 1000)
    await d._process({pay: [record(pay, i, v) for i, v in enumerate(burst)]})
    assert d.shards[0].watermark_ms == old + 7 * 500            # not advanced to the wall clock
    now_ms, wall_ms, catching_up, real_from = stage.seen[-1]
    assert (now_ms, catching_up) == (old + 7 * 500, True)       # old code: now_ms was the wall clock
    assert wall_ms >= before and real_from == wall_ms
    sums, _ = d.shards[0].agent_totals(A)
    assert sums[0] == 8 * U                                     # the 1m window holds the whole burst

    # everything read: from this batch on the partition is caught up, advanced and judged by the wall clock
    d.consumer.pos[pay] = 20
    stage.seen.clear()
    before = int(time.time() * 1000)
    await d._process({})
    assert d.shards[0].watermark_ms >= before
    now_ms, wall_ms, catching_up, real_from = stage.seen[-1]
    assert now_ms == wall_ms >= before and not catching_up and real_from == 0
    assert d.shards[0].agent_totals(A)[0][0] == 0               # idle: the burst aged out of the 1m window


async def test_a_partition_not_fetched_yet_is_not_advanced():
    s = load_settings(None, kafka={"partitions": 1})
    d = Daemon(s, stages=[Recording()])
    d.consumer = FakeConsumer()
    d.shards[0] = d._new_shard()
    d.covered[0] = {}
    await d._process({})                                         # no fetch answered: highwater unknown
    assert d.shards[0].watermark_ms == 0 and 0 not in d.clocks.live


# -- what the stages do with the clocks ------------------------------------------------------------------------
def test_event_latency_is_measured_by_the_wall_clock_while_catching_up():
    old, wall = 1_790_000_000_000, 1_790_000_180_000
    metrics = Metrics(CollectorRegistry())
    shard = Shard()
    batch = [obs_at(old)]
    MetricsStage(metrics).on_batch(BatchContext(0, shard, shard.apply(batch), batch, old, wall_ms=wall,
                                                catching_up=True))
    hist = metrics.registry.get_sample_value("spendwatch_event_latency_seconds_sum")
    assert np.isclose(hist, 180.0)                               # old code: judged at the event's time, 0 s
