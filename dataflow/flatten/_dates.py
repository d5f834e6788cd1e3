"""Dates and write timestamps of spec §3.4, with exact calendar checks and integer arithmetic."""

from __future__ import annotations

import re
from datetime import date

# [0-9], never \d: Python's \d also matches non-ASCII digits.
_STRING = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?"
    r"(?:(Z)|([+-])([0-9]{2}):?([0-9]{2}))?)?"
)
_LONG = re.compile(r"-?[0-9]+")
_DAY_US = 86_400_000_000
_MIN_MS = -(2**63)
_MAX_MS = 2**63 - 1
_ORDINAL_1970 = 719_163  # date(1970, 1, 1).toordinal()
_MIN_DAYS = 1 - _ORDINAL_1970  # 0001-01-01
_MAX_DAYS = date(9999, 12, 31).toordinal() - _ORDINAL_1970


class RawNumber:
    """A JSON number kept exactly as written (spec: numbers become their text as written)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def is_integer_token(self) -> bool:
        return not any(c in self.text for c in ".eE")


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _from_string(text: str) -> tuple[date, int] | None:
    m = _STRING.fullmatch(text)
    if m is None:
        return None
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    if year < 1 or not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
        return None
    hour = int(m[4] or 0)
    minute = int(m[5] or 0)
    second = int(m[6] or 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    micros = int((m[7] or "")[:6].ljust(6, "0"))
    offset = 0
    if m[9]:
        oh, om = int(m[10]), int(m[11])
        if oh > 23 or om > 59:
            return None
        offset = (oh * 3600 + om * 60) * (1 if m[9] == "+" else -1)
    day_value = date(year, month, day)
    days = day_value.toordinal() - _ORDINAL_1970
    us = days * _DAY_US + ((hour * 60 + minute) * 60 + second - offset) * 1_000_000 + micros
    return day_value, us


def _from_millis(text: str) -> tuple[date, int] | None:
    # Length first: int() of a huge digit string is slow (and limited) in Python.
    if len(text.lstrip("-").lstrip("0")) > 19:
        return None
    ms = int(text)
    if not _MIN_MS <= ms <= _MAX_MS:
        return None
    days = ms // 86_400_000
    if not _MIN_DAYS <= days <= _MAX_DAYS:
        return None
    return date.fromordinal(days + _ORDINAL_1970), ms * 1000


def parse_date(value: object) -> tuple[date, int] | None:
    """(calendar date as written or UTC date of epoch millis, write timestamp in µs), or None
    when the value is not one of the accepted forms."""
    if isinstance(value, str):
        return _from_string(value)
    if isinstance(value, RawNumber):
        return _from_millis(value.text) if value.is_integer_token() else None
    if isinstance(value, dict) and len(value) == 1 and "$date" in value:
        inner = value["$date"]
        if isinstance(inner, dict):
            if len(inner) == 1 and "$numberLong" in inner:
                long = inner["$numberLong"]
                if isinstance(long, str) and _LONG.fullmatch(long):
                    return _from_millis(long)
            return None
        if isinstance(inner, str | RawNumber):
            return parse_date(inner)
    return None
