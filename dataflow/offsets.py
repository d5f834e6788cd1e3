"""Progress for the consumer group: the offsets whose rows Cassandra acknowledged.

Bytewax's recovery state is what the job resumes from; these commits are for everyone else: lag
tools and restarts without recovery state (the Sunbird offset-reset runbook keeps working).
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from dataflow import kafka_config
from dataflow.config import Settings

log = logging.getLogger("dataflow.sink")

FINAL_COMMIT_WAIT_S = 30.0


class OffsetCommitter:
    """One per worker process, shared by its sink partitions. ``advance`` only moves forward."""

    def __init__(self, settings: Settings, consumer: Consumer | None = None):
        self._consumer = consumer or Consumer(kafka_config.offset_committer(settings))
        self._next: dict[tuple[str, int], int] = {}

    def advance(self, topic: str, partition: int, last_offset: int) -> None:
        """Record that every message up to ``last_offset`` of the partition is done."""
        key = (topic, partition)
        if last_offset + 1 > self._next.get(key, 0):
            self._next[key] = last_offset + 1

    def commit(self, partitions: set[tuple[str, int]]) -> None:
        """Commit asynchronously what ``advance`` recorded for ``partitions``."""
        offsets = [TopicPartition(t, p, self._next[(t, p)]) for t, p in partitions]
        if not offsets:
            return
        self._consumer.commit(offsets=offsets, asynchronous=True)
        # confluent-kafka always installs a commit callback, so each asynchronous commit
        # queues its result until the consumer is polled: unpolled, they pile up in memory.
        self._consumer.poll(0)

    def commit_final(self) -> None:
        """Asynchronous commits may have been lost (a broker restart); the last word is
        synchronous."""
        if not self._next:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._next.items()]
        # Right after a broker restart the group coordinator can take seconds to come back:
        # keep trying for a while rather than leave the group's lag wrong.
        deadline = time.monotonic() + FINAL_COMMIT_WAIT_S
        while True:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
                return
            except KafkaException as exc:
                if time.monotonic() >= deadline:
                    log.warning("could not commit the final offsets: %s", exc.args[0])
                    return
                time.sleep(1.0)

    def close(self) -> None:
        self._consumer.close()
