"""Circuit breakers per agent, the signed wallet-service webhook with a durable outbox, notifications and
the admin API.

    state.py    the pure state machine (closed / open / half_open / held)
    stage.py    BreakerStage: decisions in, changes out (daemon stage)
    outbox.py   the `watcher.breaker` topic: records, and the reader that recovers undelivered webhooks
    webhook.py  the body and the sender (retries, back-off with jitter, per-agent order, bounded)
    signing.py  Spendwatch-Signature: sign and verify (receivers import this)
    notify.py   Slack and PagerDuty
    admin.py    the admin HTTP API; openapi.py its document; client.py + cli.py `spendwatch breaker`
    service.py  the daemon service that wires them

The names below are imported on first use (PEP 562): commands that only read the configuration, such as
`spendwatch replay`, do not load aiohttp and the outbox.
"""

from __future__ import annotations

from watcher.lazy import lazy_names

_WHERE = {"AdminSettings": "config", "BreakerConfig": "config", "BreakerSettings": "config",
          "WebhookSettings": "config", "load_breaker_config": "config", "SignatureError": "signing",
          "sign": "signing", "verify": "signing", "Breaker": "state", "Breakers": "state", "Effect": "state",
          "Timing": "state", "BreakerStage": "stage", "NotOwnedError": "stage", "breaker_services": "service"}

__all__ = sorted(_WHERE)
__getattr__ = lazy_names(__name__, _WHERE)
