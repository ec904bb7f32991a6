"""A detector forgets agents idle past its retention at a checkpoint (watcher/detect/forget.py): its rows,
memory and checkpoint follow the active agents, the agents kept decide exactly as before, and an agent with
something running (frozen, escalation pending, approval window, cooldown, caps set by a person) is kept."""

from __future__ import annotations

import numpy as np
import pytest

from tests.detect.conftest import MERCHANT, T0, Harness
from watcher.config import load_settings
from watcher.detect import Detector, Policy
from watcher.detect.baselines import COLS
from watcher.detect.rules import CAP_WINDOWS
from watcher.pipeline.shard import Shard
from watcher.stages import DetectStage

DAY = 86_400_000
HOUR = 3_600_000
RETAIN = 14 * DAY


def wallet(i: int) -> str:
    return "0x" + f"{i:040d}"   # digits only: already its own checksum


def merchant(i: int) -> str:
    return "0x" + f"{9_000_000 + i}" + "0" * 33   # its first 8 bytes differ (they are its hash)


class Pair:
    """The same stream fed to a detector that forgets and to one that never does."""

    def __init__(self, policy_text: str = "") -> None:
        self.forgets, self.keeps = Harness(policy_text), Harness(policy_text)
        self.forgets.detector.forget_after_ms = RETAIN
        self.keeps.detector.forget_after_ms = 0

    def feed(self, records) -> None:
        self.forgets.feed(records)
        self.keeps.feed(records)

    def checkpoint(self) -> None:
        """Both restored from their snapshots (detector and shard), as after a restart."""
        for h in (self.forgets, self.keeps):
            snap, shard_snap = h.detector.snapshot(), h.shard.snapshot()
            forget, h.detector = h.detector.forget_after_ms, Detector.restore(snap, h.policy)
            h.detector.forget_after_ms = forget
            h.shard = Shard.restore(shard_snap, h.shard.config, h.detector.categorize)


def _history(pair: Pair, kept: range, everyone: range) -> int:
    """Every agent pays on day 0; the kept ones go on paying every 8 h for 16 days (warm baselines).
    Kept agent 0 has refused verifications in the minute before the end. Returns the end time."""
    h = pair.forgets
    pair.feed([h.settle(T0 + i * 1000 + k * 60_000, 10_000 + (i % 7) * 1000, agent=wallet(i), merchant=merchant(i % 5))
               for k in range(3) for i in everyone])
    t = T0 + HOUR
    end = T0 + 16 * DAY
    while t < end:
        pair.feed([h.settle(t + i * 1000, 10_000 + ((i * 7 + t // HOUR) % 13) * 1000, agent=wallet(i),
                            merchant=merchant((i + t // HOUR) % 5)) for i in kept])
        t += 8 * HOUR
    pair.feed([h.failed_verify(end - 30_000 + k * 1000, agent=wallet(kept[0])) for k in range(15)])
    return end


def _later(pair: Pair, kept: range, start: int) -> None:
    """A day of the kept agents' usual payments, three of them bursting, and agent 0's refused verifications
    reaching the rule's 20 within its minute (15 were counted before the checkpoint)."""
    h = pair.forgets
    pair.feed([h.failed_verify(start - 20_000 + k * 1000, agent=wallet(kept[0])) for k in range(5)])
    for step in range(48):
        t = start + step * 30 * 60_000
        batch = [h.settle(t + i * 1000, 10_000 + ((i + step) % 13) * 1000, agent=wallet(i),
                          merchant=merchant((i + step) % 5)) for i in kept]
        if step in (10, 30):
            batch += [h.settle(t + 500 + k, 40_000_000, agent=wallet(kept[j]), merchant=merchant(j))
                      for j in (3, 40, 77) for k in range(3)]
        if step == 20:
            batch += [h.settle(t + 700 + k, 20_000, agent=wallet(kept[5]), merchant=merchant(100 + k))
                      for k in range(8)]
        pair.feed(batch)


def test_idle_agents_are_forgotten_and_the_others_decide_as_before():
    everyone, kept = range(1, 1001), range(901, 1001)
    pair = Pair()
    end = _history(pair, kept, everyone)
    before = len(pair.forgets.decisions)
    pair.checkpoint()
    assert len(pair.forgets.detector.agents) == 100
    assert pair.forgets.detector.agents == [wallet(i) for i in kept]
    assert len(pair.keeps.detector.agents) == 1000
    sample = [wallet(kept[j]) for j in (0, 3, 50, 63)]   # the fleet model scores 64 per batch: these are scored
    _same_rows(pair.forgets.detector, pair.keeps.detector, sample)
    _later(pair, kept, end)

    got, expected = pair.forgets.decisions, pair.keeps.decisions
    assert got == expected
    rules = {d.rule for d in got[before:]}
    assert {"baseline.payment_size", "failed_verifications", "new_merchant_burst"} <= rules, rules
    a, b = pair.forgets.detector, pair.keeps.detector
    _same_rows(a, b, sample)
    assert a.base.state[a.index[wallet(kept[3])], COLS.index("n")] > 30
    assert a.fleet.scored == b.fleet.scored


def _same_rows(a: Detector, b: Detector, agents: list[str]) -> None:
    for agent in agents:
        ra, rb = a.index[agent], b.index[agent]
        assert a.base.state[ra].tolist() == b.base.state[rb].tolist()
        assert a.base.mtab[ra].tolist() == b.base.mtab[rb].tolist()
        assert a.base.newm[ra].tolist() == b.base.newm[rb].tolist()
        assert a.fail_ring[ra].tolist() == b.fail_ring[rb].tolist() and a.fail_ptr[ra] == b.fail_ptr[rb]
        assert a.fleet.next_due[ra] == b.fleet.next_due[rb] > 0
        assert a.table.limits[ra] == b.table.limits[rb] and a.table.caps[ra].tolist() == b.table.caps[rb].tolist()


def _idle_world(policy_text: str) -> tuple[Harness, int]:
    """Agents 1..20 paid on day 0 (agent 11 above the ceiling: frozen; agent 12 above the escalation threshold:
    pending; agent 13 approved; agent 14 had 20 refused verifications: a warning); agent 21 pays on day 20."""
    h = Harness(policy_text)
    h.feed([h.settle(T0 + i * 1000, 1_000_000, agent=wallet(i)) for i in range(1, 21)])
    h.feed([h.settle(T0 + 60_000, 300_000_000, agent=wallet(11)),
            h.settle(T0 + 61_000, 60_000_000, agent=wallet(12))]
           + [h.failed_verify(T0 + 62_000 + k, agent=wallet(14)) for k in range(20)])
    h.detector.approve(wallet(13), T0 + 63_000)
    now = T0 + 20 * DAY
    h.feed([h.settle(now, 1_000_000, agent=wallet(21))])
    return h, now


POLICY = f"""
[defaults]
per_payment_max_usdc = 100
[defaults.escalation]
payment_above_usdc = 50
timeout_seconds = 2592000
approval_ttl_seconds = 2592000
[agents."{wallet(14)}"]
warn_cooldown_seconds = 2592000
anomaly = {{ warmup_payments = 5 }}
"""


def test_an_agent_with_something_running_is_kept():
    h, _ = _idle_world(POLICY)
    det = h.detector
    assert det.is_frozen(wallet(11)) and det.index[wallet(12)] in det.pending
    assert [d.rule for d in h.decisions] == ["payment_ceiling", "escalate_payment", "failed_verifications"]
    stage = DetectStage(h.policy, "watcher.decisions")
    stage.detectors[0] = det
    stage.set_caps(0, wallet(19), {"1m": 2_000_000})

    snap = stage.snapshot(0)     # each kept row moves down: 10..13 to 0..3, 18 to 4, 20 to 5
    assert det.agents == [wallet(i) for i in (11, 12, 13, 14, 19, 21)]
    one_minute = [w for _, w, _ in CAP_WINDOWS].index("1m")
    assert det.table.caps[4, one_minute] == 2_000_000 and det.table.caps[5, one_minute] != 2_000_000
    assert det.table.params.warm_n[3] == 5 and det.table.params.warm_n[2] == det.table.params.warm_n[4] == 30
    assert det.table.limits[3] is h.policy.limits(wallet(14)) and det.table.limits[3].warn_cooldown_seconds == 2592000
    for d in (det, Detector.restore(snap, h.policy)):
        assert d.frozen[:6].tolist() == [True] + [False] * 5
        assert list(d.pending) == [1] and d.pending[1][2] == "escalate_payment"
        assert list(d.approved_until) == [2] and d.approved_until[2] > T0 + 20 * DAY
        assert list(d.cooldown) == [(3, "failed_verifications", "")]
    assert det.release(wallet(11)) and det.approve(wallet(12))


def test_a_forgotten_agent_that_pays_again_starts_afresh():
    h, now = _idle_world("")
    det = h.detector
    warm_n = det.base.state[det.index[wallet(7)], COLS.index("n")]
    assert warm_n == 1
    det.snapshot()
    assert det.agents == [wallet(21)]
    assert wallet(7) not in det.index and not det.is_frozen(wallet(7))
    h.feed([h.settle(now + 1000 + k, 1_000_000 * (k + 1), agent=wallet(7)) for k in range(3)])
    row = det.index[wallet(7)]
    assert row == 1
    state = det.base.state[row]
    assert state[COLS.index("n")] == 3 and state[COLS.index("first_ts")] == now + 1000
    assert det.table.limits[row] is h.policy.defaults


def test_nothing_is_forgotten_below_one_row_in_eight_or_with_retention_off():
    h = Harness()
    h.feed([h.settle(T0, 1_000_000, agent=wallet(1))])
    h.feed([h.settle(T0 + 20 * DAY + i, 1_000_000, agent=wallet(i)) for i in range(3, 20)])
    det = h.detector
    assert det.forget_idle() == 0 and len(det.agents) == 18      # 1 idle of 18: fewer than one in eight
    h.feed([h.settle(T0 + 1000 + i, 1_000_000, agent=wallet(i)) for i in range(20, 30)])
    det.forget_after_ms = 0
    assert det.forget_idle() == 0 and len(det.agents) == 28
    det.forget_after_ms = RETAIN
    assert det.forget_idle() == 11 and det.agents == [wallet(i) for i in range(3, 20)]


def test_the_retention_is_a_setting():
    assert load_settings().detect.forget_after_seconds == 14 * 86400
    assert load_settings(detect={"forget_after_seconds": 0}).detect.forget_after_seconds == 0
    with pytest.raises(Exception, match="forget_after_seconds"):
        load_settings(detect={"forget_after_seconds": 3600})
