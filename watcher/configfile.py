"""What the configuration loaders share (watcher.config, watcher.chain.config, watcher.breaker.config;
watcher.detect.policy for the last): reading the TOML file, a path written in it being relative to its
folder, and turning a validation error into one ConfigError that lists every problem, each under its dotted
key, with where its value came from (the file, an environment variable, a command-line option) and the fix
there."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, Sequence

from pydantic import ValidationError

from watcher.errors import ConfigError

ENV_PREFIX = "SPENDWATCH_"
ENV_WINS = "the environment wins over the file"
LISTED = 50  # problems listed in one error; past them, only how many more
# what a value must be, per pydantic error type (formatted with the error's context)
_WANT = {
    "int_parsing": "a whole number", "int_type": "a whole number", "int_from_float": "a whole number",
    "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "tuple_type": "a list",
    "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table",
    "greater_than_equal": "a number of at least {ge}", "greater_than": "a number above {gt}",
    "less_than_equal": "a number of at most {le}", "less_than": "a number below {lt}",
    "literal_error": "one of {expected}",
    "string_too_short": "at least {min_length} characters long", "string_too_long": "at most {max_length} "
    "characters long", "too_short": "at least {min_length} items long", "too_long": "at most {max_length} "
    "items long",
}


def read_toml(path: str | os.PathLike, *, missing_fix: str = "give the path of a TOML file, e.g. "
              "examples/spendwatch.toml") -> dict[str, Any]:
    """The parsed TOML file `path`; a ConfigError naming it when it is missing or not TOML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("configuration file not found", file=str(path), fix=missing_fix)
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path), fix="correct the TOML syntax") from None


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
    """The dotted key of one pydantic error: its location (without the marker of a table's key, which
    pydantic adds after a bad name), plus the field a check over several names (the `key` of the error's
    context)."""
    loc = [str(x) for x in err.get("loc", ()) if x not in ("__root__", "[key]")]
    sub = (err.get("ctx") or {}).get("key")
    if sub:
        loc.append(str(sub))
    return ".".join(loc)


def env_variable(key: str, aliases: Mapping[str, str] = {}, *, nested: bool = True) -> str | None:
    """The SPENDWATCH_* variable that set dotted `key`, or the table or list holding it, if one is set:
    an alias of the key (e.g. SPENDWATCH_WEBHOOK_SECRET for webhook.secrets), else (`nested`) the name
    SPENDWATCH_<SECTION>__<KEY> (pydantic-settings reads names without regard to case)."""
    alias = aliases.get(key)
    if alias and os.environ.get(alias, "").strip():
        return alias
    if not nested:
        return None
    names = {k.upper() for k in os.environ}
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        name = ENV_PREFIX + "__".join(parts[:n]).upper()
        if name in names:
            return name
    return None


@dataclass(frozen=True)
class Problem:
    """One bad value: its key, what is wrong, where it came from ("" = the file) and how to fix it."""

    key: str
    message: str
    origin: str
    fix: str


def _shown(err: dict[str, Any], key: str, hidden: Collection[str]) -> str:
    """' (got X)' for a scalar value that is not a secret and that the message does not already show; the
    whole table of a check over several keys, or an unknown key's value, is not shown."""
    value = err.get("input")
    if (key in hidden or not err.get("loc") or err.get("type") == "extra_forbidden"
            or not isinstance(value, (str, int, float, bool)) or str(value) in str(err.get("msg", ""))):
        return ""
    return f" (got {value[:60] if isinstance(value, str) else value!r})"


def _source(key: str, *, given: Mapping[str, str], aliases: Mapping[str, str], use_env: bool,
            nested_env: bool) -> tuple[str | None, str | None]:
    """(the option, the SPENDWATCH_* variable) that set dotted `key`, either or both None: an option wins
    over the environment, which wins over the file."""
    option = given.get(key)
    return option, None if option or not use_env else env_variable(key, aliases, nested=nested_env)


def _problem(err: dict[str, Any], *, file: str | None, key_prefix: str, fixes: Mapping[str, str],
             unknown_fix: str, hidden: Collection[str], see: str, **where: Any) -> Problem:
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    key = ".".join(p for p in (key_prefix, error_key(err)) if p)
    msg = "unknown key" if kind == "extra_forbidden" else str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ") + _shown(err, key, hidden)
    specific = ctx.get("fix") or {"extra_forbidden": unknown_fix, "missing": f"add {key}"}.get(kind) \
        or fixes.get(key) or (msg if kind == "setting" else "")   # a check over several keys says what to do
    involved = ctx.get("values") or {}
    if involved:   # a check over several values: each named where it came from; one set elsewhere leads
        sources = {k: _source(k, **where) for k in involved}
        key = next((k for k, (option, var) in sources.items() if option or var), key)
        told = []
        for k, value in involved.items():
            option, var = sources[k]
            told.append(f"{k}={value} " + (f"from {option or var}" if option or var else "by default"
                                           if k in ctx.get("unset", ()) else f"in {file}" if file else "set"))
            if specific and (option or var):
                specific = specific.replace(k, option or var)
        msg += f" ({'; '.join(told)})"
    option, var = _source(key, **where)
    target = option or var or key
    origin = f"from {option}" if option else f"from {var} ({ENV_WINS})" if var else ""
    if specific:
        if target != key and target not in specific:
            specific = f"correct {target}" + (" or unset it" if var else "") + f": {specific}"
        return Problem(key, msg, origin, specific)
    try:
        fix = f"make {target} {_WANT[kind].format(**ctx)}"
    except (KeyError, IndexError):
        fix = f"correct {target}" + (f" ({see})" if see else "")
    return Problem(key, msg, origin, fix + (", or unset it" if var else ""))


def validation_error(exc: ValidationError | Sequence[dict[str, Any]], *, file: str | None,
                     what: str = "invalid setting", key_prefix: str = "", aliases: Mapping[str, str] = {},
                     given: Mapping[str, str] = {}, fixes: Mapping[str, str] = {}, hidden: Collection[str] = (),
                     see: str = "", unknown_fix: str = "remove this key or check its spelling (see README, "
                     "Configuration)", origin: str = "", nested_env: bool = True) -> ConfigError:
    """One ConfigError for every error of `exc` (a ValidationError, or errors shaped as its `errors()`).
    The first leads (its key and fix are the error's); each other one follows on a line of its own with
    its key, what is wrong and its fix, so the whole file can be put right at once (past LISTED, how many
    more). Where a value came from: `given` maps a key to the option that set it (it wins over the
    environment); else a SPENDWATCH_* variable that is set (`aliases`: key -> a variable of another name)
    wins over the file; else `file`. `origin`, when the values came from elsewhere as a whole
    (e.g. "with --admin-port"), names that instead and no variable is looked for; `nested_env`: false where
    only the `aliases` were read (not SPENDWATCH_<SECTION>__<KEY>).
    `key_prefix` is put before each key (e.g. "chain"); `fixes` has the fix of a key that has a specific
    one; `hidden` keys (secrets) never have their value shown; `see` is where to read more. A check over
    several values (context `values`: key -> value, `unset`: those at their default) names where each came
    from, and leads with one set by an option or a variable."""
    errors = exc.errors() if isinstance(exc, ValidationError) else list(exc)
    problems = [_problem(err, file=file, key_prefix=key_prefix, fixes=fixes, unknown_fix=unknown_fix,
                         hidden=hidden, see=see, given=given, aliases=aliases, use_env=not origin,
                         nested_env=nested_env)
                for err in errors]
    first, rest = problems[0], problems[1:]
    where = origin or first.origin
    error = ConfigError(f"{what}{' ' + where if where else ''}: {first.message}",
                        file=None if first.origin else file, key=first.key or None, fix=first.fix)
    if rest:
        lines = [f"  {p.key or '(the whole table)'}"
                 f"{' ' + p.origin if p.origin else f' in {file}' if file and first.origin else ''}: "
                 f"{p.message}; fix: {p.fix}" for p in rest[:LISTED - 1]]
        if len(rest) >= LISTED:
            lines.append(f"  ... and {len(rest) - LISTED + 1} more, not shown: fix these, then check again")
        # the others after the first's file, key and fix (ConfigError's str ends with the fix)
        error.args = (f"{error.args[0]}\nand {len(rest)} more:\n" + "\n".join(lines),)
    return error


def env_json_error(exc: Exception, *, env_prefix: str = ENV_PREFIX, key_prefix: str = "",
                   field: str | None = None) -> ConfigError:
    """A ConfigError for a variable that is not JSON where a list or a table is wanted: `exc` is
    pydantic-settings' SettingsError (it names the field) or json's error about the variable of `field`."""
    if field is None:
        found = re.search(r'field "([^"]+)"', str(exc))
        field = found.group(1) if found else ""
    var = f"{env_prefix}{field.upper()}" if field else f"a {env_prefix}* variable"
    return ConfigError(f"invalid setting from {var} ({ENV_WINS}): not valid JSON ({exc})",
                       key=".".join(p for p in (key_prefix, field) if p) or None,
                       fix=f"write {var} as JSON, e.g. '[\"a\", \"b\"]' for a list or '{{\"key\": 1}}' for a "
                       "table, or unset it")
