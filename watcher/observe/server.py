"""The /metrics HTTP endpoint (aiohttp) as a daemon service, and the collector of daemon counters.

    service = MetricsService(metrics, settings.metrics)
    Daemon(settings, stages=[..., MetricsStage(metrics)], services=[service])

`serve_metrics(metrics, host, port)` serves anything with `render() -> bytes` without a daemon (the chain
bridge's process serves `watcher.chain.metrics.ChainMetrics` with it).
Consumer lag, dead letters and the other daemon counters are read at scrape time (cheap: one value per
partition); everything else was updated per batch. GET /metrics, GET /healthz.
"""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator, Protocol

from aiohttp import web
from aiokafka import TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from watcher.events.decode import REASONS
from watcher.failures import INTERNAL_ERROR, stage_name
from watcher.metrics import Metrics, MetricsSettings

log = logging.getLogger("watcher.metrics")


class DaemonCollector:
    """Counters the daemon keeps itself, and consumer lag per input partition, read at scrape time."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon

    def collect(self):
        d = self.daemon
        c = d.counters
        for name, doc, value in (
                ("spendwatch_consumed", "Records consumed from the input topics.", c.consumed),
                ("spendwatch_processed", "Valid records handed to the shards (duplicates included).", c.processed),
                ("spendwatch_duplicates", "Redelivered records dropped by dedupe.", c.duplicates),
                ("spendwatch_checkpoints", "State checkpoints written.", c.checkpoints),
                ("spendwatch_batches", "Batches committed.", c.batches),
                ("spendwatch_skipped_offsets", "Input offsets never delivered after the last one processed: "
                 "records deleted by retention before they were read, or transaction markers.",
                 c.skipped_offsets)):
            yield CounterMetricFamily(name, doc, value=value)
        dl = CounterMetricFamily("spendwatch_dead_letters", "Records dead-lettered, by reason.", labels=["reason"])
        reasons = dict.fromkeys((*REASONS, INTERNAL_ERROR), 0) | dict(d.dlq_reasons)  # exist from the start
        for reason, n in sorted(reasons.items()):
            dl.add_metric([reason], n)
        yield dl
        se = CounterMetricFamily("spendwatch_stage_errors", "Partition batches a stage raised on (logged with the "
                                 "partition and offsets); the later stages still ran and the daemon went on.",
                                 labels=["stage"])
        for stage, n in sorted((dict.fromkeys(map(stage_name, d.stages), 0) | dict(d.stage_errors.counts)).items()):
            se.add_metric([stage], n)
        yield se
        # gauges, not counters: kept in each partition's state, they move with the partition on a handoff
        shards = list(d.shards.values())
        for name, doc, value in (
                ("spendwatch_late_payments", "Payments older than every window, not counted in any, in the "
                 "partitions this process owns.", sum(sh.agents.late_dropped for sh in shards)),
                ("spendwatch_window_saturations", "Window bucket sums held at the int64 limit instead of "
                 "overflowing, in the partitions this process owns.",
                 sum(sh.agents.saturated + sh.categories.saturated for sh in shards)),
                ("spendwatch_dedupe_forced_rotations", "Dedupe/join memory rotations forced by "
                 "dedupe.max_entries (memory shorter than dedupe.horizon_seconds), in the partitions this "
                 "process owns.", sum(sh.seen.gens.forced_rotations + sh.join.payments.forced_rotations
                                      for sh in shards)),
                ("spendwatch_join_held_dropped", "Settles held for the chain bridge that dedupe.max_entries made "
                 "the join drop from its held list (decided at the end of their hold, not as soon as the bridge "
                 "confirms past them), in the partitions this process owns.",
                 sum(sh.join.bridges.held_dropped for sh in shards)),
                ("spendwatch_join_held_shadows_dropped", "Confirmed transfers held for their settles while the "
                 "partition catches up that dedupe.max_entries made the join judge before their settles were read "
                 "(a shadow_spend maybe false), in the partitions this process owns.",
                 sum(sh.join.held_shadows_dropped for sh in shards))):
            yield GaugeMetricFamily(name, doc, value=value)
        yield bridge_confirmed(shards)
        yield GaugeMetricFamily("spendwatch_partitions_owned", "Input partitions this process owns.",
                                value=len(d.shards))
        yield GaugeMetricFamily("spendwatch_tracked_agents", "Agents with rolling windows in this process.",
                                value=d.tracked_agents())
        lag = GaugeMetricFamily("spendwatch_consumer_lag_records", "Records not yet processed: the partition's "
                                "high watermark minus the next offset to process.", labels=["topic", "partition"])
        consumer = d.consumer
        if consumer is not None:
            for p, covered in sorted(d.covered.items()):
                for topic in (d.k.payments_topic, d.k.chain_topic):
                    behind = _lag(consumer, TopicPartition(topic, p), covered.get(topic))
                    if behind is not None:
                        lag.add_metric([topic, str(p)], behind)
        yield lag


def _lag(consumer, tp: TopicPartition, covered: int | None) -> int | None:
    """High watermark minus the next offset to process; None while either is unknown. With no covered
    offset yet (nothing processed since a start without checkpoint), the next offset is where the consumer
    reads from: the log start, not 0, once retention deleted the first records (or the lag of a partition
    retention emptied would be its high watermark for ever)."""
    try:
        hw = consumer.highwater(tp)
        if covered is None:   # the fetch position, read as consumer.highwater() reads the highwater
            state = consumer._subscription.subscription.assignment.state_value(tp)
            covered = state.position if state.has_valid_position else None
    except Exception:  # not assigned any more
        return None
    if hw is None or covered is None:
        return None
    return max(0, hw - covered)


def bridge_confirmed(shards) -> GaugeMetricFamily:
    """How far each chain bridge (a token on a chain) has confirmed, as the partitions of this process know it
    (their `chain.progress` heartbeats and confirmed transfers): the oldest over the partitions that heard of
    the bridge. One series per network and token, none before the first chain record; token "" is a whole
    chain's, restored from a checkpoint written before tokens (until a bridge of that chain passes it)."""
    g = GaugeMetricFamily("spendwatch_bridge_confirmed_timestamp_seconds", "How far the chain bridge has "
                          "confirmed, as seen by this process: the oldest, over the owned partitions, of the "
                          "newest confirmed block time (chain.progress or a confirmed transfer) (Unix seconds).",
                          labels=["network", "token"])
    oldest: dict[tuple[int, str], int] = {}
    for sh in shards:
        for stream, upto_ms in sh.join.confirmed_upto.items():
            oldest[stream] = min(upto_ms, oldest.get(stream, upto_ms))
    for (chain_id, token), upto_ms in sorted(oldest.items()):
        g.add_metric([f"eip155:{chain_id}", token], upto_ms / 1000)
    return g


class Exposition(Protocol):
    def render(self) -> bytes: ...


class _Server:
    def __init__(self, metrics: Exposition, host: str, port: int) -> None:
        self.metrics, self.host, self.port = metrics, host, port
        self.runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]
        log.info("serving /metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@contextlib.asynccontextmanager
async def serve_metrics(metrics: Exposition, host: str = "127.0.0.1", port: int = 9464) -> AsyncIterator[_Server]:
    server = _Server(metrics, host, port)
    try:
        await server.start()            # OSError if the port is taken
        yield server
    finally:
        await server.stop()


class MetricsService:
    """A daemon service factory: `services=[MetricsService(metrics, settings.metrics)]`. After entry,
    `.port` is the bound port (useful with port 0)."""

    def __init__(self, metrics: Metrics, settings: MetricsSettings | None = None) -> None:
        self.metrics = metrics
        self.settings = settings or metrics.settings
        self.port: int | None = None

    @contextlib.asynccontextmanager
    async def __call__(self, daemon) -> AsyncIterator[_Server]:
        collector = DaemonCollector(daemon)
        self.metrics.registry.register(collector)
        try:
            async with serve_metrics(self.metrics, self.settings.host, self.settings.port) as server:
                self.port = server.port
                yield server
        finally:
            self.metrics.registry.unregister(collector)
