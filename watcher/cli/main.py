"""`spendwatch`: the command line. Each subcommand lives in its own module with a `register()`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

from watcher.errors import SpendwatchError

# modules that add subcommands; optional ones may be absent while a feature is being built
COMMANDS = ["watcher.cli.run", "watcher.cli.simulate", "watcher.cli.demo", "watcher.cli.checkconfig",
            "watcher.cli.bench"]
OPTIONAL = ["watcher.chain.cli", "watcher.detect.cli", "watcher.observe.cli", "watcher.breaker.cli",
            "watcher.tap.cli"]


def setup_logging(level: str = "INFO") -> None:
    # logs on stderr: stdout carries what a command prints (--json summaries, decisions with --out -)
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=True,
                          log_time_format="%H:%M:%S")
    logging.basicConfig(level=level.upper(), format="%(name)s: %(message)s", handlers=[handler], force=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spendwatch",
        description="Watch what autonomous AI agents spend over x402 (USDC on an EVM chain), keep exact "
                    "rolling per-agent budgets from Kafka, and stop runaway agents.",
        epilog="Start with `spendwatch demo --duration 30`. Configuration: README, section Configuration.")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log verbosity (default: log_level of the configuration file, else INFO)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    for name in OPTIONAL:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.log_level or "INFO")
    try:
        return int(args.func(args) or 0)
    except SpendwatchError as exc:
        logging.getLogger("spendwatch").error("%s", exc)
        return 1
    except OSError as exc:  # a port in use, a file that cannot be read: say what, not a traceback
        logging.getLogger("spendwatch").error("%s (%s); if a port is in use, choose another in the "
                                              "configuration (admin.port, metrics.port) or stop what holds it",
                                              exc, type(exc).__name__)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
