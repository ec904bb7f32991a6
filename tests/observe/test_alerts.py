"""The alerting rules and the Alertmanager configuration, checked by the Prometheus tools themselves."""

from __future__ import annotations

import subprocess

import yaml

from tests.observe.stack import ALERTMANAGER, ROOT, RULES, need

ISSUE_ALERTS = {"AgentRunawaySpend", "AgentSpendRateHigh", "BreakerOpened", "EscalationWaiting", "AnomalyScoreHigh",
                "ShadowSpend", "UnsettledPayments", "ConsumerLagHigh", "DeadLetterRateHigh", "WebhookFailing",
                "ChainBridgeStalled"}


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
    assert ISSUE_ALERTS <= names
    tested = "".join(p.read_text() for p in (ROOT / "alerts" / "tests").glob("*.yml"))
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert f"alertname: {r['alert']}" in tested, f"{r['alert']} has no promtool unit test"


def test_alertmanager_config_checks():
    r = _run(need("amtool"), "check-config", str(ALERTMANAGER))
    assert r.returncode == 0, r.stdout + r.stderr


def test_routes_critical_to_pagerduty_and_warning_to_slack():
    amtool = need("amtool")
    for labels, receiver in ((["severity=critical", "alertname=AgentRunawaySpend"], "pagerduty"),
                             (["severity=warning", "alertname=AgentSpendRateHigh"], "slack")):
        r = _run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                 f"--verify.receivers={receiver}", *labels)
        assert r.returncode == 0, r.stdout + r.stderr


def test_open_breaker_inhibits_the_same_agents_spend_rate_warning():
    doc = yaml.safe_load(ALERTMANAGER.read_text())
    rule = next(i for i in doc["inhibit_rules"] if 'alertname="BreakerOpened"' in i["source_matchers"])
    assert "AgentSpendRateHigh" in rule["target_matchers"][0] and rule["equal"] == ["agent"]
