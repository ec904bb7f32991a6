"""Per-agent baselines as numpy struct-of-arrays: exponentially weighted statistics turned into scores.

Per agent row (about 500 bytes: 14 float64 state columns, a 32-slot merchant ring, a 16-slot ring; plus,
for an agent that paid a first-time merchant, a ring of up to 16 of those payments' event ids):
  size     EW mean/variance of ln(payment amount), weight 0.02 per payment
  gap      EW mean/variance of ln(seconds since the agent's previous payment), weight 0.02 per payment
  rate     two time-decayed spend sums, medium (tau 30 min) and long (tau 6 h); their ratio is the
           spend-rate multiple of the agent's own baseline; EW mean/variance of its logarithm, weighted
           by elapsed time (tau 2 h, so a burst of payments cannot drag the baseline), give a z-score (a
           daily cycle or a bursty habit widens the variance and lowers the z)
  novelty  a ring of the agent's last 32 merchants (64-bit hashes), an EW fraction of payments to a
           merchant not in the ring, and a ring of the times of the last 16 first-time merchants (with
           their payments' event ids, `IdRings`: a warm payment whose count reaches the row's `newm_n`
           gets the ids of the payments counted, `Scores.newm_ids`, for `new_merchant_burst`)

EW update for a value x with weight a: d = x - m; m += a*d; v = (1 - a)*(v + a*d*d); the first value
sets m = x, v = 0. Scores are computed before the update. A payment flagged anomalous (rate or size
score, after warm-up) trains nothing; one at >= 3x the long rate does not train the rate statistics
(so a slow drain cannot teach the baseline that it is normal).

A batch is folded in rounds: round k takes every agent's k-th payment of the batch, so the arithmetic is
vectorised across agents and the result equals folding the payments one at a time, in order. Small
rounds, and an agent's payments past the first few of a batch (a hot agent), are folded by the same
formulas in plain Python floats, which is cheaper than a numpy call per formula on a handful of rows.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from watcher.detect.evidence import IdRings
from watcher.detect.rows import keep_rows

TAU_M_S = 1800.0
TAU_L_S = 6 * 3600.0
TAU_LR_S = 2 * 3600.0           # time constant of the rate-ratio statistics (per time, not per payment)
TRAIN_RATIO = 3.0               # a payment at >= 3x the long rate does not train the rate baseline
ALPHA = 0.02
ALPHA_NOV = 0.05
MIN_GAP_S = 0.05
RATIO_FLOOR = 1e-9             # a zero-value payment (anyone can send a 0 USDC transfer from a wallet) has ratio 0
VAR_FLOOR_RATE = 0.25
VAR_FLOOR_SIZE = 0.0625
VAR_FLOOR_GAP = 0.25
MERCHANT_SLOTS = 32
NEWM_SLOTS = 16
NEVER = np.iinfo(np.int64).min // 2
VECTOR_MIN = 24                 # a round of fewer rows than this is folded in plain Python instead
VECTOR_ROUNDS = 4               # after this many numpy rounds, the remaining payments go row by row

# columns of the per-row state (float64; counts and epoch ms are exact below 2^53)
COLS = ("n", "first_ts", "last_ts", "sm", "sl", "size_m", "size_v", "gap_m", "gap_v", "lr_m", "lr_v", "nov",
        "mptr", "nptr")
(N, FIRST, LAST, SM, SL, SIZE_M, SIZE_V, GAP_M, GAP_V, LR_M, LR_V, NOV, MPTR, NPTR) = range(len(COLS))


class RowParams:
    """Per-row thresholds (filled by the detector from the resolved policy of each agent)."""

    FIELDS = ("enabled", "warm_n", "warm_ms", "ratio", "z_rate", "min_spend", "size_z", "min_payment",
              "newm_window_ms", "newm_n")

    def __init__(self, capacity: int = 0) -> None:
        self.enabled = np.zeros(capacity, bool)
        self.warm_n = np.zeros(capacity, np.int64)
        self.warm_ms = np.zeros(capacity, np.int64)
        self.ratio = np.zeros(capacity, np.float64)
        self.z_rate = np.zeros(capacity, np.float64)
        self.min_spend = np.zeros(capacity, np.float64)
        self.size_z = np.zeros(capacity, np.float64)
        self.min_payment = np.zeros(capacity, np.float64)
        self.newm_window_ms = np.zeros(capacity, np.int64)
        self.newm_n = np.zeros(capacity, np.int64)     # new_merchant_burst's count: its payments' ids are kept

    def grow(self, capacity: int) -> None:
        for f in self.FIELDS:
            old = getattr(self, f)
            new = np.zeros(capacity, old.dtype)
            new[: len(old)] = old
            setattr(self, f, new)

    def keep_rows(self, live: np.ndarray, size: int) -> None:
        for f in self.FIELDS:
            keep_rows(getattr(self, f), live, size)


class Scores:
    """Per-payment results, aligned with the input arrays; `newm_ids` maps the index of a warm payment
    whose first-time-merchant count reached `newm_n` to the ids of the payments counted (time order, it
    last), when `observe` was given the event ids."""

    NAMES = ("ratio", "z_rate", "spend_m", "z_size", "z_gap", "new", "newm_count", "warm", "rate_flag",
             "size_flag")

    def __init__(self, n: int) -> None:
        self.ratio = np.zeros(n)
        self.z_rate = np.zeros(n)
        self.spend_m = np.zeros(n)
        self.z_size = np.zeros(n)
        self.z_gap = np.zeros(n)
        self.new = np.zeros(n, bool)
        self.newm_count = np.zeros(n, np.int64)
        self.warm = np.zeros(n, bool)
        self.rate_flag = np.zeros(n, bool)
        self.size_flag = np.zeros(n, bool)
        self.newm_ids: dict[int, list[str]] = {}


def merchant_hash(merchants: list[str]) -> np.ndarray:
    """Stable 64-bit hashes of merchant addresses (first 8 bytes of the address, non-zero)."""
    return np.fromiter(((int(m[2:18], 16) | 1) if m else 1 for m in merchants), np.uint64, len(merchants))


class Baselines:
    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = 0
        self.state = np.zeros((0, len(COLS)))
        self.mtab = np.zeros((0, MERCHANT_SLOTS), np.uint64)
        self.newm = np.zeros((0, NEWM_SLOTS), np.int64)
        self.newm_ids = IdRings(NEWM_SLOTS)
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        capacity = max(capacity, int(self.capacity * 1.5) + 1)
        for f, fill in (("state", 0), ("mtab", 0), ("newm", NEVER)):
            old = getattr(self, f)
            new = np.full((capacity, old.shape[1]), fill, old.dtype)
            new[: len(old)] = old
            setattr(self, f, new)
        self.capacity = capacity

    def keep_rows(self, live: np.ndarray, size: int) -> None:
        """Renumber to the rows `live` (ascending), the others forgotten (see watcher/detect/forget.py)."""
        keep_rows(self.state, live, size)
        keep_rows(self.mtab, live, size)
        keep_rows(self.newm, live, size, NEVER)
        self.newm_ids.keep_rows(live)

    def col(self, name: str) -> np.ndarray:
        return self.state[:, COLS.index(name)]

    def reset(self, rows: np.ndarray) -> None:
        """Forget what was learnt for these rows (e.g. after a person approves a new normal)."""
        self.state[rows] = 0
        self.mtab[rows] = 0
        self.newm[rows] = NEVER
        self.newm_ids.clear(np.atleast_1d(rows).tolist())

    # -- folding ------------------------------------------------------------------------------
    def observe(self, rows: np.ndarray, ts_ms: np.ndarray, amounts: np.ndarray, mhash: np.ndarray,
                p: RowParams, event_id: Callable[[int], str] | None = None) -> Scores:
        """Score then learn a batch of payments (rows may repeat; order within a row is kept).
        `event_id(j)` gives payment j's event id; it is called only for payments to a first-time merchant,
        whose ids are kept (without it, none are)."""
        n = len(rows)
        out = Scores(n)
        if n == 0:
            return out
        idx = np.arange(n)
        order = np.argsort(rows, kind="stable")
        rs = rows[order]
        starts = np.empty(n, bool)
        starts[0] = True
        starts[1:] = rs[1:] != rs[:-1]
        if starts.all() and n >= VECTOR_MIN:
            self._round(idx, rows, ts_ms, amounts, mhash, p, out, event_id)
            return out
        first_pos = np.maximum.accumulate(np.where(starts, idx, 0))
        rank = np.empty(n, np.int64)
        rank[order] = idx - first_pos
        by_round = np.lexsort((idx, rank))
        bounds = np.searchsorted(rank[by_round], np.arange(int(rank.max()) + 2))
        k = 0
        while k < len(bounds) - 1 and k < VECTOR_ROUNDS and bounds[k + 1] - bounds[k] >= VECTOR_MIN:
            sel = by_round[bounds[k]: bounds[k + 1]]
            self._round(sel, rows[sel], ts_ms[sel], amounts[sel], mhash[sel], p, out, event_id)
            k += 1
        # the rest, row by row in order: cheaper in plain Python than a numpy round of a few rows
        rest = by_round[bounds[k]:]
        if len(rest):
            rest = rest[np.argsort(rows[rest], kind="stable")]
            rr = rows[rest]
            cut = np.nonzero(rr[1:] != rr[:-1])[0] + 1
            for part in np.split(rest, cut):
                self._scalar_row(int(rows[part[0]]), part, ts_ms, amounts, mhash, p, out, event_id)
        return out

    def _scalar_row(self, row: int, part: np.ndarray, ts_ms, amounts, mhash, p: RowParams, out: Scores,
                    event_id) -> None:
        """The same fold as `_round`, for one row's payments in order, with Python floats."""
        S = self.state[row].tolist()
        tab = self.mtab[row].tolist()
        ring = self.newm[row].tolist()
        enabled, warm_n, warm_ms = bool(p.enabled[row]), int(p.warm_n[row]), int(p.warm_ms[row])
        p_ratio, p_z, min_spend = float(p.ratio[row]), float(p.z_rate[row]), float(p.min_spend[row])
        p_size, min_pay, win = float(p.size_z[row]), float(p.min_payment[row]), int(p.newm_window_ms[row])
        burst_n = int(p.newm_n[row])
        floor = max(min_spend, 1.0) / TAU_L_S
        exp, log, sqrt, expm1 = math.exp, math.log, math.sqrt, math.expm1
        for i, t, amt, h in zip(part.tolist(), ts_ms[part].tolist(), amounts[part].tolist(), mhash[part].tolist()):
            tf, a = float(t), float(amt)
            n0 = S[N]
            first = n0 == 0
            first_ts = tf if first else S[FIRST]
            dt_s = 0.0 if first else max(tf - S[LAST], 0.0) / 1000.0
            age_s = max((tf - first_ts) / 1000.0, 1.0)
            sm = S[SM] * exp(-dt_s / TAU_M_S) + a
            sl_prev = S[SL] * exp(-dt_s / TAU_L_S)
            rate_m = sm / (TAU_M_S * -expm1(-age_s / TAU_M_S))
            rate_l = sl_prev / (TAU_L_S * -expm1(-age_s / TAU_L_S))
            ratio = rate_m / max(rate_l, floor)
            lr = log(max(ratio, RATIO_FLOOR))
            z_rate = (lr - S[LR_M]) / sqrt(S[LR_V] + VAR_FLOOR_RATE)
            x = log(max(a, 1.0))
            z_size = (x - S[SIZE_M]) / sqrt(S[SIZE_V] + VAR_FLOOR_SIZE)
            g = log(max(dt_s, MIN_GAP_S))
            z_gap = (S[GAP_M] - g) / sqrt(S[GAP_V] + VAR_FLOOR_GAP) if n0 >= 2 else 0.0
            new = h not in tab
            warm = n0 >= warm_n and (tf - first_ts) >= warm_ms and enabled
            rate_flag = warm and ratio >= p_ratio and z_rate >= p_z and sm >= min_spend
            size_flag = warm and z_size >= p_size and a >= min_pay
            train = not (rate_flag or size_flag)
            train_rate = train and not (warm and ratio >= TRAIN_RATIO)
            S[N] = n0 + 1
            S[FIRST] = first_ts
            S[LAST] = tf if first else max(S[LAST], tf)
            S[SM] = sm
            S[SL] = sl_prev + (a if train_rate else 0.0)
            _ew1(S, SIZE_M, SIZE_V, x, train, first, ALPHA)
            _ew1(S, GAP_M, GAP_V, g, train and n0 >= 1, n0 == 1, ALPHA)
            _ew1(S, LR_M, LR_V, lr, train_rate and n0 >= 1, n0 == 1, -expm1(-dt_s / TAU_LR_S))
            if train and n0 >= 1:
                S[NOV] = S[NOV] + ALPHA_NOV * (float(new) - S[NOV])
            if new:
                mp = int(S[MPTR])
                tab[mp % MERCHANT_SLOTS] = h
                S[MPTR] = mp + 1
                q = int(S[NPTR])
                ring[q % NEWM_SLOTS] = t
                S[NPTR] = q + 1
                lo = t - win
                count = sum(1 for v in ring if v > lo)
                out.newm_count[i] = count
                if event_id is not None:
                    self.newm_ids.put(row, q, event_id(i))
                    if warm and count >= burst_n:
                        out.newm_ids[i] = self.newm_ids.counted(row, ring, q + 1, lo)
            out.ratio[i] = ratio
            out.z_rate[i] = z_rate
            out.spend_m[i] = sm
            out.z_size[i] = z_size
            out.z_gap[i] = z_gap
            out.new[i] = new
            out.warm[i] = warm
            out.rate_flag[i] = rate_flag
            out.size_flag[i] = size_flag
        self.state[row] = S
        self.mtab[row] = np.array(tab, np.uint64)
        self.newm[row] = ring

    def _round(self, sel, r, t, amt, h, p: RowParams, out: Scores, event_id) -> None:
        S = self.state[r]
        tf = t.astype(np.float64)
        a = amt.astype(np.float64)
        n0 = S[:, N].copy()
        first = n0 == 0
        first_ts = np.where(first, tf, S[:, FIRST])
        dt_s = np.where(first, 0.0, np.maximum(tf - S[:, LAST], 0.0) / 1000.0)
        age_s = np.maximum((tf - first_ts) / 1000.0, 1.0)
        # spend rates: decayed sums, bias-corrected for a short history
        sm = S[:, SM] * np.exp(-dt_s / TAU_M_S) + a
        sl_prev = S[:, SL] * np.exp(-dt_s / TAU_L_S)
        rate_m = sm / (TAU_M_S * -np.expm1(-age_s / TAU_M_S))
        rate_l = sl_prev / (TAU_L_S * -np.expm1(-age_s / TAU_L_S))
        ratio = rate_m / np.maximum(rate_l, np.maximum(p.min_spend[r], 1.0) / TAU_L_S)
        lr = np.log(np.maximum(ratio, RATIO_FLOOR))
        z_rate = (lr - S[:, LR_M]) / np.sqrt(S[:, LR_V] + VAR_FLOOR_RATE)
        # payment size and inter-arrival
        x = np.log(np.maximum(a, 1.0))
        z_size = (x - S[:, SIZE_M]) / np.sqrt(S[:, SIZE_V] + VAR_FLOOR_SIZE)
        g = np.log(np.maximum(dt_s, MIN_GAP_S))
        z_gap = np.where(n0 >= 2, (S[:, GAP_M] - g) / np.sqrt(S[:, GAP_V] + VAR_FLOOR_GAP), 0.0)
        # merchant novelty
        new = ~(self.mtab[r] == h[:, None]).any(axis=1)
        warm = (n0 >= p.warm_n[r]) & ((tf - first_ts) >= p.warm_ms[r]) & p.enabled[r]
        rate_flag = warm & (ratio >= p.ratio[r]) & (z_rate >= p.z_rate[r]) & (sm >= p.min_spend[r])
        size_flag = warm & (z_size >= p.size_z[r]) & (a >= p.min_payment[r])
        train = ~(rate_flag | size_flag)
        train_rate = ~(warm & (ratio >= TRAIN_RATIO)) & train

        # -- learn --
        S[:, N] = n0 + 1
        S[:, FIRST] = first_ts
        S[:, LAST] = np.where(first, tf, np.maximum(S[:, LAST], tf))
        S[:, SM] = sm
        S[:, SL] = sl_prev + np.where(train_rate, a, 0.0)
        _ew(S, SIZE_M, SIZE_V, x, train, first, ALPHA)
        _ew(S, GAP_M, GAP_V, g, train & (n0 >= 1), n0 == 1, ALPHA)
        _ew(S, LR_M, LR_V, lr, train_rate & (n0 >= 1), n0 == 1, -np.expm1(-dt_s / TAU_LR_S))
        S[:, NOV] = np.where(train & (n0 >= 1), S[:, NOV] + ALPHA_NOV * (new - S[:, NOV]), S[:, NOV])
        if new.any():
            rn, hn, tn = r[new], h[new], t[new]
            mp = S[new, MPTR].astype(np.int64)
            self.mtab[rn, mp % MERCHANT_SLOTS] = hn
            S[new, MPTR] = mp + 1
            np_ = S[new, NPTR].astype(np.int64)
            self.newm[rn, np_ % NEWM_SLOTS] = tn
            S[new, NPTR] = np_ + 1
            newm_count = np.zeros(len(r), np.int64)
            lo = tn - p.newm_window_ms[rn]
            newm_count[new] = (self.newm[rn] > lo[:, None]).sum(axis=1)
            out.newm_count[sel] = newm_count
            if event_id is not None:
                self._keep_ids(sel[new], rn, np_, lo, warm[new] & (newm_count[new] >= p.newm_n[rn]), event_id, out)
        self.state[r] = S

        out.ratio[sel] = ratio
        out.z_rate[sel] = z_rate
        out.spend_m[sel] = sm
        out.z_size[sel] = z_size
        out.z_gap[sel] = z_gap
        out.new[sel] = new
        out.warm[sel] = warm
        out.rate_flag[sel] = rate_flag
        out.size_flag[sel] = size_flag

    def _keep_ids(self, sel, rn, seq, lo, burst, event_id, out: Scores) -> None:
        """After a round's first-time-merchant payments were written to the rings (one per row): their ids,
        and for those that reached the burst count, the ids counted."""
        put = self.newm_ids.put
        for i, row, q in zip(sel.tolist(), rn.tolist(), seq.tolist()):
            put(row, q, event_id(i))
        for k in np.nonzero(burst)[0].tolist():
            row = int(rn[k])
            out.newm_ids[int(sel[k])] = self.newm_ids.counted(row, self.newm[row].tolist(), int(seq[k]) + 1,
                                                              int(lo[k]))

    # -- features for the fleet model ---------------------------------------------------------
    def features(self, rows: np.ndarray, now_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised per-agent features in [0, 1] (rate z, gap z, log rate ratio, gap spread, novelty),
        the raw spend-rate z-scores, and the spend of the last ~30 min (base units, decayed)."""
        S = self.state[rows]
        dt_s = np.maximum(now_ms - S[:, LAST], 0) / 1000.0
        sm = S[:, SM] * np.exp(-dt_s / TAU_M_S)
        sl = S[:, SL] * np.exp(-dt_s / TAU_L_S)
        age_s = np.maximum((now_ms - S[:, FIRST]) / 1000.0, 1.0)
        rate_m = sm / (TAU_M_S * -np.expm1(-age_s / TAU_M_S))
        rate_l = sl / (TAU_L_S * -np.expm1(-age_s / TAU_L_S))
        lr = np.log(np.maximum(rate_m, 1e-9) / np.maximum(rate_l, 1.0 / TAU_L_S))
        z_rate = (lr - S[:, LR_M]) / np.sqrt(S[:, LR_V] + VAR_FLOOR_RATE)
        z_gap = (S[:, GAP_M] - np.log(np.maximum(dt_s, MIN_GAP_S))) / np.sqrt(S[:, GAP_V] + VAR_FLOOR_GAP)
        feats = np.stack([z_rate / 8.0, z_gap / 8.0, lr / 8.0, np.sqrt(S[:, GAP_V]) / 4.0,
                          S[:, NOV] * 2 - 1], axis=1)
        return 0.5 + 0.5 * np.tanh(feats), z_rate, sm

    # -- checkpoint ---------------------------------------------------------------------------
    def snapshot(self, size: int) -> dict:
        return {"cols": list(COLS), "state": self.state[:size].tobytes(), "mtab": self.mtab[:size].tobytes(),
                "newm": self.newm[:size].tobytes(), "newm_ids": self.newm_ids.snapshot(size), "size": size}

    @classmethod
    def restore(cls, snap: dict) -> "Baselines":
        size = int(snap["size"])
        self = cls(max(1024, size))
        if list(snap["cols"]) != list(COLS):
            from watcher.errors import CheckpointError

            raise CheckpointError("baseline checkpoint has other columns than this version")
        self.state[:size] = np.frombuffer(snap["state"], np.float64).reshape(size, len(COLS))
        self.mtab[:size] = np.frombuffer(snap["mtab"], np.uint64).reshape(size, MERCHANT_SLOTS)
        self.newm[:size] = np.frombuffer(snap["newm"], np.int64).reshape(size, NEWM_SLOTS)
        self.newm_ids = IdRings.restore(NEWM_SLOTS, snap.get("newm_ids"))   # absent before the ids were kept
        return self


def _ew1(S: list, mc: int, vc: int, x: float, train: bool, init: bool, a: float) -> None:
    if init:
        S[mc], S[vc] = x, 0.0
    elif train:
        m, v = S[mc], S[vc]
        d = x - m
        S[mc], S[vc] = m + a * d, (1 - a) * (v + a * d * d)


def _ew(S: np.ndarray, mc: int, vc: int, x: np.ndarray, train: np.ndarray, init: np.ndarray, a) -> None:
    m, v = S[:, mc], S[:, vc]
    d = x - m
    S[:, mc] = np.where(init, x, np.where(train, m + a * d, m))
    S[:, vc] = np.where(init, 0.0, np.where(train, (1 - a) * (v + a * d * d), v))
