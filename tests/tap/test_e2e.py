"""End to end, every part real, on loopback: anvil + test USDC, the x402 SDK facilitator over HTTP, the
spendwatch facilitator tap in front of it, a FastAPI merchant with the SDK middleware pointed at the tap,
agents paying with the SDK's httpx client, the chain bridge and the watcher daemon (detection + breakers).

One agent runs away: the watcher freezes it (cap_1m), its next request gets HTTP 402 with the tap's
refusal, the other agents keep paying; refused calls never reach the upstream facilitator; settle records
and on-chain transfers reconcile with no `unsettled` or `shadow_spend` finding for the honest agents, while
a payment the runaway makes around the facilitator (straight on chain) is found as `shadow_spend`.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from tests.polling import wait_for
from tests.topics import read_at_least, read_records
from watcher.events import Decoder
from watcher.events.observation import Kind
from watcher.realdemo import PRICES, RealLoop

pytestmark = pytest.mark.integration
DEC = Decoder(max_future_skew_ms=None)


async def test_runaway_agent_is_frozen_and_refused_by_the_tap(kafka_bootstrap, unique, tmp_path):
    async with RealLoop(kafka_bootstrap, agents=4, suffix=unique, workdir=tmp_path, findings_after_seconds=5) as loop:
        honest, runaway = loop.agents[:3], loop.agents[3]
        clients = [loop.client(i) for i in range(4)]
        try:
            for _ in range(2):
                for i in range(3):
                    assert await loop.pay(clients[i], "search") == (200, None)
            statuses = []
            deadline = asyncio.get_running_loop().time() + 60      # a slow, shared machine: no timing asserts
            while asyncio.get_running_loop().time() < deadline:
                status, reason = await loop.pay(clients[3], "gpu")
                statuses.append((status, reason))
                if status != 200:
                    break
                await asyncio.sleep(0.5)
            assert statuses[-1] == (402, "spendwatch_agent_frozen"), (
                len(statuses), statuses[-1], loop.daemon.counters, dict(loop.daemon.decision_counts),
                loop.view.records, loop.view.states, loop.breakers.effects)
            paid_runaway = len(statuses) - 1
            assert paid_runaway >= 4                # 0.50 each against a 2 USDC per-minute cap
            assert loop.view.state(runaway.address) == "open"
            # the freeze holds at the facilitator: again refused, the others keep paying
            assert await loop.pay(clients[3], "search") == (402, "spendwatch_agent_frozen")
            for i in range(3):
                assert await loop.pay(clients[i], "search") == (200, None)
            # confirm the last payments now: left pending while the test reads topics, a slow machine could pass
            # their unsettled deadline (event time follows the wall clock on an idle partition)
            await loop.confirm(3)
        finally:
            for c in clients:
                await c.aclose()

        settled = 3 * 3 + paid_runaway
        await loop.wait(lambda: loop.publisher.published >= settled * 2 + 2, 30, "the tap's records")
        assert loop.publisher.dropped == 0
        assert loop.tap.counts["refused"] == 2 and loop.facilitator.calls["settle"] == settled
        # a refused /verify never reaches upstream, an allowed one does (a freeze landing between a payment's
        # verify and its settle refuses the settle instead: hence counted, not assumed to be 2)
        refused_at_verify = sum(loop.metrics.registry.get_sample_value(
            "spendwatch_tap_refused_total", {"where": "verify", "state": st}) or 0
            for st in ("open", "held", "unknown"))
        assert refused_at_verify >= 1
        assert loop.facilitator.calls["verify"] == loop.tap.counts["verify"] - refused_at_verify >= settled

        # the tap's records: well-formed, keyed by the payer, one settle per paid request
        recs = await read_at_least(loop.bootstrap, loop.settings.kafka.payments_topic, settled * 2 + 2)
        obs = [DEC.decode(m.value) for m in recs]
        assert all(m.key.decode() == o.agent for m, o in zip(recs, obs))
        settles = [o for o in obs if o.kind == Kind.SETTLE]
        assert len(settles) == settled and all(o.status == "settled" and o.source == "spendwatch-tap" for o in settles)
        refusals = [o for o in obs if o.kind == Kind.VERIFY and o.status == "invalid"]
        assert {(o.agent, o.reason) for o in refusals} == {(runaway.address, "spendwatch_agent_frozen")}

        # the positive control for the findings check below: the runaway pays around the facilitator, straight
        # on chain, so the same join, in the same run, must report it as shadow_spend
        _, around = await loop.token.pay(runaway, loop.merchant, 10_000)
        around_tx = around["transactionHash"].lower()
        assert int(around["status"], 16) == 1

        # on-chain transfers confirm; the watcher joins them with the settles, counting each payment once
        await loop.confirm(3)
        txs = {o.tx for o in settles}

        def joined() -> bool:
            from tests.integration.helpers import agent_sums
            sums = agent_sums(loop.daemon)
            want = {a.address: (3 * PRICES["search"], 3) for a in honest}
            return all(sums.get(a) == v for a, v in want.items())

        await loop.wait(joined, 60, "the watcher's windows to hold exactly the honest agents' spend")

        async def every_settle_confirmed() -> bool:  # the topic holds the bridge's chain.progress records too
            chain = [DEC.decode(m.value) for m in await read_records(loop.bootstrap, loop.settings.kafka.chain_topic)]
            return txs <= {o.tx for o in chain if o.kind == Kind.TRANSFER and o.status == "confirmed"}

        await wait_for(every_settle_confirmed, 60, "a confirmed transfer of every settle on the chain topic")
        await asyncio.sleep(loop.findings_after + 2)      # past the unsettled / shadow-spend deadlines
        findings: list[dict] = []
        for _ in range(60):  # the control's finding first: it proves findings are made and read in this run
            findings = [msgspec.json.decode(m.value) for m in
                        await read_records(loop.bootstrap, loop.settings.kafka.findings_topic)]
            if any(f.get("kind") == "shadow_spend" and str(f.get("tx")).lower() == around_tx for f in findings):
                break
            await asyncio.sleep(0.5)
        control = [f for f in findings if str(f.get("tx")).lower() == around_tx]
        assert [(f.get("kind"), f.get("agent")) for f in control] == [("shadow_spend", runaway.address)], findings
        honest_addrs = {a.address for a in honest}
        bad = [f for f in findings if f.get("kind") in ("unsettled", "shadow_spend") and f.get("agent") in honest_addrs]
        assert bad == []
        decisions: list[dict] = []
        for _ in range(60):  # the first publish to a new topic may still be in its retry back-off
            decisions = [msgspec.json.decode(m.value) for m in
                         await read_records(loop.bootstrap, loop.settings.kafka.decisions_topic)]
            if any(d.get("kind") == "freeze" and d.get("agent") == runaway.address and d.get("rule") == "cap_1m"
                   for d in decisions):
                break
            await asyncio.sleep(0.5)
        # the cap froze it (the control's shadow_spend may freeze it again, as a finding)
        assert any(d.get("kind") == "freeze" and d.get("agent") == runaway.address and d.get("rule") == "cap_1m"
                   for d in decisions), decisions
