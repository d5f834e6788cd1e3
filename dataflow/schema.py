"""The table the streaming job writes and the exhaust reads (spec: streaming.md §2).

:data:`TABLE` is its one definition: the DDL, the flattener's column order, both engines'
INSERT, the Rust extension's check at load, and the exhaust's SELECT, filter columns and
report fields are all made from it. How to add a column: docs/table.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")


@dataclass(frozen=True)
class Column:
    """One column of ``program_enrollment`` and what each part of the project does with it."""

    # As the spec's DDL and Sunbird's model config write it; the DDL keeps this spelling.
    spelled: str
    cql_type: str
    key: Literal["partition", "clustering", ""] = ""
    # A report request may filter on it by name (exhaust/filters.py parses the value by
    # cql_type: text, boolean or date).
    filter: bool = False
    # A report row carries it, under its spelled name, for the model config to label and
    # sort (exhaust/layout.py ROW_FIELDS).
    report: bool = False

    @property
    def name(self) -> str:
        """The name Cassandra stores (it lower-cases unquoted identifiers) and the drivers
        return: the one every statement and row dict uses."""
        return self.spelled.lower()


# In the order the engines bind an upsert's values: the Python flattener's tuples, the Rust
# extension's row (flatten_rs/src/writer/row.rs COLUMNS, checked against this at load) and
# the INSERT follow it. user_locations is filtered per key (user_locations['<key>']), and the
# exhaust reads pii_consent_required and user_locations for every row, whatever the flags say.
TABLE: tuple[Column, ...] = (
    Column("program_id", "text", key="partition", filter=True),
    Column("user_id", "text", key="clustering", filter=True, report=True),
    Column("program_externalId", "text", filter=True, report=True),
    Column("program_name", "text", filter=True, report=True),
    Column("pii_consent_required", "boolean", filter=True),
    Column("user_locations", "map<text,text>"),
    Column("organisation_id", "text", filter=True),
    Column("organisation_name", "text", filter=True, report=True),
    Column("user_type", "text", filter=True, report=True),
    Column("user_sub_type", "text", filter=True, report=True),
    Column("created_at", "date", filter=True),
    Column("updated_at", "date", filter=True),
)
COLUMNS: tuple[str, ...] = tuple(c.name for c in TABLE)
KEY: tuple[str, ...] = tuple(c.name for c in TABLE if c.key)


def check_identifier(name: str, setting: str) -> str:
    """Keyspace and table names come from configuration and end up in CQL text: allow only
    plain unquoted identifiers so a setting can never inject CQL."""
    if not _IDENT.match(name or ""):
        raise ValueError(
            f"{setting} must be a plain CQL identifier (letter, then letters, digits or _), "
            f"not {name!r}"
        )
    return name


def keyspace_ddl(
    keyspace: str, replication: str = "{'class': 'SimpleStrategy', 'replication_factor': '1'}"
) -> str:
    check_identifier(keyspace, "keyspace")
    return f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"


def program_enrollment_ddl(
    keyspace: str = "sunbird_programs", table: str = "program_enrollment"
) -> str:
    check_identifier(keyspace, "keyspace")
    check_identifier(table, "table")
    partition = [c.spelled for c in TABLE if c.key == "partition"]
    clustering = [c.spelled for c in TABLE if c.key == "clustering"]
    first = partition[0] if len(partition) == 1 else f"({', '.join(partition)})"
    columns = ", ".join(f"{c.spelled} {c.cql_type}" for c in TABLE)
    return (
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{table} ("
        f"{columns}, PRIMARY KEY ({', '.join([first, *clustering])}))"
    )


def insert_cql(keyspace: str, table: str, columns: Iterable[str] | None = None) -> str:
    """``INSERT INTO keyspace.table (columns) VALUES (?, …)``, by default of every column;
    callers append ``USING …``."""
    check_identifier(keyspace, "keyspace")
    check_identifier(table, "table")
    names = COLUMNS if columns is None else tuple(columns)
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise ValueError(f"{table} has no column {', '.join(map(repr, unknown))}")
    marks = ", ".join("?" * len(names))
    return f"INSERT INTO {keyspace}.{table} ({', '.join(names)}) VALUES ({marks})"


def values(row: Mapping[str, Any], missing: Any = None) -> tuple:
    """A row given by column name as the values of :func:`insert_cql`'s markers, in
    :data:`COLUMNS` order; ``missing`` (e.g. the driver's ``UNSET_VALUE``) for the columns
    the row leaves out, so that a column added to :data:`TABLE` needs no edit here."""
    unknown = [n for n in row if n not in COLUMNS]
    if unknown:
        raise ValueError(f"no column {', '.join(map(repr, unknown))} in program_enrollment")
    return tuple(row.get(n, missing) for n in COLUMNS)
