"""One frozen settings model, read from a TOML file plus SPENDWATCH_* environment overrides.

Validated before anything connects: a bad value fails at start with the file, the key and the fix.
Environment overrides use `__` between section and key, e.g. SPENDWATCH_KAFKA__BOOTSTRAP=host:9092.
Relative paths written in the file (detect.policy_file, agents.registry_file; the chain bridge's
registry_file and checkpoint_path too) are relative to the file's folder; from the environment or a
command-line option, to the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from watcher.breaker.config import ENV_ALIASES, FIXES, SECRET_KEYS, AdminSettings, BreakerSettings, WebhookSettings
from watcher.configfile import env_json_error, read_toml, relative_to_file, validation_error
from watcher.detect.forget import FORGET_AFTER_MIN_SECONDS, FORGET_AFTER_SECONDS
from watcher.metrics import MetricsSettings
from watcher.observe.statements import StatementSettings
from watcher.pipeline.join import UNSETTLED_HOLD
from watcher.pipeline.shard import ShardConfig
from watcher.pipeline.windows import WindowSpec
from watcher.registry import load_registry

_FROZEN = ConfigDict(frozen=True, extra="forbid")
# keys whose relative paths in a config file are relative to that file's folder, per table
FILE_RELATIVE = {"detect": ("policy_file",), "agents": ("registry_file",)}


class KafkaSettings(BaseModel):
    model_config = _FROZEN
    bootstrap: str = Field("", description="host:port[,host:port]; empty starts the embedded Tansu broker")
    group: str = "spendwatch"
    client_id: str = "spendwatch"
    payments_topic: str = "x402.payments"
    chain_topic: str = "x402.chain"
    dead_letter_topic: str = "watcher.deadletter"
    checkpoint_topic: str = "watcher.checkpoints"
    findings_topic: str = "watcher.findings"
    decisions_topic: str = "watcher.decisions"
    partitions: Annotated[int, Field(ge=1, le=1024)] = 8
    replication_factor: Annotated[int, Field(ge=1)] = 1
    create_topics: bool = True
    session_timeout_ms: Annotated[int, Field(ge=1000)] = 10_000
    heartbeat_interval_ms: Annotated[int, Field(ge=100)] = 3_000
    max_batch: Annotated[int, Field(ge=1, le=100_000)] = 5_000
    poll_timeout_ms: Annotated[int, Field(ge=1, le=10_000)] = 200
    fetch_max_wait_ms: Annotated[int, Field(ge=1, le=10_000)] = 20
    commit_interval_ms: Annotated[int, Field(ge=0, le=600_000)] = 1_000

    @model_validator(mode="after")
    def _heartbeat(self):
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        return self


class WindowSettings(BaseModel):
    model_config = _FROZEN
    name: Annotated[str, Field(min_length=1, max_length=16)]
    seconds: Annotated[int, Field(ge=1, le=31 * 86400)]
    buckets: Annotated[int, Field(ge=1, le=1440)]

    @model_validator(mode="after")
    def _divides(self):
        if (self.seconds * 1000) % self.buckets:
            raise ValueError(f"window {self.name}: seconds*1000 must be divisible by buckets")
        return self


class EventSettings(BaseModel):
    model_config = _FROZEN
    max_event_bytes: Annotated[int, Field(ge=256, le=1_048_576)] = 16_384
    max_future_skew_seconds: Annotated[int, Field(ge=0)] = 300
    extra_chain_ids: list[int] = []


class DedupeSettings(BaseModel):
    model_config = _FROZEN
    horizon_seconds: Annotated[int, Field(ge=60)] = 26 * 3600
    max_entries: Annotated[int, Field(ge=1000)] = 2_000_000


class FindingSettings(BaseModel):
    model_config = _FROZEN
    shadow_grace_seconds: Annotated[int, Field(ge=0)] = 120
    unsettled_after_seconds: Annotated[int, Field(ge=1)] = 300


class CheckpointSettings(BaseModel):
    model_config = _FROZEN
    interval_seconds: Annotated[float, Field(gt=0)] = 30.0
    chunk_bytes: Annotated[int, Field(ge=10_000, le=10_000_000)] = 900_000
    restore_timeout_seconds: Annotated[float, Field(gt=0)] = 60.0


class DetectSettings(BaseModel):
    model_config = _FROZEN
    policy_file: str | None = Field(None, description="policy TOML (examples/policy.toml); none = defaults")
    forget_after_seconds: Annotated[int, Field(ge=0, description=(
        "an agent idle this long, with nothing running (not frozen, no escalation, approval, cooldown or "
        "caps set by a person), is forgotten at a checkpoint and starts afresh if it returns; 0 = never"))] = \
        FORGET_AFTER_SECONDS

    @field_validator("forget_after_seconds")
    @classmethod
    def _retention(cls, v: int) -> int:
        if 0 < v < FORGET_AFTER_MIN_SECONDS:
            raise ValueError(f"must be 0 (never forget) or at least {FORGET_AFTER_MIN_SECONDS} (one day): an "
                             "agent idle for less still has the baselines of its recent spend")
        return v


class AgentSettings(BaseModel):
    """The agent registry (examples/agents.toml, the chain bridge's format): read and checked when the
    settings are, so a broken one fails at start, naming the registry file and the entry."""

    model_config = _FROZEN
    registry_file: Path | None = Field(None, description="TOML agent registry ([[agents]] wallet, name): "
                                       "names shown in webhooks and the admin API; none = wallets only")
    _names: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _load(self):
        if self.registry_file is not None:
            self._names = load_registry(self.registry_file, key="agents.registry_file")
        return self

    @property
    def names(self) -> dict[str, str]:
        """wallet (checksum) -> agent name, from the registry (empty without one)."""
        return dict(self._names)


def _unset(*fields: tuple[BaseModel, str, str]) -> list[str]:
    """The keys of (model, field name, dotted key) triples left at their default: a check over several values
    says "by default" for those (see configfile.validation_error)."""
    return [key for model, name, key in fields if name not in model.model_fields_set]


class Settings(BaseSettings):
    """The daemon's configuration (see README, "Configuration")."""

    model_config = SettingsConfigDict(env_prefix="SPENDWATCH_", env_nested_delimiter="__", frozen=True,
                                      extra="forbid")
    kafka: KafkaSettings = KafkaSettings()
    windows: list[WindowSettings] = [WindowSettings(name=s.name, seconds=s.seconds, buckets=s.buckets)
                                     for s in ShardConfig().windows]
    events: EventSettings = EventSettings()
    dedupe: DedupeSettings = DedupeSettings()
    findings: FindingSettings = FindingSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    detect: DetectSettings = DetectSettings()
    agents: AgentSettings = AgentSettings()
    # validated when Settings is, not at import: they read SPENDWATCH_WEBHOOK_SECRET and friends, and a bad
    # one must become a ConfigError naming the variable (load_settings), not a traceback of the import
    breaker: BreakerSettings = Field(default_factory=dict, validate_default=True)
    webhook: WebhookSettings = Field(default_factory=dict, validate_default=True)
    admin: AdminSettings = Field(default_factory=dict, validate_default=True)
    metrics: MetricsSettings = MetricsSettings()
    statements: StatementSettings = StatementSettings()
    chain: dict[str, Any] = Field(default_factory=dict, description="the chain bridge's table "
                                  "(validated by `spendwatch chain`)")
    categories: dict[str, str] = Field(default_factory=dict,
                                       description="merchant payTo address or resource URL prefix -> category")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="log verbosity of spendwatch run, demo, simulate and statement (spendwatch chain "
        "reads only the [chain] table: give it --log-level); --log-level wins")

    @field_validator("windows")
    @classmethod
    def _unique(cls, v: list[WindowSettings]) -> list[WindowSettings]:
        names = [w.name for w in v]
        if len(set(names)) != len(names) or not v:
            raise ValueError("window names must be unique and at least one window is needed")
        return v

    @model_validator(mode="after")
    def _memory_outlives_windows(self):
        # a redelivery after the dedupe memory forgot its id is counted again unless it is older than every
        # window (then it is late, not counted): the memory must span the longest window
        longest = max(self.windows, key=lambda w: w.seconds)
        if self.dedupe.horizon_seconds < longest.seconds:
            raise PydanticCustomError("setting", "{what}", {
                "what": f"dedupe.horizon_seconds is shorter than the longest window ({longest.name!r}, "
                        f"{longest.seconds} s), so a record redelivered after the memory forgot it would be "
                        "counted twice in that window",
                "key": "dedupe.horizon_seconds",
                "values": {"dedupe.horizon_seconds": self.dedupe.horizon_seconds,
                           "windows": f"{longest.name} ({longest.seconds} s)"},
                "unset": _unset((self.dedupe, "horizon_seconds", "dedupe.horizon_seconds"),
                                (self, "windows", "windows")),
                "fix": f"raise dedupe.horizon_seconds to at least {longest.seconds} (memory grows with it: see "
                       f"dedupe.max_entries) or shorten the window {longest.name!r}"})
        return self

    @model_validator(mode="after")
    def _memory_outlives_findings(self):
        # a payment whose finding is still pending must stay in the join's memory (>= the dedupe horizon)
        dedupe, findings = self.dedupe, self.findings
        need = max(UNSETTLED_HOLD * findings.unsettled_after_seconds, findings.shadow_grace_seconds)
        if dedupe.horizon_seconds < need:
            # the finding delay that sets `need`, and the most it may be for the horizon to suffice
            delay, most = ("unsettled_after_seconds", dedupe.horizon_seconds // UNSETTLED_HOLD) \
                if need == UNSETTLED_HOLD * findings.unsettled_after_seconds \
                else ("shadow_grace_seconds", dedupe.horizon_seconds)
            raise PydanticCustomError("setting", "{what}", {
                "what": f"dedupe.horizon_seconds is shorter than the longest a finding can wait ({need} s: "
                        f"{UNSETTLED_HOLD} x findings.unsettled_after_seconds, or findings.shadow_grace_seconds), "
                        "so a pending finding would be forgotten",
                "key": "dedupe.horizon_seconds",
                # where each came from is said by validation_error; one from a variable leads
                "values": {"dedupe.horizon_seconds": dedupe.horizon_seconds,
                           f"findings.{delay}": getattr(findings, delay)},
                "unset": _unset((dedupe, "horizon_seconds", "dedupe.horizon_seconds"),
                                (findings, delay, f"findings.{delay}")),
                "fix": f"raise dedupe.horizon_seconds to at least {need} or lower findings.{delay} to at most "
                       f"{most}"})
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

    def shard_config(self) -> ShardConfig:
        return ShardConfig(
            windows=tuple(WindowSpec(w.name, w.seconds, w.buckets) for w in self.windows),
            dedupe_horizon_ms=self.dedupe.horizon_seconds * 1000, dedupe_max_entries=self.dedupe.max_entries,
            shadow_grace_ms=self.findings.shadow_grace_seconds * 1000,
            unsettled_after_ms=self.findings.unsettled_after_seconds * 1000)


def load_settings(path: str | os.PathLike | None = None, **overrides: Any) -> Settings:
    """Read TOML `path` (optional), apply SPENDWATCH_* environment overrides, validate. Raises ConfigError
    listing every bad value, each with its key, where it came from (the file or a variable) and its fix."""
    data: dict[str, Any] = {}
    source = str(path) if path else "(defaults and environment)"
    if path is not None:
        data = read_toml(path)
        for table, keys in FILE_RELATIVE.items():
            relative_to_file(data.get(table), keys, path)
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[key] = value
    try:
        return Settings(**data)
    except SettingsError as exc:  # a SPENDWATCH_<SECTION> table or list that is not JSON
        raise env_json_error(exc) from None
    except ValidationError as exc:
        raise validation_error(exc, file=source, aliases=ENV_ALIASES, fixes=FIXES, hidden=SECRET_KEYS) from None
