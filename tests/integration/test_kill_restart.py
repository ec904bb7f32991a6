"""SIGKILL mid-stream (no checkpoint on the way out), twice, then restart: the totals equal one clean pass.

Unlike SIGTERM, a killed daemon writes nothing more: its successor restores an older checkpoint and replays
the input after it, records the killed one had already counted (and committed) included.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.test_restart import _ge, _gt, checkpointed_totals, committed, stage, start, stop
from tests.polling import wait_for
from watcher.simulate.fleet import Fleet
from watcher.simulate.publish import publish_records

pytestmark = pytest.mark.integration


async def test_sigkill_mid_stream_then_restart_is_exact(kafka_bootstrap, unique, tmp_path):
    fleet = Fleet(agents=120, seed=11, runaway_after_s=10_000, duplicate_ratio=0.05)
    s, cfg, rounds, total, logpath = await stage(kafka_bootstrap, unique, tmp_path, fleet,
                                                 (2_000, 4_000, 6_000, 8_000), 300)
    with open(logpath, "ab") as log:
        await publish_records(s.kafka, rounds[0])
        proc = start(cfg, log)
        try:
            for i in (1, 2):
                # the next round goes out first: a commit past `base` then always comes (a wait before it
                # timed out whenever the killed daemon had committed its whole round before the kill)
                base = await committed(s)
                pub = asyncio.create_task(publish_records(s.kafka, rounds[i]))
                await wait_for(lambda: _gt(committed(s), base), 60, "a commit", interval_s=0.1)
                await asyncio.sleep(0.2)
                proc.kill()  # mid-stream: no checkpoint, no commit on the way out
                proc.wait(timeout=30)
                await pub
                proc = start(cfg, log)
            await publish_records(s.kafka, rounds[3])
            await wait_for(lambda: _ge(committed(s), total), 120, f"all {total} records committed", interval_s=0.2)
            stop(proc, logpath)
        finally:
            if proc.poll() is None:
                proc.kill()
    got, covered = await checkpointed_totals(s, range(4))
    assert covered == total
    assert got == {a: (fleet.truth.spend[a], fleet.truth.payments[a]) for a in fleet.truth.spend}
