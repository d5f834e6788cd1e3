"""The streaming job end to end on the real stack: Kafka (4 partitions) -> job -> Cassandra.

Expected rows are built from the same parameters the events are built from, never by calling
the flattener.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, date, datetime, timedelta

import pytest

from tests.conftest import require_rust
from tests.streaming_helpers import (
    bootstrap,
    committed_lag,
    failed_messages,
    final_counters,
    job_env,
    produce,
    run_job,
    table_rows,
)

pytestmark = pytest.mark.services

PARTITIONS = 4
BASE = datetime(2023, 1, 1, 10, 0, 0, 123000, tzinfo=UTC)
KAFKA_TS_MS = 1_700_000_000_123


def at(v: float) -> datetime:
    return BASE + timedelta(days=v)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def version_event(p: str, u: str, v: int) -> dict:
    return {
        "_id": f"{p}{u}{v}",
        "programId": p,
        "userId": u,
        "programExternalId": f"EXT-{p}",
        "programName": f"Program {p} v{v}",
        "requestForPIIConsent": v % 2 == 0,
        "userProfile": {
            "userLocations": [
                {"type": "district", "name": f"D-{u}-{v}", "id": f"d{v}", "code": 500 + v},
                {"type": "state", "name": "Karnataka", "id": "s1", "code": "29"},
            ],
            "rootOrg": {"id": f"org-{v}", "orgName": f"Org {v}"},
            "profileUserTypes": [
                {"type": "administrator", "subType": "hm"},
                {"type": "Teacher", "subType": "crp"},
            ],
            "framework": {"board": ["CBSE"]},
        },
        "createdAt": iso(BASE),
        "updatedAt": iso(at(v)),
        "deleted": False,
        "__v": v,
    }


def expected_row(p: str, u: str, v: int) -> dict:
    return {
        "program_externalid": f"EXT-{p}",
        "program_name": f"Program {p} v{v}",
        "pii_consent_required": v % 2 == 0,
        "user_locations": {
            "district_name": f"D-{u}-{v}",
            "district_id": f"d{v}",
            "district_code": str(500 + v),
            "state_name": "Karnataka",
            "state_id": "s1",
            "state_code": "29",
        },
        "organisation_id": f"org-{v}",
        "organisation_name": f"Org {v}",
        "user_type": "teacher",
        "user_sub_type": "HM,CRP",
        "created_at": BASE.date(),
        "updated_at": at(v).date(),
    }


def delete_event(p: str, u: str, when: datetime) -> dict:
    return {"programId": p, "userId": u, "deleted": True, "updatedAt": iso(when)}


REJECTIONS = [
    (b'{"programId": "p1", "userId": ', "malformed_json"),
    (b'{"programId": "p1", "userId": "u1"} trailing', "malformed_json"),
    (b'{"programId": "p1", "userId": "u1", "x": NaN}', "malformed_json"),
    (b"\xff\xfe{}", "malformed_json"),
    (None, "malformed_json"),
    (b'["p1", "u1"]', "not_an_object"),
    (b'{"userId": "u1"}', "missing_key:programId"),
    (b'{"programId": "p1", "userId": "   "}', "missing_key:userId"),
    (b'{"programId": "p1", "userId": 42}', "invalid_type:userId"),
    (
        b'{"programId": "p1", "userId": "u1", "programExternalId": {"a": 1}}',
        "invalid_type:programExternalId",
    ),
    (b'{"programId": "p1", "userId": "u1", "programName": ["x"]}', "invalid_type:programName"),
    (
        b'{"programId": "p1", "userId": "u1", "requestForPIIConsent": "yes"}',
        "invalid_type:requestForPIIConsent",
    ),
    (b'{"programId": "p1", "userId": "u1", "userProfile": "x"}', "invalid_type:userProfile"),
    (
        b'{"programId": "p1", "userId": "u1", "userProfile": {"userLocations": {}}}',
        "invalid_type:userProfile.userLocations",
    ),
    (
        b'{"programId": "p1", "userId": "u1", "userProfile": {"rootOrg": []}}',
        "invalid_type:userProfile.rootOrg",
    ),
    (
        b'{"programId": "p1", "userId": "u1", "userProfile": {"profileUserTypes": "hm"}}',
        "invalid_type:userProfile.profileUserTypes",
    ),
    (b'{"programId": "p1", "userId": "u1", "pad": "' + b"x" * 250_000 + b'"}', "too_large"),
    # Cassandra refuses partition keys over 64 KiB: the row goes to the failed topic.
    (
        json.dumps(
            {
                "programId": "k" * 70_000,
                "userId": "u1",
                "updatedAt": iso(at(1)),
                "createdAt": iso(at(1)),
            }
        ).encode(),
        "cassandra_rejected",
    ),
]


ENGINES = ("rust", "python")


@pytest.fixture(params=ENGINES)
def job(request, unique_name, cassandra_session):
    if request.param == "rust":
        require_rust()
    env = job_env(unique_name, PUI_MAX_MESSAGE_BYTES="200000", PUI_ENGINE=request.param)
    settings = bootstrap(env, PARTITIONS)
    yield env, settings
    cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}", timeout=60)


def test_stream_to_cassandra_end_to_end(job, cassandra_session):
    env, settings = job
    rng = random.Random(20231)
    records: list[tuple[int, bytes | None, int]] = []

    def add(ev, ts=KAFKA_TS_MS):
        value = ev if isinstance(ev, bytes | None) else json.dumps(ev).encode()
        records.append((rng.randrange(PARTITIONS), value, ts))

    expected: dict[tuple[str, str], tuple[dict, int]] = {}
    upserts = deletes = 0
    # Three versions of each (program, user), delivered in shuffled order over 4 partitions.
    for p in ("P1", "P2"):
        for u in ("U1", "U2", "U3", "U4"):
            for v in (1, 2, 3):
                add(version_event(p, u, v))
                upserts += 1
            expected[(p, u)] = (expected_row(p, u, 3), us(at(3)))
    # Deleted after its last version: the row is gone.
    for v in (1, 2):
        add(version_event("P1", "U5", v))
        upserts += 1
    add(delete_event("P1", "U5", at(2.5)))
    deletes += 1
    # A delete older than the latest version does not remove it.
    for v in (1, 2):
        add(version_event("P2", "U6", v))
        upserts += 1
    add(delete_event("P2", "U6", at(1.5)))
    deletes += 1
    expected[("P2", "U6")] = (expected_row("P2", "U6", 2), us(at(2)))
    # Unusable dates: null columns, write time from the Kafka message timestamp.
    bad_dates = version_event("P2", "U7", 1)
    bad_dates["updatedAt"] = "2023-02-30T10:00:00Z"
    del bad_dates["createdAt"]
    add(bad_dates)
    upserts += 1
    row = expected_row("P2", "U7", 1) | {"created_at": None, "updated_at": None}
    expected[("P2", "U7")] = (row, KAFKA_TS_MS * 1000)
    # A write time in the future is clamped to the wall clock.
    future = version_event("P2", "U8", 1)
    future["updatedAt"] = "2099-01-01T00:00:00Z"
    add(future)
    upserts += 1
    for value, _reason in REJECTIONS:
        add(value)
    rng.shuffle(records)
    produce(settings, records)

    before = time.time_ns() // 1000
    proc = run_job(env)
    after = time.time_ns() // 1000

    # The job's own account first: when a row is missing below, these say where it went.
    assert f"with the {env['PUI_ENGINE']} engine" in proc.stderr
    counters = final_counters(proc.stderr)
    want = {
        "consumed": len(records),
        "upserted": upserts,
        "deleted": deletes,
        "rejected": len(REJECTIONS),
        "invalid_date": 1,
        "failed_published": len(REJECTIONS),
    }
    assert {name: counters.get(name) for name in want} == want, proc.stderr[-3000:]
    assert committed_lag(settings) == 0

    rows = table_rows(cassandra_session, settings)
    assert ("P1", "U5") not in rows
    assert ("P2", "U8") in rows, (sorted(rows), proc.stderr[-3000:])
    future_row = rows.pop(("P2", "U8"))
    assert future_row["updated_at"] == date(2099, 1, 1)
    assert before <= future_row["wt_program_name"] <= after
    assert set(rows) == set(expected)
    for key, (want, write_time) in expected.items():
        got = rows[key]
        for column, value in want.items():
            assert got[column] == value, (key, column)
        for column in ("program_name", "user_type", "organisation_id"):
            assert got[f"wt_{column}"] == write_time, (key, column)

    # Every rejection is on the failed topic, unchanged, with its reason and source headers.
    failed = failed_messages(settings, len(REJECTIONS))
    assert len(failed) == len(REJECTIONS)
    by_value = {}
    for msg in failed:
        headers = {k: v.decode() for k, v in msg.headers()}
        assert headers["source.topic"] == settings.input_topic
        assert 0 <= int(headers["source.partition"]) < PARTITIONS
        assert int(headers["source.offset"]) >= 0
        assert headers["source.timestamp"] == str(KAFKA_TS_MS)
        assert headers["error.detail"]
        by_value.setdefault(msg.value(), []).append(headers["error.reason"])
    for value, reason in REJECTIONS:
        assert reason in by_value.get(value, []), (value[:60] if value else value, reason)

    # Replaying the whole topic with the other engine changes nothing: same cells, same stamps.
    first = table_rows(cassandra_session, settings)
    run_job(
        env
        | {
            "PUI_START_OFFSET": "earliest",
            "PUI_GROUP_ID": f"{env['PUI_ENV']}-replay",
            "PUI_ENGINE": ENGINES[1 - ENGINES.index(env["PUI_ENGINE"])],
        }
    )
    second = table_rows(cassandra_session, settings)
    clamped = ("P2", "U8")
    assert second.pop(clamped)["program_name"] == first.pop(clamped)["program_name"]
    assert second == first
