"""Shared pieces of the streaming integration tests: a per-test job environment, producing with
explicit partitions and timestamps, running the real job command, reading the table back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer

from dataflow import config, schema
from dataflow.bootstrap import bootstrap_cassandra
from dataflow.kafka_admin import ensure_topics
from dataflow.show import topic_sizes

ROOT = Path(__file__).resolve().parents[1]


def job_env(name: str, **extra: str) -> dict[str, str]:
    """Environment for one isolated job: its own topics, group and keyspace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUI_")}
    env.update(
        {
            "PUI_ENV": name,
            "PUI_CASSANDRA_KEYSPACE": f"ks_{name}",
            "PUI_CASSANDRA_CONSISTENCY": "ONE",
            "PUI_STOP_AT_END": "true",
            "PUI_METRICS_PORT": "0",
            "PUI_LOG_INTERVAL": "0",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def bootstrap(env: dict[str, str], partitions: int) -> config.Settings:
    settings = config.load(env)
    bootstrap_cassandra(settings)
    ensure_topics(settings, partitions)
    return settings


def produce(settings: config.Settings, records) -> None:
    """``records``: iterable of (partition, value bytes or None, timestamp ms)."""
    prod = Producer(
        {
            "bootstrap.servers": settings.kafka_brokers,
            "linger.ms": 5,
            "message.max.bytes": 5_000_000,
        }
    )
    errors = []
    for partition, value, ts in records:
        prod.produce(
            settings.input_topic,
            value=value,
            partition=partition,
            on_delivery=lambda err, _m: errors.append(err) if err else None,
            **({"timestamp": ts} if ts is not None else {}),
        )
        prod.poll(0)
    assert prod.flush(60) == 0
    assert not errors, errors


def run_job(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python -m bytewax.run dataflow:flow`` until the topic is drained."""
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflow:flow", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def final_counters(stderr: str) -> dict[str, int]:
    """The counters of the job's last ``final`` log line."""
    lines = [line for line in stderr.splitlines() if "final counters" in line]
    assert lines, stderr[-2000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


def table_rows(session, settings: config.Settings) -> dict[tuple[str, str], dict]:
    """Every row with the write time of each plain column that holds a value."""
    table = f"{settings.cassandra_keyspace}.{settings.cassandra_table}"
    # WRITETIME applies to the columns that are neither key nor collection.
    plain = [c.name for c in schema.TABLE if not c.key and not c.cql_type.startswith("map")]
    cols = ", ".join([*schema.COLUMNS, *(f"WRITETIME({c}) AS wt_{c}" for c in plain)])
    out = {}
    for row in session.execute(f"SELECT {cols} FROM {table}", timeout=60):
        d = row._asdict()
        out[(d["program_id"], d["user_id"])] = d
    return out


def committed_lag(settings: config.Settings) -> int:
    return topic_sizes(settings, settings.input_topic)[1]


def failed_messages(settings: config.Settings, expected: int, timeout: float = 60) -> list:
    """Read the failed topic from the start until ``expected`` messages arrived."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_brokers,
            "group.id": f"reader-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.failed_topic])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(msg)
        # Anything beyond the expected count would be a duplicate or a stray message.
        extra = consumer.poll(2.0)
        if extra is not None and extra.error() is None:
            out.append(extra)
    finally:
        consumer.close()
    return out
