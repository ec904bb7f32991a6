"""`spendwatch run`: the daemon."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import TYPE_CHECKING

from watcher.breaker.cli import add_webhook_options, breaker_config_from
from watcher.cli.common import add_kafka_options, settings_from

if TYPE_CHECKING:
    from watcher.config import Settings
    from watcher.stages import Assembly

log = logging.getLogger("watcher.run")

DESCRIPTION = """\
The watcher daemon. It consumes x402.payments (facilitator settle/verify records) and x402.chain (on-chain
transfers, from `spendwatch chain`) in the consumer group kafka.group, keeps exact rolling per-agent spend
windows, decides with the policy file (detect.policy_file; without one no cap, ceiling or budget is set,
so spend alone never freezes an agent) and trips per-agent breakers: a freeze is a signed webhook to
webhook.url.

Writes: watcher.decisions, watcher.findings, watcher.deadletter (bad records, with the reason: see `spendwatch
deadletters`), watcher.breaker (audit trail and webhook outbox), watcher.statements, watcher.checkpoints
(state with the input offsets it covers; restored after a restart or when partitions move). Listens on 127.0.0.1:9464
(/metrics, /healthz; metrics.host/port) and 127.0.0.1:8742 (admin.host/port: the admin API of `spendwatch
breaker`; needs admin.token or SPENDWATCH_ADMIN_TOKEN). Run N copies with the same configuration to share
the partitions.

Without --bootstrap or kafka.bootstrap it starts the embedded memory-only broker: fine to try, but
nothing (topics, offsets, checkpoints) survives its exit.

SIGTERM or SIGINT: finish the batch, checkpoint, commit, flush the outbox, exit 0. Exit 1 with a message
saying what to fix: a bad configuration (file, key, fix), Kafka unreachable, input topics whose partition
count is not kafka.partitions, a port in use, a checkpoint that cannot be restored.
"""

EPILOG = """\
examples:
  spendwatch check-config spendwatch.toml && spendwatch run --config spendwatch.toml
  SPENDWATCH_ADMIN_TOKEN=$(cat admin.token) SPENDWATCH_WEBHOOK_SECRET=$(cat hook.secret) \\
    spendwatch run --bootstrap kafka:9092 --webhook-url https://wallets.internal/freeze
  spendwatch run --log-level DEBUG --config spendwatch.toml
"""


def register(sub) -> None:
    p = sub.add_parser("run", help="run the watcher daemon", description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_kafka_options(p)
    add_webhook_options(p)
    p.set_defaults(func=cmd_run)


def log_start(settings: Settings, assembly: Assembly, what: str = "spendwatch run") -> None:
    """One line that says what the daemon is about to do: which Kafka, group and topics, which policy."""
    k = settings.kafka
    policy = assembly.detect.policy
    if settings.detect.policy_file:
        pol = f"policy {settings.detect.policy_file} (version {policy.version}; SIGHUP or a change reloads it)"
    else:
        pol = "no detect.policy_file: built-in defaults"
    outputs = [k.decisions_topic, k.findings_topic, k.dead_letter_topic, assembly.breaker_config.breaker.topic,
               k.checkpoint_topic] + ([settings.statements.topic] if settings.statements.enabled else [])
    log.info("%s: Kafka %s, group %s: consuming %s and %s (%d partitions each), writing %s; windows %s; %s",
             what, k.bootstrap, k.group, k.payments_topic, k.chain_topic, k.partitions, ", ".join(outputs),
             ", ".join(w.name for w in settings.windows), pol)
    if not settings.detect.policy_file:
        log.warning("no policy file (detect.policy_file): no cap, per-payment ceiling, budget or escalation "
                    "threshold is set, so spend alone never freezes an agent (findings and the anomaly models "
                    "still act); start from examples/policy.toml")


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
        assembly = assemble(s, args, breaker)
        log_start(s, assembly)
        daemon = assembly.daemon()
        daemon.install_signal_handlers()
        await daemon.run()
    return 0


def cmd_run(args) -> int:
    return asyncio.run(run_daemon(args))
