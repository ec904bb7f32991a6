"""`spendwatch replay` and `spendwatch eval --json --seed 1`, through the CLI functions."""

import json

import pytest

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
    assert main(["replay", "--events", str(events), "--policy", str(tmp_path / "missing.toml"), "--out", str(out)]) == 1


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
    assert main(["replay", "--events", str(tmp_path / "typo.jsonl"), "--out", str(out)]) == 1
    assert "typo.jsonl" in capsys.readouterr().err
    assert out.read_bytes() == b'{"kept": true}\n'


def test_a_file_with_no_topic_record_is_an_error(tmp_path, capsys):
    """Garbage (or a file of another format) used to exit 0 with 0 events and a rate in events/s."""
    events = tmp_path / "garbage.jsonl"
    events.write_bytes(b"hello\n{\"type\": \"other\"}\n")
    out = tmp_path / "decisions.jsonl"
    assert main(["replay", "--events", str(events), "--out", str(out)]) == 1
    assert "none of the 2 lines" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert main(["replay", "--events", str(empty), "--out", str(out)]) == 0


def test_replay_with_the_deployments_config_decides_as_its_daemon(tmp_path, capsys, monkeypatch):
    """Without --config, replay used the default windows and ignored [categories]: a category budget that the
    live daemon enforces (its merchant categorised by the config's table) was never hit in a backtest."""
    from tests.detect.conftest import AGENT, MERCHANT, T0, Harness

    h = Harness()
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(h.settle(T0 + k * 1000, 600_000) for k in range(3)) + b"\n")
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "p1"\n[defaults]\ncategory_budgets_usdc = {research = 1}\n')
    config = tmp_path / "spendwatch.toml"
    # a production file: its webhook needs a secret that a backtest has no use for
    monkeypatch.delenv("SPENDWATCH_WEBHOOK_SECRET", raising=False)
    config.write_text(f'[detect]\npolicy_file = "policy.toml"\n[categories]\n"{MERCHANT}" = "research"\n'
                      '[webhook]\nurl = "https://wallets.internal/freeze"\n')
    out = tmp_path / "decisions.jsonl"
    assert main(["replay", "--events", str(events), "--policy", str(policy), "--out", str(out)]) == 0
    assert out.read_bytes() == b""                 # no category known: no budget applies
    assert main(["replay", "--events", str(events), "--config", str(config), "--out", str(out)]) == 0
    got = [decode_decision(line) for line in out.read_bytes().splitlines()]
    assert [(d.rule, d.category, d.policy_version) for d in got] == [("category_budget", "research", "p1")]
    assert got[0].agent.lower() == AGENT.lower()
    # a configuration whose [[windows]] lack the budget's 24h is refused, as `spendwatch run` refuses it
    config.write_text(config.read_text() + '[[windows]]\nname = "1m"\nseconds = 60\nbuckets = 6\n')
    capsys.readouterr()
    assert main(["replay", "--events", str(events), "--config", str(config), "--out", str(out)]) == 1
    assert "'24h'" in capsys.readouterr().err


def test_drain_seconds_is_bounded(tmp_path):
    """A drain of 1e12 s pushed event time past year 9999 and crashed when a decision was written."""
    events = tmp_path / "e.jsonl"
    events.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_:
        main(["replay", "--events", str(events), "--out", str(tmp_path / "o.jsonl"), "--drain-seconds", "1e12"])
    assert exit_.value.code == 2
