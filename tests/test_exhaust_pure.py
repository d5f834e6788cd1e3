"""The exhaust's tests that need no server (``make check`` runs them): request ids and log
lines, settings, the CLI's filter syntax, the sort spilled to disk, the phases of a request's
log line and the one-line failures."""

from __future__ import annotations

import dataclasses
import io

import pytest
import pyzipper
import redis
from cassandra.cluster import NoHostAvailable

from dataflow import schema
from dataflow.config import ConfigError
from dataflow.exhaust import archive, crypto, layout, report, safe, sources
from dataflow.exhaust import settings as exhaust_settings
from dataflow.exhaust.__main__ import parse_filter
from dataflow.exhaust.phases import PhaseTimer
from dataflow.exhaust.runner import (
    PHASES,
    ReportFailed,
    StoreUnavailable,
    TimedConsents,
    read_failures,
    write_failures,
)
from tests.exhaust_world import SALT
from tests.test_exhaust_report import Asked, write
from tests.test_exhaust_report import world as small_world

# --- request ids and log lines ---------------------------------------------------------------

HOSTILE_IDS = [
    "../../x",
    "..",
    "a/b",
    "/etc/passwd",
    "a\\b",
    "..\\..\\x",
    "x\ny",
    "x\rINFO forged",
    "tab\there",
    ".hidden",
    "-starts-with-dash",
    "ok..ok",
    "é-not-ascii",
    "a" * (safe.MAX_ID + 1),
    "",
    "space in id",
]


@pytest.mark.parametrize("rid", ["a", "A09115FCBEC94CE6ACEB4D9BBFDBCBCF", "r-1_2.3", "x" * 128])
def test_safe_ids_are_accepted(rid):
    assert safe.id_problem(rid) is None


@pytest.mark.parametrize("rid", [*HOSTILE_IDS, "nul\x00byte", None])
def test_unsafe_ids_are_refused(rid):
    problem = safe.id_problem(rid)
    assert problem is not None and problem.startswith("refused: ")
    assert "request_id" in problem


def test_shown_keeps_a_log_line_one_line():
    assert safe.shown("a\nb\r\x00\u2028c\\n") == "a\\nb\\r\\x00\\u2028c\\\\n"
    assert "\n" not in safe.shown("x\n" * 500)
    assert safe.shown("y" * 300, 10) == "yyyyyyyyyy...(+290 characters)"


def test_crypto_round_trip_and_sunbird_layout():
    value = "someone.with.a.long.address@example.org" * 3
    enc = crypto.encrypt(value, SALT)
    assert all(len(line) <= 76 for line in enc.split("\n"))
    assert "\n" in enc  # three rounds of growth make it longer than one MIME line
    assert crypto.decrypt(enc, SALT) == value
    with pytest.raises(crypto.DecryptError):
        crypto.decrypt(enc, "another-salt")
    with pytest.raises(crypto.DecryptError):
        crypto.decrypt("bm90IGNpcGhlcnRleHQ=", SALT)


def test_csv_reading_helper_sees_what_7z_sees():
    """Guard for the tests above: the zip reader returns the exact bytes written."""
    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(b"p")
        zf.writestr("a.csv", "x,y\r\n")
    with pyzipper.AESZipFile(io.BytesIO(buf.getvalue())) as zf:
        zf.setpassword(b"p")
        assert zf.read("a.csv") == b"x,y\r\n"


def test_bad_file_mode_setting_stops_the_start():
    with pytest.raises(ConfigError, match="PUI_REPORT_FILE_MODE"):
        exhaust_settings.load({"PUI_REPORT_FILE_MODE": "0755"})


# --- the CLI's filter syntax ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "organisation_name = Karnataka Education",
            ("organisation_name", "=", "Karnataka Education"),
        ),
        ("organisation_name=A  B", ("organisation_name", "=", "A  B")),
        ("user_locations['district_id'] != d 1", ("user_locations['district_id']", "!=", "d 1")),
        ("updated_at >= 2023-01-01", ("updated_at", ">=", "2023-01-01")),
        ("program_name == 'a = b '", ("program_name", "==", "a = b ")),
    ],
)
def test_filter_parsing(text, expected):
    got = parse_filter(text)
    assert (got["name"], got["operator"], got["value"]) == expected


# --- the sort spilled to disk ----------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, 13, 60, 10_000])
@pytest.mark.parametrize("fan_in", [2, 32])
@pytest.mark.parametrize("person_sort", [False, True])
def test_spilled_runs_merge_to_the_in_memory_csv(tmp_path, monkeypatch, limit, fan_in, person_sort):
    # The full collection after each spill walks the whole test process, which makes one-row
    # runs slow; it changes no byte (test_a_full_collection_follows_each_spilled_batch checks
    # that it happens).
    monkeypatch.setattr(report.gc, "collect", lambda *a: 0)
    rows, consents, pii, _ = small_world(60)
    if person_sort:
        rows.layout = dataclasses.replace(rows.layout, sort=("username", "email", "user_id"))
    whole, counts = write(tmp_path, rows, consents, pii, "whole.csv")
    assert counts.runs == 0
    # fan_in 2 with 7-row runs: runs are merged into longer ones before the last merge.
    monkeypatch.setattr(report, "FAN_IN", fan_in)
    spilled, spilled_counts = write(tmp_path, rows, consents, pii, "spilled.csv", limit=limit)
    assert spilled == whole
    expected_runs = 0 if limit >= 60 else -(-60 // limit)
    if expected_runs > fan_in:
        assert spilled_counts.runs > expected_runs  # the intermediate merges wrote runs too
    else:
        assert spilled_counts.runs == expected_runs
    assert dataclasses.replace(spilled_counts, runs=0) == counts


@pytest.mark.parametrize(
    "raw", ["abc", "99", "0", "-5", "1e6", "2.5", "\u0661\u0660\u0660\u0660", "100000001"]
)
def test_sort_rows_setting_is_checked(raw):
    with pytest.raises(ConfigError, match="PUI_REPORT_SORT_ROWS must be a whole number"):
        exhaust_settings.load({"PUI_REPORT_SORT_ROWS": raw})


def test_sort_rows_setting_default_and_value():
    assert exhaust_settings.load({}).sort_rows == report.SORT_ROWS == 200_000
    assert exhaust_settings.load({"PUI_REPORT_SORT_ROWS": "300"}).sort_rows == 300
    assert exhaust_settings.load({"PUI_REPORT_SORT_ROWS": "1_000_000"}).sort_rows == 1_000_000


def test_a_full_collection_follows_each_spilled_batch(tmp_path, monkeypatch):
    """The partition is read with young collections only; cycles that outlive them must not
    pile up for the whole read, or the memory a report needs grows with its size."""
    collected: list[int] = []
    rows, consents, pii, _ = small_world(60)
    real = report.Report._spill

    def spill(self, items):
        collected.append(-1)  # a spill, then (below) the collection that must follow it
        return real(self, items)

    monkeypatch.setattr(report.Report, "_spill", spill)
    monkeypatch.setattr(report.gc, "collect", lambda *a: collected.append(1) or 0)
    write(tmp_path, rows, consents, pii, limit=7)
    # 9 runs: 8 while reading, each followed by a collection; the last one at the end.
    assert collected == [-1, 1] * 8 + [-1]


# --- the phases of a request's log line ------------------------------------------------------


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_phases_leave_the_waits_inside_a_step_out_of_it():
    clock = Clock()
    phases = PhaseTimer(*PHASES, clock=clock)
    with phases.step("enrolments"):
        clock.now += 2.0
        with phases.waiting("consents"):
            clock.now += 0.5
        clock.now += 1.0
        with phases.waiting("user cache"):
            clock.now += 0.25
    with phases.step("csv"):
        clock.now += 3.0
        with phases.waiting("user cache"):
            clock.now += 1.0
    with phases.step("zip"):
        clock.now += 0.375
    assert phases.seconds == {
        "enrolments": 3.0,
        "consents": 0.5,
        "user cache": 1.25,
        "csv": 3.0,
        "zip": 0.375,
    }
    # Every second counted once: the phases add up to the time the report took.
    assert sum(phases.seconds.values()) == pytest.approx(clock.now - 100.0)
    assert phases.line() == (
        "enrolments 3.0 s, consents 0.5 s, user cache 1.2 s, csv 3.0 s, zip 0.4 s"
    )


def test_a_phase_timed_later_follows_and_a_failed_step_still_counts():
    clock = Clock()
    phases = PhaseTimer("a", "b", clock=clock)
    with pytest.raises(OSError), phases.step("upload"):
        clock.now += 1.5
        raise OSError("disk full")
    with phases.step("upload"):
        clock.now += 1.0
    assert list(phases.seconds) == ["a", "b", "upload"]
    assert phases.line() == "a 0.0 s, b 0.0 s, upload 2.5 s"
    assert PhaseTimer().line() == ""


def test_a_reports_phases_are_not_part_of_its_counts():
    slow, fast = report.Counts(rows=3), report.Counts(rows=3)
    with slow.phases.waiting("user cache"):
        pass
    assert slow == fast
    assert slow.phases is not fast.phases


def test_consent_waits_are_the_consents_phase():
    class Slow(Asked):
        def answers(self) -> dict:
            clock.now += 0.75  # the answers are not all in yet
            return super().answers()

    clock = Clock()
    phases = PhaseTimer(*PHASES, clock=clock)
    timed = TimedConsents(Slow({"u1": sources.Consent(True, None)}), phases)
    with phases.step("enrolments"):
        timed.ask("u1")
        clock.now += 1.0
        assert list(timed.answers()) == ["u1"]
    assert phases.seconds["consents"] == 0.75
    assert phases.seconds["enrolments"] == 1.0


# --- failures as one line for the requester ------------------------------------------------


def failure_of(handler, exc: BaseException) -> ReportFailed:
    with pytest.raises(ReportFailed) as caught, handler:
        raise exc
    if caught.value is not exc:  # translated: the driver's traceback is not shown with it
        assert caught.value.__suppress_context__
    return caught.value


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (NoHostAvailable("down", {}), StoreUnavailable, "Cassandra stopped answering"),
        (redis.ConnectionError("reset"), ReportFailed, "the user cache (Redis) failed: "),
        (OSError(28, "No space left"), ReportFailed, "writing the report failed: "),
        (KeyError("x" * 500), ReportFailed, "reading the report data failed: KeyError: "),
        (ReportFailed("No Data Found"), ReportFailed, "No Data Found"),
    ],
)
def test_a_failed_read_is_one_line(exc, kind, text):
    failed = failure_of(read_failures("r1"), exc)
    assert type(failed) is kind
    assert str(failed).startswith(text)
    assert len(str(failed)) < 300 and "\n" not in str(failed)


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (redis.TimeoutError("slow"), "the user cache (Redis) failed: TimeoutError: slow"),
        (archive.ArchiveError("7z failed"), "writing the report failed: 7z failed"),
        (PermissionError(13, "denied"), "writing the report failed: [Errno 13] denied"),
    ],
)
def test_a_failed_write_is_one_line(exc, text):
    assert str(failure_of(write_failures(), exc)) == text


def test_a_write_failure_that_is_already_a_line_passes_through():
    wrong = ReportFailed("PUI_ENCRYPTION_SALT is not the salt")
    assert failure_of(write_failures(), wrong) is wrong
    with pytest.raises(ValueError), write_failures():
        raise ValueError("a bug, not a store: it keeps its traceback")


# --- personal data: report columns and user-cache fields -------------------------------------


def test_personal_columns_are_what_a_report_without_consent_leaves_out():
    full = layout.load()
    shown = {field for _, field in full.columns}
    assert set(layout.PERSONAL_COLUMNS) <= shown
    left = {field for _, field in full.without_pii().columns}
    assert left == shown - set(layout.PERSONAL_COLUMNS)
    # The user cache's hash fields, in the order the report unpacks them.
    assert sources.CACHE_FIELDS == ("firstname", "lastname", "email", "phone")


@pytest.mark.parametrize("names", [(), ("program_name",), ("program_name", "user_type")])
def test_a_rows_shared_values_come_as_a_tuple_whatever_their_number(names):
    """A table whose report shows one shared column must not have its text split into
    characters."""
    row = schema.values({"program_name": "Prog", "user_type": "teacher"})
    picked = report._picker(names)(row)
    assert picked == tuple({"program_name": "Prog", "user_type": "teacher"}[n] for n in names)
