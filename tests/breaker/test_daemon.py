"""The breaker inside a real Daemon on the real broker, with loopback receivers.

Receiver down, then up: every freeze arrives, repeats only with the same Idempotency-Key and body; an
unanswered escalation ends in a freeze; an approved one does not; the admin API refuses requests without
the token and changes nothing; hold / release reach the wallet service, and an unfreeze queued while the
receiver refuses its freeze waits for the freeze; Slack and PagerDuty hear of trips and PagerDuty resolves
them with the same dedup_key. Without webhook.url, webhooks are recorded and kept owed: a later start with
a url sends them.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import aiohttp
import pytest

from tests.breaker.conftest import SECRET, TOKEN, U, DetectStage, Recorder, payments, wallet
from tests.integration.helpers import make_settings
from tests.polling import wait_for
from tests.topics import read_topic
from watcher.breaker import BreakerStage, load_breaker_config
from watcher.breaker.outbox import ChangeRecord, DeliveredRecord, decode_record
from watcher.breaker.service import BreakerService, breaker_services
from watcher.daemon import Daemon
from watcher.simulate.publish import publish_records

pytestmark = pytest.mark.integration


def config(recorder: Recorder, unique: str, **breaker):
    return load_breaker_config(None, webhook={
        "url": recorder.url + "/hook", "secrets": [SECRET], "retry_initial_seconds": 0.05,
        "retry_max_seconds": 0.4, "timeout_seconds": 2}, admin={"port": 0, "token": TOKEN},
        breaker={"topic": f"brk-{unique}", "cooldown_seconds": 3600, "slack_webhook_url": recorder.url + "/slack",
                 "pagerduty_routing_key": "R" * 32, "pagerduty_url": recorder.url + "/pd", **breaker})


async def read_records(bootstrap: str, topic: str) -> list:
    """Every record of the breaker topic now, decoded: the whole topic, not one fetch's worth (a single
    fetch may miss a partition or come back empty on a slow machine)."""
    return [decode_record(v) for v in await read_topic(bootstrap, topic)]


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

            # 4. a person holds the bystander (the receiver refuses its freeze for now), then releases the
            # runaway
            recorder.refuse.add((bystander, "freeze"))
            r = await http.post(f"{base}/v1/agents/{bystander}/hold", headers=auth, json={"reason": "audit"})
            assert r.status == 200 and (await r.json())["breaker"]["state"] == "held"
            r = await http.get(f"{base}/v1/agents", headers=auth)
            listing = {a["agent"]: a for a in (await r.json())["agents"]}
            assert listing[runaway]["breaker"]["state"] == "open" and listing[runaway]["spend"]["1m"] >= 5 * U
            r = await http.post(f"{base}/v1/agents/{runaway}/release", headers=auth, json={"reason": "ok"})
            assert (await r.json())["breaker"]["state"] == "half_open"
            # 5. the bystander is released while its freeze is still refused: the unfreeze queues behind it
            r = await http.post(f"{base}/v1/agents/{bystander}/release", headers=auth, json={"reason": "done"})
            assert (await r.json())["breaker"]["state"] == "half_open"
            assert [d.type for d in svc[0].sender.queues[bystander]] == ["freeze", "unfreeze"]
            await wait_for(lambda: sum(1 for h in recorder.at("/hook") if h.json()["wallet"] == bystander
                                       and h.status == 503) >= 2, 30, "the bystander's freeze refused twice")
            recorder.refuse.clear()
        await wait_for(lambda: [h for h in recorder.at("/hook") if h.json()["type"] == "unfreeze"
                                and h.json()["wallet"] == runaway], 30, "unfreeze")
        await wait_for(lambda: [h for h in recorder.at("/hook") if h.json()["type"] == "unfreeze"
                                and h.json()["wallet"] == bystander and h.status == 200], 30, "bystander unfreeze")
        await wait_for(lambda: len(recorder.at("/pd")) >= 4 and recorder.at("/slack"), 30, "notifications")
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)
    hooks = recorder.at("/hook")
    assert all(h.sig_ok for h in hooks)
    assert all(len(bodies) == 1 for bodies in by_key(hooks).values())   # repeats: same key, same body
    order = [h.json()["type"] for h in hooks if h.json()["wallet"] == runaway]
    assert order.index("freeze") < order.index("unfreeze")
    # the bystander's unfreeze waited in the queue while its freeze was refused: nothing of it reached the
    # receiver before the freeze's 2xx (an unfreeze overtaking the freeze fails here)
    seen = [(h.json()["type"], h.status) for h in hooks if h.json()["wallet"] == bystander]
    first_ok = seen.index(("freeze", 200))
    assert seen[:first_ok] and all(x == ("freeze", 503) for x in seen[:first_ok]), seen
    assert seen.index(("unfreeze", 200)) > first_ok and all(t == "unfreeze" for t, _ in seen[first_ok + 1:]), seen
    pd = [h.json() for h in recorder.at("/pd")]
    trig = {e["dedup_key"] for e in pd if e["event_action"] == "trigger"}
    res = {e["dedup_key"] for e in pd if e["event_action"] == "resolve"}
    assert f"spendwatch/{runaway}/trip/1" in trig & res
    assert stage.undelivered() == 0


async def test_webhooks_recorded_without_a_url_are_sent_by_a_later_start(kafka_bootstrap, unique, recorder, caplog):
    """Start 1 has no webhook.url: the freeze is recorded and noted `disabled`. Start 2, still without a
    url, says how many webhooks wait. Start 3 has the url: it sends the freeze, with the id and body of the
    decision taken in start 1."""
    s = make_settings(kafka_bootstrap, unique, partitions=2)
    topic = f"brk-{unique}"
    tables = {"admin": {"enabled": False}, "breaker": {"topic": topic, "cooldown_seconds": 3600}}
    no_url = load_breaker_config(None, **tables)
    with_url = load_breaker_config(None, webhook={"url": recorder.url + "/hook", "secrets": [SECRET],
                                                  "retry_initial_seconds": 0.05, "retry_max_seconds": 0.4}, **tables)
    agent = wallet(11)

    async def start(cfg, until) -> None:
        detect = DetectStage()
        stage = BreakerStage(cfg, control=detect)
        daemon = Daemon(s, stages=[detect, stage], services=breaker_services(stage, cfg))
        task = asyncio.create_task(daemon.run())
        try:
            await wait_for(lambda: daemon.started.is_set() and stage.parts, 30, "daemon start")
            await until()
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, 60)

    def noted(records, outcome):
        return [r for r in records if isinstance(r, DeliveredRecord) and r.outcome == outcome]

    async def noted_now(outcome):
        return noted(await read_records(kafka_bootstrap, topic), outcome)

    async def freeze_noted_disabled():
        await publish_records(s.kafka, payments(agent, 8, U, f"d{unique}"))
        await wait_for(lambda: noted_now("disabled"), 30, "the freeze noted disabled", interval_s=0.2)

    async def nothing():
        return None

    await start(no_url, freeze_noted_disabled)
    records = await read_records(kafka_bootstrap, topic)
    freeze = [r for r in records if isinstance(r, ChangeRecord) and r.webhook == "freeze"]
    assert len(freeze) == 1 and freeze[0].agent == agent
    assert [r.id for r in noted(records, "disabled")] == [freeze[0].id]

    caplog.clear()
    await start(no_url, nothing)
    assert any("webhooks DISABLED" in r.getMessage() and "1 undelivered webhooks wait" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records if "DISABLED" in r.getMessage()]
    assert recorder.at("/hook") == []

    await recorder.start()

    async def delivered():
        await wait_for(lambda: recorder.at("/hook"), 30, "the freeze sent by the start with a url")
        await wait_for(lambda: noted_now("delivered"), 30, "the delivered record", interval_s=0.2)

    await start(with_url, delivered)
    (hit,) = recorder.at("/hook")
    assert hit.key == freeze[0].id and hit.body == freeze[0].body.encode() and hit.sig_ok
