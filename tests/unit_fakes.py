"""In-process stand-ins for the *clients* (cassandra-driver's Session, confluent-kafka's
Producer and Consumer) in the server-free unit tests (tests/test_unit_*.py).

They mimic what the job relies on, the way the real clients behave: a prepared statement is
bound (and refuses a bad value) when the request is made, callbacks added to a future that
already has its answer run at once, a producer's queue can be full. They never stand in for a
server in an integration test: those use the local stack (tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable

from cassandra.cqltypes import (
    BooleanType,
    LongType,
    MapType,
    SimpleDateType,
    UTF8Type,
)
from cassandra.protocol import ColumnMetadata
from cassandra.query import UNSET_VALUE, BatchStatement, PreparedStatement
from confluent_kafka import KafkaError, KafkaException

from dataflow import schema

# The CQL types of dataflow.schema.TABLE, as the driver's prepared metadata gives them. A
# column of a new type must be added here (prepared() says which).
CQL_TYPES = {
    "text": UTF8Type,
    "boolean": BooleanType,
    "date": SimpleDateType,
    "map<text,text>": MapType.apply_parameters((UTF8Type, UTF8Type)),
}

# Returned by a FakeSession's ``answer`` to leave the request in flight until the test
# settles it (``FakeSession.held``).
HOLD = object()


def record_sleeps(monkeypatch, module) -> list[float]:
    """``module``'s ``time.sleep`` pauses, recorded instead of slept: backoff is asserted
    without the test waiting for it."""
    slept: list[float] = []

    class Clock:
        sleep = staticmethod(slept.append)

    monkeypatch.setattr(module, "time", Clock)
    return slept


def prepared(query: str, keyspace: str = "ks", table: str = "program_enrollment"):
    """A real driver PreparedStatement for ``query`` (an INSERT or DELETE of the job), built
    without a server from the table definition, so binding checks types as in production."""
    markers: list[tuple[str, type]] = []
    unknown = [f"{c.name} {c.cql_type}" for c in schema.TABLE if c.cql_type not in CQL_TYPES]
    if unknown:
        raise AssertionError(f"add the driver type of {unknown} to tests/unit_fakes.py CQL_TYPES")
    types = {c.name: CQL_TYPES[c.cql_type] for c in schema.TABLE}
    insert = re.search(r"\(([^)]*)\)\s+VALUES", query)
    if insert:
        markers += [(n.strip(), types[n.strip().lower()]) for n in insert.group(1).split(",")]
    for m in re.finditer(r"USING TIMESTAMP \?|(\w+) = \?", query):
        markers.append((m.group(1), types[m.group(1)]) if m.group(1) else ("[timestamp]", LongType))
    if query.count("?") != len(markers):
        raise AssertionError(f"cannot type the markers of {query!r}")
    meta = [ColumnMetadata(keyspace, table, name, t) for name, t in markers]
    query_id = hashlib.sha1(query.encode()).digest()
    return PreparedStatement(meta, query_id, [0], query, keyspace, 5, None, None)


class FakeFuture:
    def __init__(self, request: FakeRequest):
        self.request = request
        self._callbacks: tuple | None = None
        self._answer: tuple | None = None
        self._lock = threading.Lock()

    def add_callbacks(self, callback, errback, callback_args=(), errback_args=()):
        with self._lock:
            self._callbacks = (callback, errback, callback_args, errback_args)
            answer = self._answer
        if answer is not None:
            self._fire(answer)

    def settle(self, exc: BaseException | None = None) -> None:
        """Answer the request: acknowledged, or failed with ``exc``."""
        with self._lock:
            self._answer = (exc,)
            ready = self._callbacks is not None
        if ready:
            self._fire(self._answer)

    def _fire(self, answer: tuple) -> None:
        callback, errback, cargs, eargs = self._callbacks
        self.request.session._finished(self.request)
        (exc,) = answer
        if exc is None:
            callback(None, *cargs)
        else:
            errback(exc, *eargs)


class FakeRequest:
    """One request as the session received it: ``rows`` are its rows' values by marker name
    (``[timestamp]`` for ``USING TIMESTAMP ?``)."""

    def __init__(self, session: FakeSession, stmt, rows: list[dict], batch: bool):
        self.session = session
        self.stmt = stmt
        self.rows = rows
        self.batch = batch
        self.at = time.monotonic()
        self.future = FakeFuture(self)

    @property
    def users(self) -> list:
        """The user_id of each row (the tests' way of naming a row)."""
        return [row["user_id"] for row in self.rows]


class FakeSession:
    """Stands in for cassandra-driver's Session in PipelinedWriter and PythonEngine.

    ``answer(request)`` decides each request's fate when it is made: ``None`` acknowledges it,
    an exception fails it, :data:`HOLD` leaves it in flight; ``raise_on_submit(request)`` may
    return an exception that ``execute_async`` raises instead (no host, closing pool). With
    ``delay`` the answers come later from another thread, as the driver's event loop does.
    """

    def __init__(
        self,
        answer: Callable[[FakeRequest], object] = lambda r: None,
        *,
        raise_on_submit: Callable[[FakeRequest], BaseException | None] = lambda r: None,
        delay: float = 0.0,
    ):
        self.answer = answer
        self.raise_on_submit = raise_on_submit
        self.delay = delay
        self.requests: list[FakeRequest] = []
        self.held: list[FakeRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.prepared: dict[bytes, PreparedStatement] = {}
        self._lock = threading.Lock()

    def prepare(self, query: str) -> PreparedStatement:
        stmt = prepared(query)
        self.prepared[stmt.query_id] = stmt
        return stmt

    def execute_async(self, stmt, params=None):
        if isinstance(stmt, BatchStatement):
            # Batched rows arrive bound (serialised): read them back with their statement's
            # metadata. Relies on the pinned driver's BatchStatement internals.
            rows = [
                self._row(self.prepared[query_id], values)
                for _, query_id, values in stmt._statements_and_parameters
            ]
            batch = True
        else:
            bound = stmt.bind(params)  # the driver binds here: a bad value raises now
            rows = [self._row(stmt, bound.values)]
            batch = False
        request = FakeRequest(self, stmt, rows, batch)
        exc = self.raise_on_submit(request)
        if exc is not None:
            raise exc
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        answer = self.answer(request)
        if answer is HOLD:
            with self._lock:
                self.held.append(request)
        elif self.delay:
            timer = threading.Timer(self.delay, request.future.settle, args=(answer,))
            timer.daemon = True
            timer.start()
        else:
            request.future.settle(answer)
        return request.future

    def _finished(self, _request: FakeRequest) -> None:
        with self._lock:
            self.in_flight -= 1

    def release(self, exc: BaseException | None = None) -> int:
        """Settle every held request (acknowledged, or failed with ``exc``)."""
        with self._lock:
            held, self.held = self.held, []
        for request in held:
            request.future.settle(exc)
        return len(held)

    @staticmethod
    def _row(stmt: PreparedStatement, values) -> dict:
        return {
            col.name: value
            if value is None or value is UNSET_VALUE
            else col.type.from_binary(value, 5)
            for col, value in zip(stmt.column_metadata, values, strict=True)
        }


class FakeCluster:
    def __init__(self, session: FakeSession):
        self.session = session
        self.shut_down = False

    def shutdown(self) -> None:
        self.shut_down = True


# ---- Kafka -------------------------------------------------------------------------------


class FakeProducer:
    """Stands in for confluent_kafka.Producer in the failed-topic publisher.

    ``full`` produce calls raise BufferError (librdkafka's queue is full) until a poll makes
    room; ``too_large`` is the size (:meth:`size`: value, key and headers, as librdkafka counts
    against ``message.max.bytes``) above which ``produce`` refuses a message at once;
    ``deliver(record)`` gives each message's delivery error (a KafkaError) or None, reported at
    the next poll or flush.
    """

    def __init__(self, *, full: int = 0, too_large: int | None = None, deliver=lambda m: None):
        self.full = full
        self.too_large = too_large
        self.deliver = deliver
        self.produced: list[dict] = []
        self.delivered: list[dict] = []
        self.polls: list[float] = []
        self.flushes = 0
        self._reports: list[tuple] = []

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):
        if self.full:
            raise BufferError("Local: Queue full")
        record = {"topic": topic, "value": value, "key": key, "headers": list(headers or [])}
        if self.too_large is not None and self.size(record) > self.too_large:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.produced.append(record)
        self._reports.append((on_delivery, record, self.deliver(record)))

    @staticmethod
    def size(record: dict) -> int:
        """A message's size in bytes: value, key, header names and values."""
        headers = sum(len(name) + len(data or b"") for name, data in record["headers"])
        return len(record["value"] or b"") + len(record["key"] or b"") + headers

    def poll(self, timeout: float = 0) -> int:
        self.polls.append(timeout)
        if self.full:
            self.full -= 1
        return self._serve()

    def flush(self, timeout: float = 0) -> int:
        self.flushes += 1
        self._serve()
        return 0

    def _serve(self) -> int:
        reports, self._reports = self._reports, []
        for on_delivery, record, err in reports:
            if err is None:
                self.delivered.append(record)
            on_delivery(err, None)
        return len(reports)


class FakeCommitConsumer:
    """Stands in for the offset committer's confluent_kafka.Consumer: records commits;
    ``fail_sync`` synchronous commits raise (a coordinator that is not back yet)."""

    def __init__(self, fail_sync: int = 0):
        self.fail_sync = fail_sync
        self.commits: list[tuple[bool, list[tuple[str, int, int]]]] = []
        self.sync_attempts = 0
        self.polls = 0
        self.closed = False

    def commit(self, offsets, asynchronous: bool = True):
        if not asynchronous:
            self.sync_attempts += 1
            if self.fail_sync:
                self.fail_sync -= 1
                raise KafkaException(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE))
        self.commits.append(
            (asynchronous, sorted((tp.topic, tp.partition, tp.offset) for tp in offsets))
        )

    def poll(self, timeout: float = 0):
        self.polls += 1

    def close(self) -> None:
        self.closed = True
