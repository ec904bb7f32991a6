"""Exact rolling spend windows per key, as numpy struct-of-arrays.

A window of `seconds` length is kept as `buckets` buckets of `seconds / buckets` each (its granularity
g). At time t the window holds every event whose bucket floor(ts / g) lies in (floor(t / g) - buckets,
floor(t / g)]: a span between `seconds - g` and `seconds` long, ending now. Within that definition sums
and counts are exact integers, whatever the arrival order: a late event still inside the window is
added to its own bucket; one older than the whole window is counted in `late_dropped` instead.

Storage: one row per key, one column per bucket of every window (a ring per window, shared by all rows,
with the absolute bucket number each column holds in `epoch`). Moving to a new bucket zeroes one column
for all rows at once. Memory per key: 12 bytes per bucket (int64 sum + int32 count).
"""

from __future__ import annotations

from typing import Iterable

import msgspec
import numpy as np

from watcher.errors import CheckpointError

INT64_MAX = np.iinfo(np.int64).max


class WindowSpec(msgspec.Struct, frozen=True):
    name: str
    seconds: int
    buckets: int

    @property
    def granularity_ms(self) -> int:
        return self.seconds * 1000 // self.buckets


DEFAULT_WINDOWS = (
    WindowSpec("1m", 60, 6),
    WindowSpec("5m", 300, 5),
    WindowSpec("1h", 3600, 6),
    WindowSpec("24h", 86400, 8),
)


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
                cols = off + adv
                self.sums[:size, cols] = 0
                self.counts[:size, cols] = 0
                self.epoch[cols] = newest[adv]
            ok = fresh & (b == self.epoch[off + s])
            kept_any |= ok
            if ok.all():
                np.add.at(self.sums, (rows, off + s), amounts)
                np.add.at(self.counts, (rows, off + s), deltas)
            elif ok.any():
                np.add.at(self.sums, (rows[ok], off + s[ok]), amounts[ok])
                np.add.at(self.counts, (rows[ok], off + s[ok]), deltas[ok])
        self.late_dropped += int((~kept_any).sum())

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
                sums[:, w] = all_sums[:, cols].sum(axis=1)
                counts[:, w] = all_counts[:, cols].sum(axis=1)
        return sums, counts

    def total(self, key: bytes, now_ms: int | None = None) -> tuple[list[int], list[int]]:
        r = self.index.get(key)
        if r is None:
            return [0] * len(self.specs), [0] * len(self.specs)
        s, c = self.totals(np.array([r]), now_ms)
        return [int(x) for x in s[0]], [int(x) for x in c[0]]

    def compact(self, now_ms: int | None = None) -> int:
        """Forget keys with nothing left in any window. Returns how many were dropped."""
        size = len(self.keys)
        if size == 0:
            return 0
        _, counts = self.totals(now_ms=now_ms)
        live = np.nonzero(counts.any(axis=1))[0]
        dropped = size - len(live)
        if dropped == 0:
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
        }

    @classmethod
    def restore(cls, snap: dict) -> "Windows":
        specs = [WindowSpec(*s) for s in snap["specs"]]
        self = cls(specs, capacity=max(1024, len(snap["keys"])))
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
        return self
