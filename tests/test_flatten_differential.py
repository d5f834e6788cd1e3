"""Differential property test: the Rust engine and the Python reference agree on every input.

Valid-looking events built from the contract's fields (random text, numbers, dates in many
forms, missing fields, wrong types) and corrupted bytes (truncations, byte flips, insertions of
JSON punctuation, escapes, invalid UTF-8, deep nesting). Outcomes must be equal, except that a
rejection's free-text detail may differ: its reason code may not. Under CI=true at least 10,000
examples run.
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.flatten import NOT_WRITTEN, engine_function
from tests.conftest import IN_CI, require_rust

EXAMPLES = int(os.environ.get("PUI_DIFF_EXAMPLES", "10000" if IN_CI else "1000"))
LIMIT = 4096  # small, so that the size rule is exercised too

text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12
) | st.sampled_from(["", " ", "\u2003", "true", "False", "ÉCOLE", "ß", "ǅ", "İ", "\u0130x"])
dates = st.one_of(
    st.sampled_from(
        [
            "2023-01-12T06:30:56.829Z",
            "2023-01-12",
            "2023-02-29",
            "2024-02-29T00:00:00+05:30",
            "2023-01-01T24:00",
            "2023-01-01T10:00:00.1234567891",
            "0000-01-01",
            "9999-12-31T23:59:59Z",
            "2023-13-01",
            " 2023-01-01",
            "2023-01-01T00:00+0530",
            "",
        ]
    ),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.fixed_dictionaries({"$date": st.sampled_from(["2023-01-12T06:30:56Z", "x", 1673505056000])}),
    st.fixed_dictionaries(
        {"$date": st.fixed_dictionaries({"$numberLong": st.sampled_from(["1673505056000", "x"])})}
    ),
    text,
    st.none(),
    st.booleans(),
)
scalar = st.one_of(text, st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))
location = st.dictionaries(
    st.sampled_from(["type", "name", "id", "code", "parentId"]),
    st.one_of(
        st.sampled_from(["state", "district", "block", "cluster", "school", "", " "]), scalar
    ),
)
user_type = st.dictionaries(
    st.sampled_from(["type", "subType"]),
    st.one_of(st.sampled_from(["administrator", "hm", "crp", "HM", "ǅ", ""]), scalar),
)
org = st.dictionaries(
    st.sampled_from(["organisationId", "orgName", "isSchool", "roles"]),
    st.one_of(scalar, st.just(False), st.just(["PUBLIC"])),
)
profile = st.dictionaries(
    st.sampled_from(["userLocations", "profileUserTypes", "rootOrg", "organisations", "other"]),
    st.one_of(
        st.lists(location, max_size=6),
        st.lists(user_type, max_size=4),
        st.lists(org, max_size=3),
        st.dictionaries(st.sampled_from(["id", "orgName"]), scalar),
        scalar,
    ),
)
event = st.dictionaries(
    st.sampled_from(
        [
            "programId",
            "userId",
            "programExternalId",
            "programName",
            "requestForPIIConsent",
            "createdAt",
            "updatedAt",
            "deleted",
            "userProfile",
            "noise",
        ]
    ),
    st.one_of(text, dates, profile, scalar, st.lists(scalar, max_size=3)),
).map(lambda d: {"programId": "p", "userId": "u", **d} if len(d) % 3 else d)


@st.composite
def corrupted(draw) -> bytes:
    raw = bytearray(json.dumps(draw(event), ensure_ascii=draw(st.booleans())).encode())
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        kind = draw(st.integers(0, 5))
        if kind == 0 and raw:
            raw[at] = draw(st.integers(0, 255))
        elif kind == 1:
            del raw[at : at + draw(st.integers(1, 30))]
        elif kind == 2:
            raw[at:at] = draw(
                st.sampled_from(
                    [b'"', b"\\", b"{", b"[", b",", b":", b"\\ud800", b"\\udc00\\ud800", b"\xff",
                     b"\xed\xa0\x80", b"NaN", b"-0", b"1e999", b'"programId":"q",', b"\x00"]
                )
            )  # fmt: skip
        elif kind == 3:
            depth = draw(st.integers(95, 105))
            raw[at:at] = b"[" * depth + b"]" * depth
        elif kind == 4:
            raw = raw[:at]
        else:
            raw += b" " * draw(st.integers(0, 3)) + draw(st.sampled_from([b"", b"x", b"{}"]))
    return bytes(raw)


messages = st.lists(
    st.one_of(event.map(lambda e: json.dumps(e).encode()), corrupted(), st.binary(max_size=64)),
    min_size=1,
    max_size=8,
)


def comparable(results):
    return [r if r[0] != "reject" else (r[0], r[1]) for r in results]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(batch=messages)
def test_rust_and_python_agree(batch):
    require_rust()
    rust = engine_function("rust")
    python = engine_function("python")
    assert comparable(rust(batch, LIMIT, NOT_WRITTEN)) == comparable(
        python(batch, LIMIT, NOT_WRITTEN)
    )


def test_rust_engine_is_there():
    require_rust()
    assert engine_function("rust") is not engine_function("python")
