"""`spendwatch bench`: the daemon's rate and the plain consumer's rate are timed alike (after the first batch),
so their ratio compares like with like. Fakes stand in for the broker and the clock: no timing here."""

from __future__ import annotations

import asyncio

import pytest

from watcher import bench
from watcher.batch import Counters


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


BATCHES = (5_000, 5_000, 5_000)  # --quick's 15,000 records as the consumers get them, a second apart


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(bench.time, "perf_counter", c)
    return c


def test_raw_consume_counts_only_the_records_it_timed(monkeypatch, clock):
    class Consumer:
        def __init__(self, **_):
            self.left = list(BATCHES)

        async def start(self): ...
        async def stop(self): ...
        def assign(self, tps): ...
        async def seek_to_beginning(self, *tps): ...

        async def getmany(self, **_):
            clock.t += 1.0
            return {"tp": [None] * self.left.pop(0)}

    monkeypatch.setattr(bench, "AIOKafkaConsumer", Consumer)
    rate = asyncio.run(bench._raw_consume("x:1", ["t"], 1, sum(BATCHES)))
    assert rate == 10_000 / 2.0  # two batches timed over two seconds (it said 15,000 / 2)


def test_daemon_rate_counts_only_the_records_it_timed(monkeypatch, clock):
    class Daemon:
        def __init__(self, settings, live_clock, on_batch):
            self.counters, self.on_batch = Counters(), on_batch

        def request_stop(self): ...

        async def run(self):
            for size in BATCHES:
                clock.t += 1.0
                self.counters.consumed += size
                self.on_batch(self)

    async def nothing(*_, **__):
        return 5_000.0

    monkeypatch.setattr(bench, "Daemon", Daemon)
    monkeypatch.setattr(bench, "ensure_topics", nothing)
    monkeypatch.setattr(bench, "publish_records", nothing)
    monkeypatch.setattr(bench, "_raw_consume", nothing)
    out = asyncio.run(bench.bench_kafka([None] * sum(BATCHES), "x:1"))
    assert out["kafka_events_per_s"] == 10_000 / 2.0  # it said (15,000 - 1,500) / 2


def test_steady_rate_refuses_a_single_batch():
    with pytest.raises(ValueError, match="one batch"):
        bench.steady_rate(5_000, 5_000, 1.0, 1.0)
