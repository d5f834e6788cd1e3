"""The CSV of spec exhaust.md §3: one line per enrolled user, PII only with consent.

A report holds at most ``PUI_REPORT_SORT_ROWS`` rows, whatever its size. Rows are taken in
batches of that many as the partition is read; each batch gets its users' consents, is sorted
and, when the report is larger than one batch, written to a sorted run in the report's
private work folder. The runs are merged while the CSV is written, and the user cache is read
and decrypted chunk by chunk during that write.
"""

from __future__ import annotations

import csv
import datetime as dt
import gc
import heapq
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from dataflow.exhaust import crypto
from dataflow.exhaust.layout import PERSONAL_COLUMNS, ROW_FIELDS, Layout
from dataflow.exhaust.phases import PhaseTimer
from dataflow.exhaust.sources import Consent
from dataflow.schema import COLUMNS, TABLE

IST = ZoneInfo("Asia/Kolkata")
UTC = dt.UTC
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CHUNK = 10_000  # rows whose PII is fetched, decrypted and written together: bounds what is held
SORT_ROWS = 200_000  # default of PUI_REPORT_SORT_ROWS
# Runs merged at once. More runs are first merged into longer ones, so open files and the
# blocks held while merging stay bounded however many runs a report makes.
FAN_IN = 32
# user ids -> (firstname, lastname, encrypted email, encrypted phone) of those in the cache
PiiLookup = Callable[[list[str]], dict[str, tuple]]


class Consents(Protocol):
    """Consents asked for user by user (``sources.ConsentReader``)."""

    def ask(self, user_id: str) -> None: ...

    def answers(self) -> dict[str, Consent]:
        """The consent of each user asked for since the last call who has one."""
        ...


@dataclass
class Counts:
    rows: int = 0
    needing_consent: int = 0
    consenting: int = 0
    missing_in_cache: int = 0
    undecryptable: int = 0
    encrypted: int = 0  # email and phone values that were decrypted, or tried
    runs: int = 0  # sorted runs written to disk (0: the report was sorted in memory)
    # Where a slow report spent its time; not a count, so two equal reports compare equal.
    phases: PhaseTimer = field(default_factory=PhaseTimer, compare=False)


# The enrolment columns after user_id in ROW_FIELDS order, as the table names them.
SHARED_COLUMNS = tuple(c.name for c in TABLE if c.report and c.name != "user_id")


def _picker(names: tuple[str, ...]) -> Callable[[tuple], tuple]:
    """The values of ``names`` in a row as read (a tuple in schema.COLUMNS order), always as a
    tuple: itemgetter of one index gives the bare value, whose text add() would unpack."""
    at = [COLUMNS.index(name) for name in names]
    if len(at) > 1:
        return itemgetter(*at)
    return lambda row: tuple(row[i] for i in at)


# Where add() finds what it keeps in a row as read.
_SHARED_AT = _picker(SHARED_COLUMNS)
_USER_AT = COLUMNS.index("user_id")
_PII_AT = COLUMNS.index("pii_consent_required")
_LOCATIONS_AT = COLUMNS.index("user_locations")
# A row is held as (consent active, consent day, user_id, *SHARED_COLUMNS, *location keys),
# plus its personal cells at the end when the sort needs them.
ACTIVE, DAY, USER = 0, 1, 2


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


def consenting(items: list[tuple]) -> list[str]:
    """The user ids of the items whose PII the report shows: the user cache is asked for
    these only."""
    return [item[USER] for item in items if item[ACTIVE]]


def personal_cells(items: list[tuple], pii: dict[str, tuple], salt: str, tally) -> list[list[str]]:
    """The PERSONAL_COLUMNS cells of each item, in PERSONAL_COLUMNS order, counting into ``tally``;
    ``pii`` holds the cached PII of (at least) the items' consenting users.

    Every email and phone among them is decrypted in one batch: per-value decryption cost
    three cipher calls each and was most of a PII report's CSV time.
    """
    cells = []
    encrypted: list[tuple[list[str], int, str]] = []  # (cells of a row, slot, ciphertext)
    for item in items:
        # username, phone, email, consentflag, consentprovideddate
        row = ["", "", "", "No", item[DAY]]
        cells.append(row)
        if not item[ACTIVE]:
            continue
        row[3] = "Yes"
        tally.consenting += 1
        cached = pii.get(item[USER])
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


def batches(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class Report:
    """One report's rows, sorted with at most ``limit`` of them in memory.

    ``add`` takes the filtered enrolment rows in any order; ``finish`` settles the last
    batch; ``write`` writes the CSV. Runs are written into ``folder``, which must be private
    to this process (they hold user ids and consents, and personal cells when the sort needs
    them) and removed by the caller, after a success or a failure.
    """

    def __init__(
        self,
        layout: Layout,
        *,
        consents: Consents,
        lookup: PiiLookup,
        salt: str,
        counts: Counts,
        folder: Path,
        limit: int = SORT_ROWS,
    ) -> None:
        self.layout = layout
        self.fields = ROW_FIELDS + layout.location_keys
        self.consents, self.lookup, self.salt, self.counts = consents, lookup, salt, counts
        self.folder, self.limit = folder, limit
        self.rows = 0
        self.any_consent_needed = False
        self.runs: list[Path] = []
        self._batch: list[tuple] = []  # (needs consent, user_id, *values) as read
        self._held: list[tuple] = []  # the sorted rows, when they fit in one batch
        self._texts: dict[str, str] = {}
        self._made = 0
        # Rows are pickled in blocks: the merge holds one block per run it reads, so small
        # blocks keep a merge of many runs (a larger report) from holding more.
        self._block = max(1, min(500, limit // (2 * FAN_IN)))
        self.at_row = {name: n + USER for n, name in enumerate(self.fields)}
        self.person_sort = not all(f in self.at_row for f in layout.sort)
        if not self.person_sort:
            at = [self.at_row[f] for f in layout.sort]
            # A C-level key: the sort and the merge call it once per row.
            self.key = itemgetter(*at) if at else (lambda item: ())
        else:
            person = len(self.fields) + USER
            at_person = {name: n for n, name in enumerate(PERSONAL_COLUMNS)}
            picks = [(at_person.get(f), self.at_row.get(f)) for f in layout.sort]
            self.key = lambda item: tuple(
                item[person][p] if p is not None else item[r] if r is not None else ""
                for p, r in picks
            )

    def _share(self, value) -> str:
        if value is None:
            return ""
        text = value if isinstance(value, str) else str(value)
        return self._texts.setdefault(text, text)

    def add(self, row: tuple) -> None:
        """One enrolment row as read: a tuple in ``schema.COLUMNS`` order, its location map
        a plain dict (``sources.enrolments``)."""
        # Up to millions of rows: repeated texts are stored once, and this runs once per
        # row, so it avoids a call per field.
        if len(self._batch) >= self.limit:
            # Only when a row beyond the limit comes: a report of exactly one batch is not
            # spilled.
            self._spill(self._settle())
            # The partition is read with only young collections (runner.py): cycles of the
            # driver's that outlived them would pile up until the read ends, growing with
            # the report. Collected here, when little is alive, they stay bounded.
            gc.collect()
        texts, share = self._texts, self._share
        locations = row[_LOCATIONS_AT] or {}
        values = [*_SHARED_AT(row), *[locations.get(key) for key in self.layout.location_keys]]
        needs = row[_PII_AT] is True
        uid = row[_USER_AT]
        if needs:
            self.consents.ask(uid)  # read while the rest of the batch arrives
        self._batch.append(
            (
                needs,
                uid,
                *[texts.setdefault(v, v) if type(v) is str else share(v) for v in values],
            )
        )

    def finish(self) -> None:
        """Settle the last batch: held in memory if it is the only one, else spilled."""
        items = self._settle()
        if self.runs:
            self._spill(items)
        else:
            self._held = items

    def _settle(self) -> list[tuple]:
        """The batch read so far with its consents (and personal cells if the sort needs
        them), sorted."""
        items, self._batch = self._batch, []
        self.rows += len(items)
        needing = sum(1 for item in items if item[0])
        self.counts.needing_consent += needing
        self.any_consent_needed |= bool(needing)
        found = self.consents.answers() if needing else {}
        days: dict = {}
        # In place: a batch's rows are never held twice.
        for n, item in enumerate(items):
            consent = found.get(item[1]) if item[0] else None
            if consent is None:
                items[n] = (False, "", *item[1:])
            else:
                when = consent.last_updated_on
                day = days.get(when)
                if day is None:
                    day = days[when] = consent_date(when)
                items[n] = (consent.active, day, *item[1:])
        del found
        if self.person_sort:
            people = personal_cells(items, self._pii(consenting(items)), self.salt, self.counts)
            items = [(*item, cells) for item, cells in zip(items, people, strict=True)]
            del people
        items.sort(key=self.key)
        # Texts shared within a batch only: the table of them must not grow with the report.
        self._texts = {}
        return items

    def _pii(self, user_ids: list[str]) -> dict[str, tuple]:
        with self.counts.phases.waiting("user cache"):
            return self.lookup(user_ids) if user_ids else {}

    def _spill(self, items: Iterable[tuple]) -> Path:
        path = self.folder / f"run-{self._made:06d}"
        self._made += 1
        # Exclusive and 0600 inside the 0700 folder: never an existing file, never readable
        # by others.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb", buffering=1 << 20) as out:
            for block in batches(items, self._block):
                pickle.dump(block, out, protocol=pickle.HIGHEST_PROTOCOL)
        self.runs.append(path)
        self.counts.runs += 1
        return path

    def _read(self, path: Path) -> Iterator[tuple]:
        # Runs are this process's own files in its private folder, so unpickling them is safe.
        with open(path, "rb", buffering=1 << 20) as run:
            while True:
                try:
                    block = pickle.load(run)
                except EOFError:
                    break
                yield from block
        path.unlink()

    def ordered(self) -> Iterator[tuple]:
        """Every row in sort order: the held batch, or the runs merged."""
        if not self.runs:
            held, self._held = self._held, []
            return iter(held)
        runs, self.runs = self.runs, []
        while len(runs) > FAN_IN:
            group, runs = runs[:FAN_IN], runs[FAN_IN:]
            # Appended last: the merge keeps rows of equal keys in the order they were read.
            self._spill(heapq.merge(*map(self._read, group), key=self.key))
            runs.append(self.runs.pop())
        return heapq.merge(*map(self._read, runs), key=self.key)

    def _with_pii(self, chunks: Iterator[list[tuple]]) -> Iterator[tuple[list[tuple], dict]]:
        """Each chunk with the cached PII of its consenting users. The next chunk's PII is
        read by a second thread while this one is decrypted and written: the client waits
        on Redis for the reply, Redis works on another core, so the two overlap."""
        with ThreadPoolExecutor(1, thread_name_prefix="pui-user-cache") as pool:

            def ask(chunk: list[tuple]):
                user_ids = consenting(chunk)
                return pool.submit(self.lookup, user_ids) if user_ids else None

            chunk = next(chunks, None)
            asked = ask(chunk) if chunk else None
            while chunk is not None:
                with self.counts.phases.waiting("user cache"):
                    pii = asked.result() if asked is not None else {}
                following = next(chunks, None)
                asked = ask(following) if following is not None else None
                yield chunk, pii
                chunk = following

    def write(self, path: Path, progress=None) -> None:
        """Write the sorted CSV, CHUNK rows at a time: each chunk's PII is fetched from the
        user cache and decrypted just before it is written, so only one chunk's personal data
        is ever held."""
        layout = self.layout if self.any_consent_needed else self.layout.without_pii()
        at_person = {name: n for n, name in enumerate(PERSONAL_COLUMNS)}
        # Per column: the value comes from the personal cells, the row or nowhere (blank),
        # quoted or not. Row texts other than the user id repeat across rows, so their
        # rendered cells are remembered instead of rendered again for each of a million rows.
        plan = []
        for _label, name in layout.columns:
            quoted = name in layout.quoted
            if name in at_person:
                plan.append((True, at_person[name], None, quoted))
            elif name in self.at_row:
                memo = None if name == "user_id" else {}
                plan.append((False, self.at_row[name], memo, quoted))
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

        written = 0
        # Personal data: readable by its owner only, whatever the umask.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow([safe_cell(label) for label, _ in layout.columns])
            if self.person_sort:
                for chunk in batches(self.ordered(), CHUNK):
                    writer.writerows(line(item, item[-1]) for item in chunk)
                    written += len(chunk)
                    if progress is not None:
                        progress(written)
            else:
                for chunk, pii in self._with_pii(batches(self.ordered(), CHUNK)):
                    people = personal_cells(chunk, pii, self.salt, self.counts)
                    writer.writerows(
                        line(item, person) for item, person in zip(chunk, people, strict=True)
                    )
                    written += len(chunk)
                    if progress is not None:
                        progress(written)
        self.counts.rows = self.rows
