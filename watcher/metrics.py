"""Every Prometheus metric of spendwatch, in one place, on an injected registry.

    metrics = Metrics(CollectorRegistry(), MetricsSettings(), windows=settings.shard_config().windows)

Writers: `watcher.observe.stage.MetricsStage` (spend, findings, decisions, events, latency; per batch),
`watcher.observe.server` (daemon counters, consumer lag; read at scrape time), the breaker
(`breaker_state`, `escalation_waiting`, `webhook_result`) and the detector (`anomaly_score`/`anomaly_scores`).
Money is converted from integer base units to USDC only here. The chain bridge is another process: its
families (`spendwatch_chain_*`) live in `watcher.chain.metrics` and are served by `spendwatch chain`.

Label sets are bounded: categories come from the configuration, networks from the known list, merchants
are capped (`max_merchants`, the rest are "other"), decision rules from the policy. Per-agent series exist
only for the top `top_n` agents by spend rate plus up to `max_pinned` pinned agents (a breaker that is not
closed, or a waiting escalation; open breakers and waiting escalations before held and half-open ones, else
first come; a freed slot goes to an unpinned one); they are chosen
with numpy once per `refresh_seconds` and pre-rendered, so a scrape costs the same whatever the number of
tracked agents. The fleet gauges (`spendwatch_breakers`, `spendwatch_escalations_waiting`) count every
agent this process owns, pinned or not; `spendwatch_agents_capped` says how many open or escalated ones
were left unpinned.
The README's metrics table lists every family.

Breaker state arrives three ways: `breaker_state`/`escalation_waiting` (a change, counted as a transition),
`restore` (a partition taken over: its agents as they are, no transition) and `forget` (a partition let
go: its agents' state and series go, another process exports them now).
"""

from __future__ import annotations

import threading
import time
from itertools import chain
from typing import Annotated, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from watcher.errors import ConfigError
from watcher.observe.histogram import BulkHistogram
from watcher.observe.topn import AddressCache, AgentRow, rank_agents, render_agents

USDC = 1_000_000
BREAKER_STATES = ("open", "half_open", "held")          # "closed" is the absence of a series
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
SCORE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1, 2, 3, 5, 10)
WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class MetricsSettings(BaseModel):
    """`[metrics]`: the /metrics endpoint and the per-agent series budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    host: str = Field("127.0.0.1", description="bind address of /metrics (0.0.0.0 in a container)")
    port: Annotated[int, Field(ge=0, le=65535)] = 9464
    top_n: Annotated[int, Field(ge=0, le=2000)] = 200
    max_pinned: Annotated[int, Field(ge=0, le=2000)] = 40
    max_merchants: Annotated[int, Field(ge=1, le=10_000)] = 200
    max_agent_series: Annotated[int, Field(ge=10, le=100_000)] = 2000
    refresh_seconds: Annotated[float, Field(ge=0)] = 2.0

    @model_validator(mode="after")
    def _budget(self):
        # the window count is in `[[windows]]`, not here: this is the check for the fewest windows (one);
        # Metrics() checks again with the configured windows
        if agent_series_budget(self.top_n, self.max_pinned, 1) > self.max_agent_series:
            raise ValueError(f"(top_n + max_pinned) * 2 * windows + 2 * max_pinned must stay within "
                             f"max_agent_series ({self.max_agent_series}) even with one window: lower top_n or "
                             f"max_pinned, or raise max_agent_series")
        return self


def agent_series_budget(top_n: int, max_pinned: int, windows: int) -> int:
    """The most per-agent series rendered: every row (top N, plus pinned agents outside it) has a spend rate
    and a payment count per window, and each pinned agent a breaker and an escalation series."""
    return (top_n + max_pinned) * 2 * windows + 2 * max_pinned


def check_series_budget(settings: MetricsSettings, windows: int, *, file: str | None = None) -> None:
    """Refuse settings whose per-agent series could exceed metrics.max_agent_series (metrics enabled only)."""
    need = agent_series_budget(settings.top_n, settings.max_pinned, windows)
    if settings.enabled and need > settings.max_agent_series:
        raise ConfigError(
            f"per-agent series may reach {need} ((top_n {settings.top_n} + max_pinned {settings.max_pinned})"
            f" * 2 * {windows} windows + 2 * max_pinned), above metrics.max_agent_series "
            f"({settings.max_agent_series})", file=file, key="metrics.max_agent_series",
            fix=f"raise metrics.max_agent_series to {need}, or lower metrics.top_n or metrics.max_pinned, "
                f"or configure fewer [[windows]]")


def usdc(base_units: int) -> float:
    return base_units / USDC


class _AgentSeries:
    """Collector of the pre-rendered per-agent families. Yields nothing while Metrics.render() runs (it
    appends the pre-rendered text itself) so prometheus_client never re-formats 2,000 samples."""

    def __init__(self, metrics: "Metrics") -> None:
        self.m = metrics
        self.local = threading.local()

    def collect(self):
        if getattr(self.local, "skip", False):
            return
        from prometheus_client.parser import text_string_to_metric_families
        yield from text_string_to_metric_families(self.m.agent_text().decode())


class Metrics:
    def __init__(self, registry: CollectorRegistry, settings: MetricsSettings = MetricsSettings(),
                 windows: Iterable = (), version: str = "0.1.0") -> None:
        from watcher.pipeline.windows import DEFAULT_WINDOWS

        disable_created_metrics()  # no `_created` twin of every counter and histogram (process-wide)
        self.registry, self.settings = registry, settings
        self.windows = tuple(windows) or DEFAULT_WINDOWS
        check_series_budget(settings, len(self.windows))
        r = registry
        # -- fleet spend ---------------------------------------------------------------------------
        self.spend = Counter("spendwatch_spend_usdc", "Spend counted (USDC), by merchant category and network; "
                             "net spend is this minus spendwatch_spend_reversed_usdc.", ["category", "network"],
                             registry=r)
        self.payments = Counter("spendwatch_payments", "Payments counted, by category and network.",
                                ["category", "network"], registry=r)
        self.reversed = Counter("spendwatch_spend_reversed_usdc", "Spend un-counted after a reorg or a "
                                "corrected amount (USDC), by category and network.", ["category", "network"],
                                registry=r)
        self.merchant_spend = Counter("spendwatch_merchant_spend_usdc", "Spend by merchant (USDC); merchants "
                                      "beyond the cap are 'other'.", ["merchant"], registry=r)
        self.findings = Counter("spendwatch_findings", "Join findings, by kind (unsettled, shadow_spend, "
                                "amount_mismatch).", ["kind"], registry=r)
        self.decisions = Counter("spendwatch_decisions", "Detection decisions, by kind and rule.",
                                 ["kind", "rule"], registry=r)
        self.events = Counter("spendwatch_events", "Valid events processed, by source (facilitator, chain).",
                              ["source"], registry=r)
        # -- breakers, escalations, anomaly models ------------------------------------------------------
        self.breakers = Gauge("spendwatch_breakers", "Agents per breaker state (closed ones are not counted).",
                              ["state"], registry=r)
        self.breaker_transitions = Counter("spendwatch_breaker_transitions", "Breaker transitions, by the "
                                           "state entered.", ["state"], registry=r)
        self.escalations = Gauge("spendwatch_escalations_waiting", "Escalations waiting for a person.",
                                 registry=r)
        self.escalation_timeout = Gauge("spendwatch_escalation_timeout_seconds", "The policy's shortest "
                                        "escalation.timeout_seconds (defaults, teams, agents): an escalation "
                                        "unanswered this long freezes its agent.", registry=r)
        self.anomaly = BulkHistogram("spendwatch_anomaly_score", "Anomaly scores, by model.", SCORE_BUCKETS,
                                     ("model",))
        r.register(self.anomaly)
        self.anomaly_high = Counter("spendwatch_anomaly_high", "Scores a model flagged as anomalous.",
                                    ["model"], registry=r)
        # -- pipeline health --------------------------------------------------------------------------
        self.latency = BulkHistogram("spendwatch_event_latency_seconds", "From an event's own time to its "
                                     "processing by the watcher (seconds).", LATENCY_BUCKETS)
        r.register(self.latency)
        self.webhooks = Counter("spendwatch_webhooks", "Freeze/unfreeze webhook attempts, by outcome (ok, 4xx, "
                                "5xx, error, timeout).", ["outcome"], registry=r)
        self.webhook_seconds = Histogram("spendwatch_webhook_duration_seconds", "Webhook request latency "
                                         "(seconds).", buckets=WEBHOOK_BUCKETS, registry=r)
        self.statements = Counter("spendwatch_statements_published", "Daily statement rows published.",
                                  registry=r)
        self.refresh_seconds = Gauge("spendwatch_metrics_refresh_seconds", "Duration of the last per-agent "
                                     "series refresh (top-N ranking) (seconds).", registry=r)
        self.ranked = Gauge("spendwatch_agents_ranked", "Agents with per-agent series (top N + pinned).",
                            registry=r)
        self.capped = Gauge("spendwatch_agents_capped", "Agents an alert needs left without per-agent series "
                            "by metrics.max_pinned, by kind: breaker (open), escalation (waiting). They "
                            "are still counted in spendwatch_breakers and spendwatch_escalations_waiting.",
                            ["kind"], registry=r)
        for kind in ("unsettled", "shadow_spend", "amount_mismatch"):   # series exist from the start
            self.findings.labels(kind)
        for source in ("facilitator", "chain"):
            self.events.labels(source)
        for state in BREAKER_STATES:
            self.breakers.labels(state).set(0)
        for kind in ("breaker", "escalation"):
            self.capped.labels(kind).set(0)
        self.webhooks.labels("ok")
        Gauge("spendwatch_build_info", "Build information.", ["version"], registry=r).labels(version).set(1)
        # -- breaker state of every owned agent that is not closed (as many as the breakers hold) ----------
        self._breaker_of: dict[str, str] = {}
        self._escalation_since: dict[str, float] = {}
        self._in_state: dict[str, int] = {}
        # -- per-agent series (bounded) ------------------------------------------------------------------
        self._pinned: dict[str, None] = {}        # at most max_pinned, in pinning order
        self._rows: list[AgentRow] = []
        self._agent_text: bytes | None = None
        self._lock = threading.Lock()
        self._address = AddressCache()
        self._merchants: set[str] = set()
        self._agents = _AgentSeries(self)
        r.register(self._agents)

    # -- spend (called by MetricsStage, once per batch with aggregated values) -----------------------
    def add_spend(self, category: str, network: str, amount: int, count: int) -> None:
        """Net change of a batch for one (category, network): positive spend counts, negative un-counts."""
        spend, rev = self.spend.labels(category, network), self.reversed.labels(category, network)
        if amount > 0:
            spend.inc(usdc(amount))
        elif amount < 0:
            rev.inc(usdc(-amount))
        if count > 0:
            self.payments.labels(category, network).inc(count)

    def add_merchant_spend(self, merchant: str, amount: int) -> None:
        if amount <= 0:
            return
        if merchant not in self._merchants:
            if len(self._merchants) >= self.settings.max_merchants:
                merchant = "other"
            else:
                self._merchants.add(merchant)
        self.merchant_spend.labels(merchant).inc(usdc(amount))

    def finding(self, kind: str, n: int = 1) -> None:
        self.findings.labels(kind).inc(n)

    def decision(self, kind: str, rule: str, n: int = 1) -> None:
        self.decisions.labels(kind, rule).inc(n)

    def events_processed(self, source: str, n: int) -> None:
        self.events.labels(source).inc(n)

    def event_latencies(self, seconds) -> None:
        self.latency.observe_many(seconds)

    # -- breaker helper ------------------------------------------------------------------------------
    def breaker_state(self, agent: str, state: str) -> None:
        """An agent's breaker entered `state` (closed, open, half_open, held): a transition, counted."""
        with self._lock:
            if self._set_breaker(agent, state):
                self.breaker_transitions.labels(state).inc()
                self._repin(agent)
                self._publish()

    def escalation_waiting(self, agent: str, since_ms: int | None) -> None:
        """An escalation for `agent` waits for a person since `since_ms` (None: answered or expired)."""
        with self._lock:
            if self._set_escalation(agent, since_ms):
                self._repin(agent)
                self._publish()

    def restore(self, agents: Iterable[tuple[str, str, int | None]]) -> None:
        """Agents as they are, from a restored partition: (agent, breaker state, escalation waiting since
        in ms or None). No transition is counted: nothing changed, this process only took them over."""
        with self._lock:
            for agent, state, since_ms in agents:
                if self._set_breaker(agent, state) | self._set_escalation(agent, since_ms):
                    self._repin(agent)
            self._publish()

    def forget(self, agents: Iterable[str]) -> None:
        """Agents of a partition this process let go: their state and series go (no transition)."""
        with self._lock:
            for agent in agents:
                if self._set_breaker(agent, "closed") | self._set_escalation(agent, None):
                    self._repin(agent)
            self._publish()

    def _set_breaker(self, agent: str, state: str) -> bool:
        prev = self._breaker_of.get(agent, "closed")
        if state == prev:
            return False
        if prev != "closed":
            self._in_state[prev] -= 1
        if state == "closed":
            del self._breaker_of[agent]
        else:
            self._breaker_of[agent] = state
            self._in_state[state] = self._in_state.get(state, 0) + 1
        return True

    def _set_escalation(self, agent: str, since_ms: int | None) -> bool:
        if since_ms is None:
            return self._escalation_since.pop(agent, None) is not None
        since = since_ms / 1000
        if self._escalation_since.get(agent) == since:
            return False
        self._escalation_since[agent] = since
        return True

    def _alerting(self, agent: str) -> bool:
        """An alert needs this agent's series: its breaker is open (BreakerOpened) or an escalation waits."""
        return self._breaker_of.get(agent) == "open" or agent in self._escalation_since

    def _repin(self, agent: str) -> None:
        """Pin `agent` if it needs series and there is room; unpin it if not, and give its slot away. Agents
        an alert needs go first: when the pool is full one takes the slot of a held or half-open agent (whose
        series only a dashboard shows), so holds and probations never leave a new freeze without its page."""
        pinned = self._pinned
        if agent in self._breaker_of or agent in self._escalation_since:
            if agent not in pinned:
                if len(pinned) < self.settings.max_pinned:
                    pinned[agent] = None
                elif self._alerting(agent):
                    spare = next((a for a in pinned if not self._alerting(a)), None)
                    if spare is not None:
                        del pinned[spare]
                        pinned[agent] = None
                return
            if self._alerting(agent) or not self._capped_any() or all(
                    a in pinned or not self._alerting(a) for a in chain(self._breaker_of, self._escalation_since)):
                return
            del pinned[agent]   # held or half-open now, and an alerting agent was left out: it takes the slot
        elif agent in pinned:
            del pinned[agent]
        else:
            return
        # left-out agents take the free slot: alerting ones first, then the others (breakers in the order they
        # left closed, then escalations in the order they started waiting)
        for alerting in (True, False) if self._capped_any() else ():
            for a in chain(self._breaker_of, self._escalation_since):
                if len(pinned) >= self.settings.max_pinned:
                    return
                if a not in pinned and self._alerting(a) == alerting:
                    pinned[a] = None

    def _capped_any(self) -> bool:
        return len(self._breaker_of) + len(self._escalation_since) > len(self._pinned)

    def _publish(self) -> None:
        for s in BREAKER_STATES:
            self.breakers.labels(s).set(self._in_state.get(s, 0))
        self.escalations.set(len(self._escalation_since))
        self.capped.labels("breaker").set(self._in_state.get("open", 0)
                                          - sum(self._breaker_of.get(a) == "open" for a in self._pinned))
        self.capped.labels("escalation").set(len(self._escalation_since)
                                             - sum(a in self._escalation_since for a in self._pinned))
        self._agent_text = None

    def webhook_result(self, outcome: str, seconds: float) -> None:
        self.webhooks.labels(outcome).inc()
        self.webhook_seconds.observe(seconds)

    # -- detect helper ---------------------------------------------------------------------------------
    def anomaly_score(self, model: str, value: float, high: bool = False) -> None:
        self.anomaly_scores(model, (value,), int(high))

    def anomaly_scores(self, model: str, values, high: int = 0) -> None:
        """A batch of scores of one model (array-like); `high` = how many the model flagged."""
        self.anomaly.observe_many(values, (model,))
        if high:
            self.anomaly_high.labels(model).inc(high)
        else:
            self.anomaly_high.labels(model)  # the series exists from the first score

    # -- per-agent series --------------------------------------------------------------------------------
    def pinned(self) -> set[str]:
        """Agents with series beyond the top N: a breaker not closed or a waiting escalation, capped."""
        with self._lock:
            return set(self._pinned)

    def refresh_agents(self, shards: Mapping[int, object]) -> list[AgentRow]:
        """Re-rank agents over all shards (vectorised) and keep their series for the next scrapes."""
        t0 = time.perf_counter()
        rows = rank_agents(shards, self.settings.top_n, self.pinned(), self._address)
        with self._lock:
            self._rows, self._agent_text = rows, None
        self.ranked.set(len(rows))
        self.refresh_seconds.set(time.perf_counter() - t0)
        return rows

    def agent_rows(self) -> list[AgentRow]:
        return self._rows

    def agent_text(self) -> bytes:
        with self._lock:
            if self._agent_text is None:
                pins = self._pinned
                self._agent_text = render_agents(
                    self.windows, self._rows, {a: self._breaker_of[a] for a in pins if a in self._breaker_of},
                    {a: self._escalation_since[a] for a in pins if a in self._escalation_since})
            return self._agent_text

    # -- exposition -------------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The whole registry in Prometheus text format, with the per-agent block pre-rendered."""
        self._agents.local.skip = True
        try:
            head = generate_latest(self.registry)
        finally:
            self._agents.local.skip = False
        return head + self.agent_text()


# The README's metrics table is generated from this list (tests check it names every family).
FAMILIES: list[tuple[str, str, str, str]] = [
    # (name, type, labels, what it says)
    ("spendwatch_spend_usdc_total", "counter", "category, network", "fleet spend counted (net: minus reversed)"),
    ("spendwatch_payments_total", "counter", "category, network", "payments counted"),
    ("spendwatch_spend_reversed_usdc_total", "counter", "category, network", "spend un-counted (reorg, correction)"),
    ("spendwatch_merchant_spend_usdc_total", "counter", "merchant", "spend by merchant (capped, rest `other`)"),
    ("spendwatch_agent_spend_rate_usdc_per_second", "gauge", "agent, window", "top-N + pinned agents' spend rate"),
    ("spendwatch_agent_window_payments", "gauge", "agent, window", "top-N + pinned agents' payments in window"),
    ("spendwatch_agent_breaker_state", "gauge", "agent, state", "1 per agent whose breaker is not closed"),
    ("spendwatch_agent_escalation_waiting_since_timestamp_seconds", "gauge", "agent", "escalation waiting since"),
    ("spendwatch_breakers", "gauge", "state", "agents per breaker state"),
    ("spendwatch_breaker_transitions_total", "counter", "state", "breaker transitions by state entered"),
    ("spendwatch_escalations_waiting", "gauge", "", "escalations waiting for a person"),
    ("spendwatch_escalation_timeout_seconds", "gauge", "", "the policy's shortest escalation timeout"),
    ("spendwatch_decisions_total", "counter", "kind, rule", "detection decisions"),
    ("spendwatch_findings_total", "counter", "kind", "unsettled, shadow_spend, amount_mismatch"),
    ("spendwatch_anomaly_score", "histogram", "model", "anomaly scores"),
    ("spendwatch_anomaly_high_total", "counter", "model", "scores a model flagged"),
    ("spendwatch_events_total", "counter", "source", "valid events processed (facilitator, chain)"),
    ("spendwatch_event_latency_seconds", "histogram", "", "event time to processing"),
    ("spendwatch_consumed_total", "counter", "", "records consumed"),
    ("spendwatch_duplicates_total", "counter", "", "redeliveries dropped"),
    ("spendwatch_dead_letters_total", "counter", "reason", "records dead-lettered"),
    ("spendwatch_stage_errors_total", "counter", "stage", "partition batches a stage raised on"),
    ("spendwatch_consumer_lag_records", "gauge", "topic, partition", "high watermark - next offset to process"),
    ("spendwatch_partitions_owned", "gauge", "", "input partitions this process owns"),
    ("spendwatch_bridge_confirmed_timestamp_seconds", "gauge", "network, token", "how far each chain bridge "
     "confirmed, as the owned partitions know it (oldest of them)"),
    ("spendwatch_tracked_agents", "gauge", "", "agents with rolling windows"),
    ("spendwatch_checkpoints_total", "counter", "", "state checkpoints written"),
    ("spendwatch_late_payments", "gauge", "", "payments older than every window (owned partitions)"),
    ("spendwatch_window_saturations", "gauge", "", "window sums held at the int64 limit (owned partitions)"),
    ("spendwatch_dedupe_forced_rotations", "gauge", "", "dedupe memory rotated early (owned partitions)"),
    ("spendwatch_join_held_dropped", "gauge", "", "settles held for the bridge dropped by dedupe.max_entries "
     "(owned partitions)"),
    ("spendwatch_join_held_shadows_dropped", "gauge", "", "transfers held for their settles while catching up, "
     "judged early at dedupe.max_entries (owned partitions)"),
    ("spendwatch_webhooks_total", "counter", "outcome", "webhook attempts"),
    ("spendwatch_webhook_duration_seconds", "histogram", "", "webhook latency"),
    ("spendwatch_statements_published_total", "counter", "", "daily statement rows published"),
    ("spendwatch_agents_ranked", "gauge", "", "agents with per-agent series"),
    ("spendwatch_metrics_refresh_seconds", "gauge", "", "last top-N refresh duration"),
    ("spendwatch_agents_capped", "gauge", "kind", "open or escalated agents left without series by max_pinned"),
    ("spendwatch_build_info", "gauge", "version", "build information"),
]
