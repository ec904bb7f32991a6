"""Configuration: validated before connecting; errors name the file, the key and the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from watcher.config import load_settings
from watcher.errors import ConfigError


def test_defaults_are_valid():
    s = load_settings()
    assert s.kafka.bootstrap == "" and [w.name for w in s.windows] == ["1m", "5m", "1h", "24h"]


def test_unknown_key_names_file_key_and_fix(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[kafka]\nbootstrapp = "x:9092"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    msg = str(err.value)
    assert str(f) in msg and "kafka.bootstrapp" in msg and "spelling" in msg


def test_bad_value_and_bad_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[kafka]\npartitions = 0\n")
    with pytest.raises(ConfigError, match="kafka.partitions"):
        load_settings(f)
    f.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(f)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_window_must_divide_into_buckets(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[[windows]]\nname = "1m"\nseconds = 60\nbuckets = 7\n')
    with pytest.raises(ConfigError, match="windows.0"):
        load_settings(f)


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text('[kafka]\nbootstrap = "file:9092"\ngroup = "g"\n')
    monkeypatch.setenv("SPENDWATCH_KAFKA__BOOTSTRAP", "env:9092")
    s = load_settings(f)
    assert s.kafka.bootstrap == "env:9092" and s.kafka.group == "g"


def test_a_relative_policy_file_is_relative_to_the_config_file(tmp_path, monkeypatch):
    """As agents.registry_file and the chain bridge's paths: the same file wherever the command starts; from
    the environment, relative to the working directory."""
    from watcher.detect.policy import Policy

    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "policy.toml").write_text('[defaults.caps]\nper_minute_usdc = 7\n')
    cfg = etc / "spendwatch.toml"
    cfg.write_text('[detect]\npolicy_file = "policy.toml"\n')
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("SPENDWATCH_DETECT__POLICY_FILE", raising=False)
    s = load_settings(cfg)
    assert s.detect.policy_file == str(etc / "policy.toml")
    assert Policy.load(s.detect.policy_file).source == str(etc / "policy.toml")
    monkeypatch.setenv("SPENDWATCH_DETECT__POLICY_FILE", "mine.toml")
    assert load_settings(cfg).detect.policy_file == "mine.toml"
    monkeypatch.delenv("SPENDWATCH_DETECT__POLICY_FILE")
    cfg.write_text('[detect]\npolicy_file = ""\n')          # empty: none, not the config file's folder
    assert load_settings(cfg).detect.policy_file == ""


def test_check_config_command(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[kafka]\nbootstrap = "k:9092"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[dedupe]\nhorizon_seconds = 1\n')
    ok = subprocess.run([sys.executable, "-m", "watcher", "check-config", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    no = subprocess.run([sys.executable, "-m", "watcher", "check-config", str(bad)], capture_output=True, text=True)
    assert no.returncode == 1 and "dedupe.horizon_seconds" in no.stdout + no.stderr


def test_dedupe_horizon_must_outlive_a_held_finding(tmp_path):
    # a payment whose `unsettled` finding is held (up to UNSETTLED_HOLD deadlines) must still be remembered
    f = tmp_path / "c.toml"
    short = '[[windows]]\nname = "1m"\nseconds = 60\nbuckets = 6\n'    # the memory must span the windows too
    f.write_text(short + "[dedupe]\nhorizon_seconds = 3000\n[findings]\nunsettled_after_seconds = 300\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert err.value.key == "dedupe.horizon_seconds" and "at least 3600" in str(err.value)
    f.write_text(short + "[dedupe]\nhorizon_seconds = 3600\n[findings]\nunsettled_after_seconds = 300\n")
    assert load_settings(f).dedupe.horizon_seconds == 3600
    with pytest.raises(ConfigError, match="at least 4000"):
        load_settings(f, findings__shadow_grace_seconds=4000)


def test_example_config_is_valid():
    load_settings("examples/spendwatch.toml")


def test_help_explains_every_command():
    out = subprocess.run([sys.executable, "-m", "watcher", "--help"], capture_output=True, text=True).stdout
    for cmd in ("run", "simulate", "demo", "check-config", "bench"):
        assert cmd in out


@pytest.mark.parametrize("text, says", [
    ('[detect]\npolicy_file = "{tmp}/missing-policy.toml"\n', "cannot read the policy file"),
    ('[detect]\npolicy_file = "{tmp}/bad-policy.toml"\n', "caps.per_minute_usdc"),
    ('[chain]\nhttp_url = "http://127.0.0.1:8545"\nbogus_key = 1\n', "chain.bogus_key"),
])
def test_check_config_checks_what_the_commands_would_read(tmp_path, text, says):
    """check-config fails where `spendwatch run` (its policy file) or `spendwatch chain` (its table) would."""
    (tmp_path / "bad-policy.toml").write_text('[defaults.caps]\nper_minute_usdc = -1\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(text.format(tmp=tmp_path))
    r = subprocess.run([sys.executable, "-m", "watcher", "check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 1 and says in r.stdout + r.stderr, r.stdout + r.stderr
    (tmp_path / "bad-policy.toml").write_text('[defaults.caps]\nper_minute_usdc = 1\n')
    cfg.write_text('[detect]\npolicy_file = "{tmp}/bad-policy.toml"\n'.format(tmp=tmp_path))
    r = subprocess.run([sys.executable, "-m", "watcher", "check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0 and "policy" in r.stdout


def test_log_level_of_the_file_applies_unless_the_flag_is_given(tmp_path):
    import argparse
    import logging

    from watcher.cli.common import settings_from

    cfg = tmp_path / "c.toml"
    cfg.write_text('log_level = "WARNING"\n')
    root = logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.INFO)
        settings_from(argparse.Namespace(config=str(cfg), log_level=None))
        assert root.level == logging.WARNING
        root.setLevel(logging.DEBUG)
        settings_from(argparse.Namespace(config=str(cfg), log_level="DEBUG"))
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(before)
    cfg.write_text('log_level = "LOUD"\n')
    with pytest.raises(ConfigError, match="log_level"):
        load_settings(cfg)


def _settings_keys(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        t = field.annotation
        if isinstance(t, type) and issubclass(t, BaseModel):
            yield from _settings_keys(t, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_readme_configuration_table_names_every_key():
    """Each key of the daemon's settings has a row (or a `/`-joined part of one) in README's table."""
    import re
    from pathlib import Path

    from watcher.config import Settings

    text = Path("README.md").read_text()
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        names = re.findall(r"`([^`]+)`", line.split("|")[1])
        section = names[0].rsplit(".", 1)[0] + "." if "." in names[0] else ""
        documented.add(names[0].strip("[]"))
        documented.update(section + n for n in names[1:])
    missing = [k for k in _settings_keys(Settings) if k not in documented]
    assert not missing, f"README configuration table lacks {missing}"


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("SPENDWATCH_")}


@pytest.mark.parametrize("var, value, key", [
    ("SPENDWATCH_KAFKA__PARTITIONS", "zero", "kafka.partitions"),
    ("SPENDWATCH_METRICS__PORT", "-1", "metrics.port"),
    ("SPENDWATCH_ADMIN__PORT", "70000", "admin.port"),
])
def test_a_bad_value_from_the_environment_names_the_variable_not_the_file(monkeypatch, var, value, key):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings("examples/spendwatch.toml")
    e = err.value
    assert e.key == key and e.file is None, str(e)
    assert f"from {var} (the environment wins over the file)" in str(e) and var in e.fix, str(e)
    assert "file: examples/spendwatch.toml" not in str(e)


def test_a_bad_value_from_the_file_still_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SPENDWATCH_KAFKA__GROUP", "g")          # set, but not the key in error
    f = tmp_path / "c.toml"
    f.write_text("[kafka]\npartitions = 0\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    e = err.value
    assert e.file == str(f) and e.key == "kafka.partitions" and "SPENDWATCH_" not in str(e), str(e)
    assert "at least 1" in e.fix


def test_a_whole_table_from_the_environment_that_is_not_json_names_the_variable(monkeypatch):
    monkeypatch.setenv("SPENDWATCH_KAFKA", "x")
    with pytest.raises(ConfigError) as err:
        load_settings("examples/spendwatch.toml")
    e = err.value
    assert e.key == "kafka" and "from SPENDWATCH_KAFKA " in str(e) and "SPENDWATCH_KAFKA" in e.fix, str(e)


def test_every_error_is_listed_the_first_one_leading(tmp_path, monkeypatch):
    monkeypatch.setenv("SPENDWATCH_METRICS__PORT", "-1")
    f = tmp_path / "c.toml"
    f.write_text('[kafka]\npartitions = 0\nmax_batch = "many"\n[[windows]]\nname = "1m"\nseconds = 60\n'
                 'buckets = 7\n')
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    e, text = err.value, str(err.value)
    assert e.key == "kafka.partitions" and e.file == str(f) and "at least 1" in e.fix, text
    assert "more)" not in text
    for key in ("kafka.max_batch", "windows.0", "metrics.port"):
        assert f"\n  {key}" in text, text
    assert "metrics.port from SPENDWATCH_METRICS__PORT (the environment wins over the file)" in text
    assert "'many'" in text


def test_check_config_names_the_variable_a_bad_value_came_from():
    r = subprocess.run([sys.executable, "-m", "watcher", "check-config", "examples/spendwatch.toml"],
                       capture_output=True, text=True,
                       env={**_clean_env(), "COLUMNS": "400", "SPENDWATCH_KAFKA__PARTITIONS": "zero"})
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out, out
    assert "from SPENDWATCH_KAFKA__PARTITIONS (the environment wins over the file)" in out, out
    assert "key: kafka.partitions" in out and "fix: make SPENDWATCH_KAFKA__PARTITIONS" in out, out
    assert "file: examples/spendwatch.toml" not in out, out


A1 = "0x" + "01" * 20
THREE_BAD_POLICY = f'[defaults.caps]\nper_minute_usdc = -1\n[teams.ops.caps]\nper_hour_usdc = "lots"\n' \
                   f'[agents."{A1}".escalation]\nwindow = "2h"\n'


@pytest.mark.parametrize("command", ["check-config", "replay"])
def test_check_config_and_replay_list_every_bad_value_of_the_policy(tmp_path, command):
    """Both named only the policy's first problem ('(and N more)'), and none of a team's or an agent's."""
    policy = tmp_path / "policy.toml"
    policy.write_text(THREE_BAD_POLICY)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[detect]\npolicy_file = "{policy}"\n')
    events = tmp_path / "events.jsonl"
    events.write_text("")
    args = [str(cfg)] if command == "check-config" else [
        "--events", str(events), "--policy", str(policy), "--out", str(tmp_path / "out.jsonl")]
    r = subprocess.run([sys.executable, "-m", "watcher", command, *args], capture_output=True, text=True,
                       env={**_clean_env(), "COLUMNS": "400"})
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out and "OK" not in r.stdout, out
    assert "invalid policy" in out and "and 2 more:" in out and "more)" not in out, out
    for key in ("defaults.caps.per_minute_usdc", "teams.ops.caps.per_hour_usdc", f"agents.{A1}.escalation.window"):
        assert key in out, out


@pytest.mark.parametrize("var, value, key, most", [
    ("SPENDWATCH_FINDINGS__UNSETTLED_AFTER_SECONDS", "9000", "findings.unsettled_after_seconds", 7800),
    ("SPENDWATCH_FINDINGS__SHADOW_GRACE_SECONDS", "100000", "findings.shadow_grace_seconds", 93600),
])
def test_the_horizon_check_names_the_variable_a_finding_delay_came_from(tmp_path, monkeypatch, var, value, key,
                                                                         most):
    """The check always blamed dedupe.horizon_seconds, in the file, when the delay that broke it came from
    a variable: the operator looked for a value that was never there."""
    monkeypatch.setenv(var, value)
    f = tmp_path / "c.toml"
    f.write_text("[dedupe]\nhorizon_seconds = 93600\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    e, text = err.value, str(err.value)
    assert e.key == key and e.file is None and f"from {var} (the environment wins over the file)" in text, text
    assert f"dedupe.horizon_seconds=93600 in {f}" in text and f"{key}={value} from {var}" in text, text
    assert f"lower {var} to at most {most}" in e.fix and "at least" in e.fix, text
    f.write_text("")
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert "dedupe.horizon_seconds=93600 by default" in str(err.value), str(err.value)


def test_dedupe_horizon_must_span_the_longest_window(tmp_path):
    """A 7d window with the default 26 h memory passed check-config: a record redelivered 54 h later was
    forgotten by dedupe yet still inside the 7d window, so it was counted twice there."""
    f = tmp_path / "w.toml"
    f.write_text('[[windows]]\nname = "1m"\nseconds = 60\nbuckets = 6\n'
                 '[[windows]]\nname = "7d"\nseconds = 604800\nbuckets = 7\n')
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    text = str(err.value)
    assert err.value.key == "dedupe.horizon_seconds" and "'7d'" in text and "at least 604800" in text, text
    assert "dedupe.horizon_seconds=93600 by default" in text, text
    f.write_text(f.read_text() + "[dedupe]\nhorizon_seconds = 604800\n")
    assert load_settings(f).dedupe.horizon_seconds == 604800
