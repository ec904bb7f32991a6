"""The state of one input partition and the pure stage that folds a batch into it.

dedupe -> join (settle + transfer = one payment) -> rolling windows per agent and per agent+category.
A `chain.progress` heartbeat goes to the join only (`Join.progress`): it moves event time like any record,
but is not remembered by dedupe (it is idempotent), counts no spend, is no signal and makes no agent.
A settle that follows its payment's transfer returns a moving delta (`Delta.move`, listed in `Outcome.moves`):
the agent's windows do not change, the payment's amount and count move between its category windows.
No I/O here: the async shell hands in validated Observations and gets an Outcome back.

One record that makes the fold raise (a configured `categorize` callable that fails on one merchant, a bug
on one odd record) must not fail the batch: its exception is caught around that record's fold and returned
in `Outcome.failed` (batch index, exception), for the shell to dead-letter it (reason `internal_error`, so
`spendwatch deadletters --redrive` replays it after the fix), and the batch goes on. The record leaves the
state as it was before it, except for what cannot matter or cannot be undone cheaply, exactly:
  - dedupe forgets its key (a re-drive is counted, not dropped as a duplicate); the watermark is not moved by
    it. An early rotation of the dedupe or payment memory that reaching `dedupe.max_entries` forced stays
    (it would have happened at the next record), and so does a payment found in the older generation moved
    to the current one (it is only kept longer).
  - the join: `categorize` runs before the join changes anything for the record, so its failure changes
    nothing. An exception raised by the join's own code later (a bug: every field is validated at decode)
    may leave that one payment (its transaction) and its bridge's progress partly updated.
  - the windows: the record's delta and findings are added only once its fold is complete; a window row
    it made for a new agent may stay, empty (forgotten at the next checkpoint), and if the row could not be
    made (out of memory) the join has counted the payment but the windows have not.
What runs after the records (the windows' update, the join's sweep, the memories' ticks) belongs to no
record: an exception there propagates and stops the daemon before that state is checkpointed.

While the daemon catches up a partition, its two input topics are read as fetched, not merged by time: the
chain topic's records can run far ahead of the payments topic's, and with them the watermark. So the shard
also tracks how far the payments topic has been read (`payments_upto`, the newest settle or verify, event
time), and `apply(batch, hold_shadows=True)` (the daemon's, for a partition catching up) judges the join's
`shadow_spend` deadlines at min(watermark, payments_upto): a confirmed transfer whose settle is simply not
read yet is held, not reported, and judged again by each later batch; `advance` (a partition that has caught
up), `judge_held_shadows` (one whose payments topic has nothing left to read) and every `apply` without it
judge every held shadow due as before (`Join.sweep`).
"""

from __future__ import annotations

import logging
import msgspec
import numpy as np

from watcher.events.decode import MAX_TRACKED_AMOUNT
from watcher.events.finding import Finding
from watcher.events.observation import Kind, Observation
from watcher.pipeline.categories import Categorize
from watcher.pipeline.dedupe import Seen
from watcher.pipeline.join import Delta, Join
from watcher.pipeline.windows import DEFAULT_WINDOWS, IDLE_FRACTION, Windows, WindowSpec, describe

CATEGORY_SEP = b"|"
TRANSFER = Kind.TRANSFER
PROGRESS = Kind.PROGRESS
SETTLED = "settled"
log = logging.getLogger(__name__)


class ShardConfig(msgspec.Struct, frozen=True):
    windows: tuple[WindowSpec, ...] = DEFAULT_WINDOWS
    dedupe_horizon_ms: int = 26 * 3600 * 1000
    dedupe_max_entries: int = 2_000_000
    shadow_grace_ms: int = 120_000
    unsettled_after_ms: int = 300_000


class Outcome(msgspec.Struct):
    """What one batch did. `processed` counts every observation handed in (duplicates included)."""

    processed: int = 0
    duplicates: int = 0
    deltas: list[Delta] = []
    signals: list[Observation] = []
    findings: list[Finding] = []
    stream_positions: list[int] = []  # input index of each delta, then of each signal (their stream order)
    moves: list[int] = []             # index in `deltas` of each moving delta (a settle after its transfer)
    failed: list[tuple[int, Exception]] = []  # (input index, what it raised): records left out, to dead-letter

    def without_failed(self, batch: list[Observation]) -> list[Observation]:
        """`batch` without the failed records, and `stream_positions` renumbered to match (for the stages)."""
        if not self.failed:
            return batch
        gone = {i for i, _ in self.failed}
        new = [-1] * len(batch)
        kept = []
        for i, o in enumerate(batch):
            if i not in gone:
                new[i] = len(kept)
                kept.append(o)
        self.stream_positions = [new[i] for i in self.stream_positions]
        return kept


class Stats(msgspec.Struct):
    processed: int = 0
    duplicates: int = 0
    counted: int = 0
    uncounted: int = 0
    signals: int = 0
    findings: int = 0


def agent_key(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def category_key(address: str, category: str) -> bytes:
    return bytes.fromhex(address[2:]) + CATEGORY_SEP + category.encode()


class Shard:

    def __init__(self, config: ShardConfig = ShardConfig(), categorize: Categorize | None = None) -> None:
        self.config = config
        self.categorize = categorize or (lambda merchant, resource: None)
        self.seen = Seen(config.dedupe_horizon_ms, config.dedupe_max_entries)
        self.join = Join(config.dedupe_horizon_ms, config.dedupe_max_entries, config.shadow_grace_ms,
                         config.unsettled_after_ms)
        self.agents = Windows(config.windows)
        self.categories = Windows(config.windows)
        self.stats = Stats()
        self.watermark_ms = 0
        self.payments_upto = 0   # the newest settle or verify read (event time): see the module docstring

    def apply(self, batch: list[Observation], hold_shadows: bool = False) -> Outcome:
        """Fold `batch` into the state. `hold_shadows` (a partition that catches up): a shadow deadline is
        judged no later than the payments topic has been read (see the module docstring)."""
        out = Outcome(processed=len(batch))
        gens = self.seen.gens
        cur, prev, cap = gens.current, gens.previous, gens.max_entries
        join_apply, categorize, progress = self.join.apply, self.categorize, self.join.progress
        known = self.join.payments.__contains__
        agent_row, cat_row = self.agents.row, self.categories.row
        rows_of: dict[str, int] = {}
        wm, pu = self.watermark_ms, self.payments_upto
        a_rows: list[int] = []
        c_rows: list[int] = []
        deltas = out.deltas
        delta_pos: list[int] = []
        signal_pos: list[int] = []
        moves = out.moves
        dup = 0
        for i, obs in enumerate(batch):
            before = wm
            if obs.ts_ms > wm:
                wm = obs.ts_ms
            try:
                if obs.kind == PROGRESS:
                    progress(obs.chain_id, obs.ts_ms, obs.asset, obs.read_from_ms, obs.watches_all)
                    continue
                key = obs.dedupe_key
                if key in cur or key in prev:
                    dup += 1
                    continue
                if len(cur) >= cap:
                    gens.put(key, 1)
                    cur, prev = gens.current, gens.previous
                else:
                    cur[key] = 1
                # a 0-value transfer of no known payment moves nothing: anyone can emit one from any wallet
                # (USDC transferFrom of 0 needs no allowance; address poisoning), so it is a signal, not spend
                if obs.tx is not None and (obs.status == SETTLED or (obs.kind == TRANSFER and (
                        obs.amount or known(obs.tx)))):
                    delta, found = join_apply(obs, categorize, wm)
                    if delta is not None:
                        agent = delta.agent
                        row = rows_of.get(agent)
                        if row is None:
                            row = rows_of[agent] = agent_row(bytes.fromhex(agent[2:]))
                        if delta.move is not None:   # counts nothing new: only its category moves
                            moves.append(len(deltas))
                        else:   # every row made before any list grows: a failure here leaves them aligned
                            c_row = None if delta.category is None else cat_row(category_key(agent, delta.category))
                            a_rows.append(row)
                            if c_row is not None:
                                c_rows.append(c_row)
                        deltas.append(delta)
                        delta_pos.append(i)
                    if found:
                        out.findings.extend(found)
                else:
                    out.signals.append(obs)
                    signal_pos.append(i)
                if obs.kind < TRANSFER and obs.ts_ms > pu:   # a settle or verify: how far payments are read
                    pu = obs.ts_ms
            except Exception as exc:  # this record only: see the module docstring
                out.failed.append((i, exc))
                wm = before
                if obs.kind != PROGRESS:
                    cur.pop(obs.dedupe_key, None)
        out.duplicates = dup
        out.processed -= len(out.failed)
        out.stream_positions = delta_pos + signal_pos
        self.watermark_ms, self.payments_upto = wm, pu
        # the windows take the deltas that count (a moving delta, amount 0, would only add an empty row, or
        # a late one for an old payment); the moves then shift amounts between category windows
        counting = [d for d in deltas if d.move is None] if moves else deltas
        if counting:
            n = len(counting)
            ts = np.fromiter((d.ts_ms for d in counting), np.int64, n)
            amounts = np.fromiter((d.amount for d in counting), np.int64, n)
            counts = np.fromiter((d.count for d in counting), np.int32, n)
            self.agents.add(np.array(a_rows, np.int64), ts, amounts, counts)
            if c_rows:
                has = np.fromiter((d.category is not None for d in counting), bool, n)
                self.categories.add(np.array(c_rows, np.int64), ts[has], amounts[has], counts[has])
        if moves:
            self._move_categories([deltas[j] for j in moves])
        self.agents.advance(wm)
        self.categories.advance(wm)
        out.findings.extend(self.join.sweep(wm, pu if hold_shadows else None))
        gens.tick(wm)
        self.join.tick(wm)
        st = self.stats
        st.processed += out.processed
        st.duplicates += dup
        st.signals += len(out.signals)
        st.findings += len(out.findings)
        for d in deltas:
            if d.count >= 0:
                st.counted += d.count
            else:
                st.uncounted -= d.count
        return out

    def _move_categories(self, moving: list[Delta]) -> None:
        """Each moving delta's amount and count leave its old category's windows for its new one's."""
        rows, ts, amounts, counts = [], [], [], []
        for d in moving:
            mv = d.move
            if mv.category == d.category:
                continue
            for category, sign in ((mv.category, -1), (d.category, 1)):
                if category is None:
                    continue
                row = self.categories.row(category_key(d.agent, category))
                # a payment of several transfers can count more than one int64 holds: in pieces of at most
                # MAX_TRACKED_AMOUNT (the windows hold an overflowing sum at the limit)
                left, count = mv.amount, mv.count
                while True:
                    piece = min(left, MAX_TRACKED_AMOUNT)
                    rows.append(row)
                    ts.append(d.ts_ms)
                    amounts.append(sign * piece)
                    counts.append(sign * count)
                    left, count = left - piece, 0
                    if not left:
                        break
        if rows:
            self.categories.add(np.array(rows, np.int64), np.array(ts, np.int64), np.array(amounts, np.int64),
                                np.array(counts, np.int32))

    def advance(self, now_ms: int) -> list[Finding]:
        """Move the clock with no event (idle partitions still age and sweep; held shadows are judged)."""
        if now_ms <= self.watermark_ms:
            return []
        self.watermark_ms = now_ms
        self.agents.advance(now_ms)
        self.categories.advance(now_ms)
        found = self.join.sweep(now_ms)
        self.stats.findings += len(found)
        self.seen.tick(now_ms)
        self.join.tick(now_ms)
        return found

    def judge_held_shadows(self) -> list[Finding]:
        """The payments topic has nothing left to read (the partition catches up on the chain topic only):
        held shadows due by the watermark are judged, as a caught-up partition's are."""
        found = self.join.sweep(self.watermark_ms)
        self.stats.findings += len(found)
        return found

    # -- queries -------------------------------------------------------------------------------
    def agent_totals(self, address: str, now_ms: int | None = None) -> tuple[list[int], list[int]]:
        return self.agents.total(agent_key(address), now_ms)

    def category_totals(self, address: str, category: str, now_ms: int | None = None):
        return self.categories.total(category_key(address, category), now_ms)

    def forget_idle(self) -> int:
        """Drop the window rows of agents (and agent+category pairs) with nothing left in any window, once
        they are at least one row in IDLE_FRACTION: else every wallet ever seen keeps its rows, and memory,
        checkpoints and restores grow with all wallets ever instead of the active ones. Call it between
        batches only (`snapshot` does): a batch's outcome refers to its agents' rows until its stages ran."""
        dropped = 0
        for win in (self.agents, self.categories):
            dropped += win.compact(min_dropped=max(1, len(win) // IDLE_FRACTION))
        return dropped

    # -- checkpoint ----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The state to checkpoint (idle agents forgotten first: see `forget_idle`)."""
        self.forget_idle()
        return {"v": 1, "watermark_ms": self.watermark_ms, "payments_upto": self.payments_upto,
                "seen": self.seen.snapshot(), "join": self.join.snapshot(), "agents": self.agents.snapshot(),
                "categories": self.categories.snapshot(), "stats": msgspec.to_builtins(self.stats)}

    @classmethod
    def restore(cls, snap: dict, config: ShardConfig = ShardConfig(),
                categorize: Categorize | None = None) -> "Shard":
        self = cls(config, categorize)
        self.watermark_ms = snap["watermark_ms"]
        # from before it: 0, so a catching-up partition holds its shadows until settles are read past them
        self.payments_upto = snap.get("payments_upto", 0)
        self.seen.restore(snap["seen"])
        self.join.restore(snap["join"])
        # the configured windows, never the checkpoint's own: every reader labels the sums by the configuration
        self.agents = Windows.restore(snap["agents"], config.windows)
        self.categories = Windows.restore(snap["categories"], config.windows)
        saved = [WindowSpec(*s) for s in snap["agents"]["specs"]]
        if tuple(saved) != tuple(config.windows):
            kept = {(s.seconds, s.buckets) for s in config.windows}
            log.warning("windows changed since the checkpoint: it had %s; restored exactly as configured: %s; "
                        "dropped: %s", describe(saved), describe(config.windows),
                        describe(s for s in saved if (s.seconds, s.buckets) not in kept) or "none")
        self.stats = msgspec.convert(snap["stats"], Stats)
        return self
