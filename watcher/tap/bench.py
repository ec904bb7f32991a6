"""The tap's added latency: the same /verify and /settle calls sent to an upstream facilitator directly and
through the tap, interleaved in one run, one client, keep-alive connections on loopback.

The upstream is a stub answering fixed x402 responses at once (so the figures are the tap's own cost:
parsing, breaker check, record building and buffering, one extra loopback hop), not chain latency. Records
go to Kafka at `bootstrap` when given, else to an unreachable address (buffered, then dropped and counted:
the payment path does the same work either way).
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import msgspec
from aiohttp import web

from watcher.chain.devnet import free_port
from watcher.simulate.records import settle_record as sim_settle
from watcher.tap.breakers import Gate, StaticBreakerView
from watcher.tap.metrics import TapMetrics
from watcher.tap.proxy import TapProxy
from watcher.tap.publisher import TapPublisher

PAYER = "0xC763cc03A7642b8AF0B7ae195673a7F61bA74869"
PAY_TO = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def _bodies(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        rec = sim_settle(event_id=f"b{i}", ts_ms=0, payer=PAYER, pay_to=PAY_TO, amount=10_000, tx="0x" + "ab" * 32)
        out.append(msgspec.json.encode({"x402Version": 2, "paymentPayload": rec["paymentPayload"],
                                        "paymentRequirements": rec["paymentRequirements"]}))
    return out


async def _stub() -> tuple[web.AppRunner, str]:
    verify = msgspec.json.encode({"isValid": True, "payer": PAYER})
    settle = msgspec.json.encode({"success": True, "payer": PAYER, "transaction": "0x" + "ab" * 32,
                                  "network": "eip155:8453"})

    async def v(request):
        await request.read()
        return web.Response(body=verify, content_type="application/json")

    async def s(request):
        await request.read()
        return web.Response(body=settle, content_type="application/json")

    app = web.Application()
    app.router.add_post("/verify", v)
    app.router.add_post("/settle", s)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _bench(quick: bool, bootstrap: str | None) -> dict:
    n = 300 if quick else 3000
    bodies = _bodies(n)
    runner, upstream = await _stub()
    metrics = TapMetrics()
    try:
        async with TapPublisher(bootstrap or f"127.0.0.1:{free_port()}", "x402.payments.bench", metrics=metrics,
                                max_buffer=100_000, request_timeout_ms=2000) as pub, \
                TapProxy(upstream, pub, Gate(StaticBreakerView({"0x" + "11" * 20}), metrics=metrics),
                         metrics=metrics) as tap, aiohttp.ClientSession() as http:
            direct: dict[str, list[float]] = {"verify": [], "settle": []}
            proxied: dict[str, list[float]] = {"verify": [], "settle": []}
            hdr = {"Content-Type": "application/json"}
            for i in range(min(50, n)):   # warm-up: connections, caches
                for base in (upstream, tap.url):
                    async with http.post(f"{base}/verify", data=bodies[i], headers=hdr) as r:
                        await r.read()
            for i, body in enumerate(bodies):
                for call in ("verify", "settle"):
                    pair = ((upstream, direct), (tap.url, proxied))
                    order = pair if i % 2 else pair[::-1]
                    for base, into in order:
                        t0 = time.perf_counter()
                        async with http.post(f"{base}/{call}", data=body, headers=hdr) as r:
                            await r.read()
                            assert r.status == 200, r.status
                        into[call].append(time.perf_counter() - t0)
            await asyncio.sleep(0.2)
            out: dict = {"requests_per_path": n * 2, "upstream": "stub (instant answers)",
                         "kafka": "reachable" if bootstrap else "unreachable (records buffered, then dropped)",
                         "records_buffered_or_published": pub.published + pub.buffered}
            for call in ("verify", "settle"):
                d, p = direct[call], proxied[call]
                out[call] = {"direct_p50_ms": round(_pct(d, 0.5) * 1e3, 3),
                             "direct_p99_ms": round(_pct(d, 0.99) * 1e3, 3),
                             "tap_p50_ms": round(_pct(p, 0.5) * 1e3, 3), "tap_p99_ms": round(_pct(p, 0.99) * 1e3, 3),
                             "overhead_p50_ms": round((_pct(p, 0.5) - _pct(d, 0.5)) * 1e3, 3),
                             "overhead_p99_ms": round((_pct(p, 0.99) - _pct(d, 0.99)) * 1e3, 3),
                             "overhead_mean_ms": round((statistics.fmean(p) - statistics.fmean(d)) * 1e3, 3)}
            return out
    finally:
        await runner.cleanup()


def run_tap_bench(quick: bool = True, bootstrap: str | None = None) -> dict:
    """Proxy overhead per call (p50, p99) against calling the upstream directly, measured in the same run."""
    return asyncio.run(_bench(quick, bootstrap))


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run_tap_bench("--full" not in sys.argv), indent=2))
