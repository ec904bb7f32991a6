"""The chain bridge's /metrics: `spendwatch chain` as a real process against a real anvil and a real
Kafka-protocol broker, scraped over HTTP; then the families with plain values."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import signal
import socket
import subprocess
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from watcher.chain.config import ChainSettings, load_settings
from watcher.chain.devnet import free_port
from watcher.chain.errors import NodeError, PublishError
from watcher.chain.metrics import FAMILIES, ChainMetrics, serve_chain_metrics
from watcher.errors import ConfigError


def scrape_values(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted label items) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


class Scraper:
    """Scrapes the bridge's /metrics over HTTP (and reads anvil's block number just before)."""

    def __init__(self, url: str, rpc) -> None:
        self.url, self.rpc = url, rpc
        self.text, self.values, self.block = "", {}, -1
        self.client = httpx.AsyncClient(timeout=2.0)

    def __call__(self, name: str, **labels: str) -> float | None:
        return self.values.get((name, tuple(sorted(labels.items()))))

    def at_head(self) -> bool:
        """The head gauge is anvil's block number and every block up to it is published (lag 0)."""
        return self("spendwatch_chain_head_block") == self.block and self("spendwatch_chain_head_lag_blocks") == 0

    def published(self, status: str) -> float | None:
        return self("spendwatch_chain_records_published_total", status=status)

    async def until(self, pred, what: str, timeout_seconds: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_seconds
        while True:
            self.block = int(await self.rpc.call("eth_blockNumber"), 16)
            try:
                r = await self.client.get(self.url)
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code == 200:
                self.text, self.values = r.text, scrape_values(r.text)
                if pred():
                    return
            if time.monotonic() > deadline:
                chain = "\n".join(x for x in self.text.splitlines() if x.startswith("spendwatch_chain"))
                raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}; anvil is at block "
                                     f"{self.block}; last scrape:\n{chain}")
            await asyncio.sleep(0.1)


@pytest.mark.integration
async def test_bridge_process_serves_head_lag_records_and_reorgs(chain, reader, tmp_path, kafka_bootstrap,
                                                                 kafka_topic, settings_for, chain_cli):
    agent = chain.agents[0]
    port = free_port()
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, http_url=chain.node.http_url,
                          watched_wallets=[agent.address], metrics_port=port)
    log = tmp_path / "chain.log"
    m = Scraper(f"http://127.0.0.1:{port}/metrics", chain.rpc)
    promtool = shutil.which("promtool")
    async with chain_cli(settings, log) as proc:
        await m.until(m.at_head, "the bridge at anvil's head")
        assert m("spendwatch_chain_connected") == 1
        assert m("spendwatch_chain_info", chain_id="8453", token=chain.token.address) == 1
        first_seen = m("spendwatch_chain_head_updated_timestamp_seconds")
        assert abs(first_seen - time.time()) < 30
        assert [m.published(s) for s in ("pending", "confirmed", "reverted")] == [0, 0, 0]

        receipts = [(await chain.token.pay(agent, chain.merchant, 1_000 + i))[1] for i in range(3)]
        await m.until(lambda: m.published("pending") == 3, "3 pending records")
        await chain.mine(2)                                # settings_for: confirmations = 2
        await m.until(lambda: m.at_head() and m.published("confirmed") == 3, "3 confirmed records, lag 0")
        assert m("spendwatch_chain_unconfirmed_transfers") == 0
        assert m("spendwatch_chain_processed_block") == m.block
        assert m("spendwatch_chain_head_updated_timestamp_seconds") > first_seen
        got = await reader.until(lambda rs: len(reader.ids(rs, "confirmed")) == 3, what="3 confirmed on Kafka")
        assert len(reader.by_status("pending")) == 3
        assert {g.record.txHash for g in got} == {r["transactionHash"] for r in receipts}

        # a reorg: the block holding a pending payment is dropped, another block takes its height
        _, gone = await chain.token.pay(agent, chain.merchant, 7)
        await m.until(lambda: m.published("pending") == 4, "the 4th payment pending")
        await chain.rpc.call("anvil_rollback", 1)
        await chain.mine(1)
        await m.until(lambda: m.at_head() and m.published("reverted") == 1, "the dropped payment reverted")
        assert m("spendwatch_chain_reorgs_total") == 1
        assert m("spendwatch_chain_reorg_depth_blocks_count") == 1
        assert m("spendwatch_chain_reorg_depth_blocks_bucket", le="1.0") == 1
        assert m("spendwatch_chain_deep_reorgs_total") == 0
        await reader.until(lambda rs: {g.record.txHash for g in reader.by_status("reverted")}
                           == {gone["transactionHash"]}, what="the revert on Kafka")
        assert [m("spendwatch_chain_errors_total", kind=k) for k in ("node", "kafka", "chain")] == [0, 0, 0]
        assert (await m.client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        if promtool is not None:
            r = subprocess.run([promtool, "check", "metrics"], input=m.text.encode(), capture_output=True,
                               timeout=60)
            assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()
    await m.client.aclose()
    assert f"serving /metrics on http://127.0.0.1:{port}/metrics" in " ".join(log.read_text().split())
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus): the exposition lint was skipped, "
                    "everything else passed")


async def test_a_taken_port_stops_the_bridge_before_it_connects(tmp_path):
    from watcher.chain.cli import run_bridge

    # neither the node nor Kafka exists: the error is the port's, so nothing was tried before it
    settings = ChainSettings(ws_url="ws://127.0.0.1:9", kafka_bootstrap="127.0.0.1:9", watch_all=True,
                             checkpoint_path=tmp_path / "cp.json")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            await asyncio.wait_for(run_bridge(settings.model_copy(update={"metrics_port": port})), 10)
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in str(err.value) and err.value.key == "chain.metrics_port"


def _served_ports(caplog) -> list[int]:
    return [int(p) for p in re.findall(r"serving /metrics on http://127\.0\.0\.1:(\d+)/metrics", caplog.text)]


async def test_port_0_serves_on_a_free_port_and_logs_it(caplog):
    caplog.set_level(logging.INFO)
    m = ChainMetrics(CollectorRegistry(), 8453)
    async with serve_chain_metrics(m, "127.0.0.1", 0) as server:
        assert server.port != 0
        async with httpx.AsyncClient(timeout=5.0) as client:
            r = await client.get(f"http://127.0.0.1:{server.port}/metrics")
        assert r.status_code == 200 and "spendwatch_chain_info" in r.text
    assert _served_ports(caplog) == [server.port]


@pytest.mark.parametrize("port", [0, "off"])
async def test_the_bridge_serves_metrics_on_port_0_and_none_when_off(port, tmp_path, caplog):
    from watcher.chain.cli import run_bridge

    caplog.set_level(logging.INFO)
    # no Kafka at 127.0.0.1:9: the bridge stops there, after /metrics was (or was not) served
    settings = ChainSettings(ws_url="ws://127.0.0.1:9", kafka_bootstrap="127.0.0.1:9", watch_all=True,
                             checkpoint_path=tmp_path / "cp.json", metrics_port=port)
    with pytest.raises(PublishError):
        await asyncio.wait_for(run_bridge(settings), 30)
    served = _served_ports(caplog)
    if port == "off":
        assert served == [] and "no /metrics (chain.metrics_port is off)" in caplog.text
    else:
        assert len(served) == 1 and served[0] not in (0, 9465), caplog.text


# -- plain values ---------------------------------------------------------------------------------

def _settings(**kw) -> ChainSettings:
    return ChainSettings(ws_url="ws://127.0.0.1:8545", watch_all=True, **kw)


def test_metrics_port_setting():
    assert _settings().metrics_port == 9465 and _settings().metrics_host == "127.0.0.1"
    for off in ("off", " OFF ", "none", "", False):
        assert _settings(metrics_port=off).metrics_port == "off", off
    for free in (0, "0"):                                   # 0 is a port (a free one), as for the watcher
        assert _settings(metrics_port=free).metrics_port == 0, free
    assert _settings(metrics_port="9500").metrics_port == 9500
    for bad in (70_000, -1, "abc", True, 9465.5):
        with pytest.raises(ValueError, match="is not a port"):
            _settings(metrics_port=bad)


def test_metrics_port_from_environment_and_file(monkeypatch, tmp_path):
    from tests.chain.conftest import write_chain_config

    monkeypatch.setenv("SPENDWATCH_CHAIN__WS_URL", "ws://127.0.0.1:8545")
    monkeypatch.setenv("SPENDWATCH_CHAIN__WATCH_ALL", "true")
    for env, want in (("off", "off"), ("0", 0), ("9500", 9500)):
        monkeypatch.setenv("SPENDWATCH_CHAIN__METRICS_PORT", env)
        assert load_settings(None).metrics_port == want, env
    monkeypatch.setenv("SPENDWATCH_CHAIN__METRICS_PORT", "70000")
    with pytest.raises(ConfigError) as err:
        load_settings(None)
    assert err.value.key == "chain.metrics_port"
    monkeypatch.delenv("SPENDWATCH_CHAIN__METRICS_PORT")
    # what the CLI tests hand the process: "off" and 0 survive the [chain] table round trip
    for port in ("off", 0):
        path = write_chain_config(tmp_path / f"chain-{port}.toml", _settings(metrics_port=port))
        assert load_settings(path).metrics_port == port


def test_lag_head_time_and_errors():
    m = ChainMetrics(CollectorRegistry(), 8453, "0x" + "11" * 20)

    def v(name, **labels):
        return m.registry.get_sample_value(name, labels)

    assert v("spendwatch_chain_head_updated_timestamp_seconds") == 0      # no head yet (ChainBridgeStalled fires)
    m.processed(100, 2)
    m.head(105, "0xaa")
    assert v("spendwatch_chain_head_lag_blocks") == 5 and v("spendwatch_chain_unconfirmed_transfers") == 2
    seen = v("spendwatch_chain_head_updated_timestamp_seconds")
    assert seen > 0
    m.head(105, "0xaa")                                                   # the same head again: not new
    assert v("spendwatch_chain_head_updated_timestamp_seconds") == seen
    m.processed(105, 0)
    assert v("spendwatch_chain_head_lag_blocks") == 0
    m.head(104, "0xbb")                                                   # a reorg to a lower head
    assert v("spendwatch_chain_head_lag_blocks") == 0 and v("spendwatch_chain_head_block") == 104
    m.reorg(3, deep=True)
    assert v("spendwatch_chain_reorgs_total") == 1 and v("spendwatch_chain_deep_reorgs_total") == 1
    m.set_connected(True)
    for exc in (NodeError("x"), PublishError("y"), PublishError("z")):
        m.error(exc)
    assert [v("spendwatch_chain_errors_total", kind=k) for k in ("node", "kafka", "chain")] == [1, 2, 0]
    assert v("spendwatch_chain_connected") == 0
    rendered = {f.name for f in text_string_to_metric_families(m.render().decode())}
    assert rendered == {name.removesuffix("_total") for name, *_ in FAMILIES}


def test_families_are_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name, *_ in FAMILIES if f"`{name}`" not in readme]
    assert not missing, f"add these to the README's metrics table: {missing}"
