"""Kafka source that carries one Python object per consumed batch through the dataflow.

Bytewax's own ``KafkaSource`` builds a dataclass per message; at our rates that costs more than
the flattening itself, so each ``next_batch`` returns a single :class:`MessageBatch` holding
parallel lists. One partition of the source is one Kafka partition (the unit of parallelism);
its recovery state is the next offset to read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import methodcaller

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from dataflow import kafka_config, metrics, shutdown
from dataflow.config import Settings

log = logging.getLogger("dataflow.source")

# Kafka reports "no timestamp" as type 0; the sink then uses the wall clock.
NO_TIMESTAMP = -1
_stamp = methodcaller("timestamp")
# An idle partition is polled again after this pause instead of spinning.
IDLE_PAUSE = timedelta(milliseconds=20)


@dataclass(slots=True)
class MessageBatch:
    """Messages of one ``consume()`` call on one partition, as parallel lists."""

    topic: str
    partition: int
    values: list[bytes | None] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)  # ms, or NO_TIMESTAMP


def consumer_config(settings: Settings, *, eof: bool) -> dict:
    return kafka_config.source_consumer(settings, eof=eof)


class StartupError(RuntimeError):
    """The job cannot start; the message is one line that says why and what to check."""


def list_partitions(settings: Settings, timeout: float | None = None) -> list[int]:
    """Partitions of the input topic, waiting up to ``timeout`` (default PUI_STARTUP_TIMEOUT)
    for the brokers. Raises :class:`StartupError` naming the brokers and the likely cause: at
    once when waiting cannot help (TLS/SASL mismatch, credentials), else when time is up. The
    bootstrap hint is given only when a broker answered and the topic is missing."""
    timeout = settings.startup_timeout if timeout is None else timeout
    errors: list[tuple[str, str]] = []
    admin = AdminClient(
        {
            **kafka_config.admin(settings, error_cb=lambda e: errors.append((e.name(), e.str()))),
            # The probe's own client lines are summarised in the one error line below.
            "logger": kafka_config.RateLimitedLog(log, level=logging.DEBUG),
        }
    )
    brokers = settings.kafka_brokers
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        answered = None
        try:
            meta = admin.list_topics(
                topic=settings.input_topic, timeout=max(min(remaining, 2), 0.5)
            )
            answered = meta.topics.get(settings.input_topic)
            if answered is not None and answered.error is None and answered.partitions:
                # Serve the queued log events, else librdkafka prints them to stderr as the
                # client is destroyed.
                admin.poll(0)
                return sorted(answered.partitions)
        except KafkaException as exc:
            errors.append((exc.args[0].name(), exc.args[0].str()))
        admin.poll(0)  # serves the error callbacks
        if answered is None:
            diagnosis = kafka_config.diagnose(errors, settings)
            if diagnosis.final or time.monotonic() >= deadline:
                raise StartupError(
                    f"Kafka at {brokers}: {diagnosis.cause}"
                    + ("" if diagnosis.final else f" (waited {timeout:g} s, PUI_STARTUP_TIMEOUT)")
                )
        elif time.monotonic() >= deadline:
            raise StartupError(
                f"Kafka topic {settings.input_topic!r} does not exist on {brokers} "
                f"({answered.error.str() if answered.error else 'no partitions'}): create it "
                "with python -m dataflow.bootstrap, or check PUI_INPUT_TOPIC"
            )
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))


def partition_names(settings: Settings) -> list[str]:
    """Partition names of the input topic, shared by the source and the sink so that Bytewax
    assigns a partition's reading and writing to the same worker."""
    return [str(p) for p in list_partitions(settings)]


class KafkaBatchSource(FixedPartitionedSource):
    def __init__(self, settings: Settings):
        self.settings = settings

    def list_parts(self) -> list[str]:
        return partition_names(self.settings)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None):
        return _KafkaPartition(self.settings, int(for_part), resume_state)


class _KafkaPartition(StatefulSourcePartition):
    def __init__(
        self,
        settings: Settings,
        partition: int,
        resume_state: int | None,
        consumer: Consumer | None = None,  # unit tests pass a stand-in
    ):
        self._settings = settings
        self._topic = settings.input_topic
        self._partition = partition
        self._stop_at_end = settings.stop_at_end
        self._batch_size = settings.batch_size
        self._consumer = consumer or Consumer(consumer_config(settings, eof=settings.stop_at_end))
        start = resume_state if resume_state is not None else self._initial_offset()
        self._next_offset = start
        self._consumer.assign([TopicPartition(self._topic, partition, start)])
        self._lag_gauge = metrics.LAG.labels(str(partition))
        self._eof = False
        self._awake: datetime | None = None
        log.info("partition %s[%d] starts at %s", self._topic, partition, _offset_name(start))

    def _initial_offset(self) -> int:
        """Without recovery state: the group's committed offset (else earliest), per spec §5."""
        mode = self._settings.start_offset
        if mode == "earliest":
            return OFFSET_BEGINNING
        if mode == "latest":
            return OFFSET_END
        tp = TopicPartition(self._topic, self._partition)
        for attempt in range(10):
            try:
                committed = self._consumer.committed([tp], timeout=10)[0].offset
                return committed if committed >= 0 else OFFSET_BEGINNING
            except KafkaException as exc:
                log.warning("reading committed offset failed (%s), retrying", exc.args[0])
                time.sleep(min(2**attempt, 10))
        raise RuntimeError(
            f"cannot read the committed offset of group {self._settings.group_id!r} for "
            f"{self._topic}[{self._partition}]"
        )

    def next_batch(self) -> list[MessageBatch]:
        if self._eof or shutdown.requested():
            raise StopIteration()
        # librdkafka prefetches in the background, so a zero timeout only takes what is queued.
        msgs = self._consumer.consume(self._batch_size, 0)
        if not msgs:
            self._awake = datetime.now(UTC) + IDLE_PAUSE
            metrics.polled(0)
            return []
        self._awake = None
        batch = MessageBatch(self._topic, self._partition)
        if any([msg.error() is not None for msg in msgs]):
            self._fill_checking(batch, msgs)
        else:
            # The usual case, one pass per field: a third of the per-message Python work.
            batch.values = [msg.value() for msg in msgs]
            batch.keys = [msg.key() for msg in msgs]
            batch.offsets = [msg.offset() for msg in msgs]
            batch.timestamps = [ts if kind else NO_TIMESTAMP for kind, ts in map(_stamp, msgs)]
        offsets = batch.offsets
        metrics.polled(len(offsets))
        if not offsets:
            return []
        self._next_offset = offsets[-1] + 1
        metrics.MESSAGES.inc(len(offsets))
        metrics.BATCH_SIZE.observe(len(offsets))
        _, high = self._consumer.get_watermark_offsets(
            TopicPartition(self._topic, self._partition), cached=True
        )
        if high >= 0:
            self._lag_gauge.set(max(high - self._next_offset, 0))
        return [batch]

    def _fill_checking(self, batch: MessageBatch, msgs: list) -> None:
        """Messages mixed with errors (end of partition, broker trouble)."""
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = self._stop_at_end
                    continue
                metrics.KAFKA_ERRORS.labels(err.name()).inc()
                if err.fatal():
                    raise RuntimeError(f"fatal Kafka error on {self._topic}: {err.str()}")
                log.warning("Kafka error on %s[%d]: %s", self._topic, self._partition, err.str())
                continue
            batch.values.append(msg.value())
            batch.keys.append(msg.key())
            batch.offsets.append(msg.offset())
            ts_type, ts = msg.timestamp()
            batch.timestamps.append(ts if ts_type else NO_TIMESTAMP)

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._next_offset

    def close(self) -> None:
        self._consumer.close()


def _offset_name(offset: int) -> str:
    return {OFFSET_BEGINNING: "earliest", OFFSET_END: "latest"}.get(offset, f"offset {offset}")
