"""A checkpoint that cannot be restored stops the daemon with an error; it never runs the partition without it.

The damaged checkpoint is a manifest whose chunk is missing (as after a chunk lost to retention on a topic
that is not compacted). Before the fix, aiokafka swallowed the rebalance listener's error: the partition
was resumed with no state and its records were fetched and rewound forever (a hot loop, nothing exported).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import msgspec
import pytest

from tests.integration.helpers import make_settings, run_until
from watcher.config import load_settings
from watcher.daemon import Daemon
from watcher.errors import CheckpointError
from watcher.simulate.records import encode, fake_hash, settle_record
from watcher.sources import kafka as kafka_io
from watcher.sources.checkpoints import Manifest
from watcher.sources.kafka import ensure_topics

pytestmark = pytest.mark.integration

A = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
M = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
PAYMENTS = 50


async def publish_payments(s, partition: int) -> None:
    await ensure_topics(s.kafka)
    producer = kafka_io.producer(s.kafka)
    await producer.start()
    try:
        now = int(time.time() * 1000)
        futs = [await producer.send(s.kafka.payments_topic, encode(settle_record(
                    event_id=f"e{i}", ts_ms=now, payer=A, pay_to=M, amount=1000, tx=fake_hash("restore", i))),
                    key=A.encode(), partition=partition) for i in range(PAYMENTS)]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def damaged_checkpoint(s, partition: int) -> None:
    """Input on `partition` and a checkpoint of it whose only chunk was never written."""
    await publish_payments(s, partition)
    producer = kafka_io.producer(s.kafka)
    await producer.start()
    try:
        manifest = Manifest(partition, gen=5, chunks=1, size=10, crc=0, offsets={}, written_at=time.time())
        await producer.send_and_wait(s.kafka.checkpoint_topic, msgspec.msgpack.encode(manifest),
                                     key=f"{s.kafka.group}/{partition}/manifest".encode())
    finally:
        await producer.stop()


async def discard_checkpoint(s, partition: int) -> None:
    """What the error tells the operator to do to start the partition over: tombstone its manifest."""
    producer = kafka_io.producer(s.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(s.kafka.checkpoint_topic, None,
                                     key=f"{s.kafka.group}/{partition}/manifest".encode())
    finally:
        await producer.stop()


async def test_damaged_checkpoint_stops_the_daemon_with_the_partition_and_the_fix(kafka_bootstrap, unique):
    s = make_settings(kafka_bootstrap, unique, partitions=2)
    await damaged_checkpoint(s, 1)
    daemon = Daemon(s)
    task = asyncio.create_task(daemon.run())
    try:
        with pytest.raises(CheckpointError) as err:
            await asyncio.wait_for(asyncio.shield(task), 30)
    finally:
        if not task.done():  # the old behaviour: spinning on the unrestored partition
            daemon.request_stop()
            await asyncio.wait_for(task, 60)
    msg = str(err.value)
    assert "partition 1 (generation 5) is missing chunk(s) [0]" in msg
    assert s.kafka.checkpoint_topic in msg and f"{s.kafka.group}/<partition>/manifest" in msg
    assert daemon.fatal is err.value
    c = daemon.counters
    assert (c.consumed, c.checkpoints) == (0, 0)  # nothing counted, the checkpoint not overwritten
    assert c.not_owned <= PAYMENTS  # paused: at most one early fetch, not a fetch-and-rewind loop

    # the way out the error names: discard that checkpoint; the partition starts over from its input
    await discard_checkpoint(s, 1)
    again = Daemon(s)
    await run_until(again, lambda d: d.counters.consumed >= PAYMENTS, timeout_s=60)
    assert again.fatal is None and again.counters.restored_partitions == 0
    assert again.shards[1].agent_totals(A)[0][-1] == PAYMENTS * 1000


async def test_spendwatch_run_exits_1_on_a_damaged_checkpoint(kafka_bootstrap, unique, tmp_path):
    s = make_settings(kafka_bootstrap, unique, partitions=1)
    await damaged_checkpoint(s, 0)
    env = dict(os.environ, SPENDWATCH_METRICS__PORT="0", SPENDWATCH_ADMIN__ENABLED="false",
               SPENDWATCH_KAFKA__PARTITIONS="1", SPENDWATCH_KAFKA__SESSION_TIMEOUT_MS="2000",
               SPENDWATCH_KAFKA__HEARTBEAT_INTERVAL_MS="300", COLUMNS="400")
    env.update({f"SPENDWATCH_KAFKA__{k.upper()}": v for k, v in s.kafka.model_dump().items() if isinstance(v, str)})
    proc = subprocess.Popen([sys.executable, "-m", "watcher", "run"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError("spendwatch run still running 60 s after a failed restore:\n" + out[-3000:])
    flat = " ".join(out.split())  # rich wraps long log lines
    assert proc.returncode == 1, flat[-3000:]
    assert "partition 0 (generation 5) is missing chunk(s) [0]" in flat, flat[-3000:]
    assert f"{s.kafka.group}/<partition>/manifest" in flat, flat[-3000:]


async def test_changed_windows_stop_the_daemon_instead_of_mislabelling_sums(kafka_bootstrap, unique):
    s = make_settings(kafka_bootstrap, unique, partitions=1)  # the default windows: 1m, 5m, 1h, 24h
    await publish_payments(s, 0)
    first = Daemon(s)
    await run_until(first, lambda d: d.counters.consumed >= PAYMENTS, timeout_s=60)  # checkpoints at stop
    assert first.counters.checkpoints >= 1

    changed = load_settings(None, kafka=s.kafka.model_dump(), checkpoint={"interval_seconds": 1.0},
                            windows=[{"name": "10m", "seconds": 600, "buckets": 10},
                                     {"name": "24h", "seconds": 86400, "buckets": 8}])
    daemon = Daemon(changed)
    with pytest.raises(CheckpointError) as err:
        await asyncio.wait_for(daemon.run(), 30)
    msg = str(err.value)
    assert "partition 0, checkpoint generation" in msg and "`windows`" in msg and "10m (600 s, 10 buckets)" in msg
    assert daemon.shards == {} and daemon.counters.checkpoints == 0  # the old checkpoint is left as it was
