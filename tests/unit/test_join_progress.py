"""The chain bridge's `chain.progress` heartbeat: how far the bridge confirmed, told to every partition, so an
`unsettled` finding on a quiet partition (no other agent's transfers) is neither early nor an hour late."""

import msgspec

from tests.unit.test_shard import A, D, M, T, settle, transfer
from watcher.detect.detector import Detector
from watcher.detect.replay import Replay
from watcher.events import Kind
from watcher.pipeline.join import UNSETTLED_HOLD
from watcher.pipeline.shard import Shard, ShardConfig
from watcher.simulate.records import BASE_USDC, encode, fake_hash, progress_record

AFTER = 60_000
STRANGER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"


def progress(ts, block=None):
    return D.decode(encode(progress_record(ts_ms=ts, block_number=block if block is not None else ts // 2000)))


def test_a_quiet_partition_gets_its_finding_once_progress_passes_the_settle():
    sh = Shard(ShardConfig(unsettled_after_ms=AFTER))
    # the bridge runs and watches the agent (it published one of its transfers, long ago); nothing else here
    sh.apply([settle(0, ts=T - 40_000), transfer(0, status="confirmed", ts=T - 40_000), progress(T - 30_000)])
    sh.apply([settle(1)])
    assert sh.advance(T + AFTER + 1) == []                    # the bridge has not confirmed past the settle yet
    sh.apply([progress(T - 2_000)])                           # still older than the settle: held
    assert sh.advance(T + 3 * AFTER) == []
    out = sh.apply([progress(T + 4_000)])                     # the bridge confirmed past it, and not its transfer
    assert [(f.kind, f.tx.lower()) for f in out.findings] == [("unsettled", fake_hash(1).lower())]
    assert sh.advance(T + (UNSETTLED_HOLD + 2) * AFTER) == []  # once


def test_progress_newer_than_the_settle_makes_the_finding_due_at_its_deadline():
    sh = Shard(ShardConfig(unsettled_after_ms=AFTER))
    sh.apply([settle(0, ts=T - 40_000), transfer(0, status="confirmed", ts=T - 40_000)])   # long before
    sh.apply([settle(1), progress(T + 2_000)])              # the bridge confirmed past the settle: no hold
    assert sh.advance(T + AFTER - 1) == []
    assert [f.kind for f in sh.advance(T + AFTER)] == ["unsettled"]


def test_progress_makes_no_agent_no_spend_no_signal_and_no_dedupe_entry():
    sh = Shard()
    det = Detector()
    batch = [progress(T), progress(T), progress(T + 2_000)]   # a redelivery, too: harmless
    out = sh.apply(batch)
    assert out.processed == 3 and out.duplicates == 0
    assert out.deltas == [] and out.signals == [] and out.findings == []
    assert len(sh.seen) == 0 and len(sh.join) == 0 and len(sh.agents.index) == 0
    assert sh.join.chains_seen == {8453} and sh.join.confirmed_upto == {(8453, BASE_USDC): T + 2_000}
    assert sh.watermark_ms == T + 2_000                        # chain time moves the clock like any record
    assert det.on_batch(out, sh, T + 2_000, batch) == [] and det.agents == []
    assert all(o.kind == Kind.PROGRESS and not o.is_spend for o in batch)


def test_progress_never_moves_back():
    sh = Shard()
    sh.apply([progress(T + 5_000), progress(T)])
    assert sh.join.confirmed_upto == {(8453, BASE_USDC): T + 5_000}


def test_a_held_settle_survives_a_checkpoint_and_old_checkpoints_restore():
    cfg = ShardConfig(unsettled_after_ms=AFTER)
    sh = Shard(cfg)
    sh.apply([settle(0, ts=T - 40_000), transfer(0, status="confirmed", ts=T - 40_000), progress(T - 30_000),
              settle(1)])
    assert sh.advance(T + AFTER + 1) == []                     # held
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(sh.snapshot()))
    back = Shard.restore(snap, cfg)
    assert [f.kind for f in back.apply([progress(T + 2_000)]).findings] == ["unsettled"]
    old = dict(snap, join={k: v for k, v in snap["join"].items() if k != "held"})   # from before `held`
    legacy = Shard.restore(old, cfg)
    legacy.apply([progress(T + 2_000)])
    assert [f.kind for f in legacy.advance(T + (UNSETTLED_HOLD + 1) * AFTER)] == ["unsettled"]


def test_held_memory_is_bounded_by_the_payment_memory():
    sh = Shard(ShardConfig(unsettled_after_ms=AFTER, dedupe_horizon_ms=3_600_000))
    sh.apply([settle(100, ts=T - 40_000), transfer(100, status="confirmed", ts=T - 40_000), progress(T - 30_000)])
    sh.apply([settle(i, ts=T + i * 1000) for i in range(20)])
    sh.advance(T + AFTER + 30_000)
    assert len(sh.join.bridges.held[(8453, BASE_USDC)]) > 0
    sh.advance(T + 3 * 3_600_000 + 30_000)                     # the bridge never came back
    assert sh.join.bridges.held[(8453, BASE_USDC)] == []
    sh.advance(T + 5 * 3_600_000 + 30_000)
    assert len(sh.join.bridges.bridged) == 0                           # the agent is forgotten too, later


# -- heartbeats vouch for the bridge's watched wallets only -------------------------------------------

def _stranger_settle(i, ts=T):
    from watcher.simulate.records import settle_record
    return D.decode(encode(settle_record(event_id=f"x{i}", ts_ms=ts, payer=STRANGER, pay_to=M, amount=100,
                                         tx=fake_hash("stranger", i))))


def test_heartbeats_never_make_an_unwatched_agent_unsettled_on_a_quiet_partition():
    """Only heartbeats on this partition, and a settle of an agent the bridge never published a transfer of
    (it does not watch it): no finding, ever (as before heartbeats: no chain record, no judgement)."""
    sh = Shard(ShardConfig(unsettled_after_ms=AFTER))
    sh.apply([progress(T - 30_000), _stranger_settle(1)])
    sh.apply([progress(T + 4_000)])                                    # past the settle
    found = sh.advance(T + AFTER + 1) + sh.advance(T + (UNSETTLED_HOLD + 2) * AFTER)
    found += sh.apply([progress(T + (UNSETTLED_HOLD + 2) * AFTER)]).findings
    assert found == []


def test_heartbeats_do_not_judge_an_unwatched_agent_beside_a_watched_one():
    """A watched agent's transfers on the partition: the unwatched agent's settle is judged only as it was
    before heartbeats (a confirmed transfer past it, or the end of the hold), never because of a heartbeat."""
    sh = Shard(ShardConfig(unsettled_after_ms=AFTER))
    sh.apply([settle(0, ts=T - 40_000), transfer(0, status="confirmed", ts=T - 40_000)])   # watched agent A
    sh.apply([_stranger_settle(1), settle(2, ts=T + 1_000)])          # the stranger's, and A's (never mined)
    out = sh.apply([progress(T + 4_000)])                              # vouches past both settles
    found = out.findings + sh.advance(T + AFTER + 1_001) + sh.advance(T + 3 * AFTER)
    assert [(f.kind, f.agent) for f in found] == [("unsettled", A)]   # A's only: the bridge watches A
    found = sh.apply([transfer(3, status="confirmed", ts=T + 5_000)]).findings + sh.advance(T + 4 * AFTER)
    assert [(f.kind, f.agent) for f in found] == [("unsettled", STRANGER)]   # a confirmed transfer: as before


def test_replay_uses_progress_lines_like_the_daemon():
    lines = [encode(progress_record(ts_ms=T - 30_000, block_number=1)), encode(progress_record(
        ts_ms=T, block_number=2)).replace(b"chain.progress", b"chain.progres")]   # a bad line is rejected
    from watcher.simulate.records import settle_record, transfer_record
    lines.append(encode(settle_record(event_id="s0", ts_ms=T - 20_000, payer=A, pay_to=M, amount=100,
                                      tx=fake_hash(0))))
    lines.append(encode(transfer_record(ts_ms=T - 20_000, payer=A, to=M, amount=100, tx=fake_hash(0),
                                        status="confirmed")))   # the bridge watches A
    lines.append(encode(settle_record(event_id="s1", ts_ms=T + 1_000, payer=A, pay_to=M, amount=100,
                                      tx=fake_hash(1))))
    lines.append(encode(progress_record(ts_ms=T + 5_000, block_number=3)))
    rp = Replay(shard_config=ShardConfig(unsettled_after_ms=AFTER))
    decisions = list(rp.run(lines, drain_ms=AFTER))
    assert rp.stats.events == 5 and rp.stats.rejected == {"bad_schema": 1}
    assert [d.rule for d in decisions] == ["finding.unsettled"]
    assert rp.shard.join.confirmed_upto == {(8453, BASE_USDC): T + 5_000} and rp.detector.agents == [A]


def test_progress_of_one_chain_decides_nothing_on_another():
    """Two bridges (Base and Ethereum) on one partition: each chain's heartbeat moves only its own chain."""
    from watcher.simulate.records import settle_record, transfer_record
    eth_usdc = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"

    def eth_settle(i, ts):
        return D.decode(encode(settle_record(event_id=f"e{i}", ts_ms=ts, payer=A, pay_to=M, amount=100,
                                             tx=fake_hash("eth", i), network="eip155:1", asset=eth_usdc)))

    def eth_transfer(i, ts):
        return D.decode(encode(transfer_record(ts_ms=ts, payer=A, to=M, amount=100, tx=fake_hash("eth", i),
                                               status="confirmed", chain_id=1, token=eth_usdc, authorizer=A)))

    sh = Shard(ShardConfig(unsettled_after_ms=AFTER))
    sh.apply([settle(0, ts=T - 40_000), transfer(0, status="confirmed", ts=T - 40_000),     # Base: A watched
              eth_settle(0, T - 40_000), eth_transfer(0, T - 40_000)])                      # Ethereum too
    sh.apply([settle(1), eth_settle(1, T)])                    # neither is mined
    found = sh.apply([progress(T + 4_000)]).findings + sh.advance(T + AFTER + 1)   # Base's bridge only
    assert [(f.kind, f.chainId) for f in found] == [("unsettled", 8453)]
    assert sh.join.confirmed_upto == {(8453, BASE_USDC): T + 4_000, (1, eth_usdc): T - 40_000}
    eth_progress = D.decode(encode(progress_record(ts_ms=T + 6_000, block_number=7, chain_id=1, token=eth_usdc)))
    assert [(f.kind, f.chainId) for f in sh.apply([eth_progress]).findings] == [("unsettled", 1)]
