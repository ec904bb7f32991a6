import os
import signal
import time

import pytest

from watcher.detect.policy import Policy, PolicyWatcher
from watcher.errors import ConfigError

A1 = "0x" + "01" * 20


@pytest.mark.parametrize("text,key,fix", [
    ("[defaults.caps]\nper_minute_usdc = -1", "defaults.caps.per_minute_usdc", ">= 0"),
    ("[defaults]\nper_paymnt_max_usdc = 1", "defaults.per_paymnt_max_usdc", "remove it or check its spelling"),
    ("[defaults.actions]\ncap_1m = \"explode\"", "defaults.actions.cap_1m", "'freeze'"),
    ("[defaults.actions]\ncap_2m = \"freeze\"", "defaults.actions.cap_2m", "cap_1m"),
    ("[teams.a.caps]\nper_hour_usdc = \"x\"", "teams.a.caps.per_hour_usdc", "write a number"),
    ('[agents."0x123"]\nname = "x"', "agents.0x123", "payer wallet address"),
    (f'[agents."{A1}"]\nteam = "nope"', f"agents.{A1}.team", "[teams.nope]"),
    ('[[rate_card]]\nmerchant = "ftp://x"\ncategory = "a"', "rate_card.0.merchant", "http(s) resource URL"),
    ("[defaults.anomaly]\nnew_merchants = 40", "defaults.anomaly.new_merchants", "<= 16"),
])
def test_errors_name_key_and_fix(text, key, fix):
    with pytest.raises(ConfigError) as err:
        Policy.from_text(text, "p.toml")
    assert err.value.key == key
    assert fix in err.value.fix
    assert "p.toml" in str(err.value)


def test_bad_toml_says_so():
    with pytest.raises(ConfigError, match="not valid TOML"):
        Policy.from_text("x = ", "p.toml")


def test_overrides_defaults_team_agent():
    p = Policy.from_text(f"""
[defaults.caps]
per_minute_usdc = 1
per_hour_usdc = 10
[defaults.merchants]
block = ["0x{'aa' * 20}"]
[teams.research.caps]
per_hour_usdc = 20
[agents."{A1}"]
team = "research"
name = "crawler"
caps = {{ per_minute_usdc = 3 }}
merchants = {{ block = [] }}
""")
    lim = p.limits(A1)
    assert (lim.caps.per_minute_usdc, lim.caps.per_hour_usdc) == (3, 20)      # agent over team over default
    assert lim.merchants.block == []                                          # lists replace, not append
    assert p.teams["research"].caps.per_minute_usdc == 1
    assert p.limits("0x" + "02" * 20).caps.per_hour_usdc == 10                 # unknown agent: defaults
    assert p.names[A1] == "crawler" and p.team_of[A1] == "research"


def test_example_policy_loads():
    here = os.path.dirname(__file__)
    p = Policy.load(os.path.join(here, "..", "..", "examples", "policy.toml"))
    assert p.defaults.caps.per_minute_usdc > 0 and p.rate_card


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    st = os.stat(path)                      # make sure the stamp changes even on coarse clocks
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_reload_on_file_change_and_bad_reload_keeps_old(tmp_path):
    path = tmp_path / "policy.toml"
    _write(path, 'version = "v1"\n[defaults.caps]\nper_minute_usdc = 1\n')
    seen = []
    w = PolicyWatcher(path, on_change=seen.append)
    assert w.poll().changed is False
    _write(path, 'version = "v2"\n[defaults.caps]\nper_minute_usdc = 2\n')
    r = w.poll()
    assert r.changed and r.ok and w.policy.version == "v2" and seen[-1].version == "v2"
    _write(path, 'version = "v3"\n[defaults.caps]\nper_minute_usdc = -5\n')
    r = w.poll()
    assert not r.ok and not r.changed
    assert w.policy.version == "v2" and "per_minute_usdc" in r.message and "kept policy v2" in r.message
    assert w.last_error


def test_reload_on_sighup(tmp_path):
    path = tmp_path / "policy.toml"
    _write(path, 'version = "v1"\n')
    w = PolicyWatcher(path)
    old = signal.getsignal(signal.SIGHUP)
    try:
        w.install_sighup()
        w._stamp = w._stat()
        # same file, no change on disk: only the signal asks for a reload
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)
        r = w.poll()
        assert r.ok and r.changed
        assert w.poll().changed is False
    finally:
        signal.signal(signal.SIGHUP, old)
