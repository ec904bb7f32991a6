"""The demo's path: simulated fleet -> daemon with detection + breaker -> the runaway agent's freeze
reaches the (loopback) wallet service under its registry name; the bystanders stay closed."""

from __future__ import annotations

import asyncio

import pytest

from tests.breaker.conftest import SECRET, DetectStage
from tests.integration.helpers import make_settings
from tests.polling import wait_for
from watcher.breaker import BreakerStage, load_breaker_config
from watcher.breaker.service import breaker_services
from watcher.daemon import Daemon
from watcher.simulate.fleet import Fleet
from watcher.simulate.publish import run_simulator

pytestmark = pytest.mark.integration


async def test_simulated_runaway_is_frozen(kafka_bootstrap, unique, recorder):
    await recorder.start()
    s = make_settings(kafka_bootstrap, unique, partitions=2)
    fleet = Fleet(agents=20, merchants=10, seed=7, runaway_after_s=2, runaway_per_s=20)
    s = s.model_copy(update={"categories": fleet.categories()})
    cfg = load_breaker_config(None, webhook={"url": recorder.url + "/hook", "secrets": [SECRET]},
                              admin={"enabled": False}, breaker={"topic": f"brk-{unique}"})
    detect = DetectStage(policy_text="[defaults.caps]\nper_minute_usdc = 2\n")
    stage = BreakerStage(cfg, control=detect, names=fleet.names())
    daemon = Daemon(s, stages=[detect, stage], services=breaker_services(stage, cfg))
    task = asyncio.create_task(daemon.run())
    stop = asyncio.Event()
    try:
        await wait_for(lambda: daemon.started.is_set(), 30, "daemon start")
        sim = asyncio.create_task(run_simulator(s.kafka, fleet, rate_per_s=100, duration_s=25, stop=stop))
        hits = await wait_for(lambda: [h for h in recorder.at("/hook") if h.json()["agent"] == "agent-runaway"
                                       and h.json()["type"] == "freeze"], 40, "the runaway's freeze")
        assert hits[0].sig_ok and hits[0].json()["breaker"]["state"] == "open"
        stop.set()
        await sim
    finally:
        stop.set()
        daemon.request_stop()
        await asyncio.wait_for(task, 60)
    runaway = next(w for w, n in fleet.names().items() if n == "agent-runaway")
    assert stage.view(runaway)["state"] == "open"
