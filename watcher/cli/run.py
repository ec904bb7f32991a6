"""`spendwatch run`: the daemon."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from watcher.breaker.cli import add_webhook_options, breaker_config_from
from watcher.cli.common import add_kafka_options, settings_from

if TYPE_CHECKING:
    from watcher.config import Settings
    from watcher.stages import Assembly


def register(sub) -> None:
    p = sub.add_parser("run", help="run the watcher daemon", description=(
        "Consume x402.payments and x402.chain, keep exact rolling per-agent spend windows, dead-letter bad "
        "records, decide (policies + anomaly models), trip per-agent breakers (signed freeze webhooks, admin "
        "API), export /metrics and daily statements, checkpoint state to Kafka. SIGTERM or SIGINT: finish "
        "the batch, checkpoint, commit, flush the outbox, exit 0."))
    add_kafka_options(p)
    add_webhook_options(p)
    p.set_defaults(func=cmd_run)


def assemble(settings: Settings, args, breaker=None) -> Assembly:
    """The daemon's stages and services from the settings and the command line: the breaker's tables with
    --webhook-url / --admin-port applied, and the names of agents.registry_file (webhook bodies, admin API)."""
    from watcher.stages import build

    return build(settings, breaker=breaker or breaker_config_from(args, settings), names=settings.agents.names)


async def run_daemon(args) -> int:
    from watcher.embedded import kafka_settings

    settings = settings_from(args)
    breaker = breaker_config_from(args, settings)  # a bad --webhook-url fails before a broker starts
    async with kafka_settings(settings, args.bootstrap) as s:
        daemon = assemble(s, args, breaker).daemon()
        daemon.install_signal_handlers()
        await daemon.run()
    return 0


def cmd_run(args) -> int:
    return asyncio.run(run_daemon(args))
