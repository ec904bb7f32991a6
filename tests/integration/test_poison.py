"""A poison pill against the real broker: a record that makes the watcher's own code raise (here the
configured category callable, failing for one merchant) stopped `spendwatch run`, and every restart replayed
it from the checkpoint and stopped again, leaving the fleet unwatched. Now it is dead-lettered with reason
internal_error and its source offset, the daemon goes on counting and judging the records after it, and once
the cause is fixed `spendwatch deadletters --redrive` has it counted."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.helpers import agent_sums, make_settings, run_until, until
from tests.integration.test_deadletters import _cli, _publish
from tests.topics import read_records
from tests.unit.test_failures import BAD, A, B, Broken, M
from watcher.daemon import Daemon
from watcher.detect.decision import decode_decision
from watcher.detect.policy import Policy
from watcher.simulate.records import encode, fake_hash, settle_record
from watcher.sources.deadletter import decode_dead_letter
from watcher.sources.kafka import ensure_topics
from watcher.stages import DetectStage

pytestmark = pytest.mark.integration

POLICY = Policy.from_text("[defaults.caps]\nper_minute_usdc = 10\n")
U = 1_000_000


def _settle(i: int, payer: str, pay_to: str, amount: int, ts_ms: int) -> bytes:
    return encode(settle_record(event_id=f"poison-{i}", ts_ms=ts_ms, payer=payer, pay_to=pay_to, amount=amount,
                                tx=fake_hash("poison", i)))


async def test_a_record_that_raises_is_dead_lettered_and_the_daemon_goes_on_counting_and_judging(
        kafka_bootstrap, unique):
    s = make_settings(kafka_bootstrap, unique, partitions=2)
    k = s.kafka
    await ensure_topics(k)
    t = int(time.time() * 1000) - 2_000
    poison = _settle(1, B, BAD, U, t + 1)
    await _publish(k, [(k.payments_topic, 1, A.encode(), _settle(0, A, M, 4 * U, t), []),
                       (k.payments_topic, 1, B.encode(), poison, [("trace-id", b"t-1")])])
    rate_card = Broken()   # the configured category map: raises for BAD until fixed
    daemon = Daemon(s, [DetectStage(POLICY, k.decisions_topic)], categorize=rate_card, live_clock=False)
    task = asyncio.create_task(daemon.run())
    try:
        await until(daemon, task, lambda d: d.counters.dead_lettered >= 1)
        # still running: the records after the poison are counted and judged (4 + 4 + 4 USDC > the 10 cap)
        await _publish(k, [(k.payments_topic, 1, A.encode(), _settle(i, A, M, 4 * U, t + i), []) for i in (2, 3)])
        await until(daemon, task, lambda d: d.counters.consumed >= 4 and d.decision_counts["freeze"] >= 1)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)       # a clean stop: checkpoint, commit

    c = daemon.counters
    assert (c.consumed, c.processed, c.dead_lettered) == (4, 3, 1)
    assert {a.lower(): v for a, v in agent_sums(daemon).items()} == {A.lower(): (12 * U, 3)}
    [dl] = [decode_dead_letter(m.value) for m in await read_records(kafka_bootstrap, k.dead_letter_topic)]
    assert (dl.reason, dl.where, dl.raw(), dl.key()) == ("internal_error", f"{k.payments_topic}[1]@1", poison,
                                                         B.encode())
    assert "rate card: no price" in dl.detail and dl.source_headers() == [("trace-id", b"t-1")]
    decisions = [decode_decision(m.value) for m in await read_records(kafka_bootstrap, k.decisions_topic)]
    assert [(d.kind, d.rule, d.agent) for d in decisions] == [("freeze", "cap_1m", A)]

    # the fix, then the re-drive: a restart from the checkpoint counts the poison record once, as it was
    rate_card.fixed = True
    assert await _cli("--bootstrap", kafka_bootstrap, "--topic", k.dead_letter_topic, "--redrive",
                      "--reason", "internal_error") == 0
    again = Daemon(s, [DetectStage(POLICY, k.decisions_topic)], categorize=rate_card, live_clock=False)
    await run_until(again, lambda d: d.counters.consumed >= 1)
    assert (again.counters.consumed, again.counters.processed, again.counters.dead_lettered) == (1, 1, 0)
    assert {a.lower(): v for a, v in agent_sums(again).items()} == {A.lower(): (12 * U, 3), B.lower(): (U, 1)}
