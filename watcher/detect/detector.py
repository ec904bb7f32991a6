"""The decision stage of one shard: policy rules, per-agent baselines, the fleet model, findings.

    outcome of Shard.apply ─► candidates (rule, event, observed, threshold) ─► per-agent state ─► Decisions

Candidates come from the builders in watcher/detect/candidates.py (policy rules, models, refused
verifications, findings). Every candidate names the event that triggered it; candidates are ordered by that
event's position in the batch and passed through a small per-agent state machine (watcher/detect/verdicts.py):
  frozen      a freeze was decided: nothing more is said about the agent until `release(agent)`
  escalation  one question to a person at a time; `approve(agent)` answers it and silences further
              escalations for `escalation.approval_ttl_seconds`; `tick(now)` freezes unanswered ones
              (the deadline runs from the wall clock for a backlog's events: see verdicts.py)
  cooldown    the same warning (agent, rule, merchant) is repeated at most once per `warn_cooldown_seconds`
Decision ids hash (agent, rule, triggering event), so the same events give the same ids.

An agent idle for `forget_after_ms` (and with nothing running: not frozen, no escalation, approval or
cooldown) is forgotten at the next `snapshot()` (watcher/detect/forget.py); if it comes back, it starts afresh.

Model scores leave through an optional `score_sink(model, scores, high)`, called once per model per batch
with a numpy array (the daemon passes `Metrics.anomaly_scores`; replay, eval and bench pass nothing):
  fleet.hst     the fleet model's scores (0..1) of the agents it scored; high = those above its quantile
                (after its own warm-up)
  agent.rate_z  the spend-rate z-score (floored at 0) of each payment of a warmed-up agent; high = the
                payments the spend-rate rule flagged (ratio, z and spend floor all crossed)
  agent.size_z  the payment-size z-score (floored at 0), same payments; high = those the size rule flagged
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from watcher.detect.baselines import NEVER, Baselines
from watcher.detect.candidates import FAIL_SLOTS, KNOWN_MERCHANTS_MAX, Candidates, reports_payee
from watcher.detect.decision import Decision
from watcher.detect.evidence import IdRings
from watcher.detect.fleet import FleetModel
from watcher.detect.forget import FORGET_AFTER_SECONDS, Forgetting
from watcher.detect.policy import Policy
from watcher.detect.policyfile import SEVERITY
from watcher.detect.verdicts import Candidate, Verdicts
from watcher.detect.ratecard import RateCard
from watcher.detect.rules import PolicyTable
from watcher.events.observation import Observation

SCORE_MODELS = ("fleet.hst", "agent.rate_z", "agent.size_z")

ScoreSink = Callable[[str, np.ndarray, int], None]   # (model, scores of one batch, how many flagged)


class Detector(Candidates, Verdicts, Forgetting):
    def __init__(self, policy: Policy | None = None, *, fleet_interval_ms: int = 300_000,
                 fleet_max_per_batch: int = 64, seed: int = 7, score_sink: ScoreSink | None = None,
                 forget_after_ms: int = FORGET_AFTER_SECONDS * 1000) -> None:
        self.policy = policy or Policy.default()
        self.score_sink = score_sink
        self.forget_after_ms = forget_after_ms     # idle agents forgotten at a snapshot (0: never)
        self.ratecard = RateCard(self.policy.rate_card)
        self.index: dict[str, int] = {}
        self.agents: list[str] = []
        self.table = PolicyTable()
        self.base = Baselines()
        self.fleet = FleetModel(self.policy.defaults.anomaly.fleet_quantile, seed=seed,
                                interval_ms=fleet_interval_ms, max_per_batch=fleet_max_per_batch)
        self.capacity = 0
        self.frozen = np.zeros(0, bool)
        self.fail_ring = np.zeros((0, FAIL_SLOTS), np.int64)
        self.fail_ptr = np.zeros(0, np.int64)
        self.fail_ids = IdRings(FAIL_SLOTS)          # the refused verifications' event ids, beside fail_ring
        self.cooldown: dict[tuple[int, str, str], int] = {}
        self.pending: dict[int, tuple[int, str, str]] = {}      # row -> (deadline ms, decision id, rule)
        self.approved_until: dict[int, int] = {}
        self.known_merchants: dict[str, None] = {}
        self.now_ms = 0
        self.real_from_ms = 0     # the last batch's floor for escalation deadlines and approvals (not saved)
        self.counts = {k: 0 for k in SEVERITY}
        self._unwindowed: set[tuple[str, str]] = set()
        self._grow(1024)

    # -- rows ---------------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        cap = max(need, int(self.capacity * 1.5) + 1)
        self.table.grow(cap)
        self.base.grow(cap)
        self.fleet.grow(cap)
        for name, fill in (("frozen", False), ("fail_ptr", 0)):
            old = getattr(self, name)
            new = np.full(cap, fill, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
        ring = np.full((cap, FAIL_SLOTS), NEVER, np.int64)
        ring[: len(self.fail_ring)] = self.fail_ring
        self.fail_ring = ring
        self.capacity = cap

    def _new_row(self, agent: str) -> int:
        row = len(self.agents)
        self._grow(row + 1)
        self.index[agent] = row
        self.agents.append(agent)
        self.table.set_row(row, self.policy.limits(agent))
        return row

    def row(self, agent: str) -> int:
        r = self.index.get(agent)
        return self._new_row(agent) if r is None else r

    # -- policy -------------------------------------------------------------------------------
    def set_policy(self, policy: Policy) -> None:
        """Swap in a reloaded policy: every row's limits and the rate card are re-resolved."""
        self.policy = policy
        self.ratecard = RateCard(policy.rate_card)
        self.table.load(policy, self.agents)
        self.fleet.set_quantile(policy.defaults.anomaly.fleet_quantile)

    def categorize(self, merchant: str, resource: str | None) -> str | None:
        """The Shard's categorize hook; follows policy reloads."""
        return self.ratecard.categorize(merchant, resource)

    # -- the batch ----------------------------------------------------------------------------
    def on_batch(self, outcome, shard, now_ms: int, batch: list[Observation] | None = None,
                 out: list[Decision] | None = None, *, real_from_ms: int = 0) -> list[Decision]:
        """Decide on what one `Shard.apply` did. `batch` is the observations handed to it; without it
        (a clock tick) merchant rules and novelty are skipped. Decisions are appended to `out` as they are
        taken (see `Verdicts._decide`). `real_from_ms`: escalation deadlines start no earlier (the wall
        clock while the daemon catches up a backlog: a person needs the whole timeout to answer); 0 in
        replay and live, where they start at the triggering event's time."""
        self.real_from_ms = int(real_from_ms)
        now = max(int(now_ms), shard.watermark_ms)
        self.now_ms = max(self.now_ms, now)
        cands: list[Candidate] = []
        n = len(outcome.deltas)
        if n:
            self._payments(outcome.deltas, shard, batch, cands, getattr(outcome, "stream_positions", ()),
                           getattr(outcome, "moves", ()))
        if batch:
            self.learn_payees(batch)
        if outcome.signals:
            self._signals(outcome.signals, n, cands)
        if outcome.findings:
            self._findings(outcome.findings, n + len(outcome.signals), cands)
        if not cands:
            return [] if out is None else out
        order = getattr(outcome, "stream_positions", None)
        if order:  # judge payments and signals in the order they were in the stream, whatever the batching
            big = 1 << 40
            cands = [c._replace(pos=order[c.pos] if c.pos < len(order) else big + c.pos) for c in cands]
        return self._decide(cands, out)

    def learn_payees(self, batch: list[Observation]) -> None:
        """Every payee a facilitator reported (settled with, or accepted a payment to), after the batch is
        judged: a settle that follows its own transfer makes no new spend (so `_new_payments` does not see
        it), and a verification precedes its payment's transfer, yet both report the payee."""
        known = self.known_merchants
        for o in batch:
            if o.merchant not in known and reports_payee(o):
                if len(known) >= KNOWN_MERCHANTS_MAX:
                    break
                known[o.merchant] = None

    # -- checkpoint ---------------------------------------------------------------------------
    def snapshot(self, keep: Iterable[str] = ()) -> dict:
        """The state to checkpoint, idle agents forgotten first (never those in `keep`; see
        watcher/detect/forget.py). Call it between batches only: a batch's outcome refers to rows."""
        self.forget_idle(keep)
        n = len(self.agents)
        return {
            "v": 1, "agents": list(self.agents), "now_ms": self.now_ms, "policy_version": self.policy.version,
            "base": self.base.snapshot(n), "fleet": self.fleet.snapshot(n),
            "frozen": self.frozen[:n].tobytes(), "fail_ring": self.fail_ring[:n].tobytes(),
            "fail_ptr": self.fail_ptr[:n].tobytes(), "fail_ids": self.fail_ids.snapshot(n),
            "cooldown": [[r, rule, m, t] for (r, rule, m), t in self.cooldown.items()],
            "pending": [[r, dl, did, rule] for r, (dl, did, rule) in self.pending.items()],
            "approved": [[r, t] for r, t in self.approved_until.items()],
            "known": list(self.known_merchants), "counts": dict(self.counts),
        }

    @classmethod
    def restore(cls, snap: dict, policy: Policy | None = None, *, score_sink: ScoreSink | None = None,
                forget_after_ms: int = FORGET_AFTER_SECONDS * 1000) -> "Detector":
        self = cls(policy, score_sink=score_sink, forget_after_ms=forget_after_ms)
        agents = list(snap["agents"])
        n = len(agents)
        self._grow(n)
        self.agents = agents
        self.index = {a: i for i, a in enumerate(agents)}
        self.table.load(self.policy, agents)
        self.base = Baselines.restore(snap["base"])
        self.fleet = FleetModel.restore(snap["fleet"])
        self.fleet.set_quantile(self.policy.defaults.anomaly.fleet_quantile)
        cap = max(self.capacity, n)
        self.capacity = 0
        self.frozen = np.zeros(0, bool)
        self.fail_ptr = np.zeros(0, np.int64)
        self.fail_ring = np.zeros((0, FAIL_SLOTS), np.int64)
        self._grow(cap)
        self.frozen[:n] = np.frombuffer(snap["frozen"], bool)
        self.fail_ring[:n] = np.frombuffer(snap["fail_ring"], np.int64).reshape(n, FAIL_SLOTS)
        self.fail_ptr[:n] = np.frombuffer(snap["fail_ptr"], np.int64)
        self.fail_ids = IdRings.restore(FAIL_SLOTS, snap.get("fail_ids"))   # absent before the ids were kept
        self.cooldown = {(int(r), rule, m): int(t) for r, rule, m, t in snap["cooldown"]}
        self.pending = {int(r): (int(dl), did, rule) for r, dl, did, rule in snap["pending"]}
        self.approved_until = {int(r): int(t) for r, t in snap["approved"]}
        self.known_merchants = dict.fromkeys(snap["known"])
        self.now_ms = int(snap["now_ms"])
        self.counts = {k: int(v) for k, v in snap["counts"].items()}
        return self
