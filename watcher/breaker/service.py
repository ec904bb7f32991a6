"""The daemon service of the breakers: breaker log, webhook sender, notifications and the admin API.

    stage = BreakerStage(cfg, control=detect_stage, names=registry_names)
    daemon = Daemon(settings, stages=[detect_stage, stage], services=breaker_services(stage, cfg))

Entered after the producer starts and before consumption (the log is read to its end first, so every
partition's restore sees it); exited after the consumer closed: the admin API stops, then the sender gets
`drain_seconds` to finish what is queued (what is left is re-sent by the next owner).
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any, Callable

from watcher.breaker.admin import AdminServer
from watcher.breaker.config import BreakerConfig
from watcher.breaker.outbox import BreakerLog
from watcher.breaker.stage import BreakerStage
from watcher.breaker.webhook import WebhookSender
from watcher.breaker.notify import Notifier

log = logging.getLogger("watcher.breaker")


class BreakerService:
    def __init__(self, daemon: Any, stage: BreakerStage, cfg: BreakerConfig, *, drain_seconds: float = 3.0) -> None:
        self.daemon, self.stage, self.cfg = daemon, stage, cfg
        self.drain_seconds = drain_seconds
        self.stack = AsyncExitStack()
        self.sender: WebhookSender | None = None
        self.admin: AdminServer | None = None
        self.log: BreakerLog | None = None

    def _locate(self, agent: str) -> int | None:
        from watcher.pipeline.shard import agent_key
        try:
            key = agent_key(agent)
        except ValueError:
            return None
        for p, shard in self.daemon.shards.items():
            if key in shard.agents.index:
                return p
        return None

    async def __aenter__(self) -> "BreakerService":
        k = self.daemon.settings.kafka
        self.stage.partitions = k.partitions
        try:
            self.log = await self.stack.enter_async_context(BreakerLog(
                k.bootstrap, self.cfg.breaker.topic, partitions=k.partitions, replication=k.replication_factor,
                catchup_timeout_s=self.daemon.settings.checkpoint.restore_timeout_seconds))
            self.sender = WebhookSender(self.cfg.webhook, self.stage.on_result, self.stage.metrics)
            await self.sender.__aenter__()
            self.stack.push_async_callback(self._close_sender)
            notifier = await self.stack.enter_async_context(Notifier(self.cfg.breaker, self.stage.metrics))
            self.stage.attach(self.sender, notifier, self.daemon.producer, self.log)
            self.stage.locate = self._locate
            if self.cfg.admin.enabled:
                self.admin = await self.stack.enter_async_context(AdminServer(self.cfg.admin, self.stage, self.daemon))
        except BaseException:
            await self.stack.aclose()
            raise
        if not self.cfg.webhook.url:
            log.warning("webhooks DISABLED: webhook.url is not set (--webhook-url), so breaker changes are "
                        "recorded on %s but no wallet service hears of them. %d undelivered webhooks wait "
                        "on the topic (these and every new one are kept there); a start with webhook.url "
                        "sends them", self.cfg.breaker.topic, self.log.undelivered())
        return self

    async def _close_sender(self) -> None:
        pending = self.sender.pending()
        if pending:
            log.info("waiting up to %.1f s for %d queued webhooks", self.drain_seconds, pending)
        await self.sender.close(self.drain_seconds)
        left = self.stage.undelivered()
        if left and not self.cfg.webhook.url:
            log.info("%d webhooks kept unsent on %s (webhook.url is not set); a start with webhook.url on "
                     "the same Kafka sends them", left, self.cfg.breaker.topic)
        elif left:
            log.warning("%d webhooks still undelivered at exit; the next start re-sends them", left)

    async def __aexit__(self, *exc) -> None:
        try:
            await self.stack.aclose()
        finally:
            self.stage.attach(None, None, None, None)


def breaker_services(stage: BreakerStage, cfg: BreakerConfig, **kw) -> list[Callable[[Any], BreakerService]]:
    """The service factories to pass to Daemon(services=...)."""
    return [lambda daemon: BreakerService(daemon, stage, cfg, **kw)]
