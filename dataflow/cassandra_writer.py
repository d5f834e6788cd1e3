"""Pipelined Cassandra writes: many requests in flight, retried until they succeed.

The sink hands over one *ticket* per consumed batch and goes back to consuming and flattening
while Cassandra works; it only waits when the in-flight limit is reached (back-pressure) or
when a recovery snapshot needs every write of the epoch acknowledged (``wait``). Keeping the
server busy during our own CPU work is what lets the job approach the raw sink's speed.

Threads: the driver calls ``_done``/``_failed`` on its event-loop thread; everything else
(submitting, retrying, publishing rejections) runs on the Bytewax worker thread. One lock and
condition guard the shared counters and queues.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from cassandra import InvalidRequest
from cassandra.query import BatchStatement, BatchType

from dataflow import metrics
from dataflow.cassandra_session import describe
from dataflow.engines import WARN_EVERY_S

log = logging.getLogger("dataflow.sink")

# Rows of one program (one Cassandra partition) are sent as unlogged batches of this size:
# one request per batch instead of one per row, and well under the 5 KiB warning threshold
# for typical rows.
MAX_BATCH_ROWS = 8


def is_permanent(exc: BaseException) -> bool:
    """Errors that will fail the same way on every retry: the row goes to the failed topic.
    Anything else (timeouts, unavailability, overload, auth) is retried until it succeeds."""
    return isinstance(exc, InvalidRequest) or _binding_error(exc)


def _binding_error(exc: BaseException) -> bool:
    """A row's values that the driver cannot serialise for its columns."""
    return isinstance(exc, TypeError | ValueError | OverflowError)


@dataclass(slots=True)
class Write:
    """One row write and where it came from (``origin`` is opaque to the writer: the sink
    uses it to publish a rejection)."""

    program_id: str
    stmt: object
    params: tuple
    upsert: bool
    origin: object


@dataclass(eq=False)
class Ticket:
    """The writes of one consumed batch; done when each is acknowledged or rejected."""

    outstanding: int = 0
    submitted_ms: float = field(default_factory=lambda: time.time() * 1000)
    done_at_ms: float = 0.0
    rejections: list[tuple[Write, str]] = field(default_factory=list)  # (write, reason detail)

    @property
    def done(self) -> bool:
        return self.outstanding == 0


@dataclass(slots=True, eq=False)
class _Request:
    ticket: Ticket
    writes: list[Write]
    attempt: int = 0
    due: float = 0.0


class PipelinedWriter:
    def __init__(self, session, consistency: int, max_in_flight: int):
        self._session = session
        self._consistency = consistency
        self._limit = max(1, max_in_flight)
        self._cond = threading.Condition()
        self._in_flight = 0
        self._retries: deque[_Request] = deque()
        self._transient = 0
        self._last_error = ""
        self._warned = 0.0

    # ---- worker thread -------------------------------------------------------------------

    def submit(self, writes: list[Write]) -> Ticket:
        """Send ``writes`` as unlogged batches per program; returns at once unless the
        in-flight limit is reached."""
        ticket = Ticket(outstanding=len(writes))
        if not writes:
            ticket.done_at_ms = time.time() * 1000
            return ticket
        for group in _groups(writes):
            self._wait_for_slot()
            self._send(_Request(ticket, group))
        return ticket

    def wait(self, tickets) -> None:
        """Return when every ticket in ``tickets`` is done (retrying what needs retrying)."""
        while True:
            self._service()
            with self._cond:
                if all(t.done for t in tickets):
                    return
                self._cond.wait(self._next_wakeup())

    def _wait_for_slot(self) -> None:
        while True:
            self._service()
            with self._cond:
                if self._in_flight + len(self._retries) < self._limit:
                    return
                self._cond.wait(self._next_wakeup())

    def _next_wakeup(self) -> float:
        # Called with the lock held: sleep until the earliest retry is due (or a callback).
        if not self._retries:
            return 1.0
        return max(0.0, min(min(r.due for r in self._retries) - time.monotonic(), 1.0))

    def _service(self) -> None:
        """Resend retries that are due; log transient failures now and then."""
        now = time.monotonic()
        due: list[_Request] = []
        with self._cond:
            if self._retries:
                keep = deque()
                for r in self._retries:
                    (due if r.due <= now else keep).append(r)
                self._retries = keep
            transient, self._transient = self._transient, 0
            error = self._last_error
        if transient:
            metrics.CASSANDRA_RETRIES.inc(transient)
            if now - self._warned >= WARN_EVERY_S:
                self._warned = now
                log.warning(
                    "%d Cassandra write request(s) failed transiently (%s); retrying with backoff",
                    transient,
                    error,
                )
        for r in due:
            self._send(r)

    def _send(self, request: _Request) -> None:
        with self._cond:
            self._in_flight += 1
        writes = request.writes
        try:
            if len(writes) == 1:
                stmt, params = writes[0].stmt, writes[0].params
            else:
                stmt = BatchStatement(
                    batch_type=BatchType.UNLOGGED, consistency_level=self._consistency
                )
                for w in writes:
                    stmt.add(w.stmt, w.params)
                params = None
            future = self._session.execute_async(stmt, params)
        except Exception as exc:
            # Binding errors are the row's fault; anything raised while submitting (no host
            # up, a closing pool) says nothing about the row and is retried.
            self._failed(exc, request, submitting=True)
            return
        future.add_callbacks(
            self._done, self._failed, callback_args=(request,), errback_args=(request,)
        )

    # ---- driver event-loop thread --------------------------------------------------------

    def _done(self, _rows, request: _Request) -> None:
        upserts = sum(w.upsert for w in request.writes)
        if upserts:
            metrics.UPSERTS.inc(upserts)
        if upserts < len(request.writes):
            metrics.DELETES.inc(len(request.writes) - upserts)
        with self._cond:
            self._in_flight -= 1
            self._settle(request.ticket, len(request.writes))
            self._cond.notify_all()

    def _failed(self, exc: BaseException, request: _Request, submitting: bool = False) -> None:
        permanent = _binding_error(exc) if submitting else is_permanent(exc)
        with self._cond:
            self._in_flight -= 1
            if not permanent:
                metrics.CASSANDRA_ERRORS.labels(type(exc).__name__).inc()
                self._transient += 1
                self._last_error = type(exc).__name__
                request.attempt += 1
                request.due = time.monotonic() + min(0.1 * 2**request.attempt, 10.0)
                self._retries.append(request)
            elif len(request.writes) > 1:
                # One bad row (or a batch too large) fails its whole batch: send the rows
                # alone so that only the guilty one is rejected.
                for w in request.writes:
                    self._retries.append(_Request(request.ticket, [w]))
            else:
                metrics.CASSANDRA_ERRORS.labels("rejected").inc()
                request.ticket.rejections.append((request.writes[0], describe(exc)))
                self._settle(request.ticket, 1)
            self._cond.notify_all()

    @staticmethod
    def _settle(ticket: Ticket, n: int) -> None:
        ticket.outstanding -= n
        if ticket.outstanding == 0:
            ticket.done_at_ms = time.time() * 1000


def _groups(writes: list[Write]):
    by_program: dict[str, list[Write]] = defaultdict(list)
    for w in writes:
        by_program[w.program_id].append(w)
    for rows in by_program.values():
        for start in range(0, len(rows), MAX_BATCH_ROWS):
            yield rows[start : start + MAX_BATCH_ROWS]
