"""Resolve where Kafka is: --bootstrap / kafka.bootstrap, or the embedded Tansu broker."""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator

from watcher.broker import TansuBroker
from watcher.config import Settings

log = logging.getLogger(__name__)


def with_bootstrap(settings: Settings, bootstrap: str) -> Settings:
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"bootstrap": bootstrap})})


@contextlib.asynccontextmanager
async def kafka_settings(settings: Settings, bootstrap: str | None = None) -> AsyncIterator[Settings]:
    """Yield settings whose kafka.bootstrap is reachable, starting the embedded broker when none is set."""
    bootstrap = bootstrap or settings.kafka.bootstrap
    if bootstrap:
        yield with_bootstrap(settings, bootstrap)
        return
    async with TansuBroker() as broker:
        log.warning("no Kafka configured: started the embedded Tansu broker on %s. It is MEMORY-ONLY: "
                    "topics, offsets and checkpoints are gone when spendwatch exits. Use --bootstrap "
                    "host:port (or kafka.bootstrap) for a real Kafka.", broker.bootstrap)
        yield with_bootstrap(settings, broker.bootstrap)
