"""The detection policy: a TOML file validated at load (watcher.detect.policyfile holds its tables), each
team and agent override resolved once.

Layers, each a partial copy of `Limits`: `[defaults]` <- `[teams.<name>]` <- `[agents."0x..."]` (an agent
names its team with `team = "..."`). Tables merge key by key (a team that sets `caps.per_hour_usdc` keeps
the default `caps.per_minute_usdc`); lists are replaced, not appended. `anomaly.fleet` and
`anomaly.fleet_quantile` belong to the one fleet model, so only `[defaults]` may set them. Amounts are USDC
in the file (`*_usdc`) and integer base units in memory. See examples/policy.toml for every key.

A bad file raises one ConfigError naming the file and listing every problem, each with its key (dotted
path) and the fix. `PolicyWatcher` reloads on SIGHUP (the handler only sets a flag) and when the file
changes; a bad reload keeps the previous policy and says why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import tomllib
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import ValidationError

from watcher.configfile import validation_error
from watcher.detect.policyfile import FLEET_WIDE, Limits, PolicyFile
from watcher.errors import ConfigError, EventError
from watcher.events.addresses import AddressBook
from watcher.money import usdc

log = logging.getLogger("watcher.detect.policy")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("actions",):
            out[k] = _merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _problem(loc: tuple, what: str, fix: str) -> dict[str, Any]:
    """A problem found outside pydantic, shaped as one of its errors (for `validation_error`)."""
    return {"type": "policy", "loc": loc, "msg": what, "ctx": {"fix": fix}}


def _layer_problems(over: dict, loc: tuple) -> list[dict[str, Any]]:
    """The problems of one team's or agent's own keys. Each is checked alone (every `Limits` key has a
    default), so a bad value is reported once, under the table that sets it."""
    found = []
    anomaly = over.get("anomaly")
    for key in FLEET_WIDE:
        if isinstance(anomaly, dict) and key in anomaly:
            found.append(_problem((*loc, "anomaly", key), "the fleet model is one for all agents",
                                  "set it in [defaults.anomaly]; to silence the models for one team or agent, "
                                  "set anomaly.enabled = false there"))
    try:
        Limits.model_validate(over)
    except ValidationError as exc:
        found += [{**err, "loc": (*loc, *err["loc"])} for err in exc.errors()]
    return found


def _override_problems(teams: object, agents: object) -> list[dict[str, Any]]:
    """The problems of every `[teams.<name>]` and `[agents."0x..."]` table (one that is not a table is
    PolicyFile's to report)."""
    teams = teams if isinstance(teams, dict) else {}
    found = []
    for name, over in teams.items():
        if isinstance(over, dict):
            found += _layer_problems(over, ("teams", name))
    seen: set[str] = set()
    book = AddressBook()
    for addr, over in (agents if isinstance(agents, dict) else {}).items():
        if not isinstance(over, dict):
            continue
        try:
            cs = book.checksum(addr, "agent")
        except EventError as exc:
            found.append(_problem(("agents", addr), exc.detail, "use the agent's 0x payer wallet address as the "
                                  "table name"))
        else:
            if cs in seen:
                found.append(_problem(("agents", addr), f"wallet {cs} has two [agents] tables", "merge the two "
                                      "tables into one (a wallet's letter case does not make it another agent)"))
            seen.add(cs)
        over = dict(over)
        team = over.pop("team", None)
        over.pop("name", None)
        if team is not None and not isinstance(team, str):
            found.append(_problem(("agents", addr, "team"), f"not a team name (got {team!r})",
                                  "write the name of a [teams.<name>] table as a quoted string"))
        elif team is not None and team not in teams:
            found.append(_problem(("agents", addr, "team"), f"team {team!r} is not defined",
                                  f"add a [teams.{team}] table or fix the name"))
        found += _layer_problems(over, ("agents", addr))
    return found


def _config_error(problems: list[dict[str, Any]], file: str) -> ConfigError:
    """One ConfigError listing every problem (the policy is read from its file only: no variable)."""
    return validation_error(problems, file=file, what="invalid policy", see="see examples/policy.toml",
                            unknown_fix="remove it or check its spelling against examples/policy.toml",
                            nested_env=False)


class Policy:
    """A validated policy, with every team and agent override resolved once at load."""

    def __init__(self, parsed: PolicyFile, source: str = "<defaults>", digest: str = "") -> None:
        self.file = parsed
        self.source = source
        self.version = parsed.version or digest[:12]
        self.defaults = parsed.defaults
        self.rate_card = parsed.rate_card
        problems = _override_problems(parsed.teams, parsed.agents)
        if problems:
            raise _config_error(problems, source)
        base = parsed.defaults.model_dump()
        self.teams = {name: Limits.model_validate(_merge(base, over)) for name, over in parsed.teams.items()}
        self.agents: dict[str, Limits] = {}
        self.names: dict[str, str] = {}
        self.team_of: dict[str, str] = {}
        book = AddressBook()
        for addr, over in parsed.agents.items():
            cs = book.checksum(addr, "agent")
            over = dict(over)
            team = over.pop("team", None)
            name = over.pop("name", None)
            layer = _merge(parsed.teams[team], over) if team else over
            self.agents[cs] = Limits.model_validate(_merge(base, layer))
            if team:
                self.team_of[cs] = team
            if name:
                self.names[cs] = str(name)

    def limits(self, agent: str) -> Limits:
        return self.agents.get(agent, self.defaults)

    def windows_needed(self) -> dict[str, str]:
        """Rolling window name -> the first policy key whose limit is summed over it (caps, category budgets,
        escalation above a window's spend): the daemon's [[windows]] must have each."""
        need: dict[str, str] = {}
        layers = [("defaults", self.defaults), *((f"teams.{n}", t) for n, t in self.teams.items()),
                  *((f"agents.{a}", lim) for a, lim in self.agents.items())]
        for where, lim in layers:
            for field, window in (("per_minute_usdc", "1m"), ("per_hour_usdc", "1h"), ("per_day_usdc", "24h")):
                if getattr(lim.caps, field):
                    need.setdefault(window, f"{where}.caps.{field}")
            if any(lim.category_budgets_usdc.values()):
                need.setdefault("24h", f"{where}.category_budgets_usdc")
            if lim.escalation.window_above_usdc:
                need.setdefault(lim.escalation.window, f"{where}.escalation.window")
        return need

    def shortest_escalation_timeout_seconds(self) -> int:
        """The shortest `escalation.timeout_seconds` of the defaults, teams and agents: the alert that pages
        about an unanswered escalation fires at a fraction of it, before any agent's timeout freezes it."""
        layers = [self.defaults, *self.teams.values(), *self.agents.values()]
        return min(lim.escalation.timeout_seconds for lim in layers)

    def check_windows(self, window_names: list[str], config_file: str | None = None) -> None:
        """ConfigError if a limit of this policy sums over a window the configuration does not keep (it would
        never be applied)."""
        missing = {w: key for w, key in self.windows_needed().items() if w not in window_names}
        if missing:
            key = next(iter(missing.values()))
            needs = "; ".join(f"{k} needs {name!r}" for name, k in missing.items())
            names = ", ".join(repr(name) for name in missing)
            raise ConfigError(f"policy {self.source}: {needs}, which [[windows]] of {config_file or 'the configuration'}"
                              f" lacks (it has {', '.join(window_names)})",
                              file=self.source, key=key,
                              fix=f"add a [[windows]] entry named {names} (e.g. the defaults 1m, 5m, 1h, 24h), or "
                              "remove the limit" + ("s" if len(missing) > 1 else ""))

    @classmethod
    def default(cls) -> "Policy":
        return cls(PolicyFile(), "<defaults>", "defaults")

    @classmethod
    def from_text(cls, text: str, source: str = "<string>") -> "Policy":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy is not valid TOML: {exc}", file=source,
                              fix="fix the TOML syntax at the line and column shown") from None
        try:
            parsed = PolicyFile.model_validate(raw)
        except ValidationError as exc:  # with the teams' and agents' problems: every one is listed
            raise _config_error(exc.errors() + _override_problems(raw.get("teams"), raw.get("agents")),
                                source) from None
        return cls(parsed, source, hashlib.sha256(text.encode()).hexdigest())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Policy":
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read the policy file: {exc.strerror}", file=path,
                              fix="check the path given to --policy / detect.policy_file (a relative path in a "
                              "config file is relative to that file's folder)") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"the policy file is not UTF-8 text ({exc.reason} at byte {exc.start})", file=path,
                              fix="save it as UTF-8 (TOML files are UTF-8)") from None
        return cls.from_text(text, path)


def usdc_units(amount_usdc: float) -> int:
    """A USDC amount from the file as base units; 0 stays 0 (a disabled limit)."""
    return usdc(amount_usdc) if amount_usdc else 0


@dataclass
class ReloadResult:
    changed: bool
    ok: bool
    message: str


class Hangup:
    """SIGHUP as a flag: the handler only sets `_hup` (a signal handler does nothing else); the owner's
    `poll()`, called from the event loop, acts on it."""

    _hup = False

    def install_sighup(self) -> None:
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_hup(self, signum, frame) -> None:
        self._hup = True

    def request_reload(self) -> None:
        self._hup = True


class PolicyWatcher(Hangup):
    """Holds the live policy; `poll()` reloads it after SIGHUP or when the file changed.

    Signals only set a flag; call `poll()` from the event loop (e.g. once a second). A failed reload keeps
    the previous policy and returns ok=False with the reason.
    """

    def __init__(self, path: str | os.PathLike, *, on_change=None,
                 check: Callable[[Policy], None] | None = None) -> None:
        """`check(policy)` raises ConfigError for a policy this deployment cannot apply (at start: the error;
        on reload: the old policy stays)."""
        self.path = os.fspath(path)
        self.check = check
        self.policy = self._load()
        self._stamp = self._stat()
        self._hup = False
        self.on_change = on_change
        self.last_error: str | None = None

    def _load(self) -> Policy:
        policy = Policy.load(self.path)
        if self.check is not None:
            self.check(policy)
        return policy

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self) -> ReloadResult:
        stamp = self._stat()
        if not self._hup and stamp == self._stamp:
            return ReloadResult(False, True, "unchanged")
        self._hup = False
        self._stamp = stamp
        try:
            new = self._load()
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error("policy reload failed, keeping version %s: %s", self.policy.version, exc)
            return ReloadResult(False, False, f"kept policy {self.policy.version}: {exc}")
        old, self.policy, self.last_error = self.policy, new, None
        if self.on_change is not None:
            try:
                self.on_change(new)
            except Exception as exc:  # a bug must not end the reloads nor leave half a policy applied
                log.exception("applying policy %s failed, going back to %s", new.version, old.version)
                self.policy, self.last_error = old, f"applying policy {new.version} failed: {exc!r}"
                self.on_change(old)
                return ReloadResult(False, False, f"kept policy {old.version}: {self.last_error}")
        log.info("policy reloaded: %s -> %s", old.version, new.version)
        return ReloadResult(True, True, f"policy {old.version} -> {new.version}")
