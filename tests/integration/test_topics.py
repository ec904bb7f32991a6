"""ensure_topics against the real broker: what it creates, and the mismatches it refuses to run with."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.helpers import make_settings
from watcher.errors import BrokerError
from watcher.sources.kafka import ensure_topics

pytestmark = pytest.mark.integration


async def test_creates_every_topic_and_a_compacted_checkpoint_topic(kafka_bootstrap, unique):
    s = make_settings(kafka_bootstrap, unique, partitions=3)
    await ensure_topics(s.kafka)
    k = s.kafka
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        meta = {m["topic"]: len(m["partitions"]) for m in await admin.describe_topics(
            [k.payments_topic, k.chain_topic, k.dead_letter_topic, k.checkpoint_topic])}
        assert meta == {k.payments_topic: 3, k.chain_topic: 3, k.dead_letter_topic: 3, k.checkpoint_topic: 1}
        try:
            res = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, k.checkpoint_topic)])
        except Exception as exc:  # noqa: BLE001
            pytest.skip(f"this broker does not describe topic configs ({exc!r}); creation was checked above")
        entries = {e[0]: e[1] for r in res for e in r.resources[0][4]}
        assert entries.get("cleanup.policy") == "compact", entries  # Kafka reports its default; Tansu what was set
    finally:
        await admin.close()
    await ensure_topics(s.kafka)  # idempotent on a second start


async def test_refuses_a_partition_count_that_differs_from_the_topics(kafka_bootstrap, unique):
    await ensure_topics(make_settings(kafka_bootstrap, unique, partitions=4).kafka)
    with pytest.raises(BrokerError) as err:
        await ensure_topics(make_settings(kafka_bootstrap, unique, partitions=8).kafka)
    assert "kafka.partitions is 8" in str(err.value) and "set kafka.partitions" in str(err.value)
    assert "to 4" in str(err.value)


async def test_refuses_input_topics_with_different_partition_counts(kafka_bootstrap, unique):
    s = make_settings(kafka_bootstrap, unique, partitions=2)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(s.kafka.payments_topic, 2, 1), NewTopic(s.kafka.chain_topic, 3, 1)])
    finally:
        await admin.close()
    with pytest.raises(BrokerError, match="same number of partitions"):
        await ensure_topics(s.kafka)


async def test_breaker_topic_is_kept_forever(kafka_bootstrap, unique):
    """watcher.breaker is the audit trail and the tap's source of truth: it must not age out."""
    from watcher.breaker.outbox import ensure_topic

    topic = f"brk-{unique}"
    await ensure_topic(kafka_bootstrap, topic, 2)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        res = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    entries = {e[0]: e[1] for r in res for e in r.resources[0][4]}
    assert entries.get("retention.ms") == "-1", entries
