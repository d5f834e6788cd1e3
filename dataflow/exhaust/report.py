"""The CSV of spec exhaust.md §3: one line per enrolled user, PII only with consent.

Rows are kept as compact tuples (repeated texts shared) until every consent and PII lookup
is done, then sorted and written once.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from dataflow.exhaust import crypto
from dataflow.exhaust.layout import ROW_FIELDS, Layout

IST = ZoneInfo("Asia/Kolkata")
UTC = dt.UTC
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class Counts:
    rows: int = 0
    needing_consent: int = 0
    consenting: int = 0
    missing_in_cache: int = 0
    undecryptable: int = 0
    # Wall seconds per phase, for the log line that says where a slow report spent its time.
    seconds: dict[str, float] = field(default_factory=dict)


class Rows:
    """The filtered enrolment rows of one report, compactly."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.fields = ROW_FIELDS + layout.location_keys
        self.items: list[tuple] = []  # (needs_consent, *values by self.fields)
        self._texts: dict[str, str] = {}

    def _share(self, value) -> str:
        if value is None:
            return ""
        text = value if isinstance(value, str) else str(value)
        return self._texts.setdefault(text, text)

    def add(self, row: dict) -> None:
        locations = row.get("user_locations") or {}
        values = (
            row["user_id"],
            self._share(row.get("program_name")),
            self._share(row.get("program_externalid")),
            self._share(row.get("user_type")),
            self._share(row.get("user_sub_type")),
            self._share(row.get("organisation_name")),
            *(self._share(locations.get(k)) for k in self.layout.location_keys),
        )
        self.items.append((row.get("pii_consent_required") is True, *values))

    def needing_consent(self) -> list[str]:
        return [item[1] for item in self.items if item[0]]

    def __len__(self) -> int:
        return len(self.items)


def consent_date(when) -> str:
    if not isinstance(when, dt.datetime):
        return ""
    aware = when if when.tzinfo else when.replace(tzinfo=UTC)
    return aware.astimezone(IST).strftime("%d/%m/%Y")


def full_name(first, last) -> str:
    return " ".join(p for p in (first, last) if p)


def _decrypt(value, salt: str, counts: Counts) -> str:
    if not value:
        return ""
    try:
        return crypto.decrypt(value, salt)
    except crypto.DecryptError:
        counts.undecryptable += 1
        return ""


def safe_cell(value: str) -> str:
    """Neutralise spreadsheet formulas: a leading ' makes the cell text."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def write_csv(
    path: Path,
    rows: Rows,
    consents: dict[str, dict],
    pii: dict[str, tuple],
    salt: str,
    counts: Counts,
    progress=None,
) -> None:
    layout = rows.layout if any(i[0] for i in rows.items) else rows.layout.without_pii()
    index = {name: n + 1 for n, name in enumerate(rows.fields)}

    def record(item: tuple, tally: Counts = counts) -> dict[str, str]:
        out = {name: item[n] for name, n in index.items()}
        uid = item[1]
        name = phone = email = date = ""
        flag = "No"
        if item[0]:
            consent = consents.get(uid)
            if consent is not None:
                date = consent_date(consent.get("last_updated_on"))
                if (consent.get("status") or "").lower() == "active":
                    flag = "Yes"
                    tally.consenting += 1
                    cached = pii.get(uid)
                    if cached is None:
                        tally.missing_in_cache += 1
                    else:
                        first, last, enc_email, enc_phone = cached
                        name = full_name(first, last)
                        email = _decrypt(enc_email, salt, tally)
                        phone = _decrypt(enc_phone, salt, tally)
        out.update(username=name, phone=phone, email=email, consentflag=flag)
        out["consentprovideddate"] = date
        return out

    def sort_key(item: tuple) -> tuple:
        # Plain fields come from the compact row; a PII field in the sort needs the record.
        if any(f not in index for f in layout.sort):
            rec = record(item, Counts())
            return tuple(rec.get(f, "") for f in layout.sort)
        return tuple(item[index[f]] for f in layout.sort)

    # Blank first, by code point: Python's str order. Only the keys are held, not the records.
    ordered: Iterable[tuple] = sorted(rows.items, key=sort_key)
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow([safe_cell(label) for label, _ in layout.columns])
        for n, item in enumerate(ordered):
            rec = record(item)
            line = []
            for _label, name in layout.columns:
                value = rec.get(name, "")
                if value and name in layout.quoted:
                    value = f"'{value}'"
                line.append(safe_cell(value))
            writer.writerow(line)
            if progress is not None and n % 10_000 == 0:
                progress(n)
    counts.rows = len(rows)
