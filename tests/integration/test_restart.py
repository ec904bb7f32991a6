"""SIGTERM mid-stream, restart: the totals equal one clean pass (nothing lost, nothing counted twice).

The daemon runs as a real `spendwatch run` process; its state is read back from the checkpoints it wrote
to Kafka, so the test checks exactly what a restarted replica would restore.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import msgspec
import pytest

from tests.integration.helpers import make_settings
from tests.polling import wait_for
from watcher.events.addresses import key_address
from watcher.pipeline.shard import Shard
from watcher.simulate.fleet import Fleet
from watcher.simulate.publish import publish_records
from watcher.sources import kafka as kafka_io
from watcher.sources.checkpoints import CheckpointStore
from watcher.sources.kafka import committed_input_offsets, ensure_topics

pytestmark = pytest.mark.integration


def write_config(path, s) -> str:
    k = s.kafka
    lines = ["[kafka]"] + [f'{key} = {value!r}'.replace("'", '"') for key, value in k.model_dump().items()
                           if isinstance(value, str)]
    lines += [f"partitions = {k.partitions}", "session_timeout_ms = 2000", "heartbeat_interval_ms = 300",
              "poll_timeout_ms = 100", "max_batch = 500", "[checkpoint]", "interval_seconds = 0.5"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def start(cfg: str, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "watcher", "--log-level", "INFO", "run", "--config", cfg],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def committed(s) -> int:
    return await committed_input_offsets(s.kafka)


def stop(proc: subprocess.Popen, logpath) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("daemon did not exit within 60 s of SIGTERM:\n" + logpath.read_text()[-3000:])
    assert rc == 0, f"exit code {rc}:\n" + logpath.read_text()[-3000:]


async def stage(bootstrap, unique, tmp_path, fleet: Fleet, payments: tuple[int, ...], rate_per_s: float):
    """Topics and a config file for a 4-partition `spendwatch run`, and the fleet's records in rounds of about
    `payments` payments (an hour ago). Returns settings, config path, rounds, record count, log path."""
    s = make_settings(bootstrap, unique, partitions=4)
    await ensure_topics(s.kafka)
    cfg = write_config(tmp_path / "spendwatch.toml", s)
    t0 = int(time.time() * 1000) - 3_600_000
    rounds = [fleet.events(n, t0, rate_per_s=rate_per_s) for n in payments]
    return s, cfg, rounds, sum(len(r) for r in rounds), tmp_path / "daemon.log"


async def test_sigterm_mid_stream_then_restart_is_exact(kafka_bootstrap, unique, tmp_path):
    fleet = Fleet(agents=150, seed=5, runaway_after_s=10_000)
    s, cfg, rounds, total, logpath = await stage(kafka_bootstrap, unique, tmp_path, fleet, (3_000, 6_000, 9_000), 400)
    with open(logpath, "ab") as log:
        await publish_records(s.kafka, rounds[0])
        proc = start(cfg, log)
        try:
            await wait_for(lambda: _gt(committed(s), 0), 60, "the first commit", interval_s=0.2)
            pub = asyncio.create_task(publish_records(s.kafka, rounds[1]))
            await asyncio.sleep(0.3)
            stop(proc, logpath)  # mid-stream: round 2 is still being published and consumed
            await pub
            before = await committed(s)
            assert 0 < before < total
            await publish_records(s.kafka, rounds[2])
            proc = start(cfg, log)
            await wait_for(lambda: _ge(committed(s), total), 120, f"all {total} records committed", interval_s=0.2)
            stop(proc, logpath)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "restored checkpoint" in logpath.read_text()

    # what the next owner would restore
    got, covered = await checkpointed_totals(s, range(4))
    assert covered == total
    assert got == {a: (fleet.truth.spend[a], fleet.truth.payments[a]) for a in fleet.truth.spend}


async def checkpointed_totals(s, partitions) -> tuple[dict[str, tuple[int, int]], int]:
    """Per agent (sum, count) in the last window, as the next owner would restore them from the checkpoints of
    `partitions` (all must have one), and the sum of the input offsets those checkpoints cover."""
    producer = kafka_io.producer(s.kafka)
    await producer.start()
    try:
        store = CheckpointStore(producer, s.kafka.bootstrap, s.kafka.checkpoint_topic, s.kafka.group)
        restored = await store.read_latest(set(partitions))
    finally:
        await producer.stop()
    assert set(restored) == set(partitions)
    got: dict[str, tuple[int, int]] = {}
    covered = 0
    for r in restored.values():
        shard = Shard.restore(msgspec.msgpack.decode(r.blob)["shard"], s.shard_config())
        covered += sum(r.manifest.offsets.values())
        sums, counts = shard.agents.totals()
        for i, key in enumerate(shard.agents.keys):
            got[key_address(key)] = (int(sums[i, -1]), int(counts[i, -1]))
    return got, covered


async def _gt(coro, n):
    return (await coro) > n


async def _ge(coro, n):
    return (await coro) >= n
