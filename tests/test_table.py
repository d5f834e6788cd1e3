"""The table's one definition (dataflow/schema.py TABLE) against everything made from it.

After a change to TABLE, a failure here names the part that still needs code: the two
flatteners and the Rust row builder, which fill the values, or a definition that the exhaust
cannot use. No server needed.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import re
import sys
import types

import pytest

from dataflow import flatten, schema
from dataflow.exhaust import filters, layout, report, sources
from tests.conftest import require_rust

# spec streaming.md §2, as written there: Sunbird's table, which the job must keep writing.
SPEC_DDL = """
    program_id text, program_externalId text, program_name text, pii_consent_required boolean,
    user_id text, user_locations map<text,text>, organisation_id text, organisation_name text,
    user_sub_type text, user_type text, created_at date, updated_at date,
    PRIMARY KEY (program_id, user_id)"""

# One distinct value per column, and the event that must flatten to it.
EVENT = {
    "programId": "P",
    "userId": "U",
    "programExternalId": "EXT",
    "programName": "NAME",
    "requestForPIIConsent": True,
    "userProfile": {
        "userLocations": [{"type": "state", "name": "KA", "id": "s1", "code": "29"}],
        "profileUserTypes": [{"type": "administrator", "subType": "hm"}],
        "rootOrg": {"id": "ORG-ID", "orgName": "ORG-NAME"},
    },
    "createdAt": "2023-01-02T00:00:00.000Z",
    "updatedAt": "2023-01-03T00:00:00.000Z",
}
EXPECTED = {
    "program_id": "P",
    "user_id": "U",
    "program_externalid": "EXT",
    "program_name": "NAME",
    "pii_consent_required": True,
    "user_locations": {"state_name": "KA", "state_id": "s1", "state_code": "29"},
    "organisation_id": "ORG-ID",
    "organisation_name": "ORG-NAME",
    "user_type": "administrator",
    "user_sub_type": "HM",
    "created_at": dt.date(2023, 1, 2),
    "updated_at": dt.date(2023, 1, 3),
}


def ddl_parts(text: str) -> tuple[dict[str, str], str]:
    """(column -> type, primary key) of a CREATE TABLE body, names as Cassandra stores them."""
    body = re.sub(r"\s+", " ", text)
    key = re.search(r"PRIMARY KEY \((.*)\)", body)
    assert key, text
    columns = body[: key.start()].strip(" ,")
    pairs = [c.strip().split(" ", 1) for c in re.split(r",(?![^<]*>)", columns)]
    return {name.lower(): kind.replace(" ", "") for name, kind in pairs}, key[1].lower()


def test_ddl_creates_the_definition_and_the_spec_table():
    ddl = schema.program_enrollment_ddl("ks", "t")
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS ks.t (")
    made = ddl_parts(ddl[ddl.index("(") + 1 : -1])
    assert made == ({c.name: c.cql_type for c in schema.TABLE}, "program_id, user_id")
    assert made == ddl_parts(SPEC_DDL), (
        "TABLE no longer matches Sunbird's table (spec streaming.md §2): an existing table "
        "needs an ALTER TABLE before the job writes the new column (say so in docs/cutover.md), "
        "then update SPEC_DDL here"
    )
    # The spec's spelling is kept: a reader compares the two texts.
    assert "program_externalId text" in ddl


def test_one_name_per_column_and_a_key_that_is_defined():
    assert len(set(schema.COLUMNS)) == len(schema.COLUMNS)
    assert schema.KEY == ("program_id", "user_id")
    assert flatten.COLUMNS == schema.COLUMNS
    for c in schema.TABLE:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", c.spelled), c


def test_insert_and_values_follow_the_definition():
    cql = schema.insert_cql("ks", "t")
    assert cql == (
        f"INSERT INTO ks.t ({', '.join(schema.COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(schema.COLUMNS))})"
    )
    assert schema.insert_cql("ks", "t", ["user_id"]) == "INSERT INTO ks.t (user_id) VALUES (?)"
    with pytest.raises(ValueError, match="no column 'nope'"):
        schema.insert_cql("ks", "t", ["user_id", "nope"])
    with pytest.raises(ValueError, match="plain CQL identifier"):
        schema.insert_cql("ks; DROP", "t")
    row = schema.values({"user_id": "u", "program_id": "p"}, missing="-")
    assert row == ("p", "u", *("-" * (len(schema.COLUMNS) - 2)))
    with pytest.raises(ValueError, match="no column 'nope'"):
        schema.values({"nope": 1})


@pytest.mark.parametrize("engine", ["python", "rust"])
def test_each_flattener_fills_every_column_in_order(engine):
    if engine == "rust":
        require_rust()
    ((op, row, _ts, _invalid),) = flatten.flatten_batch([json.dumps(EVENT).encode()], engine)
    assert op == "upsert"
    assert len(row) == len(schema.COLUMNS), (
        f"the {engine} flattener makes {len(row)} values for {len(schema.COLUMNS)} columns: "
        "give the new column its value (dataflow/flatten/_python.py, flatten_rs/src/lib.rs)"
    )
    assert dict(zip(schema.COLUMNS, row, strict=True)) == EXPECTED


def test_rust_extension_binds_the_defined_columns():
    # Straight from the module: native() would refuse a mismatch before it could be shown.
    try:
        extension = importlib.import_module("dataflow.flatten._native")
    except ImportError:
        require_rust()  # not built: skips, or fails in CI
        raise
    built = extension.writer_columns()
    assert tuple(built) == schema.COLUMNS, (
        "flatten_rs/src/writer/row.rs COLUMNS and InsertValues must list TABLE's columns in "
        "TABLE's order; rebuild with scripts/install"
    )


@pytest.fixture
def fresh_native(monkeypatch):
    """native() loads again, from whatever ``dataflow.flatten._native`` then is."""
    monkeypatch.setattr(flatten, "_loaded", None)

    def install(columns: list[str]) -> None:
        fake = types.ModuleType("dataflow.flatten._native")
        fake.writer_columns = lambda: columns
        fake.flatten_batch = lambda *a: []
        monkeypatch.setitem(sys.modules, "dataflow.flatten._native", fake)

    return install


@pytest.mark.parametrize(
    ("built", "named"),
    [
        (["user_id", "program_id", *schema.COLUMNS[2:]], "column 1 is user_id there"),
        (list(schema.COLUMNS[:-1]), f"it lacks {schema.COLUMNS[-1]}"),
        ([*schema.COLUMNS, "extra"], "it has extra besides"),
    ],
)
def test_an_extension_built_for_other_columns_is_refused_at_load(fresh_native, built, named):
    fresh_native(built)
    with pytest.raises(flatten.StaleExtension, match=named) as refused:
        flatten.native()
    assert "rebuild it with scripts/install" in str(refused.value)
    # auto must not fall back to the slower engine in silence, nor use the broken one.
    with pytest.raises(flatten.StaleExtension):
        flatten.resolve_engine("auto")
    with pytest.raises(flatten.StaleExtension):
        flatten.flatten_batch([b"{}"], "rust")
    assert flatten.resolve_engine("python") == "python"


def test_an_extension_built_for_the_defined_columns_loads(fresh_native):
    fresh_native(list(schema.COLUMNS))
    assert flatten.native().writer_columns() == list(schema.COLUMNS)
    assert flatten.resolve_engine("auto") == "rust"


def test_the_exhaust_reads_and_filters_defined_columns():
    assert sources.ENROLMENT_FIELDS == schema.COLUMNS
    assert [c.strip() for c in sources.ENROLMENT_SELECT.split(",")] == list(schema.COLUMNS)
    assert set(filters.ENROLMENT_COLUMNS) <= set(schema.COLUMNS)
    kinds = {c.name: c.cql_type for c in schema.TABLE}
    for name, kind in filters.ENROLMENT_COLUMNS.items():
        assert kind == kinds[name]
        assert kind in ("text", "boolean", "date"), (
            f"{name}: exhaust/filters.py parses text, boolean and date values only; give "
            "_value a parser for this type or leave filter=False"
        )
    # The columns the exhaust's code names itself.
    assert {"program_id", "user_id", "pii_consent_required", "user_locations", "updated_at"} <= (
        set(schema.COLUMNS)
    )


def test_a_request_can_filter_on_every_filter_column():
    sample = {"text": "x", "boolean": "true", "date": "2023-01-01"}
    items = [{"name": "program_id", "operator": "=", "value": "p1"}]
    items += [
        {"name": c.spelled, "operator": "!=", "value": sample[c.cql_type]}
        for c in schema.TABLE
        if c.filter
    ]
    request = filters.parse(
        {"params": {"filters": [{"table_name": "program_enrollment", "table_filters": items}]}}
    )
    named = {p.column for p in request.enrolment}
    assert named >= {c.name for c in schema.TABLE if c.filter and c.name != "program_id"}


def test_report_fields_are_defined_columns_and_the_default_layout_loads():
    spelled = {c.spelled: c for c in schema.TABLE}
    assert layout.ROW_FIELDS[0] == "user_id"
    assert all(spelled[f].report for f in layout.ROW_FIELDS)
    assert tuple(spelled[f].name for f in layout.ROW_FIELDS[1:]) == report.SHARED_COLUMNS
    # The default model config (Sunbird's) labels every report column, under its spelling.
    fields = {field for _label, field in layout.load().columns}
    assert set(layout.ROW_FIELDS) <= fields, (
        "a report column needs its label in dataflow/exhaust/default_model.json "
        "(label_mapping and order_of_csv_column), which changes the CSV (spec exhaust.md §3)"
    )


def test_the_job_refuses_to_start_with_a_stale_extension(fresh_native, monkeypatch, capsys):
    import dataflow

    for name in ("PUI_ENGINE", "PUI_FLATTENER", "PUI_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    fresh_native(list(schema.COLUMNS[:-1]))
    # The start sets up logging before it chooses the engine: put the levels back after.
    levels = {name: logging.getLogger(name).level for name in ("", "cassandra")}
    try:
        with pytest.raises(SystemExit) as stopped:
            dataflow.__getattr__("flow")
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    assert stopped.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("program-user-info: cannot start: the Rust extension")
    assert "Traceback" not in "\n".join(err)
