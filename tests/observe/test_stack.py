"""The whole alert path for real: the daemon `spendwatch run` runs (watcher.cli.run.assemble: detection,
breakers, statements, metrics and /metrics) fed by the fleet simulator through the real broker ->
Prometheus (the committed rules) -> Alertmanager (the committed routing) -> Slack and PagerDuty (a loopback
recorder, which also stands in for the wallet service's freeze webhook); and every dashboard panel's PromQL
against that Prometheus.

Windows are shortened (the window *names* the rules use stay, their lengths are seconds) so a runaway
shows, and drains, within seconds; the rules' `for:` are shortened in a test copy. The policy file has a
low per-minute cap, so the breaker freezes the fleet's runaway, and a one-payment anomaly warm-up, so the
models score within seconds. A second runaway, which the policy does not cap, shows what the spend-rate
alerts do when no breaker stops an agent (for a frozen agent Alertmanager inhibits them).
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
from prometheus_client import CollectorRegistry

from tests.integration.helpers import make_settings
from tests.observe.stack import (ROOT, DaemonThread, Recorder, alertmanager_copy, get_json, need, query,
                                 rules_copy, serve_registry, start_alertmanager, start_prometheus)
from tests.polling import wait_for_sync
from watcher.breaker.signing import SIGNATURE_HEADER, verify
from watcher.chain.metrics import ChainMetrics
from watcher.cli.main import build_parser
from watcher.cli.run import assemble
from watcher.config import WindowSettings, load_settings
from watcher.detect.detector import SCORE_MODELS
from watcher.simulate.fleet import Fleet
from watcher.tap.metrics import TapMetrics

pytestmark = pytest.mark.integration

SHORT_WINDOWS = [WindowSettings(name="1m", seconds=6, buckets=3), WindowSettings(name="5m", seconds=12, buckets=4),
                 WindowSettings(name="1h", seconds=60, buckets=6), WindowSettings(name="24h", seconds=120, buckets=4)]
# detect.policy_file of the stack's daemon. The "1m" window is 6 s here: the fleet's runaway (8 payments/s
# of 0.14 USDC, about 7 USDC a window) crosses 2 USDC within a second or two and is frozen (cap_1m); the
# other agents spend cents a window. The uncapped runaway (8/s of 0.19 USDC) has no cap. One payment warms
# an agent's baselines, so agent.rate_z, agent.size_z and fleet.hst score from its second payment on.
POLICY = """
[defaults.caps]
per_minute_usdc = 2
per_hour_usdc = 0
per_day_usdc = 0

[defaults.anomaly]
warmup_payments = 1
warmup_seconds = 0

[agents."{uncapped}"]
caps = {{ per_minute_usdc = 0 }}
"""
WEBHOOK_SECRET = "observe-stack-webhook-secret-0123"


@pytest.fixture(scope="module")
def chain_target():
    """The chain bridge is a process of its own (job "chain"), which needs an EVM node to run; its families
    are set by hand, as the bridge reports them (tests/chain/test_chain_metrics.py runs the real bridge)."""
    chain = ChainMetrics(CollectorRegistry(), 8453)
    chain.head(101, "0xaa")
    chain.processed(100, 0)
    chain.reorg(2)
    with serve_registry(chain.registry) as target:
        yield target


@pytest.fixture(scope="module")
def tap_target():
    """A facilitator tap is a process of its own (job "spendwatch-tap"), in front of a facilitator; its
    families are set by hand, as a tap reports them (tests/tap runs the real tap), and
    test_stale_tap_view_pages_then_resolves flips its view_stale gauge."""
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
    # a second fleet: one agent, its runaway, and no other traffic (rate 0 below); the policy leaves it uncapped
    uncapped = Fleet(agents=1, merchants=4, seed=12, runaway_after_s=0.0, runaway_per_s=8.0, chain_ratio=0.3,
                     malformed_ratio=0.0)
    policy = tmp / "policy.toml"
    policy.write_text(POLICY.format(uncapped=uncapped.runaway.wallet))
    with Recorder() as recorder:
        # the settings a config file would give `spendwatch run`, validated the same way
        settings = load_settings(
            None, kafka=make_settings(kafka_bootstrap, unique, partitions=2).kafka.model_dump(),
            checkpoint={"interval_seconds": 5.0}, windows=[w.model_dump() for w in SHORT_WINDOWS],
            categories=fleet.categories() | uncapped.categories(), detect={"policy_file": str(policy)},
            metrics={"port": 0, "refresh_seconds": 0.2}, statements={"topic": f"stm-{unique}"},
            breaker={"topic": f"brk-{unique}"}, admin={"port": 0},
            webhook={"url": f"{recorder.url}/wallet", "secrets": [WEBHOOK_SECRET], "retry_initial_seconds": 0.1,
                     "retry_max_seconds": 1.0})
        am, am_url = start_alertmanager(tmp, alertmanager_copy(tmp / "alertmanager.yml", recorder.url))
        # assembled as `spendwatch run` assembles it (no command-line flags), run as it runs it
        daemon = DaemonThread(assemble(settings, build_parser().parse_args(["run"])),
                              [(fleet, 4.0), (uncapped, 0.0)]).start()
        prom = None
        try:
            prom, prom_url = start_prometheus(tmp, {"spendwatch": f"127.0.0.1:{daemon.service.port}",
                                                    "chain": chain_target, "spendwatch-tap": tap_target[0]},
                                              rules_copy(tmp / "rules.yml"), am_url)
            yield {"metrics_url": f"http://127.0.0.1:{daemon.service.port}/metrics", "prom": prom_url, "am": am_url,
                   "recorder": recorder, "fleet": fleet, "daemon": daemon, "runaway": fleet.runaway.wallet,
                   "uncapped": uncapped.runaway.wallet}
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
    rate = f'spendwatch_agent_spend_rate_usdc_per_second{{agent="{runaway}",window="1m"}}'
    wait_for_sync(lambda: _series(prom, rate), 60, "the runaway agent's spend rate in Prometheus")
    wait_for_sync(lambda: _series(prom, "spendwatch_spend_usdc_total"), 30, "fleet spend in Prometheus")
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


def _value(prom: str, expr: str) -> float:
    res = _series(prom, expr)
    return float(res[0]["value"][1]) if res else 0.0


def _firing(prom: str, alertname: str, agent: str) -> list:
    return _series(prom, f'ALERTS{{alertname="{alertname}",agent="{agent}",alertstate="firing"}}')


def test_dashboard_queries_return_data(stack):
    """Every panel's query returns data from what the daemon's real stages did: nothing is written into the
    daemon's metrics by the test (the chain bridge's and the tap's are, see their fixtures)."""
    prom, runaway = stack["prom"], stack["runaway"]
    queries = [(f.name, p.get("title", ""), t["expr"]) for f in sorted((ROOT / "dashboards").glob("*.json"))
               for p in json.loads(f.read_text())["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 20

    def empty() -> list[tuple[str, str, str]]:
        out = []
        for dashboard, title, expr in queries:
            q = expr.replace("$agent", runaway).replace("$__rate_interval", "30s").replace("$__interval", "5s")
            res = query(prom, q)
            assert res["status"] == "success", (dashboard, title, q, res)
            if not res["data"]["result"]:
                out.append((dashboard, title, q))
        return out

    # the rates need two scrapes of a series, the decisions and scores a few batches: wait for them
    wait_for_sync(lambda: not empty(), 60, "data in every panel", interval_s=1,
                  show=lambda: f"panels whose query returned no data: {empty()}")
    # and the breaker, webhook, decision and score panels show what the stages did, not the exporter's zeros
    wait_for_sync(lambda: _value(prom, 'sum(spendwatch_breakers{state="open"})') >= 1, 30, "a frozen agent")
    assert _value(prom, f'max(spendwatch_agent_breaker_state{{agent="{runaway}",state="open"}})') == 1
    assert _value(prom, 'sum(spendwatch_decisions_total{kind="freeze",rule="cap_1m"})') >= 1
    wait_for_sync(lambda: _value(prom, 'sum(spendwatch_webhooks_total{outcome="ok"})') >= 1, 30,
                  "the freeze webhook answered by the wallet service")
    wait_for_sync(lambda: {s["metric"]["model"] for s in _series(prom, "spendwatch_anomaly_score_count > 0")}
                  >= set(SCORE_MODELS), 30, "scores of every anomaly model")


def _spend_alerts_sent(recorder: Recorder, agent: str) -> list[dict]:
    return [b for b in _pd_events(recorder, "AgentRunawaySpend") + _pd_events(recorder, "AgentSpendRateHigh")
            + _slack(recorder, "AgentRunawaySpend") + _slack(recorder, "AgentSpendRateHigh") if agent in json.dumps(b)]


def test_frozen_runaway_pages_once_its_spend_alerts_are_inhibited(stack):
    """The cap freezes the runaway: the wallet service gets a signed freeze, BreakerOpened pages, and the
    runaway's spend-rate alerts, firing in Prometheus, are inhibited in Alertmanager (the breaker already
    paged for that agent)."""
    prom, am, recorder, runaway = stack["prom"], stack["am"], stack["recorder"], stack["runaway"]
    freezes = wait_for_sync(lambda: [p for p in recorder.at("/wallet") if p.body.get("type") == "freeze"
                                     and p.body.get("wallet") == runaway], 60, "the runaway's freeze webhook")
    assert freezes[0].body["evidence"]["rule"] == "cap_1m"
    verify(freezes[0].raw, freezes[0].headers[SIGNATURE_HEADER], [WEBHOOK_SECRET.encode()])
    trig = wait_for_sync(lambda: [e for e in _pd_events(recorder, "BreakerOpened")
                                  if e.get("event_action") == "trigger" and runaway in json.dumps(e)], 60,
                         "the BreakerOpened page")
    assert trig[0]["routing_key"] == "test-routing-key"
    assert not _slack(recorder, "BreakerOpened")
    for alertname in ("AgentRunawaySpend", "AgentSpendRateHigh"):
        wait_for_sync(lambda: _firing(prom, alertname, runaway), 60, f"{alertname} firing for the runaway")
    flt = urllib.parse.quote(f'agent="{runaway}"')
    wait_for_sync(lambda: {a["labels"]["alertname"] for a in get_json(
        f"{am}/api/v2/alerts?inhibited=true&active=false&silenced=false&filter={flt}") if a["status"]["inhibitedBy"]}
        >= {"AgentRunawaySpend", "AgentSpendRateHigh"}, 30, "the runaway's spend alerts inhibited")
    assert not _spend_alerts_sent(recorder, runaway)
    assert not [p for p in recorder.at("/wallet") if p.body.get("wallet") == stack["uncapped"]]


def test_uncapped_runaway_pages_and_warns_then_resolves(stack):
    """No breaker stops the uncapped runaway: AgentRunawaySpend pages, AgentSpendRateHigh warns on Slack, and
    both resolve when the spend stops. The frozen runaway's spend alerts resolve too, never having been sent;
    its breaker stays open (a person or the cool-down undoes a freeze, not a pause in spending)."""
    prom, recorder, runaway, frozen = stack["prom"], stack["recorder"], stack["uncapped"], stack["runaway"]
    trig = wait_for_sync(lambda: [e for e in _pd_events(recorder, "AgentRunawaySpend")
                                  if e.get("event_action") == "trigger"], 90, "a PagerDuty trigger")
    assert trig[0]["routing_key"] == "test-routing-key"
    assert runaway in json.dumps(trig[0])
    slack = wait_for_sync(lambda: _slack(recorder, "AgentSpendRateHigh"), 60, "a Slack message")
    assert "[FIRING]" in json.dumps(slack[0]) and runaway in json.dumps(slack[0])
    # warnings never page, critical alerts never go to Slack
    assert not _pd_events(recorder, "AgentSpendRateHigh")
    assert not _slack(recorder, "AgentRunawaySpend")
    stack["daemon"].stop_traffic_now()
    dedup = trig[0]["dedup_key"]
    resolved = wait_for_sync(lambda: [e for e in recorder.bodies("/pagerduty")
                                      if e.get("event_action") == "resolve" and e.get("dedup_key") == dedup],
                             120, "the PagerDuty resolve")
    assert resolved
    wait_for_sync(lambda: [b for b in _slack(recorder, "AgentSpendRateHigh") if "[RESOLVED]" in json.dumps(b)],
                  60, "the Slack resolve")
    for alertname in ("AgentRunawaySpend", "AgentSpendRateHigh"):
        wait_for_sync(lambda: not _firing(prom, alertname, frozen), 60,
                      f"{alertname} resolved for the frozen runaway")
    assert _firing(prom, "BreakerOpened", frozen)
    opened = {e["dedup_key"] for e in _pd_events(recorder, "BreakerOpened") if frozen in json.dumps(e)}
    assert opened and not [e for e in recorder.bodies("/pagerduty")
                           if e.get("event_action") == "resolve" and e.get("dedup_key") in opened]
    assert not _spend_alerts_sent(recorder, frozen)


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
    wait_for_sync(lambda: [e for e in _pd_events(recorder, "BreakerOpened") if agent in json.dumps(e)], 30,
                  "the BreakerOpened page")
    other = agent.replace("AA", "BB")
    wait_for_sync(lambda: [b for b in _slack(recorder, "AgentSpendRateHigh") if other in json.dumps(b)], 30,
                  "the other agent's warning")
    time.sleep(2)  # several group intervals
    assert not [b for b in _slack(recorder, "AgentSpendRateHigh") if agent in json.dumps(b)]
    got = get_json(f"{am}/api/v2/alerts?inhibited=true&active=false&silenced=false&filter=agent%3D%22{agent}%22")
    assert any(a["status"]["inhibitedBy"] for a in got if a["labels"]["alertname"] == "AgentSpendRateHigh")


def test_stale_tap_view_pages_then_resolves(stack, tap_target):
    recorder, (_, tap) = stack["recorder"], tap_target
    tap.view_stale.set(1)
    trig = wait_for_sync(lambda: [e for e in _pd_events(recorder, "TapBreakerViewStale")
                                  if e.get("event_action") == "trigger"], 60, "the TapBreakerViewStale page")
    assert tap_target[0] in json.dumps(trig[0]) and not _slack(recorder, "TapBreakerViewStale")
    assert "cannot tell which agents are frozen" in trig[0]["payload"]["summary"]  # each alert's own summary
    tap.view_stale.set(0)
    wait_for_sync(lambda: [e for e in recorder.bodies("/pagerduty") if e.get("event_action") == "resolve"
                           and e.get("dedup_key") == trig[0]["dedup_key"]], 60, "the TapBreakerViewStale resolve")
