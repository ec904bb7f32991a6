"""A histogram fed a whole batch at once (numpy), exposed through a prometheus_client collector.

prometheus_client's Histogram takes one value per call; per-event latencies and anomaly scores arrive
as arrays per batch, so they are binned with one `np.searchsorted` + `np.bincount` instead.
"""

from __future__ import annotations

import math
import threading
from typing import Iterable

import numpy as np
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class BulkHistogram:
    """A labelled histogram family. Register it in a registry (it is a Collector)."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], labelnames: tuple[str, ...] = ()):
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = np.array(bounds, dtype=np.float64)
        self._le = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._series: dict[tuple[str, ...], list] = {}   # labels -> [counts per bucket (int64), sum]
        self._lock = threading.Lock()

    def observe_many(self, values, labels: tuple[str, ...] = ()) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        v = v[~np.isnan(v)]
        idx = np.searchsorted(self.bounds, v, side="left")  # value == bound belongs to that bucket (le)
        binned = np.bincount(idx, minlength=len(self.bounds) + 1).astype(np.int64)
        total = float(v.sum())
        with self._lock:
            s = self._series.get(labels)
            if s is None:
                s = self._series[labels] = [np.zeros(len(self.bounds) + 1, np.int64), 0.0]
            s[0] += binned
            s[1] += total

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        self.observe_many((value,), labels)

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self):
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            items = [(k, np.cumsum(c), s) for k, (c, s) in self._series.items()]
        for labels, cum, total in items:
            fam.add_metric(list(labels), list(zip(self._le, (int(x) for x in cum))), total)
        yield fam

    def count(self, labels: tuple[str, ...] = ()) -> int:
        s = self._series.get(labels)
        return 0 if s is None else int(s[0].sum())
