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

from watcher.lazy import lazy_names

# imported on first use (PEP 562), so `spendwatch --help` does not load the x402 SDK and aiohttp
_WHERE = {"TapPublisher": "publisher", "wire_facilitator": "hooks", "FacilitatorTap": "hooks",
          "TapProxy": "proxy", "Gate": "breakers", "TopicBreakerView": "breakers",
          "AdminBreakerView": "breakers", "StaticBreakerView": "breakers", "TapMetrics": "metrics",
          "LocalFacilitator": "local", "run_tap_bench": "bench"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_names(__name__, _WHERE)
