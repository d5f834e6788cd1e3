"""Cassandra sink: upserts and deletes with ``USING TIMESTAMP``, rejections to the failed topic.

Writes are pipelined (``dataflow.cassandra_writer``): ``write_batch`` submits and returns, and
the end-of-epoch ``snapshot`` returns only when every row is acknowledged by Cassandra and every
rejection by Kafka, so a recovery epoch can never close over unwritten data. Transient Cassandra
errors are retried with backoff for as long as they last (back-pressure); only rows Cassandra
refuses permanently go to the failed topic. Consumed offsets are committed to the consumer
group as batches complete.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import ClassVar

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from cassandra import ConsistencyLevel
from confluent_kafka import Consumer, KafkaException, TopicPartition

from dataflow import kafka_config, metrics
from dataflow.cassandra_session import connect
from dataflow.cassandra_writer import PipelinedWriter, Ticket, Write
from dataflow.config import Settings
from dataflow.failed import FailedTopicPublisher
from dataflow.flatten import COLUMNS, DELETE, REJECT, UPSERT
from dataflow.flatten_step import FlatBatch
from dataflow.source import NO_TIMESTAMP, partition_names
from dataflow.write_time import write_timestamp

log = logging.getLogger("dataflow.sink")

CASSANDRA_REJECTED = "cassandra_rejected"


def now_us() -> int:
    return time.time_ns() // 1000


class CassandraSink(FixedPartitionedSink):
    """One sink partition per Kafka partition, so that Bytewax places it on the worker that
    reads that partition (both are assigned the same way) and snapshots it with each epoch."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._index: dict[str, int] | None = None

    def list_parts(self) -> list[str]:
        parts = partition_names(self.settings)
        # Bytewax picks the partition at ``part_fn``'s index into the sorted list of all parts.
        self._index = {p: i for i, p in enumerate(sorted(parts))}
        return parts

    def part_fn(self, item_key: str) -> int:
        if self._index is None:
            self.list_parts()
        return self._index[item_key]

    def build_part(self, step_id: str, for_part: str, resume_state: None):
        return _CassandraSinkPartition(_Connection.acquire(self.settings))


class _Connection:
    """What every sink partition of a worker process shares: one Cassandra session, one
    in-flight limit, one failed-topic producer and one offset committer."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _open: ClassVar[dict[int, _Connection]] = {}

    @classmethod
    def acquire(cls, settings: Settings) -> _Connection:
        with cls._lock:
            conn = cls._open.get(id(settings))
            if conn is None:
                conn = cls._open[id(settings)] = cls(settings)
            conn.users += 1
            return conn

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users:
                return
            del self._open[id(self.settings)]
        log.info("final counters %s", metrics.log_line())
        self.committer.close()
        self.cluster.shutdown()

    def __init__(self, settings: Settings):
        self.settings = settings
        self.users = 0
        self.cluster, session = connect(settings)
        consistency = ConsistencyLevel.name_to_value[settings.cassandra_consistency]
        table = f"{settings.cassandra_keyspace}.{settings.cassandra_table}"
        self.insert = session.prepare(
            f"INSERT INTO {table} ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(COLUMNS))}) USING TIMESTAMP ?"
        )
        self.delete = session.prepare(
            f"DELETE FROM {table} USING TIMESTAMP ? WHERE program_id = ? AND user_id = ?"
        )
        for stmt in (self.insert, self.delete):
            stmt.consistency_level = consistency
            stmt.is_idempotent = True
        self.writer = PipelinedWriter(session, consistency, settings.cassandra_concurrency)
        self.failed = FailedTopicPublisher(settings)
        self.committer = Consumer(kafka_config.offset_committer(settings))
        log.info("writing to %s (consistency %s)", table, settings.cassandra_consistency)


class _CassandraSinkPartition(StatefulSinkPartition):
    """Writes of one Kafka partition. ``write_batch`` only submits; ``snapshot`` (end of
    each epoch) returns once every write is acknowledged by Cassandra and every rejection by
    Kafka, so a recovery epoch never closes over unwritten data. Offsets are committed to the
    consumer group as batches complete, in order."""

    def __init__(self, conn: _Connection):
        self._conn = conn
        # Submitted batches in order, with whether any of their messages was rejected (and so
        # published to the failed topic, to be flushed before their offsets are committed).
        self._pending: deque[tuple[FlatBatch, Ticket, bool]] = deque()
        self._committed: dict[tuple[str, int], int] = {}

    def write_batch(self, items: list[FlatBatch]) -> None:
        conn = self._conn
        clock = now_us()
        offset = conn.settings.write_timestamp_offset_us
        for fb in items:
            writes: list[Write] = []
            stamps = fb.source.timestamps
            rejected = False
            for i, (op, payload, ts, flag) in enumerate(fb.results):
                if op == REJECT:
                    self._reject(fb, i, payload, ts)
                    rejected = True
                    continue
                ts = write_timestamp(ts, stamps[i], clock, offset)
                if op == UPSERT:
                    if flag:
                        metrics.INVALID_DATES.inc()
                    writes.append(Write(payload[0], conn.insert, (*payload, ts), True, (fb, i)))
                elif op == DELETE:
                    params = (ts, payload[0], payload[1])
                    writes.append(Write(payload[0], conn.delete, params, False, (fb, i)))
            self._pending.append((fb, conn.writer.submit(writes), rejected))
        self._complete(wait=False)

    def snapshot(self) -> None:
        self._complete(wait=True)
        return None

    def close(self) -> None:
        try:
            self._complete(wait=True)
            self._conn.failed.flush()
            if self._committed:
                # Asynchronous commits may have been lost (a broker restart); the last word
                # is synchronous.
                try:
                    self._conn.committer.commit(offsets=self._offsets(), asynchronous=False)
                except KafkaException as exc:
                    log.warning("could not commit the final offsets: %s", exc.args[0])
        finally:
            self._conn.release()

    def _complete(self, *, wait: bool) -> None:
        """Retire finished batches in order: publish their rejections, then commit offsets."""
        conn = self._conn
        if wait and self._pending:
            conn.writer.wait([t for _, t, _ in self._pending])
        done: list[tuple[FlatBatch, Ticket, bool]] = []
        while self._pending and self._pending[0][1].done:
            done.append(self._pending.popleft())
        if not done:
            return
        flush = False
        for fb, ticket, rejected in done:
            flush = flush or rejected or bool(ticket.rejections)
            for write, detail in ticket.rejections:
                self._reject(*write.origin, CASSANDRA_REJECTED, detail)
            metrics.WRITE_SECONDS.observe((ticket.done_at_ms - ticket.submitted_ms) / 1000)
            for stamp in fb.source.timestamps:
                if stamp != NO_TIMESTAMP:
                    metrics.EVENT_AGE.observe(max(ticket.done_at_ms - stamp, 0) / 1000)
            if fb.source.offsets:
                key = (fb.source.topic, fb.source.partition)
                self._committed[key] = max(self._committed.get(key, -1), fb.source.offsets[-1])
        if flush:
            conn.failed.flush()
        # Tell the consumer group how far we are, for lag tools and restarts without state.
        conn.committer.commit(offsets=self._offsets(), asynchronous=True)
        # confluent-kafka always installs a commit callback, so each asynchronous commit
        # queues its result until the consumer is polled: unpolled, they pile up in memory.
        conn.committer.poll(0)

    def _offsets(self) -> list[TopicPartition]:
        return [TopicPartition(t, p, o + 1) for (t, p), o in self._committed.items()]

    def _reject(self, fb: FlatBatch, i: int, reason: str, detail: str) -> None:
        src = fb.source
        metrics.REJECTIONS.labels(reason).inc()
        self._conn.failed.publish(
            src.values[i],
            src.keys[i],
            reason,
            detail,
            src.topic,
            src.partition,
            src.offsets[i],
            src.timestamps[i],
        )
