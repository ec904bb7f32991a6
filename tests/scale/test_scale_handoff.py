"""N replicas in one group, one SIGKILLed mid-stream: the fleet ends exactly where one process ends.

The same input topics are read twice: by one `spendwatch run` process (the reference) and by N replicas
in another group, one of which is SIGKILLed while records are still arriving, so its partitions (windows,
dedupe memory, detector and breaker state, undelivered webhooks) are taken over by the survivors from its
last checkpoint and the input after it is replayed. Compared:

- per-agent 24h totals (from the newest checkpoints) equal the simulator's truth, in both runs;
- the set of decision ids (and each one's kind) is the reference's; repeats are allowed;
- each agent's breaker state and trip count is the reference's;
- the webhooks received carry the reference's idempotency keys, each with one body, the reference's.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.breaker.conftest import Recorder
from tests.polling import wait_for
from tests.scale.harness import Run, hooks_by_key
from watcher.simulate.fleet import Fleet
from watcher.simulate.publish import publish_records
from watcher.sources.kafka import ensure_topics

pytestmark = pytest.mark.integration

ACQUIRED = re.compile(r"partition (\d+): (restored checkpoint|no checkpoint)")


def stream(fleet: Fleet, n: int, start_ms: int, rate_per_s: float) -> tuple[list, int]:
    """About n more payments from start_ms on (event time); returns the records and the next start."""
    out, now = [], start_ms
    target = fleet.seq + n
    while fleet.seq < target:
        out.extend(fleet.tick(start_ms, now, 1000, rate_per_s))
        now += 1000
    return out, now


async def paced(run_k, records, chunk: int = 500, pause_s: float = 0.15) -> None:
    for i in range(0, len(records), chunk):
        await publish_records(run_k, records[i: i + chunk])
        await asyncio.sleep(pause_s)


async def until_done(run: Run, total: int, timeout_s: float = 90) -> None:
    await wait_for(lambda: _ge(run.committed(), total), timeout_s, f"{run.name}: all {total} records committed")

    missing: list = []

    async def hooks_in() -> bool:   # every change that needs a webhook has reached the receiver
        got = set(hooks_by_key(run.recorder))
        missing[:] = [c for c in await run.changes() if c.webhook is not None and c.id not in got]
        return not missing

    try:
        await wait_for(hooks_in, 60, f"{run.name}: every webhook delivered", interval_s=0.3)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; undelivered: {[(c.partition, c.seq, c.agent, c.kind, c.id) for c in missing]}"
                             f"\n{run.logs()[-6000:]}") from None


async def _ge(coro, n) -> bool:
    return (await coro) >= n


async def scenario(bootstrap: str, unique: str, tmp_path, *, replicas: int, partitions: int,
                   checkpoint_s: float) -> None:
    fleet = Fleet(agents=240, merchants=30, seed=11, runaway_after_s=4, runaway_per_s=20, chain_ratio=0.0)
    t0 = int(time.time() * 1000) - 8 * 60_000     # minutes old: inside every window for the whole test
    rounds, at = [], t0
    for n in (3_000, 9_000, 4_000):
        recs, at = stream(fleet, n, at, 400)
        rounds.append(recs)
    total = sum(len(r) for r in rounds)

    multi = Run(bootstrap, unique, f"r{replicas}", partitions, tmp_path, "", checkpoint_s)
    ref = Run(bootstrap, unique, "ref", partitions, tmp_path, "")
    rec_multi, rec_ref = await Recorder().start(), await Recorder().start()
    multi.webhook_url, multi.recorder = rec_multi.url + "/hook", rec_multi
    ref.webhook_url, ref.recorder = rec_ref.url + "/hook", rec_ref
    await ensure_topics(multi.settings().kafka)
    k = multi.settings().kafka
    try:
        # -- N replicas, one SIGKILLed while round 2 is still arriving ---------------------------------
        await publish_records(k, rounds[0])
        for i in range(replicas):
            multi.start(i)
        await wait_for(lambda: all(ACQUIRED.search(multi.log_path(i).read_text()) for i in range(replicas)), 60,
                       "every replica owning partitions")
        await wait_for(lambda: _ge(multi.committed(), 1), 60, "the first commit")
        pub = asyncio.create_task(paced(k, rounds[1]))
        await asyncio.sleep(1.5)                       # the victim has decided by now
        await wait_for(lambda: _every_partition_checkpointed(multi), 60, "a checkpoint of every partition")
        victim = multi.procs[0]
        owned = {int(m.group(1)) for m in ACQUIRED.finditer(multi.log_path(0).read_text())}
        at_kill = await multi.committed()
        multi.kill(victim)
        await pub
        assert at_kill < total
        await publish_records(k, rounds[2])
        await until_done(multi, total)
        multi.stop_all()
        survivors = "\n".join(multi.log_path(i).read_text() for i in range(1, replicas))
        taken = {int(p) for p in re.findall(r"partition (\d+): restored checkpoint", survivors)}
        assert owned & taken, f"no survivor restored the victim's partitions {owned}:\n{survivors[-3000:]}"

        # -- the reference: one process over the same records --------------------------------------------
        ref.start(0)
        await until_done(ref, total)
        ref.stop_all()

        # -- compare -------------------------------------------------------------------------------------
        truth = {a: (fleet.truth.spend[a], fleet.truth.payments[a]) for a in fleet.truth.spend}
        for run in (ref, multi):
            got, covered = await run.totals()
            assert covered == total, run.name
            assert {a: v for a, v in got.items() if v != (0, 0)} == truth, run.name

        d_ref, d_multi = await ref.decisions(), await multi.decisions()
        kinds_ref = {d["id"]: d["kind"] for d in d_ref}
        kinds_multi = {d["id"]: d["kind"] for d in d_multi}
        assert "freeze" in kinds_ref.values()
        assert kinds_multi == kinds_ref, _diff(kinds_ref, kinds_multi, d_ref + d_multi)

        assert await multi.breaker_states() == await ref.breaker_states()

        h_ref, h_multi = hooks_by_key(rec_ref), hooks_by_key(rec_multi)
        assert set(h_multi) == set(h_ref)                          # no webhook lost, none invented
        assert all(len(bodies) == 1 for bodies in h_multi.values())  # a repeat carries the same body
        assert h_multi == h_ref
        freezes = [h for h in rec_multi.at("/hook") if h.json()["type"] == "freeze"]
        assert freezes and all(h.sig_ok for h in rec_multi.at("/hook"))
        print(f"\n{replicas} replicas: {total} records, {len(kinds_ref)} decisions "
              f"({sum(1 for v in kinds_ref.values() if v == 'freeze')} freezes), repeats: decisions "
              f"{len(d_multi) - len(kinds_multi)}, webhooks {len(rec_multi.at('/hook')) - len(h_multi)}; "
              f"victim owned {sorted(owned)}, survivors restored {sorted(taken)}")
    finally:
        multi.kill_all()
        ref.kill_all()
        await rec_multi.stop()
        await rec_ref.stop()


def _diff(a: dict, b: dict, ds: list[dict]) -> str:
    by_id = {d["id"]: d for d in ds}
    only_a = [by_id[i] for i in set(a) - set(b)]
    only_b = [by_id[i] for i in set(b) - set(a)]
    return f"only in the reference: {only_a[:5]}\nonly in the replicas: {only_b[:5]}"


async def _every_partition_checkpointed(run: Run) -> bool:
    return len(await run.checkpoints()) >= run.partitions


async def test_two_replicas_one_sigkilled(kafka_bootstrap, unique, tmp_path):
    """Checkpoints every 3 s: the survivor replays up to 3 s of the victim's input and decides again."""
    await scenario(kafka_bootstrap, unique, tmp_path, replicas=2, partitions=4, checkpoint_s=3.0)


async def test_three_replicas_one_sigkilled(kafka_bootstrap, unique, tmp_path):
    await scenario(kafka_bootstrap, unique, tmp_path, replicas=3, partitions=6, checkpoint_s=0.5)
