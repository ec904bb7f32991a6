"""Settings of the chain bridge: one frozen pydantic model, read from the [chain] table of a TOML file,
with environment overrides (prefix SPENDWATCH_CHAIN__, e.g. SPENDWATCH_CHAIN__WS_URL; list values as JSON).
Precedence: explicit overrides (command-line options) > environment > file > defaults.
Relative paths (registry_file, checkpoint_path) written in the file are relative to the file's folder;
from the environment or the command line they are relative to the working directory.

Validated before anything connects; every error names the file, the key and the fix. The registry file is
read by watcher.registry (the daemon reads the same file for agent names).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from watcher.configfile import env_json_error, read_toml, relative_to_file, validation_error
from watcher.errors import ConfigError
from watcher.registry import checksum_address as _address
from watcher.registry import load_registry

BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
BASE_CHAIN_ID = 8453

# Blocks on top of a transfer's block before it is published `confirmed`, when the config names none.
# Base (2 s blocks, one sequencer) reorgs very rarely: 10 blocks is ~20 s. Ethereum: 12 (~2.4 min, close
# to the point where PoS reorgs stop being seen). Local dev chains: 2.
DEFAULT_CONFIRMATIONS: dict[int, int] = {1: 12, 8453: 10, 84532: 5, 10: 10, 42161: 10, 137: 64, 31337: 2}
FALLBACK_CONFIRMATIONS = 12

# keys whose relative paths in a config file are relative to that file's folder
FILE_RELATIVE = ("registry_file", "checkpoint_path")

ENV_PREFIX = "SPENDWATCH_CHAIN__"
# how to give a node to read from, every way (a bridge without one is the commonest first-run error)
NODE_FIX = ("give --ws-url ws://HOST:PORT (live) or --http-url http://HOST:PORT (polling), or set chain.ws_url "
            "or chain.http_url in the [chain] table of --config FILE, or SPENDWATCH_CHAIN__WS_URL / "
            "SPENDWATCH_CHAIN__HTTP_URL")
WATCH_FIX = ("give --wallet ADDRESS (repeatable) or --watch-all, or set chain.watched_wallets, "
             "chain.registry_file or chain.watch_all = true")

# metrics_port values that serve no /metrics (0 is a port: a free one the OS picks, as for the watcher)
METRICS_OFF = ("off", "false", "no", "none", "")


class ChainSettings(BaseSettings):
    """Where the chain is, what to watch, and where records go."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    ws_url: str | None = Field(None, description="WebSocket RPC endpoint (ws:// or wss://): live "
                               "subscriptions to logs and new heads. Preferred.")
    http_url: str | None = Field(None, description="HTTP RPC endpoint: used for polling eth_getLogs when "
                                 "ws_url is not set.")
    chain_id: int = Field(BASE_CHAIN_ID, gt=0, description="EVM chain id; the node must report the same.")
    token: str = Field(BASE_USDC, description="ERC-20 token contract to watch (USDC on Base by default).")
    token_decimals: int = Field(6, ge=0, le=36, description="Decimals of the token (display only).")
    confirmations: int | None = Field(None, ge=0, le=1000, description="Blocks on top of a transfer's block "
                                      "before it is published confirmed; default per chain id.")
    poll_interval_seconds: float = Field(2.0, gt=0, le=3600, description="Polling period over HTTP; over "
                                         "WebSocket, the period of a safety re-check.")
    backfill_block_range: int = Field(2000, ge=1, le=100_000, description="Blocks per eth_getLogs call when "
                                      "catching up.")
    start_block: int | None = Field(None, ge=0, description="First block to read when there is no "
                                    "checkpoint; default: the head at first start (earlier transfers are "
                                    "then not read; a WARNING says so).")
    max_reorg_depth: int = Field(64, ge=1, le=10_000, description="Recent block hashes remembered to find "
                                 "the common ancestor after a reorg.")
    watch_all: bool = Field(False, description="Publish every transfer of the token, not only those from "
                            "watched wallets.")
    watched_wallets: tuple[str, ...] = Field((), description="Payer wallets to watch (added to the "
                                             "registry's).")
    registry_file: Path | None = Field(None, description="TOML agent registry: [[agents]] wallet = '0x..', "
                                       "name = '..'. Relative: to the config file's folder (from the "
                                       "environment: to the working directory).")
    checkpoint_path: Path = Field(Path(".spendwatch/chain-checkpoint.json"), description="JSON file with the "
                                  "last processed block (written atomically). Relative: to the config file's "
                                  "folder (from the environment, --checkpoint or the default: to the working "
                                  "directory).")
    kafka_bootstrap: str = Field("127.0.0.1:9092", min_length=3, description="Kafka bootstrap servers, "
                                 "host:port[,host:port].")
    topic: str = Field("x402.chain", min_length=1, max_length=249, description="Kafka topic for "
                       "chain.transfer and chain.progress records.")
    progress_interval_seconds: float = Field(15.0, ge=0, le=3600, description="At most this often, a "
                                             "chain.progress record (the newest confirmed block) goes to every "
                                             "partition of the topic, transfers or not: the watcher holds an "
                                             "`unsettled` finding until the bridge has confirmed past the "
                                             "settle. 0: after every pass that confirmed a block.")
    reconnect_min_seconds: float = Field(0.2, gt=0, description="First back-off after a dropped connection.")
    reconnect_max_seconds: float = Field(30.0, gt=0, description="Longest back-off between reconnects.")
    request_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one RPC call.")
    metrics_host: str = Field("127.0.0.1", min_length=1, description="Bind address of /metrics (0.0.0.0 in "
                              "a container).")
    metrics_port: int | Literal["off"] = Field(9465, description="Port of /metrics (Prometheus job \"chain\"); "
                                               "0: a free port (logged); \"off\": no metrics.")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: Any,
                                   file_secret_settings: Any) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)  # load_settings drops file keys the environment sets

    @field_validator("token")
    @classmethod
    def _token(cls, v: str) -> str:
        return _address(v, "token")

    @field_validator("watched_wallets")
    @classmethod
    def _wallets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_address(w, "watched_wallets[]") for w in v))

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_port(cls, v: Any) -> Any:
        if v is False or (isinstance(v, str) and v.strip().lower() in METRICS_OFF):
            return "off"
        if isinstance(v, str) and v.strip().isdecimal():
            v = int(v.strip())
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
            raise ValueError(f"metrics_port={v!r} is not a port: give 1-65535, 0 for a free port (logged), "
                             "or \"off\" to serve no /metrics")
        return v

    @field_validator("ws_url")
    @classmethod
    def _ws(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("ws://", "wss://")):
            raise ValueError(f"ws_url={v!r} must start with ws:// or wss://")
        return v

    @field_validator("http_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"http_url={v!r} must start with http:// or https://")
        return v

    @model_validator(mode="after")
    def _whole(self) -> ChainSettings:
        if self.ws_url is None and self.http_url is None:
            raise PydanticCustomError("setting", "no node to read from: the bridge needs ws_url (live "
                                      "subscriptions) or http_url (polling)", {"key": "ws_url", "fix": NODE_FIX})
        if not self.watch_all and not self.watched_wallets and self.registry_file is None:
            raise PydanticCustomError("setting", "nothing to watch: no watched_wallets, no registry_file and "
                                      "watch_all is false", {"key": "watched_wallets", "fix": WATCH_FIX})
        if self.reconnect_max_seconds < self.reconnect_min_seconds:
            raise PydanticCustomError("setting", "reconnect_max_seconds must be >= reconnect_min_seconds",
                                      {"key": "reconnect_max_seconds",
                                       "fix": "make chain.reconnect_max_seconds at least chain.reconnect_min_seconds"})
        return self

    @property
    def required_confirmations(self) -> int:
        if self.confirmations is not None:
            return self.confirmations
        return DEFAULT_CONFIRMATIONS.get(self.chain_id, FALLBACK_CONFIRMATIONS)


def watched_wallets(settings: ChainSettings) -> frozenset[str]:
    wallets = set(settings.watched_wallets)
    if settings.registry_file is not None:
        wallets |= set(load_registry(settings.registry_file, key="chain.registry_file"))
    return frozenset(wallets)


def settings_from_mapping(data: dict[str, Any], *, source: str | None = None,
                          given: dict[str, str] | None = None) -> ChainSettings:
    """ChainSettings from `data` (the [chain] table of `source`, with the options' values) and the
    environment. `given`: key of data -> the command-line option that set it. Raises ConfigError listing
    every bad value, each with where it came from (the file, a SPENDWATCH_CHAIN__ variable, an option)."""
    try:
        return ChainSettings(**data)
    except SettingsError as exc:  # an environment value that is not JSON where a list or table is wanted
        raise env_json_error(exc, env_prefix=ENV_PREFIX, key_prefix="chain") from None
    except ValidationError as exc:
        raise validation_error(exc, file=source, what="invalid [chain] setting", key_prefix="chain",
                               given={f"chain.{k}": v for k, v in (given or {}).items()},
                               unknown_fix=f"remove it; known keys: {', '.join(sorted(ChainSettings.model_fields))}",
                               see="see `spendwatch chain --help`") from None


def load_settings(path: Path | None, *, flags: dict[str, str] | None = None, **overrides: Any) -> ChainSettings:
    """Settings from the [chain] table of `path` (optional), the environment, then `overrides` (None: not
    given). `flags`: the command-line option of each override, named when its value is wrong."""
    data: dict[str, Any] = {}
    if path is not None:
        table = read_toml(path, missing_fix="pass an existing file to --config").get("chain", {})
        if not isinstance(table, dict):
            raise ConfigError("`chain` must be a table", file=str(path), key="chain", fix="write it as [chain]")
        data.update(table)
        relative_to_file(data, FILE_RELATIVE, path)
    env_keys = {k.upper() for k in os.environ}
    data = {k: v for k, v in data.items() if f"{ENV_PREFIX}{k.upper()}" not in env_keys}
    extra = overrides.pop("extra_wallets", None) or []
    given = {k: v for k, v in overrides.items() if v is not None}
    data.update(given)
    if extra:
        env_wallets = os.environ.get(f"{ENV_PREFIX}WATCHED_WALLETS")
        try:
            base = list(json.loads(env_wallets)) if env_wallets else list(data.get("watched_wallets", []))
        except ValueError as exc:
            raise env_json_error(exc, env_prefix=ENV_PREFIX, key_prefix="chain", field="watched_wallets") from None
        data["watched_wallets"] = [*base, *extra]
    settings = settings_from_mapping(data, source=str(path) if path is not None else None,
                                     given={k: (flags or {}).get(k, "the command line") for k in given})
    watched_wallets(settings)  # a broken registry fails now, not after connecting
    return settings
