"""The configuration of every Kafka client the project makes, in one place.

- ``PUI_KAFKA_CONFIG_*`` settings: the consumers get all of them; producers and the admin client
  only the connection ones (security protocol, SASL, TLS, client identity, sockets), which are
  what every client shares with the consumers.
- No client of the streaming job may create a topic (a misspelled ``PUI_INPUT_TOPIC`` must fail,
  not appear empty): ``allow.auto.create.topics`` is off everywhere. Only
  ``python -m dataflow.bootstrap`` creates topics, explicitly, through the admin API.
- librdkafka's own log lines go through Python logging (logger ``dataflow.kafka.client``), and a
  line that repeats is written at most once per :data:`LOG_EVERY` seconds per client and kind,
  with the number of lines held back, so an unreachable broker cannot flood the log.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass

from dataflow.config import KAFKA_CONFIG_PREFIX, ConfigError, Settings

CLIENT_LOG = logging.getLogger("dataflow.kafka.client")
LOG_EVERY = 30.0

# librdkafka keys that say how to reach and authenticate to the cluster.
CONNECTION_PREFIXES = (
    "security.",
    "sasl.",
    "ssl.",
    "ssl_",
    "enable.ssl.",
    "client.",
    "socket.",
    "broker.address.",
    "https.",
)


class RateLimitedLog:
    """What librdkafka's ``logger`` setting calls: ``log(level, fmt, *args)``.

    confluent-kafka passes (facility, client name, text); lines of the same client, facility
    and level within ``every`` seconds after the first are counted, not written."""

    def __init__(
        self,
        logger: logging.Logger = CLIENT_LOG,
        every: float = LOG_EVERY,
        level: int | None = None,
    ):
        self._logger = logger
        self._every = every
        # When set, every line is written at this level (a probe whose errors are summarised).
        self._level = level
        self._lock = threading.Lock()
        # key -> (time the last line was written, lines held back since)
        self._seen: dict[tuple, tuple[float, int]] = {}

    def log(self, level: int, fmt: str, *args) -> None:
        level = self._level or level
        if not self._logger.isEnabledFor(level):
            return
        key = (level, *args[:2])
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(key, (None, 0))
            if last is not None and now - last < self._every:
                self._seen[key] = (last, held + 1)
                return
            self._seen[key] = (now, 0)
        if held:
            fmt += f" ({held} similar line(s) in the last {int(now - last)} s not shown)"
        self._logger.log(level, fmt, *args)


_client_log = RateLimitedLog()


def _extra(settings: Settings, *, connection_only: bool) -> dict[str, str]:
    if not connection_only:
        return dict(settings.kafka_extra)
    return {k: v for k, v in settings.kafka_extra.items() if k.startswith(CONNECTION_PREFIXES)}


def _config(settings: Settings, own: dict, *, connection_only: bool) -> dict:
    """``own`` defaults, then the PUI_KAFKA_CONFIG_* ones, then what no setting may change."""
    return {
        "bootstrap.servers": settings.kafka_brokers,
        "logger": _client_log,
        **own,
        **_extra(settings, connection_only=connection_only),
        "allow.auto.create.topics": False,
    }


def source_consumer(settings: Settings, *, eof: bool) -> dict:
    """The consumer of one input partition (assigned, never subscribed)."""
    own = {
        "group.id": settings.group_id,
        # Offsets are committed by the sink once Cassandra acknowledged the rows.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": eof,
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 16384,
        "client.id": f"program-user-info-{settings.env}",
    }
    return _config(settings, own, connection_only=False)


def offset_committer(settings: Settings) -> dict:
    """The consumer that only commits the sink's progress to the job's group."""
    own = {
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "client.id": f"program-user-info-committer-{settings.env}",
    }
    return _config(settings, own, connection_only=False)


def failed_producer(settings: Settings, max_message_bytes: int) -> dict:
    """The producer of rejected messages (idempotent: a retry never duplicates a rejection)."""
    own = {
        "client.id": f"program-user-info-failed-{settings.env}",
        "enable.idempotence": True,
        "linger.ms": 20,
        # Large rejected messages (up to the size limit) must still be publishable.
        "message.max.bytes": max_message_bytes,
    }
    return _config(settings, own, connection_only=True)


def cli_producer(settings: Settings) -> dict:
    """``python -m dataflow.produce``: a message not acknowledged within PUI_PRODUCE_TIMEOUT gets
    a failed delivery report instead of waiting for librdkafka's five-minute default."""
    own = {
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "message.max.bytes": 10 * 1024 * 1024,
        "message.timeout.ms": int(settings.produce_timeout * 1000),
    }
    return _config(settings, own, connection_only=True)


def admin(settings: Settings, **callbacks) -> dict:
    """The admin client (topic metadata, topic creation by the bootstrap); ``callbacks`` are
    librdkafka callbacks such as ``error_cb``."""
    return _config(settings, callbacks, connection_only=True)


# --- validation ----------------------------------------------------------------------------------

_PROPERTY = re.compile(r'configuration property:? "([^"]+)"')


def setting_name(key: str) -> str:
    """The environment variable that sets librdkafka key ``key``."""
    return KAFKA_CONFIG_PREFIX + key.upper().replace(".", "_")


def validate(settings: Settings) -> None:
    """Create (and close at once) each kind of client the job makes, so that librdkafka checks
    every ``PUI_KAFKA_CONFIG_*`` name and value now; raise :class:`ConfigError` naming the
    setting. Nothing connects: librdkafka connects on first use."""
    from confluent_kafka import Consumer, KafkaException, Producer

    # These clients live a moment; whatever they log is of no use beyond debugging.
    quiet = {
        "logger": RateLimitedLog(logging.getLogger("dataflow.kafka.validate"), level=logging.DEBUG)
    }
    checks = (
        (Consumer, source_consumer(settings, eof=False)),
        (Producer, failed_producer(settings, 1_000_000)),
    )
    for kind, conf in checks:
        try:
            client = kind({**conf, **quiet})
        except KafkaException as exc:
            text = exc.args[0].str()
            match = _PROPERTY.search(text)
            key = match.group(1) if match else None
            if key in settings.kafka_extra:
                raise ConfigError(f"{setting_name(key)} ({key}): {text}") from None
            raise ConfigError(f"PUI_KAFKA_CONFIG_* settings are not valid: {text}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"PUI_KAFKA_CONFIG_* settings are not valid: {exc}") from None
        if isinstance(client, Consumer):
            client.close()
        else:
            client.flush(0)


# --- start-up diagnosis ------------------------------------------------------------------------


@dataclass(frozen=True)
class Diagnosis:
    cause: str
    # Waiting cannot fix it (a configuration mismatch, wrong credentials).
    final: bool


def diagnose(errors: list[tuple[str, str]], settings: Settings) -> Diagnosis:
    """The likely cause of a broker that did not answer, from the client's error callbacks
    (``(name, text)`` pairs, newest last). The most telling error wins."""
    protocol = settings.kafka_extra.get("security.protocol", "plaintext").upper()
    texts = [(name, text) for name, text in errors if name != "_ALL_BROKERS_DOWN"]
    for name, text in reversed(texts):
        low = text.lower()
        if "certificate verify failed" in low or ("certificate" in low and "ssl" in low):
            return Diagnosis(
                "TLS certificate not accepted (check PUI_KAFKA_CONFIG_SSL_CA_LOCATION and the "
                f"broker's certificate): {_short(text)}",
                True,
            )
        if "ssl" in low and ("handshake" in low or "plaintext" in low):
            return Diagnosis(
                f"TLS/SASL mismatch: the client uses security.protocol={protocol} "
                "(PUI_KAFKA_CONFIG_SECURITY_PROTOCOL) but the listener does not speak TLS: "
                f"{_short(text)}",
                True,
            )
        if "incorrect security.protocol" in low or "apiversion" in low:
            return Diagnosis(
                f"TLS/SASL mismatch: the client uses security.protocol={protocol} "
                "(PUI_KAFKA_CONFIG_SECURITY_PROTOCOL) and the listener expects another one: "
                f"{_short(text)}",
                True,
            )
        if name == "_AUTHENTICATION":
            if "mechanism" in low and ("handshake" in low or "supported mechanisms" in low):
                return Diagnosis(
                    "TLS/SASL mismatch: the listener does not accept SASL mechanism "
                    f"{settings.kafka_extra.get('sasl.mechanism', '(default)')} "
                    "(PUI_KAFKA_CONFIG_SECURITY_PROTOCOL, PUI_KAFKA_CONFIG_SASL_MECHANISM): "
                    f"{_short(text)}",
                    True,
                )
            return Diagnosis(
                "authentication failed (check PUI_KAFKA_CONFIG_SASL_USERNAME and "
                f"PUI_KAFKA_CONFIG_SASL_PASSWORD): {_short(text)}",
                True,
            )
    for name, text in reversed(texts):
        if name == "_RESOLVE":
            return Diagnosis(f"broker host name not found: {_short(text)}", False)
    for _name, text in reversed(texts):
        return Diagnosis(f"unreachable: {_short(text)}", False)
    return Diagnosis("unreachable: no broker answered", False)


def _short(text: str) -> str:
    # Drop librdkafka's "(after 3ms in state CONNECT)" tail, which differs on every retry, and
    # its "host:port/bootstrap: " prefix: the message names the brokers already.
    text = re.sub(
        r"\s*\(after \d+ms in state \w+(, \d+ identical error\(s\) suppressed)?\)", "", text
    )
    return re.sub(r"^(\w+://)?\S+/(bootstrap|\d+): ", "", text)[:300]
