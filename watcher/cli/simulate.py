"""`spendwatch simulate`: publish synthetic x402 traffic."""

from __future__ import annotations

import asyncio
import signal

from typing import TYPE_CHECKING

from watcher.cli.common import add_kafka_options, settings_from

if TYPE_CHECKING:
    from watcher.simulate.fleet import Fleet


def add_fleet_options(p) -> None:
    p.add_argument("--agents", type=int, default=100, help="agents in the fleet (default 100)")
    p.add_argument("--merchants", type=int, default=30, help="merchants (default 30)")
    p.add_argument("--rate", type=float, default=200.0, help="fleet payments per second at the daily peak "
                   "(default 200)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--runaway-after", type=float, default=15.0, metavar="SECONDS",
                   help="when agent-runaway starts its retry storm (default 15)")
    p.add_argument("--runaway-rate", type=float, default=20.0, metavar="PER_S",
                   help="payments per second of the runaway agent (default 20)")


def fleet_from(args) -> Fleet:
    from watcher.simulate.fleet import Fleet

    return Fleet(agents=args.agents, merchants=args.merchants, seed=args.seed,
                 runaway_after_s=args.runaway_after, runaway_per_s=args.runaway_rate)


def register(sub) -> None:
    p = sub.add_parser("simulate", help="publish synthetic x402 traffic to Kafka", description=(
        "Publish realistic synthetic x402 settle/verify records and chain transfers: a fleet with daily "
        "rhythms and bursts, redeliveries, a few malformed records, and one agent that runs away."))
    add_kafka_options(p)
    add_fleet_options(p)
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this long (default: until SIGINT/SIGTERM)")
    p.set_defaults(func=cmd_simulate)


async def _simulate(args) -> int:
    from watcher.embedded import kafka_settings
    from watcher.simulate.publish import run_simulator
    from watcher.sources.kafka import ensure_topics

    settings = settings_from(args)
    async with kafka_settings(settings, args.bootstrap) as s:
        await ensure_topics(s.kafka)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_simulator(s.kafka, fleet_from(args), rate_per_s=args.rate, duration_s=args.duration, stop=stop)
    return 0


def cmd_simulate(args) -> int:
    return asyncio.run(_simulate(args))
