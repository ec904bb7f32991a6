"""`spendwatch chain` as a real process: it publishes, stops cleanly on SIGTERM, and resumes."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.polling import wait_for
from watcher.events.wire import chain_transfer_id

pytestmark = pytest.mark.integration


def _id(receipt: dict) -> str:
    return chain_transfer_id(8453, receipt["transactionHash"], int(receipt["logs"][-1]["logIndex"], 16))


async def test_cli_runs_stops_on_sigterm_and_resumes(chain, reader, tmp_path, kafka_bootstrap, kafka_topic,
                                                     settings_for, chain_cli):
    agent = chain.agents[0]
    checkpoint = tmp_path / "state" / "chain.json"
    settings = settings_for(chain, tmp_path, kafka_bootstrap, kafka_topic, http_url=chain.node.http_url,
                          confirmations=1, watched_wallets=[agent.address], checkpoint_path=checkpoint,
                          metrics_port="off")
    log = tmp_path / "chain.log"
    async with chain_cli(settings, log) as proc:
        await wait_for(checkpoint.exists, 30, "the first checkpoint")
        _, r1 = await chain.token.pay(agent, chain.merchant, 10)
        await reader.until(lambda rs: _id(r1) in reader.ids(rs, "pending"), what="the first payment")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()

    _, r2 = await chain.token.pay(agent, chain.merchant, 20)           # while it is down
    await chain.mine(1)
    async with chain_cli(settings, log) as proc:
        await reader.until(lambda rs: {_id(r1), _id(r2)} <= reader.ids(rs, "confirmed"), what="both confirmed")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()
    assert "resumes after block" in log.read_text()
