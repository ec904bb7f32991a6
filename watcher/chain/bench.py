"""Chain bridge benchmark (not a test): backfill throughput and live block-to-Kafka latency.

    await run_chain_bench(quick=False)  ->  {"chain_backfill_transfers": 10000,
                                            "chain_backfill_records_per_s": ..., "chain_live_p50_ms": ..., ...}

Everything is real: anvil (tools/npm) with the test USDC, EIP-3009 payments signed by agents and
submitted by a facilitator account, the bridge publishing to a Kafka-protocol broker (embedded Tansu
unless `bootstrap` is given), and an aiokafka consumer reading the records back.

- backfill: N payments are made first (N = 10,000; 1,000 with quick), then a fresh bridge reads them
  from the checkpoint-less start block with ranged eth_getLogs: records/s from the bridge's start to
  the last record acknowledged by Kafka.
- live: M payments one at a time (M = 200; 40 with quick) while the bridge follows over WebSocket: the
  time from the node announcing the block (a newHeads notification on an independent socket) to the
  record arriving at a consumer, p50 and p99; and the same from the transaction's submission (which
  adds anvil's own mining time, growing with its state).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import websockets
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from eth_hash.auto import keccak

from watcher.chain.bridge import ChainBridge
from watcher.chain.config import ChainSettings
from watcher.chain.devnet import Anvil
from watcher.chain.publisher import KafkaPublisher
from watcher.chain.solc import CACHE_DIR
from watcher.chain.testtoken import (FACILITATOR, OTHER, Payment, Rpc, TestToken, agent_account,
                                     sign_authorization)
from watcher.events.wire import ChainTransfer, decode_wire


_CALLDATA_PROBE = bytes(4 + 9 * 32)   # transferWithAuthorization calldata: selector + 9 words


def _quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


async def _create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def _wait(pred, timeout_seconds: float, what: str) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"chain bench: timed out after {timeout_seconds} s waiting for {what}")
        await asyncio.sleep(0.005)


async def _signed_payments(token: TestToken, agents: list, n: int) -> list[bytes]:
    """The backfill's payments, signed once and cached under .spendwatch/bench/ (gitignored): the token
    address, the chain id, the agents and the nonces are deterministic, so a fresh anvil accepts them."""
    cache = CACHE_DIR / "bench" / f"payments-{token.chain_id}-{token.address.lower()}-{n}.bin"
    size = len(_CALLDATA_PROBE)
    if cache.exists() and cache.stat().st_size == n * size:
        blob = cache.read_bytes()
        return [blob[i * size:(i + 1) * size] for i in range(n)]
    payments = [Payment(bytes(agents[i % len(agents)].key), agents[i % len(agents)].address, OTHER, 1 + i % 1000,
                        keccak(b"spendwatch-bench-%d" % i)) for i in range(n)]
    calldata = await token.sign_many(payments)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_bytes(b"".join(calldata))
    tmp.replace(cache)
    return calldata


async def run_chain_bench(quick: bool = False, *, bootstrap: str | None = None) -> dict:
    n_backfill, n_live = (1_000, 40) if quick else (10_000, 200)
    async with contextlib.AsyncExitStack() as stack:
        if bootstrap is None:
            from watcher.broker import TansuBroker
            bootstrap = (await stack.enter_async_context(TansuBroker())).bootstrap
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spendwatch-chain-bench-")))
        node = await stack.enter_async_context(Anvil(chain_id=8453, extra_args=("--gas-limit", "300000000")))
        rpc = await stack.enter_async_context(Rpc(node.http_url))
        token = await TestToken.deploy(rpc, 8453)
        agents = [agent_account(i) for i in range(20)]
        for a in agents:
            await token.mint(a.address, 10**15)
        start_block = int(await rpc.call("eth_blockNumber"), 16) + 1

        t0 = time.perf_counter()
        await token.submit_many(await _signed_payments(token, agents, n_backfill), per_block=1_000)
        setup_s = time.perf_counter() - t0
        await rpc.call("anvil_mine", hex(3))
        blocks = int(await rpc.call("eth_blockNumber"), 16) - start_block + 1

        base = dict(chain_id=8453, token=token.address, watched_wallets=[a.address for a in agents],
                    kafka_bootstrap=bootstrap, confirmations=2, backfill_block_range=2_000,
                    poll_interval_seconds=1.0)
        topic = f"x402.chain.bench.{uuid.uuid4().hex[:8]}"
        await _create_topic(bootstrap, topic)
        backfill = ChainSettings(**base, http_url=node.http_url, start_block=start_block, topic=topic,
                                 checkpoint_path=tmp / "backfill.json")
        async with KafkaPublisher(bootstrap, topic, linger_ms=5) as pub:
            t0 = time.perf_counter()
            async with ChainBridge(backfill, pub) as bridge:
                await _wait(lambda: bridge.stats["confirmed"] >= n_backfill or bridge.failed is not None,
                            600, f"{n_backfill} backfilled records")
                backfill_s = time.perf_counter() - t0
                if bridge.failed is not None:
                    raise bridge.failed
                ranges = bridge.stats["backfill_ranges"]

        live_topic = f"x402.chain.live.{uuid.uuid4().hex[:8]}"
        await _create_topic(bootstrap, live_topic)
        live = ChainSettings(**{**base, "confirmations": 2}, ws_url=node.ws_url, http_url=node.http_url,
                             topic=live_topic,
                             checkpoint_path=tmp / "live.json")
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=5)
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        parts = [TopicPartition(live_topic, p) for p in range(3)]
        consumer.assign(parts)
        arrived: dict[str, float] = {}

        async def consume() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=5)
                now = time.perf_counter()
                for msgs in batch.values():
                    for m in msgs:
                        rec = decode_wire(m.value)
                        if isinstance(rec, ChainTransfer) and rec.status == "pending":
                            arrived.setdefault(rec.txHash, now)

        heads: dict[int, float] = {}

        async def watch_heads(ws) -> None:     # when the node announced each block (an independent socket)
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("method") == "eth_subscription":
                    heads.setdefault(int(msg["params"]["result"]["number"], 16), time.perf_counter())

        ws = await stack.enter_async_context(websockets.connect(node.ws_url))
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}))
        await ws.recv()
        head_task = asyncio.create_task(watch_heads(ws))
        stack.callback(head_task.cancel)

        latencies: list[float] = []
        from_submit: list[float] = []
        async with KafkaPublisher(bootstrap, live_topic) as pub, ChainBridge(live, pub) as bridge:
            reader = asyncio.create_task(consume())
            try:
                await asyncio.wait_for(bridge.connected.wait(), 30)
                await _wait(lambda: bridge.head_seen >= 0, 30, "the live bridge's first pass")
                for i in range(n_live):
                    p = token.payment(agents[i % len(agents)], OTHER, 1)
                    data = "0x" + sign_authorization(token.address, 8453, p, 2**40).hex()
                    tx = await rpc.call("eth_sendTransaction", {"from": FACILITATOR, "to": token.address,
                                                                "data": data, "gas": hex(200_000)})
                    submitted = time.perf_counter()
                    await _wait(lambda: tx in arrived or bridge.failed is not None, 30, f"live record {i}")
                    if bridge.failed is not None:
                        raise bridge.failed
                    number = int((await rpc.call("eth_getTransactionReceipt", tx))["blockNumber"], 16)
                    await _wait(lambda: number in heads, 10, f"the newHeads notification of block {number}")
                    latencies.append((arrived[tx] - heads[number]) * 1000)
                    from_submit.append((arrived[tx] - submitted) * 1000)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    return {
        "chain_backfill_transfers": n_backfill,
        "chain_backfill_blocks": blocks,
        "chain_backfill_getlogs_ranges": ranges,
        "chain_backfill_seconds": round(backfill_s, 3),
        "chain_backfill_records_per_s": round(n_backfill / backfill_s, 1),
        "chain_setup_payments_seconds": round(setup_s, 1),   # signing is cached after the first run
        "chain_live_payments": n_live,
        "chain_live_p50_ms": round(_quantile(latencies, 0.50), 2),
        "chain_live_p99_ms": round(_quantile(latencies, 0.99), 2),
        "chain_live_max_ms": round(max(latencies), 2),
        "chain_live_from_submit_p50_ms": round(_quantile(from_submit, 0.50), 2),
        "chain_live_from_submit_p99_ms": round(_quantile(from_submit, 0.99), 2),
    }


if __name__ == "__main__":  # python -m watcher.chain.bench [--quick]
    import sys

    print(json.dumps(asyncio.run(run_chain_bench("--quick" in sys.argv))))  # noqa: T201
