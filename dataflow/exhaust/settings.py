"""Exhaust configuration from environment variables (Cassandra settings shared with the
streaming job: ``PUI_CASSANDRA_*``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dataflow import config
from dataflow.config import ConfigError
from dataflow.exhaust import storage
from dataflow.exhaust.archive import ENCRYPTIONS, LEVELS, PROTECTED, seven_zip
from dataflow.schema import check_identifier

ENV_VARS = (
    "PUI_POSTGRES_DSN",
    "PUI_REDIS_URL",
    "PUI_USER_KEYSPACE",
    "PUI_REPORT_STORE",
    "PUI_DATA_SECURITY_LEVEL",
    "PUI_ZIP_ENCRYPTION",
    "PUI_ENCRYPTION_SALT",
    "PUI_EXHAUST_MODEL_CONFIG",
    "PUI_PROCESSING_TIMEOUT",
    "PUI_POLL_INTERVAL",
    "PUI_REPORT_FILE_MODE",
    "PUI_STORE_WAIT",
    "PUI_REPORT_SORT_ROWS",
    *storage.ENV_VARS,
)
SECRETS = ("PUI_ENCRYPTION_SALT", *storage.SECRETS)


@dataclass(frozen=True)
class ExhaustSettings:
    cassandra: config.Settings
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/pui"
    redis_url: str = "redis://127.0.0.1:6379/12"
    user_keyspace: str = "sunbird"
    report_store: Path = Path("var/reports")
    security_level: str = PROTECTED
    zip_encryption: str = "aes256"
    salt: str = ""
    model_config: str | None = None
    processing_timeout: int = 600
    poll_interval: float = 60.0
    report_mode: int = 0o600
    # Seconds a request waits for an unreachable Cassandra or Redis before it gives up.
    store_wait: float = 60.0
    # Rows a report holds in memory; a larger report is sorted in runs spilled to disk.
    sort_rows: int = 200_000
    storage: storage.StorageSettings = field(default_factory=storage.StorageSettings)


def _number(env: Mapping[str, str], name: str, default: str, low: float, high: float) -> float:
    raw = env.get(name) or default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, not {raw}")
    return value


def _whole(env: Mapping[str, str], name: str, default: str, low: int, high: int) -> int:
    raw = (env.get(name) or default).strip().replace("_", "")
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(
            f"{name} must be a whole number between {low:,} and {high:,}, not {raw[:40]!r}"
        )
    return int(raw)


def _mode(env: Mapping[str, str]) -> int:
    raw = (env.get("PUI_REPORT_FILE_MODE") or "0600").strip()
    try:
        mode = int(raw, 8)
    except ValueError:
        mode = -1
    # Reports are data, never programs; a mode its owner cannot read would fail every download.
    if not 0 <= mode <= 0o777 or mode & 0o111 or not mode & 0o400:
        raise ConfigError(
            "PUI_REPORT_FILE_MODE must be an octal file mode without execute bits that lets the "
            f"owner read, such as 0600 or 0640, not {raw!r}"
        )
    return mode


def load(environ: Mapping[str, str] | None = None) -> ExhaustSettings:
    env = dict(os.environ if environ is None else environ)
    level = (env.get("PUI_DATA_SECURITY_LEVEL") or PROTECTED).strip().upper()
    if level not in LEVELS:
        raise ConfigError(f"PUI_DATA_SECURITY_LEVEL must be one of {', '.join(LEVELS)}")
    encryption = (env.get("PUI_ZIP_ENCRYPTION") or "aes256").strip().lower()
    if encryption not in ENCRYPTIONS:
        raise ConfigError(f"PUI_ZIP_ENCRYPTION must be one of {', '.join(ENCRYPTIONS)}")
    if encryption == "zipcrypto" and level == PROTECTED and seven_zip() is None:
        raise ConfigError(
            "PUI_ZIP_ENCRYPTION=zipcrypto needs the 7z program (Debian package p7zip-full), "
            "which is not installed here (the project's container image has none): "
            "use aes256, or install 7z"
        )
    redis_url = env.get("PUI_REDIS_URL") or ExhaustSettings.redis_url
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("PUI_REDIS_URL must be a redis:// URL (with the DB index, e.g. /12)")
    keyspace = env.get("PUI_USER_KEYSPACE") or "sunbird"
    try:
        check_identifier(keyspace, "PUI_USER_KEYSPACE")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return ExhaustSettings(
        cassandra=config.load(env),
        postgres_dsn=env.get("PUI_POSTGRES_DSN") or ExhaustSettings.postgres_dsn,
        redis_url=redis_url,
        user_keyspace=keyspace,
        report_store=Path(env.get("PUI_REPORT_STORE") or "var/reports"),
        security_level=level,
        zip_encryption=encryption,
        salt=env.get("PUI_ENCRYPTION_SALT", ""),
        model_config=env.get("PUI_EXHAUST_MODEL_CONFIG") or None,
        processing_timeout=int(_number(env, "PUI_PROCESSING_TIMEOUT", "600", 10, 86400)),
        poll_interval=_number(env, "PUI_POLL_INTERVAL", "60", 0.1, 86400),
        report_mode=_mode(env),
        store_wait=_number(env, "PUI_STORE_WAIT", "60", 0, 3600),
        sort_rows=_whole(env, "PUI_REPORT_SORT_ROWS", "200000", 100, 100_000_000),
        storage=storage.load(env),
    )
