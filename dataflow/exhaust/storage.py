"""Where a finished report goes: a local folder (the default) or the deployment's cloud storage.

Sunbird's exhaust uploads each zip into the deployment's reports container and records in
``download_urls`` the path *inside* the container
(``ml_reports/program-user-exhaust/<request_id>_<yyyyMMdd>.zip``); the portal turns that path into
a time-limited signed URL when the user asks for the file. The cloud stores here do the same.

One library serves every store: ``obstore`` (Python binding of the Rust ``object_store`` crate
that Apache Arrow, DataFusion and Delta Lake use). It speaks Azure Blob, S3 (and S3-compatible
servers), GCS and the local file system through one interface, uploads a file in parts read from
disk (never the whole zip in memory), completes or aborts a multipart upload as one operation
(no reader ever sees a partial object), and signs URLs for all three clouds. It has no runtime
dependency besides ``typing-extensions``; the three vendor SDKs would have brought three clients,
three retry models and three signing APIs.

The settings are declared with the exhaust's others
(:class:`dataflow.exhaust.settings.StorageSettings`). Secrets (account key, S3 secret) come from
the environment, from files (``*_FILE``, e.g. a mounted Kubernetes Secret) or from the
``PUI_CONFIG`` HOCON file; they are never logged and are masked in ``StorageSettings.describe``.
Without them the library's usual credential chain applies (``AWS_*``/``AZURE_*``/``GOOGLE_*``
variables, workload identity, instance metadata).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from dataflow import settings_table as st
from dataflow.config import ConfigError

if TYPE_CHECKING:
    from dataflow.exhaust.settings import StorageSettings

KINDS = ("local", "azure", "s3", "gcs")
# Sunbird's key names in the PUI_CONFIG HOCON file, first found wins (modelParams.* is how the
# exhaust's model config nests them).
HOCON_KEYS: dict[str, tuple[str, ...]] = {
    "kind": ("cloud_storage_type", "store", "modelParams.store"),
    "container": (
        "cloud_storage_container",
        "storageContainer",
        "modelParams.storageContainer",
        "container",
        "modelParams.container",
    ),
    "prefix": ("ml.exhaust.store.prefix",),
    "key": ("cloud_storage_key",),
    "secret": ("cloud_storage_secret",),
    "endpoint": ("cloud_storage_endpoint",),
}
# Sunbird names the setting that holds the account (key) and the secret with storageKeyConfig /
# storageSecretConfig; these are its usual names per store.
SUNBIRD_KEY_NAMES = {
    "azure": ("azure_storage_key", "azure_storage_secret"),
    "s3": ("aws_storage_key", "aws_storage_secret"),
    "gcs": ("gcloud_client_key", "gcloud_private_secret"),
}
KIND_ALIASES = {"aws": "s3", "gcloud": "gcs", "google": "gcs", "file": "local"}
NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
SEGMENT = re.compile(r"^[A-Za-z0-9._=+@,-]{1,255}$")
PART_MIN = 5 * 1024 * 1024  # S3's smallest part (but the last)


class StorageError(RuntimeError):
    """The store refused or could not be reached; the text is safe for ``err_message``."""


class UploadFailed(StorageError):
    """The store did not take a report (down, credentials refused, no container): every
    following request would fail the same way, so the run stops as for an unavailable
    Cassandra or Redis."""


def _hocon(path: str | None, kind_set: str | None) -> dict[str, str]:
    """The storage keys of the PUI_CONFIG file, plus the values storageKeyConfig and
    storageSecretConfig point to (by default Sunbird's names for the store of ``kind_set``,
    PUI_STORAGE_TYPE, else of the file's own type)."""
    if not path:
        return {}
    from pyhocon import ConfigFactory

    try:
        tree = ConfigFactory.parse_file(path)
    except Exception:
        raise ConfigError(f"PUI_CONFIG file {path!r} is not valid HOCON") from None

    def get(key: str) -> str | None:
        try:
            value = tree.get(key, None)
        except Exception:  # a key path through a non-object
            return None
        return None if value is None or isinstance(value, dict | list) else str(value)

    found: dict[str, str] = {}
    for setting, names in HOCON_KEYS.items():
        for name in names:
            value = get(name)
            if value not in (None, ""):
                found[setting] = value
                found[f"{setting}.from"] = name
                break
    # An unknown type is reported by load(), naming where it came from.
    kind = (kind_set or found.get("kind") or "local").strip().lower()
    key_name, secret_name = SUNBIRD_KEY_NAMES.get(KIND_ALIASES.get(kind, kind), (None, None))
    for setting, pointer, default in (
        ("key", "storageKeyConfig", key_name),
        ("secret", "storageSecretConfig", secret_name),
    ):
        if setting in found:
            continue
        names = [get(pointer), get(f"modelParams.{pointer}"), default]
        for name in names:
            value = get(name) if name else None
            if value not in (None, ""):
                found[setting] = value
                found[f"{setting}.from"] = name
                break
    return found


def load(environ: Mapping[str, str] | None = None) -> StorageSettings:
    """The storage settings: each variable (or its ``_FILE``) when set, else Sunbird's key in
    the ``PUI_CONFIG`` file, else the default; then the rules between them."""
    from dataflow.exhaust.settings import StorageSettings

    env = dict(os.environ if environ is None else environ)
    file_values = _hocon(env.get("PUI_CONFIG"), env.get("PUI_STORAGE_TYPE"))
    values = {}
    for attr, spec in st.specs(StorageSettings):
        found = st.lookup(spec, env)
        if found is None and attr in file_values:
            found = f"{file_values[f'{attr}.from']} (in PUI_CONFIG)", file_values[attr]
        name, raw = found or (spec.var, spec.default)
        values[attr] = spec.parse(name, raw)
    kind, key, secret = values["kind"], values["key"], values["secret"]
    if kind == "azure" and secret and not key:
        raise ConfigError(
            "PUI_STORAGE_SECRET (the account key) needs PUI_STORAGE_KEY (the account)"
        )
    if kind == "s3" and (key is None) != (secret is None):
        raise ConfigError("PUI_STORAGE_KEY and PUI_STORAGE_SECRET must be set together for s3")
    if kind == "azure" and not key:
        raise ConfigError("azure storage needs the account name in PUI_STORAGE_KEY")
    settings = StorageSettings(**values)
    if kind != "local":
        # The client checks its own options without any network call: refuse them at start.
        try:
            build(settings)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"the {kind} storage settings are refused: {_reason(exc)}") from None
    return settings


def check_key(key: str) -> str:
    """Refuse an object key that could leave its folder or confuse a store."""
    segments = key.split("/")
    if not all(SEGMENT.match(s) and s not in (".", "..") for s in segments):
        raise StorageError(f"refusing to store an object under the unsafe name {key[:80]!r}")
    return key


def _reason(exc: BaseException) -> str:
    """One line about a store error, without the library's multi-line debug dump."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.sub(r"\s*Debug source:.*", "", text)
    return f"{type(exc).__name__}: {text[:160]}"


class Store:
    """A place for report zips. ``put`` returns what ``download_urls`` records."""

    kind = "local"

    def put(self, local_zip: Path, name: str) -> str:
        raise NotImplementedError

    def signed_url(self, recorded: str, expiry: int | None = None) -> str:
        raise NotImplementedError

    def delete(self, recorded: str) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind


class LocalStore(Store):
    """The zip stays where the runner wrote it; ``download_urls`` gets its local path."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, local_zip: Path, name: str) -> str:
        return str(local_zip)

    def signed_url(self, recorded: str, expiry: int | None = None) -> str:
        # Nothing to sign on a local disk: the portal would serve the file itself.
        return Path(recorded).resolve().as_uri()

    def delete(self, recorded: str) -> None:
        Path(recorded).unlink(missing_ok=True)

    def describe(self) -> str:
        return f"local folder {self.root}"


class CloudStore(Store):
    """Azure Blob, S3 (or S3-compatible) or GCS through obstore."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.kind = settings.kind
        self._store = build(settings)

    def key_of(self, name: str) -> str:
        prefix = self.settings.prefix
        return check_key(f"{prefix}/{name}" if prefix else name)

    def put(self, local_zip: Path, name: str) -> str:
        """Upload ``local_zip`` (in parts of ``part_size`` read from disk) to
        ``<prefix>/<name>``, then remove the local copy; returns the object's key. The upload
        replaces an object of the same key (a re-run of the same request) and nothing else.
        The local zip is removed in any case: a failed request builds it again."""
        import obstore

        key = self.key_of(name)
        try:
            obstore.put(
                self._store,
                key,
                Path(local_zip),
                chunk_size=self.settings.part_size,
                max_concurrency=4,
                attributes={"Content-Type": "application/zip"},
            )
        except Exception as exc:
            raise UploadFailed(
                f"uploading the report to {self.kind} storage failed: {_reason(exc)}"
            ) from None
        finally:
            Path(local_zip).unlink(missing_ok=True)
        return key

    def signed_url(self, recorded: str, expiry: int | None = None) -> str:
        import obstore

        seconds = expiry or self.settings.url_expiry
        try:
            return obstore.sign(
                self._store, "GET", check_key(recorded), dt.timedelta(seconds=seconds)
            )
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"signing a download URL failed: {_reason(exc)}") from None

    def delete(self, recorded: str) -> None:
        import obstore

        try:
            obstore.delete(self._store, check_key(recorded))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise StorageError(f"deleting {recorded!r} failed: {_reason(exc)}") from None

    def head(self, recorded: str) -> dict | None:
        """The object's metadata, or None when there is no such object."""
        import obstore

        try:
            return dict(obstore.head(self._store, check_key(recorded)))
        except FileNotFoundError:
            return None

    def describe(self) -> str:
        where = self.settings.endpoint or "the provider's endpoint"
        return f"{self.kind} {self.settings.container} at {where}"


def build(s: StorageSettings):
    """The obstore store of ``s`` (never for ``local``)."""
    from obstore.store import AzureStore, GCSStore, S3Store

    client = {"connect_timeout": "10s", "timeout": "300s"}
    if s.endpoint and s.endpoint.startswith("http://"):
        client["allow_http"] = True  # only for an endpoint the settings name as http
    # A down store fails the attempt within about a minute; the request's own retries
    # (iteration < 3) take over from there.
    retry = {
        "max_retries": 3,
        "retry_timeout": dt.timedelta(seconds=60),
        "backoff": {
            "init_backoff": dt.timedelta(milliseconds=200),
            "max_backoff": dt.timedelta(seconds=5),
            "base": 2,
        },
    }
    if s.kind == "azure":
        config: dict = {}
        if s.key:
            config["account_name"] = s.key
        if s.secret:
            config["account_key"] = s.secret
        if s.endpoint:
            config["endpoint"] = s.endpoint
        return AzureStore(s.container, config=config, client_options=client, retry_config=retry)
    if s.kind == "s3":
        config = {"region": s.region or "us-east-1"}
        if s.key:
            config["access_key_id"] = s.key
            config["secret_access_key"] = s.secret
        if s.endpoint:
            config["endpoint"] = s.endpoint
        return S3Store(s.container, config=config, client_options=client, retry_config=retry)
    if s.kind == "gcs":
        config = {}
        if s.secret:
            config["service_account_key"] = _gcs_account(s.key, s.secret)
        if s.endpoint:
            config["base_url"] = s.endpoint
        return GCSStore(s.container, config=config, client_options=client, retry_config=retry)
    raise ValueError(f"no cloud store for {s.kind!r}")


def _gcs_account(client_email: str | None, secret: str) -> str:
    """GCS takes a service-account JSON; Sunbird keeps the client e-mail and the private key
    apart (gcloud_client_key, gcloud_private_secret). Accept either."""
    if secret.lstrip().startswith("{"):
        return secret
    if not client_email:
        raise ConfigError("gcs: PUI_STORAGE_KEY (client e-mail) is needed with a PEM secret")
    return json.dumps(
        {
            "type": "service_account",
            "client_email": client_email,
            "private_key": secret.replace("\\n", "\n"),
            "private_key_id": "",
        }
    )


def open_store(settings: StorageSettings, local_root: Path) -> Store:
    if settings.kind == "local":
        return LocalStore(local_root)
    return CloudStore(settings)
