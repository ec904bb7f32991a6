"""`spendwatch replay` and `spendwatch eval --json --seed 1`, through the CLI functions."""

import json

from watcher.detect.cli import main
from watcher.detect.decision import decode_decision
from watcher.detect.eval.scenarios import build_world
from watcher.detect.policy import Policy
from watcher.detect.replay import Replay


def test_replay_cli_writes_the_published_decisions(tmp_path, capsys):
    world = build_world(3, n_normal=20, hours=6.0, n_each=3)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(world.records[:1000]) + b"\nnot json\n" + b"\n".join(world.records[1000:]) + b"\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(world.policy_text)
    out = tmp_path / "decisions.jsonl"
    assert main(["replay", "--events", str(events), "--policy", str(policy), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rejected"] == {"bad_json": 1} and summary["events"] == len(world.records)
    got = [decode_decision(line) for line in out.read_bytes().splitlines()]
    expected = list(Replay(Policy.from_text(world.policy_text)).run(world.records))
    assert got == expected and len(got) > 5
    assert {d.kind for d in got} >= {"warn", "freeze"}
    assert main(["replay", "--events", str(events), "--policy", str(tmp_path / "missing.toml"), "--out", str(out)]) == 2


def test_eval_meets_the_targets(capsys):
    assert main(["eval", "--json", "--seed", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in result["scenarios"]}
    assert set(rows) == {"normal_fleet", "runaway_loop", "slow_drain", "compromised_key", "price_drift",
                         "category_budget", "new_merchant_burst"}
    for r in rows.values():
        assert {"name", "recall", "detection_delay_s", "usdc_spent_after_onset", "false_freezes",
                "false_warnings_per_1000_agent_hours"} <= set(r)
    for name in ("runaway_loop", "slow_drain", "compromised_key", "price_drift"):
        assert rows[name]["recall"] >= 0.95, rows[name]
    run = rows["runaway_loop"]
    assert run["frozen"] == run["incidents"] and run["usdc_spent_before_freeze_ok"], run
    assert run["usdc_spent_before_freeze_max"] <= run["target_usdc_max"]
    assert rows["normal_fleet"]["false_freezes"] == 0
    assert rows["normal_fleet"]["false_warnings_per_1000_agent_hours"] <= 1.0
    assert all(result["targets_met"].values()), result["targets_met"]
