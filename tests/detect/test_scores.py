"""The daemon exports its anomaly models' scores: the real Assembly wires the detectors' score sink to
`Metrics.anomaly_scores`, so `spendwatch_anomaly_score{model}` and `spendwatch_anomaly_high_total{model}`
(AnomalyScoreHigh, the "Anomaly score p99" panel) carry what the models computed."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.detect.conftest import T0, Harness
from watcher.config import load_settings
from watcher.batch import BatchContext
from watcher.detect.detector import SCORE_MODELS
from watcher.pipeline.shard import Shard
from watcher.stages import build

# warm after one payment, so every later payment is scored by the baselines
POLICY = "[defaults.anomaly]\nwarmup_payments = 1\nwarmup_seconds = 0\n"
AGENTS = ["0x" + f"{0x30 + i:02x}" * 20 for i in range(4)]
FLEET = ["0x" + f"{i:040x}" for i in range(1, 65)]     # the fleet model scores up to 64 agents a batch
U = 1_000_000


def _samples(text: bytes) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("model", "")): s.value for f in text_string_to_metric_families(text.decode())
            for s in f.samples if s.name.startswith("spendwatch_anomaly")}


def _assembly(tmp_path, enabled: bool = True):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    settings = load_settings(None, metrics={"port": 0, "enabled": enabled}, detect={"policy_file": str(policy)})
    return build(settings, CollectorRegistry())


def test_assembly_exports_fleet_and_baseline_scores(tmp_path):
    a = _assembly(tmp_path)
    stage = a.detect
    stage.restore(0, None)
    det = stage.detectors[0]
    det.fleet.scored = 10**6                    # past the fleet model's own warm-up, so it may flag
    fleet_seen = [0, 0]                         # scores, flags the fleet model returned
    real_score = det.fleet.score

    def score(rows, feats, now):
        s, f = real_score(rows, feats, now)
        fleet_seen[0] += len(s)
        fleet_seen[1] += int(f.sum())
        return s, f

    det.fleet.score = score
    h = Harness(POLICY)                         # its record builders
    shard = Shard(categorize=stage.categorize)
    payments = decisions = 0

    def feed(records, now):
        nonlocal payments, decisions
        obs = [h.decoder.decode(r) for r in records]
        ctx = BatchContext(0, shard, shard.apply(obs), obs, now)
        stage.on_batch(ctx)
        payments += len(obs)
        decisions += len(ctx.decisions)

    t = T0
    for _ in range(12):                         # 1 h: every agent pays 0.01 USDC every 5 min
        feed([h.settle(t + k * 10, 10_000, agent=ag) for k, ag in enumerate(FLEET)], t + 5000)
        t += 300_000
    # then one agent bursts: 10 x 1 USDC in 10 s (spend rate and payment size both far off its baseline)
    feed([h.settle(t + k * 1000, U, agent=FLEET[0]) for k in range(10)], t + 10_000)

    got = _samples(a.metrics.render())
    warm = payments - len(FLEET)                # each agent's first payment only starts its baseline
    for model in ("agent.rate_z", "agent.size_z"):
        assert got[("spendwatch_anomaly_score_count", model)] == warm
        assert got[("spendwatch_anomaly_score_bucket", model)] == warm   # the last one read: le="+Inf"
        assert 1 <= got[("spendwatch_anomaly_high_total", model)] <= 10
        assert got[("spendwatch_anomaly_score_sum", model)] > 0
    assert decisions >= 1                       # the burst was warned about, and counted as high above
    assert fleet_seen[0] >= len(FLEET) * 11     # each agent once per 5 min of event time, from its 2nd batch
    assert got[("spendwatch_anomaly_score_count", "fleet.hst")] == fleet_seen[0]
    assert got[("spendwatch_anomaly_score_sum", "fleet.hst")] > 0      # past the trees' first window (250)
    assert got[("spendwatch_anomaly_high_total", "fleet.hst")] == fleet_seen[1]
    assert {m for _, m in got} == set(SCORE_MODELS)
    # buckets are cumulative per model and the p99 the panel draws is within the buckets' range
    fam = next(f for f in text_string_to_metric_families(a.metrics.render().decode())
               if f.name == "spendwatch_anomaly_score")
    for model in SCORE_MODELS:
        counts = [s.value for s in fam.samples if s.name.endswith("_bucket") and s.labels["model"] == model]
        assert counts == sorted(counts) and counts[-1] > 0
    # restored detectors (a partition assigned from a checkpoint) keep the sink
    stage.restore(1, det.snapshot())
    assert stage.detectors[1].score_sink == a.metrics.anomaly_scores


def test_without_metrics_the_detectors_pay_nothing(tmp_path):
    a = _assembly(tmp_path, enabled=False)
    a.detect.restore(0, None)
    assert a.detect.score_sink is None and a.detect.detectors[0].score_sink is None


def test_one_sink_call_per_model_per_batch():
    """One call per model per batch, whatever the batch size; the fleet's flags are counted as high (the
    model is forced to flag every agent it scores, as in test_rules)."""
    calls = []
    h = Harness(POLICY)
    det = h.detector
    det.score_sink = lambda model, scores, high: calls.append((model, np.asarray(scores).copy(), high))
    det.fleet.scored = 10**6
    real_score = det.fleet.score
    det.fleet.score = lambda rows, feats, now: (real_score(rows, feats, now)[0], np.ones(len(rows), bool))
    h.feed([h.settle(T0 + k * 1000, 10_000, agent=ag) for ag in AGENTS for k in range(3)])
    assert sorted(c[0] for c in calls) == sorted(SCORE_MODELS)
    by = {c[0]: c for c in calls}
    assert len(by["agent.rate_z"][1]) == len(by["agent.size_z"][1]) == len(AGENTS) * 2
    assert len(by["fleet.hst"][1]) == by["fleet.hst"][2] == len(AGENTS)   # once per agent per interval
    assert by["agent.rate_z"][2] == by["agent.size_z"][2] == 0
    assert all((c[1] >= 0).all() for c in calls)
    calls.clear()
    h.feed([h.settle(T0 + 5000, 10_000, agent=AGENTS[0])])       # not due again for the fleet model
    assert [c[0] for c in calls] == ["agent.rate_z", "agent.size_z"]
