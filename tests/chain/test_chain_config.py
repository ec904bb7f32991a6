"""The [chain] table's errors: where a bad value came from (file, environment, option), every error at
once, and what to give when there is no node to read from."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from watcher.chain.config import load_settings
from watcher.errors import ConfigError

URL = "ws://127.0.0.1:8545"


@pytest.fixture(autouse=True)
def _no_chain_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("SPENDWATCH_CHAIN__"):
            monkeypatch.delenv(k)


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[chain]\nws_url = "{URL}"\nwatch_all = true\nchain_id = 8453\n')
    monkeypatch.setenv("SPENDWATCH_CHAIN__CHAIN_ID", "0")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    e = err.value
    assert e.key == "chain.chain_id" and e.file is None, str(e)
    assert "from SPENDWATCH_CHAIN__CHAIN_ID (the environment wins over the file)" in str(e)
    assert "SPENDWATCH_CHAIN__CHAIN_ID" in e.fix


def test_a_bad_option_names_the_option(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[chain]\nws_url = "{URL}"\nwatch_all = true\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, ws_url="http://127.0.0.1:8545", flags={"ws_url": "--ws-url"})
    e = err.value
    assert e.key == "chain.ws_url" and e.file is None and "from --ws-url" in str(e) and "--ws-url" in e.fix, str(e)


def test_every_error_of_the_table_is_listed(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[chain]\nws_url = "{URL}"\nwatch_all = true\nchain_id = 0\nconfirmations = -1\n'
                   'topic = ""\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    e, text = err.value, str(err.value)
    assert e.file == str(cfg) and e.key == "chain.chain_id" and "more)" not in text, text
    assert "\n  chain.confirmations" in text and "\n  chain.topic" in text, text


def test_check_without_a_node_url_says_which_options_to_give():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDWATCH_")}
    r = subprocess.run([sys.executable, "-m", "watcher", "chain", "--check", "--watch-all"], capture_output=True,
                       text=True, env={**env, "COLUMNS": "400"})
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out, out
    assert "<environment>" not in out and "key: chain.ws_url" in out, out
    for way in ("--ws-url", "--http-url", "chain.ws_url", "chain.http_url", "SPENDWATCH_CHAIN__WS_URL"):
        assert way in out.split("fix:", 1)[1], (way, out)
