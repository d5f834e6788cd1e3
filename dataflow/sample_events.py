"""Reproducible, realistic program-user events (the shape of the seed samples) for the README
run, the tests and the benchmarks."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

STATES = [
    ("28", "Andhra Pradesh"),
    ("29", "Karnataka"),
    ("09", "Uttar Pradesh"),
    ("27", "Maharashtra"),
    ("33", "Tamil Nadu"),
]
DISTRICTS = ["ANANTAPUR", "CHITTOOR", "KURNOOL", "GUNTUR", "KRISHNA", "NELLORE", "KADAPA"]
BLOCKS = ["AGALI", "AMADAGUR", "BATHALAPALLE", "BELUGUPPA", "BOMMANAHAL", "BRAHMASAMUDRAM"]
SUBTYPES = ["hm", "crp", "chm", "meo", "deo", "brc", "teacher", "cluster_head"]
USER_TYPES = ["administrator", "teacher", "administrator", "leader"]
BOARDS = ["CBSE", "State (Andhra Pradesh)", "ICSE"]
EPOCH = datetime(2023, 1, 1, tzinfo=UTC)


def _id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _oid(rng: random.Random) -> str:
    return f"{rng.getrandbits(96):024x}"


def program_ids(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [_oid(rng) for _ in range(count)]


def user_ids(count: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [_id(rng) for _ in range(count)]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event(
    rng: random.Random,
    program_id: str,
    user_id: str,
    *,
    updated: datetime,
    size: str = "realistic",
    pii: bool | None = None,
) -> dict:
    """One event. ``size`` is ``minimal``, ``realistic`` (~2.5 KB) or ``large`` (~20 KB)."""
    created = updated - timedelta(seconds=rng.randint(0, 86400 * 30))
    base = {
        "_id": _oid(rng),
        "programId": program_id,
        "userId": user_id,
        "updatedAt": _iso(updated),
        "createdAt": _iso(created),
    }
    if size == "minimal":
        return base
    state_code, state_name = rng.choice(STATES)
    district = rng.choice(DISTRICTS)
    block = rng.choice(BLOCKS)
    district_code = f"{state_code}{rng.randint(10, 99)}"
    block_code = f"{district_code}{rng.randint(10, 99)}"
    cluster_code = f"{block_code}{rng.randint(1000, 9999)}"
    school_code = f"{cluster_code}{rng.randint(10, 99)}"
    ids = {t: _id(rng) for t in ("state", "district", "block", "cluster", "school")}
    locations = [
        {
            "code": state_code,
            "name": state_name,
            "id": ids["state"],
            "type": "state",
            "parentId": None,
        },
        {
            "code": district_code,
            "name": district,
            "id": ids["district"],
            "type": "district",
            "parentId": ids["state"],
        },
        {
            "code": block_code,
            "name": block,
            "id": ids["block"],
            "type": "block",
            "parentId": ids["district"],
        },
        {
            "code": cluster_code,
            "name": f"ZPHS {block}",
            "id": ids["cluster"],
            "type": "cluster",
            "parentId": ids["block"],
        },
        {
            "code": school_code,
            "name": f"MPPS {block} {rng.randint(1, 99)}",
            "id": ids["school"],
            "type": "school",
            "parentId": "",
        },
    ]
    rng.shuffle(locations)
    user_types = [
        {"type": rng.choice(USER_TYPES), "subType": rng.choice(SUBTYPES)}
        for _ in range(rng.randint(2, 4))
    ]
    root_org = {"id": f"01{rng.getrandbits(60):017d}"[:19], "orgName": f"{state_name} Education"}
    profile = {
        "userLocations": locations,
        "profileUserTypes": user_types,
        "rootOrg": root_org,
        "organisations": [
            {
                "organisationId": root_org["id"],
                "orgName": root_org["orgName"],
                "isSchool": False,
                "roles": ["PUBLIC"],
                "orgjoindate": "2022-06-01 10:00:00:000+0000",
            },
            {
                "organisationId": ids["school"],
                "orgName": locations[0]["name"],
                "isSchool": True,
                "roles": ["PUBLIC"],
            },
        ],
        "framework": {
            "board": [rng.choice(BOARDS)],
            "gradeLevel": ["Class 6", "Class 7"],
            "medium": ["English", "Telugu"],
            "subject": ["Mathematics", "Science"],
            "id": ["ap_k-12_1"],
        },
        "firstName": "user",
        "channel": "diksha",
        "profileLocation": [{"id": ids["state"], "type": "state"}],
    }
    if size == "large":
        profile["externalIds"] = [
            {"id": _id(rng), "idType": "declared-ext-id", "provider": _id(rng)} for _ in range(120)
        ]
        profile["badgeAssertions"] = [
            {
                "assertionId": _id(rng),
                "badgeId": _id(rng),
                "issuerId": _id(rng),
                "createdTS": rng.getrandbits(40),
            }
            for _ in range(40)
        ]
    base.update(
        {
            "deleted": False,
            "programName": f"Program {program_id[-4:].upper()}",
            "programExternalId": f"PGM-{program_id[:6]}",
            "requestForPIIConsent": rng.random() < 0.5 if pii is None else pii,
            "userRoleInformation": {
                "role": ",".join(t["subType"].upper() for t in user_types),
                "state": ids["state"],
                "district": ids["district"],
                "school": ids["school"],
            },
            "appInformation": {"appName": "Diksha", "appVersion": "5.2"},
            "userProfile": profile,
            "noOfResourcesStarted": rng.randint(0, 20),
            "__v": 0,
        }
    )
    return base


def generate(
    count: int,
    *,
    programs: int = 20,
    users: int | None = None,
    seed: int = 42,
    size: str = "realistic",
    delete_every: int = 0,
) -> list[bytes]:
    """``count`` encoded events over ``programs`` programs and ``users`` users (default: one
    per event, so every event is a distinct row). ``delete_every`` > 0 makes every n-th event
    a delete."""
    rng = random.Random(seed)
    pids = program_ids(programs, seed)
    uids = user_ids(users or count, seed + 1)
    out = []
    for i in range(count):
        pid = pids[i % programs]
        uid = uids[i % len(uids)]
        updated = EPOCH + timedelta(seconds=rng.randint(0, 86400 * 600), milliseconds=i % 1000)
        ev = event(rng, pid, uid, updated=updated, size=size)
        if delete_every and i % delete_every == delete_every - 1:
            ev["deleted"] = True
        out.append(json.dumps(ev, separators=(",", ":")).encode())
    return out
