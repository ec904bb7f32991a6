"""Scale-out bench: aggregate events/s with one and with two replicas, and the time to restore a
partition's state per 100,000 agents.

Throughput: the same simulated records (settles, transfers, redeliveries, failed verifications, a few
malformed records) are published to fresh input topics, then `replicas` worker processes
(`watcher.scale.worker`: the full daemon with every stage) are started together in one group. Each
records (time, records consumed); the aggregate rate is taken over the interval in which every replica
was consuming (steady state: no group join, no tail), summed over the replicas.

Restore: one partition's state (shard windows + dedupe + join, detector, breakers, statements, metrics)
is built for `agents` agents, checkpointed to the broker through `CheckpointStore`, then read back and
restored as `Daemon._acquire` does (scan + decode + Shard.restore + every stage's restore); best of 3.
The machine is shared and noisy: figures are indications, not assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec

from watcher.config import load_settings
from watcher.sources import kafka as kafka_io
from watcher.sources.checkpoints import CheckpointStore


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _config(path: Path, bootstrap: str, tag: str, partitions: int) -> Path:
    path.write_text(f"""
[kafka]
bootstrap = "{bootstrap}"
group = "g-{tag}"
payments_topic = "pay-{tag}"
chain_topic = "chain-{tag}"
dead_letter_topic = "dlq-{tag}"
checkpoint_topic = "ckpt-{tag}"
findings_topic = "find-{tag}"
decisions_topic = "dec-{tag}"
partitions = {partitions}
session_timeout_ms = 6000
heartbeat_interval_ms = 1000
[checkpoint]
interval_seconds = 10
[breaker]
topic = "brk-{tag}"
[statements]
topic = "stmt-{tag}"
[admin]
enabled = false
[metrics]
enabled = false
[events]
max_future_skew_seconds = 300
""")
    return path


async def _committed(s) -> int:
    from watcher.sources.kafka import committed_input_offsets

    return await committed_input_offsets(s.kafka)


def _steady_rate(series: list[list[tuple[float, int]]]) -> tuple[float, float, float]:
    """(aggregate events/s while every replica consumed, overall events/s first-to-last, seconds)."""
    series = [s for s in series if s]
    first = [s[0][0] for s in series]
    last = [s[-1][0] for s in series]
    start, end = max(first), min(last)
    total = sum(s[-1][1] for s in series)
    overall = total / max(1e-9, max(last) - min(first))
    if end - start < 1.0:
        return overall, overall, max(last) - min(first)

    def at(s, t):  # consumed by time t (step function over the samples)
        n = 0
        for ts, c in s:
            if ts > t:
                break
            n = c
        return n

    done = sum(at(s, end) - at(s, start) for s in series)
    return done / (end - start), overall, end - start


async def throughput(bootstrap: str, records: list, replicas: int, partitions: int, workdir: Path) -> dict:
    from watcher.simulate.publish import publish_records

    tag = f"sb{replicas}-{uuid.uuid4().hex[:8]}"
    cfg = _config(workdir / f"{tag}.toml", bootstrap, tag, partitions)
    s = load_settings(cfg)
    await kafka_io.ensure_topics(s.kafka)
    await publish_records(s.kafka, records)
    total = len(records)
    procs, outs = [], []
    for i in range(replicas):
        out = workdir / f"{tag}-{i}.json"
        log = open(workdir / f"{tag}-{i}.log", "ab")
        procs.append(subprocess.Popen([sys.executable, "-m", "watcher.scale.worker", str(cfg), str(out)],
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        log.close()
        outs.append(out)
    try:
        deadline = time.monotonic() + 600
        while await _committed(s) < total:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"replicas did not consume {total} records; see {workdir}")
            await asyncio.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
    series = [[tuple(x) for x in json.loads(o.read_text())["samples"]] for o in outs]
    steady, overall, span = _steady_rate(series)
    return {"events_per_s": round(steady), "overall_events_per_s": round(overall),
            "steady_seconds": round(span, 2), "records": total,
            "per_replica": [s[-1][1] if s else 0 for s in series]}


async def restore_time(bootstrap: str, agents: int, workdir: Path) -> dict:
    """Build one partition's state for `agents` agents, checkpoint it, time its restore (best of 3)."""
    import gc

    from watcher.batch import BatchContext
    from watcher.events.decode import Decoder
    from watcher.pipeline.shard import Shard
    from watcher.simulate.records import encode, fake_hash, settle_record
    from watcher.stages import build

    tag = f"sr-{uuid.uuid4().hex[:8]}"
    s = load_settings(_config(workdir / f"{tag}.toml", bootstrap, tag, 1))
    await kafka_io.ensure_topics(s.kafka)
    gc.collect()
    rss0 = _rss_bytes()
    asm = build(s)
    stages = asm.stages
    for st in stages:
        st.restore(0, None)
    shard = Shard(s.shard_config(), asm.categorize)
    dec = Decoder(max_future_skew_ms=None)
    now = int(time.time() * 1000)
    merchant = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
    from eth_utils import to_checksum_address
    per_agent = 3
    batch: list = []
    for i in range(agents * per_agent):
        a = i % agents
        payer = to_checksum_address("0x" + f"{a + 1:040x}")
        batch.append(dec.decode(encode(settle_record(
            event_id=f"rb-{i}", ts_ms=now - 3_600_000 + (i * 7) % 3_500_000, payer=payer, pay_to=merchant,
            amount=10_000 + (i % 97) * 100, tx=fake_hash("rb", i)))))
        if len(batch) == 5_000:
            _apply(shard, stages, batch, now, BatchContext)
            batch = []
    if batch:
        _apply(shard, stages, batch, now, BatchContext)
    gc.collect()
    rss_state = _rss_bytes() - rss0
    blob = msgspec.msgpack.encode({"shard": shard.snapshot(), "stages": [st.snapshot(0) for st in stages]})
    producer = kafka_io.producer(s.kafka, max_request_size=16 * 1024 * 1024)
    await producer.start()
    try:
        store = CheckpointStore(producer, bootstrap, s.kafka.checkpoint_topic, s.kafka.group,
                                s.checkpoint.chunk_bytes)
        await store.write(0, blob, {s.kafka.payments_topic: agents * per_agent})
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = (await store.read_latest({0}))[0]
            snap = msgspec.msgpack.decode(r.blob)
            restored = Shard.restore(snap["shard"], s.shard_config(), asm.categorize)
            for i, st in enumerate(stages):
                st.restore(0, snap["stages"][i])
            times.append(time.perf_counter() - t0)
            assert len(restored.agents) == agents
    finally:
        await producer.stop()
    best = min(times)
    return {"agents": agents, "restore_seconds": round(best, 3),
            "restore_seconds_per_100k_agents": round(best * 100_000 / agents, 3),
            "checkpoint_bytes_per_agent": round(len(blob) / agents),
            "resident_bytes_per_agent": round(rss_state / agents)}


def _apply(shard, stages, obs, now_ms, BatchContext) -> None:
    out = shard.apply(obs)
    ctx = BatchContext(0, shard, out, obs, now_ms)
    for st in stages:
        st.on_batch(ctx)


async def run_scale_bench(quick: bool, bootstrap: str | None = None) -> dict:
    """Returns replicas_1_events_per_s, replicas_2_events_per_s, restore_seconds_per_100k_agents and
    the details behind them. Starts the embedded broker when no bootstrap is given."""
    from watcher.simulate.fleet import Fleet

    stack = contextlib.ExitStack()
    if bootstrap is None:
        from watcher.broker import TansuBroker
        bootstrap = stack.enter_context(TansuBroker()).bootstrap
    n = 40_000 if quick else 150_000
    agents = 20_000 if quick else 100_000
    with stack, tempfile.TemporaryDirectory(prefix="spendwatch-scale-") as tmp:
        work = Path(tmp)
        fleet = Fleet(agents=2_000, merchants=60, seed=3, runaway_after_s=60)
        records = fleet.events(n, int(time.time() * 1000) - 3 * 3600_000, rate_per_s=400)
        one = await throughput(bootstrap, records, 1, 8, work)
        two = await throughput(bootstrap, records, 2, 8, work)
        restore = await restore_time(bootstrap, agents, work)
    return {"replicas_1_events_per_s": one["events_per_s"], "replicas_2_events_per_s": two["events_per_s"],
            "restore_seconds_per_100k_agents": restore["restore_seconds_per_100k_agents"],
            "replicas_1": one, "replicas_2": two, "restore": restore, "cores": os.cpu_count(), "quick": quick}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m watcher.scale.bench", description=__doc__.split("\n\n")[0]
                                 .replace("\n", " ") + " Prints one JSON object (replicas_1_events_per_s, "
                                 "replicas_2_events_per_s, restore_seconds_per_100k_agents and details); takes "
                                 "minutes and every core it gets.")
    ap.add_argument("--quick", action="store_true", help="fewer records (40,000) and agents (20,000): a smoke check")
    ap.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka to use (default: the embedded Tansu broker)")
    a = ap.parse_args()
    print(json.dumps(asyncio.run(run_scale_bench(a.quick, a.bootstrap)), indent=2))
