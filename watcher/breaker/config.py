"""Configuration of breakers, webhooks, notifications and the admin API.

Three TOML tables, embedded in the daemon's Settings as `breaker`, `webhook` and `admin`:

    [breaker]  topic, cool-down, probation, Slack and PagerDuty
    [webhook]  url, secrets, timeouts, retries, concurrency
    [admin]    host, port, token

Secrets also come from the environment, which wins over the file: SPENDWATCH_WEBHOOK_SECRET (one secret,
or several separated by commas during a rotation: each one signs, so every request carries one `v1=` per
secret and a receiver that knows any of them accepts it), SPENDWATCH_ADMIN_TOKEN,
SPENDWATCH_SLACK_WEBHOOK_URL, SPENDWATCH_PAGERDUTY_ROUTING_KEY. The nested form
SPENDWATCH_WEBHOOK__URL=... works once the tables are fields of Settings.

A bad value becomes a ConfigError naming the key (`webhook.url`, `admin.port`, ...), the variable when the
value came from one (ENV_ALIASES), and a fix for that key (`config_error`); a check over two keys names the
one to change through the error's context `key`.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from watcher.configfile import read_toml, validation_error
from watcher.errors import ConfigError

log = logging.getLogger("watcher.breaker.config")
_FROZEN = ConfigDict(frozen=True, extra="forbid")
WEBHOOK_SECRET_ENV = "SPENDWATCH_WEBHOOK_SECRET"
ADMIN_TOKEN_ENV = "SPENDWATCH_ADMIN_TOKEN"
# keys set by a variable of another name than SPENDWATCH_<SECTION>__<KEY> (the environment wins over the file)
ENV_ALIASES = {"webhook.secrets": WEBHOOK_SECRET_ENV, "admin.token": ADMIN_TOKEN_ENV,
               "breaker.slack_webhook_url": "SPENDWATCH_SLACK_WEBHOOK_URL",
               "breaker.pagerduty_routing_key": "SPENDWATCH_PAGERDUTY_ROUTING_KEY"}
SECRET_KEYS = frozenset(ENV_ALIASES)   # their values are never shown in an error
MIN_SECRET_CHARS = 16
# keys that were settings once and are now ignored, with why (old files keep loading, with a warning)
_RETIRED = {"signature_tolerance_seconds": "the receiver decides how old a signature it accepts "
            "(watcher.breaker.signing.verify tolerance_seconds, 300 s in examples/receiver.py); the sender "
            "signs each attempt afresh"}
_RANDOM = "a random string of at least 16 characters, e.g. the output of `openssl rand -hex 32`"
# the fix for a bad value, per key; other keys get what the value must be (watcher.configfile)
FIXES = {
    "webhook.url": "give the wallet service's endpoint as an http:// or https:// URL (webhook.url or "
                   "--webhook-url), or leave it empty to record breaker changes without sending them",
    "webhook.secrets": f"set {WEBHOOK_SECRET_ENV} (or webhook.secrets) to {_RANDOM}; during a rotation "
                       "give several, comma-separated, newest first",
    "webhook.retry_initial_seconds": "make webhook.retry_initial_seconds at most webhook.retry_max_seconds",
    "admin.port": "give a TCP port from 1 to 65535, or 0 for a free one (admin.port or --admin-port)",
    "admin.token": f"set {ADMIN_TOKEN_ENV} (or admin.token) to {_RANDOM}",
}


def _setting_error(key: str, message: str) -> PydanticCustomError:
    """A failed check over several fields, naming the field to change (read by `config_error`)."""
    return PydanticCustomError("setting", message, {"key": key})


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return [s.strip() for s in raw.split(",") if s.strip()]


class WebhookSettings(BaseModel):
    """The wallet service's freeze/unfreeze/escalate webhook."""

    model_config = _FROZEN
    url: str = Field("", description="POST target; empty: changes are recorded on the breaker topic and kept "
                     "there undelivered until a start with a url sends them")
    secrets: list[SecretStr] = Field(default_factory=list, description="HMAC-SHA256 secrets; each signs "
                                     "(one v1= per secret)")
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    retry_initial_seconds: Annotated[float, Field(gt=0, le=60)] = 0.2
    retry_max_seconds: Annotated[float, Field(gt=0, le=3600)] = 300.0
    retry_budget_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] = 6 * 3600.0
    max_concurrency: Annotated[int, Field(ge=1, le=1024)] = 16

    @model_validator(mode="before")
    @classmethod
    def _env(cls, data: Any) -> Any:
        data = dict(data or {})
        for key, why in _RETIRED.items():
            if key in data:
                data.pop(key)
                log.warning("webhook.%s is ignored (remove it): %s", key, why)
        env = _env_list(WEBHOOK_SECRET_ENV)
        if env is not None:
            data["secrets"] = env
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https:// (got {v[:60]!r})")
        return v

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[SecretStr]) -> list[SecretStr]:
        if any(len(s.get_secret_value()) < MIN_SECRET_CHARS for s in v):
            raise ValueError(f"a webhook secret is shorter than {MIN_SECRET_CHARS} characters")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.url and not self.secrets:
            raise _setting_error("secrets", f"webhook.url is set but there is no secret to sign with: set "
                                 f"{WEBHOOK_SECRET_ENV}")
        if self.retry_initial_seconds > self.retry_max_seconds:
            raise _setting_error("retry_initial_seconds", "retry_initial_seconds must not exceed retry_max_seconds")
        return self

    def secret_values(self) -> list[bytes]:
        return [s.get_secret_value().encode() for s in self.secrets]


class AdminSettings(BaseModel):
    """The admin HTTP API (`spendwatch breaker ...` talks to it)."""

    model_config = _FROZEN
    enabled: bool = True
    host: str = Field("127.0.0.1", description="bind address; loopback unless you mean otherwise")
    port: Annotated[int, Field(ge=0, le=65535)] = 8742
    token: SecretStr | None = Field(None, description="bearer token; without one the API refuses everything")
    url: str = Field("", description="where `spendwatch breaker` finds the API (default http://host:port)")

    @model_validator(mode="before")
    @classmethod
    def _env(cls, data: Any) -> Any:
        tok = os.environ.get(ADMIN_TOKEN_ENV)
        if tok:
            data = {**(data or {}), "token": tok}
        return data

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(f"the admin token is shorter than {MIN_SECRET_CHARS} characters")
        return v

    def base_url(self) -> str:
        if self.url:
            return self.url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


class BreakerSettings(BaseModel):
    """Breaker timing and the optional direct notifications."""

    model_config = _FROZEN
    topic: str = Field("watcher.breaker", description="transitions, deliveries and dead letters (audit trail)")
    cooldown_seconds: Annotated[int, Field(ge=0)] = 900
    cooldown_max_seconds: Annotated[int, Field(ge=0)] = 6 * 3600
    auto_half_open: bool = Field(True, description="false: an open breaker waits for a person's release")
    probation_seconds: Annotated[int, Field(ge=0)] = 3600
    probation_cap_factor: Annotated[float, Field(gt=0, le=1)] = 0.25
    slack_webhook_url: SecretStr | None = None
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    notify_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    notify_attempts: Annotated[int, Field(ge=1, le=20)] = 4

    @model_validator(mode="before")
    @classmethod
    def _env(cls, data: Any) -> Any:
        data = dict(data or {})
        for key, env in (("slack_webhook_url", "SPENDWATCH_SLACK_WEBHOOK_URL"),
                         ("pagerduty_routing_key", "SPENDWATCH_PAGERDUTY_ROUTING_KEY")):
            if os.environ.get(env):
                data[key] = os.environ[env]
        return data


class BreakerConfig(BaseModel):
    """The three tables together, as the breaker parts take them."""

    model_config = _FROZEN
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)

    @classmethod
    def from_settings(cls, settings: Any) -> "BreakerConfig":
        """From the daemon's Settings once it embeds the tables (defaults otherwise)."""
        return cls(breaker=getattr(settings, "breaker", None) or BreakerSettings(),
                   webhook=getattr(settings, "webhook", None) or WebhookSettings(),
                   admin=getattr(settings, "admin", None) or AdminSettings())


def load_breaker_config(path: str | os.PathLike | None = None, **overrides: Any) -> BreakerConfig:
    """Read the [breaker], [webhook] and [admin] tables of a TOML file (other tables are ignored), apply
    environment secrets and `overrides` ({"webhook": {"url": ...}}). Raises ConfigError naming the key."""
    data: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(path, missing_fix="give the path of a TOML file")
        data = {k: dict(raw[k]) for k in ("breaker", "webhook", "admin") if k in raw}
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    try:
        return BreakerConfig(**data)
    except ValidationError as exc:
        # only the secrets' variables apply here: SPENDWATCH_ADMIN__PORT and friends are the daemon's
        raise config_error(exc, str(path) if path else "(defaults and environment)", nested_env=False) from None


def config_error(exc: ValidationError, file: str | None = None, *, origin: str = "",
                 nested_env: bool = True) -> ConfigError:
    """A ConfigError for every error of a breaker configuration, the first leading: the key it is about,
    where its value came from and its fix. `origin`: where the values came from when not a file or the
    environment (e.g. "with --admin-port"); `nested_env`: SPENDWATCH_<SECTION>__<KEY> variables were read
    (as the daemon's Settings reads them)."""
    return validation_error(exc, file=file, origin=origin, aliases=ENV_ALIASES, fixes=FIXES, hidden=SECRET_KEYS,
                            nested_env=nested_env, see="see README, Configuration (breaker, webhook, admin)")
