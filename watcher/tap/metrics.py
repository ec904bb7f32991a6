"""The facilitator tap's Prometheus metrics, on an injected registry (tests pass a fresh one).

    spendwatch_tap_records_total{kind, outcome}     outcome: published | dropped | failed_retry | unrecordable
    spendwatch_tap_buffer_records                   records waiting for Kafka
    spendwatch_tap_refused_total{where, state}      where: verify | settle; state: open | held | unknown | no_payer
    spendwatch_tap_breaker_unknown_total{mode}      a payment's breaker state could not be known, or it names no
                                                    payer the tap can read (mode: open | closed)
    spendwatch_tap_breaker_view_stale               1 while the breaker view is not current (alert on it)
    spendwatch_tap_upstream_seconds{call}           upstream facilitator latency (proxy)
    spendwatch_tap_requests_total{call, status}     proxy requests answered
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class TapMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records = Counter("spendwatch_tap_records", "facilitator records by outcome", ["kind", "outcome"],
                               registry=r)
        self.buffer = Gauge("spendwatch_tap_buffer_records", "records waiting for Kafka", registry=r)
        self.refused = Counter("spendwatch_tap_refused", "payments refused for a frozen payer",
                               ["where", "state"], registry=r)
        self.breaker_unknown = Counter("spendwatch_tap_breaker_unknown",
                                       "payments whose payer's breaker state was unknown", ["mode"], registry=r)
        self.view_stale = Gauge("spendwatch_tap_breaker_view_stale",
                                "1 while the breaker view is not current", registry=r)
        self.upstream = Histogram("spendwatch_tap_upstream_seconds", "upstream facilitator latency", ["call"],
                                  buckets=BUCKETS, registry=r)
        self.requests = Counter("spendwatch_tap_requests", "proxy requests answered", ["call", "status"],
                                registry=r)
