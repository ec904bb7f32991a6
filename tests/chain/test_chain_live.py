"""The bridge against a real anvil and a real Kafka-protocol broker: live WebSocket and HTTP polling."""

from __future__ import annotations

import pytest

from watcher.chain.bridge import ChainBridge
from watcher.chain.publisher import KafkaPublisher

pytestmark = pytest.mark.integration


async def _wait_connected(bridge: ChainBridge) -> None:
    import asyncio
    await asyncio.wait_for(bridge.connected.wait(), 15)


@pytest.mark.parametrize("mode", ["ws", "http"])
async def test_payments_pending_then_confirmed(mode, chain, reader, settings_for, tmp_path, kafka_bootstrap,
                                               kafka_topic):
    # Over WebSocket the poll interval is only a safety re-sync: at 30 s the waits below (20 s) time out unless
    # the subscriptions wake the bridge.
    extra = {"ws_url": None, "http_url": chain.node.http_url} if mode == "http" else {"poll_interval_seconds": 30.0}
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, **extra)
    agent, agent2 = chain.agents[0], chain.agents[1]
    async with KafkaPublisher(kafka_bootstrap, kafka_topic) as pub, ChainBridge(settings, pub) as bridge:
        await _wait_connected(bridge)
        await reader.until(lambda _: bridge.head_seen >= 0, what="the bridge's first pass")
        p1, r1 = await chain.token.pay(agent, chain.merchant, 1_250_000)
        # no block is mined until the bridge has seen this one, so it must be published pending first
        got = await reader.until(lambda rs: r1["transactionHash"] in {g.record.txHash for g in rs},
                                 what="the first payment")
        assert [g.record.status for g in got] == ["pending"]
        first = got[0]
        p2, r2 = await chain.token.pay(agent2, chain.merchant, 40_000)
        _, r3 = await chain.token.pay(chain.stranger, chain.merchant, 7)          # nobody watches it
        r4 = await chain.token.transfer(chain.merchant, agent.address, 5)        # into a watched wallet
        got = await reader.until(lambda rs: r2["transactionHash"] in {g.record.txHash for g in rs},
                                 what="the second payment")
        assert first.record.authorizer == agent.address            # the agent, not the facilitator
        assert first.record.from_ == agent.address
        assert first.key == agent.address.encode()
        assert first.record.nonce == "0x" + p1.nonce.hex()
        assert first.record.value == "1250000"
        assert first.record.blockHash == r1["blockHash"]
        assert first.record.blockNumber == int(r1["blockNumber"], 16)
        assert first.record.confirmations == 0 and first.record.blockTime is not None
        assert first.record.logIndex == int(r1["logs"][1]["logIndex"], 16)   # the Transfer, after AuthorizationUsed
        assert first.obs.agent == agent.address and first.obs.amount == 1_250_000
        assert first.obs.merchant == chain.merchant and first.obs.chain_id == 8453
        assert first.obs.nonce == first.record.nonce
        await chain.mine(2)
        await reader.until(lambda rs: len(reader.ids(rs, "confirmed")) >= 2, what="2 confirmed transfers")
        await chain.mine(1)
        await reader.until(lambda _: bridge.head_seen >= int(r4["blockNumber"], 16) + 3, what="the bridge at the head")
        got = reader.records
        confirmed = {g.record.id: g.record for g in got if g.record.status == "confirmed"}
        assert set(confirmed) == reader.ids(got)
        assert {c.txHash for c in confirmed.values()} == {r1["transactionHash"], r2["transactionHash"]}
        assert all(c.confirmations >= 2 for c in confirmed.values())
        seen_tx = {g.record.txHash for g in got}
        assert r3["transactionHash"] not in seen_tx and r4["transactionHash"] not in seen_tx
        assert bridge.failed is None
        assert bridge.stats["reconnects"] == 0, dict(bridge.stats)
        if mode == "ws":
            assert bridge.stats["notifications"] > 0, dict(bridge.stats)
    assert bridge.stats["reverted"] == 0


async def test_watch_all_publishes_every_transfer(chain, reader, settings_for, tmp_path, kafka_bootstrap,
                                                  kafka_topic):
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, watch_all=True, watched_wallets=[],
                            confirmations=0)
    async with KafkaPublisher(kafka_bootstrap, kafka_topic) as pub, ChainBridge(settings, pub) as bridge:
        await _wait_connected(bridge)
        await reader.until(lambda _: bridge.head_seen >= 0, what="the bridge's first pass")
        _, r1 = await chain.token.pay(chain.stranger, chain.merchant, 7)
        r2 = await chain.token.transfer(chain.merchant, chain.stranger.address, 3)
        got = await reader.until(lambda rs: len(rs) >= 2, what="2 confirmed transfers")
        by_tx = {g.record.txHash: g.record for g in got}
        assert by_tx[r1["transactionHash"]].authorizer == chain.stranger.address
        plain = by_tx[r2["transactionHash"]]
        assert plain.authorizer is None and plain.nonce is None and plain.from_ == chain.merchant
        assert {g.record.status for g in got} == {"confirmed"}      # confirmations = 0
