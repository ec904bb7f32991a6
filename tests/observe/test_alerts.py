"""The alerting rules and the Alertmanager configuration, checked by the Prometheus tools themselves."""

from __future__ import annotations

import re
import subprocess

import yaml
from prometheus_client import CollectorRegistry

from tests.observe.stack import ALERTMANAGER, ROOT, RULES, need
from watcher.tap.metrics import TapMetrics

ISSUE_ALERTS = {"AgentRunawaySpend", "AgentSpendRateHigh", "BreakerOpened", "EscalationWaiting", "AnomalyScoreHigh",
                "ShadowSpend", "UnsettledPayments", "ConsumerLagHigh", "DeadLetterRateHigh", "WebhookFailing",
                "WebhookDeadLettered", "ChainBridgeStalled", "ChainNodeBehind", "AgentAlertsCapped"}
TAP_ALERTS = {"TapBreakerViewStale", "TapRecordsLost", "TapPublishFailing", "TapUpstreamErrors", "TapUpstreamSlow"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_rules_check():
    r = _run(need("promtool"), "check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_unit_tests():
    tests = sorted(str(p) for p in (ROOT / "alerts" / "tests").glob("*.yml"))
    assert len(tests) >= 3
    r = _run(need("promtool"), "test", "rules", *tests)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_severity_summary_and_unit_test():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert ISSUE_ALERTS | TAP_ALERTS <= names
    tested = "".join(p.read_text() for p in (ROOT / "alerts" / "tests").glob("*.yml"))
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert f"alertname: {r['alert']}" in tested, f"{r['alert']} has no promtool unit test"


def test_tap_rules_use_the_families_the_tap_exports():
    families = {f.name for f in TapMetrics(CollectorRegistry()).registry.collect()}
    exported = {f + suffix for f in families for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    used = set(re.findall(r"spendwatch_tap_\w+", RULES.read_text()))
    assert used and used <= exported, f"not exported by watcher/tap/metrics.py: {used - exported}"


def test_alertmanager_config_checks():
    r = _run(need("amtool"), "check-config", str(ALERTMANAGER))
    assert r.returncode == 0, r.stdout + r.stderr


def test_routes_critical_to_pagerduty_and_warning_to_slack():
    amtool = need("amtool")
    for labels, receiver in ((["severity=critical", "alertname=AgentRunawaySpend"], "pagerduty"),
                             (["severity=critical", "alertname=WebhookDeadLettered", "job=spendwatch"], "pagerduty"),
                             (["severity=warning", "alertname=AgentSpendRateHigh"], "slack"),
                             (["severity=warning", "alertname=TapUpstreamErrors", "instance=tap-a:8402"], "slack")):
        r = _run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                 f"--verify.receivers={receiver}", *labels)
        assert r.returncode == 0, r.stdout + r.stderr


def test_open_breaker_inhibits_the_same_agents_spend_rate_warning():
    doc = yaml.safe_load(ALERTMANAGER.read_text())
    rule = next(i for i in doc["inhibit_rules"] if 'alertname="BreakerOpened"' in i["source_matchers"])
    assert "AgentSpendRateHigh" in rule["target_matchers"][0] and rule["equal"] == ["agent"]
