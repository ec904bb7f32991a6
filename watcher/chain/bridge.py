"""The chain bridge: the async shell around the pure parts (abi, logs, reorg, checkpoint).

    node (web3, WebSocket or HTTP) ──► sync pass ──► ChainTracker ──► Sink (Kafka x402.chain) ──► checkpoint

A sync pass reads the head, checks that the remembered tip is still canonical (else walks back to the
common ancestor and publishes `reverted`; a node behind the tip, with no block there yet, is waited for: only
another block at a remembered height is a reorg), reads blocks that are already `confirmations` deep with
eth_getLogs over bounded block ranges (published `confirmed` at once; a range the node refuses as too
large is read again in halves, see `watcher.chain.ranges`), then the recent blocks one by
one (eth_getLogs by block hash; published `pending`, later `confirmed`). The checkpoint is written after
Kafka acknowledged the records it covers, so a crash at any point only repeats records (stable ids).

Heartbeats: after a pass (and after each backfilled range), once blocks up to N are `confirmations` deep
and every transfer up to the tip is acknowledged and checkpointed, the bridge sends a `chain.progress`
record for block N to every partition of the topic (`Sink.progress`), at most once per
progress_interval_seconds and only for an N above the last one sent, transfers in those blocks or not. On
each partition it lands after the transfers it vouches for, so the watcher may take the block's time as
"confirmed up to here" (`watcher.pipeline.join`). Blocks the bridge never read (before its first start's
head without start_block, or before start_block) are never vouched for, after a restart too: the first
block read is kept in the checkpoint (`readFrom`). The record names the token and that first block and its
time (`readFrom`, `readFromTime`: the watcher judges no settle older than it), unless the checkpoint is from
a bridge before `readFrom` (unknown: then none is named), and `watchesAll` with chain.watch_all (the
heartbeat then vouches for every wallet, not only those the watcher saw the bridge publish).

Progress (head, lag, records by status, reorgs, errors, waiting for a node behind) goes to `ChainMetrics`
(`watcher.chain.metrics`), which `spendwatch chain` serves on /metrics.

Passes run when a subscription message arrives (WebSocket) or every poll_interval_seconds. Any node or
Kafka failure ends the session: state goes back to the last checkpoint, and the bridge reconnects after
a back-off (reconnect_min_seconds doubling up to reconnect_max_seconds).

    async with ChainBridge(settings, sink) as bridge:   # runs in a task until the block exits
        ...
    ChainBridge(settings, sink, metrics)                # with the ChainMetrics to serve (default: its own)
    ChainBridge(settings, sink, connect=fn)             # fn(settings, wallets) -> a Node (tests: a stand-in)

With no checkpoint and no `start_block` the bridge starts after the current head and says so in a WARNING:
earlier transfers are then never read (set start_block to backfill them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from watcher.chain.abi import Header
from watcher.chain.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from watcher.chain.config import ChainSettings, watched_wallets
from watcher.chain.errors import ChainError, RangeRefusedError
from watcher.chain.logs import JoinStats, Transfer, join_transfers, progress_to_wire, to_wire
from watcher.chain.metrics import ChainMetrics
from watcher.chain.node import Node
from watcher.chain.publisher import Sink
from watcher.chain.ranges import RangeSizer
from watcher.chain.reorg import ChainTracker, Emission
from watcher.errors import ClosedError, ConfigError
from watcher.events.addresses import AddressBook
from watcher.events.wire import ChainTransfer

log = logging.getLogger("spendwatch.chain")


def connect_node(settings: ChainSettings, wallets: frozenset[str] | None) -> Node:
    """The node of `settings` (not yet connected: enter it with `async with`)."""
    return Node(ws_url=settings.ws_url, http_url=settings.http_url, token=settings.token, wallets=wallets,
                request_timeout_seconds=settings.request_timeout_seconds)


class ChainBridge:
    def __init__(self, settings: ChainSettings, sink: Sink, metrics: ChainMetrics | None = None, *,
                 connect: Callable[[ChainSettings, frozenset[str] | None], Node] = connect_node) -> None:
        self.settings = settings
        self._connect = connect
        self.sink = sink
        if metrics is None:
            from prometheus_client import CollectorRegistry
            metrics = ChainMetrics(CollectorRegistry(), settings.chain_id, settings.token)
        self.metrics = metrics
        self.watched = None if settings.watch_all else watched_wallets(settings)
        self.tracker = ChainTracker(settings.required_confirmations, settings.max_reorg_depth)
        self.ranges = RangeSizer(settings.backfill_block_range)   # blocks per eth_getLogs; kept across sessions
        self.stats: Counter[str] = Counter()
        self.skipped = JoinStats()
        self.connected = asyncio.Event()
        self.head_seen = -1                 # highest block number processed (for tests and the CLI)
        self.progress_sent = -1             # highest block of a chain.progress record sent (this run)
        self._progress_at = float("-inf")   # time.monotonic() of that record
        self._book = AddressBook()
        self._committed: Checkpoint | None = None
        self._resume_from: int | None = None
        self._read_from: int | None = None  # the first block read: never vouch below it (kept in the checkpoint)
        self._read_from_header: Header | None = None   # its header, once asked (for its time)
        self._behind = False                # waiting for a node behind the tip (logged once per episode)
        self._backoff = settings.reconnect_min_seconds
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._used = False

    # -- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> ChainBridge:
        if self._used:
            raise ClosedError("a ChainBridge runs once; make a new one")
        self._used = True
        self._task = asyncio.create_task(self.run(), name="chain-bridge")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait_for(task, 30.0)

    def stop(self) -> None:
        """Ask the bridge to finish: the current block is completed, then it returns. Signal-safe."""
        self._stop.set()
        self._wake.set()

    @property
    def failed(self) -> BaseException | None:
        t = self._task
        return t.exception() if t is not None and t.done() and not t.cancelled() else None

    async def run(self) -> None:
        """Follow the chain until stop(). Raises only on fatal errors (configuration, checkpoint)."""
        self._load()
        s = self.settings
        while not self._stop.is_set():
            try:
                async with self._connect(s, self.watched) as node:
                    chain_id = await node.chain_id()
                    if chain_id != s.chain_id:
                        raise ConfigError(f"the node at {s.ws_url or s.http_url} is on chain {chain_id}",
                                          key="chain.chain_id", fix=f"set chain_id = {chain_id} or use a node "
                                          f"of chain {s.chain_id}")
                    self.connected.set()
                    self.metrics.set_connected(True)
                    self.stats["connects"] += 1
                    log.info("chain bridge connected to %s (chain %d)", s.ws_url or s.http_url, chain_id)
                    await self._session(node)
            except ChainError as exc:
                self.connected.clear()
                self.metrics.error(exc)
                self.stats["reconnects"] += 1
                log.warning("chain bridge: %s; reconnecting in %.1f s", exc, self._backoff)
                self._restore_committed()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self._backoff)
                self._backoff = min(self._backoff * 2, s.reconnect_max_seconds)
        self.connected.clear()
        self.metrics.set_connected(False)

    def _on_wake(self, number: int) -> None:
        self.stats["notifications"] += 1
        self._wake.set()

    async def _session(self, node: Node) -> None:
        # once subscribed, one more pass: a block mined while subscribing sent no message
        follow = asyncio.create_task(node.follow(self._on_wake, self._wake.set)) if node.live else None
        try:
            while not self._stop.is_set():
                self._wake.clear()
                await self._sync(node)
                await self._progress(node)
                self._backoff = self.settings.reconnect_min_seconds
                waiter = asyncio.create_task(self._wake.wait())
                waits = {waiter} | ({follow} if follow is not None else set())
                await asyncio.wait(waits, timeout=self.settings.poll_interval_seconds,
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if follow is not None and follow.done():
                    follow.result()          # raises NodeError: the connection is gone
        finally:
            if follow is not None:
                follow.cancel()
                with contextlib.suppress(BaseException):
                    await follow

    # -- state ---------------------------------------------------------------------------------
    def _load(self) -> None:
        s = self.settings
        cp = read_checkpoint(s.checkpoint_path, chain_id=s.chain_id, token=s.token)
        self._committed = cp
        self._restore_committed()
        if cp is not None:
            log.info("chain bridge resumes after block %d (%d unconfirmed transfers)", cp.tip.number,
                     len(cp.unconfirmed))

    def _restore_committed(self) -> None:
        s = self.settings
        self.tracker = ChainTracker(s.required_confirmations, s.max_reorg_depth)
        cp = self._committed
        if cp is not None:
            self.tracker.restore(cp.headers, cp.unconfirmed)
            self._resume_from = None
            self._read_from = cp.read_from
            self.metrics.processed(cp.tip.number, len(cp.unconfirmed))
        else:
            self._resume_from = self._read_from = s.start_block

    def _commit(self) -> None:
        tracker = self.tracker
        if tracker.tip is None:
            return
        cp = Checkpoint(self.settings.chain_id, self.settings.token,
                        tuple(tracker.headers[n] for n in sorted(tracker.headers)),
                        tuple(t for n in sorted(tracker.unconfirmed) for t in tracker.unconfirmed[n]),
                        self._read_from)
        write_checkpoint(self.settings.checkpoint_path, cp)
        self._committed = cp
        self.head_seen = tracker.tip.number
        self.metrics.processed(tracker.tip.number, len(cp.unconfirmed))

    async def _emit(self, emissions: Sequence[Emission]) -> None:
        if not emissions:
            return
        now = datetime.now(timezone.utc)
        records: list[ChainTransfer] = [to_wire(e.transfer, e.status, e.confirmations, now) for e in emissions]
        await self.sink.publish(records)
        counts = Counter(e.status for e in emissions)
        self.stats.update(counts)
        for status, n in counts.items():
            self.metrics.records(status, n)

    def _join(self, logs, times: dict[str, int]) -> list[Transfer]:
        s = self.settings
        return join_transfers(logs, chain_id=s.chain_id, token=s.token, watched=self.watched,
                              block_times=times, book=self._book, stats=self.skipped)

    # -- one pass ------------------------------------------------------------------------------
    async def _sync(self, node: Node) -> None:
        head = await node.header("latest")
        if head is None:
            raise ChainError("the node has no latest block")
        self.metrics.head(head.number, head.hash)
        tracker = self.tracker
        tip = tracker.tip
        if tip is None:
            if self._resume_from is None:       # first start, no start_block: begin after the head
                tracker.jump(head, [])
                self._read_from = head.number + 1   # blocks up to the head are never read: never vouched for
                self._commit()
                log.warning("chain bridge: no checkpoint (%s) and no start_block: starting after the head, block "
                            "%d; transfers in earlier blocks are not backfilled. To read them, stop the bridge, "
                            "set chain.start_block (SPENDWATCH_CHAIN__START_BLOCK) to the first block to read "
                            "and delete the checkpoint file, then start it again", self.settings.checkpoint_path,
                            head.number)
                return
            start = self._resume_from
        else:
            state = await self._tip_state(node, head, tip)
            if state == "behind":
                return
            self._behind = False
            self.metrics.set_node_behind(False)
            if state == "replaced":
                await self._reorg(node)
                self._wake.set()            # go again from the common ancestor
                return
            start = tip.number + 1
        deep_end = head.number - tracker.confirmations
        if deep_end >= start + 1:
            await self._backfill(node, start, deep_end)
            start = deep_end + 1
        self.metrics.backfill_remaining.set(0)
        for n in range(start, head.number + 1):
            if self._stop.is_set():
                return
            h = head if n == head.number else await node.header(n)
            if h is None:
                return
            if tracker.tip is not None and h.parent_hash != tracker.tip.hash:
                await self._reorg(node)
                self._wake.set()
                return
            transfers = self._join(await node.logs_by_hash(h.hash), {h.hash: h.timestamp})
            await self._emit(tracker.advance(h, transfers))
            self._resume_from = None
            self._commit()
            self.stats["blocks"] += 1

    async def _tip_state(self, node: Node, head: Header, tip: Header) -> str:
        """Whether the tip is still "canonical", was "replaced" (a reorg), or the node is "behind" it and
        cannot tell. Only another block at a number the bridge remembers is a reorg: a node that has no block
        there (a node still syncing, an RPC endpoint balancing nodes at different heights) is waited for, or
        the transfers of blocks it has not reached yet would be published `reverted`."""
        if head.number < tip.number:
            known = self.tracker.hash_at(head.number)
            if known is not None and known != head.hash:
                return "replaced"
            self._node_behind(tip, f"its head is block {head.number}" + (
                "" if known else f", below the {len(self.tracker.headers)} blocks the bridge remembers"))
            return "behind"
        if head.number == tip.number:
            return "canonical" if head.hash == tip.hash else "replaced"
        if head.number == tip.number + 1 and head.parent_hash == tip.hash:
            return "canonical"               # the head extends the tip: no need to ask
        canon = await node.header(tip.number)
        if canon is None:
            self._node_behind(tip, f"it answered head {head.number} but has no block {tip.number}")
            return "behind"
        return "canonical" if canon.hash == tip.hash else "replaced"

    def _node_behind(self, tip: Header, what: str) -> None:
        """The node cannot say whether the tip is still canonical: wait for it (logged once per episode, and
        shown by the gauge spendwatch_chain_node_behind until a pass finds the tip again)."""
        self.stats["node_behind"] += 1
        self.metrics.set_node_behind(True)
        if not self._behind:
            self._behind = True
            log.warning("chain bridge: the node is behind the bridge's block %d (%s): waiting for it to catch "
                        "up before reading on; nothing is reverted unless the node shows another block at a "
                        "remembered height. If the chain was reset (a dev chain restarted without its state), "
                        "stop the bridge, delete the checkpoint %s and set chain.start_block (0: the new chain "
                        "from its start)", tip.number, what,
                        self.settings.checkpoint_path)

    async def _backfill(self, node: Node, first: int, last: int) -> None:
        """Blocks first..last are `confirmations` deep: read them by range, publish `confirmed`. A range the
        node refuses as too large is read again in halves (self.ranges); a refused single block ends the
        session like any node error."""
        ranges = self.ranges
        a = first
        while a <= last and not self._stop.is_set():
            self.metrics.backfill_remaining.set(last - a + 1)
            b = min(a + ranges.size - 1, last)
            try:
                logs = await node.logs_range(a, b)
            except RangeRefusedError as exc:  # only ranges of 2+ blocks are refused (node.py): one can shrink
                ranges.refused(exc.blocks)
                self.stats["ranges_refused"] += 1
                self.metrics.range_refused()
                log.warning("chain bridge: %s; reading %d blocks per eth_getLogs call now", exc, ranges.size)
                continue
            if ranges.read(b - a + 1):
                log.info("chain bridge: reading %d blocks per eth_getLogs call again", ranges.size)
            headers: dict[int, Header] = await node.headers(sorted({x.block_number for x in logs} | {b}))
            if b not in headers or any(headers.get(x.block_number) is None
                                       or headers[x.block_number].hash != x.block_hash for x in logs):
                raise ChainError(f"blocks {a}..{b} changed while being read (a reorg deeper than "
                                 f"{self.tracker.confirmations} confirmations?); reading them again")
            transfers = self._join(logs, {h.hash: h.timestamp for h in headers.values()})
            await self._emit(self.tracker.jump(headers[b], transfers, headers.values()))
            self._resume_from = None
            self._commit()
            self.stats["backfill_ranges"] += 1
            self.stats["blocks"] += b - a + 1
            a = b + 1
            await self._progress(node)

    async def _progress(self, node: Node) -> None:
        """A chain.progress record for the newest confirmed block (tip - confirmations) to every partition,
        if it is above the last one sent and that one is progress_interval_seconds old. Called only when
        every transfer up to the tip was acknowledged (after `_commit`), so the record follows them."""
        tracker = self.tracker
        if tracker.tip is None:
            return
        number = tracker.tip.number - tracker.confirmations
        if (number <= self.progress_sent or (self._read_from is not None and number < self._read_from)
                or time.monotonic() - self._progress_at < self.settings.progress_interval_seconds):
            return
        header = tracker.headers.get(number) or await node.header(number)   # after a ranged read: asked
        first = await self._first_read(node)
        if header is None or (self._read_from is not None and first is None):
            return
        s = self.settings
        await self.sink.progress(progress_to_wire(s.chain_id, s.token, header, first, datetime.now(timezone.utc),
                                                  watches_all=self.watched is None))
        self.progress_sent, self._progress_at = number, time.monotonic()
        self.stats["progress"] += 1
        self.metrics.progress(number)

    async def _first_read(self, node: Node) -> Header | None:
        """The header of the first block read (None: unknown, or the node has none). A heartbeat covers it only
        once it is `confirmations` deep, so it is asked once per run."""
        n = self._read_from
        if n is None:
            return None
        h = self._read_from_header
        if h is None or h.number != n:
            h = self._read_from_header = self.tracker.headers.get(n) or await node.header(n)
        return h

    async def _reorg(self, node: Node) -> None:
        tracker = self.tracker
        assert tracker.tip is not None
        old_tip = tracker.tip.number
        n, floor = old_tip, tracker.floor if tracker.floor is not None else old_tip
        while n >= floor:
            h = await node.header(n)
            if h is not None and h.hash == tracker.hash_at(n):
                break
            n -= 1
        c = tracker.confirmations
        deep = n < floor or old_tip - n > c     # a dropped block had been published confirmed
        if n < floor:
            log.error("chain bridge: reorg deeper than the %d remembered blocks (below %d); transfers there "
                      "that were already confirmed cannot be reverted", len(tracker.headers), floor)
        elif deep:
            log.error("chain bridge: reorg of %d blocks, deeper than chain.confirmations = %d: blocks %d..%d were "
                      "already published confirmed and their transfers cannot be reverted (one the new chain does "
                      "not hold stays counted; one it moved is published again); fix: raise chain.confirmations",
                      old_tip - n, c, n + 1, old_tip - c)
        self.stats["deep_reorgs"] += deep
        emissions = tracker.rewind(n)
        self._read_from_header = None       # asked again: the reorg may have replaced the first block read
        if tracker.tip is None:
            self._resume_from = n + 1
        self.stats["reorgs"] += 1
        self.metrics.reorg(old_tip - n, deep=deep)
        log.warning("chain bridge: reorg: blocks %d..%d dropped, %d transfers reverted", n + 1, old_tip,
                    len(emissions))
        await self._emit(emissions)
        self._commit()
