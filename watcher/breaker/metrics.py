"""Prometheus metrics of breakers and webhook delivery, on an injected registry (tests pass their own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class BreakerMetrics:
    """`fleet` (optional): the daemon's watcher.metrics.Metrics, fed the per-agent breaker state, waiting
    escalations and webhook results its bounded agent series and alert rules use."""

    def __init__(self, registry: CollectorRegistry | None = None, fleet=None) -> None:
        r = CollectorRegistry() if registry is None else registry  # pass the daemon's registry to export
        self.fleet = fleet
        self.transitions = Counter("spendwatch_breaker_changes_total", "Breaker changes by kind",
                                   ["kind"], registry=r)
        self.deliveries = Counter("spendwatch_webhook_deliveries_total", "Webhook deliveries by type and outcome: "
                                  "delivered or dead (finished), disabled (not sent, no webhook.url: it stays in "
                                  "the outbox until a start with a url)", ["type", "outcome"], registry=r)
        self.attempts = Counter("spendwatch_webhook_attempts_total", "Webhook POST attempts by result "
                                "(2xx, 4xx, 5xx, error, timeout)", ["result"], registry=r)
        self.dead_letters = Counter("spendwatch_webhook_dead_letters_total", "Webhooks given up after the retry "
                                    "budget: ALERT on any increase", registry=r)
        self.pending = Gauge("spendwatch_webhook_pending", "Webhooks waiting for delivery", registry=r)
        self.oldest_pending = Gauge("spendwatch_webhook_oldest_pending_seconds", "Age of the oldest undelivered "
                                    "webhook", registry=r)
        self.latency = Histogram("spendwatch_webhook_delivery_seconds", "From the breaker change to the "
                                 "receiver's 2xx", buckets=(.005, .01, .025, .05, .1, .25, 1, 5, 30, 300, 3600),
                                 registry=r)
        self.notifications = Counter("spendwatch_notifications_total", "Slack / PagerDuty notifications by outcome",
                                     ["channel", "outcome"], registry=r)
        self.admin_requests = Counter("spendwatch_admin_requests_total", "Admin API requests by status",
                                      ["status"], registry=r)

    def changed(self, kind: str, breaker) -> None:
        """A breaker changed (`kind`: opened, held, half_open, closed, escalated, approved, expired,
        caps)."""
        self.transitions.labels(kind).inc()
        if self.fleet is not None:
            self.fleet.breaker_state(breaker.agent, breaker.state)
            self.fleet.escalation_waiting(breaker.agent, _waiting_since(breaker))

    def restored(self, breakers) -> None:
        """The breakers of a partition this process took over, as they are (no change is counted)."""
        if self.fleet is not None:
            self.fleet.restore([(b.agent, b.state, _waiting_since(b)) for b in breakers])

    def forgotten(self, agents) -> None:
        """Agents of a partition this process let go: another process exports their state now."""
        if self.fleet is not None:
            self.fleet.forget(agents)

    def attempt(self, result: str, seconds: float) -> None:
        """One webhook POST ended: `result` is 2xx, 4xx, 5xx, error or timeout."""
        self.attempts.labels(result).inc()
        if self.fleet is not None:
            self.fleet.webhook_result("ok" if result == "2xx" else result, seconds)


def _waiting_since(breaker) -> int | None:
    """When the breaker's escalation started waiting for a person (ms), or None if none waits."""
    return (breaker.escalation_ms or None) if breaker.escalation else None
