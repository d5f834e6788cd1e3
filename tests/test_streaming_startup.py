"""The job's start on the real stack: it stops within PUI_STARTUP_TIMEOUT with one line naming
the brokers and the likely cause, refuses bad settings naming them, and never creates topics."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from confluent_kafka.admin import AdminClient

from dataflow import config
from dataflow.kafka_admin import ensure_topics
from tests.streaming_helpers import ROOT, job_env
from tests.test_produce import closed_port


def start_job(
    env: dict[str, str], timeout: float = 120
) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflow:flow"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.monotonic() - started


def one_line_failure(proc: subprocess.CompletedProcess) -> str:
    """The job's failure: no traceback, no librdkafka noise, the reason on the last line."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "rdkafka" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    # The two start-up INFO lines (what runs where) and the reason.
    assert len(lines) <= 4, lines
    return lines[-1]


def delete_topics(brokers: str, *topics: str) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [t for t in topics if t in existing]
    for future in admin.delete_topics(doomed).values() if doomed else ():
        future.result()


def test_unreachable_broker_stops_within_the_startup_wait(unique_name):
    port = closed_port()
    env = job_env(unique_name, PUI_KAFKA_BROKERS=f"127.0.0.1:{port}", PUI_STARTUP_TIMEOUT="4")
    proc, elapsed = start_job(env)
    line = one_line_failure(proc)
    assert proc.returncode == 1
    assert f"Kafka at 127.0.0.1:{port}: unreachable" in line
    assert "Connection refused" in line and "PUI_STARTUP_TIMEOUT" in line
    assert "bootstrap" not in proc.stderr  # the topic is not the problem
    assert 4 <= elapsed < 20, elapsed


def test_tls_against_a_plaintext_listener_is_named_without_waiting(kafka_brokers, unique_name):
    env = job_env(
        unique_name,
        PUI_KAFKA_BROKERS=kafka_brokers,
        PUI_STARTUP_TIMEOUT="25",
        PUI_KAFKA_CONFIG_SECURITY_PROTOCOL="SASL_SSL",
        PUI_KAFKA_CONFIG_SASL_MECHANISM="PLAIN",
        PUI_KAFKA_CONFIG_SASL_USERNAME="user",
        PUI_KAFKA_CONFIG_SASL_PASSWORD="pw",
    )
    proc, elapsed = start_job(env)
    line = one_line_failure(proc)
    assert f"Kafka at {kafka_brokers}: TLS/SASL mismatch" in line
    assert "security.protocol=SASL_SSL" in line
    assert "bootstrap" not in proc.stderr
    assert "pw" not in line.split(": ", 1)[1].replace("plaintext", "")
    # A configuration mismatch does not go away: no need to wait the 25 s.
    assert elapsed < 15, elapsed


def test_sasl_against_a_listener_without_sasl_is_named(kafka_brokers, unique_name):
    env = job_env(
        unique_name,
        PUI_KAFKA_BROKERS=kafka_brokers,
        PUI_STARTUP_TIMEOUT="25",
        PUI_KAFKA_CONFIG_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        PUI_KAFKA_CONFIG_SASL_MECHANISM="SCRAM-SHA-512",
        PUI_KAFKA_CONFIG_SASL_USERNAME="user",
        PUI_KAFKA_CONFIG_SASL_PASSWORD="pw",
    )
    proc, elapsed = start_job(env)
    line = one_line_failure(proc)
    assert "TLS/SASL mismatch" in line and "SCRAM-SHA-512" in line
    assert elapsed < 15, elapsed


def test_missing_topic_gets_the_bootstrap_hint_and_is_not_created(kafka_brokers, unique_name):
    topic = f"{unique_name}.misspelled"
    env = job_env(
        unique_name,
        PUI_KAFKA_BROKERS=kafka_brokers,
        PUI_INPUT_TOPIC=topic,
        PUI_STARTUP_TIMEOUT="3",
    )
    try:
        proc, elapsed = start_job(env)
        line = one_line_failure(proc)
        assert f"Kafka topic {topic!r} does not exist on {kafka_brokers}" in line
        assert "python -m dataflow.bootstrap" in line and "PUI_INPUT_TOPIC" in line
        assert elapsed < 15, elapsed
        time.sleep(1)
        admin = AdminClient({"bootstrap.servers": kafka_brokers})
        assert topic not in admin.list_topics(timeout=10).topics
    finally:
        delete_topics(kafka_brokers, topic)


def test_unreachable_cassandra_stops_within_the_startup_wait(kafka_brokers, unique_name):
    port = closed_port()
    env = job_env(
        unique_name,
        PUI_KAFKA_BROKERS=kafka_brokers,
        PUI_CASSANDRA_PORT=str(port),
        PUI_STARTUP_TIMEOUT="5",
    )
    settings = config.load(env)
    ensure_topics(settings, 1)
    try:
        proc, elapsed = start_job(env)
    finally:
        delete_topics(kafka_brokers, settings.input_topic, settings.failed_topic)
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1
    assert f"Cassandra is not reachable at 127.0.0.1:{port}" in last
    assert elapsed < 25, elapsed


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("PUI_KAFKA_CONFIG_BOGUS_SETTING", "1"),
        ("PUI_KAFKA_CONFIG_FETCH_WAIT_MAX_MS", "soon"),
        ("PUI_CASSANDRA_REPLICATION", "not a map"),
        ("PUI_STARTUP_TIMEOUT", "0"),
    ],
)
def test_bad_setting_stops_the_job_and_dataflow_config_naming_it(setting, value, unique_name):
    env = job_env(unique_name, **{setting: value})
    proc, elapsed = start_job(env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_line_failure(proc)
    assert "configuration error" in line and setting in line
    assert elapsed < 15
    described = subprocess.run(
        [sys.executable, "-m", "dataflow.config"], env=env, capture_output=True, text=True
    )
    assert described.returncode == 2
    assert setting in described.stderr and "Traceback" not in described.stderr


def test_dataflow_config_help_is_help():
    proc = subprocess.run(
        [sys.executable, "-m", "dataflow.config", "--help"],
        env=job_env("helpcheck"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: python -m dataflow.config")
    assert "PUI_STARTUP_TIMEOUT" in proc.stdout and "PUI_KAFKA_CONFIG_" in proc.stdout
    assert "kafka_brokers=" not in proc.stdout  # help, not the settings
