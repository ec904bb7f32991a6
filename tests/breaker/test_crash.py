"""SIGKILL between the decision and its delivery: the freeze still reaches the wallet service after a
restart, with the Idempotency-Key and body of the decision taken before the crash."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaConsumer

from tests.breaker.conftest import SECRET, TOKEN, U, payments, wallet
from tests.integration.helpers import make_settings
from tests.polling import wait_for
from watcher.breaker.outbox import ChangeRecord, decode_record
from watcher.simulate.publish import publish_records

pytestmark = pytest.mark.integration


def start(cfg_path, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.breaker.daemon_main", str(cfg_path)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def read_changes(bootstrap: str, topic: str) -> list[ChangeRecord]:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await c.start()
    try:
        out = []
        batch = await c.getmany(timeout_ms=500)
        for msgs in batch.values():
            out += [r for r in (decode_record(m.value) for m in msgs) if isinstance(r, ChangeRecord)]
        return out
    finally:
        await c.stop()


@pytest.mark.parametrize("checkpoint_s", [30.0, 0.2])
async def test_sigkill_between_decision_and_delivery(kafka_bootstrap, unique, recorder, tmp_path, checkpoint_s):
    """checkpoint 30 s: the restart replays the input and decides again; 0.2 s: the checkpoint already
    holds the decision and its undelivered webhook. Either way the freeze is delivered once it can be."""
    s = make_settings(kafka_bootstrap, unique, partitions=2)
    topic = f"brk-{unique}"
    cfg = {"kafka": s.kafka.model_dump(), "checkpoint_s": checkpoint_s, "breaker_config": {
        "webhook": {"url": recorder.url + "/hook", "secrets": [SECRET], "retry_initial_seconds": 0.05,
                    "retry_max_seconds": 0.3},
        "admin": {"port": 0, "token": TOKEN}, "breaker": {"topic": topic}}}
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    logpath = tmp_path / "daemon.log"
    agent = wallet(77)
    with open(logpath, "ab") as log:
        proc = start(cfg_path, log)
        try:
            await wait_for(lambda: "partition" in logpath.read_text(), 60, "daemon assigned partitions")
            await publish_records(s.kafka, payments(agent, 8, U, f"k{unique}"))
            # the decision is on the breaker log (durable) while the receiver is still down
            changes = await wait_for(lambda: read_changes(kafka_bootstrap, topic), 60, "the freeze on the log",
                                     interval_s=0.2)
            if checkpoint_s < 1:
                await asyncio.sleep(1.5)   # checkpoints now include the decision and its pending webhook
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        freeze = [c for c in changes if c.webhook == "freeze"]
        assert freeze and freeze[0].agent == agent
        assert recorder.at("/hook") == []
        await recorder.start()
        proc = start(cfg_path, log)
        try:
            hits = await wait_for(lambda: [h for h in recorder.at("/hook") if h.json()["type"] == "freeze"], 60,
                                  "the freeze delivered after the restart")
            assert hits[0].key == freeze[0].id and hits[0].body == freeze[0].body.encode() and hits[0].sig_ok
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
        assert rc == 0, logpath.read_text()[-3000:]
        assert {h.key for h in recorder.at("/hook")} == {freeze[0].id}
