"""What the configuration loaders share (watcher.config, watcher.chain.config, watcher.breaker.config):
a path written in a config file is relative to that file's folder, and a validation error is reported
under its dotted key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable


def relative_to_file(table: object, keys: Iterable[str], file: str | os.PathLike) -> None:
    """Make each relative path `table[key]` read from `file` relative to the file's folder (in place), so a
    path in a config file means the same wherever the command is started. Values from the environment or
    the command line are not passed here: they stay relative to the working directory. A `table` that is
    not a table is left for validation to report."""
    if not isinstance(table, dict):
        return
    for key in keys:
        value = table.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            table[key] = str(Path(file).parent / value)


def error_key(err: dict[str, Any]) -> str:
    """The dotted key of one pydantic error: its location, plus the field a check over several names
    (the `key` of the error's context)."""
    loc = [str(x) for x in err.get("loc", ()) if x != "__root__"]
    sub = (err.get("ctx") or {}).get("key")
    if sub:
        loc.append(str(sub))
    return ".".join(loc)
