"""Deterministic rules as vectorised functions, and the per-row policy table they read.

Window rules (spend caps, the escalation window, category budgets) find, within a batch, the first
payment at which an agent's rolling total crosses its limit: the total before the batch is the shard's
window total at the end of the batch minus the batch's own amounts in that window, and the running total
is that plus a cumulative sum per agent, in input order. This is exact when a batch does not straddle a
bucket boundary of the window (replay cuts batches on 10 s boundaries); in the live daemon a batch is a
fraction of a second, and an older bucket leaving the window mid-batch can only make the estimate lower.
"""

from __future__ import annotations

import numpy as np

from watcher.detect.baselines import RowParams
from watcher.detect.policy import Policy, usdc_units
from watcher.detect.policyfile import Limits
from watcher.detect.rows import keep_rows

NO_LIMIT = np.iinfo(np.int64).max
CAP_WINDOWS = (("cap_1m", "1m", "per_minute_usdc"), ("cap_1h", "1h", "per_hour_usdc"),
               ("cap_24h", "24h", "per_day_usdc"))


def running_by_group(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Cumulative sum of `values` within each group, in input order (inclusive)."""
    n = len(group)
    if n == 0:
        return np.zeros(0, values.dtype)
    order = np.argsort(group, kind="stable")
    gs, v = group[order], values[order]
    cs = np.cumsum(v)
    starts = np.empty(n, bool)
    starts[0] = True
    starts[1:] = gs[1:] != gs[:-1]
    gid = np.cumsum(starts) - 1
    before = (cs - v)[starts]
    out = np.empty_like(cs)
    out[order] = cs - before[gid]
    return out


def first_crossings(keys: np.ndarray, amounts: np.ndarray, in_window: np.ndarray, end_totals: np.ndarray,
                    limits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first delta per key at which the running window total exceeds its limit.

    keys: local key ids 0..k-1 per delta; end_totals: window total per key after the batch;
    limits: per delta (NO_LIMIT or <= 0 disables). Returns (delta indices, running totals there).
    """
    amt = np.where(in_window, amounts, 0)
    base = np.array(end_totals, dtype=np.int64)
    np.subtract.at(base, keys, amt)
    run = base[keys] + running_by_group(keys, amt)
    hit = in_window & (limits > 0) & (limits < NO_LIMIT) & (run > limits)
    idx = np.nonzero(hit)[0]
    if len(idx) == 0:
        return idx, run[idx]
    _, first = np.unique(keys[idx], return_index=True)
    idx = idx[first]
    return idx, run[idx]


def in_window(ts_ms: np.ndarray, now_ms: int, granularity_ms: int, buckets: int) -> np.ndarray:
    """Which timestamps fall in the window ending at now_ms (same bucket rule as `Windows`)."""
    return (ts_ms // granularity_ms) > (now_ms // granularity_ms - buckets)


class PolicyTable:
    """Per-row numeric limits (base units; NO_LIMIT when off) and the resolved `Limits` of each row."""

    ARRAYS = ("caps", "ceiling", "esc_payment", "esc_window", "has_lists", "has_budgets", "fail_n", "fail_window_ms")

    def __init__(self) -> None:
        self.capacity = 0
        self.caps = np.zeros((0, len(CAP_WINDOWS)), np.int64)
        self.ceiling = np.zeros(0, np.int64)
        self.esc_payment = np.zeros(0, np.int64)
        self.esc_window = np.zeros(0, np.int64)
        self.has_lists = np.zeros(0, bool)
        self.has_budgets = np.zeros(0, bool)
        self.fail_n = np.zeros(0, np.int64)
        self.fail_window_ms = np.zeros(0, np.int64)
        self.params = RowParams(0)
        self.limits: list[Limits] = []
        self._cache: dict[int, tuple] = {}

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        capacity = max(capacity, int(self.capacity * 1.5) + 1)
        for name in self.ARRAYS:
            old = getattr(self, name)
            new = np.zeros((capacity,) + old.shape[1:], old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
        self.params.grow(capacity)
        self.capacity = capacity

    def keep_rows(self, live: np.ndarray, size: int) -> None:
        """Renumber to the rows `live` (ascending; see watcher/detect/rows.py), the others forgotten: a
        row's values move with it (caps a person set included), they are not resolved again."""
        for name in self.ARRAYS:
            keep_rows(getattr(self, name), live, size)
        self.params.keep_rows(live, size)
        self.limits = [self.limits[r] for r in live.tolist()]

    def set_row(self, row: int, lim: Limits) -> None:
        key = id(lim)
        vec = self._cache.get(key)
        if vec is None or vec[0] is not lim:
            vec = (lim, _vector(lim))
            self._cache[key] = vec
        (caps, ceiling, esc_p, esc_w, lists, budgets, fail_n, fail_ms, params) = vec[1]
        if row >= self.capacity:
            self.grow(row + 1)
        self.caps[row] = caps
        self.ceiling[row] = ceiling
        self.esc_payment[row] = esc_p
        self.esc_window[row] = esc_w
        self.has_lists[row] = lists
        self.has_budgets[row] = budgets
        self.fail_n[row] = fail_n
        self.fail_window_ms[row] = fail_ms
        p = self.params
        for f, v in zip(RowParams.FIELDS, params):
            getattr(p, f)[row] = v
        if row < len(self.limits):
            self.limits[row] = lim
        else:
            self.limits.extend([lim] * (row + 1 - len(self.limits)))

    def load(self, policy: Policy, agents: list[str]) -> None:
        self._cache.clear()
        self.grow(len(agents))
        for row, agent in enumerate(agents):
            self.set_row(row, policy.limits(agent))


def _lim(v: float) -> int:
    u = usdc_units(v)
    return u if u > 0 else NO_LIMIT


def _vector(lim: Limits) -> tuple:
    caps = [_lim(getattr(lim.caps, key)) for _, _, key in CAP_WINDOWS]
    a = lim.anomaly
    m = lim.merchants
    params = (a.enabled, a.warmup_payments, a.warmup_seconds * 1000, a.spend_rate_ratio, a.spend_rate_z,
              float(usdc_units(a.min_spend_usdc)), a.payment_size_z, float(usdc_units(a.min_payment_usdc)),
              a.new_merchants_window_seconds * 1000, a.new_merchants)
    return (caps, _lim(lim.per_payment_max_usdc), _lim(lim.escalation.payment_above_usdc),
            _lim(lim.escalation.window_above_usdc),
            bool(m.allow or m.block or m.allow_categories or m.block_categories),
            bool(lim.category_budgets_usdc), lim.findings.failed_verifications,
            lim.findings.failed_verifications_window_seconds * 1000, params)


def _listed(entries: list[str], merchant: str, resource: str | None) -> bool:
    """Entries are checksummed payTo addresses or resource URLs (`*` suffix: prefix), matched like the rate
    card: the query string of the payment's resource is ignored."""
    url = resource.split("?", 1)[0] if resource else None
    for e in entries:
        if e == merchant:
            return True
        if url and (e == url or (e.endswith("*") and url.startswith(e[:-1]))):
            return True
    return False


def merchant_verdict(lim: Limits, merchant: str, resource: str | None, category: str | None,
                     settled: bool = True) -> str | None:
    """The list rule a payment breaks, or None. `settled=False`: a transfer no settle has named a resource for
    yet; an allow-list that its settle could still satisfy (it has resource URLs or categories) is left to
    the settle (watcher/detect/candidates.py `_settled_after_transfer`)."""
    m = lim.merchants
    if m.block and _listed(m.block, merchant, resource):
        return "blocked_merchant"
    if category is not None and category in m.block_categories:
        return "blocked_category"
    if m.allow or m.allow_categories:
        if not (_listed(m.allow, merchant, resource) or (category is not None and category in m.allow_categories)):
            if not settled and (m.allow_categories or not all(_is_address(e) for e in m.allow)):
                return None
            return "merchant_not_allowed"
    return None


def _is_address(entry: str) -> bool:
    return entry.startswith("0x") and len(entry) == 42
