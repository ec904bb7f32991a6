"""Exact rolling spend windows per key, as numpy struct-of-arrays.

A window of `seconds` length is kept as `buckets` buckets of `seconds / buckets` each (its granularity
g). At time t the window holds every event whose bucket floor(ts / g) lies in (floor(t / g) - buckets,
floor(t / g)]: a span between `seconds - g` and `seconds` long, ending now. Within that definition sums
and counts are exact integers, whatever the arrival order: a late event still inside the window is
added to its own bucket; one older than the whole window is counted in `late_dropped` instead.

Storage: one row per key, one column per bucket of every window (a ring per window, shared by all rows,
with the absolute bucket number each column holds in `epoch`). Moving to a new bucket zeroes one column
for all rows at once. Memory per key: 12 bytes per bucket (int64 sum + int32 count).

Overflow: a bucket sum or a window total that would leave int64 is held at the int64 limit instead of
wrapping (a wrapped sum turns negative and slips under every cap; a held one is above every cap), and
each bucket so held is counted in `saturated` and logged. `_bound`, an upper bound on every bucket's
magnitude, keeps the ordinary add and total at plain numpy speed; the exact checks run only near the limit.

Restoring with other specs than the checkpoint's: a configured window that the checkpoint holds with the
same `seconds` and `buckets` is restored exactly (even under another name, or in another order); a
checkpointed window no longer configured is dropped; a configured window the checkpoint lacks cannot be
rebuilt exactly, so restoring refuses with a CheckpointError that names `windows` and the fix.
"""

from __future__ import annotations

import logging
from typing import Iterable

import msgspec
import numpy as np

from watcher.errors import CheckpointError

INT64_MAX = int(np.iinfo(np.int64).max)
INT64_MIN = int(np.iinfo(np.int64).min)

log = logging.getLogger(__name__)


class WindowSpec(msgspec.Struct, frozen=True):
    name: str
    seconds: int
    buckets: int

    @property
    def granularity_ms(self) -> int:
        return self.seconds * 1000 // self.buckets


IDLE_FRACTION = 8   # rows are forgotten (here, and by the detector) once one in this many is idle

DEFAULT_WINDOWS = (
    WindowSpec("1m", 60, 6),
    WindowSpec("5m", 300, 5),
    WindowSpec("1h", 3600, 6),
    WindowSpec("24h", 86400, 8),
)


def describe(specs: Iterable[WindowSpec]) -> str:
    """Windows as messages name them: "1m (60 s, 6 buckets), 5m (300 s, 5 buckets)"."""
    return ", ".join(f"{s.name} ({s.seconds} s, {s.buckets} buckets)" for s in specs)


class Windows:
    """Rolling sums/counts for many keys (agent wallets, or agent+category pairs)."""

    GROWTH = 1.125

    def __init__(self, specs: Iterable[WindowSpec] = DEFAULT_WINDOWS, capacity: int = 1024) -> None:
        self.specs = tuple(specs)
        for s in self.specs:
            if s.seconds <= 0 or s.buckets <= 0 or (s.seconds * 1000) % s.buckets:
                raise ValueError(f"window {s.name}: seconds*1000 must be a positive multiple of buckets")
        self.offsets = np.cumsum([0] + [s.buckets for s in self.specs])
        self.n_cols = int(self.offsets[-1])
        self.sums = np.zeros((capacity, self.n_cols), dtype=np.int64)
        self.counts = np.zeros((capacity, self.n_cols), dtype=np.int32)
        self.epoch = np.full(self.n_cols, -1, dtype=np.int64)
        self.index: dict[bytes, int] = {}
        self.keys: list[bytes] = []
        self.watermark_ms = 0
        self.late_dropped = 0
        self.saturated = 0  # bucket sums held at the int64 limit instead of overflowing
        self._bound = 0  # >= |every bucket sum| in its window at the watermark; below _safe_total, no total
        # at or after the watermark can overflow
        self._safe_total = INT64_MAX // max([s.buckets for s in self.specs] or [1])

    # -- keys ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys)

    def row(self, key: bytes) -> int:
        r = self.index.get(key)
        if r is None:
            r = len(self.keys)
            if r >= self.sums.shape[0]:
                self._grow(r + 1)
            self.index[key] = r
            self.keys.append(key)
        return r

    def _grow(self, need: int) -> None:
        cap = max(need, int(self.sums.shape[0] * self.GROWTH) + 1)
        for name in ("sums", "counts"):
            old = getattr(self, name)
            new = np.zeros((cap, self.n_cols), dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    # -- updates -------------------------------------------------------------------------------
    def add(self, rows: np.ndarray, ts_ms: np.ndarray, amounts: np.ndarray, deltas: np.ndarray) -> None:
        """Add `amounts` (may be negative, to un-count) and `deltas` (+1/-1 payments) at the given times."""
        if len(rows) == 0:
            return
        rows = np.asarray(rows, dtype=np.int64)
        ts_ms = np.asarray(ts_ms, dtype=np.int64)
        amounts = np.asarray(amounts, dtype=np.int64)
        deltas = np.asarray(deltas, dtype=np.int32)
        self.watermark_ms = max(self.watermark_ms, int(ts_ms.max()))
        size = len(self.keys)
        kept_any = np.zeros(len(rows), dtype=bool)
        # the most any one bucket can change by (Python ints: exact whatever the values)
        grow = len(amounts) * max(int(amounts.max()), -int(amounts.min()))
        if grow <= INT64_MAX:
            grow = int(np.abs(amounts).sum())
        rolled = False
        for w, spec in enumerate(self.specs):
            off, n, g = int(self.offsets[w]), spec.buckets, spec.granularity_ms
            b = ts_ms // g
            s = b % n
            fresh = b > self.watermark_ms // g - n  # older buckets are outside this window for good
            newest = np.full(n, -1, dtype=np.int64)
            np.maximum.at(newest, s[fresh], b[fresh])
            ep = self.epoch[off: off + n]
            adv = np.nonzero(newest > ep)[0]
            if len(adv):
                rolled = True
                cols = off + adv
                self.sums[:size, cols] = 0
                self.counts[:size, cols] = 0
                self.epoch[cols] = newest[adv]
            ok = fresh & (b == self.epoch[off + s])
            kept_any |= ok
            if ok.all():
                r, c, a, d = rows, off + s, amounts, deltas
            elif ok.any():
                r, c, a, d = rows[ok], off + s[ok], amounts[ok], deltas[ok]
            else:
                continue
            if self._bound + grow <= INT64_MAX:
                np.add.at(self.sums, (r, c), a)
            else:
                self._add_near_limit(r, c, a, grow, spec)
            np.add.at(self.counts, (r, c), d)
        self._bound = min(self._bound + grow, INT64_MAX)
        if rolled and self._bound > self._safe_total:  # buckets were emptied: the bound may come down
            self._bound = self._peak()
        self.late_dropped += int((~kept_any).sum())

    def _add_near_limit(self, rows: np.ndarray, cols: np.ndarray, amounts: np.ndarray, grow: int,
                        spec: WindowSpec) -> None:
        """`np.add.at` for buckets that might overflow: exact in Python ints, held at the int64 limits."""
        cur = self.sums[rows, cols]
        peak = max(int(cur.max()), -int(cur.min())) + grow
        if peak <= INT64_MAX:  # these buckets are far enough from the limit, only others are near it
            np.add.at(self.sums, (rows, cols), amounts)
            return
        exact: dict[tuple[int, int], int] = {}
        for r, c, a in zip(rows.tolist(), cols.tolist(), amounts.tolist()):
            exact[(r, c)] = exact.get((r, c), int(self.sums[r, c])) + a
        held: list[tuple[int, int]] = []
        for (r, c), v in exact.items():
            if not INT64_MIN <= v <= INT64_MAX:
                v = INT64_MAX if v > 0 else INT64_MIN
                held.append((r, v))
            self.sums[r, c] = v
        if held:
            self.saturated += len(held)
            log.warning("window %s: %d bucket sum(s) would overflow int64 and are held at the limit instead "
                        "(%s); keys: %s", spec.name, len(held),
                        ", ".join(sorted({"above every cap" if v > 0 else "negative" for _, v in held})),
                        ", ".join(sorted({"0x" + self.keys[r].hex() for r, _ in held})[:5]))

    def _peak(self) -> int:
        """The largest |bucket sum| of any key in a bucket still in its window at the watermark (exact).

        Older buckets are never added to again (they are zeroed before reuse) nor read from that time on."""
        live = np.concatenate([self.epoch[int(self.offsets[w]): int(self.offsets[w]) + s.buckets]
                               > self.watermark_ms // s.granularity_ms - s.buckets
                               for w, s in enumerate(self.specs)])
        block = self.sums[: len(self.keys), live]
        return max(int(block.max()), -int(block.min())) if block.size else 0

    def advance(self, now_ms: int) -> None:
        """Move the clock without an event (so idle windows drain)."""
        self.watermark_ms = max(self.watermark_ms, int(now_ms))

    # -- queries -------------------------------------------------------------------------------
    def _valid(self, w: int, now_ms: int) -> np.ndarray:
        spec = self.specs[w]
        off = int(self.offsets[w])
        qb = now_ms // spec.granularity_ms
        ep = self.epoch[off: off + spec.buckets]
        return (ep > qb - spec.buckets) & (ep <= qb)

    def totals(self, rows: np.ndarray | None = None, now_ms: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sums, counts), each shaped (len(rows), n_windows), at `now_ms` (default: the watermark)."""
        now = self.watermark_ms if now_ms is None else int(now_ms)
        size = len(self.keys)
        sel = slice(0, size) if rows is None else np.asarray(rows, dtype=np.int64)
        all_sums, all_counts = self.sums[sel], self.counts[sel]
        n = len(all_sums)
        sums = np.zeros((n, len(self.specs)), dtype=np.int64)
        counts = np.zeros((n, len(self.specs)), dtype=np.int64)
        for w, spec in enumerate(self.specs):
            cols = int(self.offsets[w]) + np.nonzero(self._valid(w, now))[0]
            if len(cols):
                block = all_sums[:, cols]
                sums[:, w] = block.sum(axis=1)
                counts[:, w] = all_counts[:, cols].sum(axis=1)
                if self._bound > self._safe_total or now < self.watermark_ms:  # might overflow: exactly
                    near = np.nonzero(np.abs(block.sum(axis=1, dtype=np.float64)) >= 2.0 ** 62)[0]
                    for i in near.tolist():
                        sums[i, w] = min(max(sum(int(x) for x in block[i]), INT64_MIN), INT64_MAX)
        return sums, counts

    def total(self, key: bytes, now_ms: int | None = None) -> tuple[list[int], list[int]]:
        r = self.index.get(key)
        if r is None:
            return [0] * len(self.specs), [0] * len(self.specs)
        s, c = self.totals(np.array([r]), now_ms)
        return [int(x) for x in s[0]], [int(x) for x in c[0]]

    def compact(self, now_ms: int | None = None, min_dropped: int = 1) -> int:
        """Forget keys with nothing left in any window (no payment and no amount), if at least `min_dropped`
        of them. Returns how many were dropped. Rows are renumbered: callers find keys through `index`."""
        size = len(self.keys)
        if size == 0:
            return 0
        sums, counts = self.totals(now_ms=now_ms)
        live = np.nonzero(counts.any(axis=1) | sums.any(axis=1))[0]
        dropped = size - len(live)
        if dropped == 0 or dropped < min_dropped:
            return 0
        self.sums[: len(live)] = self.sums[live]
        self.counts[: len(live)] = self.counts[live]
        self.sums[len(live): size] = 0
        self.counts[len(live): size] = 0
        self.keys = [self.keys[i] for i in live]
        self.index = {k: i for i, k in enumerate(self.keys)}
        return dropped

    def nbytes(self) -> int:
        return self.sums.nbytes + self.counts.nbytes + self.epoch.nbytes

    # -- checkpoint ----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        size = len(self.keys)
        return {
            "specs": [[s.name, s.seconds, s.buckets] for s in self.specs],
            "keys": self.keys,
            "sums": self.sums[:size].tobytes(),
            "counts": self.counts[:size].tobytes(),
            "epoch": self.epoch.tobytes(),
            "watermark_ms": self.watermark_ms,
            "late_dropped": self.late_dropped,
            "saturated": self.saturated,
        }

    @classmethod
    def restore(cls, snap: dict, specs: Iterable[WindowSpec] | None = None) -> "Windows":
        """Rebuild from `snapshot()`. With `specs` (the configured windows), keep exactly those: each must be
        in the checkpoint with the same seconds and buckets (its name may differ); others are dropped."""
        saved = [WindowSpec(*s) for s in snap["specs"]]
        self = cls(saved, capacity=max(1024, len(snap["keys"])))
        size = len(snap["keys"])
        try:
            self.sums[:size] = np.frombuffer(snap["sums"], dtype=np.int64).reshape(size, self.n_cols)
            self.counts[:size] = np.frombuffer(snap["counts"], dtype=np.int32).reshape(size, self.n_cols)
            self.epoch[:] = np.frombuffer(snap["epoch"], dtype=np.int64)
        except ValueError as exc:
            raise CheckpointError(f"window checkpoint does not match its window specs: {exc}") from None
        self.keys = list(snap["keys"])
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.watermark_ms = snap["watermark_ms"]
        self.late_dropped = snap["late_dropped"]
        self.saturated = snap.get("saturated", 0)
        if specs is not None and tuple(specs) != self.specs:
            self = self._select(tuple(specs))
        self._bound = self._peak()
        return self

    def _select(self, specs: tuple[WindowSpec, ...]) -> "Windows":
        """These windows, taken column for column from this one's (same seconds and buckets)."""
        at = {(s.seconds, s.buckets): w for w, s in enumerate(self.specs)}
        missing = [s for s in specs if (s.seconds, s.buckets) not in at]
        if missing:
            raise CheckpointError(
                f"the configured windows ([[windows]]) include {describe(missing)}, which the checkpoint does "
                f"not hold (it has {describe(self.specs)}), so their sums cannot be restored exactly; set `windows` "
                "back to the checkpoint's (a window may be renamed, reordered or removed, not added or "
                "resized), or start the partition over from its input")
        out = Windows(specs, capacity=self.sums.shape[0])
        for w, spec in enumerate(specs):
            src = int(self.offsets[at[(spec.seconds, spec.buckets)]])
            dst = int(out.offsets[w])
            cols, into = slice(src, src + spec.buckets), slice(dst, dst + spec.buckets)
            out.sums[:, into] = self.sums[:, cols]
            out.counts[:, into] = self.counts[:, cols]
            out.epoch[into] = self.epoch[cols]
        out.keys, out.index = self.keys, self.index
        out.watermark_ms, out.late_dropped, out.saturated = self.watermark_ms, self.late_dropped, self.saturated
        return out
