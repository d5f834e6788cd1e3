"""`python -m dataflow.flatten` (spec streaming.md section 7), as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_rust

ROOT = Path(__file__).resolve().parents[1]
LINES = b"\n".join(
    [
        b'{"programId":"p1","userId":"u1","programName":"","updatedAt":"2023-01-12T06:30:56.829Z",'
        b'"createdAt":"2023-01-11","userProfile":{"userLocations":[{"type":"state","name":"KA"}]}}',
        b"",  # empty lines are skipped
        b'{"programId":"p1","userId":"u2","deleted":true,"updatedAt":"2023-01-12"}',
        b'{"programId":"p1"}',
        b"not json",
        b'{"programId":"p1","userId":"u3","updatedAt":"2023-02-30"}',
    ]
)


def flatten(engine: str, data: bytes = LINES) -> subprocess.CompletedProcess:
    if engine == "rust":
        require_rust()
    return subprocess.run(
        [sys.executable, "-m", "dataflow.flatten", "--engine", engine],
        input=data,
        cwd=ROOT,
        capture_output=True,
        check=False,
    )


@pytest.mark.parametrize("engine", ["python", "rust"])
def test_one_json_line_per_message_in_order(engine):
    done = flatten(engine)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [o["op"] for o in out] == ["upsert", "delete", "reject", "reject", "upsert"]
    assert out[0] == {
        "op": "upsert",
        "row": {
            "program_id": "p1",
            "user_id": "u1",
            "program_externalid": None,
            "program_name": None,
            "pii_consent_required": False,
            "user_locations": {"state_name": "KA"},
            "created_at": "2023-01-11",
            "updated_at": "2023-01-12",
        },
        "write_timestamp": 1673505056829000,
    }
    assert out[1] == {
        "op": "delete",
        "key": {"program_id": "p1", "user_id": "u2"},
        "write_timestamp": 1673481600000000,
    }
    assert out[2]["reason"] == "missing_key:userId" and out[2]["detail"]
    assert out[3]["reason"] == "malformed_json"
    assert out[4]["row"]["updated_at"] is None and out[4]["write_timestamp"] is None


def test_both_engines_print_the_same_values():
    rust = [json.loads(x) for x in flatten("rust").stdout.decode().splitlines()]
    python = [json.loads(x) for x in flatten("python").stdout.decode().splitlines()]
    for a, b in zip(rust, python, strict=True):
        a.pop("detail", None)
        b.pop("detail", None)
        assert a == b


def test_help_explains_the_output():
    done = subprocess.run(
        [sys.executable, "-m", "dataflow.flatten", "--help"], cwd=ROOT, capture_output=True
    )
    assert done.returncode == 0
    assert b"write_timestamp" in done.stdout and b"--engine" in done.stdout


def test_unknown_engine_is_a_clear_error():
    done = subprocess.run(
        [sys.executable, "-m", "dataflow.flatten", "--engine", "java"],
        cwd=ROOT,
        capture_output=True,
        input=b"",
    )
    assert done.returncode == 2
    assert b"Traceback" not in done.stderr
