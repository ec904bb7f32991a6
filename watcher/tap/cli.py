"""`spendwatch facilitator`: the facilitator tap as a service (see watcher.tap.proxy)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from watcher.errors import ConfigError

log = logging.getLogger("spendwatch.tap")

DESCRIPTION = """\
An x402 facilitator in front of an upstream one (hosted, or self-run): POST /verify, POST /settle and
GET /supported (protocol v1 and v2) are forwarded unchanged, and every answer becomes an x402.verify /
x402.settle record on Kafka (topic x402.payments, key = payer wallet) for the watcher. A payer whose
breaker is open or held is refused at /verify and /settle without calling upstream (HTTP 200, isValid /
success false, reason spendwatch_agent_frozen or spendwatch_agent_held): the merchant answers 402.

Point the merchant's x402 middleware at it:
    HTTPFacilitatorClient(FacilitatorConfig(url="http://127.0.0.1:8402"))

Breaker state comes from the watcher: the watcher.breaker topic (default) or the admin API
(--admin-url + SPENDWATCH_ADMIN_TOKEN). When it cannot be known (topic unread, admin API down) the tap
lets payments through (--fail open, the default; counted in spendwatch_tap_breaker_unknown_total and
flagged by spendwatch_tap_breaker_view_stale = 1) or refuses them (--fail closed: reason
spendwatch_breaker_unavailable). The same goes for a payment whose payer the tap cannot read (no
authorization or permit2Authorization `from`, e.g. a non-EVM scheme, or a malformed body): forwarded and
counted with --fail open, refused with --fail closed (reason spendwatch_payer_unknown, counted in
spendwatch_tap_refused_total{state="no_payer"}).

Kafka being down never slows or fails a payment: records wait in a bounded buffer (--buffer), then are
dropped and counted (spendwatch_tap_records_total{outcome="dropped"}).
Also served on the same port: GET /healthz (JSON), GET /metrics (Prometheus; scrape it for the Tap* alerts).
It reads no configuration file: options and the environment variables named below only.

SIGINT or SIGTERM: stop and log the counts, exit 0. Exit 1 with the reason if --upstream is not an http(s)
URL, the port is taken, or --admin-url is given without SPENDWATCH_ADMIN_TOKEN. Kafka or the breaker view
being unreachable does not stop it (see above): it logs a WARNING per retry.

examples:
  spendwatch facilitator --upstream https://x402.org/facilitator --bootstrap kafka:9092
  spendwatch facilitator --upstream http://127.0.0.1:4022 --admin-url http://127.0.0.1:8742 --fail closed
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("facilitator", help="x402 facilitator tap: forward to an upstream facilitator, "
                              "record payments, refuse frozen agents", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True, metavar="URL",
                   help="the facilitator to forward to (its base URL; /verify, /settle, /supported are appended)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8402, help="port (default 8402; 0 = a free one)")
    p.add_argument("--name", default="spendwatch-tap",
                   help="facilitator name written in every record (default spendwatch-tap)")
    p.add_argument("--bootstrap", default=os.environ.get("SPENDWATCH_KAFKA__BOOTSTRAP", "127.0.0.1:9092"),
                   metavar="HOST:PORT", help="Kafka bootstrap servers (default $SPENDWATCH_KAFKA__BOOTSTRAP "
                   "or 127.0.0.1:9092)")
    p.add_argument("--topic", default="x402.payments", help="payments topic (default x402.payments)")
    p.add_argument("--buffer", type=int, default=10_000, metavar="N",
                   help="records held while Kafka is unreachable before drops (default 10000)")
    p.add_argument("--breaker-topic", default="watcher.breaker", metavar="TOPIC",
                   help="the watcher's breaker topic, read from the beginning (default watcher.breaker)")
    p.add_argument("--admin-url", metavar="URL",
                   help="read breaker state from the watcher's admin API instead of the topic (token in "
                        "$SPENDWATCH_ADMIN_TOKEN; one daemon, at most 1000 open and 1000 held agents: past that, "
                        "agents it does not list count as unknown)")
    p.add_argument("--refresh-seconds", type=float, default=2.0, metavar="SECONDS",
                   help="admin API poll interval (default 2)")
    p.add_argument("--stale-seconds", type=float, default=30.0, metavar="SECONDS",
                   help="breaker state older than this counts as unknown (default 30)")
    p.add_argument("--fail", choices=["open", "closed"], default="open",
                   help="when breaker state is unknown, or the payer cannot be read from the payment: open = let "
                        "payments through (default), closed = refuse them")
    p.add_argument("--no-breakers", action="store_true", help="record only; refuse nobody")
    p.add_argument("--upstream-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="upstream request timeout (default 60; settles wait for the chain)")
    p.set_defaults(func=cmd_facilitator)


def _view(args: argparse.Namespace):
    from watcher.tap.breakers import AdminBreakerView, TopicBreakerView

    if args.no_breakers:
        return None
    if args.admin_url:
        token = os.environ.get("SPENDWATCH_ADMIN_TOKEN", "")
        if not token:
            raise ConfigError("--admin-url needs the admin API's bearer token", key="SPENDWATCH_ADMIN_TOKEN",
                              fix="export SPENDWATCH_ADMIN_TOKEN=<admin.token>, or read the breaker topic instead")
        return AdminBreakerView(args.admin_url, token, refresh_seconds=args.refresh_seconds,
                                stale_after_seconds=args.stale_seconds)
    return TopicBreakerView(args.bootstrap, args.breaker_topic, stale_after_seconds=args.stale_seconds)


async def serve(args: argparse.Namespace, *, ready=None, stop: asyncio.Event | None = None) -> dict:
    """Run the tap until SIGINT/SIGTERM (or `stop`); returns the final counts."""
    from contextlib import AsyncExitStack

    from watcher.tap.breakers import Gate
    from watcher.tap.metrics import TapMetrics
    from watcher.tap.proxy import TapProxy
    from watcher.tap.publisher import TapPublisher

    if not args.upstream.startswith(("http://", "https://")):
        raise ConfigError(f"--upstream {args.upstream!r} is not an http(s) URL", key="--upstream",
                          fix="give the facilitator's base URL, e.g. https://x402.org/facilitator")
    metrics = TapMetrics()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        pub = await stack.enter_async_context(TapPublisher(args.bootstrap, args.topic, max_buffer=args.buffer,
                                                           metrics=metrics))
        view = _view(args)
        gate = None
        if view is not None:
            await stack.enter_async_context(view)
            gate = Gate(view, fail_mode=args.fail, metrics=metrics)
        proxy = await stack.enter_async_context(TapProxy(args.upstream, pub, gate, name=args.name, host=args.host,
                                                         port=args.port, metrics=metrics,
                                                         upstream_timeout_seconds=args.upstream_timeout))
        log.info("spendwatch facilitator on %s -> %s (records to %s/%s; breakers: %s, fail %s)", proxy.url,
                 args.upstream, args.bootstrap, args.topic, type(view).__name__ if view else "none", args.fail)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready(proxy)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        counts = dict(proxy.counts)
    counts.update(published=pub.published, dropped=pub.dropped)
    log.info("facilitator tap stopped: %s", counts)
    return counts


def cmd_facilitator(args: argparse.Namespace) -> int:
    asyncio.run(serve(args))
    return 0
