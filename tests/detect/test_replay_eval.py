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


def test_eval_over_seeds_reports_the_worst_and_the_seeds_that_missed():
    from watcher.detect.cli import _seed_range, format_seeds
    from watcher.detect.eval.score import run_eval, run_evals

    assert _seed_range("3-5") == [3, 4, 5] and _seed_range("7") == [7]
    small = {"n_normal": 20, "hours": 8.0, "n_each": 4}
    multi = run_evals([4, 5], **small)
    singles = [run_eval(s, **small) for s in (4, 5)]
    assert [r["seed"] for r in multi["runs"]] == [4, 5]
    for name in ("normal_fleet", "runaway_loop", "slow_drain"):
        rows = [next(x for x in r["scenarios"] if x["name"] == name) for r in singles]
        w = multi["worst"][name]
        assert w["false_warnings_per_1000_agent_hours_max"] == max(x["false_warnings_per_1000_agent_hours"]
                                                                    for x in rows)
        assert w["false_freezes_max"] == max(x["false_freezes"] for x in rows)
        recalls = [x["recall"] for x in rows if x["recall"] is not None]
        assert w["recall_min"] == (min(recalls) if recalls else None)
    for target, seeds in multi["missed"].items():
        assert seeds == [r["seed"] for r in singles if not r["targets_met"][target]]
    assert multi["all_targets_met"] == all(all(r["targets_met"].values()) for r in singles)
    text = format_seeds(multi)
    assert text.count("\nseed ") + text.startswith("seed ") == 2 and "worst over seeds 4-5" in text


def test_a_mistyped_events_path_leaves_the_output_alone(tmp_path, capsys):
    """The output was opened (emptied) before the events file: a typo in --events erased yesterday's
    backtest."""
    out = tmp_path / "decisions.jsonl"
    out.write_bytes(b'{"kept": true}\n')
    assert main(["replay", "--events", str(tmp_path / "typo.jsonl"), "--out", str(out)]) == 2
    assert "typo.jsonl" in capsys.readouterr().err
    assert out.read_bytes() == b'{"kept": true}\n'
