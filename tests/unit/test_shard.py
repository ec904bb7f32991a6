"""Dedupe and join with plain values: one payment counted once, whichever record arrives first."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.errors import CheckpointError
from watcher.events import Decoder
from watcher.pipeline import Shard, ShardConfig
from watcher.pipeline.windows import WindowSpec
from watcher.simulate.records import encode, fake_hash, settle_record, transfer_record

A = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
M = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
T = 1_790_000_000_000
D = Decoder(max_future_skew_ms=None)


def settle(i, amount=100, ts=T, **kw):
    return D.decode(encode(settle_record(event_id=f"s{i}", ts_ms=ts, payer=A, pay_to=M, amount=amount,
                                         tx=fake_hash(i), **kw)))


def transfer(i, amount=100, status="pending", block=1, ts=T, log_index=0):
    return D.decode(encode(transfer_record(ts_ms=ts, payer=A, to=M, amount=amount, tx=fake_hash(i),
                                           status=status, block_number=block, log_index=log_index,
                                           authorizer=A)))


def day(shard):
    s, c = shard.agent_totals(A)
    return s[-1], c[-1]


def test_redelivery_counted_once():
    sh = Shard()
    out = sh.apply([settle(1), settle(1), settle(2)])
    assert out.duplicates == 1 and day(sh) == (200, 2)
    sh.apply([settle(1)])
    assert day(sh) == (200, 2)


def test_settle_and_transfer_are_one_payment_in_any_order():
    for order in itertools.permutations([settle(1), transfer(1), transfer(1, status="confirmed")]):
        sh = Shard()
        for obs in order:
            sh.apply([obs])
        assert day(sh) == (100, 1), order


def test_reorg_uncounts_then_replacement_counts_again():
    sh = Shard()
    sh.apply([settle(1), transfer(1, block=10)])
    assert day(sh) == (100, 1)
    sh.apply([transfer(1, status="reverted", block=10)])
    assert day(sh) == (0, 0)
    sh.apply([transfer(1, block=11), transfer(1, status="confirmed", block=11)])
    assert day(sh) == (100, 1)


def test_chain_amount_wins_and_mismatch_is_found_once():
    sh = Shard()
    sh.apply([settle(1, amount=100)])
    out = sh.apply([transfer(1, amount=90), transfer(1, amount=90, status="confirmed")])
    assert day(sh) == (90, 1)
    assert [f.kind for f in out.findings] == ["amount_mismatch"]
    assert out.findings[0].settledAmount == "100" and out.findings[0].transferredAmount == "90"


def test_shadow_spend_and_unsettled_after_their_grace():
    sh = Shard(ShardConfig(shadow_grace_ms=60_000, unsettled_after_ms=120_000))
    sh.apply([transfer(1, status="confirmed"), settle(2, amount=5)])
    assert sh.advance(T + 30_000) == []
    assert [f.kind for f in sh.advance(T + 61_000)] == ["shadow_spend"]
    assert [f.kind for f in sh.advance(T + 121_000)] == ["unsettled"]
    assert sh.advance(T + 500_000) == []  # each finding once


def test_settled_then_confirmed_is_not_unsettled():
    sh = Shard(ShardConfig(unsettled_after_ms=1000))
    sh.apply([settle(1), transfer(1, status="confirmed")])
    assert sh.advance(T + 10_000) == []


def test_categories_get_their_own_windows():
    sh = Shard(categorize=lambda merchant, resource: "data")
    sh.apply([settle(1, amount=7), settle(2, amount=8)])
    assert sh.category_totals(A, "data")[0][-1] == 15


def test_checkpoint_round_trip_continues_exactly():
    cfg = ShardConfig(windows=(WindowSpec("1m", 60, 6), WindowSpec("1h", 3600, 6)))
    whole = Shard(cfg)
    first = [settle(i, amount=i, ts=T + i * 1000) for i in range(50)]
    second = [settle(i, amount=i, ts=T + i * 1000) for i in range(40, 100)]
    whole.apply(first)
    whole.apply(second)
    part = Shard(cfg)
    part.apply(first)
    blob = msgspec.msgpack.encode(part.snapshot())
    resumed = Shard.restore(msgspec.msgpack.decode(blob), cfg)
    resumed.apply(second)
    assert resumed.agent_totals(A) == whole.agent_totals(A)
    assert resumed.stats.duplicates == whole.stats.duplicates == 10


def test_dedupe_memory_is_bounded_by_its_horizon():
    sh = Shard(ShardConfig(dedupe_horizon_ms=60_000))
    for i in range(10):
        sh.apply([settle(i * 1000 + j, ts=T + i * 30_000) for j in range(100)])
    assert len(sh.seen) <= 400  # two generations of at most one horizon each
    assert len(sh.join) <= 400


def test_shadow_deadline_is_not_held_back_by_an_earlier_settle():
    sh = Shard(ShardConfig(shadow_grace_ms=60_000, unsettled_after_ms=300_000))
    sh.apply([settle(1, amount=5)])                          # unsettled check due at T + 300 s
    sh.apply([transfer(2, status="confirmed", ts=T + 1000)])  # shadow check due at T + 61 s
    assert [f.kind for f in sh.advance(T + 62_000)] == ["shadow_spend"]


def test_deltas_carry_merchant_and_resource():
    sh = Shard()
    out = sh.apply([settle(1, resource="https://api.example/v1/q")])
    assert out.deltas[0].merchant == M and out.deltas[0].resource == "https://api.example/v1/q"


# -- restoring with other [[windows]] than the checkpoint's ---------------------------------------------------
def _checkpointed(cfg: ShardConfig) -> dict:
    sh = Shard(cfg, categorize=lambda merchant, resource: "data")
    sh.apply([settle(i, amount=i, ts=T - i * 120_000) for i in range(1, 40)])  # 2 minutes apart: 78 min
    return msgspec.msgpack.decode(msgspec.msgpack.encode(sh.snapshot()))


def test_restore_refuses_windows_the_checkpoint_does_not_hold():
    snap = _checkpointed(ShardConfig())  # 1m, 5m, 1h, 24h
    new = ShardConfig(windows=(WindowSpec("10m", 600, 10), WindowSpec("24h", 86400, 8)))
    with pytest.raises(CheckpointError) as err:
        Shard.restore(snap, new)
    msg = str(err.value)
    assert "windows" in msg and "10m (600 s, 10 buckets)" in msg and "24h (86400 s, 8 buckets)" in msg
    resized = ShardConfig(windows=(WindowSpec("24h", 86400, 24),))  # same name, other buckets: not exact
    with pytest.raises(CheckpointError, match=r"24h \(86400 s, 24 buckets\)"):
        Shard.restore(snap, resized)


def test_restore_keeps_removed_renamed_and_reordered_windows_exact_under_the_configured_names():
    old = ShardConfig()
    whole = Shard.restore(_checkpointed(old), old)
    new = ShardConfig(windows=(WindowSpec("day", 86400, 8), WindowSpec("1h", 3600, 6)))
    sh = Shard.restore(_checkpointed(old), new)
    assert [s.name for s in sh.agents.specs] == [s.name for s in sh.categories.specs] == ["day", "1h"]
    (s1m, s5m, s1h, s24h), (c1m, c5m, c1h, c24h) = whole.agent_totals(A)
    assert sh.agent_totals(A) == ([s24h, s1h], [c24h, c1h]) and s24h == sum(range(1, 40)) and s1h < s24h
    cat = whole.category_totals(A, "data")
    assert sh.category_totals(A, "data") == ([cat[0][3], cat[0][2]], [cat[1][3], cat[1][2]])
    # and it goes on counting exactly under the new layout
    sh.apply([settle(100, amount=1_000, ts=T + 1_000)])
    assert sh.agent_totals(A)[0] == [s24h + 1_000, s1h + 1_000]


# -- agents with nothing left in any window are forgotten -----------------------------------------------------
def _wallet(i: int) -> str:
    from watcher.events.addresses import eip55
    return eip55("0x" + f"{i + 1:040x}")


def _settle_by(i: int, payer: str, ts: int, amount: int = 100):
    return D.decode(encode(settle_record(event_id=f"w{i}", ts_ms=ts, payer=payer, pay_to=M, amount=amount,
                                         tx=fake_hash("w", i))))


def test_checkpoints_forget_agents_with_nothing_left_in_any_window():
    """Every wallet ever seen kept its window rows forever: memory, checkpoints and restores grew with all
    wallets ever, not the active ones."""
    cfg = ShardConfig(windows=(WindowSpec("1m", 60, 6), WindowSpec("1h", 3600, 6)))
    sh = Shard(cfg, categorize=lambda merchant, resource: "data")
    idle = [_wallet(i) for i in range(20)]
    sh.apply([_settle_by(i, w, T) for i, w in enumerate(idle)])
    later = T + 2 * 3_600_000  # past the longest window: the 20 have nothing left anywhere
    sh.apply([_settle_by(100, A, later - 30_000, amount=7), _settle_by(101, A, later, amount=5)])
    sh.advance(later)
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(sh.snapshot()))
    assert len(snap["agents"]["keys"]) == 1 and len(snap["categories"]["keys"]) == 1
    assert len(sh.agents) == len(sh.categories) == 1
    for s in (sh, Shard.restore(snap, cfg)):
        assert s.agent_totals(A) == ([12, 12], [2, 2]) and s.category_totals(A, "data") == ([12, 12], [2, 2])
        assert s.agent_totals(idle[0]) == ([0, 0], [0, 0])
        s.apply([_settle_by(200, idle[0], later + 1_000, amount=3)])   # a forgotten agent pays again
        assert s.agent_totals(idle[0]) == ([3, 3], [1, 1]) and s.agent_totals(A)[0] == [12, 12]


def test_agents_with_spend_in_some_window_are_kept():
    cfg = ShardConfig(windows=(WindowSpec("1m", 60, 6), WindowSpec("1h", 3600, 6)))
    sh = Shard(cfg)
    sh.apply([_settle_by(i, _wallet(i), T) for i in range(20)])
    sh.advance(T + 30 * 60_000)  # out of the 1m window, still in the 1h one
    sh.snapshot()
    assert len(sh.agents) == 20 and sh.agent_totals(_wallet(3)) == ([0, 100], [0, 1])


# -- a settle after its payment's transfer: the settle's category and merchant facts ---------------------------
DATA = "https://api.example/v1/data"


def _by_resource(merchant, resource):
    return "data" if resource and resource.startswith(DATA) else None


def _all_windows(shard, category=None):
    return shard.agent_totals(A) if category is None else shard.category_totals(A, category)


def _every_window(amount, count):
    n = len(ShardConfig().windows)
    return [amount] * n, [count] * n


def test_a_settle_after_its_transfer_moves_the_payment_into_its_resource_category():
    """The bridge publishes transfers `pending` at the chain head, so a payment's transfer often comes first:
    the category came from the transfer's `to` only, and the settle, which names the resource, moved
    nothing (a category budget and the statements missed the payment)."""
    first = Shard(categorize=_by_resource)
    first.apply([settle(1, resource=DATA)])
    first.apply([transfer(1), transfer(1, status="confirmed")])
    later = Shard(categorize=_by_resource)
    out = later.apply([transfer(1)])
    assert later.category_totals(A, "data")[0][-1] == 0
    out = later.apply([settle(1, resource=DATA)])
    (d,) = out.deltas
    assert out.moves == [0] and (d.amount, d.count, d.category, d.resource) == (0, 0, "data", DATA)
    assert (d.move.amount, d.move.count, d.move.category, d.move.merchant) == (100, 1, None, M)
    later.apply([transfer(1, status="confirmed")])
    assert _all_windows(later, "data") == _all_windows(first, "data") == _every_window(100, 1)
    assert _all_windows(later) == _all_windows(first) == _every_window(100, 1)   # counted once
    assert later.join.payments.get(fake_hash(1)).category == "data"


def test_a_settle_after_its_transfer_adds_no_row_to_the_agent_windows():
    """The moving delta counts nothing new; it went into the agent windows anyway, as an empty row, and for a
    settle arriving after the payment had left every window it counted as a late payment
    (spendwatch_late_payments) though nothing was late."""
    sh = Shard(categorize=_by_resource)
    sh.apply([transfer(1), transfer(1, status="confirmed")])
    sh.advance(T + 2 * 86_400_000)        # a facilitator that reports two days late
    out = sh.apply([settle(1, resource=DATA, ts=T + 2 * 86_400_000)])
    assert out.moves == [0]
    assert sh.agents.late_dropped == 0      # what spendwatch_late_payments exports


def test_a_settle_after_its_transfer_moves_the_payment_out_of_the_transfers_category():
    """[categories] keyed by the payTo address, the rate card by resource URL, rate card first: the settle's
    category wins, as when the settle comes first."""
    cat = lambda merchant, resource: "data" if resource == DATA else "generic"  # noqa: E731
    sh = Shard(categorize=cat)
    sh.apply([transfer(1, amount=70)])
    assert sh.category_totals(A, "generic")[0][-1] == 70
    sh.apply([settle(1, amount=70, resource=DATA)])
    assert sh.category_totals(A, "generic") == _every_window(0, 0)
    assert sh.category_totals(A, "data") == _every_window(70, 1)
    assert day(sh) == (70, 1)


def test_an_old_checkpoints_payments_restore_and_move():
    """Payments checkpointed before `records_before_settle` (one array item fewer) restore, and move."""
    sh = Shard(categorize=_by_resource)
    sh.apply([transfer(1)])
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(sh.snapshot()))
    for gen in ("current", "previous"):
        snap["join"]["payments"][gen] = {k: v[:-1] for k, v in snap["join"]["payments"][gen].items()}
    resumed = Shard.restore(snap, categorize=_by_resource)
    out = resumed.apply([settle(1, resource=DATA)])
    assert out.deltas[0].move.records == 0 and resumed.category_totals(A, "data")[0][-1] == 100


def _payment_records(k: int, settled: int, moved: int) -> list:
    """One payment: a settle (resource-keyed category) and its transfer, pending then confirmed."""
    ts = T + k * 1000
    return [settle(k, amount=settled, ts=ts, resource=DATA if k % 2 else "https://other.example/x"),
            transfer(k, amount=moved, ts=ts + 300), transfer(k, amount=moved, status="confirmed", ts=ts + 300)]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_category_and_agent_sums_do_not_depend_on_the_interleaving(data):
    """Each payment's records arrive in any order (a settle first or after its transfers), cut into any
    batches: agent and category windows end as when every settle comes first."""
    payments = [_payment_records(k, data.draw(st.sampled_from([100, 90])), 100) for k in range(1, 5)]
    reference = Shard(categorize=_by_resource)
    for recs in payments:
        reference.apply(recs)
    stream = data.draw(st.permutations([r for recs in payments for r in recs]))
    cuts = sorted(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=4, unique=True)))
    sh = Shard(categorize=_by_resource)
    for a, b in zip([0] + cuts, cuts + [len(stream)]):
        sh.apply(stream[a:b])
    assert _all_windows(sh) == _all_windows(reference) == _every_window(400, 4)
    assert _all_windows(sh, "data") == _all_windows(reference, "data") == _every_window(200, 2)
