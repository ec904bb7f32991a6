"""A person's approval of an escalation survives a restart: the escalation's timeout does not freeze.
(And an escalation whose timeout the policy only warns about leaves the breaker, at the end.)

The detector's pending escalation lives in its checkpoint; a person's approval is on the breaker log at
once. A crash after the approval and before the next checkpoint restores a detector that still waits for
an answer (or, if the checkpoint predates the escalation, raises it again from the re-read input): the
answer must come from the breaker log, not from nobody.
"""

from __future__ import annotations

from types import SimpleNamespace

from tests.breaker.conftest import SECRET
from tests.detect.conftest import AGENT, T0, Harness
from watcher.breaker import BreakerStage, load_breaker_config
from watcher.breaker.outbox import PartitionFold, decode_record
from watcher.breaker.state import CLOSED
from watcher.detect import Detector

U = 1_000_000
POLICY = ("[defaults.caps]\nper_minute_usdc = 0\n[defaults.anomaly]\nenabled = false\nfleet = false\n"
          "[defaults.escalation]\npayment_above_usdc = 1\ntimeout_seconds = 60\n")


class Control:
    """The detection stage's control surface over one Detector (partition 0)."""

    def __init__(self, h: Harness) -> None:
        self.h = h

    def release(self, p, agent):
        return self.h.detector.release(agent)

    def approve(self, p, agent, only_pending=False):
        return self.h.detector.approve(agent, only_pending=only_pending)

    def is_frozen(self, p, agent):
        return self.h.detector.is_frozen(agent)


class Log:
    """The breaker topic as the daemon's BreakerLog folds it, and a producer that appends to it."""

    def __init__(self) -> None:
        self.f = PartitionFold()

    def fold(self, partition):
        return self.f

    def add(self, publish) -> None:
        for _, _, value in publish:
            self.f.add(decode_record(value))

    async def send_and_wait(self, topic, value, key=None):
        self.f.add(decode_record(value))


def _stage(h: Harness, log: Log, snap) -> BreakerStage:
    cfg = load_breaker_config(None, webhook={"url": "http://127.0.0.1:9/hook", "secrets": [SECRET]},
                              admin={"enabled": False})
    brk = BreakerStage(cfg, control=Control(h))
    brk.log, brk.producer = log, log
    brk.restore(0, snap)
    return brk


def _batch(h: Harness, brk: BreakerStage, log: Log, records) -> list:
    ds = h.feed(records)
    ctx = SimpleNamespace(partition=0, decisions=list(ds), publish=[], now_ms=h.shard.watermark_ms,
                          real_from_ms=0)
    brk.on_batch(ctx)
    log.add(ctx.publish)
    return ds


async def _approved_then_restarted(checkpoint_before_escalation: bool):
    h, log = Harness(POLICY), Log()
    brk = _stage(h, log, None)
    first = h.settle(T0, 2 * U)
    before = (h.detector.snapshot(), brk.snapshot(0))
    [esc] = _batch(h, brk, log, [first])
    assert esc.kind == "escalate" and brk.parts[0].get(AGENT).escalation == esc.id
    after = (h.detector.snapshot(), brk.snapshot(0))
    out = await brk.act("approve", AGENT, by="admin:alice")
    assert out["changed"]

    # SIGKILL before the next checkpoint: both stages restart from the last one, the log is intact
    det_snap, brk_snap = before if checkpoint_before_escalation else after
    h2 = Harness(POLICY)
    h2.detector = Detector.restore(det_snap, h2.policy)
    h2.n = h.n
    brk2 = _stage(h2, log, brk_snap)
    replayed = _batch(h2, brk2, log, [first]) if checkpoint_before_escalation else []
    later = _batch(h2, brk2, log, [h2.settle(T0 + 61_000, 1)])
    return brk2, replayed + later


async def test_approval_after_the_checkpoint_is_kept_across_a_restart():
    brk, decisions = await _approved_then_restarted(checkpoint_before_escalation=False)
    assert [(d.kind, d.rule) for d in decisions] == []
    assert brk.parts[0].state(AGENT) == CLOSED


async def test_approval_of_an_escalation_raised_again_on_replay_is_kept():
    brk, decisions = await _approved_then_restarted(checkpoint_before_escalation=True)
    assert [d.kind for d in decisions if d.kind == "freeze"] == []
    assert brk.parts[0].state(AGENT) == CLOSED


async def test_a_freeze_decided_again_after_a_release_leaves_the_agent_judged():
    """Frozen, released by a person, then a restart from a checkpoint older than the freeze: the detector
    decides the freeze again from the re-read input, the breaker (half-open) does not apply it, and the
    detector must not stay silent about the agent for the whole probation."""
    caps = "[defaults.caps]\nper_minute_usdc = 1\n[defaults.anomaly]\nenabled = false\nfleet = false\n"
    h, log = Harness(caps), Log()
    brk = _stage(h, log, None)
    before = (h.detector.snapshot(), brk.snapshot(0))
    paid = [h.settle(T0, 600_000), h.settle(T0 + 1000, 600_000)]
    [freeze] = _batch(h, brk, log, paid)
    assert freeze.kind == "freeze"
    await brk.act("release", AGENT, by="admin:alice")
    assert brk.parts[0].state(AGENT) == "half_open"

    h2 = Harness(caps)
    h2.detector = Detector.restore(before[0], h2.policy)
    h2.n = h.n
    brk2 = _stage(h2, log, before[1])
    assert [d.id for d in _batch(h2, brk2, log, paid)] == [freeze.id]     # decided again, not applied
    assert brk2.parts[0].state(AGENT) == "half_open"
    [again] = _batch(h2, brk2, log, [h2.settle(T0 + 2000, 500_000)])       # over the cap in probation
    assert again.kind == "freeze" and brk2.parts[0].state(AGENT) == "open"


async def test_an_escalation_whose_timeout_only_warns_expires_and_the_next_one_is_asked():
    """`escalation_timeout = "warn"` in the policy: an unanswered escalation warns instead of freezing. It
    must leave the breaker (expired, on the log), or it stays waiting for ever and swallows every later
    escalation of the agent (no escalate webhook, no PagerDuty)."""
    policy = POLICY + '[defaults.actions]\nescalation_timeout = "warn"\n'
    h, log = Harness(policy), Log()
    brk = _stage(h, log, None)
    [first] = _batch(h, brk, log, [h.settle(T0, 2 * U)])
    [timeout] = _batch(h, brk, log, [h.settle(T0 + 61_000, 1)])
    assert (first.kind, timeout.kind, timeout.rule) == ("escalate", "warn", "escalation_timeout")
    assert brk.parts[0].get(AGENT).escalation is None and log.f.latest[AGENT][1].escalation is None
    [second] = _batch(h, brk, log, [h.settle(T0 + 62_000, 2 * U)])
    assert second.kind == "escalate" and brk.parts[0].get(AGENT).escalation == second.id
    assert log.f.latest[AGENT][1].escalation == second.id                  # escalated: webhook and log
