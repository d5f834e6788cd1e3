"""Counters of the streaming job (spec §6): Prometheus endpoint plus a periodic log line."""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("dataflow.metrics")

MESSAGES = Counter("pui_messages_consumed", "Kafka messages consumed")
UPSERTS = Counter("pui_rows_upserted", "Rows upserted into Cassandra")
DELETES = Counter("pui_rows_deleted", "Rows deleted from Cassandra")
REJECTIONS = Counter("pui_rejections", "Messages rejected, by reason", ["reason"])
INVALID_DATES = Counter("pui_invalid_dates", "Upserts with an unusable createdAt or updatedAt")
FAILED_PUBLISHED = Counter("pui_failed_published", "Messages published to the failed topic")
CASSANDRA_RETRIES = Counter(
    "pui_cassandra_retries", "Cassandra writes retried after a transient error"
)
CASSANDRA_ERRORS = Counter("pui_cassandra_errors", "Cassandra write errors, by kind", ["kind"])
KAFKA_ERRORS = Counter("pui_kafka_errors", "Kafka client errors, by code", ["code"])
BATCH_SIZE = Histogram(
    "pui_batch_size",
    "Messages per consumed batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
WRITE_SECONDS = Histogram(
    "pui_cassandra_write_seconds",
    "Wall time to write one batch to Cassandra (acknowledged)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENT_AGE = Histogram(
    "pui_event_age_seconds",
    "From an event's Kafka timestamp (produce time) to its write acknowledged by Cassandra",
    buckets=(0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
LAG = Gauge("pui_consumer_lag", "Messages behind the partition high watermark", ["partition"])

_started = threading.Lock()
_server_port: int | None = None


def _total(counter: Counter) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


def snapshot() -> dict[str, float]:
    """Current counter totals, for log lines and tests."""
    out = {
        "consumed": _total(MESSAGES),
        "upserted": _total(UPSERTS),
        "deleted": _total(DELETES),
        "rejected": _total(REJECTIONS),
        "invalid_date": _total(INVALID_DATES),
        "failed_published": _total(FAILED_PUBLISHED),
        "cassandra_retries": _total(CASSANDRA_RETRIES),
        "cassandra_errors": _total(CASSANDRA_ERRORS),
        "lag": sum(s.value for m in LAG.collect() for s in m.samples),
    }
    return out


def rejections_by_reason() -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for m in REJECTIONS.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }


def log_line() -> str:
    s = snapshot()
    reasons = ", ".join(f"{k}={int(v)}" for k, v in sorted(rejections_by_reason().items()))
    return (
        f"consumed={int(s['consumed'])} upserted={int(s['upserted'])} "
        f"deleted={int(s['deleted'])} rejected={int(s['rejected'])} "
        f"invalid_date={int(s['invalid_date'])} failed_published={int(s['failed_published'])} "
        f"cassandra_retries={int(s['cassandra_retries'])} "
        f"cassandra_errors={int(s['cassandra_errors'])} lag={int(s['lag'])}"
        + (f" reasons: {reasons}" if reasons else "")
    )


def start(port: int, interval: float) -> None:
    """Serve /metrics on ``port`` (0 disables) and log totals every ``interval`` seconds.

    Safe to call more than once per process (every worker builds the flow pieces)."""
    global _server_port
    with _started:
        if _server_port is not None:
            return
        _server_port = port
        if port:
            try:
                start_http_server(port)
                log.info("metrics on http://0.0.0.0:%d/metrics", port)
            except OSError as exc:
                # Several local processes share one host: the job must still run.
                log.warning("metrics endpoint not started on port %d: %s", port, exc.strerror)
        if interval > 0:
            threading.Thread(
                target=_log_loop, args=(interval,), daemon=True, name="pui-metrics-log"
            ).start()


def _log_loop(interval: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval):
        log.info("progress %s", log_line())
