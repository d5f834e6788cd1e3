"""The Python engine and the whole dataflow without servers: real flattener, writer, sink,
publisher and committer, with in-process stand-ins for the Cassandra session and the Kafka
clients (tests/unit_fakes.py), and bytewax.testing's source in place of Kafka. The same job
against the real servers is tests/test_streaming_job.py."""

from __future__ import annotations

import json

import pytest
from bytewax.testing import TestingSource, run_main
from cassandra import InvalidRequest
from cassandra.query import UNSET_VALUE
from prometheus_client import REGISTRY

# Not `from dataflow import flow`: that asks the package for its `flow` attribute, which
# builds the streaming job (and connects to Kafka) unless dataflow.flow was already imported.
import dataflow.flow as flow
from dataflow import cassandra_session, config, sink
from dataflow.engines import CASSANDRA_REJECTED, PythonEngine, Rejection
from dataflow.failed import FailedTopicPublisher
from dataflow.offsets import OffsetCommitter
from dataflow.sink import _Connection
from dataflow.source import NO_TIMESTAMP, MessageBatch
from tests.unit_fakes import HOLD, FakeCluster, FakeCommitConsumer, FakeProducer, FakeSession

T = "unit.programuser.info"
CLOCK_US = 1_800_000_000_000_000  # "now": 2027-01-15
UPDATED = "2024-01-02T00:00:00Z"
UPDATED_US = 1_704_153_600_000_000


def event(user: str, **fields) -> bytes:
    return json.dumps({"programId": "p1", "userId": user, **fields}).encode()


def settings(**env: str) -> config.Settings:
    return config.load({"PUI_ENV": "unit", "PUI_ENGINE": "python", **env})


@pytest.fixture
def session(monkeypatch) -> FakeSession:
    """The session PythonEngine connects to (cassandra_session.connect is the one way in)."""
    fake = FakeSession()
    cluster = FakeCluster(fake)
    monkeypatch.setattr(cassandra_session, "connect", lambda s, **kw: (cluster, fake))
    return fake


def written(session: FakeSession) -> dict[str, dict]:
    """The last write of each user, across every request."""
    return {row["user_id"]: row for r in session.requests for row in r.rows}


def batch(values, partition=0, first=0, timestamps=None) -> MessageBatch:
    n = len(values)
    return MessageBatch(
        T,
        partition,
        values=list(values),
        keys=[None] * n,
        offsets=list(range(first, first + n)),
        timestamps=timestamps or [1_700_000_000_000] * n,
    )


# ---- PythonEngine ------------------------------------------------------------------------


def test_the_python_engine_writes_upserts_and_deletes_and_returns_the_rules_rejections(session):
    engine = PythonEngine(settings())
    b = batch(
        [
            event("u1", programName="P", updatedAt=UPDATED, createdAt="2024-01-01"),
            event("u2", deleted=True, updatedAt=UPDATED),
            b"{not json",
            None,  # a tombstone
            json.dumps({"programId": "p1"}).encode(),
        ]
    )
    ticket, refused = engine.submit(b, CLOCK_US)
    assert [(r.index, r.reason) for r in refused] == [
        (2, "malformed_json"),
        (3, "malformed_json"),
        (4, "missing_key:userId"),
    ]
    engine.wait([ticket])
    done = engine.take(ticket)
    assert done is not None and done.rejections == []

    rows = written(session)
    assert set(rows) == {"u1", "u2"}
    upsert, delete = rows["u1"], rows["u2"]
    assert upsert["program_name"] == "P"
    assert upsert["[timestamp]"] == UPDATED_US
    assert upsert["user_locations"] is UNSET_VALUE, "a column the event does not set is unset"
    assert upsert["program_externalid"] is None, "absent text is written as null"
    assert delete == {"[timestamp]": UPDATED_US, "program_id": "p1", "user_id": "u2"}
    queries = sorted(stmt.query_string for stmt in session.prepared.values())
    assert queries[0].startswith("DELETE FROM sunbird_programs.program_enrollment USING")
    assert queries[1].startswith("INSERT INTO sunbird_programs.program_enrollment (")


def test_the_write_timestamp_falls_back_and_is_clamped(session):
    engine = PythonEngine(settings())
    b = batch(
        [event("no-date"), event("no-stamps"), event("future", updatedAt="2099-01-01")],
        timestamps=[1_700_000_000_123, NO_TIMESTAMP, 1_700_000_000_000],
    )
    ticket, _ = engine.submit(b, CLOCK_US)
    engine.wait([ticket])
    rows = written(session)
    assert rows["no-date"]["[timestamp]"] == 1_700_000_000_123_000, "the Kafka timestamp"
    assert rows["no-stamps"]["[timestamp]"] == CLOCK_US, "the wall clock"
    assert rows["future"]["[timestamp]"] == CLOCK_US, "never later than the wall clock"


def test_the_write_timestamp_offset_is_added(session):
    engine = PythonEngine(settings(PUI_WRITE_TIMESTAMP_OFFSET="1s"))
    ticket, _ = engine.submit(batch([event("u", updatedAt=UPDATED)]), CLOCK_US)
    engine.wait([ticket])
    assert written(session)["u"]["[timestamp]"] == UPDATED_US + 1_000_000


def test_invalid_dates_are_counted(session):
    before = REGISTRY.get_sample_value("pui_invalid_dates_total") or 0
    engine = PythonEngine(settings())
    ticket, _ = engine.submit(batch([event("u", updatedAt="2023-02-30")]), CLOCK_US)
    engine.wait([ticket])
    assert REGISTRY.get_sample_value("pui_invalid_dates_total") - before == 1
    assert written(session)["u"]["updated_at"] is None


def test_rows_cassandra_refuses_come_back_by_index(session):
    session.answer = lambda r: InvalidRequest("bad row") if "u3" in r.users else None
    engine = PythonEngine(settings())
    ticket, refused = engine.submit(
        batch([event("u0"), b"[]", event("u2"), event("u3"), event("u4")]), CLOCK_US
    )
    assert [r.index for r in refused] == [1]
    engine.wait([ticket])
    done = engine.take(ticket)
    assert done.rejections == [Rejection(3, CASSANDRA_REJECTED, "bad row")]
    assert set(written(session)) == {"u0", "u2", "u3", "u4"}


def test_take_is_none_until_done_and_close_shuts_the_cluster_down(session):
    session.answer = lambda r: HOLD
    engine = PythonEngine(settings())
    ticket, _ = engine.submit(batch([event("u")]), CLOCK_US)
    assert engine.take(ticket) is None
    session.release()
    assert engine.take(ticket) is not None
    engine.close()
    assert engine._cluster.shut_down


# ---- the dataflow ------------------------------------------------------------------------


def test_the_dataflow_writes_rejects_and_commits_per_partition(session, monkeypatch):
    producer = FakeProducer()
    consumer = FakeCommitConsumer()
    monkeypatch.setattr(sink, "partition_names", lambda s: ["0", "1"])
    monkeypatch.setattr(sink, "FailedTopicPublisher", lambda s: FailedTopicPublisher(s, producer))
    monkeypatch.setattr(sink, "OffsetCommitter", lambda s: OffsetCommitter(s, consumer))
    session.answer = lambda r: InvalidRequest("refused") if "refused" in r.users else None

    batches = [
        batch([event("a0"), b"nope", event("a2")], partition=0, first=0),
        batch([event("b0", deleted=True), event("refused")], partition=1, first=100),
        batch([event("a3")], partition=0, first=3),
    ]
    run_main(flow.wire(settings(), TestingSource(batches)))

    assert set(written(session)) == {"a0", "a2", "a3", "b0", "refused"}
    published = [
        (dict(r["headers"])["error.reason"], dict(r["headers"])["source.offset"], r["value"])
        for r in producer.delivered
    ]
    assert sorted(published) == [
        (b"cassandra_rejected", b"101", event("refused")),
        (b"malformed_json", b"1", b"nope"),
    ]
    # The final commit names the next offset of both partitions.
    # The final commit (one per sink partition, on the shared committer) names the next offset
    # of both partitions.
    final = [offsets for asynchronous, offsets in consumer.commits if not asynchronous]
    assert final and all(f == [(T, 0, 4), (T, 1, 102)] for f in final), final
    assert consumer.closed
    assert _Connection._open == {}, "the worker's connection was released"
