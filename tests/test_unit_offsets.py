"""The offset committer without Kafka: offsets only move forward, commits name what was
touched, the final commit is retried while the coordinator comes back. The consumer is an
in-process stand-in (tests/unit_fakes.py); the group's lag on a real broker is checked by
tests/test_streaming_job.py."""

from __future__ import annotations

import logging

import pytest

from dataflow import config, offsets
from dataflow.offsets import FINAL_COMMIT_WAIT_S, OffsetCommitter
from tests.unit_fakes import FakeCommitConsumer

SETTINGS = config.load({"PUI_ENV": "unit"})
T = "unit.programuser.info"


@pytest.fixture
def clock(monkeypatch):
    """A fake clock for the final commit's retries: sleeping moves it on at once."""

    class Clock:
        now = 0.0
        slept: list[float] = []  # noqa: RUF012 - one instance per test

        @classmethod
        def monotonic(cls) -> float:
            return cls.now

        @classmethod
        def sleep(cls, seconds: float) -> None:
            cls.slept.append(seconds)
            cls.now += seconds

    Clock.slept = []
    monkeypatch.setattr(offsets, "time", Clock)
    return Clock


def test_commits_the_next_offset_to_read_of_the_touched_partitions():
    consumer = FakeCommitConsumer()
    committer = OffsetCommitter(SETTINGS, consumer=consumer)
    committer.advance(T, 0, 9)
    committer.advance(T, 1, 99)
    committer.commit({(T, 0)})
    assert consumer.commits == [(True, [(T, 0, 10)])], "asynchronous, only partition 0"
    assert consumer.polls == 1, "each asynchronous commit's report is served"
    committer.commit({(T, 0), (T, 1)})
    assert consumer.commits[-1] == (True, [(T, 0, 10), (T, 1, 100)])


def test_offsets_never_move_back():
    consumer = FakeCommitConsumer()
    committer = OffsetCommitter(SETTINGS, consumer=consumer)
    committer.advance(T, 0, 50)
    committer.advance(T, 0, 20)  # an older batch finishing late must not rewind the group
    committer.commit({(T, 0)})
    assert consumer.commits == [(True, [(T, 0, 51)])]


def test_nothing_touched_commits_nothing():
    consumer = FakeCommitConsumer()
    committer = OffsetCommitter(SETTINGS, consumer=consumer)
    committer.commit(set())
    committer.commit_final()
    assert consumer.commits == []
    assert consumer.sync_attempts == 0


def test_the_final_commit_is_synchronous_and_covers_every_partition(clock):
    consumer = FakeCommitConsumer()
    committer = OffsetCommitter(SETTINGS, consumer=consumer)
    committer.advance(T, 0, 4)
    committer.advance(T, 2, 7)
    committer.commit_final()
    assert consumer.commits == [(False, [(T, 0, 5), (T, 2, 8)])]


def test_the_final_commit_is_retried_while_the_coordinator_comes_back(clock):
    consumer = FakeCommitConsumer(fail_sync=3)
    committer = OffsetCommitter(SETTINGS, consumer=consumer)
    committer.advance(T, 0, 4)
    committer.commit_final()
    assert consumer.sync_attempts == 4
    assert consumer.commits == [(False, [(T, 0, 5)])]
    assert clock.slept == [1.0, 1.0, 1.0]


def test_the_final_commit_gives_up_with_a_warning_after_the_wait(clock, caplog):
    consumer = FakeCommitConsumer(fail_sync=10_000)
    committer = OffsetCommitter(SETTINGS, consumer=consumer)
    committer.advance(T, 0, 4)
    with caplog.at_level(logging.WARNING, logger="dataflow.sink"):
        committer.commit_final()  # must return: the job still stops
    assert consumer.commits == []
    assert sum(clock.slept) == pytest.approx(FINAL_COMMIT_WAIT_S)
    [warning] = [r.getMessage() for r in caplog.records]
    assert "could not commit the final offsets" in warning
    assert "COORDINATOR_NOT_AVAILABLE" in warning


def test_close_closes_the_consumer():
    consumer = FakeCommitConsumer()
    OffsetCommitter(SETTINGS, consumer=consumer).close()
    assert consumer.closed
