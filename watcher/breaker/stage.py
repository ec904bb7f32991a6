"""BreakerStage: decisions in, breaker changes out (to the log, the webhook sender and notifications).

Runs after the detection stage, reading `ctx.decisions` (freeze -> open, escalate -> escalation, an
escalation_timeout the policy does not freeze on -> the escalation expires) and
ticking the clock (cool-down -> half-open, probation -> closed).

Clocks: the breakers tick at `ctx.now_ms`, the partition's clock: its own event time while the daemon
catches up a backlog, the wall clock once caught up. A change's time (`since`, the record's `at_ms`, the
webhook's `occurred_at`) is its decision's, i.e. the triggering event's, and a cool-down runs from it
(`reopens_at`), so reading the same records again (a handoff, a crash, a second group) gives the same
webhook bodies under the same Idempotency-Key. For a freeze about a backlog older than the cool-down
this means the breaker replays the history: it opens and, once the backlog's time passes `reopens_at`,
goes half-open (probation caps), and trips again if the agent kept spending. Deadlines a person must
meet are different: an escalation raised while catching up times out from the wall clock
(watcher/detect/verdicts.py), and a freeze on that timeout carries the wall-clock deadline. `created_ms` of the record and of the
delivery is the wall clock; people's actions (hold, release, approve, caps) happen at the wall clock.

Each change is appended to `ctx.publish` as a `change` record of `watcher.breaker` (durable before the
batch's input offsets are committed) and, when the wallet service must hear of it, queued for the webhook
sender at once.

State per input partition: the breakers and the undelivered webhooks (the outbox), both in the
checkpoint; restore merges the checkpoint with the breaker log's fold (see outbox.py), re-queues every
undelivered webhook and re-aligns the detector (an agent released after the checkpoint is released again).
The metrics follow ownership: restore hands the restored breakers to `BreakerMetrics.restored` (fleet
gauges and per-agent series, no transition counted), drop hands the partition's agents to `forgotten`.

People act through `act()` (the admin API calls it): the change is applied, published and awaited
before the answer, so a crash right after an acknowledged hold cannot lose it. When Kafka does not take it
within RECORD_TIMEOUT_SECONDS the answer says so (NotRecordedError: applied here, not yet recorded); the
record is kept and published with the next batch, or by the next command, whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Callable, Protocol

import msgspec
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from watcher.breaker.config import BreakerConfig
from watcher.breaker.metrics import BreakerMetrics
from watcher.breaker.outbox import FINAL_OUTCOMES, BreakerLog, DeliveredRecord, change_record, encode_record
from watcher.breaker.state import CLOSED, FROZEN, HALF_OPEN, Breakers, Effect, Timing
from watcher.breaker.webhook import Delivery, webhook_body
from watcher.errors import SpendwatchError

log = logging.getLogger("watcher.breaker")
ACTIONS = ("hold", "release", "approve", "caps")
RECORD_TIMEOUT_SECONDS = 5.0   # a person's change not on the broker by then: answered as not recorded


class NotOwnedError(SpendwatchError):
    """The agent's partition is not owned by this replica (ask the replica that owns it)."""


class NotRecordedError(SpendwatchError):
    """A person's change is applied in this process but Kafka has not recorded it (yet)."""


class UnknownAgentError(SpendwatchError):
    """A command that needs an agent this replica has never seen (no payment, no breaker): a wrong wallet."""


class DetectorControl(Protocol):
    """What the breaker needs from the detection stage, per input partition. `set_caps` and `knows` (the
    detector has seen the agent) are optional."""

    def release(self, partition: int, agent: str) -> bool: ...
    def approve(self, partition: int, agent: str, only_pending: bool = False) -> bool: ...
    def is_frozen(self, partition: int, agent: str) -> bool: ...


def _canon(agent: str) -> str:
    try:
        from eth_utils import to_checksum_address
        return to_checksum_address(agent)
    except Exception:  # not an address: names pass through (the API validates)
        return agent


class BreakerStage:
    def __init__(self, cfg: BreakerConfig | None = None, *, control: DetectorControl | None = None,
                 names: dict[str, str] | None = None, metrics: BreakerMetrics | None = None,
                 partitions: int = 8) -> None:
        self.cfg = cfg or BreakerConfig()
        self.timing = Timing.from_settings(self.cfg.breaker)
        self.topic = self.cfg.breaker.topic
        self.control = control
        self.names = names or {}
        self.metrics = metrics or BreakerMetrics()
        self.partitions = partitions
        self.parts: dict[int, Breakers] = {}
        self.outbox: dict[int, dict[str, Delivery]] = {}
        self.where: dict[str, int] = {}
        self.reconcile: dict[int, set[str]] = {}
        # attached by the service (service.py)
        self.sender = None
        self.notifier = None
        self.log: BreakerLog | None = None
        self.producer = None
        self.locate: Callable[[str], int | None] | None = None
        self.effects = 0
        self.unrecorded: list[tuple[str, bytes, bytes]] = []   # people's changes Kafka has not taken yet

    # -- the stage protocol --------------------------------------------------------------------
    def on_batch(self, ctx) -> None:
        if self.unrecorded:  # people's changes Kafka refused: the daemon's publish retries them
            ctx.publish.extend(self.unrecorded)
            self.unrecorded = []
        p = ctx.partition
        br = self.parts.get(p)
        if br is None:
            self.restore(p, None)
            br = self.parts[p]
        if p in self.reconcile:
            self._reconcile(p)
        for d in ctx.decisions:
            if br.acts_on(d):
                self.where[d.agent] = p
                effects = br.on_decision(d, ctx.real_from_ms)
                for e in effects:
                    self._emit(p, e, ctx.publish)
                if not effects:
                    self._answered_before(p, br, d)
        for e in br.tick(ctx.now_ms):
            self._emit(p, e, ctx.publish)

    def snapshot(self, partition: int) -> object:
        br = self.parts.get(partition)
        if br is None:
            return None
        box = self.outbox.get(partition, {})
        return {"v": 1, "breakers": br.snapshot(),
                "outbox": [msgspec.to_builtins(d, builtin_types=(bytes,)) for d in box.values()]}

    def restore(self, partition: int, data: object | None) -> None:
        data = data or {}
        br = Breakers.restore(data.get("breakers"), self.timing)
        box = {d.id: d for d in (msgspec.convert(x, Delivery) for x in data.get("outbox", []))}
        touched: set[str] = set()
        approved: list[str] = []   # escalations approved after the checkpoint (its detector still waits)
        if self.log is not None:
            fold = self.log.fold(partition)
            approved = [a for a, seq in fold.answered.items() if seq > br.seq]
            for cause in fold.causes:
                br._remember(cause)
            for agent, (seq, b) in sorted(fold.latest.items(), key=lambda kv: kv[1][0]):
                if seq > br.seq:
                    touched.add(agent)
                br.fold(seq, msgspec.structs.replace(b))
            for d in fold.pending.values():
                box.setdefault(d.id, d)
            for i in fold.done:
                box.pop(i, None)
        for agent in br.by_agent:
            self.where[agent] = partition
        for agent in touched:
            self.where[agent] = partition
        previous = self.parts.get(partition)
        if previous is not None:  # restored again while owned: agents no longer in it go from the metrics
            self.metrics.forgotten([a for a in previous.by_agent if a not in br.by_agent])
        self.metrics.restored(br.by_agent.values())
        self.parts[partition] = br
        self.outbox[partition] = box
        self.reconcile[partition] = touched | {a for a, b in br.by_agent.items() if b.state == HALF_OPEN}
        if self.control is not None:
            # now, not at the next batch: the detection stage (restored just before this one, in the
            # Assembly's order) judges that batch, and must judge it with a person's caps and probation
            self._reconcile(partition)
            for agent in approved:
                if br.get(agent).escalation is None and not br.is_frozen(agent):
                    self.control.approve(partition, agent)
        if box:
            log.info("partition %d: %d undelivered webhooks re-queued", partition, len(box))
        self._submit_all(partition)

    def drop(self, partition: int) -> None:
        br = self.parts.pop(partition, None)
        if br is not None:  # the new owner exports them from its restore
            self.metrics.forgotten(list(br.by_agent))
        self.outbox.pop(partition, None)
        self.reconcile.pop(partition, None)
        self.where = {a: p for a, p in self.where.items() if p != partition}
        if self.sender is not None:
            self.sender.forget_partition(partition)

    # -- effects -------------------------------------------------------------------------------
    def _emit(self, p: int, e: Effect, publish: list) -> None:
        self.effects += 1
        self.metrics.changed(e.kind, e.breaker)
        now_ms = int(time.time() * 1000)
        body = None
        if e.webhook is not None:
            body = webhook_body(e, name=self.names.get(e.agent), cap_factor=self.timing.probation_cap_factor)
            d = Delivery(e.id, p, e.agent, e.webhook, body, now_ms, e.breaker.seq)
            self.outbox.setdefault(p, {})[d.id] = d
            if self.sender is not None:
                self.sender.submit(d)
        publish.append((self.topic, e.agent.encode(), encode_record(change_record(p, e, body, now_ms))))
        level = logging.WARNING if e.state in FROZEN or e.kind == "escalated" else logging.INFO
        log.log(level, "agent %s: %s -> %s (%s by %s): %s", e.agent, e.previous, e.state, e.kind, e.by, e.reason)
        if self.notifier is not None:
            self.notifier.on_effect(e)
        if self.control is not None:
            self._tell_detector(p, e)

    def _answered_before(self, p: int, br: Breakers, d) -> None:
        """A decision the breaker does not apply because the log already answered it (the detector, restored
        from a checkpoint older than the log, decided it again): bring the detector in line with the breaker.
        A re-raised escalation a person approved is approved again; a freeze the breaker is past (released
        since, or the timeout of an approved escalation) leaves the detector judging the agent."""
        c = self.control
        if c is None:
            return
        try:
            if d.kind == "escalate" and br.answered(d.id):
                c.approve(p, d.agent)
                log.info("agent %s: escalation %s was approved before the restart; approved again in the "
                         "detector", d.agent, d.id)
            elif d.kind == "freeze" and not br.is_frozen(d.agent):
                c.release(p, d.agent)
                if br.answers_timeout(d):
                    c.approve(p, d.agent)
                log.info("agent %s: freeze %s (%s) not applied: the breaker is %s", d.agent, d.id, d.rule,
                         br.state(d.agent))
        except Exception:
            log.exception("detector control failed for %s (%s)", d.agent, d.kind)

    def _tell_detector(self, p: int, e: Effect) -> None:
        c = self.control
        try:
            if e.kind in ("half_open", "closed"):
                c.release(p, e.agent)
                if hasattr(c, "set_caps"):
                    c.set_caps(p, e.agent, e.breaker.caps,
                               self.timing.probation_cap_factor if e.state == HALF_OPEN else 1.0)
            elif e.kind == "approved":
                c.approve(p, e.agent)
            elif e.kind == "caps" and hasattr(c, "set_caps"):
                c.set_caps(p, e.agent, e.breaker.caps,
                           self.timing.probation_cap_factor if e.state == HALF_OPEN else 1.0)
        except Exception:
            log.exception("detector control failed for %s (%s)", e.agent, e.kind)

    def _reconcile(self, p: int) -> None:
        agents = self.reconcile.pop(p, set())
        br = self.parts[p]
        if self.control is None:
            return
        for agent in agents:
            if br.state(agent) not in FROZEN and self.control.is_frozen(p, agent):
                self.control.release(p, agent)
                log.info("agent %s: released in the detector (breaker is %s)", agent, br.state(agent))
        if hasattr(self.control, "set_caps"):  # caps set by a person, and probation, survive a restart
            for agent, b in br.by_agent.items():
                if b.caps or b.state == HALF_OPEN:
                    self.control.set_caps(p, agent, b.caps,
                                          self.timing.probation_cap_factor if b.state == HALF_OPEN else 1.0)

    def _submit_all(self, partition: int) -> None:
        if self.sender is None:
            return
        for d in sorted(self.outbox.get(partition, {}).values(), key=lambda d: d.seq):
            self.sender.submit(d)

    def attach(self, sender=None, notifier=None, producer=None, log_: BreakerLog | None = None) -> None:
        self.sender, self.notifier, self.producer = sender, notifier, producer
        self.log = log_
        for p in list(self.outbox):
            self._submit_all(p)

    def on_result(self, d: Delivery, outcome: str, attempts: int, detail: str) -> None:
        """The sender finished a delivery: drop it from the outbox (unless it was never sent: webhooks
        disabled) and record how it ended."""
        box = self.outbox.get(d.partition)
        if box is not None and outcome in FINAL_OUTCOMES:
            box.pop(d.id, None)
        if self.producer is not None:
            rec = DeliveredRecord(d.id, d.partition, d.agent, outcome, attempts, int(time.time() * 1000), detail)
            fut = self.producer.send(self.topic, encode_record(rec), key=d.agent.encode())
            import asyncio
            asyncio.ensure_future(fut).add_done_callback(lambda f: f.exception() and log.warning(
                "delivered record for %s not written: %r", d.id, f.exception()))

    # -- people --------------------------------------------------------------------------------
    def partition_of(self, agent: str) -> int:
        p = self.where.get(agent)
        if p is None and self.locate is not None:
            p = self.locate(agent)
        if p is None:
            p = (murmur2(agent.encode()) & 0x7FFFFFFF) % self.partitions
        if p not in self.parts:
            raise NotOwnedError(f"agent {agent} is on input partition {p}, which this replica does not own "
                                f"(owned: {sorted(self.parts)}); ask the replica that owns it")
        return p

    async def act(self, action: str, agent: str, *, by: str, reason: str = "", caps: dict[str, int] | None = None,
                  command_id: str | None = None) -> dict[str, Any]:
        """hold | release | approve | caps. The change is on the broker before this returns."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; one of {ACTIONS}")
        agent = _canon(agent)
        p = self.partition_of(agent)
        br = self.parts[p]
        cmd = command_id or f"cmd-{uuid.uuid4().hex}"
        now = int(time.time() * 1000)
        answered = False
        if action == "hold":
            e = br.hold(agent, now, by, cmd, reason)
        elif action == "release":
            e = br.release(agent, now, by, cmd, reason)
        elif action == "approve":
            e = br.approve(agent, now, by, cmd, reason)
            if e is None and not br.seen(cmd):   # no escalation at the breaker, and not a retry
                answered = self._approve_in_detector(br, p, agent, cmd)
        else:
            e = br.set_caps(agent, caps, now, by, cmd)
        if e is not None:
            self.where[agent] = p
            self._emit(p, e, self.unrecorded)
        await self._record(f"{action} of {agent}" + ("" if e is not None or answered else
                                                      " (unchanged; an earlier change)"))
        return {"agent": agent, "action": action, "changed": e is not None or answered,
                "effect": e.id if e else None, "partition": p, "breaker": self.view(agent)}

    def _approve_in_detector(self, br: Breakers, p: int, agent: str, cmd: str) -> bool:
        """Approve an escalation the detector holds and the breaker missed. None there either: nothing
        changes (no approval ahead of time), and an agent neither of them knows is refused as unknown."""
        c = self.control
        if c is not None and c.approve(p, agent, only_pending=True):
            br._remember(cmd)
            return True
        knows = getattr(c, "knows", None)
        if agent not in self.where and knows is not None and not knows(p, agent):
            raise UnknownAgentError(f"unknown agent {agent}: no payment and no breaker of it on this replica's "
                                    f"partitions {sorted(self.parts)}; nothing approved")
        return False

    async def _record(self, what: str) -> None:
        """Publish people's changes not yet on the broker, oldest first; NotRecordedError if Kafka does not
        take them in time (they stay queued: the next batch or command publishes them)."""
        pending, self.unrecorded = self.unrecorded, []
        for i, (topic, key, value) in enumerate(pending):
            try:
                await asyncio.wait_for(self.producer.send_and_wait(topic, value, key=key), RECORD_TIMEOUT_SECONDS)
            except (KafkaError, asyncio.TimeoutError) as exc:
                self.unrecorded[:0] = pending[i:]
                raise NotRecordedError(
                    f"{what}: applied in this daemon (its webhook is queued) but Kafka has not recorded it on "
                    f"{topic} ({exc!r}); until it is recorded the facilitator tap does not see it and a restart "
                    "loses it. It is published with the next batch once Kafka answers; repeat the command to "
                    "confirm") from None

    # -- views ---------------------------------------------------------------------------------
    def view(self, agent: str) -> dict[str, Any]:
        p = self.where.get(agent)
        br = self.parts.get(p) if p is not None else None
        b = br.get(agent) if br is not None else None
        if b is None:
            return {"state": CLOSED, "trips": 0}
        v = b.view()
        v.pop("agent", None)
        v["pending_webhooks"] = sum(1 for d in self.outbox.get(p, {}).values() if d.agent == agent)
        return v

    def breakers(self) -> list[tuple[int, str, dict]]:
        """(partition, agent, view) of every breaker that is not plainly closed."""
        return [(p, a, self.view(a)) for p, br in self.parts.items() for a in br.by_agent]

    def undelivered(self) -> int:
        return sum(len(b) for b in self.outbox.values())
