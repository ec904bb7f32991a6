"""A daemon that starts with a backlog judges it by the records' own time, as `spendwatch replay` does.

While no daemon runs, a stream stamped 9 to 3 minutes ago is published: a runaway burst that crosses the 1m
cap early in it (and the 1h cap, a warning), another one at its end, an escalation whose timeout passes
inside the stream, and quiet agents. A daemon then starts (no checkpoint: it reads the topics from the start) and must decide what replay
decides over the same records. Before the fix, each batch advanced the shard to the wall clock first, so
every backlog payment was older than the 1m window and no cap_1m decision was ever made.

What legitimately differs, and is checked as such: an escalation's deadline. Replay ages by event time, so
the escalation raised 8 minutes ago times out 2 minutes later in event time, inside the stream. The daemon
gives a person the whole timeout from the moment it asks (its deadline is the wall clock + timeout), so it
has no escalation_timeout for it while the test runs, or one dated at least that late. Breakers, by
contrast, cool down from the freeze decision's time, as they would in any run over the same records.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.breaker.conftest import MERCHANT, wallet
from tests.integration.helpers import make_settings
from tests.polling import wait_for
from tests.topics import read_topic
from watcher.breaker import BreakerStage, load_breaker_config
from watcher.daemon import Daemon
from watcher.detect.decision import decode_decision
from watcher.detect.policy import Policy
from watcher.detect.replay import Replay
from watcher.simulate.publish import publish_records
from watcher.simulate.records import encode, fake_hash, settle_record
from watcher.sources.kafka import ensure_topics
from watcher.stages import DetectStage

pytestmark = pytest.mark.integration

U = 1_000_000
TIMEOUT_S = 120
POLICY = f"""
[defaults]
per_payment_max_usdc = 0
[defaults.caps]
per_minute_usdc = 5
per_hour_usdc = 6
per_day_usdc = 0
[defaults.actions]
cap_1h = "warn"
[defaults.escalation]
payment_above_usdc = 2
window_above_usdc = 0
timeout_seconds = {TIMEOUT_S}
[defaults.anomaly]
enabled = false
fleet = false
"""
EARLY, LATE, ASKED, QUIET1, QUIET2 = (wallet(0xA1), wallet(0xA2), wallet(0xA3), wallet(0xA4), wallet(0xA5))


def backlog(end_ms: int) -> list[tuple[str, bytes, bytes]]:
    """Settle records from end_ms - 6 min to end_ms, in time order (topic kind, key, value)."""
    start = end_ms - 360_000
    pays: list[tuple[int, str, int]] = []
    pays += [(start + i * 30_000, EARLY, U // 2) for i in range(12)]           # background
    pays += [(start + 120_000 + i * 1_000, EARLY, U) for i in range(8)]       # crosses 5 USDC in 1m
    pays += [(end_ms - 20_000 + i * 1_000, LATE, U) for i in range(7)]        # crosses it at the end
    pays += [(start + 30_000, ASKED, 3 * U)]                                   # escalated; times out in replay
    pays += [(start + 60_000 + i * 60_000, ASKED, U // 10) for i in range(5)]
    pays += [(start + i * 20_000, agent, U // 5) for i in range(18) for agent in (QUIET1, QUIET2)]
    pays.sort()
    return [("payments", payer.encode(), encode(settle_record(
        event_id=f"c-{n}", ts_ms=ts, payer=payer, pay_to=MERCHANT, amount=amount, tx=fake_hash("catchup", n))))
        for n, (ts, payer, amount) in enumerate(pays)]


def key(d) -> tuple:
    return (d.id, d.kind, d.agent, d.rule, tuple(d.event_ids))


async def test_daemon_reading_a_backlog_decides_as_replay_does(kafka_bootstrap, unique):
    s = make_settings(kafka_bootstrap, unique, partitions=2)
    await ensure_topics(s.kafka)
    policy = Policy.from_text(POLICY)
    end = int(time.time() * 1000) - 180_000
    records = backlog(end)
    await publish_records(s.kafka, records)                     # no daemon runs yet

    replayed = list(Replay.for_settings(policy, s).run([v for _, _, v in records]))
    assert {(d.agent, d.rule) for d in replayed if d.kind == "freeze"} >= {
        (EARLY, "cap_1m"), (LATE, "cap_1m"), (ASKED, "escalation_timeout")}
    assert (EARLY, "cap_1h") in {(d.agent, d.rule) for d in replayed if d.kind == "warn"}

    detect = DetectStage(policy, s.kafka.decisions_topic)
    breaker = BreakerStage(load_breaker_config(None, breaker={"topic": f"brk-{unique}"}), control=detect)
    daemon = Daemon(s, stages=[detect, breaker])
    started_ms = int(time.time() * 1000)
    task = asyncio.create_task(daemon.run(), name="daemon")
    try:
        await wait_for(lambda: daemon.counters.consumed >= len(records) and len(daemon.shards) == 2
                       and daemon.clocks.live == set(daemon.shards), 60, "the backlog read and caught up",
                       task=task, show=lambda: (daemon.counters, daemon.clocks.live))
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)
    decided = [decode_decision(v) for v in await read_topic(kafka_bootstrap, s.kafka.decisions_topic)]

    # the runaways are frozen for the 1m cap, as replay freezes them (old code: no cap_1m decision at all)
    assert {(d.agent, d.rule) for d in decided if d.kind == "freeze"} >= {(EARLY, "cap_1m"), (LATE, "cap_1m")}
    # every decision replay makes, and no other, but for the escalation's timeout (see the docstring)
    same = lambda ds: {key(d) for d in ds if d.rule != "escalation_timeout"}   # noqa: E731
    assert same(decided) == same(replayed)
    assert all(d.at_ms >= started_ms + TIMEOUT_S * 1000 for d in decided if d.rule == "escalation_timeout")
    det = detect.detector_for(ASKED)
    if det is not None and det.index[ASKED] in det.pending:     # still waiting for a person
        assert det.pending[det.index[ASKED]][0] >= started_ms + TIMEOUT_S * 1000
    # the breakers opened by backlog freezes cool down from the decision (the same records give the same
    # webhook bodies): 15 minutes from a freeze 3 to 7 minutes old, so they are still open
    freezes = {d.agent: d for d in decided if d.kind == "freeze"}
    for agent in (EARLY, LATE):
        view = breaker.view(agent)
        assert view["state"] == "open" and view["reopen_ms"] == freezes[agent].at_ms + breaker.timing.cooldown_ms
