"""`spendwatch`: the command line. Each subcommand lives in its own module with a `register()`."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

from watcher.errors import SpendwatchError

# modules that add subcommands; optional ones may be absent while a feature is being built
COMMANDS = ["watcher.cli.run", "watcher.cli.simulate", "watcher.cli.demo", "watcher.cli.checkconfig",
            "watcher.cli.deadletters", "watcher.cli.bench"]
OPTIONAL = ["watcher.chain.cli", "watcher.detect.cli", "watcher.observe.cli", "watcher.breaker.cli",
            "watcher.tap.cli"]


def setup_logging(level: str = "INFO") -> None:
    # logs on stderr: stdout carries what a command prints (--json summaries, decisions with --out -)
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=True,
                          log_time_format="%H:%M:%S")
    logging.basicConfig(level=level.upper(), format="%(name)s: %(message)s", handlers=[handler], force=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per admin API call buries the answer


LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
LOG_LEVEL_HELP = ("log verbosity (default INFO; run, demo, simulate, deadletters and statement take log_level "
                  "from their --config file; given here, this wins)")

EPILOG = """\
Start with `spendwatch demo --duration 30` (embedded broker, simulated fleet, about 40 s).
In production: `spendwatch run --config spendwatch.toml` (the daemon; N copies share the work),
`spendwatch chain --config spendwatch.toml` (on-chain transfers), `spendwatch facilitator --upstream URL`
(payments from a facilitator, refusals of frozen agents); check a file first with `spendwatch check-config`.
`spendwatch COMMAND --help` describes each command, with examples.

Configuration: one TOML file (--config), overridden by SPENDWATCH_<SECTION>__<KEY> environment variables
(e.g. SPENDWATCH_KAFKA__BOOTSTRAP=broker:9092); every key is in examples/spendwatch.toml and in the
README's Configuration table. --log-level may come before or after the command.

Exit status: 0 done (the long-running commands after SIGTERM or Ctrl-C); 1 an error, logged on stderr
with what to fix (a bad configuration names the file and the key; Kafka unreachable; a port in use);
2 wrong usage; 130 Ctrl-C in a command that
has no graceful stop (eval, bench).
"""


class _Parser(argparse.ArgumentParser):
    """Every (sub)command parser accepts --log-level, so `spendwatch run --log-level DEBUG` works as well as
    `spendwatch --log-level DEBUG run`; given after the command it wins."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--log-level", default=argparse.SUPPRESS, type=str.upper, choices=LEVELS,
                          help=LOG_LEVEL_HELP)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spendwatch")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="spendwatch",
        description="Watch what autonomous AI agents spend over x402 (USDC on an EVM chain), keep exact "
                    "rolling per-agent budgets from Kafka, and stop runaway agents.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"spendwatch {_version()}")
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


# what to change when a command cannot bind its port
PORT_HINTS = {
    "run": "admin.port (--admin-port, SPENDWATCH_ADMIN__PORT) or metrics.port (SPENDWATCH_METRICS__PORT); "
           "port 0 takes a free one",
    "demo": "--admin-port, SPENDWATCH_ADMIN__PORT or SPENDWATCH_METRICS__PORT (without them the demo takes free "
            "ports)",
    "chain": "chain.metrics_port (--metrics-port; 0 takes a free port, off serves none)",
    "facilitator": "--port (0 takes a free one)",
}


def _os_error_hint(exc: OSError, command: str | None) -> str:
    if exc.errno == errno.EADDRINUSE:
        where = PORT_HINTS.get(command or "", "the port in the configuration")
        return f"another process holds that port: stop it, or choose another port: {where}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied: check the file's owner and mode (or, for a port below 1024, use a higher one)"
    if exc.errno in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR):
        return "check the path (a relative path in a configuration file is relative to that file's folder)"
    return "see the error above"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(getattr(args, "log_level", None) or "INFO")
    try:
        return int(args.func(args) or 0)
    except SpendwatchError as exc:
        logging.getLogger("spendwatch").error("%s", exc)
        return 1
    except OSError as exc:  # a port in use, a file that cannot be read: say what, not a traceback
        logging.getLogger("spendwatch").error("%s (%s); %s", exc, type(exc).__name__,
                                              _os_error_hint(exc, getattr(args, "command", None)))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
