"""The two write engines behind the sink: each flattens a consumed batch and writes its rows.

* ``rust`` (the default when the extension is built): the extension's ``Writer`` parses, applies
  the rules, stamps, serialises and writes with the ``scylla`` driver, off the GIL.
* ``python`` (the reference, and what runs without a Rust toolchain): our Python flattener and
  cassandra-driver through :class:`~dataflow.cassandra_writer.PipelinedWriter`.

Both take a :class:`~dataflow.source.MessageBatch` and give back a ticket at once plus the
messages the rules refused; a ticket later yields a :class:`Completed` with the rows Cassandra
refused. The sink does the rest (failed topic, offsets, metrics) the same way for both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from dataflow import metrics
from dataflow.config import ConfigError, Settings
from dataflow.flatten import resolve_engine
from dataflow.source import NO_TIMESTAMP, MessageBatch
from dataflow.write_time import write_timestamp

log = logging.getLogger("dataflow.sink")

CASSANDRA_REJECTED = "cassandra_rejected"
# Transient failures are logged at most this often, with counts, not once per request.
WARN_EVERY_S = 5.0


@dataclass(slots=True, frozen=True)
class Rejection:
    """A message that will not be written: its index in the batch, a stable reason code and
    a detail for humans."""

    index: int
    reason: str
    detail: str


@dataclass(slots=True)
class Completed:
    """A ticket whose rows are all acknowledged or refused (ms since the epoch)."""

    submitted_ms: float
    done_at_ms: float
    rejections: list[Rejection] = field(default_factory=list)


class Engine(Protocol):
    name: str

    def submit(self, batch: MessageBatch, clock_us: int) -> tuple[object, list[Rejection]]: ...

    def take(self, ticket: object) -> Completed | None: ...

    def wait(self, tickets: list) -> None: ...

    def publish_metrics(self) -> None: ...

    def close(self) -> None: ...


def choose(settings: Settings) -> str:
    """The engine the settings ask for and this build can run."""
    return resolve_engine(settings.engine)


def open_engine(settings: Settings) -> Engine:
    if choose(settings) == "rust":
        return RustEngine(settings)
    return PythonEngine(settings)


class RustEngine:
    name = "rust"

    def __init__(self, settings: Settings):
        attempt = 0
        while True:
            try:
                self._writer = open_writer(settings)
                break
            except NotReachable as exc:
                attempt += 1
                pause = min(2**attempt, 30)
                log.warning("Cassandra not reachable (%s); retrying in %ds", _line(exc), pause)
                time.sleep(pause)
        self._warned = 0.0

    def submit(self, batch: MessageBatch, clock_us: int) -> tuple[int, list[Rejection]]:
        ticket, refused, invalid_dates = self._writer.submit(
            batch.values, batch.timestamps, clock_us
        )
        if invalid_dates:
            metrics.INVALID_DATES.inc(invalid_dates)
        return ticket, [Rejection(i, reason, detail) for i, reason, detail in refused]

    def take(self, ticket: int) -> Completed | None:
        done = self._writer.take(ticket)
        if done is None:
            return None
        submitted_ms, done_at_ms, refused = done
        return Completed(
            submitted_ms,
            done_at_ms,
            [Rejection(i, CASSANDRA_REJECTED, detail) for i, detail in refused],
        )

    def wait(self, tickets: list[int]) -> None:
        # Rust waits off the GIL in slices and raises KeyboardInterrupt on Ctrl-C.
        while not self._writer.wait(tickets, 1.0):
            self.publish_metrics()

    def publish_metrics(self) -> None:
        stats = self._writer.take_stats()
        if stats["upserts"]:
            metrics.UPSERTS.inc(stats["upserts"])
        if stats["deletes"]:
            metrics.DELETES.inc(stats["deletes"])
        if stats["rejected"]:
            metrics.CASSANDRA_ERRORS.labels("rejected").inc(stats["rejected"])
        for kind, n in stats["errors"]:
            metrics.CASSANDRA_ERRORS.labels(kind).inc(n)
        if stats["retries"]:
            metrics.CASSANDRA_RETRIES.inc(stats["retries"])
            now = time.monotonic()
            if now - self._warned >= WARN_EVERY_S:
                self._warned = now
                log.warning(
                    "%d Cassandra write request(s) failed transiently (%s); retrying with backoff",
                    stats["retries"],
                    stats["last_error"],
                )

    def close(self) -> None:
        self.publish_metrics()
        self._writer.close()


class PythonEngine:
    name = "python"

    def __init__(self, settings: Settings):
        from cassandra import ConsistencyLevel
        from cassandra.query import UNSET_VALUE

        from dataflow.cassandra_session import connect
        from dataflow.cassandra_writer import PipelinedWriter
        from dataflow.flatten import engine_function
        from dataflow.schema import insert_cql

        self._flatten = engine_function("python")
        self._unset = UNSET_VALUE
        self._max_bytes = settings.max_message_bytes
        self._offset_us = settings.write_timestamp_offset_us
        self._cluster, session = connect(settings)
        consistency = ConsistencyLevel.name_to_value[settings.cassandra_consistency]
        table = f"{settings.cassandra_keyspace}.{settings.cassandra_table}"
        self._insert = session.prepare(
            insert_cql(settings.cassandra_keyspace, settings.cassandra_table) + " USING TIMESTAMP ?"
        )
        self._delete = session.prepare(
            f"DELETE FROM {table} USING TIMESTAMP ? WHERE program_id = ? AND user_id = ?"
        )
        for stmt in (self._insert, self._delete):
            stmt.consistency_level = consistency
            stmt.is_idempotent = True
        self._writer = PipelinedWriter(session, consistency, settings.cassandra_concurrency)

    def submit(self, batch: MessageBatch, clock_us: int):
        from dataflow.cassandra_writer import Write
        from dataflow.flatten import DELETE, REJECT, UPSERT

        # A null Kafka value (tombstone) is not JSON: the flattener rejects the empty bytes.
        values = [b"" if v is None else v for v in batch.values]
        refused: list[Rejection] = []
        writes: list[Write] = []
        stamps = batch.timestamps
        for i, (op, payload, ts, flag) in enumerate(
            self._flatten(values, self._max_bytes, self._unset)
        ):
            if op == REJECT:
                refused.append(Rejection(i, payload, ts))
                continue
            kafka_ms = None if stamps[i] == NO_TIMESTAMP else stamps[i]
            stamp = write_timestamp(ts, kafka_ms, clock_us, self._offset_us)
            if op == UPSERT:
                if flag:
                    metrics.INVALID_DATES.inc()
                writes.append(Write(payload[0], self._insert, (*payload, stamp), True, i))
            elif op == DELETE:
                params = (stamp, payload[0], payload[1])
                writes.append(Write(payload[0], self._delete, params, False, i))
        return self._writer.submit(writes), refused

    def take(self, ticket) -> Completed | None:
        if not ticket.done:
            return None
        return Completed(
            ticket.submitted_ms,
            ticket.done_at_ms,
            sorted(
                (Rejection(w.origin, CASSANDRA_REJECTED, d) for w, d in ticket.rejections),
                key=lambda r: r.index,
            ),
        )

    def wait(self, tickets: list) -> None:
        self._writer.wait(tickets)

    def publish_metrics(self) -> None:
        """The Python writer counts as it goes."""

    def close(self) -> None:
        self._cluster.shutdown()


class NotReachable(ConnectionError):
    """No node answered: worth another attempt (a TLS or credentials failure is not)."""


def open_writer(settings: Settings, connect_timeout_s: float = 10.0):
    """One connection attempt of the Rust writer. Raises NotReachable when no node answered,
    ConnectionError when waiting cannot help (credentials, TLS), ConfigError for a TLS file
    it cannot use."""
    from dataflow.flatten import native

    extension = native()  # refuses a build for other columns than dataflow.schema.TABLE
    try:
        return extension.Writer(**writer_options(settings), connect_timeout_s=connect_timeout_s)
    except PermissionError:
        raise ConnectionError(
            "Cassandra rejected the credentials: check PUI_CASSANDRA_USERNAME "
            f"({settings.cassandra_username or 'not set'}) and PUI_CASSANDRA_PASSWORD"
        ) from None
    except extension.TlsHandshakeError as exc:
        # The same line as the Python engine's (imported here: it loads cassandra-driver).
        from dataflow.cassandra_session import tls_failure_message

        raise ConnectionError(tls_failure_message(settings, _line(exc))) from None
    except ValueError as exc:
        if len(exc.args) != 2 or exc.args[0] not in _TLS_FILES:
            raise
        raise ConfigError(_tls_file_problem(settings, *exc.args)) from None
    except ConnectionError as exc:
        raise NotReachable(_line(exc)) from None


def writer_options(settings: Settings) -> dict:
    """The Rust writer's arguments for these settings."""
    return {
        "hosts": list(settings.cassandra_hosts),
        "port": settings.cassandra_port,
        "keyspace": settings.cassandra_keyspace,
        "table": settings.cassandra_table,
        "username": settings.cassandra_username,
        "password": settings.cassandra_password,
        "local_dc": settings.cassandra_local_dc,
        "consistency": settings.cassandra_consistency,
        "max_in_flight": settings.cassandra_concurrency,
        "max_bytes": settings.max_message_bytes,
        "offset_us": settings.write_timestamp_offset_us,
        # One I/O thread keeps up with Cassandra here and spends less CPU on wake-ups than
        # two (RESULTS.md §2).
        "threads": 1,
        "tls": settings.cassandra_tls,
        "tls_ca_file": settings.cassandra_tls_ca_file,
        "tls_cert_file": settings.cassandra_tls_cert_file,
        "tls_key_file": settings.cassandra_tls_key_file,
        "tls_check_hostname": settings.cassandra_tls_check_hostname,
    }


_TLS_FILES = {
    "ca": ("PUI_CASSANDRA_TLS_CA_FILE", "a PEM file of CA certificates"),
    "cert": (
        "PUI_CASSANDRA_TLS_CERT_FILE",
        "a PEM X.509 v3 certificate (with PUI_CASSANDRA_TLS_KEY_FILE, its unencrypted private key)",
    ),
    "key": ("PUI_CASSANDRA_TLS_KEY_FILE", "the certificate's unencrypted PEM private key"),
}


def _tls_file_problem(settings: Settings, which: str, detail: str) -> str:
    """The Rust writer's ``ValueError((file, detail))`` as the setting to fix."""
    var, should = _TLS_FILES[which]
    path = getattr(settings, var.lower().removeprefix("pui_"), None)
    return f"{var} ({path or 'not set'}) is not {should}: {' '.join(str(detail).split())[:200]}"


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
