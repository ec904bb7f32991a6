"""The stages after the shard, and the services beside the daemon, built from the settings.

    DetectStage     Detector per input partition: policies + anomaly models -> decisions (watcher.decisions)
    BreakerStage    circuit breaker per agent: signed freeze/unfreeze webhooks (durable outbox on
                    watcher.breaker), Slack/PagerDuty, the admin API (services)
    StatementStage  daily statements per agent, merchant and category (watcher.statements)
    MetricsStage    Prometheus metrics, updated per batch; served by MetricsService (/metrics)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Callable

from watcher.batch import BatchContext
from watcher.breaker import BreakerConfig, BreakerStage
from watcher.breaker.metrics import BreakerMetrics
from watcher.breaker.service import breaker_services
from watcher.config import Settings
from watcher.daemon import Daemon
from watcher.detect.decision import encode_decision
from watcher.detect.detector import Detector, ScoreSink
from watcher.detect.forget import FORGET_AFTER_SECONDS
from watcher.detect.policy import Hangup, Policy, PolicyWatcher
from watcher.detect.ratecard import RateCard
from watcher.detect.rules import CAP_WINDOWS, NO_LIMIT
from watcher.metrics import Metrics
from watcher.observe.server import MetricsService
from watcher.observe.stage import MetricsStage
from watcher.observe.statements import StatementStage, statement_topic_service
from watcher.pipeline.categories import rate_card_first

log = logging.getLogger("watcher.stages")


class NoPolicyFile(Hangup):
    """What SIGHUP and the reload loop act on without a policy file (SIGHUP's default action would end the
    daemon): the handler only sets a flag; `poll()`, from the loop, logs that there is nothing to reload."""

    def poll(self) -> None:
        if self._hup:
            self._hup = False
            log.warning("SIGHUP: there is no policy file to reload (detect.policy_file is not set); the built-in "
                        "defaults stay. Set detect.policy_file and restart to use a policy")


class DetectStage:
    """Runs one Detector per owned partition and publishes its decisions. `score_sink` receives each
    detector's model scores once per batch (the Assembly passes `Metrics.anomaly_scores`)."""

    def __init__(self, policy: Policy, decisions_topic: str, score_sink: ScoreSink | None = None,
                 forget_after_ms: int = FORGET_AFTER_SECONDS * 1000) -> None:
        self.policy = policy
        self.topic = decisions_topic
        self.score_sink = score_sink
        self.forget_after_ms = forget_after_ms
        self.detectors: dict[int, Detector] = {}
        self.ratecard = RateCard(policy.rate_card)
        self.cap_overrides: dict[str, tuple[dict[str, int], float]] = {}

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.ratecard = RateCard(policy.rate_card)
        for det in self.detectors.values():
            det.set_policy(policy)
            for agent in self.cap_overrides:
                if agent in det.index:
                    self._apply_caps(det, agent)

    def categorize(self, merchant: str, resource: str | None) -> str | None:
        return self.ratecard.categorize(merchant, resource)

    def on_batch(self, ctx: BatchContext) -> None:
        det = self.detectors.get(ctx.partition)
        if det is None:
            return
        out = ctx.outcome
        decisions: list = []   # filled as they are taken: if the detector raises, those are still published
        try:
            if out.deltas or out.signals or out.findings:
                det.on_batch(out, ctx.shard, ctx.now_ms, ctx.observations, decisions,
                             real_from_ms=ctx.real_from_ms)
            else:  # e.g. only transfers confirming what was settled: nothing to judge, but payees to learn
                det.learn_payees(ctx.observations)
            det.tick(ctx.now_ms, decisions)
        finally:
            if decisions:
                ctx.decisions.extend(decisions)
                for d in decisions:
                    ctx.publish.append((self.topic, d.agent.encode(), encode_decision(d)))

    def detector_for(self, agent: str) -> Detector | None:
        for det in self.detectors.values():
            if agent in det.index:
                return det
        return None

    # -- what the breaker stage (and through it the admin API) asks of detection -------------------
    def release(self, partition: int, agent: str) -> bool:
        det = self.detector_for(agent)
        return bool(det and det.release(agent))

    def approve(self, partition: int, agent: str, only_pending: bool = False) -> bool:
        det = self.detector_for(agent)
        return bool(det and det.approve(agent, only_pending=only_pending))

    def knows(self, partition: int, agent: str) -> bool:
        return self.detector_for(agent) is not None

    def is_frozen(self, partition: int, agent: str) -> bool:
        det = self.detector_for(agent)
        return bool(det and det.is_frozen(agent))

    def set_caps(self, partition: int, agent: str, caps: dict[str, int] | None, factor: float = 1.0) -> None:
        """Caps set by a person (base units per window name: 1m, 1h, 24h) and the probation factor, on top
        of the policy's; kept across policy reloads. None and factor 1 return the agent to its policy."""
        if caps is None and factor == 1.0:
            self.cap_overrides.pop(agent, None)
        else:
            self.cap_overrides[agent] = (dict(caps or {}), factor)
        det = self.detector_for(agent) or self.detectors.get(partition)
        if det is not None:
            self._apply_caps(det, agent)

    def _apply_caps(self, det: Detector, agent: str) -> None:
        row = det.row(agent)
        det.table.set_row(row, det.policy.limits(agent))
        caps, factor = self.cap_overrides.get(agent, ({}, 1.0))
        for i, (_, window, _) in enumerate(CAP_WINDOWS):
            if window in caps:
                det.table.caps[row, i] = caps[window]
            if factor != 1.0 and det.table.caps[row, i] != NO_LIMIT:
                det.table.caps[row, i] = int(det.table.caps[row, i] * factor)

    def snapshot(self, partition: int) -> object:
        """The detector's checkpoint; its idle agents are forgotten first, never one with caps a person set
        (`cap_overrides`: the caps live in its row)."""
        return self.detectors[partition].snapshot(keep=self.cap_overrides)

    def restore(self, partition: int, data: object | None) -> None:
        sink, forget = self.score_sink, self.forget_after_ms
        self.detectors[partition] = (Detector.restore(data, self.policy, score_sink=sink, forget_after_ms=forget)
                                     if data else Detector(self.policy, score_sink=sink, forget_after_ms=forget))

    def drop(self, partition: int) -> None:
        """The partition went to another replica: so do its agents' caps (its breaker state sets them again
        if it comes back; kept here, a reload would apply caps a person has cleared elsewhere since)."""
        det = self.detectors.pop(partition, None)
        if det is not None:
            for agent in [a for a in self.cap_overrides if a in det.index]:
                del self.cap_overrides[agent]


Reloads = PolicyWatcher | NoPolicyFile  # what SIGHUP acts on, from the reload loop


def policy_service(watcher: Reloads) -> Callable[[Daemon], contextlib.AbstractAsyncContextManager]:
    """Polls the policy file once a second (file change or SIGHUP); a bad reload keeps the old policy.
    Without a policy file, says once per SIGHUP that there is nothing to reload."""

    @contextlib.asynccontextmanager
    async def run(daemon: Daemon) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(1.0)
                try:
                    watcher.poll()
                except Exception:  # even a failed rollback must not end the reloads for the daemon's life
                    log.exception("policy reload failed; the next change or SIGHUP tries again")

        task = asyncio.create_task(loop(), name="policy-reload")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return run


class Assembly:
    """Everything the daemon runs besides its core, built from the settings."""

    def __init__(self, settings: Settings, registry=None, *, breaker: BreakerConfig | None = None,
                 names: dict[str, str] | None = None) -> None:
        from prometheus_client import CollectorRegistry

        self.settings = settings
        self.stages: list = []
        self.services: list = []
        self.metrics = Metrics(registry if registry is not None else CollectorRegistry(), settings.metrics,
                               windows=settings.shard_config().windows)
        path = settings.detect.policy_file
        if path:
            windows = [w.name for w in settings.windows]
            self.policy_watcher = PolicyWatcher(path, on_change=self._set_policy,
                                                check=lambda p: p.check_windows(windows))
            policy = self.policy_watcher.policy
        else:
            self.policy_watcher = None
            policy = Policy.default()
        self.reloads: Reloads = self.policy_watcher or NoPolicyFile()
        self.services.append(policy_service(self.reloads))
        self.detect = DetectStage(policy, settings.kafka.decisions_topic, score_sink=(
            self.metrics.anomaly_scores if settings.metrics.enabled else None),
            forget_after_ms=settings.detect.forget_after_seconds * 1000)
        self.metrics.escalation_timeout.set(policy.shortest_escalation_timeout_seconds())
        self.stages.append(self.detect)
        self.categorize = rate_card_first(self.detect.categorize, settings.categories)
        self.breaker_config = breaker or BreakerConfig.from_settings(settings)
        # agent names of the policy file, then of the registry (agents.registry_file wins)
        self.breaker = BreakerStage(self.breaker_config, control=self.detect,
                                    names={**policy.names, **(names or {})},
                                    metrics=BreakerMetrics(self.metrics.registry, fleet=self.metrics),
                                    partitions=settings.kafka.partitions)
        self.stages.append(self.breaker)
        self.services.extend(breaker_services(self.breaker, self.breaker_config))
        if settings.statements.enabled:
            self.stages.append(StatementStage(settings.statements, self.metrics))
            self.services.append(statement_topic_service(settings.statements))
        self.stages.append(MetricsStage(self.metrics))  # last: it sees every stage's decisions
        self.metrics_service = MetricsService(self.metrics, settings.metrics) if settings.metrics.enabled else None
        if self.metrics_service is not None:
            self.services.append(self.metrics_service)

    def _set_policy(self, policy: Policy) -> None:
        """A reloaded policy: detection uses it, and the escalation alert's threshold follows its timeouts."""
        self.detect.set_policy(policy)
        self.metrics.escalation_timeout.set(policy.shortest_escalation_timeout_seconds())

    def daemon(self, **kwargs) -> Daemon:
        d = Daemon(self.settings, self.stages, services=self.services, categorize=self.categorize, **kwargs)
        self.reloads.install_sighup()  # also without a policy file: a reload must not stop the watcher
        return d


def build(settings: Settings, registry=None, **kwargs) -> Assembly:
    return Assembly(settings, registry, **kwargs)
