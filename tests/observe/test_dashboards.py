"""The committed dashboards are what generate.py builds, and valid Grafana dashboard models."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT.parent / "shared" / "schemas" / "grafana"
generate = pytest.importorskip("dashboards.generate", reason="grafana-foundation-sdk==0.0.21 not installed")


def _schema(name: str) -> dict:
    path = SCHEMAS / name
    if not path.exists():
        pytest.fail(f"{path} missing: CI and this machine keep shared/ beside the clone (../shared/schemas)")
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", sorted(generate.DASHBOARDS))
def test_committed_json_is_regenerated(name):
    assert (ROOT / "dashboards" / name).read_text() == generate.render(name), \
        "run .venv/bin/python dashboards/generate.py and commit the JSON"


@pytest.mark.parametrize("name", sorted(generate.DASHBOARDS))
def test_dashboard_validates_against_grafana_schema(name):
    doc = json.loads((ROOT / "dashboards" / name).read_text())
    jsonschema.Draft7Validator(_schema("dashboard.jsonschema.json")).validate(doc)
    # each panel's options and custom field config against its plugin's schema
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        plugin = _schema(f"{panel['type']}.jsonschema.json")
        for part, definition in (("options", "Options"), ("custom", "FieldConfig")):
            custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
            value = panel.get("options") if part == "options" else custom
            if value is None or definition not in plugin["definitions"]:
                continue
            schema = {"$ref": f"#/definitions/{definition}", "definitions": plugin["definitions"]}
            jsonschema.Draft7Validator(schema).validate(value)


def test_dashboards_cover_what_the_issue_asks():
    docs = {n: json.loads((ROOT / "dashboards" / n).read_text()) for n in generate.DASHBOARDS}
    uids = {d["uid"] for d in docs.values()}
    assert uids == {"spendwatch-fleet", "spendwatch-agent", "spendwatch-health"}
    agent_vars = [v["name"] for v in docs["agent.json"]["templating"]["list"]]
    assert agent_vars == ["agent"]
    exprs = [e for _, _, e in generate.panel_queries()]
    for family in ("spendwatch_spend_usdc_total", "spendwatch_consumer_lag_records", "spendwatch_event_latency_seconds",
                   "spendwatch_dead_letters_total", "spendwatch_webhooks_total", "spendwatch_chain_head_lag_blocks",
                   "spendwatch_chain_reorgs_total", "spendwatch_decisions_total", "spendwatch_breakers",
                   "spendwatch_anomaly_score", "spendwatch_tap_breaker_view_stale", "spendwatch_tap_records_total",
                   "spendwatch_tap_requests_total", "spendwatch_tap_upstream_seconds"):
        assert any(family in e for e in exprs), family
    # every panel targets the provisioned datasource
    for d in docs.values():
        for p in d["panels"]:
            if p["type"] != "row":
                assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}


def test_fleet_spend_panels_show_net_spend(tmp_path):
    """A payment counted, un-counted by a reorg (or a corrected amount) and counted again adds to
    spendwatch_spend_usdc_total twice and to spendwatch_spend_reversed_usdc_total once: the fleet spends the
    difference. Each spend panel's query, evaluated by promtool over such counters, shows the net rate."""
    import shutil
    import subprocess

    import yaml

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    panels = {t: e for n, t, e in generate.panel_queries() if n == "fleet.json" and "spendwatch_spend_usdc" in e}
    assert set(panels) == {"Fleet spend rate", "Spend by category (USDC/s)", "Spend by network (USDC/s)"}
    series = []
    for cat, gross, reversed_ in (("data", 120, 60), ("compute", 60, 0)):   # USDC per minute
        labels = f'category="{cat}",network="eip155:8453",job="spendwatch"'
        series += [{"series": f"spendwatch_spend_usdc_total{{{labels}}}", "values": f"0+{gross}x15"},
                   {"series": f"spendwatch_spend_reversed_usdc_total{{{labels}}}", "values": f"0+{reversed_}x15"}]
    want = {"Fleet spend rate": [("{}", 2)],
            "Spend by category (USDC/s)": [('{category="data"}', 1), ('{category="compute"}', 1)],
            "Spend by network (USDC/s)": [('{network="eip155:8453"}', 2)]}
    tests = [{"expr": panels[t].replace("$__rate_interval", "5m"), "eval_time": "10m",
              "exp_samples": [{"labels": lab, "value": v} for lab, v in want[t]]} for t in panels]
    (tmp_path / "rules.yml").write_text("groups: []\n")
    (tmp_path / "t.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}]}))
    r = subprocess.run([promtool, "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
