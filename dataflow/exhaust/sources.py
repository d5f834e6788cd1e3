"""Reads for one report: the program's partition, its users' consents, consenting users' PII.

Each read touches only what the report needs (spec exhaust.md §2): one Cassandra partition,
paged, as clustering ranges read at once; the consent partitions of that program's users,
concurrently; Redis hashes of the consenting users only, pipelined.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections import deque
from collections.abc import Iterator
from itertools import pairwise
from typing import NamedTuple

import redis
from cassandra.cluster import ExecutionProfile
from cassandra.query import tuple_factory

from dataflow.exhaust.filters import Predicate
from dataflow.schema import COLUMNS, check_identifier

ENROLMENT_FIELDS = COLUMNS
ENROLMENT_SELECT = ", ".join(COLUMNS)
LOCATIONS = COLUMNS.index("user_locations")
# What every consent lookup reads; a filter on another column adds that column.
CONSENT_FIELDS = ("user_id", "object_id", "status", "last_updated_on")
# The hash fields read from the user cache for a consenting user (email and phone encrypted).
CACHE_FIELDS = ("firstname", "lastname", "email", "phone")
TUPLES = "pui-exhaust-tuples"
PAGE = 5000
# Rows per page of each of the 16 ranges read at once: 16 pages are decoded and held at a time.
RANGE_PAGE = 1000
CONCURRENCY = 16
USERS_PER_QUERY = 100
REDIS_CHUNK = 1000


def plain_map(value) -> dict | None:
    """A driver map as a plain dict.

    The driver's map type serialises the key on every lookup; reports look up six location
    keys per row, which cost more than the rest of the row. Its pairs are read once instead
    (through its private list where present: the driver version is pinned).
    """
    if value is None:
        return None
    pairs = getattr(value, "_items", None)
    return dict(pairs) if isinstance(pairs, list) else dict(value)


def _user_ranges() -> list[tuple[str, tuple[str, ...]]]:
    """Clustering-key conditions that split one program's partition into parts read at once.

    Sunbird user ids are UUIDs, so cuts at the hex digits give parts of about equal size; ids
    of any other shape still fall in exactly one part (they are only less evenly spread).
    """
    cuts = "123456789abcdef"
    parts = [("user_id < ?", (cuts[0],))]
    parts += [("user_id >= ? AND user_id < ?", (lo, hi)) for lo, hi in pairwise(cuts)]
    parts.append(("user_id >= ?", (cuts[-1],)))
    return parts


def enrolments(session, keyspace: str, table: str, program_id: str) -> Iterator[tuple]:
    """Every row of the program's partition, in no particular order, as a tuple in
    ``ENROLMENT_FIELDS`` order (its location map a plain dict).

    The partition is read as 16 clustering ranges at once, one page in flight per range: a
    single paged query left the client waiting on Cassandra for each page in turn. The next
    page of a range is asked for only when its last one is taken, so at most 16 pages are held.
    """
    check_identifier(keyspace, "PUI_CASSANDRA_KEYSPACE")
    check_identifier(table, "PUI_CASSANDRA_TABLE")
    pages: queue.SimpleQueue = queue.SimpleQueue()
    futures = []
    for n, (condition, bounds) in enumerate(_user_ranges()):
        stmt = session.prepare(
            f"SELECT {ENROLMENT_SELECT} FROM {keyspace}.{table} "
            f"WHERE program_id = ? AND {condition}"
        )
        stmt.fetch_size = RANGE_PAGE
        future = session.execute_async(
            stmt, (program_id, *bounds), timeout=120, execution_profile=TUPLES
        )
        future.add_callbacks(
            lambda rows, n=n: pages.put((n, rows, None)),
            errback=lambda exc, n=n: pages.put((n, None, exc)),
        )
        futures.append(future)
    reading = len(futures)
    while reading:
        n, rows, exc = pages.get()
        if exc is not None:
            raise exc
        if futures[n].has_more_pages:
            futures[n].start_fetching_next_page()
        else:
            reading -= 1
        for row in rows:
            yield (*row[:LOCATIONS], plain_map(row[LOCATIONS]), *row[LOCATIONS + 1 :])


class Consent(NamedTuple):
    """What a report needs of a consent row; a million of them must stay small."""

    active: bool
    last_updated_on: dt.datetime | None


def _when(value) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.min


class ConsentReader:
    """The consents of users asked for one at a time, read while the caller goes on.

    Waiting for all of a report's lookups after the partition was read left the client idle
    most of that time; here the lookups of a batch are sent as its rows arrive
    (USERS_PER_QUERY users per query, CONCURRENCY queries in flight), so Cassandra answers
    them while the client decodes the partition. ``answers`` waits for everything asked so
    far and hands it over: what is held is bounded by what was asked since the last call.
    """

    def __init__(self, session, user_keyspace: str, program_id: str, predicates: list[Predicate]):
        check_identifier(user_keyspace, "PUI_USER_KEYSPACE")
        # Only the columns used: decoding rows is most of the client's time here.
        self.fields = CONSENT_FIELDS + tuple(
            dict.fromkeys(p.column for p in predicates if p.column not in CONSENT_FIELDS)
        )
        self.session = session
        self.program_id = program_id
        self.predicates = predicates
        self.stmt = session.prepare(
            f"SELECT {', '.join(self.fields)} FROM {user_keyspace}.user_consent WHERE user_id IN ?"
        )
        self.stmt.fetch_size = PAGE
        self._group: list[str] = []
        self._waiting: deque[list[str]] = deque()
        self._in_flight = 0
        self._found: dict[str, Consent] = {}
        self._error: BaseException | None = None
        self._idle = threading.Condition()

    def ask(self, user_id: str) -> None:
        self._group.append(user_id)
        if len(self._group) == USERS_PER_QUERY:
            self._send(self._group)
            self._group = []

    def answers(self) -> dict[str, Consent]:
        """user_id -> the consent for this program (the most recently updated row) of every
        user asked since the last call who has one."""
        if self._group:
            self._send(self._group)
            self._group = []
        with self._idle:
            while self._in_flight:
                self._idle.wait()
            found, self._found = self._found, {}
            error, self._error = self._error, None
        if error is not None:
            raise error
        return found

    def _send(self, group: list[str]) -> None:
        with self._idle:
            if self._in_flight >= CONCURRENCY:
                self._waiting.append(group)
                return
            self._in_flight += 1
        self._start(group)

    def _start(self, group: list[str]) -> None:
        try:
            future = self.session.execute_async(self.stmt, (group,), execution_profile=TUPLES)
        except Exception as exc:  # the driver refused at once (e.g. shut down)
            self._failed(exc)
            return
        future.add_callbacks(self._page, self._failed, callback_args=(future,))

    def _page(self, rows, future) -> None:
        # Runs on the driver's event-loop thread.
        try:
            program_id, predicates, fields = self.program_id, self.predicates, self.fields
            found = []
            for row in rows:
                consent = dict(zip(fields, row, strict=True))
                if consent["object_id"] != program_id:
                    continue
                if not all(p.test(consent) for p in predicates):
                    continue
                found.append(consent)
            with self._idle:
                for consent in found:
                    uid = consent["user_id"]
                    prev = self._found.get(uid)
                    when = consent["last_updated_on"]
                    if prev is None or _when(when) > _when(prev.last_updated_on):
                        active = (consent["status"] or "").lower() == "active"
                        self._found[uid] = Consent(active, when)
            if future.has_more_pages:
                future.start_fetching_next_page()
                return
        except Exception as exc:
            self._failed(exc)
            return
        self._next()

    def _failed(self, exc: BaseException) -> None:
        with self._idle:
            if self._error is None:
                self._error = exc
        self._next()

    def _next(self) -> None:
        with self._idle:
            if self._error is not None:
                self._waiting.clear()  # the report fails: what is left need not be read
            if self._waiting:
                group = self._waiting.popleft()
            else:
                self._in_flight -= 1
                self._idle.notify_all()
                return
        self._start(group)


# One round trip and one command per REDIS_CHUNK users: a pipeline of one HMGET per user
# costs the client more packing than the script (RESULTS.md §3), and the client's core is the
# one a report is short of. Keys are never built from input: they are the given user ids.
HMGET_ALL = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HMGET', key, unpack(ARGV))
end
return out
"""


class UserCache:
    """PII of users from the Redis user cache (Sunbird's ``user:<id>`` hashes)."""

    def __init__(self, client) -> None:
        self.client = client
        self.script = client.register_script(HMGET_ALL)
        # A Redis that refuses scripts (EVAL disabled or not granted) is read by pipeline.
        self.scripted = True

    def pii(self, user_ids: list[str]) -> dict[str, tuple]:
        """user_id -> (firstname, lastname, email, phone) as stored (email and phone
        encrypted); users missing from the cache are absent."""
        out: dict[str, tuple] = {}
        for i in range(0, len(user_ids), REDIS_CHUNK):
            chunk = user_ids[i : i + REDIS_CHUNK]
            keys = [f"user:{uid}" for uid in chunk]
            replies = None
            if self.scripted:
                try:
                    replies = self.script(keys=keys, args=CACHE_FIELDS)
                except redis.ResponseError as exc:
                    if not _refused_script(exc):
                        raise
                    self.scripted = False
            if replies is None:
                pipe = self.client.pipeline(transaction=False)
                for key in keys:
                    pipe.hmget(key, *CACHE_FIELDS)
                replies = pipe.execute()
            for uid, values in zip(chunk, replies, strict=True):
                if any(v is not None for v in values):
                    out[uid] = tuple(
                        v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values
                    )
        return out


def _refused_script(exc: redis.ResponseError) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("unknown command", "noperm", "no permissions", "disabled"))


def pii(client, user_ids: list[str]) -> dict[str, tuple]:
    """``UserCache(client).pii(user_ids)``."""
    return UserCache(client).pii(user_ids)


def add_tuple_profile(cluster, consistency: int) -> None:
    """Rows as plain tuples: a report reads up to millions of them. Routed like the
    connection's own profile (token-aware, in PUI_CASSANDRA_LOCAL_DC): a profile without a
    policy got the driver's default, which ignores the configured local data centre."""
    base = cluster.profile_manager.default
    cluster.add_execution_profile(
        TUPLES,
        ExecutionProfile(
            load_balancing_policy=base.load_balancing_policy,
            request_timeout=base.request_timeout,
            row_factory=tuple_factory,
            consistency_level=consistency,
        ),
    )
