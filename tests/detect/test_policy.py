import os
import signal

import pytest

from tests.polling import wait_for_sync
from watcher.detect.policy import Policy, PolicyWatcher
from watcher.errors import ConfigError

A1 = "0x" + "01" * 20


@pytest.mark.parametrize("text,key,fix", [
    ("[defaults.caps]\nper_minute_usdc = -1", "defaults.caps.per_minute_usdc", "at least 0"),
    ("[defaults]\nper_paymnt_max_usdc = 1", "defaults.per_paymnt_max_usdc", "remove it or check its spelling"),
    ("[defaults.actions]\ncap_1m = \"explode\"", "defaults.actions.cap_1m", "'freeze'"),
    ("[defaults.actions]\ncap_2m = \"freeze\"", "defaults.actions.cap_2m", "cap_1m"),
    ("[teams.a.caps]\nper_hour_usdc = \"x\"", "teams.a.caps.per_hour_usdc", "a number"),
    ('[agents."0x123"]\nname = "x"', "agents.0x123", "payer wallet address"),
    (f'[agents."{A1}"]\nteam = "nope"', f"agents.{A1}.team", "[teams.nope]"),
    ('[[rate_card]]\nmerchant = "ftp://x"\ncategory = "a"', "rate_card.0.merchant", "http(s) resource URL"),
    ("[defaults.anomaly]\nnew_merchants = 40", "defaults.anomaly.new_merchants", "at most 16"),
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
        wait_for_sync(lambda: w._hup, 10, "the SIGHUP handler")
        r = w.poll()
        assert r.ok and r.changed
        assert w.poll().changed is False
    finally:
        signal.signal(signal.SIGHUP, old)


@pytest.mark.parametrize("text,key,fix", [
    # an infinite or absurd amount passed validation, then every payment of the agent stopped the daemon
    ("[defaults.caps]\nper_minute_usdc = inf", "defaults.caps.per_minute_usdc", "finite"),
    ("[defaults.caps]\nper_day_usdc = 1e300", "defaults.caps.per_day_usdc", "at most 1000000000000"),
    ("[defaults]\ncategory_budgets_usdc = { gpu = inf }", "defaults.category_budgets_usdc.gpu", "finite"),
    ('[[rate_card]]\nmerchant = "https://a.example/x"\ncategory = "c"\nprice_usdc = 1e40',
     "rate_card.0.price_usdc", "at most 1000000000000"),
    # a positive amount below one base unit rounded to 0, which silently turned the cap off
    ("[defaults.caps]\nper_minute_usdc = 0.0000001", "defaults.caps.per_minute_usdc", "0.000001"),
    ('[[rate_card]]\nmerchant = "https://a.example/x"\ncategory = "c"\nprice_usdc = 1\ntolerance_pct = inf',
     "rate_card.0.tolerance_pct", "finite"),
    ("[defaults.anomaly]\nwarmup_seconds = 99999999999999999", "defaults.anomaly.warmup_seconds", "at most 316224000"),
    ("[defaults]\nwarn_cooldown_seconds = 99999999999999999", "defaults.warn_cooldown_seconds", "at most 316224000"),
    # list entries are payTo addresses or resource URLs, like the rate card's
    ('[defaults.merchants]\nblock = ["0x123"]', "defaults.merchants.block.0", "20-byte"),
    ('[defaults.merchants]\nallow = ["api.example/*"]', "defaults.merchants.allow.0", "http(s) resource URL"),
    # one wallet written twice (any letter case): one table silently replaced the other
    ('[agents."0xab5801a7d398351b8be11c439e05c5b3259aec9b"]\nper_payment_max_usdc = 1\n'
     '[agents."0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B"]\nname = "x"',
     "agents.0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B", "merge the two tables"),
    # fleet-wide settings: one model per detector, so a team or agent value was silently ignored
    ("[teams.a.anomaly]\nfleet_quantile = 0.99", "teams.a.anomaly.fleet_quantile", "[defaults.anomaly]"),
    (f'[agents."{A1}".anomaly]\nfleet = false', f"agents.{A1}.anomaly.fleet", "enabled = false"),
    # a team that is not a name was a TypeError (a traceback at start, the end of reloads)
    (f'[agents."{A1}"]\nteam = ["ops"]', f"agents.{A1}.team", "quoted string"),
])
def test_more_errors_name_key_and_fix(text, key, fix):
    with pytest.raises(ConfigError) as err:
        Policy.from_text(text, "p.toml")
    assert err.value.key == key
    assert fix in err.value.fix


def test_list_addresses_are_checksummed():
    p = Policy.from_text('[defaults.merchants]\nblock = ["0xab5801a7d398351b8be11c439e05c5b3259aec9b"]\n')
    assert p.defaults.merchants.block == ["0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B"]


def test_a_url_entry_is_kept_without_its_query_string():
    """Payments are matched on the resource URL without its query string, so an entry with one could never
    match; two rate card entries differing only there are the same merchant listed twice."""
    p = Policy.from_text('[defaults.merchants]\nallow = ["https://a.example/x?key=1"]\n')
    assert p.defaults.merchants.allow == ["https://a.example/x"]
    with pytest.raises(ConfigError, match="listed twice"):
        Policy.from_text('[[rate_card]]\nmerchant = "https://a.example/x"\ncategory = "c"\n'
                         '[[rate_card]]\nmerchant = "https://a.example/x?q=1"\ncategory = "d"\n')


def test_a_file_that_is_not_utf8_is_a_config_error_and_a_bad_reload(tmp_path):
    """A UnicodeDecodeError escaped: a traceback at start, and on reload it ended the daemon's reload loop
    (no later reload was ever tried)."""
    path = tmp_path / "policy.toml"
    path.write_bytes(b'version = "\xff"\n')
    with pytest.raises(ConfigError) as err:
        Policy.load(path)
    assert "UTF-8" in str(err.value) and str(path) in str(err.value)
    _write(path, 'version = "v1"\n')
    w = PolicyWatcher(path)
    path.write_bytes(b'version = "\xff"\n')
    w.request_reload()
    r = w.poll()
    assert not r.ok and w.policy.version == "v1"


def test_a_policy_that_fails_to_apply_is_rolled_back(tmp_path):
    """An exception out of on_change escaped poll(): the daemon's reload loop ended, with the watcher
    holding a policy the detectors had only half taken."""
    path = tmp_path / "policy.toml"
    _write(path, 'version = "v1"\n')
    applied = []

    def apply(p):
        if p.version == "v2":
            raise RuntimeError("boom")
        applied.append(p.version)

    w = PolicyWatcher(path, on_change=apply)
    _write(path, 'version = "v2"\n')
    r = w.poll()
    assert not r.ok and "boom" in r.message and w.policy.version == "v1" and applied == ["v1"]
    _write(path, 'version = "v3"\n')
    assert w.poll().ok and applied == ["v1", "v3"]


@pytest.mark.parametrize("text,key,fix", [
    ("[defaults.caps]\nper_minute_usdc = true", "defaults.caps.per_minute_usdc", "a number"),   # was a 1 USDC cap
    ('[defaults.caps]\nper_hour_usdc = "2"', "defaults.caps.per_hour_usdc", "a number"),
    ("[defaults.anomaly]\nenabled = 0", "defaults.anomaly.enabled", "true or false"),
])
def test_values_are_taken_as_typed_in_the_file(text, key, fix):
    """TOML values have types: a boolean or a string where a number belongs is a mistake to report, not a
    value to coerce (`per_minute_usdc = true` became a 1 USDC cap)."""
    with pytest.raises(ConfigError) as err:
        Policy.from_text(text, "p.toml")
    assert err.value.key == key and fix in err.value.fix


def test_a_limit_over_a_window_the_configuration_lacks_is_refused(tmp_path):
    """A cap over `1h` with no `1h` in [[windows]] was never applied (only logged at the first payment):
    refused at start (the Assembly, check-config) and on reload (the old policy stays)."""
    from watcher.config import load_settings
    from watcher.stages import build

    policy = tmp_path / "policy.toml"
    _write(policy, 'version = "v1"\n[defaults.caps]\nper_minute_usdc = 5\n')
    cfg = tmp_path / "spendwatch.toml"
    cfg.write_text(f'[detect]\npolicy_file = "{policy}"\n[[windows]]\nname = "1m"\nseconds = 60\nbuckets = 6\n')
    assembly = build(load_settings(cfg))
    assert assembly.detect.policy.version == "v1"
    _write(policy, 'version = "v2"\n[teams.ops.caps]\nper_hour_usdc = 50\n')
    r = assembly.policy_watcher.poll()
    assert not r.ok and "teams.ops.caps.per_hour_usdc" in r.message and "'1h'" in r.message
    assert assembly.detect.policy.version == "v1"
    with pytest.raises(ConfigError) as err:
        build(load_settings(cfg))
    assert err.value.key == "teams.ops.caps.per_hour_usdc" and "[[windows]]" in err.value.fix
    assert Policy.from_text('[defaults]\ncategory_budgets_usdc = {ai = 3}\n').windows_needed() == {
        "24h": "defaults.category_budgets_usdc"}
    escalate = '[defaults.escalation]\nwindow = "5m"\nwindow_above_usdc = 3\n'
    assert Policy.from_text(escalate).windows_needed() == {"5m": "defaults.escalation.window"}
    # every missing window is named at once (only the first was, so fixing one revealed the next)
    both = Policy.from_text('[defaults.caps]\nper_hour_usdc = 5\nper_day_usdc = 50\n')
    with pytest.raises(ConfigError) as err:
        both.check_windows(["1m"])
    text = str(err.value)
    assert "per_hour_usdc needs '1h'" in text and "per_day_usdc needs '24h'" in text and "'1h', '24h'" in text


def test_a_rate_card_tolerance_is_bounded():
    """tolerance_pct = 1e308 passed check-config, then `spendwatch run` died with an OverflowError."""
    with pytest.raises(ConfigError) as err:
        Policy.from_text('[[rate_card]]\nmerchant = "0x' + "22" * 20 + '"\ncategory = "data"\nprice_usdc = 0.01\n'
                         'tolerance_pct = 1e308\n')
    assert "tolerance_pct" in err.value.key


THREE_BAD = f"""
[defaults.caps]
per_minute_usdc = -1
[teams.ops.caps]
per_hour_usdc = "lots"
[agents."{A1}".escalation]
window = "2h"
"""
THREE_KEYS = ("defaults.caps.per_minute_usdc", "teams.ops.caps.per_hour_usdc", f"agents.{A1}.escalation.window")


def test_every_bad_value_is_listed_with_its_key_and_fix():
    """Only the first problem was named, '(and N more)' hid the rest; a team's or an agent's problems were
    not even counted (only found after the defaults were put right, one reload at a time)."""
    with pytest.raises(ConfigError) as err:
        Policy.from_text(THREE_BAD, "p.toml")
    e, text = err.value, str(err.value)
    assert e.key == THREE_KEYS[0] and "at least 0" in e.fix and e.file == "p.toml", text
    assert "more)" not in text and "\nand 2 more:\n" in text, text
    for key in THREE_KEYS[1:]:
        assert f"\n  {key}: " in text, text
    assert f"make {THREE_KEYS[1]} a number" in text and "'1h'" in text, text


def test_one_bad_value_reads_as_one_line():
    with pytest.raises(ConfigError) as err:
        Policy.from_text("[defaults.caps]\nper_minute_usdc = -1\n", "p.toml")
    assert "\n" not in str(err.value) and "more" not in str(err.value)


def test_a_long_list_of_problems_is_cut_saying_how_many_more():
    teams = "".join(f"[teams.t{i}]\nwarn_cooldown_seconds = -1\n" for i in range(60))
    with pytest.raises(ConfigError) as err:
        Policy.from_text(teams, "p.toml")
    text = str(err.value)
    assert "\nand 59 more:\n" in text and "teams.t48.warn_cooldown_seconds" in text, text
    assert "teams.t49." in text and "teams.t50." not in text and "... and 10 more, not shown" in text, text


def test_a_bad_reload_logs_every_reason_and_keeps_the_old_policy(tmp_path, caplog):
    path = tmp_path / "policy.toml"
    _write(path, 'version = "v1"\n')
    w = PolicyWatcher(path)
    _write(path, THREE_BAD)
    with caplog.at_level("ERROR", logger="watcher.detect.policy"):
        r = w.poll()
    assert not r.ok and w.policy.version == "v1"
    [line] = [rec.getMessage() for rec in caplog.records if "reload failed" in rec.getMessage()]
    assert "keeping version v1" in line, line
    for key in THREE_KEYS:
        assert key in line and key in r.message, line


def test_the_escalation_alert_threshold_follows_the_policys_shortest_timeout(tmp_path):
    """EscalationWaitingTooLong pages at half of spendwatch_escalation_timeout_seconds: the daemon exports
    the shortest escalation.timeout_seconds of the defaults, teams and agents, and follows a reload."""
    from watcher.config import load_settings
    from watcher.stages import build

    policy = tmp_path / "policy.toml"
    _write(policy, 'version = "v1"\n[defaults.escalation]\ntimeout_seconds = 600\n'
                   '[teams.ops.escalation]\ntimeout_seconds = 120\n')
    cfg = tmp_path / "spendwatch.toml"
    cfg.write_text(f'[detect]\npolicy_file = "{policy}"\n')
    assembly = build(load_settings(cfg))
    gauge = lambda: assembly.metrics.registry.get_sample_value("spendwatch_escalation_timeout_seconds")
    assert gauge() == 120
    _write(policy, 'version = "v2"\n[agents."0x' + "11" * 20 + '".escalation]\ntimeout_seconds = 300\n')
    assert assembly.policy_watcher.poll().changed and gauge() == 300      # the default 900, an agent's 300
    assert build(load_settings(None)).metrics.registry.get_sample_value(
        "spendwatch_escalation_timeout_seconds") == 900                    # no policy file: the default
