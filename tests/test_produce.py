"""python -m dataflow.produce counts Kafka's delivery reports: success only when every event was
acknowledged, otherwise a non-zero exit naming how many were lost, within PUI_PRODUCE_TIMEOUT."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from confluent_kafka.admin import AdminClient

from dataflow import config
from dataflow.kafka_admin import ensure_topic
from dataflow.show import topic_sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def closed_port() -> int:
    """A local port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_produce(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, float]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PUI_")}
    full.update(env, PYTHONPATH=ROOT)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "dataflow.produce", "--quiet", *args],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, time.monotonic() - started


def test_unreachable_broker_fails_with_the_undelivered_count_within_the_timeout():
    port = closed_port()
    proc, elapsed = run_produce(
        {"PUI_KAFKA_BROKERS": f"127.0.0.1:{port}", "PUI_PRODUCE_TIMEOUT": "3"},
        "--generate",
        "3",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "published" not in proc.stdout
    assert f"3 of 3 event(s) were not delivered to local.programuser.info on 127.0.0.1:{port}" in (
        proc.stderr
    )
    # 3 s of message timeout plus start-up, far below librdkafka's five-minute default.
    assert elapsed < 15, elapsed


def test_produce_timeout_is_validated():
    with pytest.raises(config.ConfigError, match="PUI_PRODUCE_TIMEOUT"):
        config.load({"PUI_PRODUCE_TIMEOUT": "soon"})
    assert config.load({"PUI_PRODUCE_TIMEOUT": "7.5"}).produce_timeout == 7.5


def test_real_broker_acknowledges_every_event(kafka_brokers, unique_name):
    env = {"PUI_ENV": unique_name, "PUI_KAFKA_BROKERS": kafka_brokers}
    settings = config.load(env)
    ensure_topic(settings, settings.input_topic, 2)
    try:
        proc, _ = run_produce(env, "--generate", "25")
        assert proc.returncode == 0, proc.stderr
        assert f"published 25 event(s) to {settings.input_topic}" in proc.stdout
        assert topic_sizes(settings, settings.input_topic)[0] == 25
    finally:
        admin = AdminClient({"bootstrap.servers": kafka_brokers})
        admin.delete_topics([settings.input_topic])[settings.input_topic].result()


@pytest.mark.parametrize(
    "args", [["dataflow.produce", "--generate", "1"], ["dataflow.bootstrap", "--skip-cassandra"]]
)
def test_bad_librdkafka_setting_is_a_configuration_error_naming_it(args):
    full = {k: v for k, v in os.environ.items() if not k.startswith("PUI_")}
    full.update(PUI_KAFKA_CONFIG_BOGUS_SETTING="1", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", *args], env=full, cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "configuration error: PUI_KAFKA_CONFIG_BOGUS_SETTING (bogus.setting): No such "
        'configuration property: "bogus.setting"'
    )
