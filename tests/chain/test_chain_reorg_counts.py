"""Issue B end to end: a transfer reverted by a reorg un-counts the payment; its replacement is counted.

Real anvil with the test USDC, the real chain bridge publishing to the watcher's `x402.chain` topic, and
the real watcher Daemon consuming it (and `x402.payments`): the assertions are on the daemon's per-agent
window totals, not on topic records.

    block n    A pays 111 (and its facilitator reports the settle on x402.payments)
    block n+1  B pays 222 (no facilitator saw it: counted from the chain alone)
    block n+2  one block on top: both have a confirmation, neither is final (confirmations = 4)
    anvil_reorg(3, [])   n..n+2 replaced by empty blocks -> the bridge publishes both `reverted`
                         -> A and B un-counted (A too, although settled: the chain is the authority)
    eth_sendRawTransaction of both original transactions -> the same tx hashes mined in new blocks
                         -> published `pending` with other block hashes -> counted again, once
    C paid in block n-1, below the reorg: counted throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.integration.helpers import agent_sums, make_settings
from tests.polling import wait_for
from watcher.chain.bridge import ChainBridge
from watcher.chain.publisher import KafkaPublisher
from watcher.daemon import Daemon
from watcher.simulate.publish import publish_records
from watcher.simulate.records import encode, settle_record

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def running(daemon: Daemon):
    task = asyncio.create_task(daemon.run(), name="daemon")
    try:
        yield task
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)


async def test_reorg_uncounts_then_the_replacement_counts_again(chain, settings_for, tmp_path, kafka_bootstrap,
                                                                unique):
    s = make_settings(kafka_bootstrap, unique, partitions=3)
    daemon = Daemon(s)
    a, b, c = chain.agents
    A, B, C = a.address, b.address, c.address

    def totals() -> dict[str, tuple[int, int]]:
        got = agent_sums(daemon)   # the largest window: (sum of base units, payments)
        return {who: got.get(who, (0, 0)) for who in (A, B, C)}

    def expect(want: dict[str, tuple[int, int]], what: str, task):
        return wait_for(lambda: totals() == want, 30, what, task=task,
                        show=lambda: (totals(), daemon.counters, bridge.stats))

    async with running(daemon) as task:
        await wait_for(lambda: daemon.started.is_set() and len(daemon.shards) == 3, 30,
                       "the daemon to own its partitions", task=task)
        chain_settings = settings_for(chain, tmp_path, kafka_bootstrap, s.kafka.chain_topic, confirmations=4)
        async with KafkaPublisher(kafka_bootstrap, s.kafka.chain_topic) as pub, \
                ChainBridge(chain_settings, pub) as bridge:
            await asyncio.wait_for(bridge.connected.wait(), 15)
            await wait_for(lambda: bridge.head_seen >= 0, 30, "the bridge's first pass", task=task)

            _, below = await chain.token.pay(c, chain.merchant, 50)           # block n-1: survives the reorg
            _, paid_a = await chain.token.pay(a, chain.merchant, 111)         # block n
            _, paid_b = await chain.token.pay(b, chain.merchant, 222)         # block n+1
            await chain.mine(1)                                               # block n+2
            first_dropped = int(paid_a["blockNumber"], 16)
            assert int(below["blockNumber"], 16) == first_dropped - 1
            assert int(paid_b["blockNumber"], 16) == first_dropped + 1
            raw = {}
            for r in (paid_a, paid_b):   # the signed transactions, to mine them again after the reorg
                raw[r["transactionHash"]] = await chain.rpc.call("eth_getRawTransactionByHash", r["transactionHash"])
            # A's facilitator reports the settle too: it alone would count the payment
            await publish_records(s.kafka, [("payments", A.encode(), encode(settle_record(
                event_id=f"settle-{unique}", ts_ms=int(time.time() * 1000), payer=A, pay_to=chain.merchant,
                amount=111, tx=paid_a["transactionHash"])))])
            await expect({A: (111, 1), B: (222, 1), C: (50, 1)}, "the three payments counted", task)
            # every record so far processed (3 pending transfers + 1 settle), so the reorg comes after them
            await wait_for(lambda: daemon.counters.processed >= 4, 30, "the pending transfers processed", task=task,
                           show=lambda: daemon.counters)
            assert bridge.stats["reverted"] == 0

            await chain.rpc.call("anvil_reorg", 3, [])   # blocks n..n+2 replaced by empty ones
            for r in (paid_a, paid_b):
                assert await chain.rpc.call("eth_getTransactionReceipt", r["transactionHash"]) is None
            await expect({A: (0, 0), B: (0, 0), C: (50, 1)}, "A and B un-counted after the reorg", task)
            assert bridge.stats["reverted"] == 2 and bridge.stats["reorgs"] >= 1

            # the same signed transactions, mined again in the new chain
            again = {}
            for h, tx in raw.items():
                assert await chain.rpc.call("eth_sendRawTransaction", tx) == h
                again[h] = await chain.rpc.receipt(h)
            for old in (paid_a, paid_b):
                new = again[old["transactionHash"]]
                assert new["blockHash"] != old["blockHash"] and int(new["blockNumber"], 16) > first_dropped + 1
            await expect({A: (111, 1), B: (222, 1), C: (50, 1)}, "the re-mined transfers counted again", task)

            await chain.mine(4)
            await wait_for(lambda: bridge.stats["confirmed"] >= 3, 30, "the replacements confirmed", task=task,
                           show=lambda: bridge.stats)
            await wait_for(lambda: daemon.counters.processed >= 4 + 2 + 2 + 3, 30, "the confirmations processed",
                           task=task, show=lambda: daemon.counters)
            assert totals() == {A: (111, 1), B: (222, 1), C: (50, 1)}   # confirmed: counted once, not twice
            assert bridge.failed is None
        assert daemon.counters.dead_lettered == 0
