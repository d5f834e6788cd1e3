"""An isolated exhaust environment on the real servers, for the exhaust's test modules.

A ``World`` has its own PostgreSQL schema, Cassandra keyspaces, user-cache keys and report
store; the ``world`` and ``make_world`` fixtures of conftest.py make them and dispose of them.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

import psycopg
import pyzipper
import redis

from dataflow import schema
from dataflow.exhaust import job_requests
from dataflow.exhaust import settings as exhaust_settings
from dataflow.exhaust.runner import Worker

ROOT = Path(__file__).resolve().parents[1]
SALT = "sunbird-test-salt"
KEY = "report-pass-123"
CONSENT_DDL = (
    "CREATE TABLE IF NOT EXISTS {ks}.user_consent (user_id text, consumer_id text, "
    "object_id text, categories list<text>, consent_data text, consumer_type text, "
    "created_on timestamp, expiry timestamp, id text, last_updated_on timestamp, "
    "object_type text, status text, PRIMARY KEY (user_id, consumer_id, object_id))"
)


class World:
    """One isolated exhaust environment and helpers to fill it."""

    def __init__(self, name, session, postgres_dsn, redis_url, tmp_path, **extra_env):
        self.name = name
        self.session = session
        self.admin_dsn = postgres_dsn
        self.ks = f"ks_{name}"
        self.uks = f"uk_{name}"
        session.execute(schema.keyspace_ddl(self.ks))
        session.execute(schema.program_enrollment_ddl(self.ks))
        session.execute(schema.keyspace_ddl(self.uks))
        session.execute(CONSENT_DDL.format(ks=self.uks))
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        sep = "&" if "?" in postgres_dsn else "?"
        self.dsn = f"{postgres_dsn}{sep}options=-csearch_path%3D{name}"
        self.redis_url = redis_url.rsplit("/", 1)[0] + "/5"
        self.redis = redis.Redis.from_url(self.redis_url)
        self.cached: set[str] = set()
        self.store = tmp_path / "reports"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PUI_")},
            "PUI_POSTGRES_DSN": self.dsn,
            "PUI_REDIS_URL": self.redis_url,
            "PUI_CASSANDRA_KEYSPACE": self.ks,
            "PUI_CASSANDRA_CONSISTENCY": "ONE",
            "PUI_USER_KEYSPACE": self.uks,
            "PUI_REPORT_STORE": str(self.store),
            "PUI_ENCRYPTION_SALT": SALT,
            **extra_env,
        }
        self.pg = job_requests.connect(self.dsn, 60)
        job_requests.init_db(self.pg)
        self.insert = session.prepare(schema.insert_cql(self.ks, "program_enrollment"))
        self.consent = session.prepare(
            f"INSERT INTO {self.uks}.user_consent (user_id, consumer_id, object_id, status, "
            "last_updated_on, object_type) VALUES (?,?,?,?,?,'Program')"
        )

    def enrol(self, pid, uid, *, pii, name="Prog One", ext="PGM-1", locations=None, org="Org A",
              utype="administrator", subtype="HM", updated=dt.date(2023, 6, 1)):  # fmt: skip
        row = {"program_id": pid, "user_id": uid, "program_externalid": ext, "program_name": name,
               "pii_consent_required": pii, "user_locations": locations, "organisation_id": "o1",
               "organisation_name": org, "user_type": utype, "user_sub_type": subtype,
               "created_at": updated, "updated_at": updated}  # fmt: skip
        self.session.execute(self.insert, schema.values(row))

    def give_consent(self, uid, pid, status, when, consumer="c1"):
        self.session.execute(self.consent, (uid, consumer, pid, status, when))

    def cache(self, uid, **fields):
        self.redis.hset(f"user:{uid}", mapping=fields)
        self.cached.add(f"user:{uid}")

    def dispose(self) -> None:
        """Drop everything the world created: its user-cache keys, keyspaces and schema."""
        self.pg.close()
        if self.cached:
            self.redis.delete(*self.cached)
        self.redis.close()
        self.session.execute(f"DROP KEYSPACE IF EXISTS {self.ks}")
        self.session.execute(f"DROP KEYSPACE IF EXISTS {self.uks}")
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {self.name} CASCADE")

    def submit(self, rid, data, key=KEY, by="manager-1"):
        job_requests.submit(self.pg, rid, data, key, by)

    def row(self, rid) -> dict:
        return self.pg.execute("SELECT * FROM job_request WHERE request_id = %s", (rid,)).fetchone()

    def worker(self) -> Worker:
        return Worker(exhaust_settings.load(self.env), progress=False)

    def run_once(self) -> tuple[int, int]:
        worker = self.worker()
        try:
            return worker.run_once()
        finally:
            worker.close()

    def csv_of(self, rid, password=KEY) -> str:
        (url,) = self.row(rid)["download_urls"]
        with pyzipper.AESZipFile(url) as zf:
            if password:
                zf.setpassword(password.encode())
            (name,) = zf.namelist()
            return zf.read(name).decode("utf-8")


def ids(n: int) -> list[str]:
    return sorted(f"{i:02d}-{uuid.uuid4()}" for i in range(n))


def lines(text: str) -> list[str]:
    assert text.endswith("\r\n")
    return text.split("\r\n")[:-1]
