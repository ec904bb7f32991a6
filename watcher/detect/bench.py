"""Cost of detection: events/s of decode+shard alone vs decode+shard+detector, same records, same run;
and the replay rate (`spendwatch replay`'s loop) over them."""

from __future__ import annotations

import time

import numpy as np

from watcher.detect.detector import Detector
from watcher.detect.eval.scenarios import BASE_POLICY, T0_MS, _addr, _Fast
from watcher.detect.policy import Policy
from watcher.events.decode import Decoder
from watcher.pipeline.shard import Shard


def bench_records(n_payments: int, n_agents: int, seed: int = 3) -> list[bytes]:
    """A dense stream: settle + confirmed transfer per payment, agents and merchants Zipf-ish."""
    rng = np.random.default_rng(seed)
    fast = _Fast()
    agents = [_addr(seed, "bench-agent", i) for i in range(n_agents)]
    merchants = [(_addr(seed, "bench-m", i), f"https://bm{i}.example/v1") for i in range(200)]
    prices = (np.exp(rng.uniform(np.log(1000), np.log(50_000), len(merchants)))).astype(int)
    ts = T0_MS + np.sort(rng.integers(0, 3_600_000, n_payments))
    who = rng.zipf(1.3, n_payments) % n_agents
    what = rng.integers(0, len(merchants), n_payments)
    out: list[tuple[int, bytes]] = []
    for k, (t, a, m) in enumerate(zip(ts.tolist(), who.tolist(), what.tolist())):
        tx = f"0x{seed:08x}{k:056x}"
        addr, url = merchants[m]
        out.append((t, fast.settle_bytes(f"b-{k}", t, agents[a], addr, int(prices[m]), tx, url)))
        out.append((t + 1500, fast.transfer_bytes(t + 1500, agents[a], addr, int(prices[m]), tx)))
    out.sort(key=lambda r: r[0])
    return [r[1] for r in out]


def _run(records: list[bytes], batch: int, detector: Detector | None) -> float:
    dec = Decoder(max_future_skew_ms=None)
    shard = Shard(categorize=detector.categorize if detector else None)
    decode = dec.decode
    t0 = time.perf_counter()
    for i in range(0, len(records), batch):
        obs = [decode(r) for r in records[i: i + batch]]
        out = shard.apply(obs)
        if detector is not None:
            detector.on_batch(out, shard, shard.watermark_ms, obs)
            detector.tick(shard.watermark_ms)
    return time.perf_counter() - t0


def run_detect_bench(quick: bool = True) -> dict:
    """events/s of decode+shard and of decode+shard+detector over the same records, and their ratio
    (issue C asks for >= 0.5). Interleaved repeats; the best of each is kept (the machine is shared)."""
    n_pay, n_agents, batch, repeats = (25_000, 2_000, 1_000, 2) if quick else (150_000, 10_000, 2_000, 3)
    records = bench_records(n_pay, n_agents)
    policy = Policy.from_text(BASE_POLICY, "<bench>")
    base, full = [], []
    for _ in range(repeats):
        base.append(_run(records, batch, None))
        full.append(_run(records, batch, Detector(policy)))
    b, f = min(base), min(full)
    n = len(records)
    r = min(_replay(records, policy) for _ in range(repeats))
    return {"events": n, "agents": n_agents, "batch": batch, "decode_shard_events_per_s": round(n / b),
            "with_detector_events_per_s": round(n / f), "ratio": round(b / f, 3),
            "detector_us_per_event": round((f - b) / n * 1e6, 2),
            "replay_events_per_s": round(n / r), "replay_3m_seconds": round(3_000_000 * r / n, 1)}


def _replay(records: list[bytes], policy: Policy) -> float:
    """`spendwatch replay`'s pipeline (batches cut on event time) over the same records, in memory."""
    from watcher.detect.replay import Replay

    rp = Replay(policy)
    t0 = time.perf_counter()
    for _ in rp.run(records):
        pass
    return time.perf_counter() - t0


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run_detect_bench("--full" not in sys.argv)))
