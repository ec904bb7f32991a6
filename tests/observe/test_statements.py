"""Daily statements: the stage with plain values, then the daemon -> topic -> `spendwatch statement` path."""

from __future__ import annotations

import csv
import io
import itertools
import json
from types import SimpleNamespace

import msgspec
import pytest

from watcher.events.observation import Kind, Observation
from watcher.observe.cli import format_rows, rows_as_dicts, usdc_text
from watcher.observe.statements import (DAY_MS, Statement, StatementSettings, StatementStage, decode_statement,
                                        latest)
from watcher.pipeline.join import Delta
from watcher.pipeline.shard import Outcome

A = "0x" + "11" * 20
M = "0x" + "22" * 20
DAY = 20_415 * DAY_MS   # 2025-11-23T00:00Z


def _obs(eid, ts, tx):
    return Observation(kind=Kind.SETTLE, event_id=eid, dedupe_key=eid, ts_ms=ts, agent=A, merchant=M, amount=0,
                       chain_id=8453, network="eip155:8453", asset=M, status="settled", tx=tx)


def _ctx(deltas, obs, now_ms, partition=0):
    return SimpleNamespace(partition=partition, shard=None, outcome=Outcome(deltas=deltas), observations=obs,
                           now_ms=now_ms, wall_ms=now_ms, decisions=[], publish=[])


def _records(ctx):
    return [decode_statement(v) for _, _, v in ctx.publish]


def test_while_catching_up_a_day_closes_by_the_partitions_clock_and_publishes_by_the_wall_clock():
    """The daemon reads yesterday's last records two hours into today: yesterday is not final yet (its last
    records are still being read), and changed rows go out once per interval of the wall clock."""
    st = StatementStage(StatementSettings(publish_interval_seconds=60, close_after_seconds=3600))
    late, wall = DAY + DAY_MS - 10_000, DAY + DAY_MS + 7_200_000
    ctx = _ctx([Delta(A, "data", late - 120_000, 5, 1, "e1")], [_obs("e1", late - 120_000, "0xaa")],
               now_ms=late - 120_000)
    ctx.wall_ms = wall
    st.on_batch(ctx)
    assert [(r.count, r.final) for r in _records(ctx)] == [(1, False)]   # the wall clock would close it
    ctx = _ctx([Delta(A, "data", late, 5, 1, "e2")], [_obs("e2", late, "0xab")], now_ms=late)
    ctx.wall_ms = wall + 1_000
    st.on_batch(ctx)
    assert ctx.publish == []                          # 2 min of backlog read in 1 s of wall clock: not yet
    ctx = _ctx([], [], now_ms=DAY + DAY_MS + 3_600_000)                   # its time reaches the close
    ctx.wall_ms = wall + 2_000
    st.on_batch(ctx)
    assert [(r.count, r.final) for r in _records(ctx)] == [(2, True)]


def test_rows_per_day_agent_merchant_category_then_final_and_corrections():
    st = StatementStage(StatementSettings(publish_interval_seconds=60, close_after_seconds=3600))
    t1, t2, t3 = DAY + 1_000, DAY + 5_000, DAY + DAY_MS - 1
    ctx = _ctx([Delta(A, "data", t1, 1_000_000, 1, "e1"), Delta(A, "data", t2, 250_000, 1, "e2"),
                Delta(A, None, t3, 7, 1, "e3")],
               [_obs("e1", t1, "0xaa"), _obs("e2", t2, "0xbb"), _obs("e3", t3, "0xcc")], now_ms=DAY + 10_000)
    st.on_batch(ctx)
    recs = {r.category: r for r in _records(ctx)}
    assert set(recs) == {"data", "uncategorized"}
    d = recs["data"]
    assert (d.count, d.amount, d.first_tx, d.last_tx, d.final, d.revision) == (2, "1250000", "0xaa", "0xbb", False, 1)
    assert d.id == f"2025-11-23|{A}|{M}|data" and d.first_at == "2025-11-23T00:00:01.000Z"
    # nothing changed, interval not over: nothing published
    ctx = _ctx([], [], now_ms=DAY + 20_000)
    st.on_batch(ctx)
    assert ctx.publish == []
    # the day closes an hour after midnight: every row is published final
    ctx = _ctx([], [], now_ms=DAY + DAY_MS + 3_600_000)
    st.on_batch(ctx)
    assert {(r.category, r.final, r.revision) for r in _records(ctx)} == {("data", True, 2), ("uncategorized", True, 2)}
    # a reorg un-counts a payment after the close: a final correction with a higher revision
    ctx = _ctx([Delta(A, "data", t2, -250_000, -1, "e4")], [_obs("e4", t2, "0xbb")],
               now_ms=DAY + DAY_MS + 3_600_000 + 61_000)
    st.on_batch(ctx)
    (r,) = _records(ctx)
    assert (r.count, r.amount, r.final, r.revision) == (1, "1000000", True, 3)
    # snapshot/restore keeps the rows; days past retention are forgotten
    snap = st.snapshot(0)
    st2 = StatementStage(StatementSettings(publish_interval_seconds=60, close_after_seconds=3600))
    st2.restore(0, snap)
    assert st2.parts[0].rows == st.parts[0].rows
    ctx = _ctx([], [], now_ms=DAY + 4 * DAY_MS)
    st2.on_batch(ctx)
    assert st2.parts[0].rows == {}


def test_latest_revision_wins_and_output_formats():
    st = StatementStage(StatementSettings(publish_interval_seconds=1))
    ctx = _ctx([Delta(A, "data", DAY, 1_000_001, 1, "e1")], [_obs("e1", DAY, "0xaa")], now_ms=DAY + 2_000)
    st.on_batch(ctx)
    ctx2 = _ctx([Delta(A, "data", DAY, 5, 1, "e2")], [_obs("e2", DAY, "0xab")], now_ms=DAY + 4_000)
    st.on_batch(ctx2)
    rows = rows_as_dicts(latest(_records(ctx) + _records(ctx2)).values())
    assert len(rows) == 1 and rows[0]["amount"] == "1000006" and rows[0]["amount_usdc"] == "1.000006"
    parsed = list(csv.DictReader(io.StringIO(format_rows(rows, "csv"))))
    assert parsed[0]["count"] == "2" and parsed[0]["revision"] == "2"
    assert json.loads(format_rows(rows, "json"))[0]["agent"] == A
    assert usdc_text(-1_500_000) == "-1.500000" and usdc_text(7) == "0.000007"


def _one(records):
    (r,) = records
    return r


def _fold(stage, pays, now_ms):
    """Fold (delta, observation) pairs into `stage` as one batch; the one row it publishes."""
    ctx = _ctx([d for d, _ in pays], [o for _, o in pays], now_ms=now_ms)
    stage.on_batch(ctx)
    return _one(_records(ctx))


def _both_orders(a, b):
    """`latest` of two rows of one id, in both orders of arrival: the same row, or the test fails."""
    (x,) = latest([a, b]).values()
    (y,) = latest([b, a]).values()
    assert x == y
    return x


def _handoff():
    """The old owner published revision 1 and was checkpointed; the new owner restores that checkpoint."""
    settings = StatementSettings(publish_interval_seconds=1)
    old = StatementStage(settings)
    first = _fold(old, [(Delta(A, "data", DAY + 1_000, 100, 1, "e1"), _obs("e1", DAY + 1_000, "0xa1")),
                        (Delta(A, "data", DAY + 3_000, 300, 1, "e3"), _obs("e3", DAY + 3_000, "0xa3"))], DAY + 10_000)
    new = StatementStage(settings)
    new.restore(0, old.snapshot(0))
    return old, new, first


def test_after_a_handoff_the_row_with_more_of_the_input_wins_in_either_order():
    old, new, first = _handoff()
    pay5 = (Delta(A, "data", DAY + 5_000, 500, 1, "e5"), _obs("e5", DAY + 5_000, "0xa5"))
    pay6 = (Delta(A, "data", DAY + 6_000, 600, 1, "e6"), _obs("e6", DAY + 6_000, "0xa6"))
    # the dying owner folded one more payment and published its revision 2 before it went
    victim = _fold(old, [pay5], DAY + 12_000)
    # the new owner replays it, and the next one, in one batch: its own revision 2
    winner = _fold(new, [pay5, pay6], DAY + 13_000)
    assert (victim.revision, winner.revision) == (2, 2) and (victim.count, winner.count) == (3, 4)
    assert _both_orders(victim, winner) == winner
    assert _both_orders(first, winner) == winner


def test_an_uncount_is_more_activity_though_count_drops_and_last_at_stays():
    """A tie that `lastAt` and `count` would get wrong: the longer history has the lower count."""
    old, new, _ = _handoff()
    pay5 = (Delta(A, "data", DAY + 5_000, 500, 1, "e5"), _obs("e5", DAY + 5_000, "0xa5"))
    reorg = (Delta(A, "data", DAY + 3_000, -300, -1, "r3"), _obs("r3", DAY + 3_000, "0xa3"))
    victim = _fold(old, [pay5], DAY + 12_000)
    winner = _fold(new, [pay5, reorg], DAY + 13_000)
    assert (victim.revision, victim.last_at, victim.count) == (winner.revision, winner.last_at, 3)
    assert (winner.count, winner.amount, winner.changes, victim.changes) == (2, "600", 4, 3)
    assert _both_orders(victim, winner) == winner


def test_a_higher_revision_of_the_old_owner_loses_to_more_of_the_input():
    """The dying owner published twice after its checkpoint; the new owner caught up in one batch."""
    old, new, _ = _handoff()
    deltas = [Delta(A, "data", DAY + 5_000 + i, 1, 1, f"n{i}") for i in range(3)]
    obs = [_obs(f"n{i}", DAY + 5_000 + i, f"0xb{i}") for i in range(3)]
    published = []
    for i, now in ((0, DAY + 12_000), (1, DAY + 14_000)):
        ctx = _ctx(deltas[i:i + 1], obs[i:i + 1], now_ms=now)
        old.on_batch(ctx)
        published += _records(ctx)
    victim = published[-1]
    winner = _fold(new, list(zip(deltas, obs)), DAY + 15_000)
    assert (victim.revision, winner.revision, victim.count, winner.count) == (3, 2, 4, 5)
    assert _both_orders(victim, winner) == winner


def test_equal_history_prefers_final_then_revision_then_later_and_larger():
    base = Statement(id="d|a|m|c", day="2025-11-23", agent=A, merchant=M, category="c", count=2, amount="10",
                     first_at="2025-11-23T00:00:01.000Z", last_at="2025-11-23T00:00:05.000Z", first_tx="0x1",
                     last_tx="0x5", revision=2, final=False, changes=2)
    r = msgspec.structs.replace
    assert _both_orders(base, r(base, final=True)).final
    assert _both_orders(base, r(base, revision=3)).revision == 3
    assert _both_orders(r(base, final=True), r(base, revision=3)).final      # final before revision
    later = r(base, last_at="2025-11-23T00:00:06.000Z", last_tx="0x6")
    assert _both_orders(base, later) == later
    assert _both_orders(base, r(base, count=3)).count == 3
    assert _both_orders(r(base, count=3), r(later, changes=3, count=1)).changes == 3   # changes first
    # rows equal in every ranked field but not in content still give one answer whatever the order
    odd = [r(base, first_tx="0x0"), r(base, amount="11"), base]
    assert len({latest(p)["d|a|m|c"] for p in itertools.permutations(odd)}) == 1


def test_one_owner_in_any_order_of_arrival_the_last_published_row_wins():
    st = StatementStage(StatementSettings(publish_interval_seconds=1, close_after_seconds=0))
    published = []
    steps = [(Delta(A, "data", DAY + 1_000, 5, 1, "e1"), DAY + 2_000),
             (Delta(A, "data", DAY + 500, -5, -1, "r1"), DAY + 4_000),     # a reorg: count 0, lastAt stays
             (None, DAY + DAY_MS + 1),                                       # the day closes
             (Delta(A, "data", DAY + 2_000, 7, 1, "e2"), DAY + DAY_MS + 2_000)]  # a late correction
    for d, now in steps:
        ctx = _ctx([d] if d else [], [_obs(d.event_id, d.ts_ms, "0xaa")] if d else [], now_ms=now)
        st.on_batch(ctx)
        published += _records(ctx)
    assert [(p.revision, p.final, p.count) for p in published] == [(1, False, 1), (2, False, 0), (3, True, 0),
                                                                   (4, True, 1)]
    for order in itertools.permutations(published):
        assert list(latest(order).values()) == [published[-1]]


def test_rows_and_checkpoints_from_before_changes_still_read():
    old = (b'{"type":"statement","id":"x","day":"2025-11-23","agent":"a","merchant":"m","category":"c",'
           b'"count":1,"amount":"5","firstAt":"t","lastAt":"t","firstTx":null,"lastTx":null,'
           b'"revision":4,"final":false}')
    assert decode_statement(old).changes == 0
    st = StatementStage(StatementSettings(publish_interval_seconds=1))
    st.restore(0, {"v": 1, "rows": [[20_415, A, M, "data", 1, 5, DAY, DAY, "0xaa", "0xaa", 4, False]],
                   "closed": [], "last_publish_ms": DAY, "dropped": 0})
    r = _fold(st, [(Delta(A, "data", DAY + 1, 2, 1, "e2"), _obs("e2", DAY + 1, "0xab"))], DAY + 5_000)
    assert (r.revision, r.count, r.amount, r.changes) == (5, 2, "7", 1)
    assert _both_orders(msgspec.structs.replace(decode_statement(old), id=r.id), r) == r


def test_statement_help_is_complete(capsys):
    import argparse

    from watcher.observe.cli import register

    p = argparse.ArgumentParser(prog="spendwatch")
    register(p.add_subparsers())
    with pytest.raises(SystemExit):
        p.parse_args(["statement", "--help"])
    out = capsys.readouterr().out
    for opt in ("--day", "--format", "--bootstrap", "--config", "--output", "--topic", "--timeout"):
        assert opt in out


@pytest.mark.integration
async def test_daemon_publishes_statements_that_the_cli_exports(kafka_bootstrap, unique, capsys, tmp_path):
    import time

    from tests.integration.helpers import make_settings, run_until
    from watcher.daemon import Daemon
    from watcher.observe.cli import cmd_statement
    from watcher.observe.statements import read_statements, statement_topic_service
    from watcher.simulate.fleet import Fleet
    from watcher.simulate.publish import publish_records

    fleet = Fleet(agents=15, merchants=8, seed=5, runaway_after_s=5)
    settings = make_settings(kafka_bootstrap, unique, partitions=2)
    settings = settings.model_copy(update={"categories": fleet.categories()})
    ss = StatementSettings(topic=f"stmt-{unique}", publish_interval_seconds=0.2)
    now_ms = int(time.time() * 1000)
    start = now_ms - now_ms % DAY_MS + 60_000     # today, from 00:01 UTC: one day
    if start + 120_000 > now_ms:
        start = now_ms - 120_000 - 60_000
    records = fleet.events(300, start, rate_per_s=5)
    from watcher.sources.kafka import ensure_topics

    await ensure_topics(settings.kafka)  # before publishing: the broker would create them with its own count
    await publish_records(settings.kafka, records)
    day = time.strftime("%Y-%m-%d", time.gmtime(start / 1000))
    stage = StatementStage(ss)
    daemon = Daemon(settings, stages=[stage], services=[statement_topic_service(ss)])

    def all_published(d) -> bool:   # everything consumed, and every row published since its last change
        return d.counters.consumed >= fleet.truth.published and not any(
            row[-1] for part in stage.parts.values() for row in part.rows.values())
    await run_until(daemon, all_published, 90)
    rows = await read_statements(kafka_bootstrap, ss.topic, day)
    by_agent: dict[str, int] = {}
    for r in rows:
        if r.day == day:
            by_agent[r.agent] = by_agent.get(r.agent, 0) + int(r.amount)
    truth = dict(fleet.truth.spend)   # all of it within `day`
    assert by_agent == dict(truth)
    assert sum(r.count for r in rows) == sum(fleet.truth.payments.values())
    # and the command line prints the same as CSV
    out = tmp_path / "day.csv"
    args = SimpleNamespace(day=day, format="csv", output=str(out), topic=ss.topic, timeout=30.0,
                           bootstrap=kafka_bootstrap, config=None)
    import asyncio
    await asyncio.to_thread(cmd_statement, args)
    parsed = list(csv.DictReader(out.open()))
    assert len(parsed) == len(rows) and sum(int(p["amount"]) for p in parsed) == sum(truth.values())


async def test_statement_export_refuses_an_unreachable_or_partial_read(monkeypatch):
    """An export that could not read the whole topic is an error, not a shorter statement."""
    import socket

    import watcher.sources.kafka as kafka_io
    from watcher.errors import BrokerError
    from watcher.observe.statements import read_statements

    with socket.socket() as s:          # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BrokerError, match="cannot reach Kafka"):
        await read_statements(f"127.0.0.1:{port}", "watcher.statements", "2026-11-23", timeout_s=5)

    async def partial(*_args, **_kw):
        return [], False
    monkeypatch.setattr(kafka_io, "read_to_end", partial)
    with pytest.raises(BrokerError, match="not read to the end.*raise --timeout"):
        await read_statements("127.0.0.1:9092", "watcher.statements", "2026-11-23", timeout_s=5)


def test_a_replay_that_interleaves_settles_and_transfers_otherwise_still_supersedes_the_dead_owner():
    """The settled amounts differ from the chain's (amount_mismatch): live, each settle came before its
    transfer (a count, then a correction: two deltas); the new owner's replay fetched the chain topic first
    (one delta each) and then one more payment. Deltas made the dead owner's row look further along and
    the statement lost that payment; records folded do not depend on the interleaving."""
    from watcher.events.decode import Decoder
    from watcher.pipeline.shard import Shard
    from watcher.simulate.records import encode, fake_hash, settle_record, transfer_record

    agent, merchant = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
    t0 = DAY + 60_000
    dec = Decoder(max_future_skew_ms=None)

    def settle(i, amount):
        return dec.decode(encode(settle_record(event_id=f"s{i}", ts_ms=t0 + i * 1000, payer=agent, pay_to=merchant,
                                               amount=amount, tx=fake_hash("tx", i))))

    def transfer(i, amount):
        return dec.decode(encode(transfer_record(ts_ms=t0 + i * 1000 + 500, payer=agent, to=merchant, amount=amount,
                                                 tx=fake_hash("tx", i), status="confirmed", block_number=10 + i)))

    def run(stage, shard, batches):
        out = []
        for obs in batches:
            ctx = SimpleNamespace(partition=0, shard=shard, outcome=shard.apply(obs), observations=obs,
                                  now_ms=t0 + 60_000 + len(out), wall_ms=t0 + 60_000 + len(out), decisions=[],
                                  publish=[])
            stage.on_batch(ctx)
            out += _records(ctx)
        return out

    settings = StatementSettings(publish_interval_seconds=0.001)
    old, old_shard = StatementStage(settings), Shard()
    old.restore(0, None)
    roundtrip = lambda x: msgspec.msgpack.decode(msgspec.msgpack.encode(x))  # noqa: E731 (as a checkpoint)
    checkpoint = roundtrip(old_shard.snapshot()), roundtrip(old.snapshot(0))
    published = run(old, old_shard, [[settle(1, 100)], [transfer(1, 90)], [settle(2, 100)], [transfer(2, 90)]])
    assert published[-1].count == 2 and published[-1].amount == "180"            # then SIGKILL
    new = StatementStage(settings)
    new.restore(0, checkpoint[1])
    new_shard = Shard.restore(checkpoint[0], old_shard.config, old_shard.categorize)
    published += run(new, new_shard, [[transfer(1, 90), transfer(2, 90)],
                                      [settle(1, 100), settle(2, 100), settle(3, 100)]])
    (row,) = latest(published).values()
    assert (row.count, row.amount) == (3, "280")
    for order in itertools.permutations(published[-3:] + published[:2]):
        assert [(r.count, r.amount) for r in latest(order).values()] == [(3, "280")]


async def test_the_statements_topic_is_created_to_keep_statements_past_a_brokers_default_retention(monkeypatch):
    """A broker's default retention (7 days on Kafka) would delete a day's statement a week later, and the
    export of that day would then be empty: spendwatch creates the topic with statements.topic_retention_days."""
    import aiokafka.admin

    from watcher.observe.statements import ensure_statement_topic

    created = []

    class Admin:
        def __init__(self, **kwargs):
            pass

        async def start(self):
            pass

        async def close(self):
            pass

        async def list_topics(self):
            return ["x402.payments"]

        async def create_topics(self, topics):
            created.extend(topics)

    monkeypatch.setattr(aiokafka.admin, "AIOKafkaAdminClient", Admin)
    kafka = SimpleNamespace(bootstrap="127.0.0.1:1", client_id="t", create_topics=True, partitions=4,
                            replication_factor=1)
    await ensure_statement_topic(kafka, StatementSettings(topic="stm"))
    (topic,) = created
    assert (topic.name, topic.num_partitions) == ("stm", 4)
    assert int(topic.topic_configs["retention.ms"]) == 400 * DAY_MS
    await ensure_statement_topic(kafka, StatementSettings(topic="stm2", topic_retention_days=31))
    assert int(created[-1].topic_configs["retention.ms"]) == 31 * DAY_MS


def test_a_settle_after_its_transfer_moves_the_payment_to_its_category_row_in_any_interleaving():
    """The bridge publishes a transfer `pending` at the chain head, so it often comes before its settle: the
    row was the transfer's category (none: the category is keyed by the settle's resource) and stayed so.
    Now the settle moves the payment, with the changes of its records so far, to the row it makes when it
    comes first; a row emptied before anyone saw it is not published."""
    from watcher.events.decode import Decoder
    from watcher.pipeline.shard import Shard
    from watcher.simulate.records import encode, fake_hash, settle_record, transfer_record

    agent, merchant = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
    t0, dec, data = DAY + 60_000, Decoder(max_future_skew_ms=None), "https://api.example/v1/data"

    def records(i):
        tx = fake_hash("tx", i)
        return [dec.decode(encode(settle_record(event_id=f"s{i}", ts_ms=t0 + i * 1000, payer=agent, pay_to=merchant,
                                                amount=100, tx=tx, resource=data))),
                *(dec.decode(encode(transfer_record(ts_ms=t0 + i * 1000 + 500, payer=agent, to=merchant, amount=100,
                                                    tx=tx, status=s, block_number=10 + i))) for s in ("pending",
                                                                                                       "confirmed"))]

    def rows(batches, published=False):
        stage, shard = StatementStage(StatementSettings(publish_interval_seconds=3600)), Shard(
            categorize=lambda m, resource: "data" if resource == data else None)
        stage.restore(0, None)
        stage.parts[0].last_publish_ms = 0 if published else t0 + 60_000   # publish at the first batch, or not
        for obs in batches:
            stage.on_batch(SimpleNamespace(partition=0, shard=shard, outcome=shard.apply(obs), observations=obs,
                                           now_ms=t0 + 60_000, wall_ms=t0 + 60_000, decisions=[],
                                           publish=[]))
        return {k[3]: (r[0], r[1], r[7]) for k, r in stage.parts[0].rows.items()}

    reference = rows([records(1), records(2)])   # the settle first
    assert reference == {"data": (2, 200, 6)}
    for order in itertools.permutations(records(1)):
        for cut in range(4):                     # one batch, or cut after the first, second or third record
            batches = [list(order[:cut]), list(order[cut:])] if cut else [list(order)]
            assert rows(batches + [records(2)]) == reference, (order, cut)
    # an uncategorized row published before its payment's settle came is published again, empty
    (transfer_first,) = [o for o in itertools.permutations(records(1)) if o[0].kind == Kind.TRANSFER][:1]
    assert rows([[o] for o in transfer_first] + [records(2)], published=True) == \
        {"data": (2, 200, 6), "uncategorized": (0, 0, 0)}
