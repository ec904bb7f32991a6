"""How long a /metrics scrape and a top-N refresh take with many tracked agents.

    python -m watcher.observe.bench [--agents 1000000] [--partitions 8]

Builds real `Windows` (default windows) holding `agents` agents spread over `partitions` shards, each
with a payment in the current bucket, then times `Metrics.refresh_agents` (ranking, once per
`metrics.refresh_seconds`) and `Metrics.render` (every scrape). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import numpy as np
from prometheus_client import CollectorRegistry

from watcher.metrics import Metrics, MetricsSettings
from watcher.pipeline.windows import DEFAULT_WINDOWS, Windows


def build_shards(agents: int, partitions: int, now_ms: int, seed: int = 1) -> dict[int, SimpleNamespace]:
    rng = np.random.default_rng(seed)
    shards = {}
    per = -(-agents // partitions)
    for p in range(partitions):
        n = min(per, agents - p * per)
        if n <= 0:
            break
        w = Windows(DEFAULT_WINDOWS, capacity=n)
        keys = [int(p * per + i).to_bytes(20, "big") for i in range(n)]
        w.keys = keys
        w.index = {k: i for i, k in enumerate(keys)}
        ts = now_ms - rng.integers(0, 3_600_000, n)
        w.add(np.arange(n), ts, rng.integers(1_000, 200_000, n), np.ones(n, np.int32))
        w.advance(now_ms)
        shards[p] = SimpleNamespace(agents=w)
    return shards


def run(agents: int, partitions: int, repeat: int = 5) -> dict:
    now_ms = int(time.time() * 1000)
    t0 = time.perf_counter()
    shards = build_shards(agents, partitions, now_ms)
    build_s = time.perf_counter() - t0
    m = Metrics(CollectorRegistry(), MetricsSettings())
    m.breaker_state(shards[0].agents.keys and "0x" + shards[0].agents.keys[0].hex(), "open")
    refresh, render = [], []
    size = 0
    for _ in range(repeat):
        t = time.perf_counter()
        m.refresh_agents(shards)
        refresh.append(time.perf_counter() - t)
        m.add_spend("data", "eip155:8453", 1000, 1)   # a batch invalidates nothing in the agent block
        t = time.perf_counter()
        body = m.render()
        render.append(time.perf_counter() - t)
        size = len(body)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return {"agents": agents, "partitions": partitions, "build_s": round(build_s, 2),
            "refresh_ms_best": round(min(refresh) * 1000, 1),
            "refresh_ms_median": round(sorted(refresh)[len(refresh) // 2] * 1000, 1),
            "render_ms_best": round(min(render) * 1000, 2),
            "render_ms_median": round(sorted(render)[len(render) // 2] * 1000, 2),
            "series": series, "agent_rows": len(m.agent_rows()), "bytes": size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    print(json.dumps(run(a.agents, a.partitions, a.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
