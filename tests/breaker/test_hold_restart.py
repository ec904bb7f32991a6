"""Issue D: a person's hold survives a restart of the daemon, through the checkpoint or the breaker log.

Three starts of a real daemon process (tests/breaker/daemon_main.py: the detection stage, BreakerStage,
webhook sender and admin API) on the same topics and consumer group, with a loopback wallet service:

    start 1  two small payments of the agent; SIGTERM: a checkpoint that knows the agent, not the hold
    start 2  `hold` through the admin API (AdminClient, as `spendwatch breaker hold`); the freeze webhook
             reaches the wallet service; then
               sigterm: a clean stop, whose checkpoint holds the hold (the restore reads it from there;
                        the log's record of it is older than the checkpoint's sequence and is not re-applied)
               sigkill: no checkpoint after the hold (checkpoint interval 1 h): only the breaker log has it
    start 3  the agent is still `held` (admin show and list, the tap's TopicBreakerView and Gate); payments
             over its cap neither change that nor send a new freeze; `release` works and its unfreeze
             webhook is sent once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.breaker.conftest import SECRET, TOKEN, U, payments, wallet
from tests.integration.helpers import make_settings
from tests.polling import wait_for
from watcher.breaker.client import AdminClient
from watcher.simulate.publish import publish_records
from watcher.tap.breakers import Gate, TopicBreakerView

pytestmark = pytest.mark.integration
ADMIN_URL = re.compile(r"admin API on (http://127\.0\.0\.1:\d+)")


@contextlib.asynccontextmanager
async def daemon_process(cfg_path: Path, log_path: Path, partitions: int):
    """A daemon process; yields an AdminClient once every input partition is restored. On exit: SIGTERM
    and a clean exit are asserted, unless the block already killed it (`proc` is on the client)."""
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.breaker.daemon_main", str(cfg_path)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        found = await wait_for(lambda: ADMIN_URL.search(log_path.read_text()), 60, "the admin API to listen")
        url = found.group(1)

        async def owned() -> bool:
            async with httpx.AsyncClient() as http:
                try:
                    r = await http.get(f"{url}/healthz")
                except httpx.HTTPError:
                    return False
                return r.json()["partitions"] == list(range(partitions))

        await wait_for(owned, 60, "the daemon to restore its partitions", interval_s=0.2)
        with AdminClient(url, TOKEN, actor="alice") as client:
            client.proc = proc
            yield client
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(proc.wait, 60)
            assert rc == 0, log_path.read_text()[-3000:]


def kill(client: AdminClient) -> None:
    client.proc.send_signal(signal.SIGKILL)
    client.proc.wait(30)


async def call(fn, *args):
    """The admin client is synchronous: off the event loop, which serves the loopback wallet service."""
    return await asyncio.to_thread(fn, *args)


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
async def test_a_persons_hold_survives_a_restart(stop, kafka_bootstrap, unique, recorder, tmp_path):
    partitions = 2
    s = make_settings(kafka_bootstrap, unique, partitions=partitions)
    topic = f"brk-{unique}"
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps({"kafka": s.kafka.model_dump(), "checkpoint_s": 3600, "breaker_config": {
        "webhook": {"url": recorder.url + "/hook", "secrets": [SECRET], "retry_initial_seconds": 0.05,
                    "retry_max_seconds": 0.3},
        "admin": {"port": 0, "token": TOKEN}, "breaker": {"topic": topic, "cooldown_seconds": 3600}}}))
    agent = wallet(4242)
    await recorder.start()

    def hooks(kind: str) -> list:
        return [h for h in recorder.at("/hook") if h.json()["type"] == kind and h.json()["wallet"] == agent]

    # start 1: the agent pays twice (under every cap and escalation threshold); a clean stop checkpoints it
    async with daemon_process(cfg_path, tmp_path / "start1.log", partitions) as admin:
        await publish_records(s.kafka, payments(agent, 2, U, f"a{unique}"))
        seen = await wait_for(lambda: _with_payments(admin, agent, 2), 30, "two payments counted", interval_s=0.2)
        assert seen["breaker"]["state"] == "closed"

    # start 2: a person holds the agent
    async with daemon_process(cfg_path, tmp_path / "start2.log", partitions) as admin:
        held = await call(admin.act, "hold", agent, "audit")
        assert held["changed"] is True and held["breaker"]["state"] == "held"
        await wait_for(lambda: [h for h in hooks("freeze") if h.status == 200], 30, "the hold's freeze delivered")
        if stop == "sigkill":
            kill(admin)
    freeze_key = held["effect"]
    assert {h.key for h in hooks("freeze")} == {freeze_key}

    # start 3: still held; more payments change nothing; a release lets it go
    async with TopicBreakerView(kafka_bootstrap, topic) as view:
        gate = Gate(view)
        async with daemon_process(cfg_path, tmp_path / "start3.log", partitions) as admin:
            shown = await call(admin.agent, agent)
            assert shown["breaker"]["state"] == "held", shown
            assert shown["breaker"]["cause"] == held["breaker"]["cause"], (shown, held)
            listed = await call(lambda: admin.agents(state="held"))
            assert [a["agent"] for a in listed["agents"]] == [agent]
            await wait_for(lambda: view.state(agent) == "held", 30, "the tap's view of the hold")
            refusal = gate.check(agent)
            assert refusal is not None and refusal.state == "held" and refusal.reason == "spendwatch_agent_held"

            # 8 more payments: 10 USDC in the minute, over the 5 USDC cap: the detector's freeze finds the
            # breaker held (no new trip, no second freeze webhook); counted once each, none twice
            await publish_records(s.kafka, payments(agent, 8, U, f"b{unique}"))
            after = await wait_for(lambda: _with_payments(admin, agent, 10), 30, "ten payments counted",
                                   interval_s=0.2)
            assert after["breaker"]["state"] == "held" and after["breaker"]["trips"] == 0, after
            assert {h.key for h in hooks("freeze")} == {freeze_key}
            assert gate.check(agent) is not None

            released = await call(admin.act, "release", agent, "checked")
            assert released["changed"] is True and released["breaker"]["state"] == "half_open", released
            unfreeze = await wait_for(lambda: [h for h in hooks("unfreeze") if h.status == 200], 30,
                                      "the unfreeze delivered")
            await wait_for(lambda: view.state(agent) == "half_open", 30, "the tap's view of the release")
            assert gate.check(agent) is None
            shown = await call(admin.agent, agent)
            assert shown["breaker"]["state"] == "half_open" and shown["breaker"]["pending_webhooks"] == 0, shown
        # the clean stop has drained the sender: nothing more reaches the wallet service
    assert len(hooks("unfreeze")) == 1, [(h.key, h.status) for h in hooks("unfreeze")]
    hit = unfreeze[0]
    assert hit.key == released["effect"] and hit.sig_ok
    body = hit.json()
    assert body["breaker"]["state"] == "half_open" and body["breaker"]["previous"] == "held"
    freezes = hooks("freeze")
    assert {h.key for h in freezes} == {freeze_key} and all(h.sig_ok for h in freezes)
    if stop == "sigterm":   # a clean stop recorded the delivery: the restart did not send it again
        assert len(freezes) == 1, [(h.key, h.status) for h in freezes]


async def _with_payments(admin: AdminClient, agent: str, n: int) -> dict | None:
    """The agent's admin row once the largest window counts `n` payments (more than n fails at once)."""
    row = await call(admin.agent, agent)
    counted = list(row["payments"].values())[-1] if row["payments"] else 0
    assert counted <= n, f"{counted} payments counted, expected {n}: {row}"
    return row if counted == n else None
