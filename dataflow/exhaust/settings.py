"""Exhaust configuration from environment variables (Cassandra settings shared with the
streaming job: ``PUI_CASSANDRA_*``).

:class:`ExhaustSettings` and :class:`StorageSettings` (where the reports go, read by
:func:`dataflow.exhaust.storage.load`, which adds Sunbird's HOCON key names and the rules
between them) are the table of the exhaust's own settings, declared as for the streaming job
(:mod:`dataflow.settings_table`); ``--help`` and docs/exhaust.md's table are generated from it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dataflow import config
from dataflow import settings_table as st
from dataflow.config import ConfigError
from dataflow.exhaust import storage
from dataflow.exhaust.archive import ENCRYPTIONS, LEVELS, PROTECTED, seven_zip
from dataflow.schema import check_identifier
from dataflow.settings_table import setting, shown


def _whole(low: int, high: int) -> st.Parser:
    """Digits only (``_`` allowed as a separator), so that 1e6, 2.5 and non-ASCII digits fail."""

    def parse(name: str, raw: str) -> int:
        text = raw.strip().replace("_", "")
        if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
            raise ConfigError(
                f"{name} must be a whole number between {low:,} and {high:,}, not {shown(text)}"
            )
        return int(text)

    return parse


def _seconds(low: float, high: float) -> st.Parser:
    """Whole seconds, written as any number in range (600, 600.0)."""
    number = st.number(low, high)
    return lambda name, raw: int(number(name, raw))


def _mode(name: str, raw: str) -> int:
    text = raw.strip()
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    # Reports are data, never programs; a mode its owner cannot read would fail every download.
    if not 0 <= mode <= 0o777 or mode & 0o111 or not mode & 0o400:
        raise ConfigError(
            f"{name} must be an octal file mode without execute bits that lets the owner read, "
            f"such as 0600 or 0640, not {shown(text)}"
        )
    return mode


def _redis_url(name: str, raw: str) -> str:
    # Never echoed: the URL may carry the password. The newline a Secret's file ends with is
    # dropped, as redis-py would.
    text = raw.strip()
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{name} must be a redis:// URL (with the DB index, e.g. /12)")
    if st.has_control(text) or any(c.isspace() for c in text) or len(text) > 2048:
        raise ConfigError(
            f"{name} must be a URL of at most 2048 characters without spaces or control "
            "characters (not shown: it may hold a password)"
        )
    return text


_PASSWORDS = (
    # user:password@ in a URL
    (re.compile(r"(://[^/@:]*:)[^/@]*@"), r"\1***@"),
    # password=... in a key=value string or a URL's query
    (re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE), r"\1***"),
)


def without_password(text: str) -> str:
    """A connection string or URL with any password in it replaced by ``***``: safe to log."""
    for pattern, replacement in _PASSWORDS:
        text = pattern.sub(replacement, text)
    return text


def _postgres_dsn(name: str, raw: str) -> str:
    """A libpq connection string, URI or ``key=value`` form, as libpq itself parses it (no
    connection is made). Never echoed: it may hold the password."""
    from psycopg.conninfo import conninfo_to_dict

    text = raw.strip()
    problem = None
    if st.has_control(text) or len(text) > 4096:
        problem = "at most 4096 characters, without control characters"
    else:
        try:
            conninfo_to_dict(text)
        except Exception:
            problem = "what libpq reads"
    if problem:
        raise ConfigError(
            f"{name} must be a PostgreSQL connection string (postgresql://user@host:5432/db "
            f"or host=... dbname=...), {problem} (not shown: it may hold a password)"
        )
    return text


def _identifier(name: str, raw: str) -> str:
    try:
        return check_identifier(raw, name)
    except ValueError:
        raise ConfigError(
            f"{name} must be a plain CQL identifier (letter, then letters, digits or _), "
            f"not {shown(raw)}"
        ) from None


_path_text = st.path_text()


def _path(name: str, raw: str) -> Path:
    return Path(_path_text(name, raw))


# --- where the reports go ------------------------------------------------------------------------


def _kind(name: str, raw: str) -> str:
    kind = raw.strip().lower()
    kind = storage.KIND_ALIASES.get(kind, kind)
    if kind not in storage.KINDS:
        raise ConfigError(f"{name} must be one of {', '.join(storage.KINDS)}, not {shown(raw)}")
    return kind


def _container(name: str, raw: str) -> str:
    container = raw.strip()
    if not storage.NAME.match(container) or ".." in container:
        raise ConfigError(
            f"{name} must be a bucket/container name (3-63 lower-case letters, "
            f"digits, '-' or '.'), not {shown(container)}"
        )
    return container


def _prefix(name: str, raw: str) -> str:
    prefix = raw.strip().strip("/")
    if prefix and not all(
        storage.SEGMENT.match(s) and s not in (".", "..") for s in prefix.split("/")
    ):
        raise ConfigError(
            f"{name} must be a path of letters, digits and . _ = + @ , - separated by /, "
            f"not {shown(prefix)}"
        )
    return prefix


def _account(name: str, raw: str) -> str | None:
    """An account name, access key id or client e-mail: visible ASCII only. Never echoed, as
    it is kept with the secrets."""
    text = raw.strip()
    if text and (not text.isascii() or not text.isprintable() or " " in text or len(text) > 256):
        raise ConfigError(
            f"{name} must be at most 256 visible ASCII characters (not shown: it is kept secret)"
        )
    return text or None


def _secret(name: str, raw: str) -> str | None:
    # Any text: a GCS secret is a JSON document or a PEM key, newlines included.
    return raw.strip() or None


def _endpoint(name: str, raw: str) -> str | None:
    text = raw.strip()
    if not text:
        return None
    parts = urlsplit(text)
    if st.has_control(text) or parts.scheme not in ("http", "https") or not parts.hostname:
        # Not echoed: a mistyped endpoint may hold a credential.
        raise ConfigError(f"{name} must be an http(s) URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(
            f"{name} must not carry credentials, a query or a fragment: put the "
            "key and secret in PUI_STORAGE_KEY and PUI_STORAGE_SECRET"
        )
    return text.rstrip("/")


def _region(name: str, raw: str) -> str | None:
    region = raw.strip()
    if region and not re.fullmatch(r"[a-z0-9-]{2,32}", region):
        raise ConfigError(f"{name} must look like us-east-1, not {shown(region)}")
    return region or None


@dataclass(frozen=True)
class StorageSettings:
    """Where finished reports go: the local folder, or the deployment's cloud storage. A
    ``PUI_CONFIG`` HOCON file may give them under Sunbird's names (storage.HOCON_KEYS)."""

    kind: str = setting(
        "PUI_STORAGE_TYPE",
        "local",
        _kind,
        "`local`, `azure`, `s3` (AWS and S3-compatible) or `gcs` (`aws`, `gcloud` accepted)",
    )
    container: str = setting(
        "PUI_STORAGE_CONTAINER",
        "reports",
        _container,
        "the container (Azure) or bucket (S3, GCS); Sunbird's `storageContainer`",
    )
    prefix: str = setting(
        "PUI_STORAGE_PREFIX",
        "ml_reports",
        _prefix,
        "path prefix inside it; Sunbird's `ml.exhaust.store.prefix`",
    )
    key: str | None = setting(
        "PUI_STORAGE_KEY",
        "",
        _account,
        "Azure: the storage account name; S3: the access key id; GCS: the service account's "
        "client e-mail",
        # An S3 access key id: kept with the secrets, out of ConfigMaps.
        secret=True,
        from_file=True,
    )
    secret: str | None = setting(
        "PUI_STORAGE_SECRET",
        "",
        _secret,
        "Azure: the account key; S3: the secret access key; GCS: the service-account JSON, or "
        "its PEM private key (with the e-mail in `PUI_STORAGE_KEY`)",
        secret=True,
        from_file=True,
    )
    endpoint: str | None = setting(
        "PUI_STORAGE_ENDPOINT",
        "",
        _endpoint,
        "`https://...` of an S3-compatible store, an Azure endpoint (private link, sovereign "
        "cloud, Azurite) or a GCS base URL; `http://` is accepted and then allowed, for "
        "emulators",
        shown_default="the provider's",
    )
    region: str | None = setting(
        "PUI_STORAGE_REGION", "", _region, "S3 region", shown_default="`us-east-1`"
    )
    url_expiry: int = setting(
        "PUI_STORAGE_URL_EXPIRY",
        "3600",
        st.integer(60, 7 * 24 * 3600),
        "seconds a signed URL stays valid (60 to 604800)",
    )
    part_size: int = setting(
        "PUI_STORAGE_PART_SIZE",
        str(8 * 1024 * 1024),
        st.integer(storage.PART_MIN, 512 * 1024**2),
        "bytes per uploaded part (5 MiB to 512 MiB)",
    )

    def describe(self) -> str:
        """One line per setting, the key and secret masked: safe to log."""
        return st.describe(self, "storage.")


@dataclass(frozen=True)
class ExhaustSettings:
    """The exhaust's settings, in the order docs/exhaust.md lists them."""

    cassandra: config.Settings
    postgres_dsn: str = setting(
        "PUI_POSTGRES_DSN",
        "postgresql://postgres@127.0.0.1:5432/pui",
        _postgres_dsn,
        "where `job_request` is",
        mask=without_password,
    )
    redis_url: str = setting(
        "PUI_REDIS_URL",
        "redis://127.0.0.1:6379/12",
        _redis_url,
        "the user cache, with its DB index (Sunbird uses 12)",
        mask=without_password,
    )
    user_keyspace: str = setting(
        "PUI_USER_KEYSPACE", "sunbird", _identifier, "keyspace of `user_consent`"
    )
    # A Path is never changed in place: one shared default is safe.
    report_store: Path = setting(  # noqa: RUF009
        "PUI_REPORT_STORE",
        "var/reports",
        _path,
        "reports go to `<store>/program-user-exhaust/`",
    )
    security_level: str = setting(
        "PUI_DATA_SECURITY_LEVEL",
        PROTECTED,
        st.choice(LEVELS),
        "or `PLAIN_DATASET` (plain zip)",
    )
    zip_encryption: str = setting(
        "PUI_ZIP_ENCRYPTION",
        "aes256",
        st.choice(ENCRYPTIONS, str.lower),
        "or `zipcrypto` (legacy, weak; written with `7z`, which gets the password on its "
        "standard input; without `7z` on the `PATH`, as in the project's container image, the "
        "job refuses to start)",
    )
    salt: str = setting(
        "PUI_ENCRYPTION_SALT",
        "",
        st.text,
        "the deployment's `sunbird_encryption_key`; `run` refuses to start without it when "
        "the report layout shows email or phone",
        secret=True,
        shown_default="empty",
    )
    report_mode: int = setting(
        "PUI_REPORT_FILE_MODE",
        "0600",
        _mode,
        "octal mode of the report zips (no execute bits; the owner must be able to read)",
    )
    store_wait: float = setting(
        "PUI_STORE_WAIT",
        "60",
        st.number(0, 3600),
        "seconds a request waits for an unreachable Cassandra or Redis (0 to 3600)",
    )
    sort_rows: int = setting(
        "PUI_REPORT_SORT_ROWS",
        "200000",
        _whole(100, 100_000_000),
        "rows a report holds in memory (100 to 100,000,000); a larger report is sorted in runs "
        "of this many spilled to disk (see *Memory*)",
    )
    model_config: str | None = setting(
        "PUI_EXHAUST_MODEL_CONFIG",
        "",
        config.readable_file,
        "a JSON model config file in Sunbird's format: `label_mapping`, `order_of_csv_column`, "
        "`sort`, `quote_column`, `user_locations_columns`",
        shown_default="the seed's model config",
    )
    processing_timeout: int = setting(
        "PUI_PROCESSING_TIMEOUT",
        "600",
        _seconds(10, 86400),
        "seconds (10 to 86400); TCP keepalive of the worker's PostgreSQL session (see below)",
    )
    poll_interval: float = setting(
        "PUI_POLL_INTERVAL",
        "60",
        st.number(0.1, 86400),
        "seconds between polls in `run` mode",
    )
    storage: StorageSettings = field(default_factory=StorageSettings)


# What the deploy manifests are checked against: every variable load() reads by name.
ENV_VARS = (*st.variables(ExhaustSettings), *st.variables(StorageSettings))
SECRETS = (*st.secrets(ExhaustSettings), *st.secrets(StorageSettings))
# Read instead of their setting when it is unset (a mounted Secret's files).
FILE_VARS = st.file_variables(StorageSettings)
# The Cassandra settings are the streaming job's; the row stands for them in the docs.
_CASSANDRA_ROW = (
    "`PUI_CASSANDRA_*`",
    "as for the streaming job",
    "hosts, port, keyspace, table, credentials, DC, consistency",
)


def doc_rows() -> list[tuple[str, str, str]]:
    """docs/exhaust.md's table: (variable, default, meaning) in Markdown."""
    rows = [spec.row() for _, spec in st.specs(ExhaustSettings)]
    stores = [spec.row() for _, spec in st.specs(StorageSettings)]
    return [*rows[:2], _CASSANDRA_ROW, *rows[2:], *stores]


def help_text() -> str:
    """The settings part of ``python -m dataflow.exhaust --help``."""
    return "settings (environment variables; an empty one counts as unset):\n" + st.help_lines(
        doc_rows()
    )


def load(environ: Mapping[str, str] | None = None) -> ExhaustSettings:
    env = dict(os.environ if environ is None else environ)
    values, _ = st.load_fields(ExhaustSettings, env)
    zipcrypto = values["zip_encryption"] == "zipcrypto"
    if zipcrypto and values["security_level"] == PROTECTED and seven_zip() is None:
        raise ConfigError(
            "PUI_ZIP_ENCRYPTION=zipcrypto needs the 7z program (Debian package p7zip-full), "
            "which is not installed here (the project's container image has none): "
            "use aes256, or install 7z"
        )
    return ExhaustSettings(cassandra=config.load(env), storage=storage.load(env), **values)
