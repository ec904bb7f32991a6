"""The bounded per-agent series: the top N agents by spend rate, plus pinned agents, chosen with numpy.

Ranking is vectorised over every tracked agent of every shard (no per-agent Python): for each window the
valid bucket columns are summed column by column, divided by the window's length (a rate in base units
per second), and an agent's score is its highest rate over the windows, so a sudden runaway (short
window) and a steady heavy spender (long window) both rank. `np.argpartition` keeps the best N per shard,
then the best N overall. Pinned agents (open breaker, waiting escalation) are always added.

The chosen agents' series are rendered once per refresh into Prometheus text, so a scrape costs the same
at 1,000 or 1,000,000 tracked agents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from watcher.events.addresses import key_address

USDC = 1_000_000


@dataclass(frozen=True)
class AgentRow:
    agent: str            # checksum address
    sums: tuple[int, ...]     # base units per window
    counts: tuple[int, ...]   # payments per window


def rank_scores(windows, now_ms: int | None = None) -> np.ndarray:
    """Each agent row's highest spend rate (base units/s) over the windows, float64, shape (n_agents,).

    One contiguous `np.add.reduceat` over every bucket column (memory-bound: ~25 columns of int64 per
    agent), then the few columns outside their window (stale buckets not yet reused) are subtracted."""
    size = len(windows.keys)
    if size == 0:
        return np.zeros(0, dtype=np.float64)
    now = windows.watermark_ms if now_ms is None else int(now_ms)
    block = windows.sums[:size]
    starts = np.asarray(windows.offsets[:-1], dtype=np.intp)
    per_window = np.add.reduceat(block, starts, axis=1)          # (size, n_windows) int64
    best = None
    for w, spec in enumerate(windows.specs):
        col = per_window[:, w]
        off = int(windows.offsets[w])
        ep = windows.epoch[off: off + spec.buckets]
        stale = off + np.nonzero(~windows._valid(w, now) & (ep >= 0))[0]   # never-used columns are zero
        for c in stale:
            col -= block[:, c]
        rate = col * (1.0 / spec.seconds)
        best = rate if best is None else np.maximum(best, rate, out=best)
    return best


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest positive scores (unordered)."""
    pos = np.flatnonzero(scores > 0)
    if len(pos) <= k:
        return pos
    part = np.argpartition(scores[pos], len(pos) - k)[len(pos) - k:]
    return pos[part]


class AddressCache:
    """20-byte wallet key -> checksum address, bounded (checksumming costs a keccak)."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._d: dict[bytes, str] = {}

    def __call__(self, key: bytes) -> str:
        a = self._d.get(key)
        if a is None:
            if len(self._d) >= self.max_entries:
                self._d.clear()
            a = self._d[key] = key_address(key)
        return a


def rank_agents(shards: Mapping[int, object], top_n: int, pinned: Iterable[str] = (),
                address: AddressCache | None = None) -> list[AgentRow]:
    """The top `top_n` agents by score over all shards, plus every pinned agent that is tracked."""
    address = address or AddressCache()
    cands: list[tuple[float, int, int]] = []   # (score, partition, row)
    per_shard: dict[int, np.ndarray] = {}
    for p, shard in shards.items():
        win = shard.agents
        if len(win.keys) == 0:
            continue
        score = rank_scores(win)
        best = _best(score, top_n)
        per_shard[p] = best
        cands.extend(zip(score[best].tolist(), [p] * len(best), best.tolist()))
    chosen: dict[int, set[int]] = {}
    if cands:
        sc = np.fromiter((c[0] for c in cands), np.float64, len(cands))
        for i in _best(sc, top_n).tolist():
            chosen.setdefault(cands[i][1], set()).add(cands[i][2])
    pinned_keys = {bytes.fromhex(a[2:]) for a in pinned}
    for p, shard in shards.items():
        idx = shard.agents.index
        for k in pinned_keys:
            r = idx.get(k)
            if r is not None:
                chosen.setdefault(p, set()).add(r)
    rows: list[AgentRow] = []
    for p, rset in chosen.items():
        win = shards[p].agents
        sel = np.fromiter(sorted(rset), np.int64, len(rset))
        sums, counts = win.totals(sel)
        for j, r in enumerate(sel.tolist()):
            rows.append(AgentRow(address(win.keys[r]), tuple(sums[j].tolist()), tuple(counts[j].tolist())))
    rows.sort(key=lambda a: a.agent)
    return rows


def _g(v: float) -> str:
    return repr(float(v))


def render_agents(window_specs, rows: list[AgentRow], breakers: Mapping[str, str],
                  escalations: Mapping[str, float]) -> bytes:
    """Prometheus text (format 0.0.4) of the per-agent families."""
    names = [s.name for s in window_specs]
    secs = [float(s.seconds) for s in window_specs]
    out = ["# HELP spendwatch_agent_spend_rate_usdc_per_second Spend rate of a top-N or pinned agent over a "
           "rolling window (USDC per second; window sum / window length).",
           "# TYPE spendwatch_agent_spend_rate_usdc_per_second gauge"]
    for a in rows:
        for w, n in enumerate(names):
            out.append(f'spendwatch_agent_spend_rate_usdc_per_second{{agent="{a.agent}",window="{n}"}} '
                       f"{_g(a.sums[w] / USDC / secs[w])}")
    out += ["# HELP spendwatch_agent_window_payments Payments of a top-N or pinned agent within a rolling "
            "window.",
            "# TYPE spendwatch_agent_window_payments gauge"]
    for a in rows:
        for w, n in enumerate(names):
            out.append(f'spendwatch_agent_window_payments{{agent="{a.agent}",window="{n}"}} {a.counts[w]}')
    out += ["# HELP spendwatch_agent_breaker_state 1 for an agent whose breaker is not closed, labelled with "
            "its state (open, half_open, held).",
            "# TYPE spendwatch_agent_breaker_state gauge"]
    for agent, state in sorted(breakers.items()):
        out.append(f'spendwatch_agent_breaker_state{{agent="{agent}",state="{state}"}} 1.0')
    out += ["# HELP spendwatch_agent_escalation_waiting_since_timestamp_seconds When an agent's escalation "
            "started waiting for a person (Unix seconds).",
            "# TYPE spendwatch_agent_escalation_waiting_since_timestamp_seconds gauge"]
    for agent, since in sorted(escalations.items()):
        out.append(f'spendwatch_agent_escalation_waiting_since_timestamp_seconds{{agent="{agent}"}} {_g(since)}')
    return ("\n".join(out) + "\n").encode()
