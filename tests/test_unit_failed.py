"""The failed-topic publisher without Kafka: headers, truncation, a full queue, delivery
errors. The producer is an in-process stand-in (tests/unit_fakes.py); publishing to a real
broker is covered by tests/test_streaming_job.py."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError
from prometheus_client import REGISTRY

from dataflow import config, failed
from dataflow.failed import (
    KEY_TRUNCATED,
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


def counter(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def bounded(producer: FakeProducer, give_up: int = 60) -> FakeProducer:
    """Fail the test, instead of hanging it, when the publisher re-sends without end."""
    produce = producer.produce
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) > give_up:
            raise AssertionError(f"still sending after {give_up} attempts: a re-send loop")
        return produce(*args, **kwargs)

    producer.produce = counted
    return producer


class Broker:
    """The failed topic's broker, as the fake producer's ``deliver``: refuses a message larger
    than its max.message.bytes (``limit``) with MSG_SIZE_TOO_LARGE. With ``raised_after``, an
    operator raises the limit once that many messages with no value and no key were refused."""

    def __init__(self, limit: int, raised_after: int | None = None):
        self.limit = limit
        self.raised_after = raised_after
        self.bare_refused = 0

    def __call__(self, record: dict) -> KafkaError | None:
        if FakeProducer.size(record) <= self.limit:
            return None
        if not record["value"] and record["key"] is None:
            self.bare_refused += 1
            if self.bare_refused == self.raised_after:
                self.limit = MAX_FAILED_BYTES
        return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)


TOO_LARGE = {"code": "MSG_SIZE_TOO_LARGE"}


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
    producer = FakeProducer(too_large=TRUNCATED_KEEP + 1024)  # the headers fit beside 64 KiB
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


def test_a_failed_topic_limit_below_the_truncated_size_still_gets_the_rejection(sleeps):
    # A topic whose max.message.bytes (10 kB) is below TRUNCATED_KEEP plus the headers.
    producer = bounded(FakeProducer(deliver=Broker(limit=10_000)))
    published = counter("pui_failed_published_total")
    refused = counter("pui_kafka_errors_total", **TOO_LARGE)
    pub = FailedTopicPublisher(SETTINGS, producer=producer)
    big = b"v" * 200_000
    publish(pub, value=big)
    pub.flush()

    [record] = producer.delivered
    assert record["value"] == big[:8192], "cut to 64 KiB, then halved until it fits"
    assert FakeProducer.size(record) <= 10_000
    assert record["key"] == b"k1", "the key is kept while cutting the value is enough"
    sizes = [data for name, data in record["headers"] if name == TRUNCATED]
    assert sizes == [b"200000"], "one header, with the original size"
    assert KEY_TRUNCATED not in headers(record)
    assert [len(r["value"]) for r in producer.produced] == [200_000, 65536, 32768, 16384, 8192]
    assert sleeps == [], "a size refusal is permanent: the smaller message goes at once"
    assert counter("pui_kafka_errors_total", **TOO_LARGE) - refused == 4
    assert counter("pui_failed_published_total") - published == 1


def test_a_key_too_large_for_the_failed_topic_is_dropped_with_its_size(sleeps):
    producer = bounded(FakeProducer(deliver=Broker(limit=10_000)))
    refused = counter("pui_kafka_errors_total", **TOO_LARGE)
    pub = FailedTopicPublisher(SETTINGS, producer=producer)
    publish(pub, value=b"{bad", key=b"k" * 300_000)
    pub.flush()

    [record] = producer.delivered
    assert (record["value"], record["key"]) == (b"", None)
    assert headers(record)[KEY_TRUNCATED] == b"300000"
    assert headers(record)[TRUNCATED] == b"4", "the value went first, down to nothing"
    assert headers(record)["error.reason"] == b"malformed_json", "the rejection is still told"
    assert len(producer.produced) == 5
    assert counter("pui_kafka_errors_total", **TOO_LARGE) - refused == 4


def test_a_key_too_large_for_the_producer_is_dropped_before_sending():
    producer = bounded(FakeProducer(too_large=10_000))
    refused = counter("pui_kafka_errors_total", **TOO_LARGE)
    publish(FailedTopicPublisher(SETTINGS, producer=producer), value=b"{}", key=b"k" * 20_000)
    [record] = producer.produced
    assert (record["value"], record["key"]) == (b"", None)
    assert (headers(record)[TRUNCATED], headers(record)[KEY_TRUNCATED]) == (b"2", b"20000")
    assert counter("pui_kafka_errors_total", **TOO_LARGE) - refused == 3


def test_a_failed_topic_smaller_than_the_headers_is_reported_once_and_retried(sleeps, caplog):
    broker = Broker(limit=100, raised_after=3)
    producer = bounded(FakeProducer(deliver=broker))
    published = counter("pui_failed_published_total")
    pub = FailedTopicPublisher(SETTINGS, producer=producer)
    publish(pub)
    with caplog.at_level("INFO", logger="dataflow.failed"):
        pub.flush()

    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert "unit.programuser.info.failed" in errors[0]
    assert "max.message.bytes is too small" in errors[0]
    assert broker.bare_refused == 3
    assert sleeps == [1.0, 2.0, 4.0], "retried with the usual backoff, not dropped"
    [record] = producer.delivered
    assert (record["value"], record["key"]) == (b"", None)
    assert (headers(record)[TRUNCATED], headers(record)[KEY_TRUNCATED]) == (b"4", b"2")
    assert counter("pui_failed_published_total") - published == 1, "one success, at the end"
