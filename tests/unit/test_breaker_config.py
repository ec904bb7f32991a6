"""Breaker, webhook and admin settings: a bad value, from the file, the environment or the command line,
is a ConfigError naming the key it is about and the fix for that key; never a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

import pytest

from watcher.breaker.cli import breaker_config_from
from watcher.breaker.config import load_breaker_config
from watcher.config import load_settings
from watcher.errors import ConfigError

GOOD_SECRET = "0123456789abcdef0123"


def spendwatch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPENDWATCH_")}
    return subprocess.run([sys.executable, "-m", "watcher", *args], capture_output=True, text=True, timeout=120,
                          env={**clean, "COLUMNS": "400", **env})


@pytest.mark.parametrize("command", [["check-config", "{f}"], ["run", "--config", "{f}", "--bootstrap", "127.0.0.1:1"]])
def test_short_webhook_secret_in_the_environment_is_a_config_error(tmp_path, command):
    f = tmp_path / "c.toml"
    f.write_text('[kafka]\nbootstrap = "127.0.0.1:1"\n')
    r = spendwatch(*(a.format(f=f) for a in command), env={"SPENDWATCH_WEBHOOK_SECRET": "short"})
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out and "ValidationError" not in out
    assert "key: webhook.secrets" in out and "from SPENDWATCH_WEBHOOK_SECRET" in out
    assert "fix: set SPENDWATCH_WEBHOOK_SECRET" in out and "16 characters" in out


def test_short_admin_token_in_the_environment_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SPENDWATCH_ADMIN_TOKEN", "short")
    with pytest.raises(ConfigError) as err:
        load_settings()
    e = err.value
    assert e.key == "admin.token" and "SPENDWATCH_ADMIN_TOKEN" in str(e) and "SPENDWATCH_ADMIN_TOKEN" in e.fix


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"config": None, "webhook_url": None, "admin_port": None, **kw})


@pytest.mark.parametrize("given, key, fix", [
    ({"admin_port": 70000}, "admin.port", "port from 1 to 65535"),
    ({"webhook_url": "ftp://x"}, "webhook.url", "http:// or https:// URL"),
])
def test_command_line_errors_name_their_own_key_and_fix(monkeypatch, given, key, fix):
    monkeypatch.setenv("SPENDWATCH_WEBHOOK_SECRET", GOOD_SECRET)
    with pytest.raises(ConfigError) as err:
        breaker_config_from(args(**given), load_settings())
    e = err.value
    assert e.key == key and fix in e.fix and "SPENDWATCH_WEBHOOK_SECRET" not in e.fix, str(e)
    assert ("--admin-port" if "admin_port" in given else "--webhook-url") in str(e)


def test_url_without_a_secret_names_the_secret(monkeypatch):
    monkeypatch.delenv("SPENDWATCH_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ConfigError) as err:
        breaker_config_from(args(webhook_url="http://127.0.0.1:9/hook"), load_settings())
    assert err.value.key == "webhook.secrets" and "SPENDWATCH_WEBHOOK_SECRET" in err.value.fix
    monkeypatch.setenv("SPENDWATCH_WEBHOOK_SECRET", GOOD_SECRET)
    cfg = breaker_config_from(args(webhook_url="http://127.0.0.1:9/hook", admin_port=0), load_settings())
    assert cfg.webhook.url == "http://127.0.0.1:9/hook" and cfg.admin.port == 0


def test_breaker_config_file_errors_name_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("SPENDWATCH_WEBHOOK_SECRET", raising=False)
    f = tmp_path / "c.toml"
    f.write_text(f'[webhook]\nurl = "http://h/x"\nsecrets = ["{GOOD_SECRET}"]\nretry_initial_seconds = 9\n'
                 'retry_max_seconds = 1\n')
    with pytest.raises(ConfigError) as err:
        load_breaker_config(f)
    assert err.value.key == "webhook.retry_initial_seconds" and str(f) in str(err.value)
    f.write_text('[admin]\nport = -1\n')
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert err.value.key == "admin.port" and "port from 1 to 65535" in err.value.fix


def test_retired_signature_tolerance_key_still_loads_with_a_warning(tmp_path, caplog):
    f = tmp_path / "c.toml"
    f.write_text("[webhook]\nsignature_tolerance_seconds = 300\n")
    with caplog.at_level(logging.WARNING, logger="watcher.breaker.config"):
        s = load_settings(f)
        b = load_breaker_config(f)
    assert not hasattr(s.webhook, "signature_tolerance_seconds") and b.webhook == s.webhook
    assert any("signature_tolerance_seconds is ignored" in r.getMessage() for r in caplog.records)


def test_breaker_tables_name_the_variable_a_bad_value_came_from(tmp_path, monkeypatch):
    """load_breaker_config reports as load_settings does: the variable, not the file."""
    monkeypatch.delenv("SPENDWATCH_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("SPENDWATCH_ADMIN_TOKEN", "short")
    f = tmp_path / "c.toml"
    f.write_text('[admin]\nport = 8742\n')
    for load in (load_breaker_config, load_settings):
        with pytest.raises(ConfigError) as err:
            load(f)
        e = err.value
        assert e.key == "admin.token" and e.file is None, str(e)
        assert "from SPENDWATCH_ADMIN_TOKEN (the environment wins over the file)" in str(e)
        assert "SPENDWATCH_ADMIN_TOKEN" in e.fix and "short" not in str(e).replace("shorter", "")


def test_breaker_tables_list_every_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SPENDWATCH_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("SPENDWATCH_ADMIN_TOKEN", raising=False)
    f = tmp_path / "c.toml"
    f.write_text('[admin]\nport = -1\n[webhook]\ntimeout_seconds = 0\n[breaker]\nnotify_attempts = 99\n')
    with pytest.raises(ConfigError) as err:
        load_breaker_config(f)
    e, text = err.value, str(err.value)
    assert e.file == str(f) and "more)" not in text
    keys = {"admin.port", "webhook.timeout_seconds", "breaker.notify_attempts"}
    assert e.key in keys and all(k in text for k in keys), text
