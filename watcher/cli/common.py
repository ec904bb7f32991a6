"""Options shared by several subcommands."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
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


# SPENDWATCH_* variables read by name rather than as SPENDWATCH_<SECTION>__<KEY> settings, besides the
# breaker's secrets (watcher.breaker.config.ENV_ALIASES): the npm tools' locations
OTHER_ENV = {"SPENDWATCH_ANVIL", "SPENDWATCH_NPM_DIR", "SPENDWATCH_CACHE_DIR"}


def warn_unknown_env(sections: list[str], environ=os.environ) -> list[str]:
    """A SPENDWATCH_* variable that names no setting is ignored by the settings loader without a word (a typo
    such as SPENDWATCH_KAFKA_BOOTSTRAP, one underscore, would start the embedded broker): say so."""
    from watcher.breaker.config import ENV_ALIASES

    by_name = OTHER_ENV | set(ENV_ALIASES.values())
    unknown = []
    for name in sorted(environ):
        if not name.upper().startswith("SPENDWATCH_") or name.upper() in by_name:
            continue
        section = name[len("SPENDWATCH_"):].lower().split("__", 1)[0]
        if section in sections:
            continue
        unknown.append(name)
        head, _, tail = section.partition("_")
        guess = (f"SPENDWATCH_{head.upper()}__{tail.upper()}" if head in sections and tail else
                 next((f"SPENDWATCH_{m.upper()}__..." for m in difflib.get_close_matches(section, sections, 1)), ""))
        logging.getLogger("spendwatch").warning(
            "environment variable %s is not a spendwatch setting and is ignored%s; settings are "
            "SPENDWATCH_<SECTION>__<KEY> (two underscores), e.g. SPENDWATCH_KAFKA__BOOTSTRAP", name,
            f" (did you mean {guess}?)" if guess else "")
    return unknown


def settings_from(args: argparse.Namespace) -> Settings:
    from watcher.config import load_settings  # imported when a command runs: `--help` stays fast

    settings = load_settings(getattr(args, "config", None))
    warn_unknown_env(list(type(settings).model_fields))
    if getattr(args, "log_level", None) is None:  # --log-level wins over the file's log_level
        logging.getLogger().setLevel(settings.log_level)
    return settings
