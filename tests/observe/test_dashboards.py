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
