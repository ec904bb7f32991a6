"""The detection stage as the breaker's control: caps a person sets are enforced by detection."""

from __future__ import annotations

import pytest

from watcher.detect.policy import Policy
from watcher.events import Decoder
from watcher.pipeline import Shard
from watcher.simulate.records import encode, fake_hash, settle_record
from watcher.stages import DetectStage

A = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
M = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
B = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
T = 1_790_000_000_000
D = Decoder(max_future_skew_ms=None)
POLICY = Policy.from_text('[defaults.caps]\nper_minute_usdc = 10\n')


def run(stage: DetectStage, n: int, amount: int) -> list:
    from watcher.batch import BatchContext

    shard = Shard(categorize=stage.categorize)
    decisions = []
    for i in range(n):
        obs = [D.decode(encode(settle_record(event_id=f"e{i}", ts_ms=T + i * 100, payer=A, pay_to=M,
                                             amount=amount, tx=fake_hash(i))))]
        ctx = BatchContext(0, shard, shard.apply(obs), obs, T + i * 100)
        stage.on_batch(ctx)
        decisions += ctx.decisions
    return decisions


def test_person_set_caps_freeze_earlier_and_clear_back_to_policy():
    plain = DetectStage(POLICY, "dec")
    plain.restore(0, None)
    assert [d.rule for d in run(plain, 8, 1_000_000) if d.kind == "freeze"] == []   # 8 USDC < 10 cap

    capped = DetectStage(POLICY, "dec")
    capped.restore(0, None)
    capped.set_caps(0, A, {"1m": 3_000_000})
    freezes = [d for d in run(capped, 8, 1_000_000) if d.kind == "freeze"]
    assert freezes and freezes[0].rule == "cap_1m" and freezes[0].threshold == 3_000_000

    probation = DetectStage(POLICY, "dec")
    probation.restore(0, None)
    probation.set_caps(0, A, None, 0.25)          # half-open: a quarter of the policy's 10 USDC
    freezes = [d for d in run(probation, 8, 1_000_000) if d.kind == "freeze"]
    assert freezes and freezes[0].threshold == 2_500_000
    probation.set_caps(0, A, None, 1.0)
    assert A not in probation.cap_overrides


def test_a_dropped_partitions_caps_go_with_it():
    """A revoked partition's person-set caps stayed in cap_overrides: cleared meanwhile on the replica that
    took it, they came back at the next policy reload after the partition returned."""
    stage = DetectStage(POLICY, "dec")
    stage.restore(0, None)
    stage.set_caps(0, A, {"1m": 3_000_000})
    stage.drop(0)
    assert A not in stage.cap_overrides
    stage.restore(0, None)                      # back, with no caps in its breaker state
    stage.set_policy(POLICY)
    assert [d.rule for d in run(stage, 8, 1_000_000) if d.kind == "freeze"] == []    # the policy's 10 USDC


def test_the_daemons_detection_stage_learns_a_payee_from_a_settle_that_follows_its_transfer():
    """The settle of a transfer already counted makes no delta, and the stage skipped the detector for such a
    batch: the payee was never learnt, and every later payment to it warned `unknown_payee` again."""
    from watcher.batch import BatchContext
    from watcher.simulate.records import transfer_record

    stage = DetectStage(Policy.from_text("[defaults.anomaly]\nenabled = false\n"), "dec")
    stage.restore(0, None)
    shard = Shard(categorize=stage.categorize)
    payee, rules = "0x" + "57" * 20, []
    for k in range(3):
        t, tx = T + k * 7_200_000, fake_hash("paired", k)     # 2 h apart: past the warning cooldown
        for rec in (transfer_record(ts_ms=t, payer=A, to=payee, amount=10**6, tx=tx, status="confirmed",
                                    authorizer=A),
                    settle_record(event_id=f"s{k}", ts_ms=t + 1000, payer=A, pay_to=payee, amount=10**6, tx=tx)):
            obs = [D.decode(encode(rec))]
            ctx = BatchContext(0, shard, shard.apply(obs), obs, obs[0].ts_ms)
            stage.on_batch(ctx)
            rules += [(k, d.rule) for d in ctx.decisions]
    assert rules == [(0, "unknown_payee")]


def test_refused_verifications_of_unlisted_reasons_make_no_detector_row():
    """A verify refused for a bad signature names a payer anyone can choose: counting only the listed
    reasons (insufficient_funds) must not grow the detector's per-agent rows for every such payer."""
    from watcher.batch import BatchContext
    from watcher.simulate.records import verify_record

    stage = DetectStage(POLICY, "dec")
    stage.restore(0, None)
    shard = Shard(categorize=stage.categorize)
    obs = [D.decode(encode(verify_record(event_id=f"v{i}", ts_ms=T + i, payer="0x" + f"{i + 1:040x}", pay_to=M,
                                         amount=1000, valid=False, invalid_reason="invalid_signature")))
           for i in range(50)]
    stage.on_batch(BatchContext(0, shard, shard.apply(obs), obs, T + 100))
    assert len(stage.detectors[0].index) == 0


def test_decisions_the_detector_took_before_it_raised_still_reach_the_breaker():
    """A detector raising half-way through a batch lost the decisions it had already taken: the first agent
    was marked frozen in the detector (which then says nothing more of it) but no freeze reached the breaker."""
    from watcher.batch import BatchContext

    stage = DetectStage(POLICY, "dec")
    stage.restore(0, None)
    det = stage.detectors[0]
    real, calls = det._decision, []

    def decision(c, kind):
        calls.append(kind)
        if len(calls) == 2:
            raise RuntimeError("policy lookup failed")
        return real(c, kind)

    det._decision = decision
    shard = Shard(categorize=stage.categorize)
    obs = [D.decode(encode(settle_record(event_id=f"e{i}", ts_ms=T + i, payer=p, pay_to=M, amount=11 * 10**6,
                                         tx=fake_hash(i)))) for i, p in enumerate([A, B])]     # both over the cap
    ctx = BatchContext(0, shard, shard.apply(obs), obs, T + 10)
    with pytest.raises(RuntimeError):
        stage.on_batch(ctx)              # the daemon counts and logs it (tests/unit/test_failures.py)
    assert [(d.kind, d.rule, d.agent) for d in ctx.decisions] == [("freeze", "cap_1m", A)]
    assert [topic for topic, _, _ in ctx.publish] == ["dec"] and det.is_frozen(A) and not det.is_frozen(B)


def test_an_escalation_timeout_whose_decision_raises_stays_pending():
    from watcher.detect.detector import Detector

    det = Detector(Policy.default())
    row = det.row(A)
    det.pending[row] = (T, "esc-1", "cap_1h")
    real = det._decision
    det._decision = lambda c, kind: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        det.tick(T + 1)
    assert row in det.pending               # retried at the next tick, not silently dropped
    det._decision = real
    [d] = det.tick(T + 2)
    assert d.rule == "escalation_timeout" and row not in det.pending
