"""SIGTERM (Kubernetes) and SIGINT (Ctrl-C) stop the job cleanly: what was consumed is written
and committed, the final counters are logged, the exit status is 0, and a restart continues
where the stop left off."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from dataflow.sample_events import generate
from tests.streaming_helpers import (
    ROOT,
    bootstrap,
    committed_lag,
    final_counters,
    job_env,
    produce,
    run_job,
)
from tests.test_streaming_startup import delete_topics

EVENTS = 10_000


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_requested_stop_is_clean_and_loses_nothing(
    sig, unique_name, cassandra_session, kafka_brokers
):
    env = job_env(unique_name, PUI_STOP_AT_END="false", PUI_KAFKA_BROKERS=kafka_brokers)
    settings = bootstrap(env, 2)
    table = f"{settings.cassandra_keyspace}.{settings.cassandra_table}"

    def rows() -> int:
        return cassandra_session.execute(f"SELECT COUNT(*) FROM {table}", timeout=60).one()[0]

    try:
        produce(settings, [(i % 2, v, None) for i, v in enumerate(generate(EVENTS, seed=5))])
        job = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflow:flow"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 90
        while rows() == 0 and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.2)
        job.send_signal(sig)
        asked = time.monotonic()
        _, err = job.communicate(timeout=60)
        took = time.monotonic() - asked
        assert job.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "signal received" not in err, err[-3000:]
        assert f"{sig.name}: stopping" in err
        assert took < 10, took
        counters = final_counters(err)
        assert counters["consumed"] > 0
        # Everything consumed before the stop was written and committed to the group.
        assert committed_lag(settings) == EVENTS - counters["consumed"]
        assert rows() == counters["upserted"] == counters["consumed"]
        # A restart continues from the committed offsets: nothing lost, nothing extra.
        again = run_job({**env, "PUI_STOP_AT_END": "true"}).stderr
        # (When the stop came after the last event there is nothing to read again.)
        if counters["consumed"] < EVENTS:
            assert final_counters(again)["consumed"] == EVENTS - counters["consumed"]
        assert rows() == EVENTS
    finally:
        cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}")
        delete_topics(kafka_brokers, settings.input_topic, settings.failed_topic)
