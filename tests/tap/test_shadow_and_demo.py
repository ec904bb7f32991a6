"""Issue B's shadow spend end to end through Kafka, and issue G's `spendwatch demo --real-chain`.

Shadow spend: a watched agent's key pays on-chain (an EIP-3009 authorization submitted straight to the
token, no facilitator); the chain bridge publishes the transfer to x402.chain, the watcher joins it with
the (absent) settle and publishes a `shadow_spend` finding to watcher.findings.
"""

from __future__ import annotations

import asyncio

import subprocess
import sys

import msgspec
import pytest

from tests.topics import read_records
from watcher.chain.testtoken import agent_account
from watcher.realdemo import U, RealLoop

pytestmark = pytest.mark.integration


async def test_shadow_spend_is_found_end_to_end_through_kafka(kafka_bootstrap, unique, tmp_path):
    async with RealLoop(kafka_bootstrap, agents=2, suffix=unique, workdir=tmp_path, findings_after_seconds=2) as loop:
        stolen, thief = loop.agents[1], agent_account(999).address
        _, receipt = await loop.token.pay(stolen, thief, 3 * U)   # no facilitator saw this payment
        await loop.confirm(3)
        tx = receipt["transactionHash"]
        tx = tx if isinstance(tx, str) else "0x" + bytes(tx).hex()

        async def shadow() -> list[dict]:
            records = await read_records(loop.bootstrap, loop.settings.kafka.findings_topic)
            found = [msgspec.json.decode(m.value) for m in records]
            return [f for f in found if f["kind"] == "shadow_spend" and f["agent"] == stolen.address]

        found: list[dict] = []
        for _ in range(60):  # the shadow grace period runs first (event time follows the wall clock)
            found = await shadow()
            if found:
                break
            await asyncio.sleep(0.5)
        assert found, "no shadow_spend finding for the agent whose key paid on-chain"
        f = found[0]
        assert f["tx"] == tx.lower() and f["merchant"] == thief and f["transferredAmount"] == str(3 * U)
        assert f["settledAmount"] is None
        honest = loop.agents[0].address
        assert not [x for x in await shadow() if x["agent"] == honest]


def test_real_chain_demo_freezes_the_runaway_and_the_tap_refuses_it():
    proc = subprocess.run([sys.executable, "-m", "watcher", "--log-level", "WARNING", "demo", "--real-chain"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "the runaway agent was frozen by the watcher and refused by the facilitator tap" in out, out[-3000:]
    assert "after the freeze -> 200" in out, out[-3000:]
