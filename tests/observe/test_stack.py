"""The whole alert path for real: daemon (metrics stage + /metrics) -> Prometheus (the committed rules)
-> Alertmanager (the committed routing) -> Slack and PagerDuty (a loopback recorder); and every
dashboard panel's PromQL against that Prometheus.

Windows are shortened (the window *names* the rules use stay, their lengths are seconds) so a runaway
shows, and drains, within seconds; the rules' `for:` are shortened in a test copy.
"""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client import CollectorRegistry

from tests.integration.helpers import make_settings
from tests.observe.stack import (ROOT, DaemonThread, Recorder, alertmanager_copy, get_json, need, query,
                                 rules_copy, serve_registry, start_alertmanager, start_prometheus, wait_until)
from watcher.chain.metrics import ChainMetrics
from watcher.config import WindowSettings
from watcher.metrics import Metrics, MetricsSettings
from watcher.observe.server import MetricsService
from watcher.observe.stage import MetricsStage
from watcher.simulate.fleet import Fleet
from watcher.tap.metrics import TapMetrics

pytestmark = pytest.mark.integration

SHORT_WINDOWS = [WindowSettings(name="1m", seconds=6, buckets=3), WindowSettings(name="5m", seconds=12, buckets=4),
                 WindowSettings(name="1h", seconds=60, buckets=6), WindowSettings(name="24h", seconds=120, buckets=4)]


@pytest.fixture(scope="module")
def chain_target():
    """The chain bridge is a process of its own (job "chain"): its families, as the bridge would report them."""
    chain = ChainMetrics(CollectorRegistry(), 8453)
    chain.head(101, "0xaa")
    chain.processed(100, 0)
    chain.reorg(2)
    with serve_registry(chain.registry) as target:
        yield target


@pytest.fixture(scope="module")
def tap_target():
    """A facilitator tap is a process of its own (job "spendwatch-tap"): its families, as a tap reports them."""
    tap = TapMetrics(CollectorRegistry())
    tap.records.labels("x402.settle", "published").inc(3)
    tap.requests.labels("settle", "200").inc(3)
    tap.upstream.labels("settle").observe(0.8)
    tap.view_stale.set(0)
    tap.buffer.set(0)
    with serve_registry(tap.registry) as target:
        yield target, tap


@pytest.fixture(scope="module")
def stack(kafka_bootstrap, tmp_path_factory, chain_target, tap_target):
    need("prometheus")
    need("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("observe-stack")
    unique = f"obs{int(time.time() * 1000) % 10**8}"
    fleet = Fleet(agents=20, merchants=12, seed=11, runaway_after_s=0.0, runaway_per_s=8.0, chain_ratio=0.3,
                  malformed_ratio=0.02)
    settings = make_settings(kafka_bootstrap, unique, partitions=2)
    settings = settings.model_copy(update={"windows": SHORT_WINDOWS, "categories": fleet.categories()})
    metrics = Metrics(CollectorRegistry(), MetricsSettings(port=0, refresh_seconds=0.2),
                      windows=settings.shard_config().windows)
    service = MetricsService(metrics)
    with Recorder() as recorder:
        am, am_url = start_alertmanager(tmp, alertmanager_copy(tmp / "alertmanager.yml", recorder.url))
        daemon = DaemonThread(settings, metrics, service, [MetricsStage(metrics)], fleet).start()
        prom = None
        try:
            prom, prom_url = start_prometheus(tmp, {"spendwatch": f"127.0.0.1:{service.port}",
                                                    "chain": chain_target, "spendwatch-tap": tap_target[0]},
                                              rules_copy(tmp / "rules.yml"), am_url)
            # what the helpers would report (breaker, detector), for the panels that show it
            quiet = fleet.agents[5].wallet
            metrics.breaker_state(quiet, "half_open")
            metrics.webhook_result("ok", 0.04)
            metrics.anomaly_scores("fleet.hst", [0.2, 0.4, 0.95], high=1)
            metrics.decision("warn", "cap_1m")
            yield {"metrics_url": f"http://127.0.0.1:{service.port}/metrics", "prom": prom_url, "am": am_url, "recorder": recorder, "fleet": fleet, "metrics": metrics,
                   "daemon": daemon, "runaway": fleet.runaway.wallet}
        finally:
            daemon.stop()
            if prom is not None:
                prom.stop()
            am.stop()


def _series(prom: str, expr: str) -> list:
    res = query(prom, expr)
    assert res["status"] == "success", res
    return res["data"]["result"]


def _pd_events(recorder: Recorder, alertname: str) -> list[dict]:
    return [b for b in recorder.bodies("/pagerduty") if alertname in json.dumps(b)]


def _slack(recorder: Recorder, alertname: str) -> list[dict]:
    return [b for b in recorder.bodies("/slack") if alertname in json.dumps(b)]


def test_metrics_reach_prometheus(stack):
    prom, runaway = stack["prom"], stack["runaway"]
    wait_until(lambda: _series(prom, f'spendwatch_agent_spend_rate_usdc_per_second{{agent="{runaway}",window="1m"}}'),
               60, "the runaway agent's spend rate in Prometheus")
    wait_until(lambda: _series(prom, "spendwatch_spend_usdc_total"), 30, "fleet spend in Prometheus")
    cats = {s["metric"]["category"] for s in _series(prom, "spendwatch_spend_usdc_total")}
    assert cats <= set(stack["fleet"].categories().values()) | {"uncategorized"} and cats
    # the live exposition (daemon counters and lag included) passes promtool's lint
    import shutil
    import subprocess
    import urllib.request

    body = urllib.request.urlopen(stack["metrics_url"], timeout=10).read()
    assert b"spendwatch_consumer_lag_records{" in body and b"spendwatch_dead_letters_total{" in body
    r = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_dashboard_queries_return_data(stack):
    prom, runaway = stack["prom"], stack["runaway"]
    wait_until(lambda: _series(prom, f'spendwatch_agent_spend_rate_usdc_per_second{{agent="{runaway}"}}'),
               60, "the runaway agent's series")
    wait_until(lambda: len(_series(prom, "up[10s]")[0]["values"]) >= 4 if _series(prom, "up[10s]") else False,
               30, "four scrapes")
    queries = [(f.name, p.get("title", ""), t["expr"]) for f in sorted((ROOT / "dashboards").glob("*.json"))
               for p in json.loads(f.read_text())["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 20
    empty = []
    for dashboard, title, expr in queries:
        q = expr.replace("$agent", runaway).replace("$__rate_interval", "30s").replace("$__interval", "5s")
        res = query(prom, q)
        assert res["status"] == "success", (dashboard, title, q, res)
        if not res["data"]["result"]:
            empty.append((dashboard, title, q))
    assert not empty, f"panels whose query returned no data: {empty}"


def test_runaway_pages_and_warns_then_resolves(stack):
    recorder, runaway = stack["recorder"], stack["runaway"]
    trig = wait_until(lambda: [e for e in _pd_events(recorder, "AgentRunawaySpend")
                               if e.get("event_action") == "trigger"], 90, "a PagerDuty trigger")
    assert trig[0]["routing_key"] == "test-routing-key"
    assert runaway in json.dumps(trig[0])
    slack = wait_until(lambda: _slack(recorder, "AgentSpendRateHigh"), 60, "a Slack message")
    assert "[FIRING]" in json.dumps(slack[0]) and runaway in json.dumps(slack[0])
    # warnings never page, critical alerts never go to Slack
    assert not _pd_events(recorder, "AgentSpendRateHigh")
    assert not _slack(recorder, "AgentRunawaySpend")
    stack["daemon"].stop_traffic_now()
    dedup = trig[0]["dedup_key"]
    resolved = wait_until(lambda: [e for e in recorder.bodies("/pagerduty")
                                   if e.get("event_action") == "resolve" and e.get("dedup_key") == dedup],
                          120, "the PagerDuty resolve")
    assert resolved
    wait_until(lambda: [b for b in _slack(recorder, "AgentSpendRateHigh") if "[RESOLVED]" in json.dumps(b)],
               60, "the Slack resolve")


def test_open_breaker_inhibits_spend_rate_alert(stack):
    am, recorder = stack["am"], stack["recorder"]
    agent = "0x00000000000000000000000000000000000000AA"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    alerts = [{"labels": {"alertname": "BreakerOpened", "agent": agent, "severity": "critical"},
               "annotations": {"summary": "frozen"}, "startsAt": now},
              {"labels": {"alertname": "AgentSpendRateHigh", "agent": agent, "severity": "warning"},
               "annotations": {"summary": "spends"}, "startsAt": now},
              {"labels": {"alertname": "AgentSpendRateHigh", "agent": agent.replace("AA", "BB"),
                          "severity": "warning"}, "annotations": {"summary": "spends"}, "startsAt": now}]
    get_json(f"{am}/api/v2/alerts", json.dumps(alerts).encode())
    wait_until(lambda: [e for e in _pd_events(recorder, "BreakerOpened") if agent in json.dumps(e)], 30,
               "the BreakerOpened page")
    wait_until(lambda: [b for b in _slack(recorder, "AgentSpendRateHigh") if agent.replace("AA", "BB") in json.dumps(b)],
               30, "the other agent's warning")
    time.sleep(2)  # several group intervals
    assert not [b for b in _slack(recorder, "AgentSpendRateHigh") if agent in json.dumps(b)]
    got = get_json(f"{am}/api/v2/alerts?inhibited=true&active=false&silenced=false&filter=agent%3D%22{agent}%22")
    assert any(a["status"]["inhibitedBy"] for a in got if a["labels"]["alertname"] == "AgentSpendRateHigh")


def test_stale_tap_view_pages_then_resolves(stack, tap_target):
    recorder, (_, tap) = stack["recorder"], tap_target
    tap.view_stale.set(1)
    trig = wait_until(lambda: [e for e in _pd_events(recorder, "TapBreakerViewStale")
                               if e.get("event_action") == "trigger"], 60, "the TapBreakerViewStale page")
    assert tap_target[0] in json.dumps(trig[0]) and not _slack(recorder, "TapBreakerViewStale")
    assert "cannot tell which agents are frozen" in trig[0]["payload"]["summary"]  # each alert's own summary
    tap.view_stale.set(0)
    wait_until(lambda: [e for e in recorder.bodies("/pagerduty") if e.get("event_action") == "resolve"
                        and e.get("dedup_key") == trig[0]["dedup_key"]], 60, "the TapBreakerViewStale resolve")
