"""MetricsStage: folds each partition batch into the metrics, once per batch (never per event).

Put it last in the daemon's stages, after detection and the breaker, so `ctx.decisions` is complete.
Per batch it aggregates in plain Python/numpy and calls each metric once per label set; at most once
per `refresh_seconds` it re-ranks the top-N agents over every shard it has seen (vectorised).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from watcher.events.observation import Kind
from watcher.metrics import Metrics

UNCATEGORIZED = "uncategorized"
TRANSFER, PROGRESS = Kind.TRANSFER, Kind.PROGRESS


class MetricsStage:
    def __init__(self, metrics: Metrics, clock=time.monotonic) -> None:
        self.metrics = metrics
        self.shards: dict[int, object] = {}
        self.clock = clock
        self._last_refresh = float("-inf")

    # -- Stage protocol ------------------------------------------------------------------------------
    def on_batch(self, ctx) -> None:
        m = self.metrics
        self.shards[ctx.partition] = ctx.shard
        obs = ctx.observations
        if obs:
            progress = sum(1 for o in obs if o.kind == PROGRESS)
            chain = sum(1 for o in obs if o.kind == TRANSFER) + progress   # records of the chain bridge
            if chain:
                m.events_processed("chain", chain)
            if len(obs) - chain:
                m.events_processed("facilitator", len(obs) - chain)
            # a heartbeat's time is its block's, published up to chain.progress_interval_seconds later on
            # purpose: not an event latency (spendwatch_bridge_confirmed_timestamp_seconds shows it)
            ts = np.fromiter((o.ts_ms for o in obs if o.kind != PROGRESS), np.int64, len(obs) - progress)
            # the wall clock: while a backlog is read, ctx.now_ms is the partition's own event time
            m.event_latencies(np.maximum(ctx.wall_ms - ts, 0) / 1000.0)
        deltas = ctx.outcome.deltas
        if deltas:
            by_id = {o.event_id: o for o in obs}
            spend: dict[tuple[str, str], list[int]] = {}
            merchants: Counter[str] = Counter()
            for d in deltas:
                o = by_id.get(d.event_id)
                net = o.network if o is not None else "unknown"
                mv = d.move
                if mv is not None:   # a settle after its transfer: the spend moves category (a correction)
                    if mv.category != d.category:
                        _spend(spend, mv.category, net, -mv.amount, 0)
                        _spend(spend, d.category, net, mv.amount, mv.count)
                    continue
                _spend(spend, d.category, net, d.amount, d.count)
                if o is not None and d.amount > 0:
                    merchants[o.merchant] += d.amount
            for (cat, net), (plus, minus, count) in spend.items():
                m.add_spend(cat, net, plus, max(count, 0))
                if minus:
                    m.add_spend(cat, net, -minus, 0)
            for merchant, amount in merchants.items():
                m.add_merchant_spend(merchant, amount)
        if ctx.outcome.findings:
            for kind, n in Counter(f.kind for f in ctx.outcome.findings).items():
                m.finding(kind, n)
        if ctx.decisions:
            for (kind, rule), n in Counter((d.kind, d.rule) for d in ctx.decisions).items():
                m.decision(kind, rule, n)
        now = self.clock()
        if now - self._last_refresh >= m.settings.refresh_seconds:
            self._last_refresh = now
            m.refresh_agents(self.shards)

    def snapshot(self, partition: int) -> object:
        return None

    def restore(self, partition: int, data: object | None) -> None:
        pass

    def drop(self, partition: int) -> None:
        self.shards.pop(partition, None)
        self.metrics.refresh_agents(self.shards)


def _spend(spend: dict[tuple[str, str], list[int]], category: str | None, net: str, amount: int, count: int) -> None:
    """Fold one change into spend[(category, network)] = [counted, un-counted, payments]."""
    key = (category or UNCATEGORIZED, net)
    acc = spend.get(key)
    if acc is None:
        acc = spend[key] = [0, 0, 0]
    if amount >= 0:
        acc[0] += amount
    else:
        acc[1] -= amount
    acc[2] += count
