"""Fixtures of the chain bridge tests: a real anvil node with the test USDC, and a real Kafka-protocol
broker (the shared `kafka_bootstrap` fixture) read back with aiokafka and watcher.events.Decoder.

Node tools come from tools/npm (installed with `npm ci` when node_modules is missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from watcher.chain.config import ChainSettings
from watcher.chain.devnet import Anvil
from watcher.chain.solc import ToolError, compile_contract, ensure_npm_tools
from watcher.chain.testtoken import OTHER, SOURCE, Rpc, TestToken, agent_account
from watcher.events import Decoder
from watcher.events.observation import Observation
from watcher.events.wire import ChainProgress, ChainTransfer, decode_wire

PARTITIONS = 3


@pytest.fixture(scope="session")
def npm_tools() -> Path:
    try:
        return ensure_npm_tools()
    except ToolError as exc:
        pytest.fail(f"the chain tests need node/npm tools from tools/npm: {exc}")


@pytest.fixture(scope="session")
def usdc_artifact(npm_tools):
    return compile_contract(SOURCE, "TestUSDC")


@dataclass
class Chain:
    node: Anvil
    rpc: Rpc
    token: TestToken
    agents: list = field(default_factory=list)   # LocalAccounts, funded with test USDC
    stranger: object = None                       # a funded agent that nobody watches
    merchant: str = OTHER

    async def mine(self, blocks: int = 1) -> int:
        for _ in range(blocks):
            await self.rpc.call("evm_mine")
        return int(await self.rpc.call("eth_blockNumber"), 16)


@pytest.fixture
async def chain(usdc_artifact, tmp_path):
    """anvil (chain id 8453, automine, --state in tmp_path) with the test USDC deployed and agents funded."""
    async with Anvil(chain_id=8453, state_path=tmp_path / "anvil-state.json") as node, Rpc(node.http_url) as rpc:
        token = await TestToken.deploy(rpc, node.chain_id)
        agents = [agent_account(i) for i in range(3)]
        stranger = agent_account(99)
        for who in [*(a.address for a in agents), stranger.address, OTHER]:
            await token.mint(who, 1_000 * 10**6)
        yield Chain(node, rpc, token, agents, stranger)


@pytest.fixture
def topic(unique) -> str:
    return f"x402.chain.t{unique}"


async def create_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


@pytest.fixture
async def kafka_topic(kafka_bootstrap, topic) -> str:
    await create_topic(kafka_bootstrap, topic)
    return topic


@pytest.fixture
def settings_for():
    """settings_for(chain, tmp_path, bootstrap, topic, **overrides) -> ChainSettings."""

    def make(chain: Chain, tmp_path: Path, bootstrap: str, topic: str, **kw) -> ChainSettings:
        base = dict(ws_url=chain.node.ws_url, chain_id=8453, token=chain.token.address, confirmations=2,
                    watched_wallets=[a.address for a in chain.agents], checkpoint_path=tmp_path / "cp.json",
                    kafka_bootstrap=bootstrap, topic=topic, poll_interval_seconds=0.2,
                    reconnect_min_seconds=0.1, reconnect_max_seconds=1.0, request_timeout_seconds=5.0)
        base.update(kw)
        return ChainSettings(**base)

    return make


def write_chain_config(path: Path, settings: ChainSettings) -> Path:
    """A TOML file whose [chain] table holds `settings` (JSON scalars and arrays are valid TOML values)."""
    values = settings.model_dump(mode="json", exclude_none=True)
    path.write_text("[chain]\n" + "".join(f"{key} = {json.dumps(v)}\n" for key, v in values.items()))
    return path


@contextlib.asynccontextmanager
async def spendwatch_chain(settings: ChainSettings, log_path: Path):
    """`spendwatch chain --config FILE` with `settings` as a real process (output appended to log_path);
    killed if still running when the block exits."""
    config = write_chain_config(log_path.with_suffix(".toml"), settings)
    with open(log_path, "ab") as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "watcher.cli.main", "chain", "--config",
                                                    str(config), stdin=asyncio.subprocess.DEVNULL, stdout=out,
                                                    stderr=out)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
def chain_cli():
    """chain_cli(settings, log_path): async context manager running `spendwatch chain` (see spendwatch_chain)."""
    return spendwatch_chain


class ListSink:
    """A bridge's Sink in memory (for tests that need no Kafka)."""

    def __init__(self) -> None:
        self.records: list = []
        self.progress_records: list = []

    async def publish(self, records) -> None:
        self.records.extend(records)

    async def progress(self, record) -> None:
        self.progress_records.append((len(self.records), record))   # with how many transfers came before it


@dataclass(frozen=True)
class Got:
    key: bytes
    record: ChainTransfer | ChainProgress
    obs: Observation
    partition: int
    received_at: float
    offset: int = -1


class TopicReader:
    """Reads a topic from the beginning; `until(pred)` waits (bounded) for the records to satisfy pred.
    `records` holds the chain.transfer records, `progress` the bridge's chain.progress heartbeats."""

    def __init__(self, bootstrap: str, topic: str, *, create: bool = False) -> None:
        self.topic, self.bootstrap, self.create = topic, bootstrap, create
        self.records: list[Got] = []
        self.progress: list[Got] = []
        self.decoder = Decoder()
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                          auto_offset_reset="earliest")

    async def __aenter__(self) -> TopicReader:
        if self.create:
            await create_topic(self.bootstrap, self.topic)
        await self._consumer.start()
        await self._consumer.topics()                      # fetches metadata
        found = self._consumer.partitions_for_topic(self.topic) or range(PARTITIONS)
        parts = [TopicPartition(self.topic, p) for p in sorted(found)]
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._consumer.stop()

    async def poll(self, timeout_ms: int = 100) -> None:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        now = time.monotonic()
        for tp, msgs in batch.items():
            for m in msgs:
                rec = decode_wire(m.value)
                got = Got(m.key, rec, self.decoder.decode(m.value), tp.partition, now, m.offset)
                (self.progress if isinstance(rec, ChainProgress) else self.records).append(got)

    async def until(self, pred, *, timeout_seconds: float = 20.0, what: str = "records") -> list[Got]:
        deadline = time.monotonic() + timeout_seconds
        while not pred(self.records):
            if time.monotonic() > deadline:
                summary = "\n".join(f"  {g.record.status:9} {g.record.id} block {g.record.blockNumber} "
                                    f"{g.record.blockHash[:10]} conf {g.record.confirmations}" for g in self.records)
                raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}; "
                                     f"{len(self.records)} records on {self.topic}:\n{summary}")
            await self.poll()
        return self.records

    @staticmethod
    def ids(got: list[Got], status: str | None = None) -> set[str]:
        """The ids of the records (optionally of one status)."""
        return {g.record.id for g in got if status is None or g.record.status == status}

    def by_status(self, status: str) -> list[Got]:
        return [g for g in self.records if g.record.status == status]


@pytest.fixture
def make_reader():
    """TopicReader itself, for a test that reads a broker of its own."""
    return TopicReader


@pytest.fixture
async def reader(kafka_bootstrap, kafka_topic):
    async with TopicReader(kafka_bootstrap, kafka_topic) as r:
        yield r

