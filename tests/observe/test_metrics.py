"""Metrics with plain values: the stage folds batches into a fresh registry; bounded agent series."""

from __future__ import annotations

import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from watcher.events.observation import Kind, Observation
from watcher.metrics import FAMILIES, Metrics, MetricsSettings
from watcher.observe.bench import build_shards
from watcher.observe.stage import MetricsStage
from watcher.pipeline.join import Delta
from watcher.pipeline.shard import Outcome, Shard

A1 = "0x" + "11" * 20
M1 = "0x" + "22" * 20


def _obs(eid: str, amount: int, ts_ms: int, kind=Kind.SETTLE) -> Observation:
    return Observation(kind=kind, event_id=eid, dedupe_key=eid, ts_ms=ts_ms, agent=A1, merchant=M1, amount=amount,
                       chain_id=8453, network="eip155:8453", asset="0x" + "33" * 20, status="settled", tx="0x" + "44" * 32)


def _ctx(partition, shard, outcome, obs, now_ms, decisions=()):
    return SimpleNamespace(partition=partition, shard=shard, outcome=outcome, observations=obs, now_ms=now_ms,
                           decisions=list(decisions), publish=[])


def _metrics(**kw) -> Metrics:
    return Metrics(CollectorRegistry(), MetricsSettings(**kw))


def test_stage_counts_spend_by_category_network_merchant_and_reversals():
    m = _metrics()
    stage = MetricsStage(m)
    obs = [_obs("e1", 1_500_000, 1_000), _obs("e2", 500_000, 2_000, Kind.TRANSFER)]
    out = Outcome(processed=2, deltas=[Delta(A1, "data", 1_000, 1_500_000, 1, "e1"),
                                       Delta(A1, "data", 1_000, -500_000, 0, "e2")])
    decisions = [SimpleNamespace(kind="freeze", rule="cap_1m"), SimpleNamespace(kind="freeze", rule="cap_1m")]
    stage.on_batch(_ctx(0, Shard(), out, obs, 3_000, decisions))
    g = m.registry.get_sample_value
    net = {"category": "data", "network": "eip155:8453"}
    assert g("spendwatch_spend_usdc_total", net) == 1.5
    assert g("spendwatch_spend_reversed_usdc_total", net) == 0.5
    assert g("spendwatch_payments_total", net) == 1
    assert g("spendwatch_merchant_spend_usdc_total", {"merchant": M1}) == 1.5
    assert g("spendwatch_decisions_total", {"kind": "freeze", "rule": "cap_1m"}) == 2
    assert g("spendwatch_events_total", {"source": "facilitator"}) == 1
    assert g("spendwatch_events_total", {"source": "chain"}) == 1
    assert g("spendwatch_event_latency_seconds_count") == 2
    assert g("spendwatch_event_latency_seconds_sum") == pytest.approx(3.0)


def test_merchant_label_is_capped():
    m = _metrics(max_merchants=2)
    for i in range(5):
        m.add_merchant_spend(f"0x{i:040x}", 1_000_000)
    merchants = {s.labels["merchant"] for f in m.registry.collect() if f.name == "spendwatch_merchant_spend_usdc"
                 for s in f.samples}
    assert len(merchants) == 3 and "other" in merchants


def test_top_n_is_bounded_exact_and_includes_pinned_agents():
    now = 10 * 86_400_000
    shards = build_shards(20_000, 4, now)
    m = _metrics(top_n=50, max_pinned=10)
    quiet = shards[2].agents.keys[7]
    quiet_addr = "0x" + quiet.hex()
    from watcher.events.addresses import key_address
    m.breaker_state(key_address(quiet), "open")
    rows = m.refresh_agents(shards)
    assert 50 <= len(rows) <= 51
    # the top 50 by the highest window rate, checked by brute force
    best = []
    for p, s in shards.items():
        sums, _ = s.agents.totals()
        rate = (sums / np.array([w.seconds for w in s.agents.specs], dtype=float)).max(axis=1)
        best += [(r, key_address(k)) for r, k in zip(rate.tolist(), s.agents.keys)]
    top = {a for _, a in sorted(best, reverse=True)[:50]}
    got = {r.agent for r in rows}
    assert top <= got and key_address(quiet) in got
    text = m.render().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    agents = {s.labels["agent"] for s in fams["spendwatch_agent_spend_rate_usdc_per_second"].samples}
    assert agents == got
    assert fams["spendwatch_agent_breaker_state"].samples[0].labels == {"agent": key_address(quiet), "state": "open"}
    assert quiet_addr  # (raw key hex differs from the checksum form only in case)


def test_series_budget_is_validated():
    with pytest.raises(ValueError):
        MetricsSettings(top_n=1000, max_pinned=500)
    s = MetricsSettings()
    assert (s.top_n + s.max_pinned) * 8 + 2 * s.max_pinned <= 2000


def test_render_at_scale_is_bounded_and_promtool_clean(capsys):
    """200,000 agents here (1,000,000 in `python -m watcher.observe.bench`); figures printed, not asserted."""
    from watcher.observe.bench import run

    fig = run(200_000, 8, repeat=3)
    print(f"\nmetrics figures: {fig}")
    assert fig["agent_rows"] == 200 + 1 and fig["series"] <= 2100
    m = _metrics()
    m.refresh_agents(build_shards(5_000, 2, 86_400_000))
    m.breaker_state("0x" + "ab" * 20, "open")
    m.escalation_waiting("0x" + "cd" * 20, 1_700_000_000_000)
    m.webhook_result("ok", 0.05)
    m.anomaly_scores("fleet.hst", [0.1, 0.97], high=1)
    text = m.render()
    names = {f.name for f in text_string_to_metric_families(text.decode())}
    documented = {n.removesuffix("_total") for n, *_ in FAMILIES}
    daemon_side = {"spendwatch_consumed", "spendwatch_duplicates", "spendwatch_dead_letters",
                   "spendwatch_consumer_lag_records", "spendwatch_partitions_owned", "spendwatch_tracked_agents",
                   "spendwatch_checkpoints"}
    assert documented - daemon_side <= names
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus): exposition lint skipped")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
