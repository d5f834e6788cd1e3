"""Exhaust configuration from environment variables (Cassandra settings shared with the
streaming job: ``PUI_CASSANDRA_*``; cloud storage: :mod:`dataflow.exhaust.storage`).

:class:`ExhaustSettings` is the table of the exhaust's own settings, declared as for the
streaming job (:mod:`dataflow.settings_table`); docs/exhaust.md's table is generated from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{name} must be a redis:// URL (with the DB index, e.g. /12)")
    return raw


def _identifier(name: str, raw: str) -> str:
    try:
        return check_identifier(raw, name)
    except ValueError:
        raise ConfigError(
            f"{name} must be a plain CQL identifier (letter, then letters, digits or _), "
            f"not {shown(raw)}"
        ) from None


def _path(name: str, raw: str) -> Path:
    return Path(raw)


@dataclass(frozen=True)
class ExhaustSettings:
    """The exhaust's settings, in the order docs/exhaust.md lists them."""

    cassandra: config.Settings
    postgres_dsn: str = setting(
        "PUI_POSTGRES_DSN",
        "postgresql://postgres@127.0.0.1:5432/pui",
        st.text,
        "where `job_request` is",
    )
    redis_url: str = setting(
        "PUI_REDIS_URL",
        "redis://127.0.0.1:6379/12",
        _redis_url,
        "the user cache, with its DB index (Sunbird uses 12)",
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
        st.optional,
        "a JSON model config in Sunbird's format: `label_mapping`, `order_of_csv_column`, "
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
    storage: storage.StorageSettings = field(default_factory=storage.StorageSettings)


# What the deploy manifests are checked against: every variable load() reads by name.
ENV_VARS = (*st.variables(ExhaustSettings), *storage.ENV_VARS)
SECRETS = (*st.secrets(ExhaustSettings), *storage.SECRETS)
# The Cassandra settings are the streaming job's; the row stands for them in the docs.
_CASSANDRA_ROW = (
    "`PUI_CASSANDRA_*`",
    "as for the streaming job",
    "hosts, port, keyspace, table, credentials, DC, consistency",
)


def doc_rows() -> list[tuple[str, str, str]]:
    """docs/exhaust.md's table: (variable, default, meaning) in Markdown."""
    rows = [spec.row() for _, spec in st.specs(ExhaustSettings)]
    return [*rows[:2], _CASSANDRA_ROW, *rows[2:]]


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
