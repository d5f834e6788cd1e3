"""Independent baselines for the flattener benchmark: the obvious ways to write the same step.

Both produce the same row content as our engines on valid events (checked before timing), but
skip the strictness our engines pay for (depth limit, numbers as written, surrogates...):
they are what a team would write without the contract, which makes them honest opponents.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import msgspec

_EMPTY: dict = {}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def _text(v):
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else str(v)


def _date(v):
    if isinstance(v, str) and len(v) >= 10:
        try:
            return date.fromisoformat(v[:10])
        except ValueError:
            return None
    return None


def _ts(v):
    if not isinstance(v, str):
        return None
    try:
        moment = datetime.fromisoformat(v)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICRO


def _walk(pid, uid, ext, name, pii, profile, created, updated, unset):
    locations = unset
    org_id = org_name = unset
    user_type = sub_type = unset
    if profile:
        locs = profile.get("userLocations") if isinstance(profile, dict) else profile.userLocations
        if locs is not None:
            locations = {}
            for loc in locs:
                if not isinstance(loc, dict):
                    continue
                t = loc.get("type")
                if not isinstance(t, str) or not t.strip():
                    continue
                for attr in ("name", "id", "code"):
                    val = loc.get(attr)
                    if isinstance(val, str) and val.strip():
                        locations[f"{t}_{attr}"] = val
                    elif isinstance(val, int | float) and not isinstance(val, bool):
                        locations[f"{t}_{attr}"] = str(val)
        root = profile.get("rootOrg") if isinstance(profile, dict) else profile.rootOrg
        if isinstance(root, dict):
            oid, oname = root.get("id"), root.get("orgName")
            org_id = oid if isinstance(oid, str) and oid.strip() else None
            org_name = oname if isinstance(oname, str) and oname.strip() else None
        types = (
            profile.get("profileUserTypes")
            if isinstance(profile, dict)
            else profile.profileUserTypes
        )
        if types is not None:
            user_type = None
            if types and isinstance(types[-1], dict):
                t = types[-1].get("type")
                user_type = t.lower() if isinstance(t, str) and t.strip() else None
            subs: list[str] = []
            for ut in types:
                if isinstance(ut, dict):
                    s = ut.get("subType")
                    if isinstance(s, str) and s.strip():
                        s = s.upper()
                        if s not in subs:
                            subs.append(s)
            sub_type = ",".join(subs) or None
    row = (
        pid,
        uid,
        _text(ext),
        _text(name),
        bool(pii),
        locations,
        org_id,
        org_name,
        user_type,
        sub_type,
        _date(created),
        _date(updated),
    )
    return ("upsert", row, _ts(updated), False)


def stdlib_json(messages: list[bytes], unset) -> list[tuple]:
    out = []
    for raw in messages:
        try:
            ev = json.loads(raw)
        except ValueError:
            out.append(("reject", "malformed_json", "", False))
            continue
        out.append(
            _walk(
                ev.get("programId"),
                ev.get("userId"),
                ev.get("programExternalId"),
                ev.get("programName"),
                ev.get("requestForPIIConsent"),
                ev.get("userProfile") or _EMPTY,
                ev.get("createdAt"),
                ev.get("updatedAt"),
                unset,
            )
        )
    return out


class _Profile(msgspec.Struct):
    userLocations: list | None = None
    rootOrg: dict | None = None
    profileUserTypes: list | None = None


class _Event(msgspec.Struct):
    programId: str | None = None
    userId: str | None = None
    programExternalId: str | int | float | bool | None = None
    programName: str | int | float | bool | None = None
    requestForPIIConsent: bool | None = None
    userProfile: _Profile | None = None
    createdAt: str | None = None
    updatedAt: str | None = None


_decoder = msgspec.json.Decoder(_Event)


def msgspec_typed(messages: list[bytes], unset) -> list[tuple]:
    out = []
    decode = _decoder.decode
    for raw in messages:
        try:
            ev = decode(raw)
        except msgspec.DecodeError:
            out.append(("reject", "malformed_json", "", False))
            continue
        out.append(
            _walk(
                ev.programId,
                ev.userId,
                ev.programExternalId,
                ev.programName,
                ev.requestForPIIConsent,
                ev.userProfile,
                ev.createdAt,
                ev.updatedAt,
                unset,
            )
        )
    return out
