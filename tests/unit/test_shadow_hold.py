"""A confirmed transfer whose settle is simply not read yet, while a partition catches up: its two input topics
are read as fetched, so the chain topic (and the watermark with it) can run far ahead of the payments topic.
The shard holds such a shadow until the payments topic is read past its grace (`hold_shadows`), or the
partition has caught up (`advance`). The reviewer's case: 20 settles every 30 s, each confirmed by a transfer
5 s later, the chain records applied first: the old code reported 16 false `shadow_spend` findings."""

from __future__ import annotations

import asyncio
import time
import msgspec
from aiokafka import TopicPartition

from tests.unit.test_eventtime import FakeConsumer, record
from tests.unit.test_shard import A, D, M, T
from watcher.config import load_settings
from watcher.daemon import Daemon
from watcher.pipeline import Shard
from watcher.pipeline.eventtime import event_runs
from watcher.simulate.records import encode, fake_hash, settle_record, transfer_record

N, EVERY, LAG = 20, 30_000, 5_000
MISSING = 3   # the payment whose settle never comes, in the tests that need a real shadow


def settle_rec(i: int, t0: int = T) -> bytes:
    return encode(settle_record(event_id=f"s{i}", ts_ms=t0 + i * EVERY, payer=A, pay_to=M, amount=100,
                                tx=fake_hash("hold", i)))


def transfer_rec(i: int, t0: int = T) -> bytes:
    return encode(transfer_record(ts_ms=t0 + i * EVERY + LAG, payer=A, to=M, amount=100, tx=fake_hash("hold", i),
                                  status="confirmed", block_number=i + 1, authorizer=A))


def backlog(skip: int | None = None, t0: int = T):
    """(payments, chain) observations of the reviewer's case; `skip`: a payment with no settle."""
    return ([D.decode(settle_rec(i, t0)) for i in range(N) if i != skip],
            [D.decode(transfer_rec(i, t0)) for i in range(N)])


def apply_in_runs(sh: Shard, obs, hold: bool) -> list:
    found = []
    for run in event_runs(obs):
        found += sh.apply(list(run), hold_shadows=hold).findings
    return found


def shadows(found) -> list[str]:
    return [f.tx for f in found if f.kind == "shadow_spend"]


def test_chain_read_ahead_of_settles_reports_no_shadow_spend_while_catching_up():
    payments, chain = backlog()
    sh = Shard()
    found = apply_in_runs(sh, chain, hold=True)
    assert found == [] and len(sh.join.held_shadows) == 16    # old code: 16 shadow_spend findings here
    found += apply_in_runs(sh, payments, hold=True)
    found += sh.advance(T + 3_600_000)                          # caught up: every held shadow judged
    assert shadows(found) == [] and sh.join.held_shadows == []
    assert sh.payments_upto == T + (N - 1) * EVERY


def test_without_hold_a_chain_read_ahead_still_reports_as_before():
    payments, chain = backlog()
    sh = Shard()
    found = apply_in_runs(sh, chain, hold=False) + apply_in_runs(sh, payments, hold=False)
    assert len(shadows(found)) == 16 and sh.join.held_shadows == []   # replay, eval, live: unchanged


def test_a_held_shadow_with_no_settle_is_reported_once_the_settles_are_read_past_it():
    payments, chain = backlog(skip=MISSING)
    sh = Shard()
    assert apply_in_runs(sh, chain, hold=True) == []
    found = apply_in_runs(sh, payments, hold=True)
    assert shadows(found) == [fake_hash("hold", MISSING)]
    assert shadows(sh.advance(T + 3_600_000)) == []             # reported once


def test_a_held_shadow_is_reported_once_the_partition_has_caught_up():
    _, chain = backlog()
    sh = Shard()
    assert apply_in_runs(sh, chain, hold=True) == []             # no settle read at all: every shadow held
    assert len(sh.join.held_shadows) == 16
    assert shadows(sh.advance(T + 3_600_000)) == [fake_hash("hold", i) for i in range(N)]   # and the 4 not due
    assert sh.join.held_shadows == []


def test_held_shadows_survive_a_checkpoint_and_an_old_checkpoint_restores_none_held():
    payments, chain = backlog(skip=MISSING)
    sh = Shard()
    apply_in_runs(sh, chain[:10], hold=True)
    apply_in_runs(sh, payments[:2], hold=True)
    held, upto = sorted(sh.join.held_shadows), sh.payments_upto
    assert held and upto == T + EVERY
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(sh.snapshot()))
    back = Shard.restore(snap)
    assert (sorted(back.join.held_shadows), back.payments_upto) == (held, upto)
    found = apply_in_runs(back, chain[10:], hold=True) + apply_in_runs(back, payments[2:], hold=True)
    found += back.advance(T + 3_600_000)
    assert shadows(found) == [fake_hash("hold", MISSING)]

    del snap["payments_upto"]                                   # a checkpoint from before the hold
    for key in ("held_shadows", "held_shadows_dropped"):
        del snap["join"][key]
    old = Shard.restore(snap)
    assert (old.payments_upto, old.join.held_shadows, old.join.held_shadows_dropped) == (0, [], 0)


def test_held_shadows_are_bounded_and_the_one_due_first_is_judged_at_once():
    _, chain = backlog()
    sh = Shard()
    sh.join.max_entries = 4
    found = apply_in_runs(sh, chain, hold=True)
    assert len(sh.join.held_shadows) == 4 and sh.join.held_shadows_dropped == 12
    assert shadows(found) == [fake_hash("hold", i) for i in range(12)]   # as before the hold: nothing lost


# -- the daemon passes hold_shadows for a partition that catches up -------------------------------------------
class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic, value, key=None, headers=None):
        self.sent.append((topic, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def test_daemon_holds_shadows_of_a_partition_catching_up_until_its_settles_are_read():
    s = load_settings(None, kafka={"partitions": 1})
    d = Daemon(s, stages=[])
    pay, chain = TopicPartition(s.kafka.payments_topic, 0), TopicPartition(s.kafka.chain_topic, 0)
    d.consumer = FakeConsumer()
    d.consumer.hw.update({pay: N, chain: N})
    d.consumer.pos.update({pay: 0, chain: N})
    d.producer = FakeProducer()
    d.shards[0] = d._new_shard()
    d.covered[0] = {}
    t0 = (int(time.time() * 1000) - 3_600_000) // 10_000 * 10_000    # an hour ago
    # getmany filled the first batch from the chain topic alone: all its transfers, no settle yet
    await d._process({chain: [record(chain, i, transfer_rec(i, t0)) for i in range(N)]})
    assert d.counters.findings == 0                              # old code: 16 shadow_spend findings
    d.consumer.pos[pay] = N
    await d._process({pay: [record(pay, i, settle_rec(i, t0)) for i in range(N)]})
    await d._process({})                                         # caught up: advanced to the wall clock
    assert 0 in d.clocks.live and d.shards[0].join.held_shadows == []
    assert [t for t, _ in d.producer.sent if t == s.kafka.findings_topic] == []


async def test_daemon_judges_held_shadows_once_the_payments_topic_is_read_though_the_chain_is_not():
    # the tap is down (its topic all read), the chain topic has a backlog: no settle is coming for these
    s = load_settings(None, kafka={"partitions": 1})
    d = Daemon(s, stages=[])
    pay, chain = TopicPartition(s.kafka.payments_topic, 0), TopicPartition(s.kafka.chain_topic, 0)
    d.consumer = FakeConsumer()
    d.consumer.hw.update({pay: 0, chain: 10 * N})
    d.consumer.pos.update({pay: 0, chain: N})
    d.producer = FakeProducer()
    d.shards[0] = d._new_shard()
    d.covered[0] = {}
    t0 = (int(time.time() * 1000) - 3_600_000) // 10_000 * 10_000
    await d._process({chain: [record(chain, i, transfer_rec(i, t0)) for i in range(N)]})
    assert 0 not in d.clocks.live and d.counters.findings == 16      # as without the hold
    assert d.shards[0].join.held_shadows == []
