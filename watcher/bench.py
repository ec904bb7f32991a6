"""Benchmarks behind `spendwatch bench`. Figures are measured in one run on this machine; compare ratios.

inproc_events_per_s      decode -> dedupe/join -> windows, one core, pre-built records in memory
kafka_events_per_s       the daemon consuming the same records from the broker (first to last record)
raw_consume_events_per_s plain aiokafka consumption of the same messages in the same run
bytes_per_agent_*        memory of the per-agent state (window rows + index) per tracked agent
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
import uuid

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from watcher.config import load_settings
from watcher.daemon import Daemon
from watcher.embedded import kafka_settings
from watcher.events.decode import Decoder
from watcher.pipeline.shard import Shard
from watcher.pipeline.windows import Windows
from watcher.simulate.fleet import Fleet
from watcher.simulate.publish import publish_records
from watcher.sources.kafka import ensure_topics


def build_records(n_payments: int, seed: int = 3) -> list[tuple[str, bytes, bytes]]:
    fleet = Fleet(agents=2_000, merchants=50, seed=seed, malformed_ratio=0.0, runaway_after_s=1e9)
    return fleet.events(n_payments, int(time.time() * 1000) - 6 * 3_600_000, rate_per_s=2_000)


def bench_inproc(records: list[tuple[str, bytes, bytes]], batch: int = 5_000, repeats: int = 3) -> dict:
    """Best of `repeats` passes, in CPU time of this process (the machine is shared: wall time is noisy)."""
    raws = [v for _, _, v in records]
    best = best_decode = float("inf")
    for _ in range(repeats):
        dec = Decoder(max_future_skew_ms=None)
        shard = Shard()
        gc.collect()
        t0 = time.process_time()
        for i in range(0, len(raws), batch):
            shard.apply([dec.decode(r) for r in raws[i: i + batch]])
        best = min(best, time.process_time() - t0)
        t0 = time.process_time()
        for r in raws:
            dec.decode(r)
        best_decode = min(best_decode, time.process_time() - t0)
    return {"inproc_events_per_s": len(raws) / best, "inproc_decode_only_events_per_s": len(raws) / best_decode,
            "inproc_events": len(raws), "inproc_record_bytes_avg": sum(map(len, raws)) / len(raws)}


def bench_bytes_per_agent(n: int) -> float:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    w = Windows()
    rows = np.fromiter((w.row(i.to_bytes(20, "big")) for i in range(n)), np.int64, n)
    now = int(time.time() * 1000)
    w.add(rows, np.full(n, now), np.full(n, 1_000), np.ones(n, np.int32))
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del w, rows
    return used / n


def steady_rate(n: int, first_batch: int, t_first: float, t_last: float) -> float:
    """Records per second after the first batch. The clock starts when the first batch is in hand, so its
    records were not timed: counting them too (up to 5,000 of --quick's 15,000) overstates the rate, and by
    a different factor for the daemon and for the plain consumer, which skewed their ratio."""
    if n <= first_batch or t_last <= t_first:
        raise ValueError(f"cannot time {n} records that came in one batch of {first_batch}: publish more")
    return (n - first_batch) / (t_last - t_first)


async def _raw_consume(bootstrap: str, topics: list[str], partitions: int, n: int) -> float:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=5_000,
                         fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024)
    await c.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        got, first, t_first = 0, 0, 0.0
        while got < n:
            batch = await c.getmany(timeout_ms=1000, max_records=5_000)
            size = sum(len(m) for m in batch.values())
            if size and not first:
                first, t_first = size, time.perf_counter()
            got += size
        return steady_rate(n, first, t_first, time.perf_counter())
    finally:
        await c.stop()


async def bench_kafka(records, bootstrap: str | None) -> dict:
    tag = uuid.uuid4().hex[:8]
    base = load_settings()
    async with kafka_settings(base, bootstrap) as s0:
        k = {"bootstrap": s0.kafka.bootstrap, "group": f"bench-{tag}", "partitions": 4,
             "payments_topic": f"bench-pay-{tag}", "chain_topic": f"bench-chain-{tag}",
             "dead_letter_topic": f"bench-dlq-{tag}", "checkpoint_topic": f"bench-ckpt-{tag}",
             "findings_topic": f"bench-find-{tag}", "decisions_topic": f"bench-dec-{tag}",
             "session_timeout_ms": 2000, "heartbeat_interval_ms": 300}
        s = load_settings(None, kafka=k, checkpoint={"interval_seconds": 3600})
        await ensure_topics(s.kafka)
        await publish_records(s.kafka, records)
        n = len(records)
        raw = await _raw_consume(s.kafka.bootstrap, [s.kafka.payments_topic, s.kafka.chain_topic], 4, n)
        marks: list[float] = []
        first_batch: list[int] = []  # records in the batch that set the first mark: not timed

        def on_batch(d: Daemon):
            if d.counters.consumed and not marks:
                marks.append(time.perf_counter())
                first_batch.append(d.counters.consumed)
            if d.counters.consumed >= n:
                marks.append(time.perf_counter())
                d.request_stop()

        daemon = Daemon(s, live_clock=False, on_batch=on_batch)
        await asyncio.wait_for(daemon.run(), 600)
        return {"kafka_events_per_s": steady_rate(n, first_batch[0], marks[0], marks[-1]),
                "raw_consume_events_per_s": raw, "kafka_events": n}


async def run_all(quick: bool = False, bootstrap: str | None = None, parts: set[str] | None = None) -> dict:
    n_inproc = 20_000 if quick else 150_000
    n_kafka = 15_000 if quick else 60_000
    records = build_records(max(n_inproc, n_kafka))
    out: dict = {"quick": quick}
    out.update(bench_inproc(records[:n_inproc]))
    out.update(await bench_kafka(records[:n_kafka], bootstrap))
    out["kafka_vs_raw_ratio"] = out["kafka_events_per_s"] / out["raw_consume_events_per_s"]
    out["bytes_per_agent_100k"] = bench_bytes_per_agent(100_000)
    out["bytes_per_agent_1m"] = bench_bytes_per_agent(1_000_000 if not quick else 300_000)
    if quick:
        out["bytes_per_agent_1m_note"] = "measured at 300,000 agents in --quick"
    if parts != {"core"}:
        out.update(await run_parts(quick, bootstrap, None if not parts else parts))
    return out


def _extra_benches(bootstrap: str | None):
    """The benchmarks of the other parts, each returning a dict; keys are prefixed with the part's name."""
    from watcher.breaker.bench import run_breaker_bench
    from watcher.chain.bench import run_chain_bench
    from watcher.detect.bench import run_detect_bench
    from watcher.observe.bench import run as run_metrics_bench
    from watcher.tap.bench import _bench as tap_bench

    return [
        ("detect", lambda quick: run_detect_bench(quick)),
        ("metrics", lambda quick: run_metrics_bench(300_000 if quick else 1_000_000, 8, repeat=3)),
        ("breaker", lambda quick: run_breaker_bench(quick, bootstrap)),
        ("tap", lambda quick: tap_bench(quick, bootstrap)),
        ("chain", lambda quick: run_chain_bench(quick, bootstrap=bootstrap)),
    ]


async def run_parts(quick: bool, bootstrap: str | None, only: set[str] | None = None) -> dict:
    out: dict = {}
    for name, fn in _extra_benches(bootstrap):
        if only and name not in only:
            continue
        res = fn(quick)
        if asyncio.iscoroutine(res):
            res = await res
        for k, v in _flat(res).items():
            out[k if k.startswith(name + "_") else f"{name}_{k}"] = v
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}_"))
        else:
            out[f"{prefix}{k}"] = v
    return out
