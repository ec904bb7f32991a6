"""Forgetting idle agents: which rows of a detector may go at a checkpoint, and moving the others down.

Every agent a detector has seen holds a row (baselines, fleet schedule, refused-verification ring, policy
limits: about 4.5 KB with its share of the checkpoint). Without forgetting, memory, checkpoints and
restores grow with every wallet ever seen instead of the active ones. `forget_idle` (called by
`Detector.snapshot`, between batches, when no outcome refers to rows) drops the rows of agents that are

  not frozen, with no escalation pending, no approval window open, no warning cooldown running,
  no caps set by a person (the `keep` agents: the detection stage's `cap_overrides`),
  and idle: their last activity (payment, refused verification, warning) is more than `forget_after_ms`
  older than the detector's newest activity (event time, so replaying old events does not forget them)

once they are at least 1 row in IDLE_FRACTION (the rows are renumbered, as `Windows.compact` does). Kept
rows keep their order (old row live[i] becomes row i), so what is ordered by row, such as the fleet model's
pick of due agents, is unchanged for them. A forgotten agent that pays again starts afresh, with its
warm-up. A row with no activity at all (made by a finding or a zero-count payment) holds nothing a fresh
row would not.

The retention, `detect.forget_after_seconds` (default FORGET_AFTER_SECONDS, 14 days; 0 = never): the
spend-rate statistics fade within hours (tau 30 min, 2 h, 6 h), but the payment-size and gap statistics,
the ring of known merchants and the end of the warm-up learn per payment and never fade: what an agent
that comes back after days still has. Two weeks keep an agent on a weekly schedule, with a margin.
"""

from __future__ import annotations

import numpy as np

from watcher.detect.baselines import LAST, NEVER, N
from watcher.detect.rows import keep_rows, renumber
from watcher.pipeline.windows import IDLE_FRACTION

FORGET_AFTER_SECONDS = 14 * 86400
FORGET_AFTER_MIN_SECONDS = 86400    # a shorter retention (other than 0) is a configuration error


class Forgetting:
    """A mixin of `Detector` (watcher/detect/detector.py), which owns the state it reads and moves: `agents`,
    `index`, `table`, `base`, `fleet`, `frozen`, `fail_ring`, `fail_ptr`, `fail_ids`, `cooldown`, `pending`,
    `approved_until`, `forget_after_ms`."""

    def forget_idle(self, keep=()) -> int:
        """Forget the idle agents (see the module docstring), if at least one row in IDLE_FRACTION is;
        never those in `keep`. Returns how many were forgotten."""
        n = len(self.agents)
        if self.forget_after_ms <= 0 or n == 0:
            return 0
        idle = self._idle(n, keep)
        if idle is None:
            return 0
        live = np.nonzero(~idle)[0]
        self._keep(live, n)
        return n - len(live)

    def _idle(self, n: int, keep) -> np.ndarray | None:
        """Which rows may be forgotten; None when fewer than n / IDLE_FRACTION."""
        need = max(1, n // IDLE_FRACTION)
        st = self.base.state[:n]
        act = self.fail_ring[:n].max(axis=1)
        paid = st[:, N] > 0
        act[paid] = np.maximum(act[paid], st[paid, LAST].astype(np.int64))
        if self.cooldown:
            rows = np.fromiter((k[0] for k in self.cooldown), np.int64, len(self.cooldown))
            np.maximum.at(act, rows, np.fromiter(self.cooldown.values(), np.int64, len(self.cooldown)))
        now = int(act.max())
        if now <= NEVER:
            now = self.now_ms  # nothing ever happened: every row is as fresh as a new one
        idle = (act < now - self.forget_after_ms) & ~self.frozen[:n]
        if int(idle.sum()) < need:
            return None
        for row in self.pending:
            idle[row] = False
        for row, until in self.approved_until.items():
            if until > now:
                idle[row] = False
        for agent in keep:
            row = self.index.get(agent)
            if row is not None:
                idle[row] = False
        limits = self.table.limits
        for (row, _, _), t in self.cooldown.items():
            if idle[row] and t + limits[row].warn_cooldown_seconds * 1000 > now:
                idle[row] = False
        return idle if int(idle.sum()) >= need else None

    def _keep(self, live: np.ndarray, n: int) -> None:
        """Renumber every per-row structure to the rows `live` (ascending)."""
        self.table.keep_rows(live, n)
        self.base.keep_rows(live, n)
        self.fleet.keep_rows(live, n)
        keep_rows(self.frozen, live, n, False)
        keep_rows(self.fail_ptr, live, n, 0)
        keep_rows(self.fail_ring, live, n, NEVER)
        self.fail_ids.keep_rows(live)
        new = renumber(live)
        self.cooldown = {(new[r], rule, m): t for (r, rule, m), t in self.cooldown.items() if r in new}
        self.pending = {new[r]: v for r, v in self.pending.items() if r in new}
        self.approved_until = {new[r]: t for r, t in self.approved_until.items() if r in new}
        self.agents = [self.agents[r] for r in live.tolist()]
        self.index = {a: i for i, a in enumerate(self.agents)}
