"""The Python engine's pipelined writer without a server: batching, retries with backoff,
splitting a refused batch, the in-flight limit. The Cassandra session is an in-process fake
(tests/unit_fakes.py); the real-server behaviour is covered by tests/test_streaming_job.py."""

from __future__ import annotations

import logging
import threading
import time
from typing import ClassVar

import pytest
from cassandra import (
    ConsistencyLevel,
    InvalidRequest,
    OperationTimedOut,
    Unauthorized,
    Unavailable,
    WriteTimeout,
)
from cassandra.cluster import NoHostAvailable
from cassandra.query import BatchType
from prometheus_client import REGISTRY

from dataflow import cassandra_writer
from dataflow.cassandra_writer import MAX_BATCH_ROWS, PipelinedWriter, Write, is_permanent
from tests.unit_fakes import HOLD, FakeSession

INSERT = (
    "INSERT INTO ks.program_enrollment (program_id, user_id, pii_consent_required) "
    "VALUES (?, ?, ?) USING TIMESTAMP ?"
)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Counters:
    """Deltas of the writer's counters over a test (they are process-wide)."""

    NAMES: ClassVar[dict[str, tuple[str, dict]]] = {
        "upserted": ("pui_rows_upserted_total", {}),
        "deleted": ("pui_rows_deleted_total", {}),
        "retries": ("pui_cassandra_retries_total", {}),
        "rejected": ("pui_cassandra_errors_total", {"kind": "rejected"}),
        "timeouts": ("pui_cassandra_errors_total", {"kind": "OperationTimedOut"}),
    }

    def __init__(self):
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        return {k: metric(name, **labels) for k, (name, labels) in self.NAMES.items()}

    def delta(self) -> dict[str, float]:
        now = self._now()
        return {k: now[k] - self._start[k] for k in now}


def rows(session: FakeSession, *specs: str, flag: object = True) -> list[Write]:
    """``"program/user"`` specs as writes; a user starting with ``del`` is a delete."""
    stmt = session.prepare(INSERT)
    out = []
    for i, spec in enumerate(specs):
        program, user = spec.split("/")
        value = flag if user.startswith("bind") else True
        out.append(
            Write(program, stmt, (program, user, value, 1000 + i), not user.startswith("del"), i)
        )
    return out


def writer(session: FakeSession, limit: int = 64) -> PipelinedWriter:
    return PipelinedWriter(session, ConsistencyLevel.LOCAL_QUORUM, limit)


def finish(w: PipelinedWriter, *tickets, timeout: float = 10.0) -> None:
    """``w.wait(tickets)``, failing instead of hanging when a ticket never completes."""
    waiter = threading.Thread(target=w.wait, args=(list(tickets),), daemon=True)
    waiter.start()
    waiter.join(timeout)
    assert not waiter.is_alive(), f"tickets not done after {timeout} s: a write was lost"


def test_rows_of_one_program_go_in_unlogged_batches_of_at_most_eight():
    session = FakeSession()
    counters = Counters()
    # Interleaved programs: grouping is by program, not by position.
    specs = [f"a/u{i}" for i in range(20)] + [f"b/v{i}" for i in range(3)] + ["c/del0"]
    specs = specs[::2] + specs[1::2]
    w = writer(session)
    ticket = w.submit(rows(session, *specs))
    finish(w, ticket)

    assert ticket.done and ticket.rejections == []
    assert sorted(len(r.rows) for r in session.requests) == [1, 3, 4, 8, 8]
    assert MAX_BATCH_ROWS == 8
    for r in session.requests:
        assert len({row["program_id"] for row in r.rows}) == 1, "a batch spans one partition"
        assert r.batch == (len(r.rows) > 1), "a single row is sent as itself, not a batch"
        if r.batch:
            assert r.stmt.batch_type == BatchType.UNLOGGED
            assert r.stmt.consistency_level == ConsistencyLevel.LOCAL_QUORUM
    sent = sorted(u for r in session.requests for u in r.users)
    assert sent == sorted(s.split("/")[1] for s in specs), "every row exactly once"
    assert counters.delta()["upserted"] == 23
    assert counters.delta()["deleted"] == 1
    assert ticket.done_at_ms >= ticket.submitted_ms


def test_an_empty_batch_is_done_at_once():
    session = FakeSession()
    ticket = writer(session).submit([])
    assert ticket.done and ticket.done_at_ms > 0
    assert session.requests == []


def test_transient_errors_are_retried_with_growing_backoff():
    failures = {"n": 2}

    def answer(request):
        if failures["n"]:
            failures["n"] -= 1
            return OperationTimedOut("no response")
        return None

    session = FakeSession(answer)
    counters = Counters()
    w = writer(session)
    ticket = w.submit(rows(session, "a/u1", "a/u2"))
    finish(w, ticket)

    assert ticket.done and ticket.rejections == [], "a transient error never rejects a row"
    assert [len(r.rows) for r in session.requests] == [2, 2, 2], "the same batch, resent"
    first, second, third = (r.at for r in session.requests)
    assert second - first >= 0.19, "first retry after about 0.2 s"
    assert third - second >= 0.38, "then about 0.4 s: the pause doubles"
    delta = counters.delta()
    assert delta["retries"] == 2
    assert delta["timeouts"] == 2
    assert delta["upserted"] == 2
    assert delta["rejected"] == 0


def test_transient_failures_are_logged_once_per_interval_with_counts(caplog):
    seen: set[str] = set()

    def answer(request):
        key = request.users[0]
        if key in seen:
            return None
        seen.add(key)
        return Unavailable("not enough replicas")

    session = FakeSession(answer)
    w = writer(session)
    with caplog.at_level(logging.WARNING, logger="dataflow.sink"):
        ticket = w.submit(rows(session, "a/u1", "b/u2", "c/u3"))
        finish(w, ticket)
    warnings = [r.getMessage() for r in caplog.records if "failed transiently" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "Unavailable" in warnings[0]
    assert ticket.done and ticket.rejections == []


def test_a_refused_batch_is_split_and_only_the_refused_row_rejected():
    def answer(request):
        if "bad" in request.users:
            return InvalidRequest('Error from server: code=2200 [Invalid query] message="no"')
        return None

    session = FakeSession(answer)
    counters = Counters()
    w = writer(session)
    writes = rows(session, "a/u1", "a/u2", "a/bad", "a/u4", "a/u5")
    ticket = w.submit(writes)
    finish(w, ticket)

    assert ticket.done
    assert [(write.origin, "Invalid query" in detail) for write, detail in ticket.rejections] == [
        (2, True)
    ]
    assert [len(r.rows) for r in session.requests] == [5, 1, 1, 1, 1, 1]
    delta = counters.delta()
    assert delta["upserted"] == 4
    assert delta["rejected"] == 1
    assert delta["retries"] == 0, "a permanent error is not retried"


def test_a_row_the_driver_cannot_bind_is_rejected_without_reaching_the_server():
    session = FakeSession()
    counters = Counters()
    w = writer(session)
    writes = rows(session, "a/g1", "a/bind", "a/g2", flag="not a boolean")
    ticket = w.submit(writes)
    finish(w, ticket)

    assert ticket.done
    [(write, detail)] = ticket.rejections
    assert write.origin == 1
    assert "pii_consent_required" in detail
    # The batch failed while binding, before any request: only the good rows were sent.
    assert sorted(u for r in session.requests for u in r.users) == ["g1", "g2"]
    assert all(not r.batch for r in session.requests)
    assert counters.delta()["retries"] == 0


@pytest.mark.parametrize(
    "exc",
    [
        NoHostAvailable("Unable to complete the operation", {"h": OSError("down")}),
        # Raised while submitting, even a server-side error class says nothing about the row.
        InvalidRequest("pool shutting down"),
    ],
)
def test_errors_while_submitting_are_retried_not_blamed_on_the_row(exc):
    calls = {"n": 0}

    def raise_on_submit(request):
        calls["n"] += 1
        return exc if calls["n"] == 1 else None

    session = FakeSession(raise_on_submit=raise_on_submit)
    w = writer(session)
    ticket = w.submit(rows(session, "a/u1"))
    finish(w, ticket)
    assert ticket.done and ticket.rejections == []
    assert calls["n"] == 2
    assert [r.users for r in session.requests] == [["u1"]]


def test_in_flight_requests_never_exceed_the_limit():
    # Answers come 20 ms later from a timer thread, as from the driver's event loop.
    session = FakeSession(delay=0.02)
    w = writer(session, limit=3)
    tickets = [w.submit(rows(session, *[f"p{b}-{i}/u{i}" for i in range(10)])) for b in range(3)]
    finish(w, *tickets)
    assert all(t.done and not t.rejections for t in tickets)
    assert len(session.requests) == 30
    assert session.max_in_flight == 3


def test_submit_returns_at_once_and_wait_returns_when_everything_is_acknowledged():
    session = FakeSession(lambda r: HOLD)
    w = writer(session)
    t0 = time.monotonic()
    first = w.submit(rows(session, "a/u1", "b/u2"))
    second = w.submit(rows(session, "c/u3"))
    assert time.monotonic() - t0 < 0.5
    assert not first.done and not second.done
    assert first.outstanding == 2

    finished = threading.Event()
    waiter = threading.Thread(target=lambda: (w.wait([first, second]), finished.set()))
    waiter.start()
    assert not finished.wait(0.3), "wait returned with rows unacknowledged"
    assert session.release() == 3
    waiter.join(5)
    assert finished.is_set()
    assert first.done and second.done


def test_the_limit_blocks_submit_until_a_slot_frees():
    session = FakeSession(lambda r: HOLD)
    w = writer(session, limit=2)
    w.submit(rows(session, "a/u1", "b/u2"))
    submitted = threading.Event()
    t = threading.Thread(target=lambda: (w.submit(rows(session, "c/u3")), submitted.set()))
    t.start()
    assert not submitted.wait(0.3), "a third request went out past the limit of 2"
    assert len(session.requests) == 2
    session.release()
    t.join(5)
    assert submitted.is_set()
    session.release()


@pytest.mark.parametrize(
    ("exc", "permanent"),
    [
        (InvalidRequest("bad"), True),
        (TypeError("bind"), True),
        (ValueError("bind"), True),
        (OverflowError("bind"), True),
        (OperationTimedOut("slow"), False),
        (WriteTimeout("timeout", write_type=0), False),
        (Unavailable("replicas"), False),
        (NoHostAvailable("none", {}), False),
        (Unauthorized("grant missing"), False),
        (ConnectionResetError(), False),
    ],
)
def test_only_the_rows_fault_is_permanent(exc, permanent):
    assert is_permanent(exc) is permanent


def test_backoff_is_capped():
    # A request that already failed many times waits at most 10 s before its next attempt.
    session = FakeSession(lambda r: OperationTimedOut("slow"))
    w = writer(session)
    request = cassandra_writer._Request(
        cassandra_writer.Ticket(outstanding=1), rows(session, "a/u1"), attempt=30
    )
    before = time.monotonic()
    w._send(request)
    [retry] = w._retries
    assert retry.attempt == 31
    assert before + 9.9 <= retry.due <= time.monotonic() + 10.0
