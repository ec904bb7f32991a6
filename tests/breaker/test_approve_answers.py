"""What a person's approve answers when there is nothing to approve (plain values; a fake producer).

An escalation waits: approved (200, changed). None waits for a known agent: 200, changed false, and
nothing changes, so a later escalation is still asked (no approval ahead of time that the answer does
not mention and the breaker log does not record). An agent the watcher has never seen (a mistyped
wallet): 404 unknown agent, not a 200 that approves nothing.
"""

from __future__ import annotations

import httpx

from tests.breaker.conftest import TOKEN, wallet
from tests.breaker.test_approve_restart import POLICY, U, Log, _batch
from tests.detect.conftest import AGENT, T0, Harness
from watcher.breaker import BreakerStage, load_breaker_config
from watcher.breaker.admin import AdminServer
from watcher.stages import DetectStage


def _stage(h: Harness) -> tuple[BreakerStage, Log]:
    """A BreakerStage over the daemon's own DetectStage, whose partition 0 is the harness's detector."""
    cfg = load_breaker_config(None, admin={"port": 0, "token": TOKEN})
    control = DetectStage(h.policy, "decisions")    # the daemon's detection stage; partition 0: the harness's
    control.detectors[0] = h.detector
    brk, log = BreakerStage(cfg, control=control, partitions=1), Log()
    brk.log, brk.producer = log, log
    brk.restore(0, None)
    return brk, log


async def test_approve_answers_404_for_an_unknown_agent_and_approves_nothing_ahead_of_time():
    h = Harness(POLICY)
    brk, log = _stage(h)
    assert _batch(h, brk, log, [h.settle(T0, U // 2)]) == []              # known, nothing to approve
    async with AdminServer(brk.cfg.admin, brk) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            stranger = wallet(77)
            r = await http.post(f"/v1/agents/{stranger}/approve", json={})
            assert r.status_code == 404, r.text
            assert "unknown agent" in r.json()["error"] and stranger in r.json()["error"] and r.json()["fix"]

            r = await http.post(f"/v1/agents/{AGENT}/approve", json={})
            assert r.status_code == 200 and r.json()["changed"] is False
            assert h.detector.approved_until == {}                          # no silent approval ahead
            [esc] = _batch(h, brk, log, [h.settle(T0 + 1000, 2 * U)])       # so the next one is asked
            assert esc.kind == "escalate" and brk.parts[0].get(AGENT).escalation == esc.id

            r = await http.post(f"/v1/agents/{AGENT}/approve", json={}, headers={"Idempotency-Key": "k1"})
            assert r.status_code == 200 and r.json()["changed"] is True
            again = await http.post(f"/v1/agents/{AGENT}/approve", json={}, headers={"Idempotency-Key": "k1"})
            assert again.status_code == 200 and again.json()["changed"] is False   # a retry: acts once
    assert h.detector.pending == {}
