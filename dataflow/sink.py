"""Cassandra sink: each consumed batch is flattened and written by the engine, rejections go to
the failed topic, progress to the consumer group.

Writes are pipelined: ``write_batch`` hands the batch to the engine (``dataflow.engines``) and
returns, and the end-of-epoch ``snapshot`` returns only when every row is acknowledged by
Cassandra and every rejection by Kafka, so a recovery epoch can never close over unwritten
data. Transient Cassandra errors are retried with backoff for as long as they last
(back-pressure); only rows Cassandra refuses permanently go to the failed topic (reason
``cassandra_rejected``). Offsets are committed to the consumer group as batches complete, in
order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import ClassVar

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from dataflow import metrics
from dataflow.config import Settings
from dataflow.engines import Completed, Engine, Rejection, open_engine
from dataflow.failed import FailedTopicPublisher
from dataflow.offsets import OffsetCommitter
from dataflow.source import NO_TIMESTAMP, MessageBatch, partition_names

log = logging.getLogger("dataflow.sink")


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
    """What every sink partition of a worker process shares: one engine (one Cassandra
    session and in-flight limit), one failed-topic producer and one offset committer."""

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
        self.engine.close()
        log.info("final counters %s", metrics.log_line())
        self.committer.close()

    def __init__(self, settings: Settings):
        self.settings = settings
        self.users = 0
        self.engine: Engine = open_engine(settings)
        self.failed = FailedTopicPublisher(settings)
        self.committer = OffsetCommitter(settings)
        log.info(
            "writing to %s.%s with the %s engine (consistency %s, %d requests in flight)",
            settings.cassandra_keyspace,
            settings.cassandra_table,
            self.engine.name,
            settings.cassandra_consistency,
            settings.cassandra_concurrency,
        )


class _CassandraSinkPartition(StatefulSinkPartition):
    """Writes of one Kafka partition. ``write_batch`` only submits; ``snapshot`` (end of
    each epoch) returns once every write is acknowledged by Cassandra and every rejection by
    Kafka, so a recovery epoch never closes over unwritten data. Offsets are committed to the
    consumer group as batches complete, in order."""

    def __init__(self, conn: _Connection):
        self._conn = conn
        # Submitted batches in order, with their engine ticket and whether any message was
        # rejected (and so published, to be flushed before its offsets are committed).
        self._pending: deque[tuple[MessageBatch, object, bool]] = deque()

    def write_batch(self, items: list[MessageBatch]) -> None:
        engine = self._conn.engine
        clock = now_us()
        for batch in items:
            ticket, refused = engine.submit(batch, clock)
            for rejection in refused:
                self._reject(batch, rejection)
            self._pending.append((batch, ticket, bool(refused)))
        self._complete(wait=False)

    def snapshot(self) -> None:
        self._complete(wait=True)
        return None

    def close(self) -> None:
        try:
            self._complete(wait=True)
            self._conn.failed.flush()
            self._conn.committer.commit_final()
        finally:
            self._conn.release()

    def _complete(self, *, wait: bool) -> None:
        """Retire finished batches in order: publish their rejections, then commit offsets."""
        conn = self._conn
        if wait and self._pending:
            conn.engine.wait([ticket for _, ticket, _ in self._pending])
        conn.engine.publish_metrics()
        done: list[tuple[MessageBatch, Completed, bool]] = []
        while self._pending:
            batch, ticket, rejected = self._pending[0]
            completed = conn.engine.take(ticket)
            if completed is None:
                break
            self._pending.popleft()
            done.append((batch, completed, rejected))
        if not done:
            return
        flush = False
        touched: set[tuple[str, int]] = set()
        for batch, completed, rejected in done:
            flush = flush or rejected or bool(completed.rejections)
            for rejection in completed.rejections:
                self._reject(batch, rejection)
            metrics.WRITE_SECONDS.observe((completed.done_at_ms - completed.submitted_ms) / 1000)
            done_s = completed.done_at_ms / 1000
            metrics.observe_many(
                metrics.EVENT_AGE,
                [max(done_s - t / 1000, 0.0) for t in batch.timestamps if t != NO_TIMESTAMP],
            )
            if batch.offsets:
                conn.committer.advance(batch.topic, batch.partition, batch.offsets[-1])
                touched.add((batch.topic, batch.partition))
        if flush:
            conn.failed.flush()
        # Tell the consumer group how far we are, for lag tools and restarts without state.
        conn.committer.commit(touched)

    def _reject(self, batch: MessageBatch, rejection: Rejection) -> None:
        i = rejection.index
        metrics.REJECTIONS.labels(rejection.reason).inc()
        self._conn.failed.publish(
            batch.values[i],
            batch.keys[i],
            rejection.reason,
            rejection.detail,
            batch.topic,
            batch.partition,
            batch.offsets[i],
            batch.timestamps[i],
        )
