"""Dead letters keep the source record's headers, and `spendwatch deadletters` reads the topic back (summary,
list) and re-drives records to their source topic once the cause is fixed; against the real broker."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.integration.helpers import agent_sums, make_settings, run_until
from tests.topics import read_records
from watcher.cli.main import main
from watcher.daemon import Daemon
from watcher.simulate.records import encode, settle_record
from watcher.sources.deadletter import dead_letter_headers, dead_letter_value, decode_dead_letter, make_dead_letter
from watcher.sources.kafka import ensure_topics, producer

pytestmark = pytest.mark.integration

PAYER = "0x" + "ab" * 20
HEADERS = [("trace-id", b"t-42"), ("content-type", b"application/json")]


async def _publish(k, records) -> None:
    """(topic, partition, key, value, headers) records, sent and acknowledged."""
    p = producer(k)
    await p.start()
    try:
        await asyncio.gather(*[await p.send(t, v, key=key, partition=part, headers=h)
                               for t, part, key, v, h in records])
    finally:
        await p.stop()


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(main, ["deadletters", *argv])


async def test_the_daemon_keeps_headers_and_a_redriven_record_counts_after_the_fix(kafka_bootstrap, unique):
    s = make_settings(kafka_bootstrap, unique, partitions=2)
    await ensure_topics(s.kafka)
    ts_ms = int(time.time() * 1000) - 60_000
    raw = encode(settle_record(event_id="evt-big", ts_ms=ts_ms, payer=PAYER, pay_to="0x" + "cd" * 20,
                               amount=1_250_000, tx="0x" + "ef" * 32)) + b" " * 20_000   # > max_event_bytes
    await _publish(s.kafka, [(s.kafka.payments_topic, 1, PAYER.encode(), raw, HEADERS)])
    await run_until(Daemon(s, live_clock=False), lambda d: d.counters.dead_lettered >= 1)
    [dl] = [decode_dead_letter(m.value) for m in await read_records(kafka_bootstrap, s.kafka.dead_letter_topic)]
    assert (dl.reason, dl.where, dl.key(), dl.raw()) == ("too_large", f"{s.kafka.payments_topic}[1]@0",
                                                        PAYER.encode(), raw)
    assert dl.source_headers() == HEADERS

    # the operator raises events.max_event_bytes, re-drives, and the daemon counts the payment
    assert await _cli("--bootstrap", kafka_bootstrap, "--topic", s.kafka.dead_letter_topic, "--redrive",
                      "--reason", "too_large") == 0
    back = [m for m in await read_records(kafka_bootstrap, s.kafka.payments_topic) if m.offset > 0]
    assert [(m.partition, m.key, m.value, list(m.headers)) for m in back] == [(1, PAYER.encode(), raw, HEADERS)]
    fixed = s.model_copy(update={"events": s.events.model_copy(update={"max_event_bytes": 65_536})})
    daemon = Daemon(fixed, live_clock=False)
    await run_until(daemon, lambda d: d.counters.consumed >= 1)
    assert (daemon.counters.processed, daemon.counters.dead_lettered) == (1, 0)
    assert {a.lower(): v for a, v in agent_sums(daemon).items()} == {PAYER: (1_250_000, 1)}


async def _dead_letters(k, letters) -> None:
    await _publish(k, [(k.dead_letter_topic, None, b"k", dead_letter_value(dl), dead_letter_headers(dl))
                       for dl in letters])


async def test_summary_counts_and_list_filter(kafka_bootstrap, unique, capsys):
    s = make_settings(kafka_bootstrap, unique, partitions=2)
    await ensure_topics(s.kafka)
    pay, chain = s.kafka.payments_topic, s.kafka.chain_topic
    await _dead_letters(s.kafka, [make_dead_letter("bad_json", "unexpected end", pay, 0, 3, None, b"{"),
                                  make_dead_letter("bad_json", "unexpected end", pay, 1, 8, None, b"{\"a"),
                                  make_dead_letter("bad_schema", "no id", pay, 1, 9, None, b"{}"),
                                  make_dead_letter("bad_json", "not\nJSON", chain, 0, 4, None, b"x")])
    await _publish(s.kafka, [(s.kafka.dead_letter_topic, 0, None, b"not a dead letter", [])])
    argv = ("--bootstrap", kafka_bootstrap, "--topic", s.kafka.dead_letter_topic)
    capsys.readouterr()

    assert await _cli(*argv, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total"] == 4 and summary["unreadable"] == 1 and summary["cut"] == 0
    assert summary["byReason"] == {"bad_json": 3, "bad_schema": 1}
    assert summary["bySourceTopic"] == {pay: 3, chain: 1}
    assert summary["oldest"] <= summary["newest"]

    assert await _cli(*argv) == 0
    text = capsys.readouterr().out
    assert "4 dead letters" in text and "by reason:" in text and "by source topic:" in text

    assert await _cli(*argv, "--list", "--reason", "bad_json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split("  ")[2] for line in lines) == sorted([f"{pay}[0]@3", f"{pay}[1]@8", f"{chain}[0]@4"])
    assert all(" bad_json " in line for line in lines) and any(line.endswith("not JSON") for line in lines)
    assert await _cli(*argv, "--list", "--limit", "2") == 0
    assert len(capsys.readouterr().out.splitlines()) == 2

    # the whole topic was held in memory: now only the re-driven reason keeps its record, key and headers
    from watcher.cli.deadletters import read_dead_letters

    letters, unreadable = await read_dead_letters(kafka_bootstrap, s.kafka.dead_letter_topic, 30, "bad_schema")
    assert unreadable == 1 and len(letters) == 4
    assert {(d.reason, d.raw()) for d in letters} == {("bad_json", b""), ("bad_schema", b"{}")}


async def test_redrive_refuses_cut_records_sends_each_once_and_dry_run_sends_nothing(kafka_bootstrap, unique,
                                                                                      capsys):
    s = make_settings(kafka_bootstrap, unique, partitions=2)
    await ensure_topics(s.kafka)
    pay = s.kafka.payments_topic
    whole = make_dead_letter("too_large", "20016 bytes", pay, 1, 10, b"wallet-1", b"{\"whole\": 1}", HEADERS)
    cut = make_dead_letter("too_large", "750000 bytes", pay, 0, 11, b"wallet-2", b"z" * 750_000)
    other = make_dead_letter("bad_json", "truncated", pay, 0, 12, b"wallet-3", b"{")
    await _dead_letters(s.kafka, [whole, cut, other, whole])   # `whole` dead-lettered twice
    argv = ("--bootstrap", kafka_bootstrap, "--topic", s.kafka.dead_letter_topic, "--redrive", "--reason",
            "too_large")
    capsys.readouterr()

    assert await _cli(*argv, "--dry-run") == 1
    out = capsys.readouterr()
    assert f"would re-drive too_large {pay}[1]@10" in out.out and "would re-drive 1 dead letter" in out.out
    assert await read_records(kafka_bootstrap, pay) == []

    assert await _cli(*argv) == 1          # the cut one is refused: nonzero, after re-driving the rest
    out = capsys.readouterr()
    assert f"refused: too_large {pay}[0]@11" in out.err and f"the whole record is at {pay}[0]@11" in out.err
    assert "re-drove 1 dead letter" in out.out and "1 repeated" in out.out and "1 cut (refused)" in out.out
    back = await read_records(kafka_bootstrap, pay)
    assert [(m.partition, m.key, m.value, list(m.headers)) for m in back] == [
        (1, b"wallet-1", b"{\"whole\": 1}", HEADERS)]
