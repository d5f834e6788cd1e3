"""The sink partition without servers: rejections reach the failed topic before the offsets
that cover them are committed, batches retire in order, snapshots wait for every write. The
engine, publisher and committer are small recording stand-ins; tests/test_unit_flow.py runs
the real ones together, tests/test_streaming_job.py runs the job against the real servers."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from dataflow import config, sink
from dataflow.engines import CASSANDRA_REJECTED, Completed, Rejection
from dataflow.offsets import OffsetCommitter
from dataflow.sink import CassandraSink, _CassandraSinkPartition, _Connection
from dataflow.source import NO_TIMESTAMP, MessageBatch
from tests.unit_fakes import FakeCommitConsumer

T = "unit.programuser.info"


def batch(partition: int, first: int, n: int) -> MessageBatch:
    return MessageBatch(
        T,
        partition,
        values=[f"v{first + i}".encode() for i in range(n)],
        keys=[f"k{first + i}".encode() for i in range(n)],
        offsets=list(range(first, first + n)),
        timestamps=[1_700_000_000_000 + first + i for i in range(n)],
    )


class Engine:
    """Tickets complete when the test says so (``finish``) or when waited for."""

    name = "fake"

    def __init__(self, log: list):
        self.log = log
        self.refuse: dict[int, list[Rejection]] = {}  # by first offset: the rules' rejections
        self.cassandra: dict[int, list[Rejection]] = {}  # by first offset: Cassandra's
        self.done: set[int] = set()
        self.waited: list[list[int]] = []

    def submit(self, batch: MessageBatch, clock_us: int):
        ticket = batch.offsets[0]
        self.log.append(("submit", ticket))
        return ticket, self.refuse.get(ticket, [])

    def finish(self, *tickets: int) -> None:
        self.done.update(tickets)

    def take(self, ticket: int) -> Completed | None:
        if ticket not in self.done:
            return None
        return Completed(1000.0, 1005.0, self.cassandra.get(ticket, []))

    def wait(self, tickets: list) -> None:
        self.waited.append(list(tickets))
        self.done.update(tickets)

    def publish_metrics(self) -> None:
        pass

    def close(self) -> None:
        self.log.append(("engine.close",))


class Publisher:
    def __init__(self, log: list):
        self.log = log

    def publish(self, value, key, reason, detail, topic, partition, offset, timestamp_ms):
        self.log.append(("publish", reason, offset, value, key, timestamp_ms))

    def flush(self) -> None:
        self.log.append(("flush",))


class Committer(OffsetCommitter):
    """The real committer over a stand-in consumer, logging into the shared sequence."""

    def __init__(self, log: list):
        super().__init__(config.load({}), consumer=FakeCommitConsumer())
        self.log = log

    def commit(self, partitions):
        if partitions:
            self.log.append(("commit", sorted((t, p, self._next[(t, p)]) for t, p in partitions)))
        super().commit(partitions)

    def commit_final(self) -> None:
        self.log.append(("commit_final", sorted(self._next.items())))


class Conn:
    def __init__(self):
        self.log: list = []
        self.engine = Engine(self.log)
        self.failed = Publisher(self.log)
        self.committer = Committer(self.log)

    def release(self) -> None:
        self.log.append(("release",))

    def events(self, *kinds: str) -> list:
        return [e for e in self.log if e[0] in kinds]


@pytest.fixture
def conn() -> Conn:
    return Conn()


def test_rule_rejections_are_published_with_their_message_and_flushed_before_the_commit(conn):
    conn.engine.refuse[0] = [Rejection(1, "missing_key:userId", "userId is missing or null")]
    part = _CassandraSinkPartition(conn)
    part.write_batch([batch(0, 0, 3)])
    assert conn.events("publish") == [
        ("publish", "missing_key:userId", 1, b"v1", b"k1", 1_700_000_000_001)
    ]
    assert conn.events("commit") == [], "nothing is committed before Cassandra acknowledged"
    conn.engine.finish(0)
    part.write_batch([])
    assert conn.events("flush", "commit") == [("flush",), ("commit", [(T, 0, 3)])]


def test_cassandra_rejections_are_published_as_cassandra_rejected(conn):
    conn.engine.cassandra[10] = [Rejection(2, CASSANDRA_REJECTED, "Invalid query")]
    before = REGISTRY.get_sample_value("pui_rejections_total", {"reason": CASSANDRA_REJECTED})
    part = _CassandraSinkPartition(conn)
    part.write_batch([batch(0, 10, 5)])
    part.snapshot()
    assert conn.events("publish") == [
        ("publish", CASSANDRA_REJECTED, 12, b"v12", b"k12", 1_700_000_000_012)
    ]
    assert conn.log[-2:] == [("flush",), ("commit", [(T, 0, 15)])]
    after = REGISTRY.get_sample_value("pui_rejections_total", {"reason": CASSANDRA_REJECTED})
    assert after - (before or 0) == 1


def test_batches_retire_in_order_so_a_later_offset_never_overtakes(conn):
    part = _CassandraSinkPartition(conn)
    part.write_batch([batch(0, 0, 10)])
    part.write_batch([batch(0, 10, 10)])
    conn.engine.finish(10)  # the later batch is acknowledged first
    conn.engine.cassandra[10] = [Rejection(0, CASSANDRA_REJECTED, "x")]
    part.write_batch([])
    assert conn.events("commit", "publish") == [], "batch 2 waits for batch 1"
    conn.engine.cassandra[0] = [Rejection(9, CASSANDRA_REJECTED, "y")]
    conn.engine.finish(0)
    part.write_batch([])
    # Both retire together, in order: their rejections in order, one commit past both.
    assert [e[2] for e in conn.events("publish")] == [9, 10]
    assert conn.events("commit") == [("commit", [(T, 0, 20)])]


def test_no_flush_when_nothing_was_rejected(conn):
    part = _CassandraSinkPartition(conn)
    part.write_batch([batch(0, 0, 4), batch(0, 4, 4)])
    part.snapshot()
    assert conn.events("flush") == []
    assert conn.events("commit") == [("commit", [(T, 0, 8)])]


def test_snapshot_returns_only_when_every_pending_write_is_done(conn):
    part = _CassandraSinkPartition(conn)
    part.write_batch([batch(0, 0, 2)])
    part.write_batch([batch(0, 2, 2)])
    assert part.snapshot() is None
    assert conn.engine.waited == [[0, 2]]
    assert conn.events("commit")[-1] == ("commit", [(T, 0, 4)])
    part.snapshot()
    assert conn.engine.waited == [[0, 2]], "nothing pending: no wait"


def test_partitions_are_committed_separately(conn):
    part = _CassandraSinkPartition(conn)
    part.write_batch([batch(0, 0, 2), batch(1, 100, 3)])
    part.snapshot()
    assert conn.events("commit") == [("commit", [(T, 0, 2), (T, 1, 103)])]


def test_close_writes_flushes_commits_and_releases_in_that_order(conn):
    part = _CassandraSinkPartition(conn)
    part.write_batch([batch(0, 0, 2)])
    part.close()
    kinds = [e[0] for e in conn.log if e[0] != "submit"]
    assert kinds == ["commit", "flush", "commit_final", "release"]
    assert conn.events("commit_final") == [("commit_final", [((T, 0), 2)])]


def test_close_releases_even_when_the_final_steps_fail(conn):
    def broken() -> None:
        raise RuntimeError("flush failed")

    conn.failed.flush = broken
    part = _CassandraSinkPartition(conn)
    with pytest.raises(RuntimeError):
        part.close()
    assert conn.log[-1] == ("release",)


def test_event_age_skips_messages_without_a_timestamp(conn):
    b = batch(0, 0, 3)
    b.timestamps = [NO_TIMESTAMP] * 3
    before = REGISTRY.get_sample_value("pui_event_age_seconds_count") or 0
    part = _CassandraSinkPartition(conn)
    part.write_batch([b])
    part.snapshot()
    assert (REGISTRY.get_sample_value("pui_event_age_seconds_count") or 0) == before


def test_a_worker_shares_one_connection_between_its_partitions(monkeypatch):
    monkeypatch.setattr(_Connection, "_open", {})
    log: list = []
    monkeypatch.setattr(sink, "open_engine", lambda settings: Engine(log))
    monkeypatch.setattr(sink, "FailedTopicPublisher", lambda settings: Publisher(log))
    monkeypatch.setattr(sink, "OffsetCommitter", lambda settings: Committer(log))
    settings = config.load({})
    first, second = _Connection.acquire(settings), _Connection.acquire(settings)
    assert first is second and first.users == 2
    first.release()
    assert log == [], "still used by the other partition"
    second.release()
    assert log == [("engine.close",)]
    assert _Connection.acquire(settings) is not first, "a closed connection is not reused"


def test_the_sink_routes_a_partition_key_to_its_sorted_index(monkeypatch):
    parts = [str(p) for p in range(12)]
    monkeypatch.setattr(sink, "partition_names", lambda settings: parts)
    s = CassandraSink(config.load({}))
    ordered = sorted(parts)  # "10" sorts before "2"
    for key in parts:
        assert ordered[s.part_fn(key)] == key
