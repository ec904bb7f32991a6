"""The facilitator tap: x402 facilitator records to Kafka, and frozen payers refused at the facilitator.

    records.py    x402.settle / x402.verify records (issue A's format), stable ids, Kafka key
    publisher.py  TapPublisher: bounded buffer, background Kafka producer, counted drops
    breakers.py   BreakerView (watcher.breaker topic, admin API, static) and the Gate (fail open/closed)
    hooks.py      wire_facilitator(fac, publisher, view): hooks for the SDK's x402Facilitator(Sync)
    proxy.py      TapProxy: `spendwatch facilitator`, an HTTP facilitator in front of an upstream one
    cli.py        `spendwatch facilitator` (register(subparsers))
    local.py      LocalFacilitator: the SDK's facilitator on a dev chain over HTTP; ServerThread
    loop.py       a FastAPI merchant with the SDK middleware, and paying agents (tests, demo)
    metrics.py    TapMetrics (injected registry)
    bench.py      run_tap_bench(quick): proxy overhead p50/p99 against calling the upstream directly
"""

from importlib import import_module

_EXPORTS = {"TapPublisher": "publisher", "wire_facilitator": "hooks", "FacilitatorTap": "hooks",
            "TapProxy": "proxy", "Gate": "breakers", "TopicBreakerView": "breakers",
            "AdminBreakerView": "breakers", "StaticBreakerView": "breakers", "TapMetrics": "metrics",
            "LocalFacilitator": "local", "run_tap_bench": "bench"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"watcher.tap.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'watcher.tap' has no attribute {name!r}")
