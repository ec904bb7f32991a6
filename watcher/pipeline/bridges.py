"""What the join knows of the chain bridges on one partition: how far each confirmed, and the settles held
back until it has.

A bridge follows one token on one chain: its state is keyed by that stream, (chain id, token contract,
checksummed), the settle's `asset` or the transfer's `token`. Per stream:

    confirmed_upto  how far the bridge confirmed (event time): its newest confirmed transfer or heartbeat
    read_from       the time of the first block the bridge read (from its heartbeats): an older settle
                    is not judged (the bridge never read its block)
    watch_all       streams whose bridge publishes every wallet's transfers (its last heartbeat said so):
                    its heartbeats vouch for every agent, not only the `bridged` ones
    transfer_upto   the newest confirmed transfer (-1: transfer records, none confirmed yet); a stream here
                    is a running bridge
    held, held_t    heaps of (settle time, tx) waiting for confirmed_upto / transfer_upto to pass them

`bridged` remembers "chain:token:agent" for each agent the bridge published a transfer of (it watches it).
The join's hot path updates `transfer_upto`, `confirmed_upto` and `bridged` inline (`Join.apply`); the rest
runs per sweep, per heartbeat or per tick.

Held settles are bounded by `max_entries` in all (the oldest goes first, counted in `held_dropped` and
logged: it is still decided at the end of its hold, only not released earlier) and forgotten when their hold
ends (their deadline has decided them by then).

Older inputs. A heartbeat without a token (a bridge from before tokens in `chain.progress`) cannot say which
bridge it is nor where it began to read: it is ignored (counted in `ignored_progress`), as if that bridge
sent none. A checkpoint from before tokens restores its per-chain state under the token "" (the whole
chain: the state was shared then), its payments with no token, and `bridged` keys "chain:agent" (any token
of the chain). A payment with no token is judged by every stream of its chain, as then (`streams`); the ""
state is dropped once a stream of its chain has passed it, and its held settles are released as the chain's
streams pass them (`tick`).
"""

from __future__ import annotations

import heapq
import logging

from watcher.pipeline.dedupe import Generations

log = logging.getLogger(__name__)

Stream = tuple[int, str]   # (chain id, token contract); token "": a whole chain, from an older checkpoint
Held = list[tuple[int, str]]


class Bridges:
    def __init__(self, horizon_ms: int, max_entries: int, hold_ms: int) -> None:
        self.max_entries = max_entries
        self.hold_ms = hold_ms              # how long a settle is held at most (then its deadline decides it)
        self.confirmed_upto: dict[Stream, int] = {}
        self.read_from: dict[Stream, int] = {}
        self.watch_all: set[Stream] = set()
        self.transfer_upto: dict[Stream, int] = {}
        self.held: dict[Stream, Held] = {}
        self.held_t: dict[Stream, Held] = {}
        self.bridged: Generations[int] = Generations(horizon_ms, max_entries)
        self.held_dropped = 0
        self.ignored_progress = 0
        self._legacy = False                # state of a whole chain (token "") is left to handle in tick()

    @property
    def chains_seen(self) -> set[int]:
        """Chains with any chain record on this partition (a transfer or a heartbeat)."""
        return {c for c, _ in (*self.transfer_upto, *self.confirmed_upto)}

    def progress(self, chain_id: int, upto_ms: int, token: str, read_from_ms: int | None,
                 deadlines: list[tuple[int, str]], watches_all: bool = False) -> None:
        """A heartbeat of the bridge of `token` on `chain_id`: every confirmed transfer of it up to a block of
        time `upto_ms` has been published on this partition, from the block of time `read_from_ms` on (None:
        unknown, from a bridge checkpoint older than `readFrom`). Without a token it is ignored. Released
        settles go to the join's `deadlines`."""
        if not token:
            self.ignored_progress += 1
            return
        stream = (chain_id, token)
        if read_from_ms is not None:
            self.read_from[stream] = read_from_ms   # the bridge's current run (a reset one may start later)
        if watches_all:
            self.watch_all.add(stream)
        else:
            self.watch_all.discard(stream)
        if upto_ms > self.confirmed_upto.get(stream, -1):
            self.confirmed_upto[stream] = upto_ms
            release(self.held.get(stream), upto_ms, deadlines)

    def judge(self, chain_id: int, token: str, agent: str, ts_ms: int) -> tuple[int, Held] | None:
        """How far the bridge of `token` on `chain_id` confirmed, as far as it vouches for a settle of `agent`
        at `ts_ms`, and the heap to hold the settle on until then. None: the settle is not judged, as no bridge
        of them sent a transfer record here (nor a heartbeat saying it watches every wallet), or the settle is
        older than the first block the bridge read (it never read the settle's block: a transfer it did not
        publish says nothing)."""
        streams = self.streams(chain_id, token)
        t_upto = max((self.transfer_upto[s] for s in streams if s in self.transfer_upto), default=None)
        every = any(s in self.watch_all for s in streams)    # its heartbeats alone say the bridge runs
        if (t_upto is None and not every) or ts_ms < max((self.read_from[s] for s in streams if s in self.read_from),
                                                         default=-1):
            return None
        stream = (chain_id, token)
        # heartbeats vouch for the bridge's watched wallets only: for the others, only confirmed transfers tell
        # how far it confirmed
        if every or self.is_bridged(chain_id, token, agent):
            return max(self.confirmed_upto.get(s, -1) for s in streams), self.held.setdefault(stream, [])
        return t_upto, self.held_t.setdefault(stream, [])

    def streams(self, chain_id: int, token: str) -> list[Stream]:
        """The streams whose state applies to a payment of `token` on `chain_id`: its own, and its whole
        chain's from an older checkpoint; for a payment with no token (from such a checkpoint), every stream of
        its chain, as when the state was per chain."""
        if token:
            return [(chain_id, token), (chain_id, "")]
        return [s for s in {*self.transfer_upto, *self.confirmed_upto} if s[0] == chain_id]

    def is_bridged(self, chain_id: int, token: str, agent: str) -> bool:
        """Has the bridge of `token` on `chain_id` published a transfer of `agent` (within the memory)?"""
        b = self.bridged
        if f"{chain_id}:{agent}" in b:   # from an older checkpoint: any token of the chain
            return True
        if token:
            return f"{chain_id}:{token}:{agent}" in b
        return any(f"{chain_id}:{t}:{agent}" in b for c, t in self.transfer_upto if c == chain_id and t)

    def hold(self, held: Held, ts_ms: int, key: str) -> None:
        """Hold a settle on `held` (from `judge`), within max_entries held settles in all (else the oldest
        of `held`, or of the longest heap, goes)."""
        cap = self.max_entries
        if len(held) < cap and sum(map(len, self.held.values())) + sum(map(len, self.held_t.values())) < cap:
            heapq.heappush(held, (ts_ms, key))
            return
        if held:
            heapq.heappushpop(held, (ts_ms, key))
        else:
            heapq.heappush(held, (ts_ms, key))
            heapq.heappop(max((*self.held.values(), *self.held_t.values()), key=len))
        self.held_dropped += 1
        n = self.held_dropped
        if n & (n - 1) == 0:   # at 1, 2, 4, ...: a flood is logged, not one line per settle
            log.warning("join: settles held for the chain bridge reached dedupe.max_entries=%d: the oldest is no "
                        "longer released as soon as the bridge confirms past it, only decided at the end of its "
                        "hold (%d dropped so far); raise dedupe.max_entries, or bring the bridge back", cap, n)

    def tick(self, now_ms: int, deadlines: list[tuple[int, str]]) -> None:
        self.bridged.tick(now_ms)
        # a settle held since before now - hold_ms was decided by its deadline (swept before the tick)
        cutoff = now_ms - self.hold_ms
        for held in (*self.held.values(), *self.held_t.values()):
            while held and held[0][0] <= cutoff:
                heapq.heappop(held)
        if self._legacy:
            self._legacy_tick(deadlines)

    def _legacy_tick(self, deadlines: list[tuple[int, str]]) -> None:
        left = False
        for upto, heaps in ((self.confirmed_upto, self.held), (self.transfer_upto, self.held_t)):
            for (c, t), held in heaps.items():
                if not t and held:   # payments with no token: judged by every stream of their chain
                    release(held, max((v for (c2, _), v in upto.items() if c2 == c), default=-1), deadlines)
                    left = True
            for whole in [s for s in upto if not s[1]]:
                if any(v >= upto[whole] for (c, t), v in upto.items() if c == whole[0] and t):
                    del upto[whole]
                else:
                    left = True
        self._legacy = left

    # -- checkpoint ----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The join's checkpoint keys for this state. Older releases read `confirmed_upto`/`transfer_upto` per
        chain and held rows [chain, time, tx]: both are still written (a held settle's stream is its payment's,
        found again on restore)."""
        def rows(d: dict[Stream, int]) -> list[list]:
            return [[c, t, v] for (c, t), v in sorted(d.items())]

        def per_chain(d: dict[Stream, int]) -> list[tuple[int, int]]:
            out: dict[int, int] = {}
            for (c, _), v in d.items():
                out[c] = max(v, out.get(c, v))
            return sorted(out.items())

        return {"chains_seen": sorted(self.chains_seen), "confirmed_upto": per_chain(self.confirmed_upto),
                "transfer_upto": per_chain(self.transfer_upto),
                "streams": {"confirmed": rows(self.confirmed_upto), "transfer": rows(self.transfer_upto),
                            "read_from": rows(self.read_from), "watch_all": sorted(self.watch_all)},
                "held": [[c, ts, key] for (c, _), held in sorted(self.held.items()) for ts, key in held],
                "held_t": [[c, ts, key] for (c, _), held in sorted(self.held_t.items()) for ts, key in held],
                "bridged": self.bridged.snapshot(), "held_dropped": self.held_dropped,
                "ignored_progress": self.ignored_progress}

    def restore(self, snap: dict, token_of, newest_payment_ms) -> None:
        """From the join's checkpoint `snap`: `token_of(tx)` is the token of a remembered payment (None:
        forgotten), `newest_payment_ms()` the newest payment's time (for checkpoints from before the hold)."""
        streams = snap.get("streams")
        if streams is not None:
            self.confirmed_upto, self.transfer_upto, self.read_from = (
                {(int(c), t): int(v) for c, t, v in streams[k]} for k in ("confirmed", "transfer", "read_from"))
            self.watch_all = {(int(c), t) for c, t in streams.get("watch_all", ())}
        else:
            self._restore_per_chain(snap, newest_payment_ms)
        # a checkpoint from before `held`: its held settles are in the deadlines (looked at again, then held)
        self.held, self.held_t = (self._heaps(snap.get(k, ()), token_of) for k in ("held", "held_t"))
        self._legacy = any(not t for _, t in (*self.confirmed_upto, *self.transfer_upto, *self.held, *self.held_t))
        if "bridged" in snap:
            self.bridged.restore(snap["bridged"])
        self.held_dropped = int(snap.get("held_dropped", 0))
        self.ignored_progress = int(snap.get("ignored_progress", 0))

    def _restore_per_chain(self, snap: dict, newest_payment_ms) -> None:
        """A checkpoint from before tokens: per chain, kept as the whole chain's (token "")."""
        seen = {int(c) for c in snap["chains_seen"]}
        if "confirmed_upto" in snap:
            confirmed = {int(c): int(t) for c, t in snap["confirmed_upto"]}
        else:  # from before the hold: take the chain as confirmed up to the newest payment known
            confirmed = dict.fromkeys(seen, newest_payment_ms())
        # from before `transfer_upto`: the chains seen and how far they confirmed, as then known; no agent is
        # known to the bridge (`bridged`) until its next transfer, so heartbeats decide nothing until then
        if "transfer_upto" in snap:
            transfer = {int(c): int(t) for c, t in snap["transfer_upto"]}
        else:
            transfer = {c: confirmed.get(c, -1) for c in seen}
        self.confirmed_upto = {(c, ""): t for c, t in confirmed.items()}
        self.transfer_upto = {(c, ""): t for c, t in transfer.items()}
        self.read_from, self.watch_all = {}, set()

    @staticmethod
    def _heaps(rows, token_of) -> dict[Stream, Held]:
        out: dict[Stream, Held] = {}
        for c, ts, key in rows:
            token = token_of(key)
            if token is not None:   # a forgotten payment: nothing to hold
                out.setdefault((int(c), token), []).append((int(ts), key))
        for held in out.values():
            heapq.heapify(held)
        return out


def release(held: Held | None, upto_ms: int, deadlines: list[tuple[int, str]]) -> None:
    """Held settles up to `upto_ms` are due at once: the next sweep decides them."""
    if held and held[0][0] <= upto_ms:
        pop, push = heapq.heappop, heapq.heappush
        while held and held[0][0] <= upto_ms:
            push(deadlines, (0, pop(held)[1]))
