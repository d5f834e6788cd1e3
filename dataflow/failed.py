"""Publishing rejected messages, unchanged, to the failed topic with the headers of spec §4."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException, Producer

from dataflow import kafka_config, metrics
from dataflow.config import Settings

log = logging.getLogger("dataflow.failed")

# Header names are part of the contract with whoever reads the failed topic.
REASON = "error.reason"
DETAIL = "error.detail"
SOURCE_TOPIC = "source.topic"
SOURCE_PARTITION = "source.partition"
SOURCE_OFFSET = "source.offset"
SOURCE_TIMESTAMP = "source.timestamp"

TRUNCATED = "error.value_truncated"
KEY_TRUNCATED = "error.key_truncated"

MAX_DETAIL = 1000
# Failed-topic message size we ask for at bootstrap and allow in the producer.
MAX_FAILED_BYTES = 10 * 1024 * 1024
# What is kept of a value too large even for the failed topic (its size goes in a header).
TRUNCATED_KEEP = 64 * 1024


def producer_config(settings: Settings) -> dict:
    return kafka_config.failed_producer(settings, MAX_FAILED_BYTES + 65536)


class FailedTopicPublisher:
    """Blocking publisher: ``flush()`` returns only when every message is acknowledged, so an
    epoch is never committed with a rejection that is not on the failed topic."""

    def __init__(self, settings: Settings, producer: Producer | None = None):
        self.topic = settings.failed_topic
        self._settings = settings
        # Made at the first rejection (unless given, as unit tests do): librdkafka queues its
        # log lines until the client is polled, and a producer that never publishes would never
        # be polled, so during a Kafka outage an idle one would only accumulate them.
        self._client: Producer | None = producer
        self._undelivered: list[tuple] = []
        # Refused as too large and made smaller: re-sent at once, as waiting cannot help.
        self._smaller: list[tuple] = []
        self._too_small_logged = False

    @property
    def _producer(self) -> Producer:
        if self._client is None:
            self._client = Producer(producer_config(self._settings))
        return self._client

    def publish(
        self,
        value: bytes | None,
        key: bytes | None,
        reason: str,
        detail: str,
        source_topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
    ) -> None:
        headers = [
            (REASON, reason.encode()),
            (DETAIL, detail[:MAX_DETAIL].encode("utf-8", "replace")),
            (SOURCE_TOPIC, source_topic.encode()),
            (SOURCE_PARTITION, str(partition).encode()),
            (SOURCE_OFFSET, str(offset).encode()),
            (SOURCE_TIMESTAMP, str(timestamp_ms).encode()),
        ]
        self._produce(value, key, headers)

    def _produce(self, value, key, headers) -> None:
        record = (value, key, headers)

        def on_delivery(err: KafkaError | None, _msg) -> None:
            if err is None:
                metrics.FAILED_PUBLISHED.inc()
                return
            metrics.KAFKA_ERRORS.labels(err.name()).inc()
            if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                self._refused_as_too_large(record)
            else:
                self._undelivered.append(record)

        while True:
            try:
                self._producer.produce(
                    self.topic, value=value, key=key, headers=headers, on_delivery=on_delivery
                )
                self._producer.poll(0)  # serve reports and log lines as they come
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                metrics.KAFKA_ERRORS.labels(err.name()).inc()
                smaller = _shrunk(*record)
                if smaller is None:
                    self._refused_as_too_large(record)
                    return
                value, key, headers = record = smaller

    def _refused_as_too_large(self, record: tuple) -> None:
        """The size refusal is permanent: re-send the record smaller, or, when nothing is left to
        cut, say once that the topic is misconfigured and keep retrying (never drop it)."""
        smaller = _shrunk(*record)
        if smaller is not None:
            self._smaller.append(smaller)
            return
        if not self._too_small_logged:
            self._too_small_logged = True
            log.error(
                "failed topic %s refuses a rejection reduced to its %d bytes of headers "
                "(no value, no key): its max.message.bytes is too small; retrying until it "
                "is raised",
                self.topic,
                sum(len(name) + len(data) for name, data in record[2]),
            )
        self._undelivered.append(record)

    def flush(self) -> None:
        """Wait until every published message is acknowledged; re-send failures with backoff."""
        if self._client is None:
            return  # nothing was ever published
        attempt = 0
        while True:
            remaining = self._producer.flush(30)
            if remaining == 0 and not self._undelivered and not self._smaller:
                self._too_small_logged = False  # a later misconfiguration is reported anew
                return
            if self._smaller:
                retry, self._smaller = self._smaller, []
                log.info("re-sending %d message(s) to %s smaller", len(retry), self.topic)
                for record in retry:
                    self._produce(*record)
            elif self._undelivered:
                retry, self._undelivered = self._undelivered, []
                attempt += 1
                log.warning(
                    "re-sending %d message(s) to %s after delivery errors (attempt %d)",
                    len(retry),
                    self.topic,
                    attempt,
                )
                time.sleep(min(0.5 * 2**attempt, 10))
                for record in retry:
                    self._produce(*record)
            elif remaining:
                log.warning("%d message(s) for %s still in flight, waiting", remaining, self.topic)


def _shrunk(value, key, headers) -> tuple | None:
    """A smaller form of a record the failed topic refused as too large, or None when only our
    headers are left. The value is cut to TRUNCATED_KEEP, then halved at each refusal down to
    nothing, then the key is dropped; a header gives each one's original size, so the rejection
    is still recorded rather than lost."""
    names = {name for name, _ in headers}
    data = value or b""
    if data:
        if TRUNCATED not in names:
            headers = [*headers, (TRUNCATED, str(len(data)).encode())]
        keep = TRUNCATED_KEEP if len(data) > TRUNCATED_KEEP else len(data) // 2
        return data[:keep], key, headers
    if key:
        return value, None, [*headers, (KEY_TRUNCATED, str(len(key)).encode())]
    return None
