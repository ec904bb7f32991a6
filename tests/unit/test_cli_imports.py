"""`spendwatch --help` builds every subcommand's parser without loading the heavy parts (river, numpy, web3):
those are imported when a command runs. Checked by module, not by timing (the machine is shared)."""

import subprocess
import sys

import pytest

HEAVY = ("river", "numpy", "web3", "aiohttp", "x402", "watcher.stages", "watcher.config", "watcher.daemon")


def test_building_the_parser_loads_no_heavy_module():
    code = ("import sys; from watcher.cli.main import build_parser; build_parser(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported while building the parser: {r.stdout.strip()}"


def test_lazy_package_names_still_resolve():
    from watcher.detect import Detector, Policy, encode_decision
    from watcher.detect.detector import Detector as D

    assert Detector is D and Policy.default() is not None and callable(encode_decision)


def test_breaker_names_still_resolve():
    from watcher.breaker import BreakerStage, load_breaker_config, sign
    from watcher.breaker.stage import BreakerStage as S

    assert BreakerStage is S and callable(load_breaker_config) and callable(sign)


def test_chain_tap_and_observe_names_still_resolve():
    import watcher.observe
    import watcher.tap
    from watcher.chain import ChainSettings
    from watcher.chain.config import ChainSettings as C
    from watcher.observe.statements import StatementSettings
    from watcher.tap.breakers import Gate

    assert ChainSettings is C and watcher.observe.StatementSettings is StatementSettings and watcher.tap.Gate is Gate
    with pytest.raises(AttributeError, match="watcher.observe"):
        watcher.observe.NoSuchName
