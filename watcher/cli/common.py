"""Options shared by several subcommands."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from watcher.config import Settings


def add_kafka_options(p: argparse.ArgumentParser, *, embedded: bool = True) -> None:
    """--config and --bootstrap; `embedded=False` for commands that need a Kafka that keeps its data."""
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (see README, Configuration); "
                   "SPENDWATCH_<SECTION>__<KEY> environment variables override it")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help=(
        "Kafka bootstrap servers; without it (and without kafka.bootstrap) the embedded memory-only Tansu "
        "broker is started" if embedded else "Kafka bootstrap servers (default: kafka.bootstrap); required"))


def settings_from(args: argparse.Namespace) -> Settings:
    import logging

    from watcher.config import load_settings  # imported when a command runs: `--help` stays fast

    settings = load_settings(getattr(args, "config", None))
    if getattr(args, "log_level", None) is None:  # --log-level wins over the file's log_level
        logging.getLogger().setLevel(settings.log_level)
    return settings
