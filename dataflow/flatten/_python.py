"""The pure-Python flattener: the reference reading of spec §1-4 and the fallback engine.

Results are exactly those of the Rust engine (``dataflow.flatten._native``); see the contract in
``dataflow/flatten/__init__.py``.
"""

from __future__ import annotations

import json
import re

from dataflow.flatten._dates import RawNumber, parse_date

MAX_DEPTH = 100
# Unicode White_Space: what "blank" means in both engines (not Python's default strip set).
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
LOCATION_ATTRIBUTES = ("name", "id", "code")
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(
    parse_float=RawNumber, parse_int=RawNumber, parse_constant=_no_constants, strict=True
)


def _check_surrogates(text: str) -> None:
    """Python's json turns a lone "\\ud800" into a lone surrogate; strict JSON rejects it."""
    pending_high_end = -1
    for m in _ESCAPE.finditer(text):
        code = int(m[1], 16) if m[1] else None
        if pending_high_end >= 0:
            if m.start() != pending_high_end or code is None or not 0xDC00 <= code <= 0xDFFF:
                raise Rejected("malformed_json", "unpaired surrogate escape")
            pending_high_end = -1
            continue
        if code is None:
            continue
        if 0xD800 <= code <= 0xDBFF:
            pending_high_end = m.end()
        elif 0xDC00 <= code <= 0xDFFF:
            raise Rejected("malformed_json", "unpaired surrogate escape")
    if pending_high_end >= 0:
        raise Rejected("malformed_json", "unpaired surrogate escape")


def _check_depth(text: str) -> None:
    if text.count("{") + text.count("[") <= MAX_DEPTH:
        return
    depth = 0
    for m in _BRACKETS.finditer(_STRINGS.sub("", text)):
        if m[0] in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise Rejected("malformed_json", f"nesting deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


def parse(raw: bytes, max_bytes: int) -> dict:
    if len(raw) > max_bytes:
        raise Rejected("too_large", f"message is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("malformed_json", f"not UTF-8 at byte {exc.start}") from None
    if text.startswith("\ufeff"):
        raise Rejected("malformed_json", "byte order mark before the JSON value")
    _check_depth(text)
    try:
        value = _decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        raise Rejected("malformed_json", str(exc)[:200]) from None
    if "\\u" in text:
        _check_surrogates(text)
    if not isinstance(value, dict):
        raise Rejected("not_an_object", f"the message is a JSON {_kind(value)}, not an object")
    return value


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, RawNumber):
        return "number"
    if value is None:
        return "null"
    return "object"


def is_blank(text: str) -> bool:
    return not text.strip(WHITESPACE)


def key_field(event: dict, name: str) -> str:
    value = event.get(name)
    if isinstance(value, str):
        if is_blank(value):
            raise Rejected(f"missing_key:{name}", f"{name} is blank")
        return value
    if value is None:
        raise Rejected(f"missing_key:{name}", f"{name} is missing or null")
    raise Rejected(f"invalid_type:{name}", f"{name} must be a string, not a {_kind(value)}")


def text(value: object, path: str) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, RawNumber):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return None
    raise Rejected(f"invalid_type:{path}", f"{path} must be text, not a {_kind(value)}")


def consent(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise Rejected(
        "invalid_type:requestForPIIConsent",
        'requestForPIIConsent must be a boolean or "true"/"false"',
    )


def plain_string(value: object) -> str | None:
    return value if isinstance(value, str) and not is_blank(value) else None


def locations(items: list) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if not isinstance(kind, str) or is_blank(kind):
            continue
        for attr in LOCATION_ATTRIBUTES:
            value = item.get(attr)
            if isinstance(value, str):
                if not is_blank(value):
                    out[f"{kind}_{attr}"] = value
            elif isinstance(value, RawNumber):
                out[f"{kind}_{attr}"] = value.text
    return out


def user_types(items: list) -> tuple[str | None, str | None]:
    user_type = None
    if items and isinstance(items[-1], dict):
        kind = items[-1].get("type")
        if isinstance(kind, str) and not is_blank(kind):
            user_type = kind.lower()
    seen: dict[str, None] = {}
    for item in items:
        if isinstance(item, dict):
            sub = item.get("subType")
            if isinstance(sub, str) and not is_blank(sub):
                seen.setdefault(sub.upper(), None)
    return user_type, ",".join(seen) or None


def organisation(profile: dict, unset) -> tuple:
    root = profile.get("rootOrg")
    if isinstance(root, dict):
        return plain_string(root.get("id")), plain_string(root.get("orgName"))
    orgs = profile.get("organisations")
    if isinstance(orgs, list):
        for org in orgs:
            if isinstance(org, dict) and org.get("isSchool") is False:
                return plain_string(org.get("organisationId")), plain_string(org.get("orgName"))
    return unset, unset


def flatten_one(raw: bytes, max_bytes: int, unset) -> tuple:
    event = parse(raw, max_bytes)
    program_id = key_field(event, "programId")
    user_id = key_field(event, "userId")
    updated = parse_date(event.get("updatedAt"))
    write_ts = updated[1] if updated else None
    if event.get("deleted") is True:
        return ("delete", (program_id, user_id), write_ts, False)

    external_id = text(event.get("programExternalId"), "programExternalId")
    name = text(event.get("programName"), "programName")
    pii = consent(event.get("requestForPIIConsent"))

    profile = event.get("userProfile")
    if profile is not None and not isinstance(profile, dict):
        raise Rejected(
            "invalid_type:userProfile", f"userProfile must be an object, not a {_kind(profile)}"
        )
    profile = profile or {}
    locs = profile.get("userLocations")
    if locs is not None and not isinstance(locs, list):
        raise Rejected(
            "invalid_type:userProfile.userLocations",
            f"userProfile.userLocations must be an array, not a {_kind(locs)}",
        )
    root = profile.get("rootOrg")
    if root is not None and not isinstance(root, dict):
        raise Rejected(
            "invalid_type:userProfile.rootOrg",
            f"userProfile.rootOrg must be an object, not a {_kind(root)}",
        )
    types = profile.get("profileUserTypes")
    if types is not None and not isinstance(types, list):
        raise Rejected(
            "invalid_type:userProfile.profileUserTypes",
            f"userProfile.profileUserTypes must be an array, not a {_kind(types)}",
        )

    org_id, org_name = organisation(profile, unset)
    user_type, sub_type = user_types(types) if types is not None else (unset, unset)
    created = parse_date(event.get("createdAt"))
    row = (
        program_id,
        user_id,
        external_id,
        name,
        pii,
        locations(locs) if locs is not None else unset,
        org_id,
        org_name,
        user_type,
        sub_type,
        created[0] if created else None,
        updated[0] if updated else None,
    )
    return ("upsert", row, write_ts, created is None or updated is None)


def flatten_batch(messages: list[bytes], max_bytes: int, unset) -> list[tuple]:
    out = []
    for raw in messages:
        try:
            out.append(flatten_one(raw, max_bytes, unset))
        except Rejected as rej:
            out.append(("reject", rej.reason, rej.detail, False))
        except Exception as exc:  # never let one message stop the batch
            out.append(("reject", "internal_error", f"{type(exc).__name__}: {exc}"[:300], False))
    return out
