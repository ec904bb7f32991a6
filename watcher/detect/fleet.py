"""One fleet-wide river model scoring agents at a bounded rate.

A `HalfSpaceTrees` over each agent's normalised baseline features (see `Baselines.features`), wrapped in
a `QuantileFilter`: a score above the running q-quantile of all scores is anomalous. One model per
detector, never one per agent (a HalfSpaceTrees is about 1 MiB). An agent is scored at most once per
`interval_ms`, and at most `max_per_batch` agents per batch, so the cost is bounded by the fleet size,
not the event rate. Anomalous points do not train the trees (the filter protects them). The model is
checkpointed as pickled bytes.
"""

from __future__ import annotations

import pickle

import numpy as np
from river import anomaly, stats

from watcher.detect.rows import keep_rows

FEATURES = ("z_rate", "z_gap", "log_ratio", "gap_spread", "novelty")
MIN_SCORED = 1000


class FleetModel:
    def __init__(self, quantile: float = 0.995, *, seed: int = 7, interval_ms: int = 60_000,
                 max_per_batch: int = 256, n_trees: int = 10, height: int = 8, window_size: int = 250) -> None:
        self.quantile = quantile
        self.interval_ms = interval_ms
        self.max_per_batch = max_per_batch
        self.filter = anomaly.QuantileFilter(
            anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window_size, seed=seed,
                                   limits={f: (0.0, 1.0) for f in FEATURES}), q=quantile)
        self.scored = 0
        self.next_due = np.zeros(0, np.int64)

    def grow(self, capacity: int) -> None:
        if capacity > len(self.next_due):
            new = np.zeros(capacity, np.int64)
            new[: len(self.next_due)] = self.next_due
            self.next_due = new

    def keep_rows(self, live: np.ndarray, size: int) -> None:
        """Renumber to the rows `live` (ascending; see watcher/detect/rows.py), the others forgotten."""
        keep_rows(self.next_due, live, size)

    def due(self, rows: np.ndarray, now_ms: int) -> np.ndarray:
        """The rows (unique, from this batch) whose turn it is, at most max_per_batch of them: the longest
        overdue first (in row order, those of a busy fleet's higher rows were never scored)."""
        rows = np.unique(rows)
        rows = rows[self.next_due[rows] <= now_ms]
        if len(rows) > self.max_per_batch:
            rows = np.sort(rows[np.argsort(self.next_due[rows], kind="stable")[: self.max_per_batch]])
        return rows

    def score(self, rows: np.ndarray, feats: np.ndarray, now_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """Score then learn each row's features; returns (scores, anomalous flags)."""
        f = self.filter
        det, q = f.anomaly_detector, f.quantile
        scores = np.zeros(len(rows))
        flags = np.zeros(len(rows), bool)
        ready = self.scored >= MIN_SCORED
        for i, vec in enumerate(feats.tolist()):
            x = dict(zip(FEATURES, vec))
            s = det.score_one(x)
            anomalous = f.classify(s)
            if not anomalous:
                det.learn_one(x)
            q.update(s)
            scores[i] = s
            flags[i] = anomalous and ready
        self.scored += len(rows)
        self.next_due[rows] = now_ms + self.interval_ms
        return scores, flags

    def set_quantile(self, q: float) -> None:
        """Follow the policy's `fleet_quantile`: a new running quantile, learnt afresh before it flags."""
        if q != self.quantile:
            self.quantile = q
            self.filter.quantile = stats.Quantile(q)
            self.scored = 0

    def threshold(self) -> float:
        return float(self.filter.quantile.get() or 0.0)

    def snapshot(self, size: int) -> dict:
        return {"model": pickle.dumps(self.filter, protocol=5), "scored": self.scored,
                "next_due": self.next_due[:size].tobytes(), "quantile": self.quantile,
                "interval_ms": self.interval_ms, "max_per_batch": self.max_per_batch}

    @classmethod
    def restore(cls, snap: dict) -> "FleetModel":
        self = cls(snap["quantile"], interval_ms=snap["interval_ms"], max_per_batch=snap["max_per_batch"])
        self.filter = pickle.loads(snap["model"])
        self.scored = snap["scored"]
        nd = np.frombuffer(snap["next_due"], np.int64)
        self.next_due = np.zeros(max(1024, len(nd)), np.int64)
        self.next_due[: len(nd)] = nd
        return self
