"""Creating the job's Kafka topics (idempotent)."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from dataflow import kafka_config
from dataflow.config import Settings
from dataflow.failed import MAX_FAILED_BYTES

log = logging.getLogger("dataflow.kafka_admin")


def ensure_topic(
    settings: Settings,
    topic: str,
    partitions: int,
    replication: int = 1,
    config: dict[str, str] | None = None,
) -> bool:
    """Create ``topic`` unless it exists; returns True when it was created."""
    admin = AdminClient(kafka_config.admin(settings))
    future = admin.create_topics(
        [
            NewTopic(
                topic,
                num_partitions=partitions,
                replication_factor=replication,
                config=config or {},
            )
        ],
        operation_timeout=30,
        request_timeout=30,
    )[topic]
    try:
        future.result()
        return True
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise


def ensure_topics(settings: Settings, partitions: int, replication: int = 1) -> None:
    for topic, cfg in (
        (settings.input_topic, {}),
        # Rejected messages can be as large as the biggest input message.
        (settings.failed_topic, {"max.message.bytes": str(MAX_FAILED_BYTES)}),
    ):
        created = ensure_topic(settings, topic, partitions, replication, cfg)
        log.info("Kafka topic %s %s", topic, "created" if created else "already exists")
