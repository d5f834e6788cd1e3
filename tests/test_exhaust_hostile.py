"""The exhaust against what the portal and operators send it, on the real servers
(issue 15): request ids that would leave the report store, request text in log lines."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dataflow.exhaust import safe
from dataflow.exhaust.__main__ import request_data
from tests.test_exhaust import ROOT, World, ids, world  # noqa: F401 - world is a fixture

pytestmark = pytest.mark.services

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


def test_hostile_request_ids_fail_and_write_nothing_outside_the_store(world, tmp_path):
    """Each id becomes FAILED with the rule in err_message; no file appears anywhere but in the
    store, and a valid identical twin of a refused request still gets its report."""
    pid = "p-hostile"
    world.enrol(pid, ids(1)[0], pii=False)
    data = request_data(pid, [])
    for rid in HOSTILE_IDS:
        world.submit(rid, data)
    world.submit("good-twin", data)  # identical to all of them: claimed together
    before = {p for p in tmp_path.parent.rglob("*")}
    assert world.run_once() == (1, len(HOSTILE_IDS))
    for rid in HOSTILE_IDS:
        row = world.row(rid)
        assert row["status"] == "FAILED", rid
        assert row["err_message"].startswith("refused: "), rid
        assert "letters" in row["err_message"]
        assert row["download_urls"] is None
    good = world.row("good-twin")
    assert good["status"] == "SUCCESS"
    (url,) = good["download_urls"]
    assert url.startswith(str(world.store / "program-user-exhaust" / "good-twin_"))
    created = {p for p in tmp_path.parent.rglob("*")} - before
    outside = [p for p in created if not p.is_relative_to(world.store)]
    assert outside == []
    assert [p.name for p in created if p.is_file()] == [url.rsplit("/", 1)[1]]


def test_request_text_cannot_forge_a_log_line(world):
    pid = "p-logs"
    world.enrol(pid, ids(1)[0], pii=False)
    forged = "2026-01-01 00:00:00,000 INFO dataflow.exhaust: request forged: SUCCESS"
    world.submit(f"evil\n{forged}", request_data(pid, []))
    data = request_data(pid, [])
    data["params"]["filters"][0]["table_filters"].append(
        {"name": f"bad\n{forged}", "operator": "=", "value": "1"}
    )
    world.submit("bad-filter", data)
    run = subprocess.run(
        [sys.executable, "-m", "dataflow.exhaust", "run", "--once"],
        env=world.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    assert not [line for line in lines if line.startswith("2026-01-01")], run.stderr
    assert f"evil\\n{forged}" in run.stderr
    assert f"bad\\n{forged}" in run.stderr
    assert "Traceback" not in run.stderr
