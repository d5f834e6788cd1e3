"""The CSV of spec exhaust.md §3: one line per enrolled user, PII only with consent.

Rows are kept as compact tuples (repeated texts shared) until every consent and PII lookup
is done, then sorted and written once.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from dataflow.exhaust import crypto
from dataflow.exhaust.layout import PII_FIELDS, ROW_FIELDS, Layout
from dataflow.exhaust.sources import Consent

IST = ZoneInfo("Asia/Kolkata")
UTC = dt.UTC
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CHUNK = 10_000  # rows whose PII is fetched, decrypted and written together: bounds what is held
# user ids -> (firstname, lastname, encrypted email, encrypted phone) of those in the cache
PiiLookup = Callable[[list[str]], dict[str, tuple]]


@dataclass
class Counts:
    rows: int = 0
    needing_consent: int = 0
    consenting: int = 0
    missing_in_cache: int = 0
    undecryptable: int = 0
    encrypted: int = 0  # email and phone values that were decrypted, or tried
    # Wall seconds per phase, for the log line that says where a slow report spent its time.
    seconds: dict[str, float] = field(default_factory=dict)


# The enrolment columns after user_id in ROW_FIELDS order, as the table names them.
SHARED_COLUMNS = (
    "program_name",
    "program_externalid",
    "user_type",
    "user_sub_type",
    "organisation_name",
)


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
        # A report holds up to millions of rows: repeated texts are stored once, and this
        # runs once per row, so it avoids a call per field.
        texts, share = self._texts, self._share
        locations = row.get("user_locations") or {}
        values = [row.get(name) for name in SHARED_COLUMNS]
        values += [locations.get(key) for key in self.layout.location_keys]
        self.items.append(
            (
                row.get("pii_consent_required") is True,
                row["user_id"],
                *[texts.setdefault(v, v) if type(v) is str else share(v) for v in values],
            )
        )

    def needing_consent(self) -> list[str]:
        return [item[1] for item in self.items if item[0]]

    def __len__(self) -> int:
        return len(self.items)


# Asia/Kolkata has been UTC+05:30 without change since 15 October 1945: from then on the
# day is plain arithmetic, not a zoneinfo lookup per row.
IST_FIXED_FROM = dt.datetime(1945, 10, 15)
IST_OFFSET = dt.timedelta(hours=5, minutes=30)


def consent_date(when) -> str:
    """The day in India (dd/mm/yyyy) of a timestamp; naive ones are UTC, as Cassandra's are."""
    if not isinstance(when, dt.datetime):
        return ""
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    if when >= IST_FIXED_FROM:
        local = when + IST_OFFSET
    else:
        local = when.replace(tzinfo=UTC).astimezone(IST)
    return f"{local.day:02d}/{local.month:02d}/{local.year}"


def full_name(first, last) -> str:
    return " ".join(p for p in (first, last) if p)


def render(value: str, quoted: bool) -> str:
    """A cell as written: quoted when the model config says so, formulas neutralised."""
    if value and quoted:
        value = f"'{value}'"
    return safe_cell(value)


def safe_cell(value: str) -> str:
    """Neutralise spreadsheet formulas: a leading ' makes the cell text."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def personal_cells(
    items: list[tuple], consents: dict[str, Consent], lookup: PiiLookup, salt: str, tally
) -> list[list[str]]:
    """The PII_FIELDS cells of each item, in PII_FIELDS order, counting into ``tally``.

    The user cache is asked for the consenting users of these items only, and every email
    and phone among them is decrypted in one batch: per-value decryption cost three cipher
    calls each and was most of a PII report's CSV time.
    """
    cells = []
    consenting: list[tuple[list[str], str]] = []  # (cells of a row, user id)
    for item in items:
        row = ["", "", "", "No", ""]  # username, phone, email, consentflag, consentprovideddate
        if item[0]:
            consent = consents.get(item[1])
            if consent is not None:
                row[4] = consent_date(consent.last_updated_on)
                if consent.active:
                    row[3] = "Yes"
                    consenting.append((row, item[1]))
        cells.append(row)
    tally.consenting += len(consenting)
    pii = lookup([uid for _, uid in consenting]) if consenting else {}
    encrypted: list[tuple[list[str], int, str]] = []  # (cells of a row, slot, ciphertext)
    for row, uid in consenting:
        cached = pii.get(uid)
        if cached is None:
            tally.missing_in_cache += 1
            continue
        first, last, enc_email, enc_phone = cached
        row[0] = full_name(first, last)
        if enc_phone:
            encrypted.append((row, 1, enc_phone))
        if enc_email:
            encrypted.append((row, 2, enc_email))
    tally.encrypted += len(encrypted)
    plain = crypto.decrypt_many([value for _, _, value in encrypted], salt)
    for (row, slot, _), text in zip(encrypted, plain, strict=True):
        if text is None:
            tally.undecryptable += 1
        row[slot] = text or ""
    return cells


def write_csv(
    path: Path,
    rows: Rows,
    consents: dict[str, Consent],
    lookup: PiiLookup,
    salt: str,
    counts: Counts,
    progress=None,
) -> None:
    """Sort the rows and write them, CHUNK at a time: each chunk's PII is fetched from the
    user cache (``lookup``) and decrypted just before it is written, so only one chunk's
    personal data is ever held."""
    layout = rows.layout if any(i[0] for i in rows.items) else rows.layout.without_pii()
    at_row = {name: n + 1 for n, name in enumerate(rows.fields)}
    at_person = {name: n for n, name in enumerate(PII_FIELDS)}
    # Per column: the value comes from the personal cells, the compact row or nowhere (blank),
    # quoted or not. Row texts other than the user id repeat across rows, so their rendered
    # cells are remembered instead of rendered again for each of a million rows.
    plan = []
    for _label, name in layout.columns:
        quoted = name in layout.quoted
        if name in at_person:
            plan.append((True, at_person[name], None, quoted))
        elif name in at_row:
            memo = None if name == "user_id" else {}
            plan.append((False, at_row[name], memo, quoted))
        else:
            plan.append((None, 0, None, quoted))

    def line(item: tuple, person: list[str]) -> list[str]:
        out = []
        for from_person, at, memo, quoted in plan:
            if from_person is None:
                out.append("")
                continue
            value = person[at] if from_person else item[at]
            if memo is not None:
                known = memo.get(value)
                if known is None:
                    known = memo[value] = render(value, quoted)
                out.append(known)
            else:
                out.append(render(value, quoted))
        return out

    # Blank first, by code point: Python's str order. Only the keys are held, not the lines.
    if all(f in at_row for f in layout.sort):
        ordered = sorted(rows.items, key=lambda i: tuple(i[at_row[f]] for f in layout.sort))
    else:
        # A PII field in the sort needs every row's personal cells first (rare: not the
        # default model); counted later, when the rows are written.
        people = personal_cells(rows.items, consents, lookup, salt, Counts())
        by_field = [(at_person.get(f), at_row.get(f)) for f in layout.sort]
        keyed = sorted(
            zip(rows.items, people, strict=True),
            key=lambda pair: tuple(
                pair[1][p] if p is not None else pair[0][r] if r is not None else ""
                for p, r in by_field
            ),
        )
        ordered = [item for item, _ in keyed]
        del keyed, people
    # Personal data: readable by its owner only, whatever the umask.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow([safe_cell(label) for label, _ in layout.columns])
        for n in range(0, len(ordered), CHUNK):
            chunk = ordered[n : n + CHUNK]
            people = personal_cells(chunk, consents, lookup, salt, counts)
            writer.writerows(line(item, person) for item, person in zip(chunk, people, strict=True))
            if progress is not None:
                progress(n + len(chunk))
    counts.rows = len(rows)
