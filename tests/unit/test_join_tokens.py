"""What a heartbeat vouches for: one bridge (a token on a chain), from the first block it read on; and the
settles held for the bridges stay bounded. Old checkpoints and heartbeats of older bridges still work."""

import json
import logging
from pathlib import Path

import msgspec

from tests.unit.test_join_progress import AFTER, STRANGER, _stranger_settle
from tests.unit.test_shard import A, D, M, T, settle, transfer
from watcher.pipeline.join import UNSETTLED_HOLD
from watcher.pipeline.shard import Shard, ShardConfig
from watcher.simulate.records import BASE_USDC, encode, fake_hash, progress_record, settle_record, transfer_record

OTHER_TOKEN = "0x50c5725949A6F0c72E6C4a641F24049A917DB0Cb"   # a second token on the same chain (DAI on Base)
OLD_CHECKPOINT = Path(__file__).parent / "data" / "join_checkpoint_before_tokens.json"
HOLD_END = (UNSETTLED_HOLD + 2) * AFTER


def progress(ts, block=None, token=BASE_USDC, read_from=None, watches_all=None):
    return D.decode(encode(progress_record(ts_ms=ts, block_number=block if block is not None else ts // 2000,
                                           token=token, read_from=read_from, watches_all=watches_all)))


def other_settle(i, ts=T, payer=A):
    return D.decode(encode(settle_record(event_id=f"o{i}", ts_ms=ts, payer=payer, pay_to=M, amount=100,
                                         tx=fake_hash("other", i), asset=OTHER_TOKEN)))


def other_transfer(i, ts=T):
    return D.decode(encode(transfer_record(ts_ms=ts, payer=A, to=M, amount=100, tx=fake_hash("other", i),
                                           status="confirmed", token=OTHER_TOKEN, authorizer=A)))


def kinds(found, kind="unsettled"):
    return [(f.kind, f.tx.lower()) for f in found if f.kind == kind]


def watched_shard(**cfg) -> Shard:
    """The USDC bridge runs and watches A: one of its transfers, long ago."""
    sh = Shard(ShardConfig(unsettled_after_ms=AFTER, **cfg))
    sh.apply([settle(0, ts=T - 400_000), transfer(0, status="confirmed", ts=T - 400_000)])
    return sh


# -- 1. a heartbeat vouches for blocks its bridge read, not for earlier ones -------------------------------

def test_a_settle_from_before_the_bridge_read_is_never_made_unsettled_by_its_heartbeats():
    """The bridge started reading at block time T + 10 s: a settle at T (its block never read) is not judged,
    a settle after it is, at its deadline."""
    sh = watched_shard()
    sh.apply([settle(1), settle(2, ts=T + 20_000)])                    # neither is mined
    sh.apply([progress(T + 30_000, read_from=(500, T + 10_000))])       # past both settles
    found = sh.advance(T + 20_000 + AFTER + 1) + sh.advance(T + HOLD_END)
    found += sh.apply([transfer(3, status="confirmed", ts=T + HOLD_END)]).findings + sh.advance(T + 2 * HOLD_END)
    assert kinds(found) == [("unsettled", fake_hash(2).lower())]


def test_without_read_from_a_heartbeat_vouches_as_before():
    """A bridge whose checkpoint predates readFrom names none: its heartbeat vouches for every settle."""
    sh = watched_shard()
    sh.apply([settle(1), progress(T + 30_000)])
    assert kinds(sh.advance(T + AFTER + 1)) == [("unsettled", fake_hash(1).lower())]


def test_read_from_survives_a_checkpoint():
    sh = watched_shard()
    sh.apply([settle(1), progress(T + 15_000, read_from=(500, T + 10_000))])
    back = Shard.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(sh.snapshot())),
                         ShardConfig(unsettled_after_ms=AFTER))
    back.apply([progress(T + 30_000)])                                   # this one names no readFrom: kept
    assert kinds(back.advance(T + AFTER + 1) + back.advance(T + HOLD_END)) == []


# -- 2. one bridge per token: two tokens on one chain never vouch for each other -------------------------

def test_a_heartbeat_of_one_token_decides_nothing_for_another_token_on_the_same_chain():
    sh = watched_shard()
    sh.apply([other_settle(0, ts=T - 400_000), other_transfer(0, ts=T - 400_000)])   # the other bridge watches A
    sh.apply([settle(1), other_settle(1)])                              # neither is mined
    found = sh.apply([progress(T + 4_000)]).findings + sh.advance(T + AFTER + 1)      # the USDC bridge's only
    assert kinds(found) == [("unsettled", fake_hash(1).lower())]
    assert sh.join.confirmed_upto == {(8453, BASE_USDC): T + 4_000, (8453, OTHER_TOKEN): T - 400_000}
    found = sh.apply([progress(T + 6_000, token=OTHER_TOKEN)]).findings + sh.advance(T + AFTER + 2)
    assert kinds(found) == [("unsettled", fake_hash("other", 1).lower())]


def test_transfers_of_one_token_tell_nothing_about_settles_of_another():
    """No bridge of the other token runs: its settles are never judged, whatever the USDC bridge confirms."""
    sh = watched_shard()
    sh.apply([other_settle(1), other_settle(2, payer=STRANGER)])
    sh.apply([transfer(3, status="confirmed", ts=T + 5_000), progress(T + 6_000)])
    assert kinds(sh.advance(T + AFTER + 1) + sh.advance(T + HOLD_END)) == []


def test_a_heartbeat_without_a_token_is_ignored():
    """A bridge from before tokens in chain.progress: its heartbeats cannot say which bridge they are for."""
    sh = watched_shard()
    sh.apply([settle(1), progress(T + 30_000, token=None)])
    assert sh.advance(T + AFTER + 1) == [] and sh.join.bridges.ignored_progress == 1
    assert [f.kind for f in sh.advance(T + HOLD_END)] == ["unsettled"]    # judged as without heartbeats


# -- 4. a bridge that watches every wallet vouches for every agent -------------------------------------------

def test_a_bridge_watching_every_wallet_vouches_for_agents_it_never_published():
    """chain.watch_all: the stranger's settle is judged by the heartbeat (no transfer of it was ever seen), on a
    partition where the bridge sent nothing but heartbeats."""
    sh = Shard(ShardConfig(unsettled_after_ms=AFTER))
    sh.apply([progress(T - 30_000, watches_all=True), _stranger_settle(1)])
    found = sh.advance(T + AFTER + 1) + sh.apply([progress(T + 4_000, watches_all=True)]).findings
    assert [(f.kind, f.agent) for f in found] == [("unsettled", STRANGER)]


def test_watching_every_wallet_lasts_until_a_heartbeat_says_otherwise_and_survives_a_checkpoint():
    sh = Shard(ShardConfig(unsettled_after_ms=AFTER))
    sh.apply([progress(T - 30_000, watches_all=True)])
    back = Shard.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(sh.snapshot())),
                         ShardConfig(unsettled_after_ms=AFTER))
    assert back.join.bridges.watch_all == {(8453, BASE_USDC)}
    back.apply([progress(T - 20_000), _stranger_settle(1)])          # restarted with a watch list
    found = back.apply([progress(T + 4_000)]).findings + back.advance(T + HOLD_END)
    assert found == []                                                     # as for any unwatched agent


# -- 3. held settles are bounded like the rest of the join -----------------------------------------------

def test_held_settles_are_bounded_by_max_entries_and_the_dropped_are_still_decided(caplog):
    sh = watched_shard(dedupe_max_entries=8)
    sh.apply([progress(T - 300_000)])
    sh.apply([settle(i, ts=T + i * 1_000) for i in range(1, 4)])
    sh.apply([settle(i, ts=T + i * 1_000) for i in range(4, 7)])     # 6 settles: the payments rotate early
    with caplog.at_level(logging.WARNING, logger="watcher.pipeline.bridges"):
        assert sh.advance(T + 6_000 + AFTER + 1) == []                 # all held: the bridge is behind
    b = sh.join.bridges
    assert sum(map(len, b.held.values())) + sum(map(len, b.held_t.values())) <= 8
    sh2 = watched_shard(dedupe_max_entries=3)
    sh2.apply([progress(T - 300_000), *(settle(i, ts=T + i * 1_000) for i in range(1, 6))])
    with caplog.at_level(logging.WARNING, logger="watcher.pipeline.bridges"):
        assert sh2.advance(T + 5_000 + AFTER + 1) == []
    b = sh2.join.bridges
    held = sorted(ts for h in (*b.held.values(), *b.held_t.values()) for ts, _ in h)
    assert held == [T + 3_000, T + 4_000, T + 5_000] and b.held_dropped == 2   # the oldest went
    assert "dedupe.max_entries=3" in caplog.text
    assert sh2.snapshot()["join"]["held_dropped"] == 2
    # the dropped ones are not lost: decided at the end of their hold like the rest
    found = sh2.advance(T + 5_000 + HOLD_END)
    assert sorted(kinds(found)) == sorted(("unsettled", fake_hash(i).lower()) for i in range(1, 6))


def test_a_held_settle_is_forgotten_when_its_hold_ends():
    sh = watched_shard(dedupe_horizon_ms=24 * 3_600_000)
    sh.apply([progress(T - 300_000), settle(1)])
    sh.advance(T + AFTER + 1)
    assert sh.join.bridges.held[(8453, BASE_USDC)]
    assert [f.kind for f in sh.advance(T + HOLD_END)] == ["unsettled"]
    assert sh.join.bridges.held[(8453, BASE_USDC)] == []                  # not kept for the payment memory


# -- checkpoints: an older one restores, a new one keeps what older releases read -------------------------

def test_a_checkpoint_from_before_tokens_restores_and_its_held_settle_is_released_by_a_new_heartbeat():
    """Written by the join of db9fa65: A watched (a transfer), a heartbeat, settle 1 held (never mined)."""
    snap = json.loads(OLD_CHECKPOINT.read_text())
    cfg = ShardConfig(unsettled_after_ms=AFTER, dedupe_horizon_ms=3_600_000, dedupe_max_entries=1000)
    sh = Shard(cfg)
    sh.join.restore(snap)
    sh.watermark_ms = T + AFTER + 1
    assert sh.join.confirmed_upto == {(8453, ""): T - 30_000}           # the whole chain's, as it was
    found = sh.apply([progress(T + 4_000)]).findings + sh.advance(T + AFTER + 2)   # a new bridge's heartbeat
    assert kinds(found) == [("unsettled", fake_hash(1).lower())]
    assert sh.join.confirmed_upto == {(8453, BASE_USDC): T + 4_000}     # the old whole-chain state is gone
    sh.apply([settle(2, ts=T + 10_000)])                                 # a new settle: judged by the new state
    assert sh.advance(T + 10_000 + AFTER + 1) == []                      # held: not confirmed that far yet


def test_a_new_checkpoint_keeps_streams_and_writes_what_older_releases_read():
    sh = watched_shard()
    sh.apply([other_settle(0, ts=T - 400_000), other_transfer(0, ts=T - 400_000),
              progress(T - 300_000, read_from=(500, T - 350_000)), settle(1), other_settle(1)])
    sh.advance(T + AFTER + 1)
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(sh.snapshot()))
    join = snap["join"]
    assert join["confirmed_upto"] == [[8453, T - 300_000]] and join["chains_seen"] == [8453]   # per chain
    assert sorted(join["held"]) == sorted([[8453, T, fake_hash(1)], [8453, T, fake_hash("other", 1)]])
    back = Shard.restore(snap, ShardConfig(unsettled_after_ms=AFTER))
    b, b0 = back.join.bridges, sh.join.bridges
    assert (b.confirmed_upto, b.transfer_upto, b.read_from) == (b0.confirmed_upto, b0.transfer_upto, b0.read_from)
    assert b.held == b0.held and set(b.held) == {(8453, BASE_USDC), (8453, OTHER_TOKEN)}
    found = back.apply([progress(T + 4_000, token=OTHER_TOKEN)]).findings + back.advance(T + AFTER + 2)
    assert kinds(found) == [("unsettled", fake_hash("other", 1).lower())]
