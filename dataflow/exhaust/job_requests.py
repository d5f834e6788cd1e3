"""The ``job_request`` table: claiming work atomically and recording what happened.

A worker claims a request (and every identical pending one) in one transaction with
``FOR UPDATE SKIP LOCKED``, so two workers never take the same row, and holds a PostgreSQL
advisory lock per claimed request on its own session while it works. A PROCESSING row whose
lock is free belongs to a worker that died: its session ended, so the server released the lock.
The worker's session sets TCP keepalives from ``PUI_PROCESSING_TIMEOUT``, so the server also
ends the session of a worker whose machine vanished within about that time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

JOB_ID = "program-user-exhaust"
MAX_ITERATIONS = 3
ERR_MAX = 300
DDL = """CREATE TABLE IF NOT EXISTS job_request (
  tag TEXT, request_id TEXT PRIMARY KEY, job_id TEXT, status TEXT, request_data json,
  requested_by TEXT, requested_channel TEXT, dt_job_submitted TIMESTAMP, download_urls TEXT[],
  dt_file_created TIMESTAMP, dt_job_completed TIMESTAMP, execution_time BIGINT, err_message TEXT,
  iteration INT, encryption_key TEXT, processed_batches TEXT)"""
# One key space for our advisory locks: (class id, hash of the request id).
LOCK_CLASS = 0x50554931  # "PUI1"

# A PROCESSING row is orphaned when nobody holds its advisory lock. CASE fixes the order of
# evaluation, so a lock taken to test it is always given back.
ORPHANED = """CASE WHEN status = 'PROCESSING' THEN
    CASE WHEN pg_try_advisory_lock(%(cls)s, hashtext(request_id))
         THEN pg_advisory_unlock(%(cls)s, hashtext(request_id)) ELSE false END
    ELSE false END"""
PENDING = f"""job_id = %(job)s AND COALESCE(iteration, 0) < %(max)s AND (
    status IN ('SUBMITTED', 'FAILED') OR {ORPHANED})"""


@dataclass
class Claim:
    request_id: str
    request_data: Any
    encryption_key: str | None
    requested_by: str | None
    iteration: int
    duplicates: list[str]

    @property
    def all_ids(self) -> list[str]:
        return [self.request_id, *self.duplicates]


def connect(dsn: str, keepalive_seconds: int) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True, row_factory=dict_row, connect_timeout=10)
    idle = max(keepalive_seconds // 3, 1)
    conn.execute(
        f"SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {idle}; "
        "SET tcp_keepalives_count = 2"
    )
    return conn


def init_db(conn: psycopg.Connection) -> None:
    conn.execute(DDL)
    conn.execute("CREATE INDEX IF NOT EXISTS job_request_pending ON job_request (job_id, status)")


def has_pending(conn: psycopg.Connection) -> bool:
    """Whether a request waits (so a worker connects to its stores only when there is work)."""
    args = {"job": JOB_ID, "max": MAX_ITERATIONS, "cls": LOCK_CLASS}
    return (
        conn.execute(f"SELECT 1 FROM job_request WHERE {PENDING} LIMIT 1", args).fetchone()
        is not None
    )


def claim(conn: psycopg.Connection, skip: set[str] | frozenset = frozenset()) -> Claim | None:
    """Take the oldest pending request and its identical twins; None when there is none.
    ``skip``: requests this run already attempted (a retry waits for the next run)."""
    args = {"job": JOB_ID, "max": MAX_ITERATIONS, "cls": LOCK_CLASS, "skip": list(skip)}
    # Orphans out of attempts end here, or they would stay PROCESSING for ever.
    conn.execute(
        "UPDATE job_request SET status = 'FAILED', err_message = 'the worker processing this "
        "request stopped; no attempts left', dt_job_completed = now() AT TIME ZONE 'UTC' "
        f"WHERE job_id = %(job)s AND COALESCE(iteration, 0) >= %(max)s AND {ORPHANED}",
        args,
    )
    with conn.transaction():
        row = conn.execute(
            f"SELECT request_id, request_data::text AS data, encryption_key, requested_by, "
            f"COALESCE(iteration, 0) AS iteration FROM job_request WHERE {PENDING} "
            "AND request_id <> ALL(%(skip)s) "
            "ORDER BY dt_job_submitted NULLS FIRST, request_id LIMIT 1 FOR UPDATE SKIP LOCKED",
            args,
        ).fetchone()
        if row is None:
            return None
        twins = conn.execute(
            f"SELECT request_id FROM job_request WHERE {PENDING} AND request_id <> %(id)s "
            "AND request_data::text IS NOT DISTINCT FROM %(data)s "
            "AND encryption_key IS NOT DISTINCT FROM %(key)s "
            "AND requested_by IS NOT DISTINCT FROM %(by)s FOR UPDATE SKIP LOCKED",
            {
                **args,
                "id": row["request_id"],
                "data": row["data"],
                "key": row["encryption_key"],
                "by": row["requested_by"],
            },
        ).fetchall()
        ids = [row["request_id"], *(t["request_id"] for t in twins)]
        for rid in ids:
            conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, rid))
        conn.execute(
            "UPDATE job_request SET status = 'PROCESSING', "
            "iteration = COALESCE(iteration, 0) + 1, err_message = NULL "
            "WHERE request_id = ANY(%s)",
            (ids,),
        )
    data = row["data"]
    try:
        parsed = json.loads(data) if data is not None else None
    except ValueError:
        parsed = data
    return Claim(
        row["request_id"],
        parsed,
        row["encryption_key"],
        row["requested_by"],
        row["iteration"] + 1,
        ids[1:],
    )


def status(conn: psycopg.Connection, request_id: str) -> dict | None:
    """What ``status`` shows of a request's row; None when there is no such request."""
    return conn.execute(
        "SELECT request_id, status, iteration, download_urls, err_message, execution_time "
        "FROM job_request WHERE request_id = %s",
        (request_id,),
    ).fetchone()


def release(conn: psycopg.Connection, claim_: Claim) -> None:
    for rid in claim_.all_ids:
        conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_CLASS, rid))


def succeed(conn: psycopg.Connection, claim_: Claim, url: str, millis: int) -> None:
    conn.execute(
        "UPDATE job_request SET status = 'SUCCESS', download_urls = %s, "
        "dt_file_created = now() AT TIME ZONE 'UTC', dt_job_completed = now() AT TIME ZONE 'UTC', "
        "execution_time = %s, err_message = '' WHERE request_id = ANY(%s)",
        ([url], millis, claim_.all_ids),
    )


def fail(conn: psycopg.Connection, claim_: Claim, message: str, millis: int) -> None:
    conn.execute(
        "UPDATE job_request SET status = 'FAILED', err_message = %s, "
        "dt_job_completed = now() AT TIME ZONE 'UTC', execution_time = %s "
        "WHERE request_id = ANY(%s)",
        (message[:ERR_MAX], millis, claim_.all_ids),
    )


def submit(
    conn: psycopg.Connection,
    request_id: str,
    request_data: dict | None,
    encryption_key: str | None,
    requested_by: str,
    channel: str = "",
) -> None:
    conn.execute(
        "INSERT INTO job_request (tag, request_id, job_id, status, request_data, requested_by, "
        "requested_channel, dt_job_submitted, encryption_key, iteration) VALUES "
        "(%s, %s, %s, 'SUBMITTED', %s, %s, %s, now() AT TIME ZONE 'UTC', %s, 0)",
        (
            f"{JOB_ID}:{requested_by}",
            request_id,
            JOB_ID,
            None if request_data is None else json.dumps(request_data),
            requested_by,
            channel,
            encryption_key,
        ),
    )
