"""The detection stage as the breaker's control: caps a person sets are enforced by detection."""

from __future__ import annotations

from watcher.detect.policy import Policy
from watcher.events import Decoder
from watcher.pipeline import Shard
from watcher.simulate.records import encode, fake_hash, settle_record
from watcher.stages import DetectStage

A = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
M = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
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
