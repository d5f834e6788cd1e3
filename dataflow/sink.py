"""Cassandra sink: upserts and deletes with ``USING TIMESTAMP``, rejections to the failed topic.

``write_batch`` returns only when every row is acknowledged by Cassandra, every rejection by
Kafka, and the consumed offsets are committed to the consumer group, so a recovery epoch can
never close over unwritten data. Transient Cassandra errors are retried with backoff for as long
as they last (back-pressure); only rows Cassandra refuses permanently go to the failed topic.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from cassandra import AuthenticationFailed, ConsistencyLevel, InvalidRequest
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.concurrent import execute_concurrent
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType
from confluent_kafka import Consumer, KafkaException, TopicPartition

from dataflow import metrics
from dataflow.config import Settings
from dataflow.failed import FailedTopicPublisher
from dataflow.flatten import COLUMNS, DELETE, REJECT, UPSERT
from dataflow.flatten_step import FlatBatch
from dataflow.source import NO_TIMESTAMP

log = logging.getLogger("dataflow.sink")

CASSANDRA_REJECTED = "cassandra_rejected"
# Rows of one program (one Cassandra partition) are sent as unlogged batches of this size:
# one request per batch instead of one per row, and well under the 5 KiB warning threshold
# for typical rows.
MAX_BATCH_ROWS = 8


def connect(settings: Settings, *, wait: float | None = None) -> tuple[Cluster, Session]:
    """Connect to Cassandra, retrying while it is unavailable (forever when ``wait`` is None)."""
    auth = None
    if settings.cassandra_username:
        auth = PlainTextAuthProvider(settings.cassandra_username, settings.cassandra_password)
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(
            DCAwareRoundRobinPolicy(local_dc=settings.cassandra_local_dc)
        ),
        consistency_level=ConsistencyLevel.name_to_value[settings.cassandra_consistency],
    )
    deadline = None if wait is None else time.monotonic() + wait
    attempt = 0
    while True:
        cluster = Cluster(
            list(settings.cassandra_hosts),
            port=settings.cassandra_port,
            auth_provider=auth,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            protocol_version=5,
            connect_timeout=10,
        )
        try:
            return cluster, cluster.connect()
        except NoHostAvailable as exc:
            cluster.shutdown()
            if any(isinstance(e, AuthenticationFailed) for e in exc.errors.values()):
                # Waiting does not fix a wrong password: say so now, naming the settings.
                raise ConnectionError(
                    "Cassandra rejected the credentials: check PUI_CASSANDRA_USERNAME "
                    f"({settings.cassandra_username or 'not set'}) and PUI_CASSANDRA_PASSWORD"
                ) from None
            attempt += 1
            if deadline is not None and time.monotonic() >= deadline:
                raise ConnectionError(
                    f"Cassandra is not reachable at {','.join(settings.cassandra_hosts)}:"
                    f"{settings.cassandra_port}: {_short(exc)}"
                ) from None
            pause = min(2**attempt, 30)
            log.warning("Cassandra not reachable (%s); retrying in %ds", _short(exc), pause)
            time.sleep(pause)


def _short(exc: BaseException) -> str:
    if isinstance(exc, NoHostAvailable) and exc.errors:
        return "; ".join(f"{host}: {err}" for host, err in exc.errors.items())[:300]
    return (str(exc) or type(exc).__name__)[:300]


def is_permanent(exc: BaseException) -> bool:
    """Errors that will fail the same way on every retry: the row goes to the failed topic.
    Anything else (timeouts, unavailability, overload, auth) is retried until it succeeds."""
    return isinstance(exc, InvalidRequest | TypeError | ValueError | OverflowError)


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)
class _Write:
    """One Cassandra write and where it came from, for retries and rejections."""

    program_id: str
    stmt: object
    params: tuple
    upsert: bool
    batch: FlatBatch
    index: int


class CassandraSink(DynamicSink):
    def __init__(self, settings: Settings):
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int):
        return _CassandraSinkPartition(self.settings)


class _CassandraSinkPartition(StatelessSinkPartition):
    def __init__(self, settings: Settings):
        self._settings = settings
        self._cluster, self._session = connect(settings)
        consistency = ConsistencyLevel.name_to_value[settings.cassandra_consistency]
        table = f"{settings.cassandra_keyspace}.{settings.cassandra_table}"
        self._insert = self._session.prepare(
            f"INSERT INTO {table} ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(COLUMNS))}) USING TIMESTAMP ?"
        )
        self._delete = self._session.prepare(
            f"DELETE FROM {table} USING TIMESTAMP ? WHERE program_id = ? AND user_id = ?"
        )
        for stmt in (self._insert, self._delete):
            stmt.consistency_level = consistency
            stmt.is_idempotent = True
        self._consistency = consistency
        self._failed = FailedTopicPublisher(settings)
        self._committed: dict[tuple[str, int], int] = {}
        self._committer = Consumer(
            {
                "bootstrap.servers": settings.kafka_brokers,
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                **settings.kafka_extra,
            }
        )
        log.info("writing to %s (consistency %s)", table, settings.cassandra_consistency)

    def write_batch(self, items: list[FlatBatch]) -> None:
        clock = now_us()
        writes: list[_Write] = []
        rejected = 0
        for fb in items:
            src = fb.source
            stamps = src.timestamps
            for i, (op, payload, ts, flag) in enumerate(fb.results):
                if op == REJECT:
                    self._reject(fb, i, payload, ts)
                    rejected += 1
                    continue
                if ts is None:
                    ts = stamps[i] * 1000 if stamps[i] != NO_TIMESTAMP else clock
                if ts > clock:
                    ts = clock
                if op == UPSERT:
                    if flag:
                        metrics.INVALID_DATES.inc()
                    writes.append(_Write(payload[0], self._insert, (*payload, ts), True, fb, i))
                elif op == DELETE:
                    writes.append(
                        _Write(payload[0], self._delete, (ts, payload[0], payload[1]), False, fb, i)
                    )
        if writes:
            started = time.perf_counter()
            self._write_all(writes)
            metrics.WRITE_SECONDS.observe(time.perf_counter() - started)
            acked_ms = time.time() * 1000
            for fb in items:
                for stamp in fb.source.timestamps:
                    if stamp != NO_TIMESTAMP:
                        metrics.EVENT_AGE.observe(max(acked_ms - stamp, 0) / 1000)
        if rejected:
            self._failed.flush()
        self._commit(items)

    def _reject(self, fb: FlatBatch, i: int, reason: str, detail: str) -> None:
        src = fb.source
        metrics.REJECTIONS.labels(reason).inc()
        self._failed.publish(
            src.values[i],
            src.keys[i],
            reason,
            detail,
            src.topic,
            src.partition,
            src.offsets[i],
            src.timestamps[i],
        )

    def _write_all(self, writes: list[_Write]) -> None:
        """Send every write; retry transient failures for as long as they last."""
        pending = writes
        alone = False
        attempt = 0
        while pending:
            retry: list[_Write] = []
            transient = 0
            for group, (ok, result) in self._send(pending, alone):
                if ok:
                    for w in group:
                        (metrics.UPSERTS if w.upsert else metrics.DELETES).inc()
                elif not is_permanent(result):
                    metrics.CASSANDRA_ERRORS.labels(type(result).__name__).inc()
                    transient += len(group)
                    retry.extend(group)
                elif len(group) > 1:
                    # One bad row (or a batch too large) fails its whole batch: send the rows
                    # alone so that only the guilty one is rejected.
                    alone = True
                    retry.extend(group)
                else:
                    metrics.CASSANDRA_ERRORS.labels("rejected").inc()
                    w = group[0]
                    self._reject(w.batch, w.index, CASSANDRA_REJECTED, _short(result))
            if transient:
                attempt += 1
                metrics.CASSANDRA_RETRIES.inc(transient)
                pause = min(0.1 * 2**attempt, 10.0)
                log.warning(
                    "%d Cassandra write(s) failed transiently (%s); retry %d in %.1fs",
                    transient,
                    type(result).__name__,
                    attempt,
                    pause,
                )
                time.sleep(pause)
            pending = retry

    def _send(self, writes: list[_Write], alone: bool):
        """Execute ``writes`` concurrently, as unlogged batches per program unless ``alone``."""
        groups = [[w] for w in writes] if alone else list(_batches(writes))
        statements = []
        for group in groups:
            if len(group) == 1:
                statements.append((group[0].stmt, group[0].params))
            else:
                batch = BatchStatement(
                    batch_type=BatchType.UNLOGGED, consistency_level=self._consistency
                )
                for w in group:
                    batch.add(w.stmt, w.params)
                statements.append((batch, None))
        try:
            results = execute_concurrent(
                self._session,
                statements,
                concurrency=self._settings.cassandra_concurrency,
                raise_on_first_error=False,
            )
        except Exception as exc:
            # With no host up the driver raises while submitting (NoHostAvailable) instead of
            # failing each future. Such a failure of the whole call says nothing about any one
            # row, so it is always retried, never turned into rejections.
            if is_permanent(exc):
                exc = ConnectionError(f"{type(exc).__name__}: {exc}")
            results = [(False, exc)] * len(groups)
        return zip(groups, results, strict=True)

    def _commit(self, items: list[FlatBatch]) -> None:
        """Tell the consumer group how far we are, for lag tools and restarts without state."""
        last: dict[tuple[str, int], int] = {}
        for fb in items:
            if fb.source.offsets:
                key = (fb.source.topic, fb.source.partition)
                last[key] = max(last.get(key, -1), fb.source.offsets[-1])
        if last:
            self._committed.update(last)
            self._committer.commit(
                offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()],
                asynchronous=True,
            )

    def close(self) -> None:
        log.info("final counters %s", metrics.log_line())
        self._failed.flush()
        if self._committed:
            # Asynchronous commits may have been lost (a broker restart); the last word is sync.
            try:
                self._committer.commit(
                    offsets=[TopicPartition(t, p, o + 1) for (t, p), o in self._committed.items()],
                    asynchronous=False,
                )
            except KafkaException as exc:
                log.warning("could not commit the final offsets: %s", exc.args[0])
        self._committer.close()
        self._cluster.shutdown()


def _batches(writes: list[_Write]):
    by_program: dict[str, list[_Write]] = defaultdict(list)
    for w in writes:
        by_program[w.program_id].append(w)
    for rows in by_program.values():
        for start in range(0, len(rows), MAX_BATCH_ROWS):
            yield rows[start : start + MAX_BATCH_ROWS]
