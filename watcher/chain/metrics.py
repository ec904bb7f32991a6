"""The chain bridge's Prometheus metrics, on an injected registry (tests pass a fresh one).

    metrics = ChainMetrics(CollectorRegistry(), chain_id=8453, token="0x8335...")
    async with serve_chain_metrics(metrics, "127.0.0.1", 9465): ...     # GET /metrics, GET /healthz

The bridge (`watcher.chain.bridge.ChainBridge`) is the only writer; `spendwatch chain` serves them on
`chain.metrics_host:metrics_port` (job "chain" in deploy/prometheus.yml; the alert ChainBridgeStalled reads
the head's update time and the lag, ChainNodeBehind the node_behind gauge: while the node is behind the
bridge's tip, the lag reads 0 and new heads may still come, so ChainBridgeStalled cannot tell). Every family is unlabelled or has a fixed label set: one bridge
process follows one chain, so the chain and token are labels of `spendwatch_chain_info` only.

`FAMILIES` lists every family with its meaning (the README's chain metrics table; a test checks both).
"""

from __future__ import annotations

import contextlib
import time
from typing import AsyncIterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from watcher.chain.errors import NodeError, PublishError
from watcher.errors import ConfigError

STATUSES = ("pending", "confirmed", "reverted")
ERROR_KINDS = ("node", "kafka", "chain", "range_refused")
REORG_DEPTH_BUCKETS = (1, 2, 3, 5, 10, 20, 64)


def error_kind(exc: BaseException) -> str:
    """The kind of an error that ended a session: node (RPC failed or refused), kafka (not acknowledged),
    chain (blocks changed while read, ...). (range_refused is counted by `ChainMetrics.range_refused`.)"""
    if isinstance(exc, NodeError):
        return "node"
    if isinstance(exc, PublishError):
        return "kafka"
    return "chain"


class ChainMetrics:
    def __init__(self, registry: CollectorRegistry, chain_id: int, token: str = "") -> None:
        disable_created_metrics()  # as watcher.metrics: no `_created` twin of every counter (process-wide)
        self.registry = r = registry
        Gauge("spendwatch_chain_info", "The chain and token this bridge follows (always 1).",
              ["chain_id", "token"], registry=r).labels(str(chain_id), token).set(1)
        self.connected = Gauge("spendwatch_chain_connected", "1 while the bridge holds a connection to the "
                               "node, 0 while it waits to reconnect.", registry=r)
        self.head_block = Gauge("spendwatch_chain_head_block", "The latest block number the node reported "
                                "(read at each sync pass).", registry=r)
        self.head_updated = Gauge("spendwatch_chain_head_updated_timestamp_seconds", "When the bridge last saw "
                                  "a new head, i.e. a head hash it had not seen before (Unix seconds; 0 before "
                                  "the first).", registry=r)
        self.processed_block = Gauge("spendwatch_chain_processed_block", "The highest block whose transfers "
                                     "were all published and checkpointed.", registry=r)
        self.lag = Gauge("spendwatch_chain_head_lag_blocks", "Blocks between the node's head and the highest "
                         "block whose transfers were all published (0 when caught up).", registry=r)
        self.node_behind = Gauge("spendwatch_chain_node_behind", "1 while the bridge waits for a node that is "
                                 "behind the bridge's remembered tip (a lagging node, or a dev chain that was reset): "
                                 "no transfers are read meanwhile; 0 otherwise.", registry=r)
        self.backfill_remaining = Gauge("spendwatch_chain_backfill_blocks_remaining", "Blocks left to read by "
                                        "range while catching up (0 when following block by block).",
                                        registry=r)
        self.progress_block = Gauge("spendwatch_chain_progress_block", "The block of the last chain.progress "
                                    "record every partition acknowledged: every watched transfer up to it is "
                                    "published confirmed (-1 before the first).", registry=r)
        self.progress_block.set(-1)
        self.unconfirmed = Gauge("spendwatch_chain_unconfirmed_transfers", "Transfers published pending and "
                                 "not yet confirmed or reverted.", registry=r)
        self.published = Counter("spendwatch_chain_records_published", "chain.transfer records Kafka "
                                 "acknowledged, by status (pending, confirmed, reverted); a record repeated "
                                 "after a reconnect counts again.", ["status"], registry=r)
        self.reorgs = Counter("spendwatch_chain_reorgs", "Chain reorganisations seen by the bridge.", registry=r)
        self.reorg_depth = Histogram("spendwatch_chain_reorg_depth_blocks", "Blocks dropped by a "
                                     "reorganisation.", buckets=REORG_DEPTH_BUCKETS, registry=r)
        self.deep_reorgs = Counter("spendwatch_chain_deep_reorgs", "Reorganisations deeper than confirmations "
                                   "(or than the remembered blocks): transfers already published confirmed in "
                                   "the dropped blocks could not be reverted.",
                                   registry=r)
        self.errors = Counter("spendwatch_chain_errors", "Errors by kind. node, kafka, chain: a session ended, "
                              "then a reconnect after a back-off. range_refused: the node refused an eth_getLogs "
                              "block range as too large; read again in smaller ranges, no reconnect.", ["kind"],
                              registry=r)
        for status in STATUSES:          # every series exists from the start
            self.published.labels(status)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self._head: tuple[int, str] | None = None
        self._processed: int | None = None

    # -- writers (the bridge) ------------------------------------------------------------------
    def set_connected(self, up: bool) -> None:
        self.connected.set(1 if up else 0)

    def head(self, number: int, block_hash: str) -> None:
        """The node reported `number` / `block_hash` as its latest block."""
        if self._head is None or self._head[1] != block_hash:
            self.head_updated.set(time.time())
        self._head = (number, block_hash)
        self.head_block.set(number)
        self._set_lag()

    def set_node_behind(self, behind: bool) -> None:
        """Whether the last sync pass waited for a node behind the bridge's tip."""
        self.node_behind.set(1 if behind else 0)

    def processed(self, number: int, unconfirmed: int) -> None:
        """Every transfer up to block `number` is published and checkpointed; `unconfirmed` wait."""
        self._processed = number
        self.processed_block.set(number)
        self.unconfirmed.set(unconfirmed)
        self._set_lag()

    def progress(self, number: int) -> None:
        """A chain.progress record for block `number` was acknowledged on every partition."""
        self.progress_block.set(number)

    def records(self, status: str, n: int = 1) -> None:
        self.published.labels(status).inc(n)

    def reorg(self, depth: int, *, deep: bool = False) -> None:
        self.reorgs.inc()
        self.reorg_depth.observe(depth)
        if deep:
            self.deep_reorgs.inc()

    def error(self, exc: BaseException) -> None:
        self.errors.labels(error_kind(exc)).inc()
        self.set_connected(False)

    def range_refused(self) -> None:
        """The node refused an eth_getLogs range as too large (the session goes on with smaller ranges)."""
        self.errors.labels("range_refused").inc()

    def _set_lag(self) -> None:
        if self._head is not None and self._processed is not None:
            self.lag.set(max(0, self._head[0] - self._processed))

    # -- exposition ------------------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)


@contextlib.asynccontextmanager
async def serve_chain_metrics(metrics: ChainMetrics, host: str, port: int) -> AsyncIterator[object]:
    """/metrics and /healthz on host:port, through the watcher's server; a taken port is a ConfigError.
    Port 0 takes a free one the OS picks; the server logs the address it bound and holds it in `.port`."""
    from watcher.observe.server import serve_metrics

    async with contextlib.AsyncExitStack() as stack:
        try:
            server = await stack.enter_async_context(serve_metrics(metrics, host, port))
        except OSError as exc:
            raise ConfigError(f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}",
                              key="chain.metrics_port", fix="choose a free port, or 0 for one the OS picks "
                              "(SPENDWATCH_CHAIN__METRICS_PORT), \"off\" to serve no metrics, or stop what "
                              "holds the port") from exc
        yield server


# The README's chain metrics table (tests check it names every family the bridge serves).
FAMILIES: list[tuple[str, str, str, str]] = [
    # (name, type, labels, what it says)
    ("spendwatch_chain_info", "gauge", "chain_id, token", "the chain and token followed (1)"),
    ("spendwatch_chain_connected", "gauge", "", "1 while connected to the node"),
    ("spendwatch_chain_head_block", "gauge", "", "latest block the node reported"),
    ("spendwatch_chain_head_updated_timestamp_seconds", "gauge", "", "when a new head was last seen"),
    ("spendwatch_chain_processed_block", "gauge", "", "highest block fully published and checkpointed"),
    ("spendwatch_chain_head_lag_blocks", "gauge", "", "head - highest fully published block"),
    ("spendwatch_chain_node_behind", "gauge", "", "1 while waiting for a node behind the bridge's tip"),
    ("spendwatch_chain_backfill_blocks_remaining", "gauge", "", "blocks left to read by range when catching up"),
    ("spendwatch_chain_unconfirmed_transfers", "gauge", "", "published pending, not yet confirmed or reverted"),
    ("spendwatch_chain_progress_block", "gauge", "", "block of the last chain.progress sent to every partition"),
    ("spendwatch_chain_records_published_total", "counter", "status", "records Kafka acknowledged"),
    ("spendwatch_chain_reorgs_total", "counter", "", "reorgs seen"),
    ("spendwatch_chain_reorg_depth_blocks", "histogram", "", "blocks dropped per reorg"),
    ("spendwatch_chain_deep_reorgs_total", "counter", "", "reorgs deeper than confirmations: confirmed "
     "transfers not reverted"),
    ("spendwatch_chain_errors_total", "counter", "kind", "errors: node, kafka, chain end the session (then a "
     "reconnect); range_refused: an eth_getLogs range refused as too large (read in smaller ranges)"),
]
