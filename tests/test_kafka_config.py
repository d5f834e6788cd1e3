"""Every Kafka client comes from dataflow.kafka_config: one security filter, no topic
auto-creation anywhere, librdkafka's logs through Python logging and rate-limited."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from dataflow import config, kafka_config
from dataflow.failed import producer_config
from tests.test_produce import closed_port

SECURITY = {
    "PUI_KAFKA_CONFIG_SECURITY_PROTOCOL": "SASL_SSL",
    "PUI_KAFKA_CONFIG_SASL_MECHANISM": "PLAIN",
    "PUI_KAFKA_CONFIG_SSL_CA_LOCATION": "/etc/ca.pem",
    # A consumer-only tuning: it must not reach producers or the admin client.
    "PUI_KAFKA_CONFIG_FETCH_MAX_BYTES": "1000000",
    # Nobody may turn topic creation back on.
    "PUI_KAFKA_CONFIG_ALLOW_AUTO_CREATE_TOPICS": "true",
}


def every_client(settings: config.Settings) -> dict[str, dict]:
    return {
        "source": kafka_config.source_consumer(settings, eof=False),
        "committer": kafka_config.offset_committer(settings),
        "failed": producer_config(settings),
        "cli": kafka_config.cli_producer(settings),
        "admin": kafka_config.admin(settings),
    }


def test_every_client_gets_security_settings_and_never_creates_topics():
    settings = config.load(SECURITY)
    for name, conf in every_client(settings).items():
        assert conf["allow.auto.create.topics"] is False, name
        assert conf["security.protocol"] == "SASL_SSL", name
        assert conf["sasl.mechanism"] == "PLAIN", name
        assert conf["ssl.ca.location"] == "/etc/ca.pem", name
        assert conf["bootstrap.servers"] == settings.kafka_brokers, name
        assert isinstance(conf["logger"], kafka_config.RateLimitedLog), name
        consumer = name in ("source", "committer")
        assert ("fetch.max.bytes" in conf) is consumer, name
    assert every_client(settings)["committer"]["group.id"] == settings.group_id
    assert every_client(settings)["committer"]["enable.auto.commit"] is False


def test_repeated_client_lines_are_held_back_and_counted(caplog):
    limited = kafka_config.RateLimitedLog(logging.getLogger("t.kafka"), every=0.5)
    with caplog.at_level(logging.INFO, logger="t.kafka"):
        for _ in range(100):
            limited.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "refused")
        limited.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-2", "refused")
        time.sleep(0.6)
        limited.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "refused")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0] == "FAIL [rdkafka#consumer-1] refused"
    assert "99 similar line(s)" in lines[2]


def test_librdkafka_lines_go_to_python_logging_not_stderr(caplog, capfd):
    settings = config.load({"PUI_KAFKA_BROKERS": f"127.0.0.1:{closed_port()}"})
    with caplog.at_level(logging.INFO, logger="dataflow.kafka.client"):
        consumer = Consumer(kafka_config.source_consumer(settings, eof=False))
        consumer.assign([TopicPartition("any", 0, 0)])
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            consumer.consume(10, 0.2)
        consumer.close()
    client = [r for r in caplog.records if r.name == "dataflow.kafka.client"]
    assert client and "Connection refused" in client[0].getMessage()
    # librdkafka retries many times a second; one line per kind gets through.
    assert len(client) <= 3, [r.getMessage() for r in client]
    assert "rdkafka" not in capfd.readouterr().err


def test_bad_librdkafka_setting_is_refused_naming_the_variable():
    settings = config.load({"PUI_KAFKA_CONFIG_BOGUS_SETTING": "1"})
    with pytest.raises(config.ConfigError, match="PUI_KAFKA_CONFIG_BOGUS_SETTING"):
        kafka_config.validate(settings)
    bad_value = config.load({"PUI_KAFKA_CONFIG_FETCH_WAIT_MAX_MS": "soon"})
    with pytest.raises(config.ConfigError, match="PUI_KAFKA_CONFIG_FETCH_WAIT_MAX_MS"):
        kafka_config.validate(bad_value)
    kafka_config.validate(
        config.load(
            {
                "PUI_KAFKA_CONFIG_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "PUI_KAFKA_CONFIG_SASL_MECHANISM": "PLAIN",
                "PUI_KAFKA_CONFIG_SASL_USERNAME": "u",
                "PUI_KAFKA_CONFIG_SASL_PASSWORD": "p",
            }
        )
    )
    # librdkafka's own consistency checks count too.
    half_sasl = {k: v for k, v in SECURITY.items() if "SSL_CA" not in k}
    with pytest.raises(config.ConfigError, match=r"sasl\.username"):
        kafka_config.validate(config.load(half_sasl))


def test_asking_for_a_missing_topic_does_not_create_it(kafka_brokers, unique_name):
    """The local broker has auto.create.topics.enable=true, as many real ones do."""
    settings = config.load({"PUI_KAFKA_BROKERS": kafka_brokers, "PUI_ENV": unique_name})
    admin = AdminClient(kafka_config.admin(settings))
    meta = admin.list_topics(topic=settings.input_topic, timeout=10)
    assert meta.topics[settings.input_topic].error is not None
    consumer = Consumer(kafka_config.source_consumer(settings, eof=True))
    consumer.assign([TopicPartition(settings.failed_topic, 0, 0)])
    consumer.consume(10, 2)
    consumer.close()
    prod = Producer({**producer_config(settings), "message.timeout.ms": 2000})
    prod.produce(settings.failed_topic, b"x")
    prod.flush(5)
    time.sleep(1)
    existing = set(AdminClient({"bootstrap.servers": kafka_brokers}).list_topics(timeout=10).topics)
    created = {settings.input_topic, settings.failed_topic} & existing
    if created:  # clean up before failing
        AdminClient({"bootstrap.servers": kafka_brokers}).delete_topics(list(created))
    assert not created


def test_failed_topic_producer_is_made_at_the_first_rejection():
    """An idle client is never polled, and librdkafka keeps its log lines until it is: so none
    exists before there is something to publish (an outage would otherwise pile them up)."""
    from dataflow.failed import FailedTopicPublisher

    settings = config.load({"PUI_KAFKA_BROKERS": f"127.0.0.1:{closed_port()}"})
    publisher = FailedTopicPublisher(settings)
    started = time.monotonic()
    publisher.flush()  # nothing published: returns at once, connects nowhere
    assert time.monotonic() - started < 1
    assert publisher._client is None


@pytest.mark.parametrize(
    ("errors", "cause", "final"),
    [
        # librdkafka's texts for a broker with SASL/SCRAM whose credentials are wrong (no such
        # broker in the local stack; the other causes are produced for real in
        # tests/test_streaming_startup.py).
        (
            [
                (
                    "_AUTHENTICATION",
                    "sasl_ssl://b1:9093/bootstrap: SASL authentication error: Authentication "
                    "failed during authentication due to invalid credentials with SASL "
                    "mechanism SCRAM-SHA-512 (after 310ms in state AUTH_REQ)",
                )
            ],
            "authentication failed (check PUI_KAFKA_CONFIG_SASL_USERNAME and "
            "PUI_KAFKA_CONFIG_SASL_PASSWORD): SASL authentication error",
            True,
        ),
        (
            [
                (
                    "_SSL",
                    "ssl://b1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL "
                    "routines::certificate verify failed: broker certificate could not be "
                    "verified, verify that ssl.ca.location is correctly configured",
                )
            ],
            "TLS certificate not accepted (check PUI_KAFKA_CONFIG_SSL_CA_LOCATION",
            True,
        ),
        (
            [("_TRANSPORT", "b1:9092/bootstrap: Connect to ipv4#10.0.0.1:9092 failed: timed out")],
            "unreachable: Connect to ipv4#10.0.0.1:9092 failed: timed out",
            False,
        ),
        ([("_ALL_BROKERS_DOWN", "1/1 brokers are down")], "unreachable: no broker answered", False),
    ],
)
def test_startup_diagnosis_names_the_cause(errors, cause, final):
    diagnosis = kafka_config.diagnose(errors, config.load({}))
    assert diagnosis.cause.startswith(cause), diagnosis.cause
    assert diagnosis.final is final
