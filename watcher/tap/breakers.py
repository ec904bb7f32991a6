"""What the tap knows of the watcher's breakers, and the gate that refuses frozen payers.

    BreakerView.state(wallet) -> "closed" | "open" | "half_open" | "held" | None (unknown: view not current)
    BreakerView.is_blocked(wallet) -> bool | None

Implementations:
    TopicBreakerView   consumes `watcher.breaker` from the beginning (no consumer group) and keeps the
                       latest state per agent: records of type "change" carry "agent" and "state" (the
                       breaker helper's watcher.breaker.outbox.ChangeRecord); other types are skipped.
                       Records of one agent share a key, so the log's order is their order. Current
                       while a recent probe of the log end (one ListOffsets round-trip about every
                       second) has been read up to: a fetch from an unreachable broker returns nothing,
                       not an error, so reads alone cannot tell a quiet topic from a lost broker.
    AdminBreakerView   polls the admin API (GET /v1/agents?state=open|held, bearer token) every
                       `refresh_seconds`; current while the last poll is younger than `stale_after_seconds`.
                       The API answers at most PAGE agents per state: when a poll fills a page, the
                       agents it did not list are unknown (not closed), so the fail mode decides.
    StaticBreakerView  a fixed set (tests, or a hand-kept deny list).

`Gate` turns a view into a decision: a frozen payer (open or held) is refused with a clear reason; an
unknown state fails open (allowed, counted, `spendwatch_tap_breaker_view_stale` = 1) or closed (refused),
as configured. So does a payment naming no payer the tap can read (no authorization `from`, a malformed
body): counted, then allowed or refused (spendwatch_payer_unknown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Literal, Protocol

import httpx
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from watcher.sources.clients import stop_client
from watcher.tap.metrics import TapMetrics
from watcher.tap.records import _checksum

log = logging.getLogger("watcher.tap.breakers")
FROZEN = frozenset({"open", "held"})
FailMode = Literal["open", "closed"]
PAGE = 1000   # the admin API's largest `limit`


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation of this task that a client library turned into another error (aiokafka's
    start() answers a cancel during its bootstrap with KafkaConnectionError): the caller's retry loop must
    stop, not sleep on, or whoever cancelled it (the view's __aexit__) waits for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class BreakerView(Protocol):
    def state(self, wallet: str) -> str | None: ...
    def is_blocked(self, wallet: str) -> bool | None: ...


class _Base:
    def __init__(self) -> None:
        self.states: dict[str, str] = {}   # agent (checksum) -> state; closed agents are dropped
        self.current = False

    def fresh(self) -> bool:
        """True while the view is current (subclasses recompute it from the age of their last update)."""
        return self.current

    def state(self, wallet: str) -> str | None:
        if not self.fresh():
            return None
        return self.states.get(_checksum(wallet), "closed")

    def is_blocked(self, wallet: str) -> bool | None:
        s = self.state(wallet)
        return None if s is None else s in FROZEN

    def _set(self, agent: str, state: str) -> None:
        agent = _checksum(agent)
        if state == "closed":
            self.states.pop(agent, None)
        else:
            self.states[agent] = state


class _Following(_Base):
    """A view kept current by a background task (`_run`); `_close` releases what the task used."""

    task_name = "tap breaker view"

    def __init__(self) -> None:
        super().__init__()
        self._task: asyncio.Task | None = None

    async def __aenter__(self):
        self._task = asyncio.create_task(self._run(), name=self.task_name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self._close()

    async def _run(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        pass


class StaticBreakerView(_Base):
    def __init__(self, frozen: dict[str, str] | set[str] | None = None) -> None:
        super().__init__()
        self.current = True
        for a in frozen or ():
            self._set(a, frozen[a] if isinstance(frozen, dict) else "open")

    def freeze(self, wallet: str, state: str = "open") -> None:
        self._set(wallet, state)

    def release(self, wallet: str) -> None:
        self._set(wallet, "closed")


class _Change(msgspec.Struct):
    type: str
    agent: str = ""
    state: str = ""


_dec = msgspec.json.Decoder(_Change)


class TopicBreakerView(_Following):
    """Follows the `watcher.breaker` topic.

    About once a second (`probe_seconds`) the view asks the partition leaders for the log end (ListOffsets,
    bounded by `probe_timeout_seconds`). Once the consumer's position reaches that end, the view is known
    complete as of the moment the probe was sent: `fresh()` is True while that moment is younger than
    `stale_after_seconds`. One probe is outstanding at a time, so a consumer that lags keeps its age honest.
    """

    def __init__(self, bootstrap: str, topic: str = "watcher.breaker", *, stale_after_seconds: float = 30.0,
                 client_id: str = "spendwatch-tap-breakers") -> None:
        super().__init__()
        if stale_after_seconds <= 0:
            raise ValueError("stale_after_seconds must be > 0")
        self.bootstrap, self.topic, self.client_id = bootstrap, topic, client_id
        self.stale_after = stale_after_seconds
        self.probe_seconds = min(1.0, stale_after_seconds / 3)
        self.probe_timeout_seconds = min(5.0, stale_after_seconds / 2)
        self.records = self.bad = 0
        self.probe_failures = 0
        self.caught_up = asyncio.Event()
        self._last_ok = 0.0          # monotonic send time of the newest probe the consumer has read up to
        self._probe: tuple[float, dict[TopicPartition, int]] | None = None   # (sent at, log end) not yet reached
        self._next_probe, self._probe_ok = 0.0, True
        self._consumer: AIOKafkaConsumer | None = None

    def fresh(self) -> bool:
        self.current = self.caught_up.is_set() and time.monotonic() - self._last_ok < self.stale_after
        return self.current

    async def _close(self) -> None:
        c, self._consumer = self._consumer, None
        if c is not None:
            await stop_client(c, "breaker view consumer")

    def apply(self, raw: bytes) -> None:
        try:
            r = _dec.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.bad += 1
            return
        self.records += 1
        if r.type == "change" and r.agent and r.state:
            self._set(r.agent, r.state)

    async def _assign(self, c: AIOKafkaConsumer) -> list[TopicPartition]:
        while True:
            await c._client.force_metadata_update()   # topics() does not refresh partitions_for_topic
            parts = c.partitions_for_topic(self.topic)
            if parts:
                tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
                c.assign(tps)
                await c.seek_to_beginning(*tps)
                return tps
            log.info("breaker topic %s not there yet; the view stays unknown until it is", self.topic)
            await asyncio.sleep(1.0)

    async def _probe_log_end(self, c: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        """Send a probe when due and none is outstanding; a failed or slow one is counted and retried."""
        now = time.monotonic()
        if self._probe is not None or now < self._next_probe:
            return
        self._next_probe = now + self.probe_seconds
        try:
            end = await asyncio.wait_for(c.end_offsets(tps), self.probe_timeout_seconds)
        except (KafkaError, asyncio.TimeoutError) as exc:
            self.probe_failures += 1
            if self._probe_ok:
                log.warning("breaker view: no answer from the broker for %s (%r); the view goes stale after "
                            "%.0f s without one", self.topic, exc, self.stale_after)
            self._probe_ok = False
            return
        if not self._probe_ok:
            log.info("breaker view: the broker answers again for %s", self.topic)
        self._probe_ok = True
        self._probe = (now, end)

    async def _reached(self, c: AIOKafkaConsumer) -> None:
        """If the consumer has read up to the outstanding probe's log end, the view is current as of it."""
        if self._probe is None:
            return
        sent, end = self._probe
        for tp, offset in end.items():
            try:
                pos = await asyncio.wait_for(c.position(tp), self.probe_timeout_seconds)
            except asyncio.TimeoutError:
                return
            if pos < offset:
                return
        self._probe, self._last_ok = None, sent
        if not self.caught_up.is_set():
            self.caught_up.set()
            log.info("breaker view caught up: %d records, %d agents not closed", self.records, len(self.states))

    async def _run(self) -> None:
        delay = 0.5
        while True:
            c = self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                                  enable_auto_commit=False, auto_offset_reset="earliest",
                                                  client_id=self.client_id, fetch_max_wait_ms=100)
            self._probe, self._next_probe, self._probe_ok = None, 0.0, True
            try:
                await c.start()
                tps = await self._assign(c)
                self.states.clear()
                while True:
                    batch = await c.getmany(timeout_ms=200, max_records=10_000)
                    for msgs in batch.values():
                        for m in msgs:
                            self.apply(m.value)
                    await self._probe_log_end(c, tps)
                    await self._reached(c)
                    delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _raise_if_cancelled()   # __aexit__ stops the consumer (self._consumer)
                log.warning("breaker view: reading %s failed (%r); retrying in %.1f s", self.topic, exc, delay)
                self.caught_up.clear()
                await stop_client(c, "breaker view consumer")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


class AdminBreakerView(_Following):
    """Polls the watcher's admin API for agents whose breaker is open or held."""

    def __init__(self, url: str, token: str, *, refresh_seconds: float = 2.0, stale_after_seconds: float = 30.0,
                 timeout_seconds: float = 5.0) -> None:
        super().__init__()
        self.url, self.refresh = url.rstrip("/"), refresh_seconds
        self.stale_after = stale_after_seconds
        self._client = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=timeout_seconds)
        self._last_ok = 0.0
        self.polls = self.failures = 0
        self.truncated = False     # the last poll filled a page: agents it did not list are unknown
        self.ready = asyncio.Event()

    def state(self, wallet: str) -> str | None:
        s = super().state(wallet)
        return None if s == "closed" and self.truncated else s

    def fresh(self) -> bool:
        self.current = self._last_ok > 0 and time.monotonic() - self._last_ok < self.stale_after
        return self.current

    task_name = "tap admin breaker view"

    async def _close(self) -> None:
        await self._client.aclose()

    async def poll(self) -> None:
        states: dict[str, str] = {}
        full = []
        for st in ("open", "held"):
            r = await self._client.get(f"{self.url}/v1/agents", params={"state": st, "limit": str(PAGE)})
            r.raise_for_status()
            rows = r.json().get("agents", [])
            if len(rows) >= PAGE:
                full.append(st)
            for row in rows:
                states[_checksum(row["agent"])] = row.get("breaker", {}).get("state", st)
        if full and not self.truncated:
            log.error("breaker view: the admin API lists at most %d agents per state and %s filled it: agents it "
                      "did not list count as unknown (--fail decides for them); read the watcher.breaker topic "
                      "instead (no --admin-url)", PAGE, " and ".join(full))
        self.states, self.truncated = states, bool(full)
        self._last_ok = time.monotonic()
        self.polls += 1
        self.ready.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _raise_if_cancelled()
                self.failures += 1
                log.warning("breaker view: admin API %s failed (%r)", self.url, exc)
            await asyncio.sleep(self.refresh)


class Refusal(msgspec.Struct, frozen=True):
    reason: str      # machine-readable: the x402 invalidReason / errorReason
    message: str     # for people
    state: str


def refusal_reason(state: str) -> str:
    return "spendwatch_agent_held" if state == "held" else "spendwatch_agent_frozen"


class Gate:
    """Decides per payer: None (let it pay) or a Refusal. Never raises and never waits."""

    def __init__(self, view: BreakerView, *, fail_mode: FailMode = "open", metrics: TapMetrics | None = None) -> None:
        if fail_mode not in ("open", "closed"):
            raise ValueError("fail_mode must be 'open' or 'closed'")
        self.view, self.fail_mode = view, fail_mode
        self.metrics = metrics or TapMetrics()
        self._broken = False
        fresh = getattr(view, "fresh", None)
        if fresh is not None:  # computed at scrape time: right also while no payment comes through
            self.metrics.view_stale.set_function(lambda: 0.0 if fresh() and not self._broken else 1.0)

    def check_all(self, payers: list[str], where: str = "verify") -> tuple[str | None, Refusal | None]:
        """The first of `payers` (every wallet a payload names) that is refused, and why; else (the paying
        one or None, None). No payer at all (a payload with no authorization `from`, or a body the tap
        cannot read) is unknown: no breaker can be checked, so the fail mode decides."""
        if not payers:
            return None, self._unknown(where, Refusal(
                "spendwatch_payer_unknown", "spendwatch cannot tell who pays (the payment payload names no "
                "authorization `from`) and fails closed", "no_payer"))
        for payer in payers:
            refusal = self.check(payer, where)
            if refusal is not None:
                return payer, refusal
        return payers[0], None

    def check(self, payer: str | None, where: str = "verify") -> Refusal | None:
        if not payer:
            return None
        try:
            state = self.view.state(payer)
            self._broken = False
        except Exception as exc:  # a broken view must not break payments
            log.error("breaker view failed for %s: %r", payer, exc)
            state, self._broken = None, True
        if state is None:
            self.metrics.view_stale.set(1)
            return self._unknown(where, Refusal("spendwatch_breaker_unavailable",
                                                f"spendwatch cannot tell whether {payer} is frozen and fails closed",
                                                "unknown"))
        self.metrics.view_stale.set(0)
        if state not in FROZEN:
            return None
        self.metrics.refused.labels(where, state).inc()
        who = "held by a person" if state == "held" else "frozen by spendwatch (runaway spend)"
        return Refusal(refusal_reason(state), f"payer {payer} is {who}; payments refused until released", state)

    def _unknown(self, where: str, refusal: Refusal) -> Refusal | None:
        """A payment whose breaker cannot be checked: counted, then let through (fail open) or refused."""
        self.metrics.breaker_unknown.labels(self.fail_mode).inc()
        if self.fail_mode == "open":
            return None
        self.metrics.refused.labels(where, refusal.state).inc()
        return refusal
