"""docker-compose.yml: valid against the Compose specification, every mounted file exists, and the
services the issue asks for are there. (No Docker engine here: validation only.)"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_validates_against_compose_spec(compose):
    if not SCHEMA.exists():
        pytest.fail(f"{SCHEMA} missing: shared/ must sit beside the clone (../shared/schemas)")
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(compose)


def test_every_mounted_file_and_build_context_exists(compose):
    mounts = 0
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"service {name} mounts {source}, which does not exist"
                mounts += 1
        build = svc.get("build")
        if build:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            assert (ROOT / ctx / "Dockerfile").exists()
    assert mounts >= 6


def test_stack_has_what_the_issue_asks(compose):
    s = compose["services"]
    assert {"kafka", "watcher", "chain", "prometheus", "alertmanager", "grafana"} <= set(s)
    assert s["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in s["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]          # KRaft, no ZooKeeper
    assert "CHAIN_WS_URL" in s["chain"]["environment"]["SPENDWATCH_CHAIN__WS_URL"]     # RPC endpoint configurable
    assert "./alerts/rules.yml:/etc/prometheus/rules.yml:ro" in s["prometheus"]["volumes"]
    assert "--cluster.listen-address=" in s["alertmanager"]["command"]
    assert "./dashboards:/var/lib/grafana/dashboards:ro" in s["grafana"]["volumes"]
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["/etc/prometheus/rules.yml"]
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"   # the uid every dashboard panel uses


def test_deploy_prometheus_config_checks(tmp_path):
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    # promtool resolves rule_files on disk: check a copy pointing at the repository's rules
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    cfg["rule_files"] = [str(ROOT / "alerts" / "rules.yml")]
    tmp = tmp_path / "prometheus.yml"
    tmp.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([promtool, "check", "config", str(tmp)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_named_volumes_hold_the_state_and_are_writable(compose):
    """The kafka-data volume stored nothing (apache/kafka writes to /tmp/kraft-combined-logs unless
    KAFKA_LOG_DIRS says otherwise), and the chain bridge's volume was root's while the image runs as uid
    10001: the bridge could not write its checkpoint."""
    kafka = compose["services"]["kafka"]
    data = next(v.split(":")[1] for v in kafka["volumes"] if v.startswith("kafka-data:"))
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == data
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER spendwatch" in dockerfile
    for name, svc in compose["services"].items():
        if svc.get("image") != "spendwatch:latest":
            continue
        for vol in svc.get("volumes", []):
            source, target = vol.split(":")[:2]
            if source.startswith((".", "/")):
                continue   # a bind mount of a file, read-only
            assert f"mkdir -p {target}" in dockerfile and f"chown spendwatch {target}" in dockerfile, (name, target)
            state = {k: v for k, v in svc["environment"].items() if k.endswith("CHECKPOINT_PATH")}
            assert all(str(v).startswith(target + "/") for v in state.values()), state
