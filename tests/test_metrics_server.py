"""The metrics server: /metrics, /healthz (liveness: the sources poll), /readyz (Kafka and
Cassandra reachable), 404 elsewhere, bound where PUI_METRICS_ADDRESS says."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from dataflow import config, metrics
from dataflow.kafka_admin import ensure_topic
from tests.streaming_helpers import ROOT, bootstrap, job_env
from tests.test_produce import closed_port
from tests.test_streaming_startup import delete_topics


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def server():
    servers = []

    def start(readiness=None, window=60.0):
        srv = metrics.serve("127.0.0.1", 0, readiness, window)
        servers.append(srv)
        return srv.server_port

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_paths_other_than_the_three_are_404(server):
    port = server()
    status, body = get(port, "/metrics")
    assert status == 200 and "pui_messages_consumed_total" in body
    for path in ("/", "/metricsx", "/favicon.ico", "/healthz/../metrics", "/readyz"):
        assert get(port, path)[0] == 404, path  # /readyz: no readiness check configured


def test_healthz_fails_when_the_sources_stop_polling(server, monkeypatch):
    live = metrics.Liveness()
    monkeypatch.setattr(metrics, "LIVENESS", live)
    port = server(window=5.0)
    assert get(port, "/healthz")[0] == 200  # just started
    live.started -= 60  # a minute without a single poll: the worker is stuck
    status, body = get(port, "/healthz")
    assert status == 503 and "stalled" in body and "PUI_HEALTH_WINDOW" in body
    live.polled(0)  # polled, nothing to consume: an idle job is a live job
    status, body = get(port, "/healthz")
    assert status == 200 and "nothing to consume" in body
    live.last_idle -= 60
    live.polled(250)
    status, body = get(port, "/healthz")
    assert status == 200 and "consumed" in body


def test_readyz_checks_kafka_and_cassandra(server, kafka_brokers, unique_name):
    settings = config.load({"PUI_ENV": unique_name, "PUI_KAFKA_BROKERS": kafka_brokers})
    ensure_topic(settings, settings.input_topic, 1)
    try:
        status, body = get(server(metrics.Readiness(settings)), "/readyz")
        assert status == 200, body
        assert "kafka: ok" in body and "cassandra: ok" in body
    finally:
        delete_topics(kafka_brokers, settings.input_topic)
    k_port, c_port = closed_port(), closed_port()
    down = config.load(
        {"PUI_KAFKA_BROKERS": f"127.0.0.1:{k_port}", "PUI_CASSANDRA_PORT": str(c_port)}
    )
    status, body = get(server(metrics.Readiness(down)), "/readyz")
    assert status == 503
    assert f"kafka: 127.0.0.1:{k_port} not reachable" in body
    assert f"cassandra: not reachable: 127.0.0.1:{c_port}" in body


def test_bind_address_is_a_setting():
    assert config.load({}).metrics_address == "0.0.0.0"
    assert config.load({"PUI_METRICS_ADDRESS": "127.0.0.1"}).metrics_address == "127.0.0.1"
    with pytest.raises(config.ConfigError, match="PUI_METRICS_ADDRESS"):
        config.load({"PUI_METRICS_ADDRESS": "everywhere"})
    srv = metrics.serve("127.0.0.1", 0, None, 60.0)
    try:
        assert srv.server_address[0] == "127.0.0.1"
    finally:
        srv.shutdown()
        srv.server_close()


def test_running_job_serves_health_and_readiness(unique_name, cassandra_session, kafka_brokers):
    port = closed_port()
    env = job_env(
        unique_name,
        PUI_KAFKA_BROKERS=kafka_brokers,
        PUI_STOP_AT_END="false",
        PUI_METRICS_PORT=str(port),
        PUI_METRICS_ADDRESS="127.0.0.1",
    )
    settings = bootstrap(env, 1)
    job = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflow:flow"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if get(port, "/healthz")[0] == 200 and "live" in get(port, "/healthz")[1]:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        health = get(port, "/healthz")
        ready = get(port, "/readyz")
        assert health[0] == 200 and "nothing to consume" in health[1], health
        assert ready[0] == 200, ready
        assert get(port, "/anything")[0] == 404
    finally:
        job.send_signal(signal.SIGTERM)
        job.communicate(timeout=60)
        cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}")
        delete_topics(kafka_brokers, settings.input_topic, settings.failed_topic)
    assert job.returncode == 0
