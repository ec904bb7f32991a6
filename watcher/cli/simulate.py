"""`spendwatch simulate`: publish synthetic x402 traffic."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from watcher.cli.common import add_kafka_options, settings_from

if TYPE_CHECKING:
    from watcher.simulate.fleet import Fleet

log = logging.getLogger("watcher.simulate")


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


DESCRIPTION = """\
Publish realistic synthetic x402 traffic in real time: settle and verify records (the facilitator's
x402.settle / x402.verify, v1 and v2) to x402.payments and, for part of the settles, the on-chain
chain.transfer of the same transaction to x402.chain, keyed by payer wallet. The fleet has daily rhythms
and bursts, redeliveries, failed verifications, a few malformed records (they end on watcher.deadletter),
and one agent, agent-runaway, that starts a retry storm after --runaway-after seconds (its wallet is
logged at start). Creates the topics when missing (kafka.create_topics). The same --seed gives the same
wallets and merchants.

Point it at the Kafka a `spendwatch run` reads: without --bootstrap (or kafka.bootstrap) the records go to
an embedded memory-only broker that is gone when simulate exits; to see the watcher at work on its own,
use `spendwatch demo`. Stops after --duration, or on SIGINT/SIGTERM, and logs how many records it
published; exit 0, or 1 if Kafka cannot be reached.
"""

EPILOG = """\
examples:
  spendwatch simulate --bootstrap kafka:9092 --duration 600
  spendwatch simulate --bootstrap kafka:9092 --agents 1000 --rate 2000 --runaway-after 60
"""


def register(sub) -> None:
    p = sub.add_parser("simulate", help="publish synthetic x402 traffic to Kafka", description=DESCRIPTION,
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_kafka_options(p)
    add_fleet_options(p)
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this long (default: until SIGINT/SIGTERM)")
    p.set_defaults(func=cmd_simulate)


def log_fleet(k, fleet: Fleet, args) -> None:
    r = fleet.runaway
    log.info("simulating %d agents and %d merchants, up to %g payments/s, %s, to %s topics %s and %s; "
             "%s (%s) runs away after %g s at %g payments/s", len(fleet.agents), len(fleet.merchants), args.rate,
             f"for {args.duration:g} s" if args.duration else "until stopped", k.bootstrap, k.payments_topic,
             k.chain_topic, r.name, r.wallet, args.runaway_after, args.runaway_rate)


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
        fleet = fleet_from(args)
        log_fleet(s.kafka, fleet, args)
        await run_simulator(s.kafka, fleet, rate_per_s=args.rate, duration_s=args.duration, stop=stop)
    return 0


def cmd_simulate(args) -> int:
    return asyncio.run(_simulate(args))
