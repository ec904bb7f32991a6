"""Backfill over eth_getLogs ranges a provider refuses, with an in-process JSON-RPC stand-in for the node.

anvil never refuses a range, so `StandInNode` answers the bridge's calls (eth_chainId, eth_getBlockByNumber,
eth_getLogs) from a made-up chain, through the real `Node` parsing and error classification, and refuses
ranges the way providers do: "block range too large" over N blocks, or "query returned more than K
results". The records must equal those of a run where nothing is refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from tests.chain.conftest import ListSink
from tests.polling import wait_for
from watcher.chain.abi import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC, address_topic
from watcher.chain.bridge import ChainBridge
from watcher.chain.config import ChainSettings
from watcher.chain.metrics import ChainMetrics
from watcher.chain.node import Node, is_range_refusal
from watcher.chain.ranges import RangeSizer

TOKEN = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
AGENTS = ["0x" + f"{i:02x}" * 20 for i in range(0xa1, 0xa5)]
SHOP = "0x" + "bb" * 20
HEAD = 1001                      # 7 * 11 * 13: the head holds transfers, published pending
DENSE = range(100, 140)          # a busy stretch: many transfers per block

# -- the made-up chain -------------------------------------------------------------------------------


def _hash(n: int) -> str:
    return f"0x{n:064x}"


def _block(n: int) -> dict:
    return {"number": hex(n), "hash": _hash(n + 1), "parentHash": _hash(n), "timestamp": hex(1_000 + 2 * n)}


def _raw_log(n: int, idx: int, topics: list[str], data: str, tx: str) -> dict:
    return {"address": TOKEN.lower(), "topics": topics, "data": data, "blockNumber": hex(n),
            "blockHash": _hash(n + 1), "transactionHash": tx, "logIndex": hex(idx), "removed": False,
            "transactionIndex": "0x0"}


def _chain_logs() -> dict[int, list[dict]]:
    """Block number -> raw logs: a payment every 7 blocks, an EIP-3009 one every 11, 6 per dense block."""
    out: dict[int, list[dict]] = {}
    for n in range(1, HEAD + 1):
        per_block = 6 if n in DENSE else (n % 7 == 0) + (n % 11 == 0)
        logs: list[dict] = []
        for k in range(per_block):
            tx = f"0x{n:060x}{k:04x}"
            agent = AGENTS[(n + k) % len(AGENTS)]
            if (n + k) % 2:        # EIP-3009: AuthorizationUsed then Transfer
                logs.append(_raw_log(n, len(logs), [AUTHORIZATION_USED_TOPIC, address_topic(agent),
                                                    f"0x{n:062x}{k:02x}"], "0x", tx))
            logs.append(_raw_log(n, len(logs), [TRANSFER_TOPIC, address_topic(agent), address_topic(SHOP)],
                                 f"0x{1_000 * n + k:064x}", tx))
        out[n] = logs
    return out


LOGS = _chain_logs()

# a refusal policy: (first, last, number of logs) -> a JSON-RPC error, or None to answer
Policy = Callable[[int, int, int], "dict | None"]


def no_refusal(first: int, last: int, n_logs: int) -> dict | None:
    return None


def blocks_over(limit: int) -> Policy:
    def policy(first: int, last: int, n_logs: int) -> dict | None:
        if last - first + 1 > limit:
            return {"code": -32000, "message": f"block range too large, max is {limit}"}
        return None
    return policy


def results_over(limit: int) -> Policy:
    def policy(first: int, last: int, n_logs: int) -> dict | None:
        if n_logs > limit:
            return {"code": -32005, "message": f"query returned more than {limit} results"}
        return None
    return policy


@dataclass
class Calls:
    ranges: list[tuple[int, int, bool]] = field(default_factory=list)   # (first, last, refused)


class StandInNode(Node):
    """The bridge's Node with `request` answered in-process from LOGS (polling: no WebSocket)."""

    def __init__(self, settings: ChainSettings, wallets, policy: Policy, calls: Calls) -> None:
        super().__init__(ws_url=None, http_url=settings.http_url, token=settings.token, wallets=wallets)
        self.policy, self.calls = policy, calls

    async def __aenter__(self) -> StandInNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def request(self, method: str, params: list) -> dict:
        await asyncio.sleep(0)
        if method == "eth_chainId":
            return {"result": hex(8453)}
        if method == "eth_getBlockByNumber":
            n = HEAD if params[0] == "latest" else int(params[0], 16)
            return {"result": _block(n) if 0 <= n <= HEAD else None}
        if method == "eth_getLogs":
            f = params[0]
            if "blockHash" in f:
                return {"result": LOGS.get(int(f["blockHash"], 16) - 1, [])}
            first, last = int(f["fromBlock"], 16), int(f["toBlock"], 16)
            found = [x for n in range(first, last + 1) for x in LOGS.get(n, [])]
            error = self.policy(first, last, len(found))
            self.calls.ranges.append((first, last, error is not None))
            return {"error": error} if error is not None else {"result": found}
        return {"error": {"code": -32601, "message": f"the method {method} does not exist"}}


def _settings(tmp_path, **kw) -> ChainSettings:
    base = dict(http_url="http://stand-in.invalid:8545", chain_id=8453, token=TOKEN, watch_all=True,
                confirmations=2, start_block=1, backfill_block_range=64, checkpoint_path=tmp_path / "cp.json",
                poll_interval_seconds=0.05, reconnect_min_seconds=0.01, reconnect_max_seconds=0.05,
                metrics_port="off")
    base.update(kw)
    return ChainSettings(**base)


def _at_head(bridge: ChainBridge, calls: Calls) -> bool:
    return bridge.head_seen >= HEAD


async def _run(settings: ChainSettings, policy: Policy, *, until: Callable[[ChainBridge, Calls], bool] = _at_head,
               what: str = f"the bridge to reach the head (block {HEAD})", timeout_s: float = 30.0,
               ) -> tuple[ChainBridge, ListSink, Calls, ChainMetrics]:
    """Run a bridge over the stand-in until `until(bridge, calls)` holds (failing at once if the bridge
    fails, and after `timeout_s` naming `what`), then stop it."""
    sink, calls = ListSink(), Calls()
    metrics = ChainMetrics(CollectorRegistry(), 8453, TOKEN)
    bridge = ChainBridge(settings, sink, metrics, connect=lambda s, w: StandInNode(s, w, policy, calls))

    def done() -> bool:
        assert bridge.failed is None, bridge.failed
        return until(bridge, calls)

    def state() -> str:
        return f"head_seen {bridge.head_seen}, stats {bridge.stats}, last ranges {calls.ranges[-5:]}"

    async with bridge:
        await wait_for(done, timeout_s, what, interval_s=0.01, show=state)
    assert bridge.failed is None
    return bridge, sink, calls, metrics


def _comparable(records) -> list[tuple]:
    """The records without observedAt, and without confirmations (a backfilled record's count is taken at
    the end of its eth_getLogs range, so it depends on where the ranges were cut)."""
    return [(r.id, r.status, r.blockNumber, r.blockHash, r.blockTime, r.from_, r.to, r.value, r.authorizer, r.nonce)
            for r in records]


# -- the bridge against refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "busy_stretch"), [(blocks_over(10), False), (results_over(40), True)],
                         ids=["blocks>10", "results>40"])
async def test_refused_ranges_are_read_in_halves_with_the_same_records(policy, busy_stretch, tmp_path, caplog):
    _, plain, plain_calls, _ = await _run(_settings(tmp_path / "plain"), no_refusal)
    assert not any(refused for *_, refused in plain_calls.ranges)
    expected = _comparable(plain.records)
    assert len(expected) > 300 and {r[1] for r in expected} == {"confirmed", "pending"}

    caplog.set_level(logging.INFO, logger="spendwatch.chain")
    bridge, sink, calls, metrics = await _run(_settings(tmp_path / "refused"), policy)
    assert _comparable(sink.records) == expected
    refused = [(a, b) for a, b, no in calls.ranges if no]
    answered = sorted((a, b) for a, b, no in calls.ranges if not no)
    assert refused, "the stand-in refused nothing: the test proves nothing"
    # every block read exactly once, in order, with no gap (the last 2 are read by hash, not by range)
    assert [a for a, _ in answered] == [1] + [b + 1 for _, b in answered[:-1]] and answered[-1][1] == HEAD - 2
    # the session went on: no reconnect, and the refusals are counted apart from session errors
    assert bridge.stats["reconnects"] == 0 and bridge.stats["ranges_refused"] == len(refused)
    errors = {k: metrics.registry.get_sample_value("spendwatch_chain_errors_total", {"kind": k})
              for k in ("node", "range_refused")}
    assert errors == {"node": 0, "range_refused": len(refused)}
    shrinks = [r for r in caplog.records if r.levelno == logging.WARNING and "refused as too large" in r.message]
    assert len(shrinks) == len(refused)
    if busy_stretch:
        # the busy stretch shrank the ranges; past it they grew back to the configured 64 blocks
        assert all(a <= DENSE.stop for a, _ in refused)
        assert any("again" in r.message for r in caplog.records if r.levelno == logging.INFO)
        assert max(b - a + 1 for a, b in answered if a > DENSE.stop) == 64
    else:
        assert max(b - a + 1 for a, b in answered) == 8


async def test_a_refused_single_block_is_a_node_error_not_skipped(tmp_path):
    """A provider that refuses even one block (here: block 50, whatever the range) must not make the bridge
    skip it: the session ends, the bridge reconnects and tries again, and nothing past it is published."""
    def policy(first: int, last: int, n_logs: int) -> dict | None:
        return {"code": -32005, "message": "query returned more than 10000 results"} if first <= 50 <= last else None

    def refused_again_after_a_reconnect(bridge: ChainBridge, calls: Calls) -> bool:
        return bridge.stats["reconnects"] >= 1 and calls.ranges.count((50, 50, True)) >= 2

    bridge, sink, calls, metrics = await _run(_settings(tmp_path), policy, until=refused_again_after_a_reconnect,
                                              what="block 50 alone refused, then again after a reconnect")
    assert metrics.registry.get_sample_value("spendwatch_chain_errors_total", {"kind": "node"}) >= 1
    assert max(r.blockNumber for r in sink.records) < 50
    assert 0 < bridge.head_seen < 50
    assert all(p.blockNumber < 50 for _, p in sink.progress_records)


async def test_progress_while_catching_up_covers_only_what_was_published_confirmed(tmp_path):
    bridge, sink, _, metrics = await _run(_settings(tmp_path, progress_interval_seconds=0), results_over(40),
                                          until=lambda b, _: b.progress_sent >= HEAD - 2,
                                          what=f"progress for block {HEAD - 2}")
    blocks = [p.blockNumber for _, p in sink.progress_records]
    assert blocks == sorted(set(blocks)) and len(blocks) > 10 and blocks[-1] == HEAD - 2
    for before, p in sink.progress_records:
        assert p.blockHash == _block(p.blockNumber)["hash"] and p.id == f"8453:{p.blockNumber}"
        published = {r.id for r in sink.records[:before] if r.status == "confirmed"}
        later = {r.id for r in sink.records[before:] if r.status == "confirmed" and r.blockNumber <= p.blockNumber}
        assert not later - published, f"progress {p.blockNumber} came before confirmed transfers {later}"
    assert metrics.registry.get_sample_value("spendwatch_chain_progress_block") == HEAD - 2


async def test_first_start_without_checkpoint_or_start_block_warns(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="spendwatch.chain")
    bridge, sink, calls, _ = await _run(_settings(tmp_path, start_block=None), no_refusal)
    assert sink.records == [] and calls.ranges == []          # nothing before the head is read
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"block {HEAD}" in warning.message and "not backfilled" in warning.message
    assert "start_block" in warning.message and str(tmp_path / "cp.json") in warning.message
    caplog.clear()
    # from the checkpoint now: no warning (and no block to process, so wait for the log line instead)
    await _run(_settings(tmp_path, start_block=None), no_refusal, until=lambda *_: "resumes after block" in caplog.text,
               what='the "resumes after block" log line')
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# -- the pure parts -------------------------------------------------------------------------------------


def test_range_sizer_halves_to_one_block_and_grows_back():
    s = RangeSizer(2000, grow_after=3)
    sizes = []
    while s.refused(s.size):
        sizes.append(s.size)
    assert sizes == [1000, 500, 250, 125, 62, 31, 15, 7, 3, 1] and s.size == 1
    assert not s.refused(1)                      # one block: nothing smaller to try
    grown = []
    for _ in range(200):
        if s.read(s.size):
            grown.append(s.size)
    assert grown == [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2000] and s.size == 2000


def test_range_sizer_ignores_short_reads_and_backs_off_growing_into_a_fixed_limit():
    s = RangeSizer(100, grow_after=2)
    assert s.refused(100) and s.size == 50
    assert not s.read(10) and not s.read(10)     # the tail of a backfill says nothing about 50
    assert not s.read(50) and s.read(50) and s.size == 100
    # the provider's limit is 50 blocks: every attempt to grow is refused, and they get rarer
    gaps = []
    for _ in range(4):
        assert s.refused(100) and s.size == 50
        reads = 1
        while not s.read(50):
            reads += 1
        gaps.append(reads)
    assert gaps == [4, 8, 16, 32] and s.size == 100
    assert not s.read(100)                       # a success at the grown size resets the wait ...
    assert s.refused(100) and s.size == 50
    assert not s.read(50) and s.read(50)         # ... to grow_after reads


@pytest.mark.parametrize("error", [
    {"code": -32005, "message": "query returned more than 10000 results"},
    {"code": -32602, "message": "Log response size exceeded. You can make eth_getLogs requests with up to a 2K "
                                "block range and no limit on the response size"},
    {"code": -32000, "message": "block range too large"},
    {"code": -32000, "message": "exceed maximum block range: 50000"},
    {"code": -32600, "message": "eth_getLogs block range is too wide"},
    {"code": -32602, "message": "invalid params"},
    {"code": -32000, "message": "query exceeds max results 20000, retry with the range 100-150"},
    {"code": -32603, "message": "Query timeout exceeded. Consider reducing your block range."},
    {"code": -32000, "message": "Response is too big"},
])
def test_provider_range_refusals_are_recognised(error):
    assert is_range_refusal(error)


@pytest.mark.parametrize("error", [
    {"code": -32005, "message": "daily request count exceeded, request rate limited"},
    {"code": -32005, "message": "project ID request rate exceeded"},
    {"code": 429, "message": "Too Many Requests"},
    {"code": -32000, "message": "header not found"},
    {"code": -32603, "message": "internal error"},
])
def test_other_errors_are_not_range_refusals(error):
    assert not is_range_refusal(error)
