"""Settings of the streaming job, from environment variables and an optional Sunbird HOCON file.

Environment variables win over the ``PUI_CONFIG`` file; every bad value fails at start with a
message that names the setting. ``python -m dataflow.config`` prints the effective settings
(secrets masked).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

ENV_VARS: tuple[str, ...] = (
    "PUI_ENV",
    "PUI_CONFIG",
    "PUI_KAFKA_BROKERS",
    "PUI_INPUT_TOPIC",
    "PUI_FAILED_TOPIC",
    "PUI_GROUP_ID",
    "PUI_START_OFFSET",
    "PUI_STOP_AT_END",
    "PUI_BATCH_SIZE",
    "PUI_CASSANDRA_HOSTS",
    "PUI_CASSANDRA_PORT",
    "PUI_CASSANDRA_KEYSPACE",
    "PUI_CASSANDRA_TABLE",
    "PUI_CASSANDRA_USERNAME",
    "PUI_CASSANDRA_PASSWORD",
    "PUI_CASSANDRA_LOCAL_DC",
    "PUI_CASSANDRA_TLS",
    "PUI_CASSANDRA_TLS_CA_FILE",
    "PUI_CASSANDRA_TLS_CERT_FILE",
    "PUI_CASSANDRA_TLS_KEY_FILE",
    "PUI_CASSANDRA_TLS_CHECK_HOSTNAME",
    "PUI_CASSANDRA_CONSISTENCY",
    "PUI_CASSANDRA_REPLICATION",
    "PUI_CASSANDRA_CONCURRENCY",
    "PUI_ENGINE",
    "PUI_FLATTENER",
    "PUI_MAX_MESSAGE_BYTES",
    "PUI_METRICS_PORT",
    "PUI_LOG_INTERVAL",
    "PUI_LOG_LEVEL",
    "PUI_WRITE_TIMESTAMP_OFFSET",
    "PUI_PRODUCE_TIMEOUT",
    "PUI_STARTUP_TIMEOUT",
    "PUI_STOP_TIMEOUT",
    "PUI_METRICS_ADDRESS",
    "PUI_HEALTH_WINDOW",
)
# Any librdkafka setting: PUI_KAFKA_CONFIG_SASL_MECHANISM=PLAIN -> sasl.mechanism=PLAIN.
KAFKA_CONFIG_PREFIX = "PUI_KAFKA_CONFIG_"

# Sunbird's HOCON key -> our setting name (seed lern-program-user-info.txt).
HOCON_KEYS: dict[str, str] = {
    "kafka.input.topic": "input_topic",
    "kafka.groupId": "group_id",
    "kafka.broker-servers": "kafka_brokers",
    "kafka.output.failed.topic": "failed_topic",
    "ml-cassandra.keyspace": "cassandra_keyspace",
    "ml-cassandra.table": "cassandra_table",
    "ml-cassandra.host": "cassandra_hosts",
    "ml-cassandra.port": "cassandra_port",
}

CONSISTENCY_LEVELS = (
    "ANY",
    "ONE",
    "TWO",
    "THREE",
    "QUORUM",
    "ALL",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "LOCAL_ONE",
)
START_OFFSETS = ("committed", "earliest", "latest")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting."""


@dataclass(frozen=True)
class Settings:
    env: str = "local"
    kafka_brokers: str = "127.0.0.1:9092"
    input_topic: str = ""
    failed_topic: str = ""
    group_id: str = ""
    start_offset: str = "committed"
    stop_at_end: bool = False
    batch_size: int = 1000
    kafka_extra: Mapping[str, str] = field(default_factory=dict, repr=False)
    cassandra_hosts: tuple[str, ...] = ("127.0.0.1",)
    cassandra_port: int = 9042
    cassandra_keyspace: str = "sunbird_programs"
    cassandra_table: str = "program_enrollment"
    cassandra_username: str | None = None
    cassandra_password: str | None = field(default=None, repr=False)
    cassandra_local_dc: str | None = None
    # Client TLS (Cassandra's client_encryption_options): the server's certificate is always
    # verified, against the CA file or else the system's CAs; the client certificate is optional.
    cassandra_tls: bool = False
    cassandra_tls_ca_file: str | None = None
    cassandra_tls_cert_file: str | None = None
    cassandra_tls_key_file: str | None = None
    cassandra_tls_check_hostname: bool = True
    cassandra_consistency: str = "LOCAL_QUORUM"
    cassandra_replication: str = "{'class': 'SimpleStrategy', 'replication_factor': '1'}"
    cassandra_concurrency: int = 64
    # "rust": the extension flattens and writes; "python": our flattener and cassandra-driver.
    engine: str = "auto"
    max_message_bytes: int = 1024 * 1024
    metrics_port: int = 9100
    log_interval: float = 30.0
    log_level: str = "INFO"
    # Added to every write timestamp, for a table taken over from Sunbird's job (spec §3.4).
    write_timestamp_offset_us: int = 0
    # Seconds python -m dataflow.produce waits for every delivery report.
    produce_timeout: float = 30.0
    # Seconds the job waits at start for Kafka and Cassandra before it stops with the cause.
    startup_timeout: float = 30.0
    # Seconds a stop request (SIGTERM, SIGINT) may take to finish the batches in flight.
    stop_timeout: float = 20.0
    # Address the metrics/health server binds (0.0.0.0: every interface, as a pod needs).
    metrics_address: str = "0.0.0.0"
    # /healthz fails when the sources neither consumed nor found nothing for this long (s).
    health_window: float = 120.0

    def describe(self) -> str:
        """One line per setting, secrets masked: safe to log."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "cassandra_password":
                value = "***" if value else None
            elif f.name == "kafka_extra":
                value = {k: ("***" if _is_secret(k) else v) for k, v in value.items()}
            out.append(f"{f.name}={value}")
        return "\n".join(out)


def _is_secret(key: str) -> bool:
    return any(w in key.lower() for w in ("password", "secret", "token", "key"))


def _parse_bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _parse_int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _parse_float(name: str, raw: str, low: float) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if value < low:
        raise ConfigError(f"{name} must be at least {low}, not {value}")
    return value


_DURATION_UNITS_US = {"d": 86_400_000_000, "h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000}
_DURATION = re.compile(r"(\d{1,12})([dhms])", re.ASCII)
# Ten years: far beyond any consumer lag, and a bound that keeps a typo from pushing every
# stamp into the next millennium.
MAX_WRITE_TIMESTAMP_OFFSET_US = 3650 * _DURATION_UNITS_US["d"]


def _parse_offset_us(name: str, raw: str) -> int:
    """A duration such as ``2h``, ``90m``, ``1d12h``, ``30s``, or an integer of microseconds."""
    text = str(raw).strip().lower()
    if text.startswith("-"):
        raise ConfigError(f"{name} must not be negative, not {raw!r}")
    if re.fullmatch(r"\+?\d{1,19}", text, re.ASCII):
        value = int(text)
    elif text and _DURATION.sub("", text) == "":
        value = sum(int(n) * _DURATION_UNITS_US[u] for n, u in _DURATION.findall(text))
    else:
        raise ConfigError(
            f"{name} must be a duration such as 2h, 90m, 30s or 1d, or an integer of "
            f"microseconds, not {raw!r}"
        )
    if value > MAX_WRITE_TIMESTAMP_OFFSET_US:
        raise ConfigError(f"{name} must be at most 3650d, not {raw!r}")
    return value


def _hosts(name: str, raw: str) -> tuple[str, ...]:
    hosts = tuple(h.strip() for h in str(raw).split(",") if h.strip())
    if not hosts:
        raise ConfigError(f"{name} must list at least one host")
    return hosts


_REPLICATION_ITEM = re.compile(
    r"\s*'([A-Za-z0-9_.-]{1,64})'\s*:\s*('([A-Za-z0-9_.-]{1,128})'|\d{1,3})\s*"
)
_STRATEGIES = ("SimpleStrategy", "NetworkTopologyStrategy")


def _replication(name: str, raw: str) -> str:
    """A CQL replication map, e.g. ``{'class': 'NetworkTopologyStrategy', 'dc1': '3'}``. It is
    put into CQL text by the bootstrap, so only plain quoted names and counts pass."""
    text = raw.strip()
    example = "e.g. {'class': 'SimpleStrategy', 'replication_factor': '1'}"
    if not (text.startswith("{") and text.endswith("}")):
        raise ConfigError(f"{name} must be a CQL replication map ({example}), not {raw!r}")
    items: dict[str, str] = {}
    for part in text[1:-1].split(","):
        match = _REPLICATION_ITEM.fullmatch(part)
        if match is None:
            raise ConfigError(
                f"{name} must be a CQL replication map ({example}): cannot read {part.strip()!r}"
            )
        items[match.group(1)] = match.group(3) or match.group(2)
    strategy = items.pop("class", "").rsplit(".", 1)[-1]
    if strategy not in _STRATEGIES:
        raise ConfigError(f"{name}: 'class' must be one of {', '.join(_STRATEGIES)} ({example})")
    if strategy == "SimpleStrategy" and set(items) != {"replication_factor"}:
        raise ConfigError(f"{name}: SimpleStrategy takes exactly 'replication_factor' ({example})")
    if not items:
        raise ConfigError(f"{name}: NetworkTopologyStrategy needs a replica count per datacenter")
    for key, value in items.items():
        if not value.isdigit() or not 1 <= int(value) <= 100:
            raise ConfigError(
                f"{name}: {key!r} must be a replica count from 1 to 100, not {value!r}"
            )
    return text


def _readable_file(name: str, raw: str | None) -> str | None:
    if not raw:
        return None
    if not os.path.isfile(raw) or not os.access(raw, os.R_OK):
        raise ConfigError(f"{name} points to {raw!r}, which is not a readable file")
    return raw


def _cassandra_tls(env: Mapping[str, str]) -> dict:
    on = _parse_bool("PUI_CASSANDRA_TLS", env.get("PUI_CASSANDRA_TLS", "false"))
    files = {
        name: _readable_file(name, env.get(name))
        for name in (
            "PUI_CASSANDRA_TLS_CA_FILE",
            "PUI_CASSANDRA_TLS_CERT_FILE",
            "PUI_CASSANDRA_TLS_KEY_FILE",
        )
    }
    check = _parse_bool(
        "PUI_CASSANDRA_TLS_CHECK_HOSTNAME", env.get("PUI_CASSANDRA_TLS_CHECK_HOSTNAME") or "true"
    )
    given = [n for n, v in files.items() if v]
    if given and not on:
        # A CA file without TLS would silently connect in clear text.
        raise ConfigError(f"{', '.join(given)} need PUI_CASSANDRA_TLS=true")
    cert, key = files["PUI_CASSANDRA_TLS_CERT_FILE"], files["PUI_CASSANDRA_TLS_KEY_FILE"]
    if (cert is None) != (key is None):
        raise ConfigError(
            "PUI_CASSANDRA_TLS_CERT_FILE and PUI_CASSANDRA_TLS_KEY_FILE must be set together"
        )
    return {
        "cassandra_tls": on,
        "cassandra_tls_ca_file": files["PUI_CASSANDRA_TLS_CA_FILE"],
        "cassandra_tls_cert_file": cert,
        "cassandra_tls_key_file": key,
        "cassandra_tls_check_hostname": check,
    }


def _ip_address(name: str, raw: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(raw.strip()))
    except ValueError:
        raise ConfigError(
            f"{name} must be an IP address to listen on (0.0.0.0 for all, 127.0.0.1 for this "
            f"host only), not {raw!r}"
        ) from None


def _load_hocon(path: str) -> dict[str, str]:
    """Read the Sunbird key names we understand from a HOCON file; other keys are ignored."""
    try:
        from pyhocon import ConfigFactory
    except ImportError as exc:  # pragma: no cover - pyhocon is a pinned dependency
        raise ConfigError("PUI_CONFIG needs the pyhocon package") from exc
    if not os.path.isfile(path):
        raise ConfigError(f"PUI_CONFIG points to {path!r}, which is not a readable file")
    try:
        tree = ConfigFactory.parse_file(path)
    except Exception as exc:
        raise ConfigError(f"PUI_CONFIG file {path!r} is not valid HOCON: {exc}") from None
    found: dict[str, str] = {}
    for key, setting in HOCON_KEYS.items():
        value = tree.get(key, None)
        if value is not None:
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            found[setting] = str(value)
    return found


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``)."""
    env = dict(os.environ if environ is None else environ)
    file_values = _load_hocon(env["PUI_CONFIG"]) if env.get("PUI_CONFIG") else {}

    def get(var: str, setting: str, default: str) -> tuple[str, str]:
        """Value and the name to blame in errors: the variable, else the file key."""
        if env.get(var, "") != "":
            return env[var], var
        if setting in file_values:
            hocon_key = next(k for k, s in HOCON_KEYS.items() if s == setting)
            return file_values[setting], f"{hocon_key} (in PUI_CONFIG)"
        return default, var

    pui_env, _ = get("PUI_ENV", "env", "local")
    if not re.match(r"^[A-Za-z0-9_-]{1,64}$", pui_env):
        raise ConfigError(
            f"PUI_ENV must be a short name of letters, digits, - or _, not {pui_env!r}"
        )

    brokers, _ = get("PUI_KAFKA_BROKERS", "kafka_brokers", "127.0.0.1:9092")
    input_topic, input_name = get("PUI_INPUT_TOPIC", "input_topic", f"{pui_env}.programuser.info")
    failed_topic, failed_name = get(
        "PUI_FAILED_TOPIC", "failed_topic", f"{pui_env}.programuser.info.failed"
    )
    group_id, _ = get("PUI_GROUP_ID", "group_id", f"{pui_env}-programuser-group")
    for name, topic in ((input_name, input_topic), (failed_name, failed_topic)):
        if not _TOPIC.match(topic):
            raise ConfigError(f"{name} is not a valid Kafka topic name: {topic!r}")
    if input_topic == failed_topic:
        raise ConfigError(f"{failed_name} must differ from the input topic {input_topic!r}")
    if not brokers.strip():
        raise ConfigError("PUI_KAFKA_BROKERS must list at least one host:port")

    start_offset = env.get("PUI_START_OFFSET", "committed").strip().lower() or "committed"
    if start_offset not in START_OFFSETS:
        raise ConfigError(f"PUI_START_OFFSET must be one of {', '.join(START_OFFSETS)}")

    hosts_raw, hosts_name = get("PUI_CASSANDRA_HOSTS", "cassandra_hosts", "127.0.0.1")
    port_raw, port_name = get("PUI_CASSANDRA_PORT", "cassandra_port", "9042")
    keyspace, keyspace_name = get(
        "PUI_CASSANDRA_KEYSPACE", "cassandra_keyspace", "sunbird_programs"
    )
    table, table_name = get("PUI_CASSANDRA_TABLE", "cassandra_table", "program_enrollment")
    for name, ident in ((keyspace_name, keyspace), (table_name, table)):
        if not _IDENT.match(ident):
            raise ConfigError(f"{name} must be a plain CQL identifier, not {ident!r}")

    consistency = env.get("PUI_CASSANDRA_CONSISTENCY", "LOCAL_QUORUM").strip().upper()
    if consistency not in CONSISTENCY_LEVELS:
        raise ConfigError(
            f"PUI_CASSANDRA_CONSISTENCY must be one of {', '.join(CONSISTENCY_LEVELS)}"
        )
    username = env.get("PUI_CASSANDRA_USERNAME") or None
    password = env.get("PUI_CASSANDRA_PASSWORD") or None
    if (username is None) != (password is None):
        raise ConfigError("PUI_CASSANDRA_USERNAME and PUI_CASSANDRA_PASSWORD must be set together")

    # PUI_FLATTENER is the setting's old name (it chose only the flattener); it still works.
    engine_name = "PUI_ENGINE" if env.get("PUI_ENGINE") else "PUI_FLATTENER"
    engine = env.get(engine_name, "auto").strip().lower() or "auto"
    if engine not in ("auto", "rust", "python"):
        raise ConfigError(f"{engine_name} must be auto, rust or python, not {engine!r}")

    log_level = env.get("PUI_LOG_LEVEL", "INFO").strip().upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("PUI_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")

    kafka_extra = {
        key[len(KAFKA_CONFIG_PREFIX) :].lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith(KAFKA_CONFIG_PREFIX) and len(key) > len(KAFKA_CONFIG_PREFIX)
    }

    return Settings(
        env=pui_env,
        kafka_brokers=brokers.strip(),
        input_topic=input_topic,
        failed_topic=failed_topic,
        group_id=group_id,
        start_offset=start_offset,
        stop_at_end=_parse_bool("PUI_STOP_AT_END", env.get("PUI_STOP_AT_END", "false")),
        batch_size=_parse_int("PUI_BATCH_SIZE", env.get("PUI_BATCH_SIZE", "1000"), 1, 100_000),
        kafka_extra=kafka_extra,
        cassandra_hosts=_hosts(hosts_name, hosts_raw),
        cassandra_port=_parse_int(port_name, port_raw, 1, 65535),
        cassandra_keyspace=keyspace,
        cassandra_table=table,
        cassandra_username=username,
        cassandra_password=password,
        cassandra_local_dc=env.get("PUI_CASSANDRA_LOCAL_DC") or None,
        **_cassandra_tls(env),
        cassandra_consistency=consistency,
        cassandra_replication=_replication(
            "PUI_CASSANDRA_REPLICATION",
            env.get("PUI_CASSANDRA_REPLICATION") or Settings.cassandra_replication,
        ),
        cassandra_concurrency=_parse_int(
            "PUI_CASSANDRA_CONCURRENCY", env.get("PUI_CASSANDRA_CONCURRENCY", "64"), 1, 2048
        ),
        engine=engine,
        max_message_bytes=_parse_int(
            "PUI_MAX_MESSAGE_BYTES",
            env.get("PUI_MAX_MESSAGE_BYTES", str(1024 * 1024)),
            1,
            1 << 30,
        ),
        metrics_port=_parse_int("PUI_METRICS_PORT", env.get("PUI_METRICS_PORT", "9100"), 0, 65535),
        log_interval=_parse_float("PUI_LOG_INTERVAL", env.get("PUI_LOG_INTERVAL", "30"), 0.0),
        log_level=log_level,
        write_timestamp_offset_us=_parse_offset_us(
            "PUI_WRITE_TIMESTAMP_OFFSET", env.get("PUI_WRITE_TIMESTAMP_OFFSET") or "0"
        ),
        produce_timeout=_parse_float(
            "PUI_PRODUCE_TIMEOUT", env.get("PUI_PRODUCE_TIMEOUT", "30"), 1.0
        ),
        startup_timeout=_parse_float(
            "PUI_STARTUP_TIMEOUT", env.get("PUI_STARTUP_TIMEOUT", "30"), 1.0
        ),
        stop_timeout=_parse_float("PUI_STOP_TIMEOUT", env.get("PUI_STOP_TIMEOUT", "20"), 1.0),
        metrics_address=_ip_address(
            "PUI_METRICS_ADDRESS", env.get("PUI_METRICS_ADDRESS") or Settings.metrics_address
        ),
        health_window=_parse_float("PUI_HEALTH_WINDOW", env.get("PUI_HEALTH_WINDOW", "120"), 5.0),
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m dataflow.config",
        description="Print the streaming job's effective settings (secrets masked), after "
        "checking every one of them as the job does at start, including the "
        "PUI_KAFKA_CONFIG_* ones with librdkafka. Settings: " + ", ".join(ENV_VARS) + ", and "
        f"{KAFKA_CONFIG_PREFIX}<librdkafka key, dots as _>. Exit status 2 names a bad setting.",
    )
    parser.parse_args(argv)
    try:
        settings = load()
        from dataflow.kafka_config import validate

        validate(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(settings.describe())
    return 0


if __name__ == "__main__":
    # Run the imported module's main: under -m this file is __main__, and errors raised by
    # other modules are dataflow.config.ConfigError, not __main__.ConfigError.
    from dataflow.config import main as _main

    raise SystemExit(_main())
