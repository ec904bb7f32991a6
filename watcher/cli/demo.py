"""`spendwatch demo`: broker, simulator and daemon together, with a live terminal view."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler

from watcher.breaker.cli import add_webhook_options, breaker_config_from
from watcher.cli.common import add_kafka_options, settings_from
from watcher.cli.run import log_start
from watcher.cli.simulate import add_fleet_options, fleet_from

if TYPE_CHECKING:
    from watcher.daemon import Daemon

log = logging.getLogger("watcher.demo")
DEMO_POLICY = Path(__file__).resolve().parents[2] / "examples" / "demo-policy.toml"


DESCRIPTION = """\
Everything on one machine: start the embedded memory-only broker (unless --bootstrap or kafka.bootstrap),
publish synthetic traffic (as `spendwatch simulate`), run the watcher (as `spendwatch run`, in the group
<kafka.group>-demo, with examples/demo-policy.toml unless detect.policy_file is set: its cap of 30 USDC
a minute freezes agent-runaway soon after its retry storm starts) and show a live view: top agents by
spend per window, latest decisions, events/s, dead letters. Its /metrics and admin API take free ports
(logged) unless --admin-port, SPENDWATCH_ADMIN__PORT or SPENDWATCH_METRICS__PORT say otherwise. The
simulated wallets stop paying once frozen, as the facilitator tap would make them.

With --duration the simulator stops after that long, the watcher drains what was published, and a
summary is printed on stdout (records, dead letters by reason, decisions, frozen agents, top spender);
exit 0. Without it, Ctrl-C stops it the same way. Exit 1 with a message if something cannot start.
--real-chain runs the real x402 loop instead (see its option).
"""

EPILOG = """\
examples:
  spendwatch demo --duration 30
  spendwatch demo --bootstrap localhost:9092 --agents 500 --rate 1000
  spendwatch demo --real-chain
"""


def register(sub) -> None:
    p = sub.add_parser("demo", help="run broker, simulator and watcher together with a live view",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_kafka_options(p)
    add_fleet_options(p)
    add_webhook_options(p)
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="publish for this long, let the watcher drain, print a summary and exit 0 "
                   "(default: until Ctrl-C)")
    p.add_argument("--refresh", type=float, default=2.0, metavar="PER_S",
                   help="view refreshes per second (default 2)")
    p.add_argument("--real-chain", action="store_true", help="instead of the simulator, run the real x402 loop "
                   "on loopback: anvil + test USDC, the x402 SDK facilitator behind `spendwatch facilitator`, "
                   "a FastAPI merchant, agents paying with the SDK's httpx client, the chain bridge and the "
                   "watcher (needs node/npm: the npm packages in tools/npm are installed on first use)")
    p.add_argument("--payments", type=int, default=3, metavar="N",
                   help="with --real-chain: paid requests per honest agent (default 3)")
    p.set_defaults(func=cmd_demo)


async def _demo(args) -> int:
    from watcher.embedded import kafka_settings
    from watcher.simulate.publish import run_simulator
    from watcher.stages import build
    from watcher.view import LiveView

    settings = settings_from(args)
    async with kafka_settings(settings, args.bootstrap) as s:
        s = s.model_copy(update={"kafka": s.kafka.model_copy(update={
            "group": f"{s.kafka.group}-demo", "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000})})
        fleet = fleet_from(args)
        s = s.model_copy(update={"categories": {**fleet.categories(), **s.categories}})
        # the demo never fights over fixed ports: its admin API and /metrics take free ones unless configured
        if "SPENDWATCH_ADMIN__PORT" not in os.environ and not getattr(args, "admin_port", None):
            s = s.model_copy(update={"admin": s.admin.model_copy(update={"port": 0})})
        if "SPENDWATCH_METRICS__PORT" not in os.environ:
            s = s.model_copy(update={"metrics": s.metrics.model_copy(update={"port": 0})})
        if not s.detect.policy_file:
            s = s.model_copy(update={"detect": s.detect.model_copy(update={"policy_file": str(DEMO_POLICY)})})
        assembly = build(s, breaker=breaker_config_from(args, s), names=fleet.names())
        log_start(s, assembly, "spendwatch demo")

        def honour_freezes(d) -> None:  # the simulated wallets stop paying once frozen, as a tap would
            fleet.blocked = {a for _, a, v in assembly.breaker.breakers()
                             if v["state"] in ("open", "held")}

        daemon = assembly.daemon(on_batch=honour_freezes)
        daemon.breaker_stage = assembly.breaker
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        from watcher.sources.kafka import ensure_topics
        await ensure_topics(s.kafka)
        daemon_task = asyncio.create_task(daemon.run(), name="daemon")
        await asyncio.wait({daemon_task, asyncio.create_task(daemon.started.wait())},
                           return_when=asyncio.FIRST_COMPLETED)
        if daemon_task.done():
            return daemon_task.result() or 1
        sim_task = asyncio.create_task(run_simulator(s.kafka, fleet, rate_per_s=args.rate,
                                                     duration_s=args.duration, stop=stop), name="simulator")
        console = Console()
        for handler in logging.getLogger().handlers:  # log lines go above the live view, not through it
            if isinstance(handler, RichHandler):
                handler.console = console
        view = LiveView(daemon, fleet.names(), title="spendwatch demo (embedded broker is memory-only)"
                        if not (args.bootstrap or settings.kafka.bootstrap) else "spendwatch demo")
        with Live(view, console=console, refresh_per_second=args.refresh, transient=False,
                  redirect_stderr=False, vertical_overflow="crop"):
            done, _ = await asyncio.wait({sim_task, daemon_task}, return_when=asyncio.FIRST_COMPLETED)
            if sim_task in done and not daemon_task.done():
                # let the watcher drain what was published, then stop it
                target = fleet.truth.published
                for _ in range(600):  # at most a minute on a busy machine
                    if daemon.counters.consumed >= target:
                        break
                    await asyncio.sleep(0.1)
        stop.set()
        daemon.request_stop()
        await asyncio.gather(sim_task, daemon_task)
        _summary(console, daemon, fleet)
    return 0


def _summary(console: Console, daemon: Daemon, fleet) -> None:
    from watcher.view import top_agents

    c = daemon.counters
    print(f"summary: published {fleet.truth.published:,} records, consumed {c.consumed:,}, "
                  f"processed {c.processed:,}, dead-lettered {c.dead_lettered:,} "
                  f"({', '.join(f'{k}={v}' for k, v in sorted(daemon.dlq_reasons.items())) or 'none'}), "
                  f"duplicates {c.duplicates:,}, agents {daemon.tracked_agents():,}")
    top = top_agents(daemon.shards, 3)
    names = fleet.names()
    counts = daemon.decision_counts
    print(f"decisions: freeze {counts['freeze']}, escalate {counts['escalate']}, warn {counts['warn']}")
    for _, agent, b in daemon.breaker_stage.breakers():
        first = next((d for d in daemon.recent_decisions if d.kind == "freeze" and d.agent == agent), None)
        why = f"{first.rule}: {first.reason}" if first else b.get("cause", "")
        print(f"{b['state'].upper().replace('OPEN', 'FROZEN')} {names.get(agent, agent)} ({agent}): breaker "
              f"{b['state']}, trips {b.get('trips', 0)}; {why}")
    if top:
        wallet, sums, _ = top[0]
        print(f"top spender over the last minute: {names.get(wallet, wallet)} ({wallet}) "
                      f"{sums[0] / 1e6:,.6f} USDC")


def cmd_demo(args) -> int:
    if args.real_chain:
        from watcher.realdemo import run_real_demo

        return asyncio.run(run_real_demo(args))
    return asyncio.run(_demo(args))
