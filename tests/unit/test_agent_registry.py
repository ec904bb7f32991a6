"""agents.registry_file: the daemon reads the chain bridge's agent registry, checks it before connecting, and
`spendwatch run` puts its names in webhook bodies (plain values, no broker)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import msgspec
import pytest

from watcher.config import load_settings
from watcher.errors import ConfigError

BOT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
CRAWLER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
STRANGER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
T0 = 1_795_305_600_000


@pytest.fixture
def config(tmp_path, monkeypatch):
    """etc/spendwatch.toml naming etc/agents.toml relatively; the working directory is elsewhere."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agents.toml").write_text(f'[[agents]]\nwallet = "{BOT.lower()}"\nname = "pricing-bot"\n'
                                     f'[[agents]]\nwallet = "{CRAWLER}"\nname = "research-crawler"\n')
    cfg = etc / "spendwatch.toml"
    cfg.write_text('[agents]\nregistry_file = "agents.toml"\n')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("SPENDWATCH_AGENTS__REGISTRY_FILE", raising=False)
    return cfg


def test_registry_names_relative_to_the_config_file(config):
    s = load_settings(config)
    assert s.agents.registry_file == config.parent / "agents.toml"
    assert s.agents.names == {BOT: "pricing-bot", CRAWLER: "research-crawler"}   # checksummed wallets
    assert load_settings().agents.names == {}                                    # none: wallets only


def test_environment_overrides_the_registry_relative_to_the_working_directory(config, monkeypatch):
    (config.parent.parent / "work" / "other.toml").write_text(f'[[agents]]\nwallet = "{STRANGER}"\nname = "x"\n')
    monkeypatch.setenv("SPENDWATCH_AGENTS__REGISTRY_FILE", "other.toml")
    assert load_settings(config).agents.names == {STRANGER: "x"}


def test_the_example_registry_loads():
    from pathlib import Path

    s = load_settings(agents__registry_file=str(Path(__file__).parents[2] / "examples" / "agents.toml"))
    assert set(s.agents.names.values()) == {"research-crawler", "pricing-bot"}


@pytest.mark.parametrize("registry, where, says", [
    (f'[[agents]]\nwallet = "{BOT}"\n[[agents]]\nwallet = "0x1234"\nname = "short"\n', "agents[1].wallet",
     "not a 0x-prefixed 20-byte hex address"),
    (f'[[agents]]\nwallet = "{BOT.replace("C5", "c5")}"\n', "agents[0].wallet", "wrong EIP-55 checksum"),
    ('agents = "bot"\n', "agents", "array of tables"),
    ("[[agents]\n", None, "not valid TOML"),
])
def test_a_broken_registry_fails_at_load_naming_the_registry_and_entry(config, registry, where, says):
    (config.parent / "agents.toml").write_text(registry)
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert err.value.file == str(config.parent / "agents.toml") and err.value.key == where
    assert says in str(err.value) and err.value.fix


def test_a_missing_registry_names_the_setting(config):
    (config.parent / "agents.toml").unlink()
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert err.value.key == "agents.registry_file" and err.value.file == str(config.parent / "agents.toml")
    config.write_text('[agents]\nregistry = "agents.toml"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert err.value.key == "agents.registry" and "spelling" in err.value.fix


def test_check_config_reads_the_registry(config):
    def check() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "watcher", "check-config", str(config)],
                              capture_output=True, text=True)

    ok = check()
    assert ok.returncode == 0 and "agent registry" in ok.stdout and "2 agents" in ok.stdout, ok.stdout + ok.stderr
    (config.parent / "agents.toml").write_text('[[agents]]\nwallet = "nope"\n')
    bad = check()
    assert bad.returncode == 1 and "agents[0].wallet" in bad.stdout + bad.stderr


def test_spendwatch_run_puts_registry_names_in_webhook_bodies(config):
    """The Assembly as `spendwatch run` builds it (watcher.cli.run.assemble, from the real argument parser)."""
    from watcher.cli.main import build_parser
    from watcher.cli.run import assemble
    from watcher.detect.decision import Decision, rfc3339

    args = build_parser().parse_args(["run", "--config", str(config)])
    stage = assemble(load_settings(args.config), args).breaker
    assert stage.names == {BOT: "pricing-bot", CRAWLER: "research-crawler"}

    def freeze(agent: str, id: str) -> Decision:
        return Decision(id=id, kind="freeze", agent=agent, rule="cap_1m", source="policy", observed=3,
                        threshold=2, unit="usdc_base_units", window="1m", event_ids=["e1"],
                        occurred_at=rfc3339(T0), reason="over the cap")

    stage.restore(0, None)
    stage.on_batch(SimpleNamespace(partition=0, decisions=[freeze(BOT, "d-1"), freeze(STRANGER, "d-2")],
                                   now_ms=T0, publish=[], real_from_ms=0))
    bodies = {b["wallet"]: b for b in (msgspec.json.decode(d.body) for d in stage.outbox[0].values())}
    assert bodies[BOT]["agent"] == "pricing-bot" and bodies[BOT]["type"] == "freeze"
    assert bodies[STRANGER]["agent"] == STRANGER          # not in the registry: the wallet


def test_policy_file_names_reach_the_breaker_and_the_registry_wins(config, tmp_path):
    from watcher.cli.main import build_parser
    from watcher.cli.run import assemble

    policy = tmp_path / "policy.toml"
    policy.write_text(f'[agents."{STRANGER}"]\nname = "from-policy"\n[agents."{BOT}"]\nname = "policy-bot"\n')
    config.write_text(config.read_text() + f'[detect]\npolicy_file = "{policy}"\n')
    args = build_parser().parse_args(["run", "--config", str(config)])
    names = assemble(load_settings(args.config), args).breaker.names
    assert names[STRANGER] == "from-policy" and names[BOT] == "pricing-bot"
