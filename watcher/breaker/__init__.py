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
"""

from watcher.breaker.config import AdminSettings, BreakerConfig, BreakerSettings, WebhookSettings, load_breaker_config
from watcher.breaker.signing import SignatureError, sign, verify
from watcher.breaker.state import Breaker, Breakers, Effect, Timing
from watcher.breaker.stage import BreakerStage, NotOwnedError

__all__ = ["AdminSettings", "BreakerConfig", "BreakerSettings", "WebhookSettings", "load_breaker_config",
           "SignatureError", "sign", "verify", "Breaker", "Breakers", "Effect", "Timing", "BreakerStage",
           "NotOwnedError", "breaker_services"]


def __getattr__(name):
    if name == "breaker_services":
        from watcher.breaker.service import breaker_services
        return breaker_services
    raise AttributeError(name)
