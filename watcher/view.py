"""The live terminal view of the demo (rich): top agents by spend per window, rates, dead letters."""

from __future__ import annotations

import time

import numpy as np
from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from watcher.events.addresses import key_address
from watcher.money import fmt_usdc


def top_agents(shards: dict, n: int = 10, window: int = 0) -> list[tuple[str, list[int], list[int]]]:
    """The n agents with the highest spend in `window` (index into the window specs) across shards."""
    rows = []
    for shard in shards.values():
        if not len(shard.agents):
            continue
        sums, counts = shard.agents.totals()
        k = min(n, len(sums))
        idx = np.argpartition(-sums[:, window], k - 1)[:k]
        for i in idx:
            rows.append((key_address(shard.agents.keys[i]), sums[i].tolist(), counts[i].tolist()))
    rows.sort(key=lambda r: -r[1][window])
    return rows[:n]


class LiveView:
    def __init__(self, daemon, names: dict[str, str] | None = None, title: str = "spendwatch") -> None:
        self.daemon, self.names, self.title = daemon, names or {}, title
        self.t0 = time.monotonic()
        self._last = (self.t0, 0)
        self.rate = 0.0

    def __rich__(self):
        d = self.daemon
        now = time.monotonic()
        t_prev, n_prev = self._last
        if now - t_prev >= 1.0:
            self.rate = (d.counters.consumed - n_prev) / (now - t_prev)
            self._last = (now, d.counters.consumed)
        specs = next(iter(d.shards.values())).config.windows if d.shards else ()
        table = Table(title="top agents by spend (USDC) per rolling window", expand=True)
        table.add_column("agent", no_wrap=True, min_width=13)
        table.add_column("wallet", no_wrap=True)
        for s in specs:
            table.add_column(s.name, justify="right", no_wrap=True)
        table.add_column("payments 1h" if len(specs) > 2 else "payments", justify="right")
        for wallet, sums, counts in top_agents(d.shards, 8):
            table.add_row(self.names.get(wallet, "?"), wallet[:8] + "…", *[fmt_usdc(s)[:-4] for s in sums],
                          str(counts[min(2, len(counts) - 1)]))
        c = d.counters
        stats = (f"decisions: freeze {d.decision_counts['freeze']}, escalate {d.decision_counts['escalate']}, "
                 f"warn {d.decision_counts['warn']}\n"
                 f"events/s {self.rate:,.0f}   consumed {c.consumed:,}   processed {c.processed:,}   "
                 f"dead-lettered {c.dead_lettered:,}   duplicates {c.duplicates:,}   findings {c.findings:,}   "
                 f"agents {d.tracked_agents():,}   partitions {len(d.shards)}   up {now - self.t0:,.0f} s")
        dec = Table(title="latest decisions", expand=True)
        for col in ("kind", "agent", "rule", "observed", "threshold", "window"):
            dec.add_column(col, no_wrap=True)
        style = {"freeze": "bold red", "escalate": "yellow", "warn": "cyan"}
        for d in list(d.recent_decisions)[-4:][::-1]:
            money = d.unit == "usdc_base_units"
            dec.add_row(f"[{style.get(d.kind, '')}]{d.kind}", self.names.get(d.agent, d.agent[:10]), d.rule,
                        fmt_usdc(int(d.observed))[:-4] if money else str(d.observed),
                        fmt_usdc(int(d.threshold))[:-4] if money else str(d.threshold), d.window or "")
        return Panel(Group(table, dec, stats), title=self.title)
