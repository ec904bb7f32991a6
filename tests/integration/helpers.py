"""Helpers for integration tests: run a Daemon against the real broker until a condition holds."""

from __future__ import annotations

import asyncio
import time

from watcher.config import load_settings
from watcher.daemon import Daemon


def make_settings(bootstrap: str, unique: str, partitions: int = 4, **kafka):
    k = {"bootstrap": bootstrap, "group": f"g-{unique}", "partitions": partitions,
         "payments_topic": f"pay-{unique}", "chain_topic": f"chain-{unique}",
         "dead_letter_topic": f"dlq-{unique}", "checkpoint_topic": f"ckpt-{unique}",
         "findings_topic": f"find-{unique}", "decisions_topic": f"dec-{unique}",
         "session_timeout_ms": 2000, "heartbeat_interval_ms": 300, "poll_timeout_ms": 100}
    k.update(kafka)
    return load_settings(None, kafka=k, checkpoint={"interval_seconds": 1.0})


async def run_until(daemon: Daemon, cond, timeout_s: float = 60.0) -> None:
    """Run the daemon until cond(daemon) is true, then stop it cleanly. Fails on timeout."""
    task = asyncio.create_task(daemon.run())
    try:
        await until(daemon, task, cond, timeout_s)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)


async def until(daemon: Daemon, task: asyncio.Task, cond, timeout_s: float = 60.0) -> None:
    """Wait until cond(daemon) is true while `task` runs the daemon. Fails on timeout or if the daemon stops."""
    deadline = time.monotonic() + timeout_s
    while not cond(daemon):
        if task.done():
            task.result()
            raise AssertionError("daemon exited before the condition held")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s; counters={daemon.counters}")
        await asyncio.sleep(0.05)


def agent_sums(daemon: Daemon, window: int = -1) -> dict[str, tuple[int, int]]:
    from watcher.events.addresses import key_address

    out = {}
    for shard in daemon.shards.values():
        sums, counts = shard.agents.totals()
        for i, key in enumerate(shard.agents.keys):
            out[key_address(key)] = (int(sums[i, window]), int(counts[i, window]))
    return out
