"""A chain bridge that stops confirming anything must not turn every settle into an `unsettled` finding."""

import msgspec

from watcher.simulate.records import fake_hash

from tests.unit.test_shard import T, settle, transfer
from watcher.pipeline.join import UNSETTLED_HOLD
from watcher.pipeline.shard import Shard, ShardConfig

AFTER = 60_000


def test_bridge_outage_holds_unsettled_then_reports_after_the_hold():
    sh = Shard(ShardConfig(unsettled_after_ms=AFTER))
    sh.apply([settle(1), transfer(1, status="confirmed")])                 # the bridge works ...
    sh.apply([settle(i, ts=T + 10_000 + i) for i in range(2, 6)])           # ... then confirms nothing more
    assert sh.advance(T + 10_000 + 5 * AFTER) == []                         # held: the bridge may be down
    found = sh.advance(T + 10_000 + (UNSETTLED_HOLD + 1) * AFTER)           # the hold has an end
    assert sorted(f.kind for f in found) == ["unsettled"] * 4


def test_bridge_recovering_settles_held_payments_without_findings():
    sh = Shard(ShardConfig(unsettled_after_ms=AFTER))
    sh.apply([settle(1), transfer(1, status="confirmed")])
    sh.apply([settle(2, ts=T + 10_000)])
    assert sh.advance(T + 10_000 + 3 * AFTER) == []
    # the bridge catches up: the held payment's own transfer arrives late
    sh.apply([transfer(2, status="confirmed", ts=T + 10_500)])
    assert sh.advance(T + 10_000 + (UNSETTLED_HOLD + 2) * AFTER) == []


def test_a_payment_missing_while_the_bridge_confirms_later_ones_is_reported_on_time():
    sh = Shard(ShardConfig(unsettled_after_ms=AFTER))
    sh.apply([settle(1), transfer(1, status="confirmed"), settle(2, ts=T + 1000)])
    sh.apply([settle(3, ts=T + 2000), transfer(3, status="confirmed", ts=T + 2500)])   # later, confirmed
    found = sh.advance(T + 1000 + AFTER + 1)
    assert [(f.kind, f.tx.lower()) for f in found] == [("unsettled", fake_hash(2).lower())]


def test_hold_survives_a_checkpoint():
    sh = Shard(ShardConfig(unsettled_after_ms=AFTER))
    sh.apply([settle(1), transfer(1, status="confirmed"), settle(2, ts=T + 10_000)])
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(sh.snapshot()))
    back = Shard.restore(snap, ShardConfig(unsettled_after_ms=AFTER))
    assert back.advance(T + 10_000 + 3 * AFTER) == []
    old = dict(snap, join={k: v for k, v in snap["join"].items() if k not in ("confirmed_upto", "streams")})
    legacy = Shard.restore(old, ShardConfig(unsettled_after_ms=AFTER))     # a checkpoint from before the hold
    assert [f.kind for f in legacy.advance(T + 10_000 + AFTER + 1)] == ["unsettled"]   # known before: as it was
    legacy.apply([settle(3, ts=T + 20 * AFTER)])                            # a later outage is held again
    assert legacy.advance(T + 23 * AFTER) == []
    assert legacy.snapshot()["join"]["confirmed_upto"][0][1] < 2**62
