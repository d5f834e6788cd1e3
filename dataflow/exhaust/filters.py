"""The request's filters, parsed into predicates: never pasted into a query (spec exhaust.md §1).

``request_data.params.filters`` lists, per table, ``{name, operator, value}`` triples. Names
must be columns of that table (or ``user_locations['<key>']``), operators one of
``= == != > >= < <=``; anything else fails the request with a message naming the filter.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dataflow.schema import TABLE

# Column -> CQL type, which says how a filter's value is parsed (see _value).
ENROLMENT_COLUMNS = {c.name: c.cql_type for c in TABLE if c.filter}
CONSENT_COLUMNS = {
    "user_id": "text",
    "consumer_id": "text",
    "object_id": "text",
    "consumer_type": "text",
    "object_type": "text",
    "status": "text",
    "id": "text",
    "consent_data": "text",
    "created_on": "date",
    "last_updated_on": "date",
    "expiry": "date",
}
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
EPOCH = dt.date(1970, 1, 1)
DEFAULT_FROM = dt.date(1901, 1, 1)
DEFAULT_TO = dt.date(2101, 1, 1)
_LOCATION = re.compile(r"^user_locations\[\s*'([A-Za-z0-9_]{1,64})'\s*\]$")


def _as_date(value) -> dt.date | None:
    """A ``cassandra.util.Date`` as a date; None when it is outside Python's range."""
    try:
        return value.date()
    except (ValueError, OverflowError):
        return None


class BadRequest(ValueError):
    """The request cannot be served as written; the message goes to ``err_message``."""


@dataclass(frozen=True)
class Predicate:
    column: str  # a column name, or "user_locations" with ``key``
    op: str
    value: Any
    key: str | None = None
    keep_missing: bool = False

    def test(self, row: dict) -> bool:
        """The test on a row given as a dict of column -> value (a consent row)."""
        if self.key is not None:
            return self.holds((row.get("user_locations") or {}).get(self.key))
        return self.holds(row.get(self.column))

    def on_columns(self, columns: tuple[str, ...]) -> Callable[[tuple], bool]:
        """The test on rows given as tuples in ``columns`` order (the enrolment rows: a
        million of them need no dict each)."""
        at = columns.index(self.column)
        holds = self.holds
        if self.key is not None:
            key = self.key
            return lambda row: holds((row[at] or {}).get(key))
        return lambda row: holds(row[at])

    def __post_init__(self) -> None:
        # ``holds(value)``: whether a column's value passes. Made once per predicate, with what
        # it needs bound to it (the dataclass is frozen, hence object.__setattr__).
        object.__setattr__(self, "holds", self._make_holds())

    def _make_holds(self) -> Callable[[Any], bool]:
        compare = OPERATORS[self.op]
        want = self.value
        want_days = None
        if isinstance(want, dt.date) and not isinstance(want, dt.datetime):
            want_days = (want - EPOCH).days
        # A missing value matches only "!=" (it is not equal to anything given).
        missing = self.keep_missing or self.op == "!="

        def holds(have: Any) -> bool:
            if have is None:
                return missing
            days = getattr(have, "days_from_epoch", None)  # a Cassandra date
            if days is not None:
                if want_days is not None:
                    # Its day number: no date object per row, and a day outside Python's
                    # date range compares instead of failing the report.
                    return compare(days, want_days)
                have = _as_date(have)
                if have is None:
                    return missing
            elif isinstance(have, dt.datetime):
                have = have.date()
            try:
                return compare(have, want)
            except TypeError:
                return False

        return holds


@dataclass
class Request:
    program_id: str
    # Tests on the program's rows besides program_id = program_id, which the read itself ensures.
    enrolment: list[Predicate] = field(default_factory=list)
    consent: list[Predicate] = field(default_factory=list)
    title: str = ""

    def enrolment_test(self, columns: tuple[str, ...]) -> Callable[[tuple], bool]:
        """Whether an enrolment row, a tuple in ``columns`` order, passes every filter."""
        tests = [p.on_columns(columns) for p in self.enrolment]
        if len(tests) == 1:
            return tests[0]
        if len(tests) == 2:  # the default date range alone: no loop per row
            first, second = tests
            return lambda row: first(row) and second(row)
        return lambda row: all(test(row) for test in tests)


def _date(text: Any, name: str) -> dt.date:
    if isinstance(text, str):
        try:
            return dt.date.fromisoformat(text.strip()[:10])
        except ValueError:
            pass
    raise BadRequest(f"filter {name}: {text!r} is not a date (use yyyy-MM-dd)")


def _value(kind: str, raw: Any, name: str) -> Any:
    if kind == "date":
        return _date(raw, name)
    if kind == "boolean":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
        raise BadRequest(f"filter {name}: {raw!r} is not true or false")
    if isinstance(raw, str | int | float) and not isinstance(raw, bool):
        return str(raw)
    raise BadRequest(f"filter {name}: the value must be text, not {type(raw).__name__}")


def _predicate(item: Any, columns: dict[str, str], table: str) -> Predicate:
    if not isinstance(item, dict):
        raise BadRequest(f"a filter of {table} is not an object: {str(item)[:80]!r}")
    name, op, raw = item.get("name"), item.get("operator"), item.get("value")
    shown = str(name)[:80]
    if not isinstance(name, str):
        raise BadRequest(f"a filter of {table} has no column name")
    if op not in OPERATORS:
        raise BadRequest(f"filter {shown}: unsupported operator {str(op)[:20]!r}")
    location = _LOCATION.match(name.strip()) if table == "program_enrollment" else None
    if location:
        return Predicate("user_locations", op, _value("text", raw, shown), key=location[1])
    column = name.strip().lower()
    if column not in columns:
        raise BadRequest(f"filter {shown}: {table} has no such column")
    return Predicate(column, op, _value(columns[column], raw, shown))


def parse(request_data: Any) -> Request:
    """Turn ``request_data`` into a :class:`Request`, or raise :class:`BadRequest`."""
    if not isinstance(request_data, dict):
        raise BadRequest("Not a Valid Request")
    params = request_data.get("params")
    filters = params.get("filters") if isinstance(params, dict) else None
    if not isinstance(filters, list):
        raise BadRequest("request_data.params.filters is missing")
    enrolment: list[Predicate] = []
    consent: list[Predicate] = []
    for group in filters:
        table = group.get("table_name") if isinstance(group, dict) else None
        items = group.get("table_filters") if isinstance(group, dict) else None
        if table == "program_enrollment":
            target, columns = enrolment, ENROLMENT_COLUMNS
        elif table == "user_consent":
            target, columns = consent, CONSENT_COLUMNS
        else:
            raise BadRequest(f"filters on an unknown table {str(table)[:60]!r}")
        if not isinstance(items, list):
            raise BadRequest(f"the filters of {table} are not a list")
        target.extend(_predicate(item, columns, table) for item in items)

    def names_the_program(p: Predicate) -> bool:
        return p.column == "program_id" and p.op in ("=", "==")

    programs = {p.value for p in enrolment if names_the_program(p)}
    if len(programs) != 1:
        raise BadRequest("the request needs exactly one program_id filter with operator =")
    (program_id,) = programs
    # Only that program's partition is read: its equality tests hold for every row read.
    enrolment = [p for p in enrolment if not names_the_program(p)]
    for p in consent:
        if p.column == "object_id" and p.op in ("=", "==") and p.value != program_id:
            raise BadRequest("the user_consent object_id filter differs from the program_id")
    if not any(p.column in ("updated_at",) for p in enrolment):
        # Sunbird's default report range; rows without a date are kept (see docs/exhaust.md).
        enrolment.append(Predicate("updated_at", ">=", DEFAULT_FROM, keep_missing=True))
        enrolment.append(Predicate("updated_at", "<=", DEFAULT_TO, keep_missing=True))
    title = request_data.get("title") if isinstance(request_data.get("title"), str) else ""
    return Request(program_id, enrolment, consent, title)
