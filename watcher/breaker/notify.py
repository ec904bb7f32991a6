"""Direct notifications of trips and escalations: a Slack incoming webhook and PagerDuty Events API v2.

Both optional and best effort (a few quick retries, never blocking a batch); the durable path to the
wallet service is the webhook. PagerDuty: `trigger` when a breaker opens (or a person holds it) and when
an escalation is raised; `resolve` with the same dedup_key when it is released (half-open or closed) or
the escalation is approved / turned into a freeze.

    trip       dedup_key "spendwatch/<wallet>/trip/<trips>"
    escalation dedup_key "spendwatch/<wallet>/escalation/<decision id>"
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from watcher.breaker.config import BreakerSettings
from watcher.breaker.metrics import BreakerMetrics
from watcher.breaker.state import Effect

log = logging.getLogger("watcher.breaker.notify")


def pagerduty_events(e: Effect, routing_key: str) -> list[dict[str, Any]]:
    """The PagerDuty events (0, 1 or 2) an effect calls for."""
    b = e.breaker
    trip = f"spendwatch/{e.agent}/trip/{b.trips}"
    base = {"routing_key": routing_key}
    out = []
    if e.kind in ("opened", "held"):
        if e.kind == "opened" and e.evidence.get("rule") == "escalation_timeout":
            esc = (e.evidence.get("event_ids") or [None])[0]
        else:   # a hold answers the pending escalation
            esc = e.evidence.get("escalation")
        if esc:
            out.append({**base, "event_action": "resolve", "dedup_key": f"spendwatch/{e.agent}/escalation/{esc}"})
        out.append({**base, "event_action": "trigger", "dedup_key": trip, "payload": {
            "summary": f"spendwatch froze agent {e.agent}: {e.reason}"[:1024], "source": "spendwatch",
            "severity": "critical", "component": e.agent, "group": "breaker", "class": e.kind,
            "custom_details": {"breaker": b.state, "cause": e.cause, "by": e.by, "evidence": e.evidence}}})
    elif e.kind == "escalated":
        out.append({**base, "event_action": "trigger", "dedup_key": f"spendwatch/{e.agent}/escalation/{e.cause}",
                    "payload": {"summary": f"spendwatch asks a person about agent {e.agent}: {e.reason}"[:1024],
                                "source": "spendwatch", "severity": "warning", "component": e.agent,
                                "group": "breaker", "class": "escalation", "custom_details": e.evidence}})
    elif e.kind in ("approved", "expired"):
        out.append({**base, "event_action": "resolve",
                    "dedup_key": f"spendwatch/{e.agent}/escalation/{e.evidence.get('escalation')}"})
    elif e.kind in ("half_open", "closed") and e.previous in ("open", "held"):
        out.append({**base, "event_action": "resolve", "dedup_key": trip})
    return out


def slack_message(e: Effect) -> dict[str, Any] | None:
    icons = {"opened": ":rotating_light:", "held": ":octagonal_sign:", "escalated": ":raising_hand:",
             "half_open": ":large_yellow_circle:", "closed": ":white_check_mark:", "approved": ":ok:",
             "expired": ":hourglass:"}
    if e.kind not in icons:
        return None
    text = (f"{icons[e.kind]} spendwatch: agent `{e.agent}` breaker {e.previous} -> {e.state} ({e.kind}, by {e.by})"
            f"\n{e.reason}")
    return {"text": text}


class Notifier:
    """Async context manager; `on_effect(e)` schedules the notifications of one breaker change."""

    def __init__(self, b: BreakerSettings, metrics: BreakerMetrics | None = None) -> None:
        self.slack = b.slack_webhook_url.get_secret_value() if b.slack_webhook_url else None
        self.pd_key = b.pagerduty_routing_key.get_secret_value() if b.pagerduty_routing_key else None
        self.pd_url = b.pagerduty_url
        self.timeout = b.notify_timeout_seconds
        self.attempts = b.notify_attempts
        self.metrics = metrics or BreakerMetrics()
        self.tasks: set[asyncio.Task] = set()
        self.session: aiohttp.ClientSession | None = None
        self.sem = asyncio.Semaphore(8)
        self.pd_chain: asyncio.Future | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.slack or self.pd_key)

    async def __aenter__(self) -> "Notifier":
        if self.enabled:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(self, *exc) -> None:
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2.0)
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
            self.session = None

    def on_effect(self, e: Effect) -> None:
        if self.session is None:
            return
        if self.slack and (msg := slack_message(e)):
            self._spawn(self._post("slack", self.slack, msg))
        if self.pd_key:
            events = pagerduty_events(e, self.pd_key)
            if events:  # in order: a resolve must not overtake its trigger
                prev = self.pd_chain
                self.pd_chain = self._spawn(self._chain(prev, events))

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    async def _chain(self, prev, events) -> None:
        if prev is not None:
            await asyncio.gather(prev, return_exceptions=True)
        for ev in events:
            await self._post("pagerduty", self.pd_url, ev)

    async def _post(self, channel: str, url: str, body: dict) -> bool:
        for attempt in range(self.attempts):
            try:
                async with self.sem, self.session.post(url, json=body) as resp:
                    await resp.read()
                    if resp.status < 300:
                        self.metrics.notifications.labels(channel, "sent").inc()
                        return True
                    detail = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                detail = repr(exc)
            await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))
        self.metrics.notifications.labels(channel, "failed").inc()
        log.warning("%s notification failed after %d attempts: %s", channel, self.attempts, detail)
        return False
