"""The request's filters on enrolment rows as read (tuples), against the rule they implement:
a value converted to a day, a missing value passing only ``!=`` (or a default range), a value
of another type passing nothing."""

from __future__ import annotations

import datetime as dt

from cassandra.util import Date
from hypothesis import given
from hypothesis import strategies as st

from dataflow.exhaust import filters
from dataflow.exhaust.filters import OPERATORS, Predicate
from dataflow.exhaust.sources import ENROLMENT_FIELDS

DAYS = st.dates(min_value=dt.date(1800, 1, 1), max_value=dt.date(2200, 12, 31))
TEXTS = st.sampled_from(["", "a", "b", "Karnataka", "é"])


def rule(p: Predicate, have) -> bool:
    """The filter rule, written plainly: what every form of the test must agree with."""
    if isinstance(have, Date | dt.datetime):
        have = have.date()
    if have is None:
        return p.keep_missing or p.op == "!="
    try:
        return OPERATORS[p.op](have, p.value)
    except TypeError:
        return False


def as_read(**values) -> tuple:
    return tuple(values.get(name) for name in ENROLMENT_FIELDS)


HAVE_DATES = st.one_of(
    st.none(),
    DAYS.map(Date),
    DAYS,
    DAYS.map(lambda d: dt.datetime(d.year, d.month, d.day, 13, 5)),
    TEXTS,
)


@given(op=st.sampled_from(sorted(OPERATORS)), want=DAYS, have=HAVE_DATES, keep=st.booleans())
def test_a_date_filter_on_a_row_follows_the_rule(op, want, have, keep):
    p = Predicate("updated_at", op, want, keep_missing=keep)
    assert p.on_columns(ENROLMENT_FIELDS)(as_read(updated_at=have)) == rule(p, have)
    assert p.test({"updated_at": have}) == rule(p, have)


@given(
    op=st.sampled_from(sorted(OPERATORS)),
    want=TEXTS,
    have=st.one_of(st.none(), TEXTS),
    locations=st.one_of(st.none(), st.dictionaries(st.sampled_from(["d", "b"]), TEXTS)),
)
def test_a_text_or_location_filter_on_a_row_follows_the_rule(op, want, have, locations):
    by_column = Predicate("organisation_name", op, want)
    row = as_read(organisation_name=have, user_locations=locations)
    assert by_column.on_columns(ENROLMENT_FIELDS)(row) == rule(by_column, have)
    by_key = Predicate("user_locations", op, want, key="d")
    assert by_key.on_columns(ENROLMENT_FIELDS)(row) == rule(by_key, (locations or {}).get("d"))


def test_a_day_outside_pythons_dates_is_filtered_not_fatal():
    """Cassandra dates reach far beyond year 9999: the default range drops such a row, and a
    filter on another type treats it as missing, instead of the report failing."""
    far = Date(10**9)  # about 2.7 million years after 1970
    request = filters.parse(
        {
            "params": {
                "filters": [
                    {
                        "table_name": "program_enrollment",
                        "table_filters": [{"name": "program_id", "operator": "=", "value": "p"}],
                    }
                ]
            }
        }
    )
    passes = request.enrolment_test(ENROLMENT_FIELDS)
    assert not passes(as_read(updated_at=far))
    assert passes(as_read(updated_at=Date(dt.date(2023, 5, 1))))
    assert passes(as_read(updated_at=None))  # kept: Sunbird's default range keeps it too
    text_filter = Predicate("updated_at", "!=", "x")
    assert text_filter.on_columns(ENROLMENT_FIELDS)(as_read(updated_at=far)) is True


@given(
    after=DAYS,
    org=TEXTS,
    rows=st.lists(st.tuples(st.one_of(st.none(), DAYS.map(Date)), TEXTS), max_size=20),
)
def test_every_filter_of_a_request_must_pass(after, org, rows):
    request = filters.Request(
        "p",
        enrolment=[
            Predicate("updated_at", ">=", after),
            Predicate("organisation_name", "!=", org),
        ],
    )
    passes = request.enrolment_test(ENROLMENT_FIELDS)
    for day, name in rows:
        want = all(rule(p, v) for p, v in zip(request.enrolment, (day, name), strict=True))
        assert passes(as_read(updated_at=day, organisation_name=name)) == want
