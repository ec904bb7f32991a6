"""A person's caps and a probation's reduced caps apply from the first batch after a restore, not only
from the second (the detection stage judges a batch before the breaker stage sees it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.breaker.conftest import SECRET, U, wallet
from watcher.breaker import BreakerStage, load_breaker_config
from watcher.detect.policy import Policy
from watcher.detect.rules import CAP_WINDOWS
from watcher.stages import DetectStage

POLICY = Policy.from_text("[defaults.caps]\nper_minute_usdc = 10\n")
ONE_MINUTE = [w for _, w, _ in CAP_WINDOWS].index("1m")


def _stages() -> tuple[DetectStage, BreakerStage]:
    cfg = load_breaker_config(None, webhook={"url": "http://127.0.0.1:9/hook", "secrets": [SECRET]},
                              admin={"enabled": False})
    detect = DetectStage(POLICY, "watcher.decisions")
    return detect, BreakerStage(cfg, control=detect)


def _cap(detect: DetectStage, agent: str) -> int:
    det = detect.detectors[0]
    return int(det.table.caps[det.row(agent), ONE_MINUTE])


def test_caps_set_by_a_person_apply_right_after_restore():
    agent = wallet(1)
    detect, brk = _stages()
    detect.restore(0, None)
    brk.restore(0, None)
    brk.parts[0].set_caps(agent, {"1m": 2 * U}, int(time.time() * 1000), "admin:test", "cmd-1")
    detect.set_caps(0, agent, {"1m": 2 * U})
    assert _cap(detect, agent) == 2 * U
    snaps = detect.snapshot(0), brk.snapshot(0)

    detect2, brk2 = _stages()          # a restart: both stages restored, in the Assembly's order
    detect2.restore(0, snaps[0])
    brk2.restore(0, snaps[1])
    assert _cap(detect2, agent) == 2 * U    # before any batch; the policy's cap is 10 USDC


def test_sighup_without_a_policy_file_does_not_stop_the_daemon():
    """The daemon keeps running and says there is nothing to reload; the handler only sets a flag (it
    logged from inside the signal handler), the reload loop logs."""
    code = ("import asyncio, logging, os, signal, sys\n"
            "from watcher.config import load_settings\n"
            "from watcher.stages import build, policy_service\n"
            "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
            "logged = []\n"
            "logging.getLogger('watcher.stages').addFilter(lambda r: logged.append(r.getMessage()) or True)\n"
            "a = build(load_settings(kafka__bootstrap='127.0.0.1:9'))\n"
            "a.daemon()\n"
            "os.kill(os.getpid(), signal.SIGHUP)\n"
            "print('still running; logged by the handler:', logged, flush=True)\n"
            "async def reload_loop():\n"
            "    async with policy_service(a.reloads)(None):\n"
            "        while not logged:\n"
            "            await asyncio.sleep(0.05)\n"
            "asyncio.run(asyncio.wait_for(reload_loop(), 60))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SPENDWATCH_WEBHOOK_SECRET": SECRET})
    assert r.returncode == 0 and "still running; logged by the handler: []" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "no policy file to reload" in r.stderr
