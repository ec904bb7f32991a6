"""Reorgs, restarts of the bridge, and a node that goes away and comes back: real anvil, real Kafka."""

from __future__ import annotations

import asyncio

import pytest

from tests.polling import wait_for
from watcher.chain.bridge import ChainBridge
from watcher.chain.publisher import KafkaPublisher
from watcher.chain.testtoken import FACILITATOR, sign_authorization
from watcher.events.wire import chain_transfer_id

pytestmark = pytest.mark.integration


def _id(receipt: dict) -> str:
    transfer_log = receipt["logs"][-1]
    return chain_transfer_id(8453, receipt["transactionHash"], int(transfer_log["logIndex"], 16))


def _statuses(reader, tx_id: str) -> list[tuple[str, str]]:
    return [(g.record.status, g.record.blockHash) for g in reader.records if g.record.id == tx_id]


async def _started(bridge: ChainBridge, reader) -> None:
    await asyncio.wait_for(bridge.connected.wait(), 15)
    await reader.until(lambda _: bridge.head_seen >= 0, what="the bridge's first pass")


async def test_reorg_reverts_dropped_and_publishes_replacements(chain, reader, settings_for, tmp_path,
                                                                kafka_bootstrap, kafka_topic):
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, confirmations=3)
    agent = chain.agents[0]
    async with KafkaPublisher(kafka_bootstrap, kafka_topic) as pub, ChainBridge(settings, pub) as bridge:
        await _started(bridge, reader)
        _, old = await chain.token.pay(agent, chain.merchant, 111)
        old_id = _id(old)
        await reader.until(lambda rs: old_id in reader.ids(rs, "pending"), what="the payment pending")

        # anvil_reorg: the block is replaced by one holding another payment of the same agent
        new_payment = chain.token.payment(agent, chain.merchant, 222)
        data = "0x" + sign_authorization(chain.token.address, 8453, new_payment, 2**40).hex()
        await chain.rpc.call("anvil_reorg", 1, [[{"from": FACILITATOR, "to": chain.token.address, "data": data,
                                                 "gas": hex(200_000)}, 0]])
        await reader.until(lambda rs: old_id in reader.ids(rs, "reverted") and any(
            g.record.nonce == "0x" + new_payment.nonce.hex() for g in rs), what="revert + replacement")
        assert _statuses(reader, old_id) == [("pending", old["blockHash"]), ("reverted", old["blockHash"])]
        replacement = next(g.record for g in reader.records if g.record.nonce == "0x" + new_payment.nonce.hex())
        assert replacement.status == "pending" and replacement.value == "222"
        assert replacement.blockNumber == int(old["blockNumber"], 16) and replacement.blockHash != old["blockHash"]
        reverted = next(g for g in reader.records if g.record.status == "reverted")
        assert reverted.obs.amount == 111 and reverted.key == agent.address.encode()

        # anvil_rollback: the block is dropped; the next block at that height is empty
        _, gone = await chain.token.pay(agent, chain.merchant, 333)
        gone_id = _id(gone)
        await reader.until(lambda rs: gone_id in reader.ids(rs, "pending"), what="the second payment pending")
        await chain.rpc.call("anvil_rollback", 1)
        await chain.mine(1)
        await reader.until(lambda rs: gone_id in reader.ids(rs, "reverted"), what="the rolled-back payment reverted")

        await chain.mine(4)
        await reader.until(lambda rs: replacement.id in reader.ids(rs, "confirmed"), what="the replacement confirmed")
        assert "confirmed" not in {s for s, _ in _statuses(reader, old_id)}
        assert "confirmed" not in {s for s, _ in _statuses(reader, gone_id)}
        assert bridge.stats["reorgs"] >= 2 and bridge.failed is None


async def test_restart_backfills_what_happened_while_down(chain, reader, settings_for, tmp_path,
                                                          kafka_bootstrap, kafka_topic):
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, confirmations=2,
                            backfill_block_range=3)
    a0, a1 = chain.agents[0], chain.agents[1]
    async with KafkaPublisher(kafka_bootstrap, kafka_topic) as pub:
        async with ChainBridge(settings, pub) as bridge:
            await _started(bridge, reader)
            _, r_before = await chain.token.pay(a0, chain.merchant, 1)
            await reader.until(lambda rs: _id(r_before) in reader.ids(rs, "pending"), what="pending before the stop")
        assert settings.checkpoint_path.exists()

        # while the bridge is down: 8 payments over 8 blocks (several backfill ranges), then 1 recent one
        down = [(await chain.token.pay(a1 if i % 2 else a0, chain.merchant, 100 + i))[1] for i in range(8)]
        await chain.mine(3)
        _, recent = await chain.token.pay(a1, chain.merchant, 999)

        async with ChainBridge(settings, pub) as bridge2:
            want = {_id(r) for r in [r_before, *down]}
            await reader.until(lambda rs: want <= reader.ids(rs, "confirmed") and _id(recent) in reader.ids(rs),
                               what="every transfer made while down")
            assert bridge2.stats["backfill_ranges"] >= 3
            await chain.mine(2)
            await reader.until(lambda rs: _id(recent) in reader.ids(rs, "confirmed"), what="the recent one confirmed")
            # nothing published twice in one status, nothing missing
            per_status = [(g.record.id, g.record.status) for g in reader.records]
            assert len(per_status) == len(set(per_status))
            assert reader.ids(reader.records, "confirmed") == want | {_id(recent)}
            assert [g.record.value for g in reader.records if g.record.id == _id(down[3])] == ["103"]


@pytest.mark.parametrize("mode", ["ws", "http"])
async def test_node_killed_and_restarted(mode, chain, reader, settings_for, tmp_path, kafka_bootstrap, kafka_topic):
    extra = {"ws_url": None, "http_url": chain.node.http_url} if mode == "http" else {}
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, confirmations=1, **extra)
    agent = chain.agents[2]
    async with KafkaPublisher(kafka_bootstrap, kafka_topic) as pub, ChainBridge(settings, pub) as bridge:
        await _started(bridge, reader)
        _, r1 = await chain.token.pay(agent, chain.merchant, 5)
        await reader.until(lambda rs: _id(r1) in reader.ids(rs, "pending"), what="pending before the node stops")
        pid = chain.node.pid
        await chain.node.stop()          # SIGTERM: anvil writes its --state file and exits
        await reader.until(lambda _: not bridge.connected.is_set(), timeout_seconds=15,
                           what="the bridge to notice the node is gone")
        await chain.node.start()         # same port, same chain
        assert chain.node.pid != pid
        await asyncio.wait_for(bridge.connected.wait(), 15)
        _, r2 = await chain.token.pay(agent, chain.merchant, 6)
        await chain.mine(1)
        await reader.until(lambda rs: {_id(r1), _id(r2)} <= reader.ids(rs, "confirmed"), what="both confirmed")
        assert bridge.stats["reconnects"] >= 1 and bridge.stats["reverted"] == 0 and bridge.failed is None


async def test_reorg_while_the_bridge_is_down(chain, reader, settings_for, tmp_path, kafka_bootstrap, kafka_topic):
    """The checkpoint keeps recent block hashes and unconfirmed transfers, so a block dropped while the
    bridge was stopped is still found, and its transfer published reverted."""
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, confirmations=3)
    agent = chain.agents[1]
    async with KafkaPublisher(kafka_bootstrap, kafka_topic) as pub:
        async with ChainBridge(settings, pub) as bridge:
            await _started(bridge, reader)
            _, doomed = await chain.token.pay(agent, chain.merchant, 77)
            await reader.until(lambda rs: _id(doomed) in reader.ids(rs, "pending"), what="pending")
        await chain.rpc.call("anvil_reorg", 1, [])        # drops the payment's block while nobody watches
        _, later = await chain.token.pay(agent, chain.merchant, 78)
        async with ChainBridge(settings, pub) as bridge:
            await reader.until(lambda rs: _id(doomed) in reader.ids(rs, "reverted") and _id(later) in reader.ids(rs),
                               what="the dropped payment reverted after the restart")
            await chain.mine(3)
            await reader.until(lambda rs: _id(later) in reader.ids(rs, "confirmed"), what="the later one confirmed")
            assert "confirmed" not in {s for s, _ in _statuses(reader, _id(doomed))}


async def test_kafka_outage_loses_nothing(chain, settings_for, tmp_path, unique, make_reader):
    """Records Kafka did not acknowledge are published again once it is back (from the checkpoint)."""
    from watcher.broker import TansuBroker

    port_broker = TansuBroker()   # a broker of its own: this test stops it
    topic = f"x402.chain.outage{unique}"
    settings = settings_for(chain, tmp_path, port_broker.bootstrap, topic, confirmations=1)
    agent = chain.agents[0]
    async with port_broker:
        async with KafkaPublisher(port_broker.bootstrap, topic, request_timeout_ms=2_000) as pub, \
                ChainBridge(settings, pub) as bridge:
            await asyncio.wait_for(bridge.connected.wait(), 15)
            await wait_for(lambda: bridge.head_seen >= 0, 30, "the bridge's first pass")
            _, r1 = await chain.token.pay(agent, chain.merchant, 1)
            await wait_for(lambda: bridge.stats["pending"] >= 1, 30, "the first payment published pending",
                           show=lambda: bridge.stats)
            port_broker.stop()                                     # Kafka gone (and, being Tansu, empty)
            _, r2 = await chain.token.pay(agent, chain.merchant, 2)
            await chain.mine(1)
            await wait_for(lambda: bridge.stats["reconnects"] >= 1, 30, "a reconnect after Kafka went away",
                           show=lambda: bridge.stats)
            again = TansuBroker(port=port_broker.port)
            async with again:
                async with make_reader(again.bootstrap, topic, create=True) as r:
                    await r.until(lambda rs: {_id(r1), _id(r2)} <= r.ids(rs, "confirmed"), timeout_seconds=40,
                                  what="every record after Kafka came back")
            assert bridge.failed is None
