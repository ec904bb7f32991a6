"""Latency of a freeze: from the crossing payment produced to Kafka to the signed webhook received.

Against the real broker (embedded Tansu unless `bootstrap`) and a real loopback receiver, with a real
Daemon running the Detector and the BreakerStage. First the daemon's capacity is measured (a backlog of
ordinary payments, consumed as fast as it goes); then ordinary traffic flows at half that rate while,
every `probe_interval_s`, a fresh agent pays just under its per-minute cap and then once more: the
crossing payment's produce time to the webhook's arrival is one sample.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from aiohttp import web

from watcher.breaker.config import load_breaker_config
from watcher.breaker.service import BreakerService
from watcher.breaker.stage import BreakerStage
from watcher.stages import DetectStage

log = logging.getLogger("watcher.breaker.bench")
U = 1_000_000
SECRET = "bench-secret-0123456789abcdef"
POLICY = ("[defaults]\nper_payment_max_usdc = 0\n[defaults.caps]\nper_minute_usdc = 5\nper_hour_usdc = 0\n"
          "per_day_usdc = 0\n[defaults.escalation]\npayment_above_usdc = 0\nwindow_above_usdc = 0\n"
          "[defaults.anomaly]\nenabled = false\nfleet = false\n")


def _wallet(i: int) -> str:
    from eth_utils import to_checksum_address
    return to_checksum_address("0x" + f"{i:040x}")


def _records(agent: str, n: int, amount: int, tag: str, ts_ms: int) -> list[tuple[bytes, bytes]]:
    from watcher.simulate.records import encode, fake_hash, settle_record
    merchant = _wallet(0xBEEF)
    return [(agent.encode(), encode(settle_record(event_id=f"{tag}-{i}", ts_ms=ts_ms + i, payer=agent,
                                                  pay_to=merchant, amount=amount, tx=fake_hash(tag, i))))
            for i in range(n)]


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


async def run_breaker_bench(quick: bool = False, bootstrap: str | None = None) -> dict:
    from contextlib import AsyncExitStack

    from aiokafka import AIOKafkaProducer

    from watcher.broker import TansuBroker
    from watcher.config import load_settings
    from watcher.daemon import Daemon
    from watcher.detect import Policy

    backlog = 20_000 if quick else 60_000
    probes = 60 if quick else 300
    probe_interval_s = 0.1
    got: dict[str, float] = {}

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        if body["type"] == "freeze":
            got.setdefault(body["wallet"], time.time())
        return web.json_response({"ok": True})

    async with AsyncExitStack() as stack:
        if not bootstrap:
            bootstrap = (await stack.enter_async_context(TansuBroker())).bootstrap
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        tag = f"{random.getrandbits(40):010x}"
        s = load_settings(None, kafka={"bootstrap": bootstrap, "group": f"bench-{tag}", "partitions": 4,
                                       "payments_topic": f"bpay-{tag}", "chain_topic": f"bchain-{tag}",
                                       "dead_letter_topic": f"bdlq-{tag}", "checkpoint_topic": f"bckpt-{tag}",
                                       "findings_topic": f"bfind-{tag}", "decisions_topic": f"bdec-{tag}",
                                       "session_timeout_ms": 2000, "heartbeat_interval_ms": 300,
                                       "poll_timeout_ms": 50}, checkpoint={"interval_seconds": 3600})
        cfg = load_breaker_config(None, webhook={"url": f"http://127.0.0.1:{port}/hook", "secrets": [SECRET]},
                                  admin={"enabled": False}, breaker={"topic": f"bbrk-{tag}"})
        detect = DetectStage(Policy.from_text(POLICY), s.kafka.decisions_topic)
        stage = BreakerStage(cfg, control=detect)
        daemon = Daemon(s, stages=[detect, stage], services=[lambda d: BreakerService(d, stage, cfg)])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        await producer.start()
        stack.push_async_callback(producer.stop)
        from watcher.sources.kafka import ensure_topics
        await ensure_topics(s.kafka)
        now = int(time.time() * 1000)
        n_bg = backlog + (probes * probe_interval_s + 10) * 5_000   # distinct records (no dedupe shortcut)
        background = [r for i in range(int(n_bg)) for r in _records(_wallet(10_000 + i % 5000), 1, 1000,
                                                                     f"bg{tag}{i}", now)]
        futs = [await producer.send(s.kafka.payments_topic, v, key=k) for k, v in background[:backlog]]
        await asyncio.gather(*futs)
        decided: dict[str, float] = {}
        on_result = stage.on_result

        def timed(d, outcome, attempts, detail):
            decided.setdefault(d.agent, d.created_ms / 1000)
            on_result(d, outcome, attempts, detail)
        stage.on_result = timed
        task = asyncio.create_task(daemon.run())
        try:
            t0 = time.monotonic()
            while daemon.counters.consumed < backlog:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
            capacity = backlog / (time.monotonic() - t0)
            rate = capacity / 2
            stop = asyncio.Event()

            async def load() -> None:
                i, t_start = backlog, time.monotonic()
                while not stop.is_set():
                    due = min(len(background), backlog + int((time.monotonic() - t_start) * rate))
                    while i < due:
                        k, v = background[i % len(background)]
                        await producer.send(s.kafka.payments_topic, v, key=k)
                        i += 1
                    await asyncio.sleep(0.005)

            load_task = asyncio.create_task(load())
            sent: dict[str, float] = {}
            for n in range(probes):
                agent = _wallet(1_000_000 + n)
                recs = _records(agent, 6, U, f"p{tag}{n}", int(time.time() * 1000))
                await asyncio.gather(*[await producer.send(s.kafka.payments_topic, v, key=k) for k, v in recs[:5]])
                sent[agent] = time.time()
                await producer.send(s.kafka.payments_topic, recs[5][1], key=recs[5][0])
                await asyncio.sleep(probe_interval_s)
            deadline = time.monotonic() + 30
            while len(got) < len(sent) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stop.set()
            await load_task
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, 60)
    lat = [(got[a] - t) * 1000 for a, t in sent.items() if a in got]
    to_decision = [(decided[a] - t) * 1000 for a, t in sent.items() if a in decided]
    return {"breaker_capacity_events_per_s": round(capacity), "breaker_load_events_per_s": round(rate),
            "freeze_latency_samples": len(lat), "freeze_latency_missing": len(sent) - len(lat),
            "freeze_latency_p50_ms": round(_pct(lat, 0.5), 2), "freeze_latency_p99_ms": round(_pct(lat, 0.99), 2),
            "freeze_latency_max_ms": round(max(lat), 2) if lat else None, "target_p99_ms": 50,
            "produce_to_decision_p50_ms": round(_pct(to_decision, 0.5), 2),
            "produce_to_decision_p99_ms": round(_pct(to_decision, 0.99), 2)}


if __name__ == "__main__":
    import json
    import sys
    logging.basicConfig(level="WARNING")
    print(json.dumps(asyncio.run(run_breaker_bench(quick="--quick" in sys.argv))))
