"""The Kafka source partition without Kafka: where it starts, how consumed messages become a
batch, end of partition, errors. The consumer is an in-process stand-in returning real
confluent-kafka Message objects; reading a real topic is covered by
tests/test_streaming_job.py."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from prometheus_client import REGISTRY

from dataflow import config, source
from dataflow.source import NO_TIMESTAMP, MessageBatch, _KafkaPartition
from tests.unit_fakes import record_sleeps

T = "unit.programuser.info"
CREATE_TIME, NO_TIME = 1, 0  # confluent-kafka's TIMESTAMP_CREATE_TIME / TIMESTAMP_NOT_AVAILABLE


def settings(**env: str) -> config.Settings:
    return config.load({"PUI_ENV": "unit", **env})


def msg(offset: int, value: bytes | None = b"{}", key: bytes | None = b"k", ts=None) -> Message:
    stamp = (CREATE_TIME, 1_700_000_000_000 + offset) if ts is None else ts
    return Message(
        topic=T, partition=2, offset=offset, key=key, value=value, timestamp=stamp, error=None
    )


def error(code: int, fatal: bool = False) -> Message:
    return Message(topic=T, partition=2, error=KafkaError(code, fatal=fatal))


class Consumer:
    """Stands in for the partition's confluent_kafka.Consumer."""

    def __init__(
        self,
        polls: list[list[Message]] = (),
        committed: int = OFFSET_INVALID,
        committed_failures: int = 0,
        high: int = -1,
    ):
        self.polls = list(polls)
        self.committed_offset = committed
        self.committed_failures = committed_failures
        self.committed_calls = 0
        self.assigned: list[tuple[str, int, int]] = []
        self.high = high
        self.consumed_with: list[tuple[int, float]] = []
        self.closed = False

    def committed(self, partitions, timeout=None):
        self.committed_calls += 1
        if self.committed_failures:
            self.committed_failures -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return [TopicPartition(tp.topic, tp.partition, self.committed_offset) for tp in partitions]

    def assign(self, partitions):
        self.assigned += [(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def consume(self, num_messages, timeout):
        self.consumed_with.append((num_messages, timeout))
        return self.polls.pop(0) if self.polls else []

    def get_watermark_offsets(self, partition, cached=False):
        return (0, self.high)

    def close(self):
        self.closed = True


def part(consumer: Consumer, resume: int | None = None, **env: str) -> _KafkaPartition:
    return _KafkaPartition(settings(**env), 2, resume, consumer=consumer)


@pytest.fixture
def no_sleep(monkeypatch) -> list[float]:
    return record_sleeps(monkeypatch, source)


def test_recovery_state_wins_over_the_group():
    consumer = Consumer(committed=500)
    p = part(consumer, resume=42)
    assert consumer.assigned == [(T, 2, 42)]
    assert consumer.committed_calls == 0
    assert p.snapshot() == 42


@pytest.mark.parametrize(
    ("committed", "start"), [(500, 500), (0, 0), (OFFSET_INVALID, OFFSET_BEGINNING)]
)
def test_without_state_the_group_offset_else_earliest(committed, start):
    consumer = Consumer(committed=committed)
    part(consumer)
    assert consumer.assigned == [(T, 2, start)]


@pytest.mark.parametrize(
    ("mode", "start"), [("earliest", OFFSET_BEGINNING), ("latest", OFFSET_END)]
)
def test_start_offset_setting(mode, start):
    consumer = Consumer(committed=500)
    part(consumer, PUI_START_OFFSET=mode)
    assert consumer.assigned == [(T, 2, start)]
    assert consumer.committed_calls == 0


def test_reading_the_group_offset_is_retried(no_sleep):
    consumer = Consumer(committed=7, committed_failures=2)
    part(consumer)
    assert consumer.assigned == [(T, 2, 7)]
    assert no_sleep == [1, 2], "backoff doubles"


def test_a_group_offset_that_cannot_be_read_stops_with_the_group_named(no_sleep):
    with pytest.raises(RuntimeError, match=r"group 'unit-programuser-group' for .*\[2\]"):
        part(Consumer(committed_failures=100))
    assert len(no_sleep) == 10


def test_messages_become_one_batch_of_parallel_lists():
    consumer = Consumer(
        [[msg(10), msg(11, value=None, key=None), msg(12, ts=(NO_TIME, 0))]], high=20
    )
    before = REGISTRY.get_sample_value("pui_messages_consumed_total") or 0
    p = part(consumer, resume=10, PUI_BATCH_SIZE="500")
    [batch] = p.next_batch()
    assert batch == MessageBatch(
        T,
        2,
        values=[b"{}", None, b"{}"],
        keys=[b"k", None, b"k"],
        offsets=[10, 11, 12],
        timestamps=[1_700_000_000_010, 1_700_000_000_011, NO_TIMESTAMP],
    )
    assert consumer.consumed_with == [(500, 0)], "up to PUI_BATCH_SIZE, without blocking"
    assert p.snapshot() == 13, "the next offset to read"
    assert p.next_awake() is None
    assert REGISTRY.get_sample_value("pui_messages_consumed_total") - before == 3
    assert REGISTRY.get_sample_value("pui_consumer_lag", {"partition": "2"}) == 20 - 13


def test_nothing_to_read_pauses_the_partition():
    p = part(Consumer([]), resume=5)
    before = datetime.now(UTC)
    assert p.next_batch() == []
    after = datetime.now(UTC)
    awake = p.next_awake()
    assert awake is not None
    assert before + source.IDLE_PAUSE <= awake <= after + source.IDLE_PAUSE
    assert source.IDLE_PAUSE.total_seconds() == 0.02
    assert p.snapshot() == 5


def test_end_of_partition_ends_the_input_when_asked():
    consumer = Consumer([[msg(0), msg(1), error(KafkaError._PARTITION_EOF)]])
    p = part(consumer, resume=0, PUI_STOP_AT_END="true")
    [batch] = p.next_batch()
    assert batch.offsets == [0, 1], "the messages before the end are kept"
    with pytest.raises(StopIteration):
        p.next_batch()


def test_end_of_partition_is_ignored_otherwise():
    consumer = Consumer([[error(KafkaError._PARTITION_EOF)], [msg(3)]])
    p = part(consumer, resume=3)
    assert p.next_batch() == []
    assert p.snapshot() == 3
    assert p.next_batch()[0].offsets == [3]


def test_a_transient_kafka_error_is_counted_logged_and_skipped(caplog):
    code = KafkaError._TRANSPORT
    before = REGISTRY.get_sample_value("pui_kafka_errors_total", {"code": "_TRANSPORT"}) or 0
    p = part(Consumer([[msg(0), error(code), msg(1)]]), resume=0)
    with caplog.at_level(logging.WARNING, logger="dataflow.source"):
        [batch] = p.next_batch()
    assert batch.offsets == [0, 1]
    assert REGISTRY.get_sample_value("pui_kafka_errors_total", {"code": "_TRANSPORT"}) - before == 1
    assert any(f"{T}[2]" in r.getMessage() for r in caplog.records)


def test_a_fatal_kafka_error_stops_with_one_clear_line():
    p = part(Consumer([[msg(0), error(KafkaError._FENCED, fatal=True)]]), resume=0)
    with pytest.raises(RuntimeError, match=f"^fatal Kafka error on {T}: "):
        p.next_batch()


def test_a_stop_request_ends_the_input(monkeypatch):
    p = part(Consumer([[msg(0)]]), resume=0)
    monkeypatch.setattr(source.shutdown, "requested", lambda: True)
    with pytest.raises(StopIteration):
        p.next_batch()


def test_close_closes_the_consumer():
    consumer = Consumer()
    part(consumer, resume=0).close()
    assert consumer.closed


def test_source_and_sink_name_the_same_partitions(monkeypatch):
    monkeypatch.setattr(source, "list_partitions", lambda s, timeout=None: [0, 1, 2])
    assert source.KafkaBatchSource(settings()).list_parts() == ["0", "1", "2"]
