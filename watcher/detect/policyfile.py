"""The policy file's tables as frozen pydantic models: what each key may hold, checked key by key.

`PolicyFile` is the whole file; `Limits` one layer (`[defaults]`, and each `[teams.<name>]` and
`[agents."0x..."]` over it, merged by watcher.detect.policy); `Card` a rate card entry. Amounts are USDC in
the file (`*_usdc`); watcher.detect.policy turns them into integer base units. A value that fails a check
of this module carries its fix (`ctx["fix"]`), which watcher.configfile's `validation_error` reports.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from watcher.errors import EventError
from watcher.events.addresses import AddressBook
from watcher.money import usdc

Action = Literal["observe", "warn", "escalate", "freeze"]
SEVERITY = {"observe": 0, "warn": 1, "escalate": 2, "freeze": 3}

#: Every rule, with the action it takes unless `[defaults.actions]` (or a team/agent) says otherwise.
DEFAULT_ACTIONS: dict[str, Action] = {
    "cap_1m": "freeze", "cap_1h": "freeze", "cap_24h": "freeze",
    "payment_ceiling": "freeze",
    "category_budget": "escalate",
    "escalate_payment": "escalate", "escalate_window": "escalate",
    "escalation_timeout": "freeze",
    "blocked_merchant": "freeze", "blocked_category": "freeze", "merchant_not_allowed": "escalate",
    "price_drift": "warn",
    "unknown_payee": "warn",
    "new_merchant_burst": "warn",
    "failed_verifications": "warn",
    "finding.unsettled": "warn", "finding.shadow_spend": "freeze", "finding.amount_mismatch": "escalate",
    "baseline.spend_rate": "warn", "baseline.payment_size": "warn",
    "fleet.hst": "warn",
}
RULES = tuple(DEFAULT_ACTIONS)
RuleName = Literal[RULES]  # type: ignore[valid-type]
#: One fleet model per detector: these `anomaly` keys are read from `[defaults]` only.
FLEET_WIDE = ("fleet", "fleet_quantile")
MAX_USDC = 10**12           # far below int64 base units (9.2e12 USDC): window sums and limits stay exact
MAX_SECONDS = 10 * 366 * 86400      # ten years: as milliseconds, far inside int64


def bad_value(what: str, fix: str, key: str = "") -> PydanticCustomError:
    """A failed check saying what is wrong and how to fix it (`key`: the key in error, below the error's
    location, for a check over a whole table)."""
    return PydanticCustomError("policy", "{what}", {"what": what, "fix": fix, **({"key": key} if key else {})})


def _amount(v: float) -> float:
    if v > 0 and usdc(v) == 0:
        raise bad_value("a positive amount below 0.000001 USDC (one base unit) rounds to 0",
                        "write 0 (for a limit: off) or at least 0.000001 (one base unit)")
    return v


#: An amount in USDC as written in the file (finite: no float of the file may be inf or nan), held as
#: integer base units in memory.
Usdc = Annotated[float, Field(ge=0, le=MAX_USDC), AfterValidator(_amount)]


def _merchant(v: str) -> str:
    """A payTo address (checksummed here, so it matches the events') or an http(s) resource URL (its query
    string dropped: payments are matched on the URL without one)."""
    if v.startswith("0x"):
        try:
            return AddressBook().checksum(v, "merchant")
        except EventError as exc:
            raise bad_value(exc.detail, "write the merchant's 0x payTo address (20-byte hex) or its http(s) "
                            "resource URL") from None
    if not (v.startswith("https://") or v.startswith("http://")):
        raise bad_value("neither a 0x payTo address nor an http(s) resource URL", "write the merchant's 0x "
                        "payTo address or its http(s) resource URL (a trailing * matches a prefix)")
    return v.split("?", 1)[0]


Merchant = Annotated[str, AfterValidator(_merchant)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class Caps(_Model):
    """Spend caps per rolling window, in USDC. 0 disables a cap."""

    per_minute_usdc: Usdc = 0
    per_hour_usdc: Usdc = 0
    per_day_usdc: Usdc = 0


class Escalation(_Model):
    """Ask a person above these; no answer within `timeout_seconds` freezes the agent."""

    payment_above_usdc: Usdc = 0
    window: Literal["1m", "5m", "1h", "24h"] = "1h"
    window_above_usdc: Usdc = 0
    timeout_seconds: int = Field(900, gt=0, le=MAX_SECONDS)
    approval_ttl_seconds: int = Field(3600, ge=0, le=MAX_SECONDS)


class Merchants(_Model):
    """Allow/block lists. Entries are payTo addresses or resource URLs (a trailing `*` is a prefix)."""

    allow: list[Merchant] = []
    block: list[Merchant] = []
    allow_categories: list[str] = []
    block_categories: list[str] = []


class Anomaly(_Model):
    """Per-agent baselines and the fleet model. Models warn; they never freeze on their own."""

    enabled: bool = True
    warmup_payments: int = Field(30, ge=1, le=10**9)
    warmup_seconds: int = Field(7200, ge=0, le=MAX_SECONDS)
    spend_rate_ratio: float = Field(8.0, gt=1)
    spend_rate_z: float = Field(4.0, gt=0)
    min_spend_usdc: Usdc = 1.0
    payment_size_z: float = Field(6.0, gt=0)
    min_payment_usdc: Usdc = 0.5
    new_merchants: int = Field(6, ge=2, le=16)
    new_merchants_window_seconds: int = Field(600, gt=0, le=MAX_SECONDS)
    fleet: bool = True
    fleet_quantile: float = Field(0.995, gt=0.5, lt=1)
    fleet_corroborate_z: float = Field(4.5, ge=0)


class Findings(_Model):
    failed_verifications: int = Field(20, ge=1, le=64)
    failed_verifications_window_seconds: int = Field(60, gt=0, le=MAX_SECONDS)
    failed_reasons: list[str] = ["insufficient_funds"]


class Limits(_Model):
    """One fully resolved layer (defaults, then a team, then an agent, merged)."""

    caps: Caps = Caps()
    per_payment_max_usdc: Usdc = 0
    category_budgets_usdc: dict[str, Usdc] = {}
    escalation: Escalation = Escalation()
    merchants: Merchants = Merchants()
    anomaly: Anomaly = Anomaly()
    findings: Findings = Findings()
    actions: dict[RuleName, Action] = {}
    warn_cooldown_seconds: int = Field(3600, ge=0, le=MAX_SECONDS)

    def action(self, rule: str) -> Action:
        return self.actions.get(rule) or DEFAULT_ACTIONS[rule]


class Card(_Model):
    """A rate card entry: merchant (payTo address or resource URL, `*` suffix = prefix) -> category, price."""

    merchant: Merchant
    category: str
    price_usdc: Usdc | None = None
    version: str = "1"
    tolerance_pct: float = Field(5.0, ge=0, le=1000)


class PolicyFile(_Model):
    version: str = ""
    defaults: Limits = Limits()
    teams: dict[str, dict[str, Any]] = {}
    agents: dict[str, dict[str, Any]] = {}
    rate_card: list[Card] = []

    @model_validator(mode="after")
    def _cards_unique(self) -> "PolicyFile":
        seen: set[str] = set()
        for i, c in enumerate(self.rate_card):
            if c.merchant in seen:
                raise bad_value(f"merchant {c.merchant} is listed twice", "keep one entry (raise its version "
                                "when the price changes)", key=f"rate_card.{i}.merchant")
            seen.add(c.merchant)
        return self
