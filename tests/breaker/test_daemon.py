"""The breaker inside a real Daemon on the real broker, with loopback receivers.

Receiver down, then up: every freeze arrives, repeats only with the same Idempotency-Key and body; an
unanswered escalation ends in a freeze; an approved one does not; the admin API refuses requests without
the token and changes nothing; hold / release reach the wallet service; Slack and PagerDuty hear of trips
and PagerDuty resolves them with the same dedup_key.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import aiohttp
import pytest

from tests.breaker.conftest import SECRET, TOKEN, U, DetectStage, Recorder, payments, wait_for, wallet
from tests.integration.helpers import make_settings
from watcher.breaker import BreakerStage, load_breaker_config
from watcher.breaker.service import BreakerService
from watcher.daemon import Daemon
from watcher.simulate.publish import publish_records

pytestmark = pytest.mark.integration


def config(recorder: Recorder, unique: str, **breaker):
    return load_breaker_config(None, webhook={
        "url": recorder.url + "/hook", "secrets": [SECRET], "retry_initial_seconds": 0.05,
        "retry_max_seconds": 0.4, "timeout_seconds": 2}, admin={"port": 0, "token": TOKEN},
        breaker={"topic": f"brk-{unique}", "cooldown_seconds": 3600, "slack_webhook_url": recorder.url + "/slack",
                 "pagerduty_routing_key": "R" * 32, "pagerduty_url": recorder.url + "/pd", **breaker})


def by_key(hits):
    out = defaultdict(set)
    for h in hits:
        out[h.key].add(h.body)
    return out


async def test_breaker_end_to_end(kafka_bootstrap, unique, recorder):
    s = make_settings(kafka_bootstrap, unique, partitions=2)
    cfg = config(recorder, unique)
    detect = DetectStage()
    stage = BreakerStage(cfg, control=detect)
    svc: list[BreakerService] = []

    def factory(daemon):
        svc.append(BreakerService(daemon, stage, cfg))
        return svc[0]

    daemon = Daemon(s, stages=[detect, stage], services=[factory])
    runaway, unanswered, approved, bystander = wallet(1), wallet(2), wallet(3), wallet(4)
    task = asyncio.create_task(daemon.run())
    try:
        await wait_for(lambda: daemon.started.is_set() and stage.parts, 30, "daemon start")
        # 1. the receiver is down: the freeze is decided, retried, not lost
        await publish_records(s.kafka, payments(runaway, 8, U, "run"))
        await wait_for(lambda: stage.parts and any(b.state == "open" for br in stage.parts.values()
                                                   for b in br.by_agent.values()), 30, "breaker open")
        await wait_for(lambda: svc[0].sender.metrics.attempts.labels("error")._value.get() >= 2, 30,
                       "failed attempts while the receiver is down")
        assert recorder.at("/hook") == []
        await recorder.start()
        freeze = await wait_for(lambda: [h for h in recorder.at("/hook") if h.json()["type"] == "freeze"], 30,
                                "freeze delivered after the receiver came up")
        body = freeze[0].json()
        assert body["wallet"] == runaway and body["breaker"]["state"] == "open"
        assert body["evidence"]["rule"] == "cap_1m" and freeze[0].sig_ok

        # 2. escalations: one answered by a person, one left alone
        await publish_records(s.kafka, payments(approved, 1, 3 * U, "appr") + payments(unanswered, 1, 3 * U, "unans"))
        await wait_for(lambda: {h.json()["wallet"] for h in recorder.at("/hook") if h.json()["type"] == "escalate"}
                       >= {approved, unanswered}, 30, "two escalations")
        base = f"http://127.0.0.1:{svc[0].admin.port}"
        auth = {"Authorization": f"Bearer {TOKEN}", "X-Spendwatch-Actor": "alice"}
        async with aiohttp.ClientSession() as http:
            r = await http.post(f"{base}/v1/agents/{approved}/approve", headers=auth)
            assert r.status == 200, await r.text()
            assert (await r.json())["changed"] is True
            # 3. admin API: no token / wrong token -> 401 and nothing changes
            for headers in ({}, {"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"}, {"Authorization": TOKEN}):
                r = await http.post(f"{base}/v1/agents/{bystander}/hold", headers=headers)
                assert r.status == 401
                r = await http.get(f"{base}/v1/agents", headers=headers)
                assert r.status == 401
            assert stage.view(bystander)["state"] == "closed"
            r = await http.get(f"{base}/openapi.json")
            doc = await r.json()
            assert doc["openapi"].startswith("3.") and "/v1/agents/{agent}/hold" in doc["paths"]

            unanswered_freeze = await wait_for(lambda: [h for h in recorder.at("/hook") if h.json()["type"] == "freeze"
                                                        and h.json()["wallet"] == unanswered], 30,
                                               "the unanswered escalation ends in a freeze")
            assert unanswered_freeze[0].json()["evidence"]["rule"] == "escalation_timeout"
            assert stage.view(approved)["state"] == "closed"

            # 4. a person holds the bystander, then releases the runaway
            r = await http.post(f"{base}/v1/agents/{bystander}/hold", headers=auth, json={"reason": "audit"})
            assert r.status == 200 and (await r.json())["breaker"]["state"] == "held"
            r = await http.get(f"{base}/v1/agents", headers=auth)
            listing = {a["agent"]: a for a in (await r.json())["agents"]}
            assert listing[runaway]["breaker"]["state"] == "open" and listing[runaway]["spend"]["1m"] >= 5 * U
            r = await http.post(f"{base}/v1/agents/{runaway}/release", headers=auth, json={"reason": "ok"})
            assert (await r.json())["breaker"]["state"] == "half_open"
        await wait_for(lambda: [h for h in recorder.at("/hook") if h.json()["type"] == "unfreeze"], 30, "unfreeze")
        await wait_for(lambda: len(recorder.at("/pd")) >= 4 and recorder.at("/slack"), 30, "notifications")
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)
    hooks = recorder.at("/hook")
    assert all(h.sig_ok for h in hooks)
    assert all(len(bodies) == 1 for bodies in by_key(hooks).values())   # repeats: same key, same body
    order = [h.json()["type"] for h in hooks if h.json()["wallet"] == runaway]
    assert order.index("freeze") < order.index("unfreeze")
    pd = [h.json() for h in recorder.at("/pd")]
    trig = {e["dedup_key"] for e in pd if e["event_action"] == "trigger"}
    res = {e["dedup_key"] for e in pd if e["event_action"] == "resolve"}
    assert f"spendwatch/{runaway}/trip/1" in trig & res
    assert stage.undelivered() == 0
