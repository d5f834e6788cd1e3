"""One table per rule of spec streaming.md sections 3 and 4, run on both engines.

Expected values are the spec's rules written out by hand for each input.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from dataflow.flatten import COLUMNS, NOT_WRITTEN, flatten_batch
from tests.conftest import require_rust

D = dt.date
BASE = {"programId": "p1", "userId": "u1"}


@pytest.fixture(params=["python", "rust"])
def engine(request) -> str:
    if request.param == "rust":
        require_rust()
    return request.param


def run(engine: str, message, max_bytes: int = 1 << 20) -> tuple:
    raw = message if isinstance(message, bytes) else json.dumps(message).encode()
    (result,) = flatten_batch([raw], engine, max_bytes=max_bytes)
    return result


def row(engine: str, message) -> dict:
    """The written columns of an upsert (not-written columns absent)."""
    result = run(engine, message)
    assert result[0] == "upsert", result
    return {c: v for c, v in zip(COLUMNS, result[1], strict=True) if v is not NOT_WRITTEN}


def reason(engine: str, message, max_bytes: int = 1 << 20) -> str:
    result = run(engine, message, max_bytes)
    assert result[0] == "reject", result
    return result[1]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Maths Week", "Maths Week"),
        ("  padded ", "  padded "),  # kept as written, not trimmed
        ("", None),
        (10, "10"),
        (True, "true"),
        (False, "false"),
        (None, None),
    ],
)
def test_text_coercion(engine, value, expected):
    got = row(engine, {**BASE, "programName": value, "programExternalId": value})
    assert got["program_name"] == expected
    assert got["program_externalid"] == expected


def test_numbers_keep_their_text_as_written(engine):
    raw = b'{"programId":"p1","userId":"u1","programName":1.50,"programExternalId":-0.0e1}'
    got = row(engine, raw)
    assert (got["program_name"], got["program_externalid"]) == ("1.50", "-0.0e1")


def test_text_missing_is_null(engine):
    got = row(engine, BASE)
    assert got["program_name"] is None
    assert got["program_externalid"] is None


@pytest.mark.parametrize("field", ["programName", "programExternalId"])
@pytest.mark.parametrize("value", [{}, [], {"a": 1}, ["x"]])
def test_text_rejects_containers(engine, field, value):
    assert reason(engine, {**BASE, field: value}) == f"invalid_type:{field}"


@pytest.mark.parametrize("key", ["programId", "userId"])
@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, "missing_key"),
        ("", "missing_key"),
        ("   ", "missing_key"),
        ("\u2003\t", "missing_key"),  # Unicode white space is blank too
        (5, "invalid_type"),
        (True, "invalid_type"),
        ({}, "invalid_type"),
        ([], "invalid_type"),
    ],
)
def test_keys(engine, key, value, code):
    assert reason(engine, {**BASE, key: value}) == f"{code}:{key}"


@pytest.mark.parametrize("key", ["programId", "userId"])
def test_absent_key_and_untrimmed_key(engine, key):
    message = dict(BASE)
    del message[key]
    assert reason(engine, message) == f"missing_key:{key}"
    got = row(engine, {**BASE, key: " k "})
    assert got["program_id" if key == "programId" else "user_id"] == " k "


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), (None, False), ("true", True), ("TRUE", True), ("False", False)],
)
def test_consent_flag(engine, value, expected):
    assert row(engine, {**BASE, "requestForPIIConsent": value})["pii_consent_required"] is expected


def test_consent_flag_missing_is_false(engine):
    assert row(engine, BASE)["pii_consent_required"] is False


@pytest.mark.parametrize("value", ["yes", 1, 0, [], {}, " true"])
def test_consent_flag_rejects(engine, value):
    assert reason(engine, {**BASE, "requestForPIIConsent": value}) == (
        "invalid_type:requestForPIIConsent"
    )


def loc(**kw) -> dict:
    return kw


@pytest.mark.parametrize(
    ("locations", "expected"),
    [
        ([], {}),
        (
            [loc(type="state", name="Karnataka", id="s1", code="29")],
            {"state_name": "Karnataka", "state_id": "s1", "state_code": "29"},
        ),
        ([loc(type="village", name=" V ")], {"village_name": " V "}),  # any type, untrimmed
        ([loc(type="block", code=28226)], {"block_code": "28226"}),
        ([loc(type="block", name="", id="  ", code=None)], {}),
        ([loc(type="block", name=True, id={}, code=[])], {}),
        ([loc(type="", name="x"), loc(type=" ", name="y"), loc(type=5, name="z")], {}),
        (["state", 5, None, [loc(type="x", name="y")]], {}),
        (
            [loc(type="district", name="A", id="d1"), loc(type="district", name="B")],
            {"district_name": "B", "district_id": "d1"},  # later element overwrites what it sets
        ),
        ([loc(type="school", name="S", parentId="p")], {"school_name": "S"}),
    ],
)
def test_user_locations(engine, locations, expected):
    got = row(engine, {**BASE, "userProfile": {"userLocations": locations}})
    assert got["user_locations"] == expected


def test_user_locations_number_text_as_written(engine):
    raw = b'{"programId":"p1","userId":"u1","userProfile":'
    raw += b'{"userLocations":[{"type":"s","code":1.50}]}}'
    assert row(engine, raw)["user_locations"] == {"s_code": "1.50"}


@pytest.mark.parametrize(
    "message",
    [
        BASE,
        {**BASE, "userProfile": None},
        {**BASE, "userProfile": {}},
        {**BASE, "userProfile": {"userLocations": None}},
    ],
)
def test_user_locations_not_written(engine, message):
    assert "user_locations" not in row(engine, message)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({**BASE, "userProfile": 5}, "invalid_type:userProfile"),
        ({**BASE, "userProfile": []}, "invalid_type:userProfile"),
        ({**BASE, "userProfile": {"userLocations": {}}}, "invalid_type:userProfile.userLocations"),
        ({**BASE, "userProfile": {"userLocations": "x"}}, "invalid_type:userProfile.userLocations"),
        ({**BASE, "userProfile": {"rootOrg": []}}, "invalid_type:userProfile.rootOrg"),
        ({**BASE, "userProfile": {"rootOrg": "o"}}, "invalid_type:userProfile.rootOrg"),
        (
            {**BASE, "userProfile": {"profileUserTypes": {}}},
            "invalid_type:userProfile.profileUserTypes",
        ),
    ],
)  # fmt: skip
def test_profile_type_rejections(engine, message, code):
    assert reason(engine, message) == code


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ({"rootOrg": {"id": "o1", "orgName": "Org"}}, ("o1", "Org")),
        ({"rootOrg": {"id": " ", "orgName": 5}}, (None, None)),
        ({"rootOrg": {}}, (None, None)),
        (
            {
                "rootOrg": None,
                "organisations": [
                    "x",
                    {"organisationId": "school", "orgName": "S", "isSchool": True},
                    {"organisationId": "o2", "orgName": " Org 2 ", "isSchool": False},
                    {"organisationId": "o3", "orgName": "O3", "isSchool": False},
                ],
            },
            ("o2", " Org 2 "),
        ),
        (
            {"rootOrg": {"id": "o1", "orgName": "Root"}, "organisations": [{"isSchool": False}]},
            ("o1", "Root"),
        ),
        ({"organisations": [{"organisationId": "o4", "isSchool": "false"}]}, None),
        ({"organisations": {"organisationId": "o5", "isSchool": False}}, None),
        ({}, None),
    ],
)
def test_organisation(engine, profile, expected):
    got = row(engine, {**BASE, "userProfile": profile})
    if expected is None:
        assert "organisation_id" not in got and "organisation_name" not in got
    else:
        assert (got["organisation_id"], got["organisation_name"]) == expected


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ([], (None, None)),
        (
            [
                {"type": "administrator", "subType": "hm"},
                {"type": "administrator", "subType": "crp"},
                {"type": "Administrator", "subType": "HM"},
                {"type": "ADMINISTRATOR", "subType": "meo"},
            ],
            ("administrator", "HM,CRP,MEO"),
        ),
        ([{"type": "teacher"}, "x"], (None, None)),  # last element not an object
        ([{"subType": " hm "}, {"type": " "}], (None, " HM ")),
        ([{"type": "T", "subType": 5}, {"type": "X", "subType": ""}], ("x", None)),
        ([{"type": 5, "subType": "a"}, {"subType": "ǆ"}], (None, "A,Ǆ")),
    ],
)
def test_user_types(engine, types, expected):
    got = row(engine, {**BASE, "userProfile": {"profileUserTypes": types}})
    assert (got["user_type"], got["user_sub_type"]) == expected


def test_user_types_not_written_when_missing(engine):
    got = row(engine, {**BASE, "userProfile": {"profileUserTypes": None}})
    assert "user_type" not in got and "user_sub_type" not in got


def micros(*args, tz=dt.UTC) -> int:
    moment = dt.datetime(*args, tzinfo=tz)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


IST = dt.timezone(dt.timedelta(hours=5, minutes=30))


@pytest.mark.parametrize(
    ("value", "date", "ts"),
    [
        ("2023-01-12T06:30:56.829Z", D(2023, 1, 12), micros(2023, 1, 12, 6, 30, 56, 829000)),
        ("2023-01-12", D(2023, 1, 12), micros(2023, 1, 12)),
        ("2023-01-12 23:59", D(2023, 1, 12), micros(2023, 1, 12, 23, 59)),
        ("2023-01-12T00:30:00+05:30", D(2023, 1, 12), micros(2023, 1, 12, 0, 30, tz=IST)),
        ("2023-01-12T00:30:00-0100", D(2023, 1, 12), micros(2023, 1, 12, 1, 30)),
        ("2023-01-12T06:30:56.123456789Z", D(2023, 1, 12), micros(2023, 1, 12, 6, 30, 56, 123456)),
        ({"$date": "2024-02-29T10:00:00Z"}, D(2024, 2, 29), micros(2024, 2, 29, 10)),
        ({"$date": {"$numberLong": "1673505056829"}}, D(2023, 1, 12), 1673505056829000),
        (1673505056829, D(2023, 1, 12), 1673505056829000),
    ],
)
def test_dates_and_write_timestamp(engine, value, date, ts):
    result = run(engine, {**BASE, "createdAt": value, "updatedAt": value})
    assert result[0] == "upsert"
    got = dict(zip(COLUMNS, result[1], strict=True))
    assert got["created_at"] == date
    assert got["updated_at"] == date
    assert result[2] == ts
    assert result[3] is False  # not an invalid date


@pytest.mark.parametrize(
    "value",
    [
        "2023-02-30",
        "2023-01-12T25:00",
        "2023-01-12T24:00",
        "2023-13-01",
        "12/01/2023",
        "2023-01-12T06:30:56.1234567890Z",
        "2023-01-12Z",
        "",
        None,
        1.5,
        True,
        {"$date": "nope"},
        {"$date": "2023-01-12", "x": 1},
    ],
)
def test_invalid_dates_are_null_and_counted(engine, value):
    result = run(engine, {**BASE, "createdAt": value, "updatedAt": value})
    assert result[0] == "upsert"
    got = dict(zip(COLUMNS, result[1], strict=True))
    assert got["created_at"] is None and got["updated_at"] is None
    assert result[2] is None  # the sink falls back to the Kafka timestamp
    assert result[3] is True


def test_missing_dates_are_invalid_dates(engine):
    result = run(engine, BASE)
    assert result[2] is None and result[3] is True


def test_delete_only_checks_keys(engine):
    result = run(
        engine,
        {**BASE, "deleted": True, "updatedAt": "2023-01-12", "userProfile": 5, "programName": {}},
    )
    assert result == ("delete", ("p1", "u1"), micros(2023, 1, 12), False)
    assert reason(engine, {"programId": "p1", "deleted": True}) == "missing_key:userId"


@pytest.mark.parametrize("value", [False, "true", 1, None])
def test_only_boolean_true_deletes(engine, value):
    assert run(engine, {**BASE, "deleted": value})[0] == "upsert"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xef\xbb\xbf" + json.dumps(BASE).encode(), "malformed_json"),  # BOM
        (b'{"programId":"p1","userId":"u1","x":NaN}', "malformed_json"),
        (b'{"programId":"p1","userId":"u1","x":Infinity}', "malformed_json"),
        (b'{"programId":"p1","userId":"u1","x":"\\ud800"}', "malformed_json"),
        (b'{"programId":"p1","userId":"u1"} x', "malformed_json"),
        (b'{"programId":"p1","userId":"u1",}', "malformed_json"),
        (b'{"programId":"p\xff","userId":"u1"}', "malformed_json"),  # not UTF-8
        (b'{"programId":"p1","userId":"u1"', "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b"null", "not_an_object"),
        (b"", "malformed_json"),
    ],
)
def test_message_level_rejections(engine, raw, code):
    assert reason(engine, raw) == code


def test_depth_limit_is_100_levels(engine):
    def nested(levels: int) -> bytes:
        # The event object is level 1; "x" holds levels 2..levels.
        inner = "[" * (levels - 1) + "]" * (levels - 1)
        return f'{{"programId":"p1","userId":"u1","x":{inner}}}'.encode()

    assert run(engine, nested(100))[0] == "upsert"
    assert reason(engine, nested(101)) == "malformed_json"


def test_surrogate_pairs_and_escapes_are_fine(engine):
    raw = b'{"programId":"p\\u00e9\\ud83d\\ude00\\n","userId":"u1"}'
    assert row(engine, raw)["program_id"] == "p\u00e9\U0001f600\n"


def test_duplicate_keys_last_wins(engine):
    raw = b'{"programId":"p1","userId":"u1","programName":"first","programName":"second"}'
    assert row(engine, raw)["program_name"] == "second"


def test_size_limit_comes_first(engine):
    raw = b'{"programId": NaN, "pad": "' + b"x" * 200 + b'"}'
    assert reason(engine, raw, max_bytes=100) == "too_large"
    assert reason(engine, raw, max_bytes=1000) == "malformed_json"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"userId": 5, "programName": []}, "missing_key:programId"),
        ({"programId": "p", "userId": 5, "programName": []}, "invalid_type:userId"),
        ({**BASE, "programExternalId": [], "programName": []}, "invalid_type:programExternalId"),
        ({**BASE, "programName": [], "requestForPIIConsent": "x"}, "invalid_type:programName"),
        (
            {**BASE, "requestForPIIConsent": "x", "userProfile": 5},
            "invalid_type:requestForPIIConsent",
        ),
        (
            {**BASE, "userProfile": {"profileUserTypes": 1, "rootOrg": 1, "userLocations": 1}},
            "invalid_type:userProfile.userLocations",
        ),
        (
            {**BASE, "userProfile": {"profileUserTypes": 1, "rootOrg": 1}},
            "invalid_type:userProfile.rootOrg",
        ),
    ],
)
def test_first_problem_in_spec_order_is_reported(engine, message, code):
    assert reason(engine, message) == code


def test_seed_sample_event(engine):
    """The sample of seed pii-report-design.txt, with the rows the spec implies."""
    event = {
        "_id": "63bfa8f173f6368ebde21bbe",
        "deleted": False,
        "programId": "5f362b78af0a4decfa9a106f",
        "programName": "$prorgramName",
        "programExternalId": "$programExternalId",
        "requestForPIIConsent": True,
        "userId": "ba9aa220-ff1b-4717-b6ea-ace55f04fc16",
        "userProfile": {
            "userLocations": [
                {"code": "2822", "name": "ANANTAPUR", "id": "2f76", "type": "district"},
                {"code": "282262", "name": "AGALI", "id": "966c", "type": "block"},
                {"code": "28", "name": "Andhra Pradesh", "id": "bc75", "type": "state"},
                {"code": "2822620004", "name": "ZPHS AGALI", "id": "beb0", "type": "cluster"},
                {"code": "28226200816", "name": "SMT P", "id": "0133", "type": "school"},
            ],
            "profileUserTypes": [
                {"type": "administrator", "subType": "hm"},
                {"type": "administrator", "subType": "crp"},
                {"type": "administrator", "subType": "chm"},
            ],
            "rootOrg": {"id": "0126796199493140480", "orgName": "Staging Custodian Organization"},
        },
        "noOfResourcesStarted": 3,
        "updatedAt": "2023-01-12T06:30:56.829Z",
        "createdAt": "2023-01-12T06:30:09.476Z",
        "__v": 0,
    }
    result = run(engine, event)
    assert result[2] == micros(2023, 1, 12, 6, 30, 56, 829000)
    assert row(engine, event) == {
        "program_id": "5f362b78af0a4decfa9a106f",
        "user_id": "ba9aa220-ff1b-4717-b6ea-ace55f04fc16",
        "program_externalid": "$programExternalId",
        "program_name": "$prorgramName",
        "pii_consent_required": True,
        "user_locations": {
            "district_name": "ANANTAPUR",
            "district_id": "2f76",
            "district_code": "2822",
            "block_name": "AGALI",
            "block_id": "966c",
            "block_code": "282262",
            "state_name": "Andhra Pradesh",
            "state_id": "bc75",
            "state_code": "28",
            "cluster_name": "ZPHS AGALI",
            "cluster_id": "beb0",
            "cluster_code": "2822620004",
            "school_name": "SMT P",
            "school_id": "0133",
            "school_code": "28226200816",
        },
        "organisation_id": "0126796199493140480",
        "organisation_name": "Staging Custodian Organization",
        "user_type": "administrator",
        "user_sub_type": "HM,CRP,CHM",
        "created_at": D(2023, 1, 12),
        "updated_at": D(2023, 1, 12),
    }
