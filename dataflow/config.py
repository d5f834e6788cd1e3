"""Settings of the streaming job, from environment variables and an optional Sunbird HOCON file.

:class:`Settings` is the table of settings: each field declares its variable, Sunbird HOCON key,
default, parser and help once (:mod:`dataflow.settings_table`), and loading, checking,
``python -m dataflow.config`` (secrets masked, ``--help``) and the README's table all come from
it. Environment variables win over the ``PUI_CONFIG`` file; every bad value fails at start with
a message that names the setting.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from dataflow import settings_table as st
from dataflow.settings_table import ConfigError, setting, shown

__all__ = ["ConfigError", "Settings", "load", "main"]

# Any librdkafka setting: PUI_KAFKA_CONFIG_SASL_MECHANISM=PLAIN -> sasl.mechanism=PLAIN.
KAFKA_CONFIG_PREFIX = "PUI_KAFKA_CONFIG_"

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
ENGINES = ("auto", "rust", "python")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# --- parsers of this job's settings --------------------------------------------------------------

_env_name = st.matching(r"[A-Za-z0-9_-]{1,64}", "a short name of letters, digits, - or _")
# "." and ".." are the two names of legal characters that Kafka refuses.
_topic = st.matching(r"(?!\.\.?\Z)[A-Za-z0-9._-]{1,249}", "a valid Kafka topic name")
_identifier = st.matching(r"[A-Za-z][A-Za-z0-9_]{0,47}", "a plain CQL identifier")
# Kafka sets no bound on a group id; it is logged and sent with every commit.
_group_id = st.printable(255, "a consumer group id")
# Logged, and sent to Cassandra as they are.
_username = st.maybe(st.printable(256, "a Cassandra user name"))
_datacenter = st.maybe(st.printable(256, "a datacenter name"))

# librdkafka's names of the security protocols, which it also takes as a broker's prefix.
KAFKA_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")


def _brokers(name: str, raw: str) -> str:
    """librdkafka's bootstrap.servers: ``[protocol://]host[:port]``, comma separated. A missing
    port is Kafka's 9092, as librdkafka reads it (lists that worked before must keep working);
    a given port is checked (librdkafka would wrap 99999 to 34463); spaces around the commas
    are dropped, as librdkafka does."""
    entries = st.address_list(name, raw, "broker")
    for entry in entries:
        address = entry
        if "://" in entry:
            protocol, address = entry.split("://", 1)
            if protocol.lower() not in KAFKA_PROTOCOLS:
                raise ConfigError(
                    f"{name}: broker {shown(entry)} has the prefix {shown(protocol)}, not one "
                    f"of {', '.join(p.upper() + '://' for p in KAFKA_PROTOCOLS)}"
                )
        host, port = st.split_port(address)
        try:
            if ":" in host and not host.startswith("["):
                raise st.AddressError("is an IPv6 address without brackets: write it as [::1]:9092")
            st.check_host(host, bare_ipv6=False)
            if port is not None:
                st.check_port(port)
        except st.AddressError as exc:
            raise ConfigError(f"{name}: broker {shown(entry)} {exc}") from None
    return ",".join(entries)


def _broker_protocols(brokers: str) -> set[str]:
    return {e.split("://", 1)[0].lower() for e in brokers.split(",") if "://" in e}


def _hosts(name: str, raw: str) -> tuple[str, ...]:
    """Contact points: names or addresses without a port (both drivers add PUI_CASSANDRA_PORT
    to each); an IPv6 address with or without brackets, kept without (what the drivers take)."""
    hosts = []
    for entry in st.address_list(name, raw, "host"):
        host, port = st.split_port(entry)
        try:
            if port is not None:
                raise st.AddressError("has a port: give it in PUI_CASSANDRA_PORT, for every host")
            host = st.check_host(host, bare_ipv6=True)
        except st.AddressError as exc:
            raise ConfigError(f"{name}: host {shown(entry)} {exc}") from None
        hosts.append(host[1:-1] if host.startswith("[") else host)
    return tuple(hosts)


def _start_offset(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in START_OFFSETS:
        raise ConfigError(f"{name} must be one of {', '.join(START_OFFSETS)}, not {shown(raw)}")
    return value


_DURATION_UNITS_US = {"d": 86_400_000_000, "h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000}
_DURATION = re.compile(r"(\d{1,12})([dhms])", re.ASCII)
# Ten years: far beyond any consumer lag, and a bound that keeps a typo from pushing every
# stamp into the next millennium.
MAX_WRITE_TIMESTAMP_OFFSET_US = 3650 * _DURATION_UNITS_US["d"]


def _offset_us(name: str, raw: str) -> int:
    """A duration such as ``2h``, ``90m``, ``1d12h``, ``30s``, or an integer of microseconds."""
    text = str(raw).strip().lower()
    if text.startswith("-"):
        raise ConfigError(f"{name} must not be negative, not {shown(raw)}")
    if re.fullmatch(r"\+?\d{1,19}", text, re.ASCII):
        value = int(text)
    elif text and _DURATION.sub("", text) == "":
        value = sum(int(n) * _DURATION_UNITS_US[u] for n, u in _DURATION.findall(text))
    else:
        raise ConfigError(
            f"{name} must be a duration such as 2h, 90m, 30s or 1d, or an integer of "
            f"microseconds, not {shown(raw)}"
        )
    if value > MAX_WRITE_TIMESTAMP_OFFSET_US:
        raise ConfigError(f"{name} must be at most 3650d, not {shown(raw)}")
    return value


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
        raise ConfigError(f"{name} must be a CQL replication map ({example}), not {shown(raw)}")
    items: dict[str, str] = {}
    for part in text[1:-1].split(","):
        match = _REPLICATION_ITEM.fullmatch(part)
        if match is None:
            raise ConfigError(
                f"{name} must be a CQL replication map ({example}): "
                f"cannot read {shown(part.strip())}"
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
                f"{name}: {key!r} must be a replica count from 1 to 100, not {shown(value)}"
            )
    return text


def readable_file(name: str, raw: str) -> str | None:
    if not raw:
        return None
    if not os.path.isfile(raw) or not os.access(raw, os.R_OK):
        raise ConfigError(f"{name} points to {shown(raw)}, which is not a readable file")
    return raw


def _ip_address(name: str, raw: str) -> str:
    try:
        return str(ipaddress.ip_address(raw.strip()))
    except ValueError:
        raise ConfigError(
            f"{name} must be an IP address to listen on (0.0.0.0 for all, 127.0.0.1 for this "
            f"host only), not {shown(raw)}"
        ) from None


def _is_secret(key: str) -> bool:
    return any(w in key.lower() for w in ("password", "secret", "token", "key"))


def _mask_kafka(extra: Mapping[str, str]) -> dict[str, str]:
    return {k: ("***" if _is_secret(k) else v) for k, v in extra.items()}


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The streaming job's settings, in the order the README lists them."""

    env: str = setting(
        "PUI_ENV", "local", _env_name, "environment name; derives the topic and group names below"
    )
    kafka_brokers: str = setting(
        "PUI_KAFKA_BROKERS",
        "127.0.0.1:9092",
        _brokers,
        "bootstrap servers: `host:port`, comma separated (a host name, an IPv4 address or an "
        "IPv6 one in brackets; no port means 9092; a `SASL_SSL://`-style prefix must match "
        "the security protocol)",
        hocon="kafka.broker-servers",
    )
    input_topic: str = setting(
        "PUI_INPUT_TOPIC",
        "{env}.programuser.info",
        _topic,
        "input topic",
        hocon="kafka.input.topic",
        derived=True,
    )
    failed_topic: str = setting(
        "PUI_FAILED_TOPIC",
        "{env}.programuser.info.failed",
        _topic,
        "rejected messages, unchanged, with `error.reason`, `error.detail`, `source.topic`, "
        "`source.partition`, `source.offset`, `source.timestamp` headers",
        hocon="kafka.output.failed.topic",
        derived=True,
    )
    group_id: str = setting(
        "PUI_GROUP_ID",
        "{env}-programuser-group",
        _group_id,
        "consumer group that progress is committed to (at most 255 visible ASCII characters)",
        hocon="kafka.groupId",
        derived=True,
    )
    kafka_extra: Mapping[str, str] = st.documented(
        KAFKA_CONFIG_PREFIX + "*",
        "any librdkafka setting, e.g. `PUI_KAFKA_CONFIG_SECURITY_PROTOCOL=SASL_SSL`, "
        "`PUI_KAFKA_CONFIG_SASL_MECHANISM=PLAIN`, `PUI_KAFKA_CONFIG_SASL_USERNAME`, "
        "`PUI_KAFKA_CONFIG_SASL_PASSWORD`, `PUI_KAFKA_CONFIG_SSL_CA_LOCATION`; librdkafka checks "
        "names and values at start. The consumers get all of them, the producers and admin "
        "client the connection ones (`security.*`, `sasl.*`, `ssl.*`, `client.*`, `socket.*`); "
        "no client of the job creates topics, whatever is set. Values of keys naming a "
        "password, secret, token or key are never printed",
        mask=_mask_kafka,
    )
    start_offset: str = setting(
        "PUI_START_OFFSET",
        "committed",
        _start_offset,
        "without recovery state: `committed` (the group's offsets, else earliest), `earliest` "
        "or `latest`",
    )
    stop_at_end: bool = setting(
        "PUI_STOP_AT_END",
        "false",
        st.boolean,
        "stop when every partition is drained (runs, tests, benchmarks)",
    )
    batch_size: int = setting(
        "PUI_BATCH_SIZE",
        "1000",
        st.integer(1, 100_000),
        "messages per consume call and per flattener call (1 to 100000)",
    )
    cassandra_hosts: tuple[str, ...] = setting(
        "PUI_CASSANDRA_HOSTS",
        "127.0.0.1",
        _hosts,
        "contact points, comma separated: host names or IP addresses, without the port",
        hocon="ml-cassandra.host",
    )
    cassandra_port: int = setting(
        "PUI_CASSANDRA_PORT",
        "9042",
        st.integer(1, 65535),
        "native protocol port of the contact points",
        hocon="ml-cassandra.port",
    )
    cassandra_keyspace: str = setting(
        "PUI_CASSANDRA_KEYSPACE",
        "sunbird_programs",
        _identifier,
        "keyspace of the table",
        hocon="ml-cassandra.keyspace",
    )
    cassandra_table: str = setting(
        "PUI_CASSANDRA_TABLE",
        "program_enrollment",
        _identifier,
        "table the flattened rows are written to",
        hocon="ml-cassandra.table",
    )
    cassandra_username: str | None = setting(
        "PUI_CASSANDRA_USERNAME",
        "",
        _username,
        "`PasswordAuthenticator` user, set together with `PUI_CASSANDRA_PASSWORD`",
    )
    cassandra_password: str | None = setting(
        "PUI_CASSANDRA_PASSWORD",
        "",
        st.optional,
        "that user's password",
        secret=True,
    )
    cassandra_local_dc: str | None = setting(
        "PUI_CASSANDRA_LOCAL_DC",
        "",
        _datacenter,
        "local datacenter for the load-balancing policy",
    )
    # Client TLS (Cassandra's client_encryption_options): the server's certificate is always
    # verified, against the CA file or else the system's CAs; the client certificate is optional.
    cassandra_tls: bool = setting(
        "PUI_CASSANDRA_TLS",
        "false",
        st.boolean,
        "client TLS to Cassandra; the server's certificate chain is always verified",
    )
    cassandra_tls_ca_file: str | None = setting(
        "PUI_CASSANDRA_TLS_CA_FILE",
        "",
        readable_file,
        "PEM CA certificates (default: the system's)",
    )
    cassandra_tls_cert_file: str | None = setting(
        "PUI_CASSANDRA_TLS_CERT_FILE",
        "",
        readable_file,
        "client certificate (PEM, X.509 v3), when the nodes require one; set together with "
        "`PUI_CASSANDRA_TLS_KEY_FILE`",
    )
    cassandra_tls_key_file: str | None = setting(
        "PUI_CASSANDRA_TLS_KEY_FILE",
        "",
        readable_file,
        "the client certificate's unencrypted key (PEM)",
    )
    cassandra_tls_check_hostname: bool = setting(
        "PUI_CASSANDRA_TLS_CHECK_HOSTNAME",
        "true",
        st.boolean,
        "check that each node's certificate names the address connected to (an IP for nodes "
        "learnt from the ring); `false` skips only that check",
    )
    cassandra_consistency: str = setting(
        "PUI_CASSANDRA_CONSISTENCY",
        "LOCAL_QUORUM",
        st.choice(CONSISTENCY_LEVELS),
        "write consistency",
    )
    cassandra_replication: str = setting(
        "PUI_CASSANDRA_REPLICATION",
        "{'class': 'SimpleStrategy', 'replication_factor': '1'}",
        _replication,
        "keyspace replication used by `dataflow.bootstrap`",
    )
    cassandra_concurrency: int = setting(
        "PUI_CASSANDRA_CONCURRENCY",
        "64",
        st.integer(1, 2048),
        "Cassandra requests in flight per process (1 to 2048)",
    )
    engine: str = setting(
        "PUI_ENGINE",
        "auto",
        st.choice(ENGINES, str.lower),
        "`rust` (the extension flattens and writes with the `scylla` driver; what `auto` picks "
        "when it is built) or `python` (our Python flattener and cassandra-driver: the "
        "reference, and what runs without a Rust toolchain). Both speak TLS to Cassandra "
        "(`PUI_CASSANDRA_TLS*`): OpenSSL in the python engine, rustls in the rust one",
        # It chose only the flattener when it had this name.
        aliases=("PUI_FLATTENER",),
    )
    max_message_bytes: int = setting(
        "PUI_MAX_MESSAGE_BYTES",
        "1048576",
        st.integer(1, 1 << 30),
        "larger messages are rejected as `too_large`",
    )
    metrics_port: int = setting(
        "PUI_METRICS_PORT",
        "9100",
        st.integer(0, 65535),
        "`/metrics` (Prometheus), `/healthz`, `/readyz` (0 disables)",
    )
    # 0.0.0.0, every interface, is what a pod needs.
    metrics_address: str = setting(
        "PUI_METRICS_ADDRESS",
        "0.0.0.0",
        _ip_address,
        "address that server listens on (`127.0.0.1`: this host only)",
    )
    health_window: float = setting(
        "PUI_HEALTH_WINDOW",
        "120",
        st.number(5.0),
        "seconds: `/healthz` fails when the sources neither consumed nor found nothing to "
        "consume for this long (at least 5)",
    )
    log_interval: float = setting(
        "PUI_LOG_INTERVAL",
        "30",
        st.number(0.0),
        "seconds between progress log lines (0 disables)",
    )
    log_level: str = setting(
        "PUI_LOG_LEVEL", "INFO", st.choice(LOG_LEVELS), "`DEBUG`, `INFO`, `WARNING` or `ERROR`"
    )
    write_timestamp_offset_us: int = setting(
        "PUI_WRITE_TIMESTAMP_OFFSET",
        "0",
        _offset_us,
        "added to every write timestamp (`2h`, `90m`, `30s`, `1d`, or microseconds; at most "
        "`3650d`); set once, and only when taking over a table Sunbird's job wrote: "
        "[docs/cutover.md](docs/cutover.md)",
    )
    produce_timeout: float = setting(
        "PUI_PRODUCE_TIMEOUT",
        "30",
        st.number(1.0),
        "seconds `python -m dataflow.produce` waits for Kafka to acknowledge each event; it "
        "exits 1 naming how many were not delivered",
    )
    startup_timeout: float = setting(
        "PUI_STARTUP_TIMEOUT",
        "30",
        st.number(1.0),
        "seconds the job waits at start for Kafka, the input topic and Cassandra before it "
        "stops with one line naming the servers and the likely cause",
    )
    stop_timeout: float = setting(
        "PUI_STOP_TIMEOUT",
        "20",
        st.number(1.0),
        "seconds a stop (SIGTERM, SIGINT) may take to write and commit what is in flight",
    )

    def __post_init__(self) -> None:
        st.fill_derived(self)

    def describe(self) -> str:
        """One line per setting, secrets masked: safe to log."""
        return st.describe(self)


# Sunbird's HOCON key -> the variable that wins over it (seed lern-program-user-info.txt).
HOCON_KEYS: dict[str, str] = st.hocon_keys(Settings)
CONFIG_FILE = st.Setting(
    "PUI_CONFIG",
    "",
    None,
    "a HOCON file with Sunbird's key names ("
    + ", ".join(f"`{k}`" for k in HOCON_KEYS)
    + "); variables win over it",
)
# What the deploy manifests are checked against: every variable load() reads by name.
ENV_VARS: tuple[str, ...] = (CONFIG_FILE.var, *st.variables(Settings))


def doc_rows() -> list[tuple[str, str, str]]:
    """The README's table: (variable, default, meaning) in Markdown."""
    return [CONFIG_FILE.row(), *(spec.row() for _, spec in st.specs(Settings))]


def _check_together(values: dict, blame: dict[str, str]) -> None:
    """The rules between settings; each is checked once every value has parsed."""
    if values["input_topic"] == values["failed_topic"]:
        raise ConfigError(
            f"{blame['failed_topic']} must differ from the input topic {values['input_topic']!r}"
        )
    if (values["cassandra_username"] is None) != (values["cassandra_password"] is None):
        raise ConfigError("PUI_CASSANDRA_USERNAME and PUI_CASSANDRA_PASSWORD must be set together")
    files = ("cassandra_tls_ca_file", "cassandra_tls_cert_file", "cassandra_tls_key_file")
    given = [blame[f] for f in files if values[f]]
    if given and not values["cassandra_tls"]:
        # A CA file without TLS would silently connect in clear text.
        raise ConfigError(f"{', '.join(given)} need PUI_CASSANDRA_TLS=true")
    if (values["cassandra_tls_cert_file"] is None) != (values["cassandra_tls_key_file"] is None):
        raise ConfigError(
            "PUI_CASSANDRA_TLS_CERT_FILE and PUI_CASSANDRA_TLS_KEY_FILE must be set together"
        )


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``)."""
    env = dict(os.environ if environ is None else environ)
    file_values = st.read_hocon(env["PUI_CONFIG"], HOCON_KEYS) if env.get("PUI_CONFIG") else {}
    values, blame = st.load_fields(Settings, env, file_values)
    _check_together(values, blame)
    values["kafka_extra"] = {
        key[len(KAFKA_CONFIG_PREFIX) :].lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith(KAFKA_CONFIG_PREFIX) and len(key) > len(KAFKA_CONFIG_PREFIX)
    }
    protocol = values["kafka_extra"].get("security.protocol", "plaintext").strip().lower()
    other = sorted(_broker_protocols(values["kafka_brokers"]) - {protocol})
    if other:
        # librdkafka drops such a broker with a log line, and the job then waits for none.
        raise ConfigError(
            f"{blame['kafka_brokers']}: the prefix {other[0].upper()}:// differs from the "
            f"security protocol {protocol.upper()} (PUI_KAFKA_CONFIG_SECURITY_PROTOCOL)"
        )
    return Settings(**values)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m dataflow.config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=st.wrap(
            "Print the streaming job's effective settings (secrets masked), after checking every "
            "one of them as the job does at start, including the "
            f"{KAFKA_CONFIG_PREFIX}* ones with librdkafka. Exit status 2 names a bad setting."
        ),
        epilog="settings (environment variables; an empty one counts as unset):\n"
        + st.help_lines(doc_rows()),
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
    # Run the imported module's main: under -m this file is __main__, a second copy whose
    # Settings is not the class the rest of the code imports.
    from dataflow.config import main as _main

    raise SystemExit(_main())
