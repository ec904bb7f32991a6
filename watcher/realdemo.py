"""The real x402 loop on loopback, every part real: `spendwatch demo --real-chain` and the tap's e2e test.

    anvil + test USDC ─► SDK facilitator (x402FacilitatorSync, exact EVM, signer = anvil account 1)
                          ▲ /verify /settle /supported
    merchant (FastAPI + SDK middleware) ─► spendwatch facilitator tap ─► x402.payments (Kafka)
    agents (x402 httpx client, eth-account keys) ─► merchant          ▲ refuses frozen payers
    chain bridge (anvil logs) ─► x402.chain                           │ watcher.breaker
    watcher daemon (detect + breakers) ─► decisions ─► breaker change ─┘

`RealLoop` starts them all (anvil and the token need the npm tools of tools/npm) and stops them in
reverse order. `run_real_demo(args)` runs three honest agents and one runaway: the runaway is frozen by
the watcher and its next request is refused by the tap with HTTP 402, while the others keep paying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("watcher.realdemo")
U = 1_000_000
PRICES = {"search": 10_000, "gpu": 500_000}          # base units: 0.01 and 0.50 USDC
POLICY = """
version = "real-demo"
[defaults]
per_payment_max_usdc = 5
[defaults.caps]
per_minute_usdc = 2
per_hour_usdc = 0
per_day_usdc = 0
[defaults.escalation]
payment_above_usdc = 0
window_above_usdc = 0
[defaults.anomaly]
enabled = false
fleet = false
"""


class RealLoop:
    """Async context manager: the whole loop. `kafka_bootstrap` empty starts the embedded Tansu broker."""

    def __init__(self, kafka_bootstrap: str = "", *, agents: int = 4, suffix: str | None = None,
                 workdir: Path | None = None, findings_after_seconds: int = 4, policy: str = POLICY,
                 partitions: int = 2) -> None:
        import uuid
        self.bootstrap = kafka_bootstrap
        self.n_agents = agents
        self.suffix = suffix or uuid.uuid4().hex[:8]
        self.workdir = workdir
        self.findings_after = findings_after_seconds
        self.policy = policy
        self.partitions = partitions
        self.stack = contextlib.AsyncExitStack()
        self.daemon_task: asyncio.Task | None = None
        self.last_response = None

    async def __aenter__(self) -> RealLoop:
        try:
            await self._start()
        except BaseException:
            await self.stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()

    async def _start(self) -> None:
        from watcher.chain.bridge import ChainBridge
        from watcher.chain.config import ChainSettings
        from watcher.chain.devnet import Anvil
        from watcher.chain.publisher import KafkaPublisher
        from watcher.chain.solc import ensure_npm_tools
        from watcher.chain.testtoken import OTHER, Rpc, TestToken, agent_account
        from watcher.config import load_settings
        from watcher.stages import build
        from watcher.tap.breakers import Gate, TopicBreakerView
        from watcher.tap.local import LocalFacilitator, ServerThread
        from watcher.tap.loop import merchant_app
        from watcher.tap.metrics import TapMetrics
        from watcher.tap.proxy import TapProxy
        from watcher.tap.publisher import TapPublisher

        s, sx = self.stack, self.suffix
        if self.workdir is None:
            self.workdir = Path(s.enter_context(tempfile.TemporaryDirectory(prefix="spendwatch-real-")))
        if not self.bootstrap:
            from watcher.broker import TansuBroker
            self.bootstrap = s.enter_context(TansuBroker()).bootstrap
        await asyncio.to_thread(ensure_npm_tools)
        self.node = await s.enter_async_context(Anvil(chain_id=8453))
        self.rpc = await s.enter_async_context(Rpc(self.node.http_url))
        self.token = await TestToken.deploy(self.rpc, 8453)
        self.merchant = OTHER
        self.agents = [agent_account(100 + i) for i in range(self.n_agents)]
        for a in self.agents:
            await self.token.mint(a.address, 100 * U)

        policy_path = self.workdir / "policy.toml"
        policy_path.write_text(self.policy)
        k = {"bootstrap": self.bootstrap, "group": f"g-{sx}", "partitions": self.partitions,
             "payments_topic": f"pay-{sx}", "chain_topic": f"chain-{sx}", "dead_letter_topic": f"dlq-{sx}",
             "checkpoint_topic": f"ckpt-{sx}", "findings_topic": f"find-{sx}", "decisions_topic": f"dec-{sx}",
             "session_timeout_ms": 2000, "heartbeat_interval_ms": 300, "poll_timeout_ms": 100}
        self.settings = load_settings(None, kafka=k, checkpoint={"interval_seconds": 1.0},
                                      detect={"policy_file": str(policy_path)},
                                      findings={"shadow_grace_seconds": self.findings_after,
                                                "unsettled_after_seconds": self.findings_after},
                                      metrics={"port": 0},  # never a fixed port: the machine is shared
                                      breaker={"topic": f"brk-{sx}"}, admin={"enabled": False})
        assembly = build(self.settings)
        self.daemon = assembly.daemon()
        self.breakers = assembly.breaker
        self.breaker_topic = self.breakers.topic
        self.daemon_task = asyncio.create_task(self.daemon.run(), name="daemon")
        s.push_async_callback(self._stop_daemon)

        chain = ChainSettings(ws_url=self.node.ws_url, chain_id=8453, token=self.token.address, confirmations=2,
                              watched_wallets=[a.address for a in self.agents],
                              checkpoint_path=self.workdir / "chain-cp.json", kafka_bootstrap=self.bootstrap,
                              topic=self.settings.kafka.chain_topic, poll_interval_seconds=0.2,
                              reconnect_min_seconds=0.1, reconnect_max_seconds=1.0, request_timeout_seconds=5.0)
        sink = await s.enter_async_context(KafkaPublisher(self.bootstrap, chain.topic))
        self.bridge = await s.enter_async_context(ChainBridge(chain, sink))

        self.metrics = TapMetrics()
        self.publisher = await s.enter_async_context(
            TapPublisher(self.bootstrap, self.settings.kafka.payments_topic, metrics=self.metrics))
        self.view = await s.enter_async_context(TopicBreakerView(self.bootstrap, self.breaker_topic))
        self.facilitator = await s.enter_async_context(LocalFacilitator(self.node.http_url))
        self.tap = await s.enter_async_context(TapProxy(self.facilitator.url, self.publisher,
                                                        Gate(self.view, metrics=self.metrics),
                                                        name="spendwatch-tap", metrics=self.metrics))
        self.merchant_server = await s.enter_async_context(ServerThread(
            lambda: merchant_app(self.tap.url, self.token.address, self.merchant, PRICES)))
        await self.wait(lambda: self.daemon.started.is_set(), 60, "the daemon to start")
        await asyncio.wait_for(self.view.caught_up.wait(), 60)

    async def _stop_daemon(self) -> None:
        if self.daemon_task is None:
            return
        self.daemon.request_stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self.daemon_task, 60)

    async def wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if self.daemon_task is not None and self.daemon_task.done():
                self.daemon_task.result()
                raise RuntimeError("the daemon stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.05)

    def client(self, i: int):
        from watcher.tap.loop import agent_client
        return agent_client(self.agents[i], self.token.address)

    async def pay(self, client, route: str) -> tuple[int, str | None]:
        """(HTTP status, refusal reason or None) of one paid GET."""
        from watcher.tap.loop import payment_error
        r = self.last_response = await client.get(f"{self.merchant_server.url}/{route}")
        return r.status_code, (payment_error(r) if r.status_code == 402 else None)

    async def confirm(self, blocks: int = 3) -> None:
        for _ in range(blocks):
            await self.rpc.call("evm_mine")


async def run_real_demo(args: Any) -> int:
    """`spendwatch demo --real-chain`: honest agents and one runaway through the real loop. 0 = as expected."""
    bootstrap = getattr(args, "bootstrap", "") or ""
    honest_payments = int(getattr(args, "payments", 3) or 3)
    print("starting anvil + test USDC, the broker, the watcher, the chain bridge, the SDK facilitator, "
          "the spendwatch tap and a merchant ...", flush=True)
    t0 = time.monotonic()
    async with RealLoop(bootstrap, agents=4) as loop:
        print(f"ready in {time.monotonic() - t0:.1f} s: merchant {loop.merchant_server.url} -> tap {loop.tap.url} "
              f"-> facilitator {loop.facilitator.url}; token {loop.token.address}", flush=True)
        clients = [loop.client(i) for i in range(4)]
        try:
            for _ in range(honest_payments):
                for i in range(3):
                    status, _ = await loop.pay(clients[i], "search")
                    print(f"  honest agent {loop.agents[i].address[:10]} /search -> {status}")
            frozen_at = None
            for n in range(1, 31):
                status, reason = await loop.pay(clients[3], "gpu")
                print(f"  runaway agent {loop.agents[3].address[:10]} /gpu #{n} -> {status}"
                      + (f" ({reason})" if reason else ""), flush=True)
                if status == 402:
                    frozen_at = n
                    break
                await asyncio.sleep(0.3)
            ok = frozen_at is not None
            for i in range(3):
                status, _ = await loop.pay(clients[i], "search")
                ok &= status == 200
                print(f"  honest agent {loop.agents[i].address[:10]} /search after the freeze -> {status}")
            await loop.confirm()
            await asyncio.sleep(loop.findings_after + 2)
            print(f"tap: {loop.tap.counts}; records published {loop.publisher.published}, "
                  f"dropped {loop.publisher.dropped}; watcher findings {loop.daemon.counters.findings}")
            print("the runaway agent was frozen by the watcher and refused by the facilitator tap"
                  if frozen_at else "the runaway agent was NOT frozen")
            return 0 if ok else 1
        finally:
            for c in clients:
                await c.aclose()
