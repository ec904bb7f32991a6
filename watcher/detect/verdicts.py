"""The per-agent state machine that turns candidates into decisions, and the clock and people acting on it.

  frozen      a freeze was decided: nothing more is said about the agent until `release(agent)`
  escalation  one question to a person at a time; `approve(agent)` answers it and silences further
              escalations for `escalation.approval_ttl_seconds`; `tick(now)` freezes unanswered ones.
              The deadline is the event's time + `timeout_seconds`, but never earlier than `real_from_ms`
              + `timeout_seconds` (the wall clock, set while the daemon catches up a backlog: a person
              gets the whole timeout from when the question is asked); an approval counts from
              the later of the detector's time and `real_from_ms`
  cooldown    the same warning (agent, rule, merchant) is repeated at most once per `warn_cooldown_seconds`

`Verdicts` is a mixin of `Detector` (watcher/detect/detector.py), which owns the state it reads: `agents`,
`index`, `table`, `frozen`, `pending`, `approved_until`, `cooldown`, `counts`, `policy`, `now_ms`,
`real_from_ms`.
"""

from __future__ import annotations

from typing import NamedTuple

from watcher.detect.baselines import NEVER
from watcher.detect.decision import Decision, decision_id, rfc3339
from watcher.detect.policyfile import SEVERITY

COOLDOWN_MAX = 500_000
PER_MERCHANT = frozenset({"price_drift", "unknown_payee", "blocked_merchant", "merchant_not_allowed"})


class Candidate(NamedTuple):
    pos: int
    ts_ms: int
    row: int
    rule: str
    source: str
    observed: int | float
    threshold: int | float
    unit: str
    window: str | None
    event_ids: list[str]
    reason: str
    merchant: str | None = None
    category: str | None = None
    anchor: str = ""


class Verdicts:
    # -- the state machine --------------------------------------------------------------------
    def _decide(self, cands: list[Candidate], out: list[Decision] | None = None) -> list[Decision]:
        """The decisions on `cands`, appended to `out` as each is taken (its state changed): if this raises,
        `out` still holds those taken before, which the state already reflects."""
        cands.sort(key=lambda c: (c.pos, -SEVERITY[self.table.limits[c.row].action(c.rule)]))
        out = [] if out is None else out
        for c in cands:
            row = c.row
            if self.frozen[row]:
                continue
            lim = self.table.limits[row]
            kind = lim.action(c.rule)
            if kind == "warn" or kind == "observe":
                key = (row, c.rule, (c.merchant or "") if c.rule in PER_MERCHANT else "")
                last = self.cooldown.get(key)
                if last is not None and c.ts_ms - last < lim.warn_cooldown_seconds * 1000:
                    continue
            elif kind == "escalate":
                if row in self.pending or self.approved_until.get(row, NEVER) > c.ts_ms:
                    continue
            d = self._decision(c, kind)
            if kind == "escalate":  # the person's time runs from now when the event is old (a backlog)
                start = max(c.ts_ms, self.real_from_ms)
                self.pending[row] = (start + lim.escalation.timeout_seconds * 1000, d.id, c.rule)
            elif kind == "freeze":
                self.frozen[row] = True
                self.pending.pop(row, None)
            else:   # the cool-down starts once the warning is taken (not if taking it raised)
                if len(self.cooldown) >= COOLDOWN_MAX:
                    self._prune_cooldown()
                self.cooldown[key] = c.ts_ms
            out.append(d)
        return out

    def _decision(self, c: Candidate, kind: str) -> Decision:
        agent = self.agents[c.row]
        self.counts[kind] += 1
        return Decision(decision_id(agent, c.rule, c.anchor or c.event_ids[-1]), kind, agent, c.rule, c.source,
                        c.observed, c.threshold, c.unit, c.window, c.event_ids, rfc3339(c.ts_ms), c.reason,
                        c.merchant, c.category, self.policy.team_of.get(agent), self.policy.version)

    def _prune_cooldown(self) -> None:
        horizon = self.now_ms - 24 * 3600 * 1000
        self.cooldown = {k: v for k, v in self.cooldown.items() if v > horizon}

    # -- clock and people ---------------------------------------------------------------------
    def tick(self, now_ms: int, out: list[Decision] | None = None) -> list[Decision]:
        """Freeze agents whose escalation nobody answered by its deadline (event or wall time); `out` as in
        `_decide` (an escalation whose decision raised stays pending)."""
        self.now_ms = max(self.now_ms, int(now_ms))
        out = [] if out is None else out
        if not self.pending:
            return out
        due = sorted((dl, row, did, rule) for row, (dl, did, rule) in self.pending.items() if dl <= now_ms)
        for dl, row, did, rule in due:
            if self.frozen[row]:
                del self.pending[row]
                continue
            lim = self.table.limits[row]
            kind = lim.action("escalation_timeout")
            secs = lim.escalation.timeout_seconds
            c = Candidate(0, dl, row, "escalation_timeout", "clock", secs, secs, "seconds", None, [did],
                          f"nobody answered escalation {did} ({rule}) within {secs} s", anchor=did)
            d = self._decision(c, kind)
            del self.pending[row]
            if kind == "freeze":
                self.frozen[row] = True
            out.append(d)
        return out

    def approve(self, agent: str, now_ms: int | None = None, *, only_pending: bool = False) -> bool:
        """A person approved the agent's pending escalation: it is answered and further escalations are
        silenced for `approval_ttl_seconds`. False if none was pending; then `only_pending` (a person's
        command) changes nothing, else the silence is granted anyway (an approval the breaker log holds, of
        an escalation this detector already timed out or has yet to raise again on replay)."""
        row = self.index.get(agent)
        if row is None or (only_pending and row not in self.pending):
            return False
        now = max(self.now_ms, self.real_from_ms) if now_ms is None else int(now_ms)
        ttl = self.table.limits[row].escalation.approval_ttl_seconds * 1000
        self.approved_until[row] = now + ttl
        return self.pending.pop(row, None) is not None

    def release(self, agent: str) -> bool:
        """The breaker let the agent go again: decisions about it resume. False if it was not frozen."""
        row = self.index.get(agent)
        if row is None or not self.frozen[row]:
            return False
        self.frozen[row] = False
        return True

    def is_frozen(self, agent: str) -> bool:
        row = self.index.get(agent)
        return row is not None and bool(self.frozen[row])
