"""The breaker of each agent: a pure state machine over plain values (no I/O, no clock of its own).

    closed ──freeze decision / hold──► open | held
    open ──cool-down over (auto) or a person's release──► half_open   (probation: reduced caps)
    half_open ──probation over, or release──► closed
    half_open ──freeze decision──► open (the cool-down doubles with each trip, up to a maximum)
    any ──hold──► held (frozen by a person: only a release lets it go) ──release──► half_open

Escalations do not change the state: one question at a time is recorded on the breaker until a person
approves it or the detector's deadline turns it into a freeze (or, where the policy's action for
escalation_timeout is not freeze, lets it expire: kind "expired"). An approved escalation is remembered
(`answered`), so the detector's timeout of it is refused even when the detector, restored from a
checkpoint older than the approval, still waits for an answer. Every change is an `Effect`, whose `id`
is stable (derived from the decision or command that caused it), so replaying the same decisions gives
the same ids: the webhook idempotency key.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

CLOSED, OPEN, HALF_OPEN, HELD = "closed", "open", "half_open", "held"
STATES = (CLOSED, OPEN, HALF_OPEN, HELD)
FROZEN = frozenset({OPEN, HELD})
APPLIED_MAX = 8192          # remembered decision/command ids per partition (replay de-duplication)


class Timing(msgspec.Struct, frozen=True):
    cooldown_ms: int = 900_000
    cooldown_max_ms: int = 6 * 3600_000
    auto_half_open: bool = True
    probation_ms: int = 3600_000
    probation_cap_factor: float = 0.25

    @classmethod
    def from_settings(cls, b) -> "Timing":
        return cls(b.cooldown_seconds * 1000, b.cooldown_max_seconds * 1000, b.auto_half_open,
                   b.probation_seconds * 1000, b.probation_cap_factor)


class Breaker(msgspec.Struct):
    agent: str
    state: str = CLOSED
    since_ms: int = 0
    trips: int = 0
    cause: str = ""                 # id of the decision or command behind the current state
    reopen_ms: int = 0              # open: when the cool-down ends (0: wait for a person)
    probation_until_ms: int = 0     # half_open: when it closes by itself
    escalation: str | None = None   # pending escalation (decision id)
    escalation_ms: int = 0
    caps: dict[str, int] | None = None   # caps set by a person, USDC base units per window name
    seq: int = 0                    # per-partition sequence of the last change (the log's order)

    def view(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


class Effect(msgspec.Struct, frozen=True):
    """One change of a breaker. `webhook` is the wallet-service message it needs, if any."""

    id: str
    agent: str
    kind: str                       # opened | held | half_open | closed | escalated | approved | expired | caps
    webhook: str | None             # freeze | unfreeze | escalate | None
    previous: str
    state: str
    at_ms: int
    by: str                         # detector | clock | admin:<who>
    cause: str
    reason: str
    evidence: dict[str, Any]
    breaker: Breaker


def answered_key(escalation: str) -> str:
    """The applied-cause marker of an escalation a person approved."""
    return f"approved:{escalation}"


def effect_id(agent: str, cause: str, kind: str, n: int = 0) -> str:
    return "b-" + hashlib.sha256(f"{agent}|{cause}|{kind}|{n}".encode()).hexdigest()[:24]


def evidence_of(d: Any) -> dict[str, Any]:
    """The evidence a decision carries, as plain values (Decision of watcher.detect, or anything alike)."""
    keys = ("id", "rule", "source", "observed", "threshold", "unit", "window", "event_ids", "merchant",
            "category", "team", "policy_version", "occurred_at")
    out = {k: getattr(d, k, None) for k in keys}
    out["decision_id"] = out.pop("id")
    return out


class Breakers:
    """The breakers of one partition's agents. Closed breakers with nothing pending are not stored."""

    def __init__(self, timing: Timing = Timing()) -> None:
        self.timing = timing
        self.by_agent: dict[str, Breaker] = {}
        self.applied: dict[str, None] = {}
        self.seq = 0

    # -- queries -------------------------------------------------------------------------------
    def get(self, agent: str) -> Breaker:
        return self.by_agent.get(agent) or Breaker(agent)

    def state(self, agent: str) -> str:
        b = self.by_agent.get(agent)
        return b.state if b else CLOSED

    def is_frozen(self, agent: str) -> bool:
        return self.state(agent) in FROZEN

    def seen(self, cause: str) -> bool:
        return cause in self.applied

    def answered(self, escalation: str) -> bool:
        """A person approved this escalation (decision id)."""
        return answered_key(escalation) in self.applied

    def answers_timeout(self, d: Any) -> bool:
        """`d` is the detector's escalation timeout of an escalation a person approved."""
        return d.kind == "freeze" and getattr(d, "rule", None) == "escalation_timeout" and any(
            self.answered(e) for e in (getattr(d, "event_ids", None) or ()))

    # -- changes -------------------------------------------------------------------------------
    def _remember(self, cause: str) -> None:
        self.applied[cause] = None
        if len(self.applied) > APPLIED_MAX:
            for k in list(self.applied)[: len(self.applied) - APPLIED_MAX]:
                del self.applied[k]

    def _change(self, b: Breaker, kind: str, webhook: str | None, to: str, at_ms: int, by: str, cause: str,
                reason: str, evidence: dict, n: int = 0) -> Effect:
        prev = b.state
        if to != prev:
            b.state, b.since_ms = to, at_ms
        b.cause = cause if kind not in ("escalated", "approved", "expired", "caps") else b.cause
        self.seq += 1
        b.seq = self.seq
        if b.state == CLOSED and b.escalation is None and b.caps is None:
            self.by_agent.pop(b.agent, None)
        else:
            self.by_agent[b.agent] = b
        snap = msgspec.structs.replace(b)
        return Effect(effect_id(b.agent, cause, kind, n), b.agent, kind, webhook, prev, b.state, at_ms, by,
                      cause, reason, evidence, snap)

    def _open(self, b: Breaker, at_ms: int, by: str, cause: str, reason: str, evidence: dict) -> Effect:
        t = self.timing
        b.trips += 1
        cool = min(t.cooldown_ms * 2 ** min(b.trips - 1, 16), max(t.cooldown_max_ms, t.cooldown_ms))
        b.reopen_ms = at_ms + cool if t.auto_half_open else 0
        b.probation_until_ms = 0
        b.escalation, b.escalation_ms = None, 0
        return self._change(b, "opened", "freeze", OPEN, at_ms, by, cause, reason, evidence)

    @staticmethod
    def acts_on(d: Any) -> bool:
        """A decision breakers act on: a freeze, an escalation, or an escalation's timeout (whatever its kind)."""
        return d.kind in ("freeze", "escalate") or getattr(d, "rule", None) == "escalation_timeout"

    def on_decision(self, d: Any, asked_ms: int = 0) -> list[Effect]:
        """Apply one Decision (kind observe|warn|escalate|freeze). Repeats of an applied id do nothing.
        `asked_ms`: an escalation waits for a person from then at the earliest (the wall clock when the
        decision is about a backlog: the detector's deadline starts there too, see `BatchContext.real_from_ms`),
        so the waiting-since metric and its page do not count the outage as time the person had."""
        if not self.acts_on(d) or d.id in self.applied:
            return []
        timeout = getattr(d, "rule", None) == "escalation_timeout"
        self._remember(d.id)
        if self.answers_timeout(d):  # approved: the detector's deadline is void
            return []
        b = self.get(d.agent)
        at = d.at_ms
        if timeout and d.kind != "freeze":  # the policy does not freeze on it: the question has expired
            if b.escalation is None or b.escalation not in (getattr(d, "event_ids", None) or ()):
                return []
            esc, b.escalation, b.escalation_ms = b.escalation, None, 0
            return [self._change(b, "expired", None, b.state, at, "detector", d.id, d.reason, {"escalation": esc})]
        if d.kind == "freeze":
            if b.state in FROZEN:
                return []
            return [self._open(b, at, "detector", d.id, d.reason, evidence_of(d))]
        if b.state in FROZEN or b.escalation is not None:
            return []
        b.escalation, b.escalation_ms = d.id, max(at, asked_ms)
        return [self._change(b, "escalated", "escalate", b.state, at, "detector", d.id, d.reason,
                             evidence_of(d))]

    def tick(self, now_ms: int) -> list[Effect]:
        """Cool-downs and probations that are over. Effects carry the scheduled time, not `now_ms`, so a
        replay yields the same bodies."""
        out = []
        for b in list(self.by_agent.values()):
            if b.state == OPEN and b.reopen_ms and b.reopen_ms <= now_ms:
                out.append(self._half_open(b, b.reopen_ms, "clock", f"cooldown:{b.cause}",
                                           "cool-down over: probation with reduced caps"))
            elif b.state == HALF_OPEN and b.probation_until_ms and b.probation_until_ms <= now_ms:
                out.append(self._change(b, "closed", "unfreeze", CLOSED, b.probation_until_ms, "clock",
                                        f"probation:{b.cause}", "probation over without a new trip", {},
                                        b.trips))
        return out

    def _half_open(self, b: Breaker, at_ms: int, by: str, cause: str, reason: str) -> Effect:
        b.reopen_ms = 0
        b.probation_until_ms = at_ms + self.timing.probation_ms if self.timing.probation_ms else 0
        e = self._change(b, "half_open", "unfreeze", HALF_OPEN, at_ms, by, cause, reason,
                         {"probation_cap_factor": self.timing.probation_cap_factor}, b.trips)
        if not self.timing.probation_ms:  # no probation configured: straight to closed
            return self._change(b, "closed", "unfreeze", CLOSED, at_ms, by, cause, reason, {}, b.trips)
        return e

    # -- people --------------------------------------------------------------------------------
    def hold(self, agent: str, at_ms: int, by: str, command: str, reason: str) -> Effect | None:
        if command in self.applied:
            return None
        self._remember(command)
        b = self.get(agent)
        if b.state == HELD:
            return None
        hook = None if b.state == OPEN else "freeze"
        b.reopen_ms = b.probation_until_ms = 0
        # a hold answers a pending escalation (as a freeze does): left on the breaker, it would swallow
        # every later escalation of the agent after the release
        esc, b.escalation, b.escalation_ms = b.escalation, None, 0
        return self._change(b, "held", hook, HELD, at_ms, by, command, reason or "held by a person",
                            {"escalation": esc} if esc else {})

    def release(self, agent: str, at_ms: int, by: str, command: str, reason: str) -> Effect | None:
        """open/held -> half_open (probation); half_open -> closed. None if there is nothing to release."""
        if command in self.applied:
            return None
        b = self.get(agent)
        if b.state == CLOSED:
            return None
        self._remember(command)
        if b.state == HALF_OPEN:
            return self._change(b, "closed", "unfreeze", CLOSED, at_ms, by, command,
                                reason or "released from probation by a person", {})
        return self._half_open(b, at_ms, by, command, reason or "released by a person")

    def approve(self, agent: str, at_ms: int, by: str, command: str, reason: str) -> Effect | None:
        if command in self.applied:
            return None
        b = self.get(agent)
        if b.escalation is None:
            return None
        self._remember(command)
        esc = b.escalation
        self._remember(answered_key(esc))
        b.escalation, b.escalation_ms = None, 0
        return self._change(b, "approved", None, b.state, at_ms, by, command, reason or "approved by a person",
                            {"escalation": esc})

    def set_caps(self, agent: str, caps: dict[str, int] | None, at_ms: int, by: str, command: str) -> Effect | None:
        if command in self.applied:
            return None
        self._remember(command)
        b = self.get(agent)
        b.caps = dict(caps) if caps else None
        return self._change(b, "caps", None, b.state, at_ms, by, command, "caps changed by a person",
                            {"caps": b.caps})

    # -- the log and checkpoints ---------------------------------------------------------------
    def fold(self, seq: int, breaker: Breaker, cause: str | None = None) -> None:
        """Apply a change read back from the log if it is newer than this state (call in seq order)."""
        if cause:
            self._remember(cause)
        if seq <= self.seq:  # the snapshot (or an earlier record) already holds it: fold in seq order
            return
        self.seq = seq
        if breaker.state == CLOSED and breaker.escalation is None and breaker.caps is None:
            self.by_agent.pop(breaker.agent, None)
        else:
            self.by_agent[breaker.agent] = breaker

    def snapshot(self) -> dict:
        return {"v": 1, "seq": self.seq, "applied": list(self.applied),
                "breakers": [msgspec.to_builtins(b) for b in self.by_agent.values()]}

    @classmethod
    def restore(cls, snap: dict | None, timing: Timing = Timing()) -> "Breakers":
        self = cls(timing)
        if snap:
            self.seq = int(snap["seq"])
            self.applied = dict.fromkeys(snap["applied"])
            for raw in snap["breakers"]:
                b = msgspec.convert(raw, Breaker)
                self.by_agent[b.agent] = b
        return self
