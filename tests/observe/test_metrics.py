"""Metrics with plain values: the stage folds batches into a fresh registry; bounded agent series."""

from __future__ import annotations

import shutil
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from watcher.errors import ConfigError
from watcher.failures import StageErrors
from watcher.events.addresses import key_address
from watcher.events.observation import Kind, Observation
from watcher.metrics import FAMILIES, Metrics, MetricsSettings
from watcher.observe.bench import build_shards
from watcher.observe.stage import MetricsStage
from watcher.pipeline.join import Delta, Move
from watcher.pipeline.shard import Outcome, Shard
from watcher.pipeline.windows import DEFAULT_WINDOWS, WindowSpec
from watcher.simulate.records import BASE_USDC

A1 = "0x" + "11" * 20
M1 = "0x" + "22" * 20


def _obs(eid: str, amount: int, ts_ms: int, kind=Kind.SETTLE) -> Observation:
    return Observation(kind=kind, event_id=eid, dedupe_key=eid, ts_ms=ts_ms, agent=A1, merchant=M1, amount=amount,
                       chain_id=8453, network="eip155:8453", asset="0x" + "33" * 20, status="settled",
                       tx="0x" + "44" * 32)


def _ctx(partition, shard, outcome, obs, now_ms, decisions=()):
    return SimpleNamespace(partition=partition, shard=shard, outcome=outcome, observations=obs, now_ms=now_ms,
                           wall_ms=now_ms, decisions=list(decisions), publish=[])


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


def test_a_settle_after_its_transfer_moves_the_spend_to_its_category():
    """The transfer came first (no category: it has no resource); its settle names a resource of category data.
    The spend moves there: a correction of the uncategorized spend, as when the settle comes first."""
    m = _metrics()
    stage = MetricsStage(m)
    obs = [_obs("t1", 700_000, 1_000, Kind.TRANSFER)]
    stage.on_batch(_ctx(0, Shard(), Outcome(processed=1, deltas=[Delta(A1, None, 1_000, 700_000, 1, "t1")]),
                        obs, 2_000))
    moving = Delta(A1, "data", 1_000, 0, 0, "s1", M1, "https://x/", Kind.SETTLE, Move(700_000, 1, None, M1, 1))
    stage.on_batch(_ctx(0, Shard(), Outcome(processed=1, deltas=[moving], moves=[0]), [_obs("s1", 700_000, 1_500)],
                        3_000))
    g = m.registry.get_sample_value
    data, none = {"category": "data", "network": "eip155:8453"}, {"category": "uncategorized", "network": "eip155:8453"}
    assert (g("spendwatch_spend_usdc_total", data), g("spendwatch_payments_total", data)) == (0.7, 1)
    assert (g("spendwatch_spend_usdc_total", none), g("spendwatch_spend_reversed_usdc_total", none)) == (0.7, 0.7)
    assert g("spendwatch_merchant_spend_usdc_total", {"merchant": M1}) == 0.7          # once


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


def _count(text: str, prefix: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith(prefix))


def test_fleet_gauges_count_every_agent_and_only_the_agent_series_are_capped():
    m = _metrics()                                                 # max_pinned 40
    g = m.registry.get_sample_value
    for i in range(50):
        m.breaker_state(f"0x{i:040x}", "open")
    text = m.render().decode()
    assert g("spendwatch_breakers", {"state": "open"}) == 50
    assert g("spendwatch_breaker_transitions_total", {"state": "open"}) == 50
    assert _count(text, "spendwatch_agent_breaker_state{") == 40
    assert g("spendwatch_agents_capped", {"kind": "breaker"}) == 10
    m.breaker_state(f"0x{0:040x}", "closed")                       # a freed slot goes to one left out
    text = m.render().decode()
    assert g("spendwatch_breakers", {"state": "open"}) == 49
    assert _count(text, "spendwatch_agent_breaker_state{") == 40
    assert g("spendwatch_agents_capped", {"kind": "breaker"}) == 9
    for i in range(50):                                            # the pins are one pool of max_pinned
        m.escalation_waiting(f"0x{1000 + i:040x}", 1_700_000_000_000)
    text = m.render().decode()
    assert g("spendwatch_escalations_waiting") == 50
    assert _count(text, "spendwatch_agent_escalation_waiting_since_timestamp_seconds{") == 0
    assert g("spendwatch_agents_capped", {"kind": "escalation"}) == 50
    assert len(m.pinned()) == 40


def test_open_breakers_and_escalations_take_pins_before_held_and_half_open_agents():
    """Holds and probations fill the pool (nothing pages on them): a new freeze still gets its series, so
    BreakerOpened pages for it, and agents_capped counts only agents an alert needs."""
    m = _metrics(max_pinned=3)
    g = m.registry.get_sample_value
    held = [f"0x{i:040x}" for i in range(3)]
    for a in held:
        m.breaker_state(a, "held")
    runaway, other, asking = "0x" + "ab" * 20, "0x" + "cd" * 20, "0x" + "ef" * 20
    m.breaker_state(runaway, "open")
    m.escalation_waiting(asking, 1_700_000_000_000)
    text = m.render().decode()
    assert f'spendwatch_agent_breaker_state{{agent="{runaway}",state="open"}} 1.0' in text
    assert f'spendwatch_agent_escalation_waiting_since_timestamp_seconds{{agent="{asking}"}}' in text
    capped = {k: g("spendwatch_agents_capped", {"kind": k}) for k in ("breaker", "escalation")}
    assert capped == {"breaker": 0, "escalation": 0}
    assert g("spendwatch_breakers", {"state": "held"}) == 3          # every one still counted
    m.breaker_state(other, "open")                                  # the pool is held[2], runaway, asking: full
    assert g("spendwatch_agents_capped", {"kind": "breaker"}) == 0 and other in m.pinned()
    m.breaker_state(held[0], "open")                                # alerting agents only now: one is left out
    assert g("spendwatch_agents_capped", {"kind": "breaker"}) == 1 and held[0] not in m.pinned()
    m.breaker_state(runaway, "half_open")                           # its slot goes to the one left out
    assert held[0] in m.pinned() and runaway not in m.pinned()
    assert g("spendwatch_agents_capped", {"kind": "breaker"}) == 0


def test_restore_and_forget_move_agents_without_transitions():
    m = _metrics(max_pinned=2)
    g = m.registry.get_sample_value
    m.restore([("0x" + "01" * 20, "held", None), ("0x" + "02" * 20, "open", 1_700_000_000_000),
               ("0x" + "03" * 20, "closed", 1_700_000_000_000), ("0x" + "04" * 20, "open", None)])
    assert (g("spendwatch_breakers", {"state": "held"}), g("spendwatch_breakers", {"state": "open"})) == (1, 2)
    assert g("spendwatch_escalations_waiting") == 2
    assert g("spendwatch_breaker_transitions_total", {"state": "open"}) is None
    assert g("spendwatch_agents_capped", {"kind": "breaker"}) == 1
    m.forget(["0x" + "01" * 20, "0x" + "02" * 20, "0x" + "03" * 20])
    text = m.render().decode()
    assert g("spendwatch_breakers", {"state": "open"}) == 1 and g("spendwatch_breakers", {"state": "held"}) == 0
    assert g("spendwatch_escalations_waiting") == 0
    assert g("spendwatch_agents_capped", {"kind": "breaker"}) == 0
    assert _count(text, "spendwatch_agent_breaker_state{") == 1
    assert f'agent="{"0x" + "04" * 20}"' in text and f'agent="{"0x" + "01" * 20}"' not in text


def test_series_budget_is_validated():
    with pytest.raises(ValueError):
        MetricsSettings(top_n=1000, max_pinned=500)
    s = MetricsSettings()
    # a spend rate and a payment count per window for each row (top N + pinned), a breaker and an
    # escalation series per pinned agent
    assert (s.top_n + s.max_pinned) * 2 * len(DEFAULT_WINDOWS) + 2 * s.max_pinned <= s.max_agent_series
    # the window count comes from [[windows]]: eight of them need twice the spend series
    eight = [WindowSpec(f"w{i}", 60 * (i + 1), 6) for i in range(8)]
    with pytest.raises(ConfigError, match="metrics.max_agent_series") as err:
        Metrics(CollectorRegistry(), s, windows=eight)
    assert err.value.key == "metrics.max_agent_series" and "3920" in err.value.fix
    Metrics(CollectorRegistry(), MetricsSettings(max_agent_series=3920), windows=eight)


def test_rendered_agent_series_stay_within_the_budget_with_every_pin_taken():
    now = int(time.time() * 1000)
    shards = build_shards(20_000, 4, now)
    m = _metrics()
    keys = [k for s in shards.values() for k in s.agents.keys]
    for k in keys[-40:]:                                           # quiet agents, outside the top 200
        m.breaker_state(key_address(k), "open")
    for k in keys[-80:-40]:
        m.escalation_waiting(key_address(k), now)
    m.refresh_agents(shards)
    text = m.render().decode()
    assert _count(text, "spendwatch_agent_") <= m.settings.max_agent_series
    assert m.registry.get_sample_value("spendwatch_agents_capped", {"kind": "escalation"}) == 40


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
                   "spendwatch_checkpoints", "spendwatch_late_payments", "spendwatch_window_saturations",
                   "spendwatch_dedupe_forced_rotations", "spendwatch_bridge_confirmed_timestamp_seconds",
                   "spendwatch_join_held_dropped", "spendwatch_join_held_shadows_dropped",
                   "spendwatch_stage_errors"}
    assert documented - daemon_side <= names
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus): exposition lint skipped")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_daemon_collector_exports_late_payments_and_forced_rotations():
    """Late payments and an early dedupe rotation were counted in the shard but never exported."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from tests.unit.test_shard import T, settle
    from watcher.observe.server import DaemonCollector
    from watcher.pipeline.shard import Shard, ShardConfig

    sh = Shard(ShardConfig(dedupe_max_entries=3))
    sh.apply([settle(i, ts=T + i) for i in range(5)])                   # 5 keys > 3: rotated early
    sh.apply([settle(99, ts=T - 3 * 86_400_000)])                       # older than every window
    sh.join.held_shadows_dropped = 2      # counted by Join._hold_shadow (tests/unit/test_shadow_hold.py)
    from watcher.batch import Counters

    daemon = SimpleNamespace(counters=Counters(consumed=6, processed=6, batches=2),
                             dlq_reasons={}, shards={0: sh}, tracked_agents=lambda: 1, consumer=None, covered={},
                             k=None, stages=[], stage_errors=StageErrors())
    reg = CollectorRegistry()
    reg.register(DaemonCollector(daemon))
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    value = {n: fams[n].samples[0].value for n in ("spendwatch_late_payments", "spendwatch_window_saturations",
                                                   "spendwatch_dedupe_forced_rotations",
                                                   "spendwatch_join_held_shadows_dropped")}
    assert value["spendwatch_late_payments"] == sh.agents.late_dropped == 1
    assert value["spendwatch_dedupe_forced_rotations"] >= 1 and value["spendwatch_window_saturations"] == 0
    assert value["spendwatch_join_held_shadows_dropped"] == 2


def test_series_budget_is_checked_by_check_config_and_not_when_metrics_are_off(tmp_path):
    """check-config fails where `spendwatch run` would; a daemon with metrics off is not refused for it."""
    import sys

    from watcher.pipeline.windows import WindowSpec

    windows = "".join(f'[[windows]]\nname = "w{i}"\nseconds = {60 * (i + 1)}\nbuckets = 6\n' for i in range(5))
    cfg = tmp_path / "c.toml"
    cfg.write_text(windows)
    r = subprocess.run([sys.executable, "-m", "watcher", "check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 1 and "metrics.max_agent_series" in r.stdout + r.stderr
    cfg.write_text(windows + "[metrics]\nenabled = false\n")
    r = subprocess.run([sys.executable, "-m", "watcher", "check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    Metrics(CollectorRegistry(), MetricsSettings(enabled=False),
            windows=[WindowSpec(f"w{i}", 60 * (i + 1), 6) for i in range(8)])   # no ConfigError


def test_bridge_heartbeats_count_as_chain_events_with_no_spend_and_no_latency():
    from tests.unit.test_join_progress import progress
    from watcher.observe.server import bridge_confirmed

    m = _metrics()
    stage = MetricsStage(m)
    sh = Shard()
    obs = [progress(5_000), progress(7_000)]
    stage.on_batch(_ctx(0, sh, sh.apply(obs), obs, 60_000))
    g = m.registry.get_sample_value
    assert g("spendwatch_events_total", {"source": "chain"}) == 2
    assert g("spendwatch_events_total", {"source": "facilitator"}) == 0
    assert g("spendwatch_event_latency_seconds_count") is None          # a heartbeat's time is its block's
    assert g("spendwatch_payments_total", {"category": "uncategorized", "network": "eip155:8453"}) is None
    behind = Shard()
    behind.apply([progress(3_000)])
    fam = bridge_confirmed([sh, behind, Shard()])                       # the oldest of the partitions that know
    assert [(s.labels, s.value) for s in fam.samples] == [({"network": "eip155:8453", "token": BASE_USDC}, 3.0)]


def test_readme_metrics_table_names_every_family_the_daemon_serves():
    """What `spendwatch run` serves on /metrics (the metrics module, the breaker's families, the daemon's
    counters) is each named in README's metrics table (in full, or as `_suffix` after a full name)."""
    import re
    from pathlib import Path

    from watcher.batch import Counters
    from watcher.breaker.metrics import BreakerMetrics
    from watcher.observe.server import DaemonCollector

    m = _metrics()
    BreakerMetrics(m.registry, fleet=m)
    daemon = SimpleNamespace(counters=Counters(), dlq_reasons={}, shards={}, covered={}, consumer=None,
                             tracked_agents=lambda: 0, stages=[MetricsStage(m)], stage_errors=StageErrors())
    m.registry.register(DaemonCollector(daemon))
    served = {f.name for f in text_string_to_metric_families(m.render().decode())}
    assert {"spendwatch_consumer_lag_records", "spendwatch_webhook_attempts", "spendwatch_spend_usdc"} <= served
    readme = Path(__file__).resolve().parents[2].joinpath("README.md").read_text()
    table = readme.split("**Metrics**", 1)[1].split("**Dashboards**", 1)[0]
    named = set(re.findall(r"`(spendwatch_[a-z_]+)(?:\{[a-z_, ]*\})?`", table))
    named |= {"spendwatch" + s for s in re.findall(r"`(_[a-z_]+)(?:\{[a-z_, ]*\})?`", table)}
    missing = sorted(n for n in served if n not in named and f"{n}_total" not in named)
    assert not missing, f"README's metrics table does not name {missing}"


class _Position:
    def __init__(self, position, highwater):
        self._position, self.highwater = position, highwater

    @property
    def has_valid_position(self):
        return self._position is not None

    @property
    def position(self):
        return self._position


class _Consumer:
    """What the lag gauge reads of an aiokafka consumer: the highwater and the fetch position per partition
    (aiokafka keeps both in the same per-partition state; `highwater()` reads it the same way)."""

    def __init__(self, states):
        from aiokafka import TopicPartition
        self.states = {TopicPartition(t, p): _Position(pos, hw) for (t, p), (pos, hw) in states.items()}
        self._subscription = SimpleNamespace(subscription=SimpleNamespace(
            assignment=SimpleNamespace(state_value=self.states.__getitem__)))

    def highwater(self, tp):
        return self.states[tp].highwater


def test_consumer_lag_of_a_partition_with_no_covered_offset_counts_from_where_reading_starts():
    """A partition with no covered offset yet (no checkpoint, nothing processed) whose log starts above 0
    (retention deleted its old records, none newer): the consumer starts at the log start, which is the
    high watermark. Its lag is 0, not the high watermark (10,000 records deleted before anyone read them
    would hold ConsumerLagHigh for ever). A backlog from the start still counts; a covered offset wins."""
    from watcher.batch import Counters
    from watcher.observe.server import DaemonCollector

    consumer = _Consumer({("pay", 0): (50_000, 50_000), ("chain", 0): (20_000, 35_000),
                          ("pay", 1): (None, 7), ("chain", 1): (900, 1_000)})
    daemon = SimpleNamespace(counters=Counters(), dlq_reasons={}, shards={}, tracked_agents=lambda: 0,
                             consumer=consumer, covered={0: {}, 1: {"chain": 400}},
                             k=SimpleNamespace(payments_topic="pay", chain_topic="chain"),
                             stages=[], stage_errors=StageErrors())
    reg = CollectorRegistry()
    reg.register(DaemonCollector(daemon))
    lag = {(s.labels["topic"], s.labels["partition"]): s.value
           for fam in reg.collect() if fam.name == "spendwatch_consumer_lag_records" for s in fam.samples}
    assert lag == {("pay", "0"): 0, ("chain", "0"): 15_000, ("chain", "1"): 600}   # pay[1]: position unknown yet
