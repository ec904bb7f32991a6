"""What the bridge makes of what the node answers: real anvil, seen through a `Node` that can hide its newest
blocks (a node still syncing, or an RPC endpoint that balances nodes at different heights) or answer a call with
something unusable once.

Only another block at a height the bridge remembers proves a reorg. A node with no block there yet cannot say:
the bridge waits for it, and publishes nothing `reverted` (the old code walked back past the missing blocks
and reverted the pending transfers in them, which the watcher then un-counted). A reorg that drops blocks
already published `confirmed` is deeper than `confirmations`: the bridge cannot revert them, and says so. An
unusable answer is a node error: the bridge reconnects and reads the block again (the old code stopped).
"""

from __future__ import annotations

import contextlib
import logging

import pytest

from tests.chain.conftest import ListSink
from tests.polling import wait_for
from watcher.chain.abi import TRANSFER_TOPIC, Header, address_topic
from watcher.chain.bridge import ChainBridge
from watcher.chain.node import Node

pytestmark = pytest.mark.integration


class UnreliableNode(Node):
    """anvil, except that `latest` may be `lag` blocks old (the blocks above it do not exist), the blocks in
    `hidden` do not exist, and `garbage[method]` is the next answer of `method` (once)."""

    def __init__(self, settings, wallets) -> None:
        super().__init__(ws_url=None, http_url=settings.http_url, token=settings.token, wallets=wallets,
                         request_timeout_seconds=settings.request_timeout_seconds)
        self.lag = 0
        self.hidden: set[int] = set()
        self.garbage: dict[str, object] = {}

    async def request(self, method: str, params: list):
        if method in self.garbage:
            return {"result": self.garbage.pop(method)}
        return await super().request(method, params)

    async def header(self, number: int | str = "latest") -> Header | None:
        if number == "latest":
            real = await super().header("latest")
            return real if not self.lag else await super().header(real.number - self.lag)
        if number in self.hidden:
            return None
        if self.lag:
            real = await super().header("latest")
            if number > real.number - self.lag:
                return None
        return await super().header(number)


def _settings(settings_for, chain, tmp_path, **kw):
    """Polling over HTTP, to an in-memory sink."""
    return settings_for(chain, tmp_path, "127.0.0.1:9", "unused", ws_url=None, http_url=chain.node.http_url,
                        poll_interval_seconds=0.05, **kw)


@contextlib.asynccontextmanager
async def _polling(settings):
    """(bridge, sink, the UnreliableNodes it connected through), past the bridge's first pass."""
    nodes: list[UnreliableNode] = []

    def connect(s, wallets):
        nodes.append(UnreliableNode(s, wallets))
        return nodes[-1]

    sink = ListSink()
    async with ChainBridge(settings, sink, connect=connect) as bridge:
        await wait_for(lambda: bridge.head_seen >= 0, 15, "the bridge's first pass", show=lambda: bridge.stats)
        yield bridge, sink, nodes


def _statuses(sink: ListSink) -> list[str]:
    return [r.status for r in sink.records]


def _node_behind(bridge: ChainBridge) -> float | None:
    """The gauge ChainNodeBehind reads (the lag reads 0 meanwhile, so ChainBridgeStalled cannot tell)."""
    return bridge.metrics.registry.get_sample_value("spendwatch_chain_node_behind")


@pytest.mark.parametrize(("lag", "remembered"), [(2, 8), (6, 3)], ids=["within-remembered", "below-remembered"])
async def test_a_node_behind_the_bridge_reverts_nothing(lag, remembered, chain, settings_for, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="spendwatch.chain")
    settings = _settings(settings_for, chain, tmp_path, confirmations=2, max_reorg_depth=remembered)
    async with _polling(settings) as (bridge, sink, nodes):
        await chain.mine(lag)                                   # blocks the lagging node will not show
        await chain.token.pay(chain.agents[0], chain.merchant, 111)
        top = await chain.mine(0)
        await wait_for(lambda: bridge.head_seen == top and _statuses(sink) == ["pending"], 15,
                       "the payment published pending", show=lambda: (bridge.head_seen, _statuses(sink)))

        node = nodes[-1]
        node.lag = lag
        await wait_for(lambda: bridge.stats["node_behind"] >= 10 or bridge.stats["reorgs"], 30,
                       "10 passes with the node behind", show=lambda: (bridge.stats, _statuses(sink)))
        assert _statuses(sink) == ["pending"], "a node behind the bridge made it revert"
        assert bridge.stats["reorgs"] == 0
        assert _node_behind(bridge) == 1

        node.lag = 0
        await chain.mine(2)
        await wait_for(lambda: _statuses(sink) == ["pending", "confirmed"], 15, "the payment confirmed",
                       show=lambda: (bridge.head_seen, _statuses(sink)))
        assert bridge.failed is None and bridge.stats["reorgs"] == 0
        assert _node_behind(bridge) == 0
    behind = [r for r in caplog.records if "behind the bridge" in r.message]
    assert len(behind) == 1 and str(settings.checkpoint_path) in behind[0].message   # once per episode


async def test_a_node_without_the_tip_block_below_its_head_reverts_nothing(chain, settings_for, tmp_path):
    """The endpoint answers a head above the tip, then has no block at the tip (another node behind it)."""
    settings = _settings(settings_for, chain, tmp_path, confirmations=3)
    async with _polling(settings) as (bridge, sink, nodes):
        _, receipt = await chain.token.pay(chain.agents[0], chain.merchant, 111)
        block = int(receipt["blockNumber"], 16)
        await wait_for(lambda: bridge.head_seen == block and _statuses(sink) == ["pending"], 15,
                       "the payment published pending", show=lambda: (bridge.head_seen, _statuses(sink)))

        node = nodes[-1]
        node.hidden = {block}
        await chain.rpc.call("anvil_mine", hex(2))       # at once: a head 2 above the tip makes the bridge ask for it
        await wait_for(lambda: bridge.stats["node_behind"] >= 10 or bridge.stats["reorgs"], 30,
                       "10 passes without the tip block", show=lambda: (bridge.stats, _statuses(sink)))
        assert _statuses(sink) == ["pending"] and bridge.head_seen == block
        assert _node_behind(bridge) == 1

        node.hidden = set()
        await chain.mine(1)
        await wait_for(lambda: _statuses(sink) == ["pending", "confirmed"], 15, "the payment confirmed",
                       show=lambda: (bridge.head_seen, _statuses(sink)))
        assert bridge.failed is None and bridge.stats["reorgs"] == 0
        assert _node_behind(bridge) == 0


async def test_a_reorg_deeper_than_confirmations_is_logged_and_counted_as_deep(chain, settings_for, tmp_path,
                                                                                caplog):
    caplog.set_level(logging.WARNING, logger="spendwatch.chain")
    settings = _settings(settings_for, chain, tmp_path, confirmations=1)
    async with _polling(settings) as (bridge, sink, _):
        _, receipt = await chain.token.pay(chain.agents[0], chain.merchant, 111)
        block = int(receipt["blockNumber"], 16)
        await chain.mine(1)
        await wait_for(lambda: _statuses(sink) == ["pending", "confirmed"], 15, "the payment confirmed",
                       show=lambda: (bridge.head_seen, _statuses(sink)))
        await chain.rpc.call("anvil_reorg", 2, [])          # the payment's block and the one on top: empty now
        await wait_for(lambda: bridge.stats["reorgs"] == 1 and bridge.head_seen == block + 1, 15, "the reorg",
                       show=lambda: (bridge.head_seen, bridge.stats))
        assert bridge.stats["deep_reorgs"] == 1
        assert bridge.metrics.registry.get_sample_value("spendwatch_chain_deep_reorgs_total") == 1
    assert _statuses(sink) == ["pending", "confirmed"]      # the limit: a confirmed transfer is not reverted
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"blocks {block}..{block}" in error.message and "raise chain.confirmations" in error.message


def _log_of_another_block(chain) -> list[dict]:
    """A well-formed Transfer of a watched agent, but in a block other than the one asked for."""
    return [{"address": chain.token.address.lower(), "data": "0x" + f"{5:064x}", "blockNumber": "0x1",
             "topics": [TRANSFER_TOPIC, address_topic(chain.agents[0].address), address_topic(chain.merchant)],
             "blockHash": "0x" + "ab" * 32, "transactionHash": "0x" + "cd" * 32, "logIndex": "0x0"}]


def _log_with_a_malformed_block_number(chain) -> list[dict]:
    return [{**_log_of_another_block(chain)[0], "blockNumber": "0xzz"}]


BLOCK_WITH_A_MALFORMED_NUMBER = {"number": "0xzz", "hash": "0x" + "ab" * 32, "parentHash": "0x" + "cd" * 32,
                                 "timestamp": "0x1"}


@pytest.mark.parametrize(("method", "answer"), [("eth_getLogs", None), ("eth_getLogs", [{"address": "0x1"}]),
                                                 ("eth_getLogs", _log_of_another_block),
                                                 ("eth_getLogs", _log_with_a_malformed_block_number),
                                                 ("eth_getBlockByNumber", {"number": "0x1"}),
                                                 ("eth_getBlockByNumber", BLOCK_WITH_A_MALFORMED_NUMBER),
                                                 ("eth_getBlockByNumber", "0x1")],
                         ids=["logs-null", "log-without-fields", "log-of-another-block", "log-malformed-quantity",
                              "block-without-fields", "block-malformed-quantity", "block-not-an-object"])
async def test_an_unusable_answer_is_a_node_error_and_the_block_is_read_again(method, answer, chain, settings_for,
                                                                              tmp_path):
    settings = _settings(settings_for, chain, tmp_path, confirmations=1)
    async with _polling(settings) as (bridge, sink, nodes):
        nodes[-1].garbage[method] = answer(chain) if callable(answer) else answer
        await chain.token.pay(chain.agents[0], chain.merchant, 111)
        await chain.mine(1)
        await wait_for(lambda: _statuses(sink) == ["pending", "confirmed"] or bridge.failed, 15,
                       "the payment confirmed", show=lambda: (bridge.head_seen, _statuses(sink), bridge.stats))
        assert bridge.failed is None
        assert bridge.stats["reconnects"] == 1 and bridge.metrics.registry.get_sample_value(
            "spendwatch_chain_errors_total", {"kind": "node"}) == 1
