"""Counters of the streaming job (spec §6): Prometheus endpoint plus a periodic log line."""

from __future__ import annotations

import bisect
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

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


def observe_many(histogram: Histogram, amounts: list[float]) -> None:
    """``histogram.observe(a)`` for every ``a``, in one pass. Event ages are observed once per
    event: the library's own ``observe`` (a lock and a bucket scan each) cost more than the
    rest of an event's Python work. Relies on prometheus-client's histogram internals
    (pinned; ``tests/test_metrics_bulk.py`` checks the result against ``observe``)."""
    if not amounts:
        return
    ordered = sorted(amounts)
    below = 0
    for bound, bucket in zip(histogram._upper_bounds, histogram._buckets, strict=True):
        upto = bisect.bisect_right(ordered, bound)
        if upto > below:
            bucket.inc(upto - below)
            below = upto
    histogram._sum.inc(sum(ordered))


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


class Liveness:
    """When this process's sources last consumed messages or last found none to consume.

    A worker that is alive polls its partitions all the time, whether or not there is
    anything to read; one blocked (a sink that cannot write, a stuck call) stops polling. So
    the process is live while its last poll is recent. Plain attribute writes: the hot path
    takes no lock, and a stale read by a probe is harmless."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last_progress: float | None = None
        self.last_idle: float | None = None

    def polled(self, consumed: int) -> None:
        if consumed:
            self.last_progress = time.monotonic()
        else:
            self.last_idle = time.monotonic()

    def check(self, window: float) -> tuple[bool, str]:
        now = time.monotonic()
        last = max(self.started, self.last_progress or 0.0, self.last_idle or 0.0)
        ago = now - last
        if ago <= window:
            if self.last_progress is None and self.last_idle is None:
                return True, f"starting ({now - self.started:.0f} s ago)"
            what = "consumed" if last == self.last_progress else "had nothing to consume"
            return True, f"live: {what} {ago:.1f} s ago"
        return False, (
            f"stalled: no progress and no poll for {ago:.0f} s (more than PUI_HEALTH_WINDOW "
            f"{window:g} s)"
        )


LIVENESS = Liveness()


def polled(consumed: int) -> None:
    """Called by the source after every poll of a partition."""
    LIVENESS.polled(consumed)


class Readiness:
    """Kafka answers for the input topic and a Cassandra contact point accepts connections.
    Results are kept for a few seconds so that frequent probes do not load the servers."""

    CACHE_SECONDS = 5.0
    TIMEOUT = 2.0

    def __init__(self, settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._admin = None
        self._checked = 0.0
        self._result: tuple[bool, str] = (False, "not checked")

    def check(self) -> tuple[bool, str]:
        with self._lock:
            if time.monotonic() - self._checked > self.CACHE_SECONDS:
                kafka_ok, kafka = self._kafka()
                cassandra_ok, cassandra = self._cassandra()
                self._result = (
                    kafka_ok and cassandra_ok,
                    f"kafka: {kafka}\ncassandra: {cassandra}",
                )
                self._checked = time.monotonic()
            return self._result

    def _kafka(self) -> tuple[bool, str]:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        from dataflow import kafka_config

        s = self._settings
        if self._admin is None:
            self._admin = AdminClient(kafka_config.admin(s))
        try:
            meta = self._admin.list_topics(topic=s.input_topic, timeout=self.TIMEOUT)
        except KafkaException as exc:
            return False, f"{s.kafka_brokers} not reachable ({exc.args[0].str()})"
        finally:
            # librdkafka queues the client's log lines until it is polled.
            self._admin.poll(0)
        topic = meta.topics.get(s.input_topic)
        if topic is None or topic.error is not None:
            return False, f"topic {s.input_topic} not available on {s.kafka_brokers}"
        return True, f"ok ({s.kafka_brokers}, {s.input_topic})"

    def _cassandra(self) -> tuple[bool, str]:
        s = self._settings
        failures = []
        for host in s.cassandra_hosts:
            try:
                socket.create_connection((host, s.cassandra_port), self.TIMEOUT).close()
                return True, f"ok ({host}:{s.cassandra_port})"
            except OSError as exc:
                failures.append(f"{host}:{s.cassandra_port} {exc.strerror or exc}")
        return False, "not reachable: " + "; ".join(failures)


class _Handler(BaseHTTPRequestHandler):
    readiness: Readiness | None = None
    window = 120.0

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, text = LIVENESS.check(self.window)
            self._send(200 if ok else 503, text.encode() + b"\n")
        elif path == "/readyz" and self.readiness is not None:
            ok, text = self.readiness.check()
            self._send(200 if ok else 503, text.encode() + b"\n")
        else:
            self._send(404, b"not found: /metrics, /healthz or /readyz\n")

    def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        # Probes every few seconds would fill the log; failures show in the probes' events.
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve(address: str, port: int, readiness: Readiness | None, window: float) -> _Server:
    """Start the HTTP server in a daemon thread; returns it (``server_port`` is the bound port)."""
    handler = type("Handler", (_Handler,), {"readiness": readiness, "window": window})
    server = (_Server6 if ":" in address else _Server)((address, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="pui-metrics-http").start()
    return server


def start(settings) -> None:
    """Serve /metrics, /healthz and /readyz on PUI_METRICS_ADDRESS:PUI_METRICS_PORT (port 0
    disables) and log totals every PUI_LOG_INTERVAL seconds.

    Safe to call more than once per process (every worker builds the flow pieces)."""
    global _server_port
    port, interval = settings.metrics_port, settings.log_interval
    with _started:
        if _server_port is not None:
            return
        _server_port = port
        if port:
            try:
                serve(settings.metrics_address, port, Readiness(settings), settings.health_window)
                log.info(
                    "metrics on http://%s:%d/metrics (also /healthz, /readyz)",
                    settings.metrics_address,
                    port,
                )
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
