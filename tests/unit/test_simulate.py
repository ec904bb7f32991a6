"""`spendwatch simulate` (and the demo's simulator) publish, when they stop, the on-chain transfers of their
last payments that were still waiting for their block: the chain goes on after the fleet stops, and a
watcher left running would otherwise report those settles `unsettled` an hour later."""

from __future__ import annotations

import asyncio

import msgspec

from watcher.config import load_settings
from watcher.simulate import publish
from watcher.simulate.fleet import Fleet


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def start(self): ...
    async def stop(self): ...

    async def send(self, topic, value, key=None):
        self.sent.append((topic, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_transfers_waiting_for_their_block_are_published_at_the_end(monkeypatch):
    producer = Producer()
    monkeypatch.setattr(publish.kafka_io, "producer", lambda k: producer)
    fleet = Fleet(agents=5, seed=2, chain_ratio=1.0, duplicate_ratio=0.0, malformed_ratio=0.0,
                  verify_fail_ratio=0.0, runaway_after_s=1e9)
    k = load_settings().kafka

    async def go() -> int:
        return await publish.run_simulator(k, fleet, rate_per_s=500, duration_s=0.3, stop=asyncio.Event())

    sent = asyncio.run(go())
    records = [msgspec.json.decode(v) for _, v in producer.sent]
    settled = {r["settleResponse"]["transaction"] for r in records if r["type"] == "x402.settle"}
    confirmed = {r["txHash"] for r in records if r["type"] == "chain.transfer" and r["status"] == "confirmed"}
    assert settled and settled == confirmed  # every payment's transfer confirmed (5 blocks after the last)
    assert sent == len(producer.sent) == fleet.truth.published
