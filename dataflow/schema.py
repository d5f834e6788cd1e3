"""CQL of the table the streaming job writes (spec: streaming.md §2), in one place."""

from __future__ import annotations

import re

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")


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
    return (
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{table} ("
        "program_id text, program_externalId text, program_name text, "
        "pii_consent_required boolean, user_id text, user_locations map<text,text>, "
        "organisation_id text, organisation_name text, user_sub_type text, user_type text, "
        "created_at date, updated_at date, PRIMARY KEY (program_id, user_id))"
    )
