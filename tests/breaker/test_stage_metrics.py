"""Breaker state reaches the fleet metrics across restarts and partition hand-offs (plain values, no broker)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from eth_utils import to_checksum_address
from prometheus_client import CollectorRegistry

from watcher.breaker.metrics import BreakerMetrics
from watcher.breaker.stage import BreakerStage
from watcher.detect.decision import Decision, rfc3339
from watcher.metrics import Metrics

T0 = 1_795_305_600_000
OPEN_A, HELD_B, WAIT_C = (to_checksum_address("0x" + h * 20) for h in ("a1", "b2", "c3"))


def _dec(kind: str, agent: str, id: str) -> Decision:
    return Decision(id=id, kind=kind, agent=agent, rule="cap_1m", source="policy", observed=3, threshold=2,
                    unit="usdc_base_units", window="1m", event_ids=["e1"], occurred_at=rfc3339(T0), reason="r")


def _replica() -> tuple[Metrics, BreakerStage]:
    m = Metrics(CollectorRegistry())
    return m, BreakerStage(metrics=BreakerMetrics(m.registry, fleet=m), partitions=1)


def _batch(stage: BreakerStage, decisions, now_ms: int = T0, real_from_ms: int = 0) -> None:
    stage.on_batch(SimpleNamespace(partition=0, decisions=decisions, now_ms=now_ms, publish=[],
                                   real_from_ms=real_from_ms))


def _seen(m: Metrics) -> dict:
    g = m.registry.get_sample_value
    text = m.render().decode()
    return {
        "breakers": {s: g("spendwatch_breakers", {"state": s}) for s in ("open", "half_open", "held")},
        "waiting": g("spendwatch_escalations_waiting"),
        "agent_states": sorted(line.split(" ")[0] for line in text.splitlines()
                               if line.startswith("spendwatch_agent_breaker_state{")),
        "agent_waiting": sorted(line.split(" ")[0] for line in text.splitlines()
                                if line.startswith("spendwatch_agent_escalation_waiting_since_timestamp_seconds{")),
        "transitions": sum(g("spendwatch_breaker_transitions_total", {"state": s}) or 0
                           for s in ("open", "half_open", "held", "closed")),
        "changes": sum(s.value for f in m.registry.collect() if f.name == "spendwatch_breaker_changes"
                       for s in f.samples if s.name.endswith("_total")),
    }


class _Producer:
    async def send_and_wait(self, *a, **k) -> None:
        pass


def _first_owner():
    """A replica that saw an agent frozen, one held by a person and one escalation start."""
    m, stage = _replica()
    stage.producer = _Producer()
    stage.restore(0, None)
    _batch(stage, [_dec("freeze", OPEN_A, "d-1"), _dec("escalate", WAIT_C, "d-3")])
    asyncio.run(stage.act("hold", HELD_B, by="ops", reason="look"))
    return m, stage


def test_restore_exports_the_restored_breakers_without_counting_transitions():
    _, first = _first_owner()
    snap = first.snapshot(0)
    m, stage = _replica()                      # a restart: a new process, a fresh registry
    stage.restore(0, snap)
    seen = _seen(m)
    assert seen["breakers"] == {"open": 1, "half_open": 0, "held": 1}
    assert seen["waiting"] == 1
    assert seen["agent_states"] == [f'spendwatch_agent_breaker_state{{agent="{OPEN_A}",state="open"}}',
                                    f'spendwatch_agent_breaker_state{{agent="{HELD_B}",state="held"}}']
    assert seen["agent_waiting"] == [
        f'spendwatch_agent_escalation_waiting_since_timestamp_seconds{{agent="{WAIT_C}"}}']
    assert seen["transitions"] == 0 and seen["changes"] == 0     # taking over is not a change
    assert m.registry.get_sample_value("spendwatch_agents_capped", {"kind": "breaker"}) == 0


def test_drop_forgets_the_partition_and_a_handoff_does_not_count_twice():
    m1, first = _first_owner()
    before = _seen(m1)
    assert before["breakers"]["open"] == 1 and before["waiting"] == 1 and len(before["agent_states"]) == 2
    snap = first.snapshot(0)
    first.drop(0)                              # partition 0 moves to another replica
    m2, second = _replica()
    second.restore(0, snap)
    after1, after2 = _seen(m1), _seen(m2)
    assert after1["breakers"] == {"open": 0, "half_open": 0, "held": 0} and after1["waiting"] == 0
    assert after1["agent_states"] == [] and after1["agent_waiting"] == []
    assert after1["transitions"] == before["transitions"]          # letting go is not a change either
    assert after2["breakers"] == {"open": 1, "half_open": 0, "held": 1} and after2["waiting"] == 1
    assert len(after2["agent_states"]) == 2 and len(after2["agent_waiting"]) == 1


def test_restored_breakers_keep_changing_normally():
    _, first = _first_owner()
    m, stage = _replica()
    stage.restore(0, first.snapshot(0))
    _batch(stage, [], T0 + 10 * 86_400_000)    # long after the cool-down: open -> half_open
    seen = _seen(m)
    assert seen["breakers"] == {"open": 0, "half_open": 1, "held": 1}
    assert seen["transitions"] == 1


def test_an_escalation_about_a_backlog_waits_from_when_it_is_asked():
    """Catching up a backlog, the watcher asks about a payment half an hour old: the detector gives the person
    the whole timeout from the wall clock, so the waiting-since series (EscalationWaitingTooLong pages at half
    the timeout) starts there too. It started at the payment's time and paged at once. Live (no floor), it is
    the decision's time."""
    m, stage = _replica()
    stage.restore(0, None)
    asked = T0 + 1_800_000
    _batch(stage, [_dec("escalate", WAIT_C, "d-3")], real_from_ms=asked)
    since = "spendwatch_agent_escalation_waiting_since_timestamp_seconds"
    assert m.registry.get_sample_value(since, {"agent": WAIT_C}) == asked / 1000
    m, stage = _replica()
    stage.restore(0, None)
    _batch(stage, [_dec("escalate", WAIT_C, "d-3")])
    assert m.registry.get_sample_value(since, {"agent": WAIT_C}) == T0 / 1000
