"""The failed-topic publisher without Kafka: headers, truncation, a full queue, delivery
errors. The producer is an in-process stand-in (tests/unit_fakes.py); publishing to a real
broker is covered by tests/test_streaming_job.py."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError
from prometheus_client import REGISTRY

from dataflow import config, failed
from dataflow.failed import (
    MAX_DETAIL,
    MAX_FAILED_BYTES,
    TRUNCATED,
    TRUNCATED_KEEP,
    FailedTopicPublisher,
)
from tests.unit_fakes import FakeProducer, record_sleeps

SETTINGS = config.load({"PUI_ENV": "unit"})


def publish(pub: FailedTopicPublisher, value=b"{bad", detail="detail", **over) -> None:
    args = {
        "value": value,
        "key": b"k1",
        "reason": "malformed_json",
        "detail": detail,
        "source_topic": "unit.programuser.info",
        "partition": 3,
        "offset": 41,
        "timestamp_ms": 1_700_000_000_123,
    }
    args.update(over)
    pub.publish(**args)


def headers(record: dict) -> dict[str, bytes]:
    return dict(record["headers"])


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The publisher's pauses between re-sends, recorded instead of slept."""
    return record_sleeps(monkeypatch, failed)


def test_a_rejection_is_published_unchanged_with_the_headers_of_the_spec():
    producer = FakeProducer()
    pub = FailedTopicPublisher(SETTINGS, producer=producer)
    publish(pub, value=b'{"programId": 1}', detail="programId must be a string")
    pub.flush()

    [record] = producer.delivered
    assert record["topic"] == "unit.programuser.info.failed"
    assert record["value"] == b'{"programId": 1}'
    assert record["key"] == b"k1"
    assert record["headers"] == [
        ("error.reason", b"malformed_json"),
        ("error.detail", b"programId must be a string"),
        ("source.topic", b"unit.programuser.info"),
        ("source.partition", b"3"),
        ("source.offset", b"41"),
        ("source.timestamp", b"1700000000123"),
    ]


def test_a_null_value_and_key_stay_null():
    producer = FakeProducer()
    publish(FailedTopicPublisher(SETTINGS, producer=producer), value=None, key=None)
    assert (producer.produced[0]["value"], producer.produced[0]["key"]) == (None, None)


def test_long_details_are_cut_and_any_text_is_encodable():
    producer = FakeProducer()
    pub = FailedTopicPublisher(SETTINGS, producer=producer)
    publish(pub, detail="é" * (MAX_DETAIL + 500))
    # A lone surrogate (from a hostile message echoed in a detail) must not stop publishing.
    publish(pub, detail="bad \udc80 text")
    long, odd = (headers(r)["error.detail"] for r in producer.produced)
    assert long.decode() == "é" * MAX_DETAIL, "cut at MAX_DETAIL characters, still UTF-8"
    assert odd == b"bad ? text"


def test_a_full_queue_is_waited_out_not_dropped():
    producer = FakeProducer(full=3)
    publish(FailedTopicPublisher(SETTINGS, producer=producer))
    assert len(producer.produced) == 1
    # Each refusal served the queue for a while before trying again.
    assert producer.polls[:3] == [0.1, 0.1, 0.1]


def test_a_value_too_large_for_the_producer_is_truncated_with_its_size():
    producer = FakeProducer(too_large=TRUNCATED_KEEP + 1)
    big = b"x" * (TRUNCATED_KEEP * 3)
    publish(FailedTopicPublisher(SETTINGS, producer=producer), value=big)
    [record] = producer.produced
    assert record["value"] == big[:TRUNCATED_KEEP]
    assert headers(record)[TRUNCATED] == str(len(big)).encode()
    assert headers(record)["error.reason"] == b"malformed_json", "the other headers stay"


def test_delivery_errors_are_resent_until_acknowledged(sleeps):
    outcomes = [KafkaError(KafkaError._MSG_TIMED_OUT), KafkaError(KafkaError._TRANSPORT), None]
    producer = FakeProducer(deliver=lambda record: outcomes.pop(0))
    before = REGISTRY.get_sample_value("pui_failed_published_total") or 0.0
    errors = REGISTRY.get_sample_value("pui_kafka_errors_total", {"code": "_MSG_TIMED_OUT"}) or 0
    pub = FailedTopicPublisher(SETTINGS, producer=producer)
    publish(pub)
    pub.flush()

    assert len(producer.produced) == 3, "sent, then re-sent after each delivery error"
    assert producer.produced[0] == producer.produced[2]
    assert len(producer.delivered) == 1
    assert sleeps == [1.0, 2.0], "backoff between re-sends doubles"
    assert (REGISTRY.get_sample_value("pui_failed_published_total") or 0) - before == 1
    after = REGISTRY.get_sample_value("pui_kafka_errors_total", {"code": "_MSG_TIMED_OUT"})
    assert after - errors == 1


def test_a_value_the_broker_finds_too_large_is_resent_truncated(sleeps):
    outcomes = [KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None]
    producer = FakeProducer(deliver=lambda record: outcomes.pop(0))
    pub = FailedTopicPublisher(SETTINGS, producer=producer)
    big = b"y" * (TRUNCATED_KEEP + 10)
    publish(pub, value=big)
    pub.flush()
    [record] = producer.delivered
    assert record["value"] == big[:TRUNCATED_KEEP]
    assert headers(record)[TRUNCATED] == str(len(big)).encode()


def test_the_producer_is_made_at_the_first_rejection(monkeypatch):
    made: list[dict] = []

    def producer(conf: dict) -> FakeProducer:
        made.append(conf)
        return FakeProducer()

    monkeypatch.setattr(failed, "Producer", producer)
    pub = FailedTopicPublisher(SETTINGS)
    pub.flush()
    assert made == [], "no producer (and no librdkafka log queue) until something is rejected"
    publish(pub)
    publish(pub)
    assert len(made) == 1
    assert made[0]["message.max.bytes"] > MAX_FAILED_BYTES
    assert made[0]["enable.idempotence"] is True
