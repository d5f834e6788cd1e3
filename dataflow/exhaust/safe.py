"""Checks on what requesters send: request ids that name files, and text that reaches logs.

``job_request`` rows come from the portal (or anyone who can write to the table), so their
text is untrusted. A request id becomes part of a file name; it is accepted only from a small
safe set, so a report can never be written outside the report store. Request text shown in a
log line is escaped, so it can never end the line and forge another one.
"""

from __future__ import annotations

import re

MAX_ID = 128
# ASCII only, on purpose: [A-Za-z0-9] and not \w, which also matches other scripts' letters and
# digits that file systems and download URLs may normalise differently.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ID_RULE = (
    f"a request_id must be 1 to {MAX_ID} characters: letters a-z A-Z, digits, '.', '_' or '-', "
    "starting with a letter or digit, without '..'"
)


def id_problem(request_id: object) -> str | None:
    """Why ``request_id`` cannot name a report file, or None when it can."""
    if not isinstance(request_id, str) or not request_id:
        return f"refused: the request_id is empty ({ID_RULE})"
    if len(request_id) > MAX_ID:
        return f"refused: the request_id has {len(request_id)} characters ({ID_RULE})"
    if not _SAFE_ID.fullmatch(request_id) or ".." in request_id:
        return f"refused: the request_id has characters that cannot name a file ({ID_RULE})"
    return None


def shown(text: object, limit: int = 200) -> str:
    """``text`` for a log line: control and other non-printable characters escaped (a newline
    shows as \\n, a backslash as \\\\), and at most ``limit`` characters of it."""
    value = text if isinstance(text, str) else str(text)
    cut = len(value) - limit
    if cut > 0:
        value = value[:limit]
    # repr() escapes exactly what str.isprintable() rejects (C0, C1, DEL, U+2028, ...) and the
    # backslash, so the result is one line and an escape in it cannot be forged by the sender.
    out = repr(value)[1:-1]
    return f"{out}...(+{cut} characters)" if cut > 0 else out
