"""Flattening of program-user events into Cassandra rows (spec: shared/spec/streaming.md §1-4, 7).

Two engines produce exactly the same results: the Rust extension (the hot path; the private
``dataflow.flatten._native``, reached only through :func:`native`) and the pure-Python fallback
in ``dataflow.flatten._python``.

Both engines expose ``flatten_batch(messages, max_bytes, unset) -> list[tuple]`` and return one
4-tuple per message, in order:

* ``("upsert", row, write_ts, invalid_date)``: ``row`` is a tuple with one value per name in
  :data:`COLUMNS`; a column that must not be written holds ``unset`` (the sink passes the
  driver's ``UNSET_VALUE``); text is ``str`` or ``None``, ``pii_consent_required`` a ``bool``,
  ``user_locations`` a ``dict[str, str]``, dates ``datetime.date`` or ``None``.
* ``("delete", (program_id, user_id), write_ts, False)``.
* ``("reject", reason, detail, False)``: ``reason`` is a stable code (``malformed_json``,
  ``missing_key:userId``, ...), ``detail`` free text for humans.

``write_ts`` is ``updatedAt`` in microseconds since the epoch, or ``None`` when ``updatedAt`` is
unusable (the sink then falls back to the Kafka timestamp and clamps to the wall clock).
``invalid_date`` is true when ``createdAt`` or ``updatedAt`` could not be used.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from typing import Any

from dataflow import schema

# The table's columns in binding order, from its one definition (dataflow/schema.py TABLE).
COLUMNS: tuple[str, ...] = schema.COLUMNS

UPSERT = "upsert"
DELETE = "delete"
REJECT = "reject"

DEFAULT_MAX_BYTES = 1024 * 1024
ENGINES = ("auto", "rust", "python")

log = logging.getLogger(__name__)


class _NotWritten:
    """Marks a column the message does not write (distinct from writing null)."""

    _instance: _NotWritten | None = None

    def __new__(cls) -> _NotWritten:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_WRITTEN"

    def __reduce__(self) -> str:
        return "NOT_WRITTEN"


NOT_WRITTEN = _NotWritten()


class StaleExtension(ImportError):
    """The built extension binds an upsert's values to other columns than :data:`COLUMNS`."""


_loaded: Any = None


def native():
    """The compiled extension (``flatten_rs/``, typed in ``_native.pyi``): the only way in, so
    callers get one clear error when it is not built, or was built for other columns."""
    global _loaded
    if _loaded is None:
        try:
            extension = importlib.import_module("dataflow.flatten._native")
        except ImportError:
            raise ImportError(
                "the Rust extension (dataflow.flatten._native) is not built; run "
                "scripts/install or set PUI_ENGINE=python"
            ) from None
        built = tuple(extension.writer_columns())
        if built != COLUMNS:
            # It binds values by position: with other columns it would write each value
            # into the wrong one, so it is never used.
            raise StaleExtension(
                "the Rust extension (dataflow.flatten._native) was built for other columns "
                f"than dataflow/schema.py TABLE ({_difference(built)}): rebuild it with "
                "scripts/install, after changing flatten_rs/src/writer/row.rs to match, "
                "or set PUI_ENGINE=python"
            )
        _loaded = extension
    return _loaded


def _difference(built: tuple[str, ...]) -> str:
    for n, (theirs, ours) in enumerate(zip(built, COLUMNS, strict=False)):
        if theirs != ours:
            return f"column {n + 1} is {theirs} there, {ours} in TABLE"
    if len(built) < len(COLUMNS):
        return f"it lacks {', '.join(COLUMNS[len(built) :])}"
    return f"it has {', '.join(built[len(COLUMNS) :])} besides"


def rust_available() -> bool:
    try:
        return hasattr(native(), "flatten_batch")
    except StaleExtension:
        raise  # a broken build is refused, not silently replaced by the slower engine
    except ImportError:
        return False


def resolve_engine(engine: str | None = None) -> str:
    """Return ``"rust"`` or ``"python"`` for a requested engine (by default ``PUI_ENGINE``, or
    its old name ``PUI_FLATTENER``)."""
    requested = (
        (engine or os.environ.get("PUI_ENGINE") or os.environ.get("PUI_FLATTENER") or "auto")
        .strip()
        .lower()
    )
    if requested not in ENGINES:
        raise ValueError(f"PUI_ENGINE must be one of {', '.join(ENGINES)}, not {requested!r}")
    if requested == "python":
        return "python"
    if rust_available():
        return "rust"
    if requested == "rust":
        native()  # raises the clear ImportError
    return "python"


def engine_function(engine: str | None = None):
    """The ``flatten_batch(messages, max_bytes, unset)`` function of the resolved engine."""
    if resolve_engine(engine) == "rust":
        return native().flatten_batch
    from dataflow.flatten import _python

    return _python.flatten_batch


def flatten_batch(
    messages: Sequence[bytes],
    engine: str = "auto",
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    unset: Any = NOT_WRITTEN,
) -> list[tuple]:
    """Flatten a batch of raw Kafka message values; see the module docstring for the results."""
    return engine_function(engine)(list(messages), max_bytes, unset)
