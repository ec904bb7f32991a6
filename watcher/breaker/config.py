"""Configuration of breakers, webhooks, notifications and the admin API.

Three TOML tables, embedded in the daemon's Settings as `breaker`, `webhook` and `admin`:

    [breaker]  topic, cool-down, probation, Slack and PagerDuty
    [webhook]  url, secrets, timeouts, retries, concurrency
    [admin]    host, port, token

Secrets also come from the environment, which wins over the file: SPENDWATCH_WEBHOOK_SECRET (one secret,
or several separated by commas during a rotation: the first signs, all are sent), SPENDWATCH_ADMIN_TOKEN,
SPENDWATCH_SLACK_WEBHOOK_URL, SPENDWATCH_PAGERDUTY_ROUTING_KEY. The nested form
SPENDWATCH_WEBHOOK__URL=... works once the tables are fields of Settings.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from watcher.errors import ConfigError

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return [s.strip() for s in raw.split(",") if s.strip()]


class WebhookSettings(BaseModel):
    """The wallet service's freeze/unfreeze/escalate webhook."""

    model_config = _FROZEN
    url: str = Field("", description="POST target; empty: decisions are logged and recorded, not sent")
    secrets: list[SecretStr] = Field(default_factory=list, description="HMAC-SHA256 secrets; all sign")
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    retry_initial_seconds: Annotated[float, Field(gt=0, le=60)] = 0.2
    retry_max_seconds: Annotated[float, Field(gt=0, le=3600)] = 300.0
    retry_budget_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] = 6 * 3600.0
    max_concurrency: Annotated[int, Field(ge=1, le=1024)] = 16
    signature_tolerance_seconds: Annotated[int, Field(ge=1, le=3600)] = 300

    @model_validator(mode="before")
    @classmethod
    def _env(cls, data: Any) -> Any:
        env = _env_list("SPENDWATCH_WEBHOOK_SECRET")
        if env is not None:
            data = {**(data or {}), "secrets": env}
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError("webhook.url must start with http:// or https://")
        if self.url and not self.secrets:
            raise ValueError("webhook.url is set but no secret: set SPENDWATCH_WEBHOOK_SECRET")
        if any(len(s.get_secret_value()) < 16 for s in self.secrets):
            raise ValueError("webhook secrets must be at least 16 characters")
        if self.retry_initial_seconds > self.retry_max_seconds:
            raise ValueError("retry_initial_seconds must not exceed retry_max_seconds")
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
        tok = os.environ.get("SPENDWATCH_ADMIN_TOKEN")
        if tok:
            data = {**(data or {}), "token": tok}
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.token is not None and len(self.token.get_secret_value()) < 16:
            raise ValueError("admin.token must be at least 16 characters")
        return self

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
    source = str(path) if path else "(defaults and environment)"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("configuration file not found", file=source, fix="give the path of a TOML file")
        try:
            raw = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", file=source, fix="correct the TOML syntax") from None
        data = {k: dict(raw[k]) for k in ("breaker", "webhook", "admin") if k in raw}
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    try:
        return BreakerConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"] if x != "__root__")
        raise ConfigError(f"invalid setting: {err.get('msg')}", file=source, key=key or None,
                          fix="see README, Configuration (breaker, webhook, admin)") from None
