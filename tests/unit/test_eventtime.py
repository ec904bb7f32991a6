"""The clock a partition is judged by while the daemon catches up a backlog, and once it has caught up.

Pure parts (runs, lag, Clocks) with plain values; the daemon's choice through `Daemon._process` with a
stand-in consumer that reports highwater marks and positions as aiokafka does; the clocks the stages then
use: escalation deadlines from the wall clock, breakers by the partition's clock, latency by the wall clock.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import msgspec
import numpy as np
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from watcher.batch import BatchContext
from watcher.breaker import BreakerStage
from watcher.config import load_settings
from watcher.daemon import Daemon
from watcher.detect import Detector, Policy
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
POLICY = Policy.from_text("""
[defaults.caps]
per_minute_usdc = 5
[defaults.escalation]
payment_above_usdc = 2
timeout_seconds = 120
[defaults.anomaly]
enabled = false
fleet = false
""")


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
def test_escalation_deadline_of_a_backlog_event_runs_from_the_wall_clock():
    old, wall = 1_790_000_000_000, 1_790_000_180_000
    det = Detector(POLICY)
    shard = Shard()
    batch = [obs_at(old, 3 * U)]
    (esc,) = det.on_batch(shard.apply(batch), shard, old, batch, real_from_ms=wall)
    assert esc.kind == "escalate" and esc.at_ms == old          # the decision keeps its event's time
    assert det.pending[det.index[A]][0] == wall + 120_000       # old code: old + 120 s, past on arrival
    assert det.tick(old + 120_000) == [] and det.tick(wall + 119_999) == []
    assert [d.rule for d in det.tick(wall + 120_000)] == ["escalation_timeout"]

    live = Detector(POLICY)                                      # caught up: from the event's time, as before
    shard = Shard()
    live.on_batch(shard.apply(batch), shard, old, batch)
    assert live.pending[live.index[A]][0] == old + 120_000


def test_approval_during_catch_up_counts_from_the_wall_clock():
    old, wall = 1_790_000_000_000, 1_790_000_180_000
    det = Detector(POLICY)
    shard = Shard()
    batch = [obs_at(old, 3 * U)]
    det.on_batch(shard.apply(batch), shard, old, batch, real_from_ms=wall)
    assert det.approve(A)
    assert det.approved_until[det.index[A]] == wall + POLICY.defaults.escalation.approval_ttl_seconds * 1000


def test_breakers_tick_at_the_partitions_clock_and_cool_down_from_the_decision():
    """A backlog freeze cools down from its decision's time (the same records give the same webhook body);
    while catching up the breakers tick at event time, so the cool-down ends where the backlog reaches it."""
    old, wall = 1_790_000_000_000, 1_790_003_600_000           # the runaway an hour before the daemon reads it
    det = Detector(POLICY)
    shard = Shard()
    batch = [obs_at(old + i * 100, U, i) for i in range(7)]
    freeze = [d for d in det.on_batch(shard.apply(batch), shard, old, batch) if d.kind == "freeze"][0]
    stage = BreakerStage()
    cool = stage.timing.cooldown_ms
    ctx = BatchContext(0, shard, shard.apply([]), [], shard.watermark_ms, decisions=[freeze], wall_ms=wall,
                       catching_up=True)
    stage.on_batch(ctx)
    (opened,) = [msgspec.json.decode(v) for _, _, v in ctx.publish]
    assert opened["kind"] == "opened" and opened["breaker"]["reopen_ms"] == freeze.at_ms + cool
    ctx = BatchContext(0, shard, shard.apply([]), [], freeze.at_ms + cool - 1, wall_ms=wall, catching_up=True)
    stage.on_batch(ctx)
    assert stage.view(A)["state"] == "open"                    # old code ticked at the wall clock: half-open
    ctx = BatchContext(0, shard, shard.apply([]), [], freeze.at_ms + cool, wall_ms=wall, catching_up=True)
    stage.on_batch(ctx)
    assert stage.view(A)["state"] == "half_open"


def test_event_latency_is_measured_by_the_wall_clock_while_catching_up():
    old, wall = 1_790_000_000_000, 1_790_000_180_000
    metrics = Metrics(CollectorRegistry())
    shard = Shard()
    batch = [obs_at(old)]
    MetricsStage(metrics).on_batch(BatchContext(0, shard, shard.apply(batch), batch, old, wall_ms=wall,
                                                catching_up=True))
    hist = metrics.registry.get_sample_value("spendwatch_event_latency_seconds_sum")
    assert np.isclose(hist, 180.0)                               # old code: judged at the event's time, 0 s
