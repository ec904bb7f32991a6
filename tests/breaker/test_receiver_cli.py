"""examples/receiver.py accepts good signatures and refuses tampered and stale ones; the CLI talks to a
real admin API (no daemon: a BreakerStage with owned partitions and a fake producer)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.breaker.conftest import SECRET, TOKEN, free_port, wallet
from watcher.breaker import BreakerStage, load_breaker_config, sign
from watcher.breaker.admin import AdminServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def receiver():
    port = free_port()
    env = {**os.environ, "SPENDWATCH_WEBHOOK_SECRET": f"{SECRET},old-secret-0123456789"}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "receiver.py"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.post(url, content=b"{}")
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield url
    proc.kill()
    proc.wait()


def test_example_receiver_verifies(receiver):
    body = b'{"id":"b-1","type":"freeze","wallet":"0x1","reason":"r","breaker":{"state":"open"}}'
    post = lambda b, h: httpx.post(receiver, content=b, headers={"Spendwatch-Signature": h, "Idempotency-Key": "b-1"})
    assert post(body, sign(body, [SECRET.encode()])).status_code == 200
    assert post(body, sign(body, [SECRET.encode()])).json()["repeat"] is True
    assert post(body, sign(body, [b"old-secret-0123456789"])).status_code == 200          # rotation
    assert post(body + b" ", sign(body, [SECRET.encode()])).status_code == 401             # tampered
    assert post(body, sign(body, [b"another-secret-xxxxxxxx"])).status_code == 401          # wrong secret
    assert post(body, sign(body, [SECRET.encode()], t=int(time.time()) - 301)).status_code == 401  # stale
    assert post(body, "").status_code == 401


def test_example_receiver_acts_once_on_a_replay_under_another_key(receiver):
    """A signed request captured and replayed within the five minutes, its (unsigned) Idempotency-Key
    header changed: the receiver de-duplicates on the signed body's id and does not act again."""
    body = b'{"id":"b-2","type":"unfreeze","wallet":"0x1","reason":"r","breaker":{"state":"half_open"}}'
    signature = sign(body, [SECRET.encode()])
    first = httpx.post(receiver, content=body, headers={"Spendwatch-Signature": signature, "Idempotency-Key": "b-2"})
    assert first.status_code == 200 and "repeat" not in first.json()
    replay = httpx.post(receiver, content=body, headers={"Spendwatch-Signature": signature,
                                                         "Idempotency-Key": "replayed-key"})
    assert replay.status_code == 200 and replay.json().get("repeat") is True


class FakeProducer:
    def __init__(self):
        self.sent = []

    async def send_and_wait(self, topic, value, key=None):
        self.sent.append((topic, key, value))


async def test_cli_against_admin_api(monkeypatch, capsys):
    import asyncio

    import watcher.cli.main as climain
    if "watcher.breaker.cli" not in climain.OPTIONAL + climain.COMMANDS:   # until main.py registers it
        monkeypatch.setattr(climain, "OPTIONAL", climain.OPTIONAL + ["watcher.breaker.cli"])
    main = climain.main
    cfg = load_breaker_config(None, admin={"port": 0, "token": TOKEN})
    stage = BreakerStage(cfg, partitions=1)
    stage.restore(0, None)
    stage.producer = FakeProducer()
    agent = wallet(5)
    async with AdminServer(cfg.admin, stage) as server:
        url = f"http://127.0.0.1:{server.port}"
        run = lambda *a: asyncio.to_thread(main, ["breaker", *a, "--url", url])
        monkeypatch.delenv("SPENDWATCH_ADMIN_TOKEN", raising=False)
        assert await run("hold", agent, "--token", "wrong-token-0123456789") == 1
        assert stage.view(agent)["state"] == "closed" and stage.producer.sent == []
        monkeypatch.setenv("SPENDWATCH_ADMIN_TOKEN", TOKEN)
        assert await run("hold", agent, "--reason", "audit") == 0
        assert "breaker now held" in capsys.readouterr().out
        assert await run("list", "--state", "held") == 0
        assert agent in capsys.readouterr().out
        assert await run("caps", agent, "--cap", "1m=2.5") == 0
        assert stage.view(agent)["caps"] == {"1m": 2_500_000}
        assert await run("release", agent) == 0
        assert stage.view(agent)["state"] == "half_open"
        assert await run("approve", agent) == 0
        assert "unchanged" in capsys.readouterr().out
        assert len(stage.producer.sent) == 3 and stage.undelivered() == 2   # no sender: queued in the outbox


async def test_a_cap_on_a_window_detection_does_not_cap_is_refused():
    """The daemon's windows include 5m, but detection holds caps for 1m, 1h and 24h only: a 5m cap would
    be accepted, shown, and never enforced. It is refused (400) and nothing changes."""
    from types import SimpleNamespace

    cfg = load_breaker_config(None, admin={"port": 0, "token": TOKEN})
    stage = BreakerStage(cfg, partitions=1)
    stage.restore(0, None)
    stage.producer = FakeProducer()
    daemon = SimpleNamespace(settings=SimpleNamespace(windows=[SimpleNamespace(name=n)
                                                               for n in ("1m", "5m", "1h", "24h")]), shards={})
    agent = wallet(6)
    async with AdminServer(cfg.admin, stage, daemon) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            r = await http.put(f"/v1/agents/{agent}/caps", json={"caps": {"5m": 1_000_000}})
            assert r.status_code == 400 and "5m" in r.json()["error"] and "1m" in r.json()["error"]
            assert stage.view(agent).get("caps") is None and stage.producer.sent == []
            r = await http.put(f"/v1/agents/{agent}/caps", json={"caps": {"1m": 1_000_000}})
            assert r.status_code == 200 and stage.view(agent)["caps"] == {"1m": 1_000_000}


class DownProducer(FakeProducer):
    """Kafka unreachable while `down`: send_and_wait fails as aiokafka's does."""

    def __init__(self):
        super().__init__()
        self.down = True

    async def send_and_wait(self, topic, value, key=None):
        from aiokafka.errors import NodeNotReadyError
        if self.down:
            raise NodeNotReadyError("Attempt to send a request to node which is not ready (node id 1).")
        await super().send_and_wait(topic, value, key)


async def test_a_hold_kafka_does_not_record_is_answered_503_and_recorded_later():
    """Kafka down: the hold is answered 503 with why (applied here, not recorded), not a bare 500; the
    record is kept, and the next command once Kafka answers puts it on the broker; the daemon's next batch
    would too."""
    from types import SimpleNamespace

    from watcher.breaker.outbox import decode_record

    cfg = load_breaker_config(None, admin={"port": 0, "token": TOKEN})
    stage = BreakerStage(cfg, partitions=1)
    stage.restore(0, None)
    stage.producer = DownProducer()
    a, b = wallet(7), wallet(8)
    async with AdminServer(cfg.admin, stage) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            r = await http.post(f"/v1/agents/{a}/hold", json={"reason": "incident"})
            assert r.status_code == 503 and "not recorded" in r.json()["error"] and r.json()["fix"]
            stage.producer.down = False
            r = await http.post(f"/v1/agents/{a}/hold", json={"reason": "incident"})
            assert r.status_code == 200 and r.json()["breaker"]["state"] == "held"
            [(topic, key, value)] = stage.producer.sent
            assert key == a.encode() and decode_record(value).kind == "held"
            stage.producer.down = True
            assert (await http.post(f"/v1/agents/{b}/hold", json={})).status_code == 503
    ctx = SimpleNamespace(partition=0, decisions=[], publish=[], now_ms=0, real_from_ms=0)
    stage.on_batch(ctx)
    [(_, key, value)] = ctx.publish
    assert key == b.encode() and decode_record(value).kind == "held" and stage.unrecorded == []
