"""The wallet-service webhook: the body, and the async sender with retries, ordering and a bound.

    POST <webhook.url>
    Content-Type: application/json
    Idempotency-Key: b-<24 hex>          the same on every retry and after a restart (= body "id")
    Spendwatch-Event: freeze | unfreeze | escalate
    Spendwatch-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of "<t>.<body>">  (see signing.py)

    {"id": "b-...", "type": "freeze", "agent": "<name or wallet>", "wallet": "0x...",
     "reason": "...", "evidence": {"decision_id": ..., "rule": ..., "observed": ..., ...},
     "breaker": {"state": "open", "previous": "closed", "since": "...Z", "trips": 1,
                 "reopens_at": "...Z" | null, "probation_until": "...Z" | null,
                 "cap_factor": 0.25 | null, "caps": {...} | null, "escalation": "d-..." | null},
     "occurred_at": "2026-11-23T10:00:00.123Z"}

Delivery: at least once; the receiver de-duplicates on Idempotency-Key. Per agent one webhook at a time,
in order (a freeze is never overtaken by a later unfreeze); across agents at most `max_concurrency` in
flight. A failed attempt (connection error, timeout, non-2xx) is retried after an exponential back-off
with full jitter, re-signed each time, until `retry_budget_seconds` have passed since the change, or
since this sender started if that is later (a webhook kept while webhook.url was unset, or while the
daemon was down, gets the whole budget, not one attempt); then the webhook is dead-lettered (on the
breaker topic, and spendwatch_webhook_dead_letters_total rises).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import Any, Callable

import aiohttp
import msgspec

from watcher.breaker.config import WebhookSettings
from watcher.breaker.metrics import BreakerMetrics
from watcher.breaker.signing import EVENT_HEADER, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign
from watcher.breaker.state import HALF_OPEN, Effect

log = logging.getLogger("watcher.breaker.webhook")
_enc = msgspec.json.Encoder()


def iso(ms: int | None) -> str | None:
    if not ms:
        return None
    from watcher.detect.decision import rfc3339
    return rfc3339(int(ms))


def webhook_body(e: Effect, *, name: str | None = None, cap_factor: float | None = None) -> bytes:
    b = e.breaker
    return _enc.encode({
        "id": e.id, "type": e.webhook, "agent": name or e.agent, "wallet": e.agent, "reason": e.reason,
        "evidence": {**e.evidence, "by": e.by, "cause": e.cause, "kind": e.kind},
        "breaker": {"state": b.state, "previous": e.previous, "since": iso(b.since_ms), "trips": b.trips,
                    "reopens_at": iso(b.reopen_ms), "probation_until": iso(b.probation_until_ms),
                    "cap_factor": cap_factor if b.state == HALF_OPEN else None, "caps": b.caps,
                    "escalation": b.escalation},
        "occurred_at": iso(e.at_ms)})


class Delivery(msgspec.Struct, frozen=True):
    """One webhook to deliver: what the outbox stores and the sender sends."""

    id: str
    partition: int
    agent: str
    type: str
    body: bytes
    created_ms: int
    seq: int = 0


# (delivery, outcome, attempts, detail); outcome delivered | dead | disabled (no url: not sent, still owed)
Result = Callable[[Delivery, str, int, str], None]


def backoff(attempt: int, initial: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential back-off with jitter: uniform in [d/2, d], d = min(cap, initial * 2**attempt)."""
    d = min(cap, initial * (2 ** min(attempt, 30)))
    return d / 2 + rand() * d / 2


class WebhookSender:
    """Async context manager: `submit()` queues a Delivery; `on_result` hears how each one ended."""

    def __init__(self, ws: WebhookSettings, on_result: Result | None = None, metrics: BreakerMetrics | None = None,
                 *, user_agent: str = "spendwatch-breaker/1") -> None:
        self.ws = ws
        self.secrets = ws.secret_values()
        self.on_result = on_result or (lambda *a: None)
        self.metrics = metrics or BreakerMetrics()
        self.user_agent = user_agent
        self.queues: dict[str, deque[Delivery]] = {}
        self.workers: dict[str, asyncio.Task] = {}
        self.known: set[str] = set()
        self.sem = asyncio.Semaphore(ws.max_concurrency)
        self.session: aiohttp.ClientSession | None = None
        self.closed = False
        self.sent_at: dict[str, float] = {}   # id -> wall time of the first 2xx (for benches)
        self.started_ms = int(time.time() * 1000)   # the retry budget runs from here at the earliest

    async def __aenter__(self) -> "WebhookSender":
        if self.closed:
            from watcher.errors import ClosedError
            raise ClosedError("WebhookSender cannot be reused after close")
        conn = aiohttp.TCPConnector(limit=self.ws.max_concurrency, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(
            total=self.ws.timeout_seconds, sock_connect=self.ws.connect_timeout_seconds))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self, drain_seconds: float = 2.0) -> None:
        if self.closed:
            return
        self.closed = True
        if self.workers:
            await asyncio.wait(list(self.workers.values()), timeout=drain_seconds)
        for t in list(self.workers.values()):
            t.cancel()
        await asyncio.gather(*self.workers.values(), return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    # -- queue ---------------------------------------------------------------------------------
    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def submit(self, d: Delivery) -> bool:
        """Queue a delivery behind the agent's earlier ones; a repeat of a queued id is ignored."""
        if d.id in self.known or self.closed:
            return False
        self.known.add(d.id)
        self.queues.setdefault(d.agent, deque()).append(d)
        self.metrics.pending.set(self.pending())
        if d.agent not in self.workers:
            self.workers[d.agent] = asyncio.get_running_loop().create_task(self._worker(d.agent),
                                                                           name=f"webhook {d.agent}")
        return True

    def forget_partition(self, partition: int) -> int:
        """Stop sending what belongs to a partition this process no longer owns (its new owner will)."""
        n = 0
        for q in self.queues.values():
            # in place: the agent's worker holds this deque (a new one would be popped, unsent, when it ends)
            head = q[0] if q else None
            keep = []
            for d in q:
                if d.partition != partition or d is head:
                    keep.append(d)
                else:
                    self.known.discard(d.id)
            n += len(q) - len(keep)
            q.clear()
            q.extend(keep)
        return n

    # -- delivery ------------------------------------------------------------------------------
    async def _worker(self, agent: str) -> None:
        q = self.queues[agent]
        try:
            while q:
                d = q[0]
                outcome, attempts, detail = await self._deliver(d)
                if q and q[0] is d:
                    q.popleft()
                self.known.discard(d.id)
                self.metrics.deliveries.labels(d.type, outcome).inc()
                self.metrics.pending.set(self.pending())
                try:
                    self.on_result(d, outcome, attempts, detail)
                except Exception:
                    log.exception("result callback failed for %s", d.id)
        finally:
            if not q:
                self.queues.pop(agent, None)
            self.workers.pop(agent, None)
            if q and not self.closed:  # cancelled mid-queue by a bug: keep going
                self.workers[agent] = asyncio.get_running_loop().create_task(self._worker(agent))

    async def _deliver(self, d: Delivery) -> tuple[str, int, str]:
        if not self.ws.url:
            log.info("webhook %s (%s %s) not sent: webhook.url is not configured; it stays undelivered on the "
                     "breaker topic until a start with a url", d.id, d.type, d.agent)
            return "disabled", 0, "no url"
        attempt, detail = 0, ""
        deadline_ms = max(d.created_ms, self.started_ms) + self.ws.retry_budget_seconds * 1000
        while True:
            attempt += 1
            async with self.sem:
                ok, detail = await self._post(d, attempt)
            if ok:
                self.sent_at.setdefault(d.id, time.time())
                self.metrics.latency.observe(max(0.0, time.time() - d.created_ms / 1000))
                if attempt > 1:
                    log.info("webhook %s (%s %s) delivered on attempt %d", d.id, d.type, d.agent, attempt)
                return "delivered", attempt, detail
            delay = backoff(attempt - 1, self.ws.retry_initial_seconds, self.ws.retry_max_seconds)
            now_ms = time.time() * 1000
            if now_ms + delay * 1000 > deadline_ms:
                self.metrics.dead_letters.inc()
                log.error("webhook %s (%s %s) DEAD after %d attempts over %.0f s: %s; the wallet service never "
                          "acknowledged it. Check webhook.url and the receiver, then re-send by hand.",
                          d.id, d.type, d.agent, attempt, (now_ms - d.created_ms) / 1000, detail)
                return "dead", attempt, detail
            if attempt in (1, 5) or attempt % 20 == 0:
                log.warning("webhook %s (%s %s) attempt %d failed (%s); retrying in %.2f s", d.id, d.type,
                            d.agent, attempt, detail, delay)
            self.metrics.oldest_pending.set((now_ms - d.created_ms) / 1000)
            await asyncio.sleep(delay)

    async def _post(self, d: Delivery, attempt: int) -> tuple[bool, str]:
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: d.id, EVENT_HEADER: d.type,
                   SIGNATURE_HEADER: sign(d.body, self.secrets), "Spendwatch-Attempt": str(attempt),
                   "User-Agent": self.user_agent}
        t0 = time.monotonic()
        try:
            async with self.session.post(self.ws.url, data=d.body, headers=headers) as resp:
                await resp.read()
                klass = f"{resp.status // 100}xx"
                self.metrics.attempt(klass, time.monotonic() - t0)
                return 200 <= resp.status < 300, f"HTTP {resp.status}"
        except asyncio.TimeoutError:
            self.metrics.attempt("timeout", time.monotonic() - t0)
            return False, "timeout"
        except aiohttp.ClientError as exc:
            self.metrics.attempt("error", time.monotonic() - t0)
            return False, f"{type(exc).__name__}: {exc}"[:200]
