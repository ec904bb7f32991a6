"""Join of facilitator settles and on-chain transfers: one payment, counted once.

A payment is keyed by its transaction hash (EIP-155 makes it unique across chains) and its payer: another
payer in the same transaction (a facilitator that batches settles, a bundle of user operations) has a payment
of its own, keyed "tx:payer" (its findings' ids too), so its spend is never counted to the first. Whatever arrives
first counts; the chain is the authority once it speaks: the counted amount is the sum of the
transaction's live transfers (pending or confirmed) when any transfer record was seen, else the settled
amount. A transfer published `reverted`
(a reorg dropped its block) un-counts it; a replacement in a new block counts it again. Every change is
returned as a delta against the payment's first-seen time, so windows stay exact.

A settle that follows its payment's transfer (the bridge publishes transfers `pending` at the chain head,
so it often comes first) brings what only it knows: the payment takes the settle's merchant and the
category of its resource (a rate card or [categories] entry keyed by resource URL), as if the settle had
come first, and the settle returns a moving Delta (`Delta.move`, see `Move`): amount and count 0 (the agent's
totals do not change), the counted amount leaving the category and merchant the transfer gave it for the
settle's, and the settle's merchant and resource for the merchant rules and rate cards. The payment keeps
its first-seen time.

Findings, each reported once per payment:
  amount_mismatch  a settled amount differs from the confirmed transferred amount
  shadow_spend     a confirmed transfer no facilitator reported within `shadow_grace_ms`
  unsettled        a successful settle with no confirmed transfer within `unsettled_after_ms`
                   (only for a chain and token whose bridge is running, i.e. sent a transfer record
                   here, and from the first block that bridge read on).

Each bridge follows one token on one chain: what the join knows of it is keyed by that stream, (chain id,
token contract), the settle's `asset` or the transfer's `token` (`watcher.pipeline.bridges`, which also
covers checkpoints and heartbeats from before tokens). How far a bridge has confirmed (`confirmed_upto`,
event time) comes from two sources on this partition: its newest confirmed transfer, and its
`chain.progress` heartbeat (`progress()`: "every confirmed transfer up to a block of this time has been
published before me, from the block of time `read_from` on"), which the bridge sends to every partition as
blocks get confirmed, with transfers or without (at most once per `chain.progress_interval_seconds`). An
`unsettled` finding is due at its deadline only if the bridge has confirmed up to the settle's time; until
then it is held (the bridge may be down or behind, not the payment) and released as soon as
`confirmed_upto` passes the settle, or reported anyway after UNSETTLED_HOLD deadlines: a bridge outage is
one ChainBridgeStalled page, not a warning per payment. Per partition, so replicas decide alike; with a
running bridge a quiet partition learns how far it confirmed from the heartbeat, not from other agents'
transfers. Two bridges on one chain (two tokens) never vouch for each other's settles.

A heartbeat vouches only for the wallets the bridge watches, and the join does not know that list: it
applies heartbeats only to agents the bridge has published a transfer of (any status) within the payment
memory (`bridged`), or to every agent when the heartbeat says the bridge watches every wallet
(`watches_all`, chain.watch_all). Any other agent's settle (one the bridge does not watch, or has not seen pay yet) is
judged as if no heartbeat existed: only for streams with transfer records on this partition, held until a
confirmed transfer of the stream passes the settle (`transfer_upto`) or the hold ends. So a heartbeat never
turns the settle of an unwatched agent into `unsettled`. A settle older than the first block the bridge read
(`read_from`, named by its heartbeats) is not judged at all: the bridge never read the settle's block, so
neither its heartbeats nor its transfers say anything about it (holding it would only delay a false finding
to the end of the hold).

Held settles are bounded by `max_entries` in all, like the payments (the oldest goes first, counted in
`held_dropped` and logged: it is still decided at the end of its hold), and forgotten when their hold ends.

The reverse wait, for a partition that catches up a backlog: its two input topics are read as fetched, not
merged by time, so the chain topic can run far ahead of the payments topic and a confirmed transfer's
deadline pass before its settle is read. `sweep(now_ms, payments_upto)` then judges a shadow's deadline at
min(now_ms, payments_upto) (how far the settles have been read, event time): one due by now_ms only is
held (`held_shadows`, a heap of (deadline, key)) and judged again by each later sweep, and by every one
without `payments_upto` (a partition that has caught up or has read its whole payments topic, replay, eval),
which judges every held shadow due. They are bounded by `max_entries` too: past it the one due first is
judged at once, as before the hold (counted in `held_shadows_dropped` and logged).
"""

from __future__ import annotations

import heapq
import logging
from datetime import datetime, timezone
from typing import Callable

import msgspec

from watcher.events.finding import Finding
from watcher.events.observation import Kind, Observation
from watcher.pipeline.bridges import Bridges, release
from watcher.pipeline.dedupe import Generations

MISMATCH, SHADOW, UNSETTLED = 1, 2, 4
UNSETTLED_HOLD = 12      # an unsettled finding waits at most this many unsettled_after_ms for the bridge
SETTLE = Kind.SETTLE
_NONE: list = []  # shared empty result (never mutated)
log = logging.getLogger(__name__)


class Payment(msgspec.Struct, array_like=True, gc=False):
    agent: str
    merchant: str
    ts_ms: int
    chain_id: int
    tx: str
    category: str | None = None
    counted: int = 0
    counted_n: int = 0
    settle_amount: int | None = None
    settle_id: str | None = None
    transfers: tuple[tuple[int, int, str, str], ...] = ()   # (log index, amount, status, event id)
    reported: int = 0                    # bitmask of findings already emitted
    token: str = ""                      # the token contract (settle asset / transfer token); "": older checkpoint
    records_before_settle: int = 0       # its records folded before its settle (a transfer came first); 0: older


class Move(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What a settle that followed its payment's transfer moves: the payment's counted `amount` and `count`
    leave `category` and `merchant` (the transfer's: its `to`, and no resource) for those of the Delta that
    carries it (the settle's), at the payment's time. `records`: the payment's records folded before the
    settle (their statement `changes` move with it)."""

    amount: int
    count: int
    category: str | None
    merchant: str
    records: int


class Delta(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A change of what a payment counts for, at the payment's first-seen time. With `move` (a settle after
    its transfer) amount and count are 0: the agent's totals do not change, the payment moves (see `Move`)."""

    agent: str
    category: str | None
    ts_ms: int
    amount: int
    count: int
    event_id: str
    merchant: str = ""           # of the record that caused the change (payTo, or the transfer's `to`)
    resource: str | None = None
    kind: int = -1               # that record's Kind
    move: Move | None = None


def _iso(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class Join:
    def __init__(self, horizon_ms: int, max_entries: int, shadow_grace_ms: int = 120_000,
                 unsettled_after_ms: int = 300_000) -> None:
        self.payments: Generations[Payment] = Generations(horizon_ms, max_entries)
        self.shadow_grace_ms = shadow_grace_ms
        self.unsettled_after_ms = unsettled_after_ms
        self.deadlines: list[tuple[int, str]] = []  # a heap: settles and transfers wait different times
        self.held_shadows: list[tuple[int, str]] = []   # a heap: shadows waiting for their settles to be read
        self.held_shadows_dropped = 0
        self.max_entries = max_entries
        self.bridges = Bridges(horizon_ms, max_entries, UNSETTLED_HOLD * unsettled_after_ms)

    def apply(self, obs: Observation, categorize: Callable[[str, str | None], str | None],
              now_ms: int) -> tuple[Delta | None, list[Finding]]:
        """Fold one spend observation (a successful settle or a transfer) into its payment.
        `categorize(merchant, resource)` is asked only when the payment has no category yet."""
        key = obs.tx  # EIP-155 signatures bind a tx to one chain: its hash alone is unique
        payments = self.payments
        p = payments.current.get(key) or payments.get(key)   # the common case: one lookup
        if p is not None and p.agent != obs.agent:
            # another payer in the same transaction (a facilitator that batches settles, a bundle): its own payment
            key = f"{key}:{obs.agent}"   # as payment_key gives it: the tx's own payment is another payer's
            p = payments.current.get(key) or payments.get(key)
            if p is None and not obs.amount and obs.kind != SETTLE:
                return None, _NONE   # a 0-value transfer: spend of no payment (as in Shard.apply), not a payment
        if p is None:
            category = categorize(obs.merchant, obs.resource)
            p = Payment(obs.agent, obs.merchant, obs.ts_ms, obs.chain_id, obs.tx, category, token=obs.asset)
            payments.put(key, p)
            if obs.kind == SETTLE:  # the common case: a new payment, reported by its facilitator
                p.settle_amount, p.settle_id = obs.amount, obs.event_id
                p.counted, p.counted_n = obs.amount, 1
                heapq.heappush(self.deadlines, (now_ms + self.unsettled_after_ms, key))
                return Delta(p.agent, category, p.ts_ms, obs.amount, 1, obs.event_id, obs.merchant,
                             obs.resource, SETTLE), _NONE
        elif obs.kind == SETTLE and p.settle_amount is None and p.transfers:
            return self._settle_after_transfer(p, obs, categorize), self._mismatch(p, key, now_ms)
        elif p.category is None:
            p.category = categorize(obs.merchant, obs.resource)
        if obs.kind == SETTLE:
            if p.settle_amount is None:
                p.settle_amount, p.settle_id = obs.amount, obs.event_id
                if not p.transfers:
                    heapq.heappush(self.deadlines, (now_ms + self.unsettled_after_ms, key))
        else:
            b, ts, token = self.bridges, obs.ts_ms, obs.asset
            stream = (obs.chain_id, token)
            bridged = f"{obs.chain_id}:{token}:{obs.agent}"
            if bridged not in b.bridged.current:
                b.bridged.put(bridged, 1)
            upto = b.transfer_upto
            t_upto = upto.setdefault(stream, -1)
            if obs.status == "confirmed":  # inline: once per transfer (held settles are rare)
                if ts > t_upto:
                    upto[stream] = ts
                    held = b.held_t.get(stream)
                    if held:
                        release(held, ts, self.deadlines)
                if ts > b.confirmed_upto.get(stream, -1):
                    b.confirmed_upto[stream] = ts
                    held = b.held.get(stream)
                    if held:
                        release(held, ts, self.deadlines)
            li = obs.log_index or 0
            if (not p.transfers and obs.status == "confirmed" and obs.amount == p.settle_amount == p.counted
                    and p.counted_n == 1):
                # the other common case: the chain confirms exactly what was settled (nothing changes)
                p.transfers = ((li, obs.amount, "confirmed", obs.event_id),)
                return None, _NONE
            p.transfers = tuple(t for t in p.transfers if t[0] != li) + ((li, obs.amount, obs.status,
                                                                          obs.event_id),)
            if p.settle_amount is None:
                p.records_before_settle += 1
                if obs.status == "confirmed":
                    heapq.heappush(self.deadlines, (now_ms + self.shadow_grace_ms, key))
        findings = self._mismatch(p, key, now_ms)
        return self._recount(p, obs), findings

    def payment_key(self, tx: str, agent: str) -> str:
        """The key of the payment a record of `agent` in transaction `tx` belongs to: `tx`, or "tx:agent" when
        the payment keyed `tx` is another payer's. Read-only (keeps no payment alive)."""
        p = self.payments.current.get(tx) or self.payments.previous.get(tx)
        return tx if p is None or p.agent == agent else f"{tx}:{agent}"

    def progress(self, chain_id: int, upto_ms: int, token: str = "", read_from_ms: int | None = None,
                 watches_all: bool = False) -> None:
        """A `chain.progress` heartbeat of the bridge of `token` on `chain_id`: every confirmed transfer of it
        (of a watched wallet, or of any with `watches_all`) up to a block of time `upto_ms` has been published
        on this partition (before the heartbeat), from the block of time `read_from_ms` on. No payment, no
        delta. Without a token it is ignored (see `watcher.pipeline.bridges`)."""
        self.bridges.progress(chain_id, upto_ms, token, read_from_ms, self.deadlines, watches_all)

    @property
    def chains_seen(self) -> set[int]:
        """Chains with any chain record on this partition (a transfer or a heartbeat)."""
        return self.bridges.chains_seen

    @property
    def confirmed_upto(self) -> dict[tuple[int, str], int]:
        """(chain id, token) -> how far its bridge confirmed (event time)."""
        return self.bridges.confirmed_upto

    @staticmethod
    def _settle_after_transfer(p: Payment, obs: Observation, categorize) -> Delta:
        """The first settle of a payment a transfer made: the payment's merchant and category become what the
        settle would have made them (its payTo and resource); the counted amount (the chain's) moves there."""
        move = Move(p.counted, p.counted_n, p.category, p.merchant, p.records_before_settle)
        p.category, p.merchant = categorize(obs.merchant, obs.resource), obs.merchant
        p.settle_amount, p.settle_id = obs.amount, obs.event_id
        return Delta(p.agent, p.category, p.ts_ms, 0, 0, obs.event_id, obs.merchant, obs.resource, SETTLE, move)

    def _recount(self, p: Payment, obs: Observation) -> Delta | None:
        if p.transfers:
            live = [t[1] for t in p.transfers if t[2] != "reverted"]
            amount, n = sum(live), (1 if live else 0)
        else:
            amount, n = (p.settle_amount or 0), 1
        d_amount, d_n = amount - p.counted, n - p.counted_n
        if d_amount == 0 and d_n == 0:
            return None
        p.counted, p.counted_n = amount, n
        return Delta(p.agent, p.category, p.ts_ms, d_amount, d_n, obs.event_id, obs.merchant, obs.resource,
                     obs.kind)

    def _confirmed_amount(self, p: Payment) -> int | None:
        confirmed = [t[1] for t in p.transfers if t[2] == "confirmed"]
        return sum(confirmed) if confirmed else None

    def _mismatch(self, p: Payment, key: str, now_ms: int) -> list[Finding]:
        if p.reported & MISMATCH or p.settle_amount is None or not p.transfers:
            return _NONE
        got = self._confirmed_amount(p)
        if got is None or got == p.settle_amount:
            return _NONE
        p.reported |= MISMATCH
        return [self._finding("amount_mismatch", p, key, now_ms,
                              f"facilitator settled {p.settle_amount} base units, chain transferred {got}")]

    def sweep(self, now_ms: int, payments_upto: int | None = None) -> list[Finding]:
        """Findings whose deadline passed by `now_ms` (event time). `payments_upto`: how far the partition's
        settles have been read (event time) while it catches up: a shadow deadline is judged at
        min(now_ms, payments_upto), one not due by then is held (see the module docstring); None: judged at
        now_ms, and so is every held shadow due by it."""
        out: list[Finding] = []
        dl = self.deadlines
        shadow_by = now_ms if payments_upto is None else min(now_ms, payments_upto)
        shadows = self.held_shadows
        while shadows and shadows[0][0] <= shadow_by:   # due now: judged below, in deadline order
            heapq.heappush(dl, heapq.heappop(shadows))
        cur, prev, pop = self.payments.current, self.payments.previous, heapq.heappop
        while dl and dl[0][0] <= now_ms:
            due, key = pop(dl)
            p = cur.get(key) or prev.get(key)
            if p is None:
                continue
            if p.settle_amount is not None:
                if p.transfers and p.transfers[-1][2] == "confirmed" or not p.settle_amount:
                    continue  # the common case: settled and confirmed (or a 0 settle: nothing to reconcile)
                if self._confirmed_amount(p) is None and not p.reported & UNSETTLED:
                    judged = self.bridges.judge(p.chain_id, p.token, p.agent, p.ts_ms)
                    if judged is None:
                        continue   # no bridge of its chain and token sent a transfer here: no judgement
                    upto, held = judged
                    hold_end = p.ts_ms + UNSETTLED_HOLD * self.unsettled_after_ms
                    if upto < p.ts_ms and now_ms < hold_end:
                        # the bridge has not confirmed up to the settle: wait for it (progress() or a
                        # confirmed transfer releases the payment) or for the end of the hold
                        heapq.heappush(dl, (hold_end, key))
                        self.bridges.hold(held, p.ts_ms, key)
                        continue
                    p.reported |= UNSETTLED
                    out.append(self._finding("unsettled", p, key, now_ms,
                                             f"settled {p.settle_amount} base units but no confirmed transfer "
                                             f"after {(now_ms - p.ts_ms) // 1000} s"))
            elif not p.reported & SHADOW:
                if due > shadow_by:   # its settle may be in the part of the payments topic not read yet
                    late = self._hold_shadow(due, key)
                    if late is None:
                        continue
                    key = late
                    p = cur.get(key) or prev.get(key)
                    if p is None or p.settle_amount is not None or p.reported & SHADOW:
                        continue
                confirmed = self._confirmed_amount(p)
                if confirmed is not None:
                    p.reported |= SHADOW
                    out.append(self._finding("shadow_spend", p, key, now_ms,
                                             f"confirmed transfer of {confirmed} base units with no facilitator "
                                             "settle record"))
        return out

    def _hold_shadow(self, due: int, key: str) -> str | None:
        """Hold a shadow due at `due`, within max_entries held: past it, the key of the one due first (which
        is then judged at once, as before the hold), else None."""
        held = self.held_shadows
        if len(held) < self.max_entries:
            heapq.heappush(held, (due, key))
            return None
        self.held_shadows_dropped += 1
        n = self.held_shadows_dropped
        if n & (n - 1) == 0:   # at 1, 2, 4, ...: a flood is logged, not one line per transfer
            log.warning("join: shadows held until their settles are read reached dedupe.max_entries=%d: the one "
                        "due first is judged now, its settle maybe not read yet (%d so far); raise "
                        "dedupe.max_entries", self.max_entries, n)
        return heapq.heappushpop(held, (due, key))[1]

    def _finding(self, kind: str, p: Payment, key: str, now_ms: int, detail: str) -> Finding:
        """`key`: the payment's, its tx hash (and for a second payer of the transaction, ":" and the payer)."""
        got = self._confirmed_amount(p)
        ids = ([p.settle_id] if p.settle_id else []) + [t[3] for t in p.transfers]
        return Finding(f"{kind}:{p.chain_id}:{key}", kind, p.agent, p.merchant, p.chain_id, p.tx, _iso(now_ms),
                       None if p.settle_amount is None else str(p.settle_amount),
                       None if got is None else str(got), ids, detail)

    def tick(self, now_ms: int) -> None:
        self.payments.tick(now_ms)
        self.bridges.tick(now_ms, self.deadlines)

    def __len__(self) -> int:
        return len(self.payments)

    def snapshot(self) -> dict:
        return {"payments": self.payments.snapshot(), "deadlines": list(self.deadlines),
                "held_shadows": list(self.held_shadows), "held_shadows_dropped": self.held_shadows_dropped,
                **self.bridges.snapshot()}

    def restore(self, snap: dict) -> None:
        payments = self.payments
        payments.restore(snap["payments"], lambda v: msgspec.convert(v, Payment))
        self.deadlines = [(int(a), b) for a, b in snap["deadlines"]]
        heapq.heapify(self.deadlines)
        # from before held shadows: none held (every shadow was judged at the watermark then)
        self.held_shadows = [(int(a), b) for a, b in snap.get("held_shadows", ())]
        heapq.heapify(self.held_shadows)
        self.held_shadows_dropped = int(snap.get("held_shadows_dropped", 0))

        def token_of(tx: str) -> str | None:
            p = payments.current.get(tx) or payments.previous.get(tx)
            return None if p is None else p.token

        self.bridges.restore(snap, token_of, lambda: max((p.ts_ms for p in payments.values()), default=0))
