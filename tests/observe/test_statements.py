"""Daily statements: the stage with plain values, then the daemon -> topic -> `spendwatch statement` path."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import pytest

from watcher.events.observation import Kind, Observation
from watcher.observe.cli import format_rows, rows_as_dicts, usdc_text
from watcher.observe.statements import (DAY_MS, StatementSettings, StatementStage, decode_statement, latest)
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
                           now_ms=now_ms, decisions=[], publish=[])


def _records(ctx):
    return [decode_statement(v) for _, _, v in ctx.publish]


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
