"""The bridge's chain.progress heartbeat against a real anvil and a real Kafka-protocol broker: one record per
partition of a multi-partition topic, after the transfers it vouches for, and in quiet periods too."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.chain.conftest import PARTITIONS
from tests.polling import stays, wait_for
from watcher.chain.bridge import ChainBridge
from watcher.chain.publisher import KafkaPublisher
from watcher.events import Kind

pytestmark = pytest.mark.integration


def _newest_progress(reader) -> dict[int, int]:
    """partition -> the highest block a chain.progress record on it vouches for."""
    out: dict[int, int] = {}
    for g in reader.progress:
        out[g.partition] = max(out.get(g.partition, -1), g.record.blockNumber)
    return out


async def _progress_everywhere(reader, block: int, what: str) -> None:
    async def every_partition_at(block_: int) -> bool:
        await reader.poll()
        got = _newest_progress(reader)
        return len(got) == PARTITIONS and min(got.values()) >= block_

    await wait_for(lambda: every_partition_at(block), 30, what, show=lambda: _newest_progress(reader))


@contextlib.asynccontextmanager
async def _bridge(settings):
    """A bridge publishing to settings.topic, past its first pass."""
    async with KafkaPublisher(settings.kafka_bootstrap, settings.topic) as pub, ChainBridge(settings, pub) as bridge:
        await asyncio.wait_for(bridge.connected.wait(), 15)
        await wait_for(lambda: bridge.head_seen >= 0, 15, "the bridge's first pass")
        yield bridge


async def test_progress_reaches_every_partition_after_the_transfers_it_covers(chain, reader, settings_for,
                                                                               tmp_path, kafka_bootstrap,
                                                                               kafka_topic):
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, confirmations=2,
                            progress_interval_seconds=0)
    async with _bridge(settings) as bridge:
        start = bridge.head_seen

        # a quiet period: blocks with no transfer at all are vouched for on every partition
        quiet = await chain.mine(3)
        await _progress_everywhere(reader, quiet - 2, f"progress for block {quiet - 2} with no transfers")
        assert reader.records == []
        assert all(g.record.blockNumber > start for g in reader.progress)   # skipped at first start: never vouched

        # payments of three agents (three keys), then enough blocks to confirm them all
        receipts = [(await chain.token.pay(agent, chain.merchant, 1_000 + i))[1]
                    for i, agent in enumerate(chain.agents)]
        last = max(int(r["blockNumber"], 16) for r in receipts)
        head = await chain.mine(2)
        await _progress_everywhere(reader, head - 2, f"progress for block {head - 2}")
        await reader.until(lambda rs: len(reader.ids(rs, "confirmed")) == len(receipts), what="3 confirmed")
        assert head - 2 >= last

        # a reorg as deep as the confirmations: the blocks it replaces were never vouched for
        await chain.rpc.call("anvil_reorg", 2, [])
        head = await chain.mine(3)
        await _progress_everywhere(reader, head - 2, f"progress for block {head - 2} after the reorg")
        assert bridge.failed is None and bridge.stats["reorgs"] >= 1

    # on each partition, every confirmed transfer comes before the first progress record covering its block
    confirmed = [g for g in reader.records if g.record.status == "confirmed"]
    assert {g.record.txHash for g in confirmed} == {r["transactionHash"] for r in receipts}
    for t in confirmed:
        covering = [g for g in reader.progress
                    if g.partition == t.partition and g.record.blockNumber >= t.record.blockNumber]
        assert covering and min(g.offset for g in covering) > t.offset, (t.record.id, t.partition)
    # a progress record only covers confirmed blocks (none was reorged away), and names them as the node does
    for g in reader.progress:
        block = await chain.rpc.call("eth_getBlockByNumber", hex(g.record.blockNumber), False)
        assert g.record.blockHash == block["hash"]
        assert int(g.record.blockTime.timestamp()) == int(block["timestamp"], 16)
        assert g.record.id == f"8453:{g.record.blockNumber}" and g.obs.kind == Kind.PROGRESS
    sent = sorted({g.record.blockNumber for g in reader.progress})
    assert [sorted(g.record.blockNumber for g in reader.progress if g.partition == p) for p in range(PARTITIONS)] \
        == [sent] * PARTITIONS                                                  # each one on every partition
    assert bridge.progress_sent == sent[-1] and bridge.stats["progress"] == len(sent)
    assert bridge.metrics.registry.get_sample_value("spendwatch_chain_progress_block") == sent[-1]


async def test_progress_is_sent_at_most_once_per_interval(chain, reader, settings_for, tmp_path, kafka_bootstrap,
                                                          kafka_topic):
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, confirmations=1,
                            progress_interval_seconds=3600)
    async with _bridge(settings) as bridge:
        head = await chain.mine(2)
        await _progress_everywhere(reader, head - 1, "the first progress record")
        head = await chain.mine(3)
        await wait_for(lambda: bridge.head_seen >= head, 15, f"the bridge at block {head}")
        await stays(lambda: bridge.stats["progress"] == 1, 1.0, "one progress record within the interval")
        await reader.poll()
    assert len(reader.progress) == PARTITIONS
