"""`spendwatch chain`: run the chain bridge (EVM node -> Kafka topic x402.chain)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from watcher.chain.config import ChainSettings, load_settings

log = logging.getLogger("spendwatch.chain")



def _default(value) -> str:
    """A key's default as written in TOML, for the list of keys; none for keys without one."""
    if value is None or value == ():
        return ""
    return f" (default {str(value).lower() if isinstance(value, bool) else value})"


_KEYS = "\n".join(f"  {name:24} {f.description}{_default(f.default)}"
                  for name, f in ChainSettings.model_fields.items())

DESCRIPTION = f"""\
Follow the token contract (USDC on Base by default) on an EVM node and publish every transfer out of a
watched wallet to Kafka (topic x402.chain, key = payer wallet) as a chain.transfer JSON record:
`pending` when first seen, `confirmed` after N blocks, `reverted` if a reorg drops its block. EIP-3009
payments (x402 "exact") are joined with their AuthorizationUsed log and carry the agent and the nonce.
As blocks get confirmed (at most once per progress_interval_seconds) a chain.progress record goes to every
partition: every confirmed transfer up to that block is published, so the watcher knows how far the bridge
has confirmed even on a partition with no traffic.

With ws_url the bridge subscribes to new heads and to the token's Transfer/AuthorizationUsed logs; with
only http_url it polls. On start it resumes from its checkpoint file (no gap, no harm in overlap: record
ids are chain id + tx hash + log index).

Prometheus metrics (head, lag, records by status, reorgs, errors) are served at
http://METRICS_HOST:METRICS_PORT/metrics (default 127.0.0.1:9465; metrics_port = 0 takes a free port and
logs it, "off" serves none).

Configuration: the [chain] table of --config FILE; SPENDWATCH_CHAIN__<KEY> environment variables override
it (lists as JSON, e.g. SPENDWATCH_CHAIN__WATCHED_WALLETS='["0x.."]'); options below override both.
Keys of [chain]:
{_KEYS}
"""

EPILOG = """\
SIGINT or SIGTERM: the block being read is completed, then exit 0. Exit 1 with the reason (a bad
configuration names the key and the fix): Kafka unreachable at start, a node on another chain than
chain_id, the /metrics port in use, a checkpoint file that cannot be read. A node that cannot be reached,
or Kafka lost later, does not stop it: it reconnects with a back-off from reconnect_min_seconds doubling
to reconnect_max_seconds (a WARNING each time) and resumes from its checkpoint.

examples:
  spendwatch chain --config spendwatch.toml --check
  spendwatch chain --config spendwatch.toml
  spendwatch chain --ws-url wss://base.example/ws --wallet 0x2f62eEBC5e3EbF1B4c0aA3c2f9d3a4b0E0f2C9a1 \\
    --bootstrap kafka:9092
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("chain", help="publish on-chain USDC transfers of watched agents to Kafka",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", type=Path,
                   help="TOML file with a [chain] table (keys listed above)")
    p.add_argument("--ws-url", metavar="URL", help="WebSocket RPC endpoint, ws:// or wss:// (chain.ws_url)")
    p.add_argument("--http-url", metavar="URL", help="HTTP RPC endpoint, polled when there is no "
                   "WebSocket one (chain.http_url)")
    p.add_argument("--chain-id", type=int, metavar="ID", help="expected chain id (chain.chain_id, default 8453)")
    p.add_argument("--token", metavar="ADDRESS", help="ERC-20 contract (chain.token, default USDC on Base)")
    p.add_argument("--confirmations", type=int, metavar="N", help="blocks before `confirmed` "
                   "(chain.confirmations; default per chain, Base 10)")
    p.add_argument("--wallet", action="append", metavar="ADDRESS", dest="wallets",
                   help="a wallet to watch; repeat for more (added to chain.watched_wallets)")
    p.add_argument("--watch-all", action="store_true", default=None,
                   help="publish every transfer of the token (chain.watch_all)")
    p.add_argument("--checkpoint", type=Path, metavar="FILE", help="checkpoint file (chain.checkpoint_path, "
                   "default .spendwatch/chain-checkpoint.json)")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers "
                   "(chain.kafka_bootstrap, default 127.0.0.1:9092; the environment variable is "
                   "SPENDWATCH_CHAIN__KAFKA_BOOTSTRAP, not SPENDWATCH_KAFKA__BOOTSTRAP)")
    p.add_argument("--topic", help="Kafka topic (chain.topic, default x402.chain)")
    p.add_argument("--metrics-port", metavar="PORT", help="port of /metrics (chain.metrics_port, default "
                   "9465; 0: a free port, logged; off: none)")
    p.add_argument("--check", action="store_true", help="validate the configuration, print it, and exit")
    p.set_defaults(func=cmd_chain)


# key of [chain] -> (its option, the argparse dest); a bad value of an option given is reported under it
OPTIONS = {"ws_url": ("--ws-url", "ws_url"), "http_url": ("--http-url", "http_url"),
           "chain_id": ("--chain-id", "chain_id"), "token": ("--token", "token"),
           "confirmations": ("--confirmations", "confirmations"), "watch_all": ("--watch-all", "watch_all"),
           "checkpoint_path": ("--checkpoint", "checkpoint"), "kafka_bootstrap": ("--bootstrap", "bootstrap"),
           "topic": ("--topic", "topic"), "metrics_port": ("--metrics-port", "metrics_port")}


def settings_from_args(args: argparse.Namespace) -> ChainSettings:
    overrides = {key: getattr(args, dest) for key, (_, dest) in OPTIONS.items()}
    if args.wallets:
        overrides["extra_wallets"] = args.wallets
    return load_settings(args.config, flags={key: flag for key, (flag, _) in OPTIONS.items()}, **overrides)


async def run_bridge(settings: ChainSettings) -> dict:
    from prometheus_client import CollectorRegistry

    from watcher.chain.bridge import ChainBridge
    from watcher.chain.metrics import ChainMetrics, serve_chain_metrics
    from watcher.chain.publisher import KafkaPublisher

    loop = asyncio.get_running_loop()
    metrics = ChainMetrics(CollectorRegistry(), settings.chain_id, settings.token)
    async with contextlib.AsyncExitStack() as stack:
        if settings.metrics_port != "off":  # first: a taken port fails before anything connects
            # logs the address it bound ("serving /metrics on http://..."): with port 0, the one the OS chose
            await stack.enter_async_context(serve_chain_metrics(metrics, settings.metrics_host,
                                                                settings.metrics_port))
        else:
            log.info("chain bridge: no /metrics (chain.metrics_port is off)")
        pub = await stack.enter_async_context(KafkaPublisher(settings.kafka_bootstrap, settings.topic))
        bridge = ChainBridge(settings, pub, metrics)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bridge.stop)
        try:
            await bridge.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    return dict(bridge.stats)


def cmd_chain(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.check:
        print(settings.model_dump_json(indent=2))
        return 0
    log.info("chain bridge: chain %d token %s, %s, %d confirmations -> %s topic %s", settings.chain_id,
             settings.token, "every transfer" if settings.watch_all else "watched wallets",
             settings.required_confirmations, settings.kafka_bootstrap, settings.topic)
    stats = asyncio.run(run_bridge(settings))
    log.info("chain bridge stopped: %s", stats)
    return 0
