"""The bridge's chain.progress heartbeat against a real anvil and a real Kafka-protocol broker: one record per
partition of a multi-partition topic, after the transfers it vouches for, and in quiet periods too."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.chain.conftest import PARTITIONS
from tests.polling import stays, wait_for
from watcher.chain.bridge import ChainBridge, connect_node
from watcher.chain.publisher import KafkaPublisher
from watcher.chain.testtoken import FACILITATOR, sign_authorization
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


# -- blocks the bridge never read are never vouched for, across restarts -------------------------------

async def test_a_restart_soon_after_a_first_start_never_vouches_for_the_skipped_blocks(
        chain, reader, settings_for, tmp_path, kafka_bootstrap, kafka_topic):
    """No checkpoint, no start_block: the bridge starts after the head (head0) and never reads blocks up to it.
    Restarted within `confirmations` blocks, the newest confirmed block (tip - confirmations) is one of those:
    the restarted bridge must not vouch for it (it remembered that only in memory before `readFrom`)."""
    await chain.mine(6)                                         # history the bridge will skip
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, confirmations=3,
                            progress_interval_seconds=0)
    async with _bridge(settings) as first:
        head0 = first.head_seen
        await chain.mine(1)
        await wait_for(lambda: first.head_seen >= head0 + 1, 15, f"the bridge at block {head0 + 1}")
    assert first.stats["progress"] == 0
    passes: list[int] = []

    def counting(s, wallets):
        node = connect_node(s, wallets)
        header = node.header

        async def counted(n):
            if n == "latest":                                    # a sync pass begins
                passes.append(1)
            return await header(n)
        node.header = counted
        return node

    async with KafkaPublisher(settings.kafka_bootstrap, settings.topic) as pub, \
            ChainBridge(settings, pub, connect=counting) as again:   # from the checkpoint at head0 + 1
        await wait_for(lambda: len(passes) >= 2 or again.failed, 15, "the restarted bridge's first whole pass")
        head = await chain.mine(4)                               # now head0 + 2 is confirmed: vouched
        await _progress_everywhere(reader, head - 3, f"progress for block {head - 3}")
    assert again.failed is None
    assert min(g.record.blockNumber for g in reader.progress) > head0, [g.record.id for g in reader.progress]


async def test_progress_never_vouches_for_blocks_before_start_block(chain, reader, settings_for, tmp_path,
                                                                    kafka_bootstrap, kafka_topic):
    """start_block just below the head: the newest confirmed block is below start_block, never read."""
    head = await chain.mine(8)
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, confirmations=3, start_block=head - 1,
                            progress_interval_seconds=0, http_url=chain.node.http_url, ws_url=None)
    async with _bridge(settings) as bridge:
        await wait_for(lambda: bridge.head_seen >= head, 15, f"the bridge at block {head}")
        top = await chain.mine(4)
        await _progress_everywhere(reader, top - 3, f"progress for block {top - 3}")
    assert bridge.failed is None
    assert min(g.record.blockNumber for g in reader.progress) >= head - 1, [g.record.id for g in reader.progress]


async def test_after_a_reorg_deeper_than_confirmations_progress_waits_for_the_blocks_read_again(
        chain, reader, settings_for, tmp_path, kafka_bootstrap, kafka_topic):
    """A reorg replaces blocks already vouched for (deeper than `confirmations`: the bridge cannot undo that).
    Afterwards a heartbeat is sent only for blocks of the new chain read, confirmed and acknowledged: on each
    partition the replacement payment comes before every heartbeat of the new chain that covers it."""
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, confirmations=2,
                            progress_interval_seconds=0)
    async with _bridge(settings) as bridge:
        _, old = await chain.token.pay(chain.agents[0], chain.merchant, 111)
        first = int(old["blockNumber"], 16)
        head = await chain.mine(3)
        await _progress_everywhere(reader, head - 2, f"progress for block {head - 2}")   # covers the payment
        vouched = bridge.progress_sent
        assert vouched >= first

        replacement = chain.token.payment(chain.agents[1], chain.merchant, 222)
        data = "0x" + sign_authorization(chain.token.address, 8453, replacement, 2**40).hex()
        await chain.rpc.call("anvil_reorg", head - first + 1, [[{"from": FACILITATOR, "to": chain.token.address,
                                                                "data": data, "gas": hex(200_000)}, 0]])
        head = await chain.mine(4)
        await _progress_everywhere(reader, head - 2, f"progress for block {head - 2} of the new chain")
        nonce = "0x" + replacement.nonce.hex()
        await reader.until(lambda rs: any(g.record.nonce == nonce and g.record.status == "confirmed" for g in rs),
                           what="the replacement payment confirmed")
    assert bridge.failed is None and bridge.stats["reorgs"] >= 1

    canonical = {}
    for n in range(first - 1, head + 1):
        canonical[n] = (await chain.rpc.call("eth_getBlockByNumber", hex(n), False))["hash"]
    new = [g for g in reader.progress if canonical.get(g.record.blockNumber) == g.record.blockHash]
    assert any(g.record.blockNumber > vouched for g in new)
    [read_from] = {g.record.readFrom for g in reader.progress}
    first_block = await chain.rpc.call("eth_getBlockByNumber", hex(read_from), False)
    assert read_from <= first and all(g.record.readFromTime.timestamp() == int(first_block["timestamp"], 16)
                                      for g in new if g.record.blockNumber > vouched)   # the new chain's block
    for p in range(PARTITIONS):                                # a partition's heartbeats never go back
        blocks = [g.record.blockNumber for g in sorted(reader.progress, key=lambda g: g.offset) if g.partition == p]
        assert blocks == sorted(set(blocks))
    [moved] = [g for g in reader.records if g.record.nonce == nonce and g.record.status == "confirmed"]
    assert moved.record.blockHash == canonical[moved.record.blockNumber]
    covering = [g for g in new if g.partition == moved.partition and g.record.blockNumber >= moved.record.blockNumber]
    assert covering and min(g.offset for g in covering) > moved.offset


async def test_a_restart_after_a_gap_vouches_only_for_blocks_read_again(chain, reader, settings_for, tmp_path,
                                                                       kafka_bootstrap, kafka_topic):
    """Payments mined while the bridge is stopped: restarted (HTTP polling, small eth_getLogs ranges) it reads
    the gap by range, and each heartbeat on a partition comes after the confirmed payments it covers."""
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, confirmations=2,
                            progress_interval_seconds=0, backfill_block_range=2)
    async with _bridge(settings):
        head = await chain.mine(3)
        await _progress_everywhere(reader, head - 2, f"progress for block {head - 2}")
    receipts = []
    for i, agent in enumerate(chain.agents * 2):              # the gap: six payments, a block between each
        receipts.append((await chain.token.pay(agent, chain.merchant, 500 + i))[1])
        await chain.mine(1)
    head = await chain.mine(3)
    polling = settings.model_copy(update={"ws_url": None, "http_url": chain.node.http_url})
    async with _bridge(polling) as again:
        await _progress_everywhere(reader, head - 2, f"progress for block {head - 2} after the restart")
        await reader.until(lambda rs: len(reader.ids(rs, "confirmed")) == len(receipts), what="6 confirmed")
    assert again.failed is None and again.stats["backfill_ranges"] >= 3
    assert max(g.record.blockNumber for g in reader.progress) <= head - 2
    for t in reader.by_status("confirmed"):
        covering = [g for g in reader.progress
                    if g.partition == t.partition and g.record.blockNumber >= t.record.blockNumber]
        assert covering and min(g.offset for g in covering) > t.offset, (t.record.id, t.partition)


async def test_progress_names_the_token_and_the_first_block_read_across_a_restart(chain, reader, settings_for,
                                                                                   tmp_path, kafka_bootstrap,
                                                                                   kafka_topic):
    """The watcher judges no settle older than the first block the bridge read, and keys what a heartbeat says
    by its token: both travel in every chain.progress record, the same after a restart (from the checkpoint)."""
    await chain.mine(3)                                         # history the bridge will skip
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, confirmations=2,
                            progress_interval_seconds=0)
    async with _bridge(settings) as first:
        read_from = first.head_seen + 1                         # started after the head: the next block is the first
        head = await chain.mine(3)
        await _progress_everywhere(reader, head - 2, f"progress for block {head - 2}")
    await chain.mine(1)                                         # a block to read at once after the restart
    async with _bridge(settings) as again:
        head = await chain.mine(2)
        await _progress_everywhere(reader, head - 2, f"progress for block {head - 2} after the restart")
    assert first.failed is None and again.failed is None
    block = await chain.rpc.call("eth_getBlockByNumber", hex(read_from), False)
    assert {(g.record.token, g.record.readFrom, int(g.record.readFromTime.timestamp())) for g in reader.progress} \
        == {(settings.token, read_from, int(block["timestamp"], 16))}
    assert settings.token.lower() == chain.token.address.lower()
    assert {(g.obs.asset, g.obs.read_from_ms) for g in reader.progress} == {(settings.token,
                                                                           int(block["timestamp"], 16) * 1000)}
    assert not any(g.record.watchesAll for g in reader.progress)          # a watch list: only those wallets


async def test_a_bridge_watching_every_wallet_says_so_in_its_heartbeats(chain, reader, settings_for, tmp_path,
                                                                        kafka_bootstrap, kafka_topic):
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, confirmations=1, watch_all=True,
                            watched_wallets=[], progress_interval_seconds=0)
    async with _bridge(settings):
        head = await chain.mine(2)
        await _progress_everywhere(reader, head - 1, f"progress for block {head - 1}")
    assert reader.progress and all(g.record.watchesAll and g.obs.watches_all for g in reader.progress)
