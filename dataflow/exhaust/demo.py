"""``python -m dataflow.exhaust seed-demo``: everything a first report needs, on a local stack.

Creates what the exhaust reads when it is missing (``job_request``, the enrolment table, the
``user_consent`` table and their keyspaces), fills them with one sample program: enrolments
with locations, consents (given, revoked, absent) and users in the Redis user cache with their
email and phone encrypted the Sunbird way under ``PUI_ENCRYPTION_SALT``, then submits a request
for the program's report and prints its request_id. Re-running it rewrites the same sample
users (their ids derive from the program id) and submits a new request.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import sys
import uuid
from urllib.parse import urlsplit

import redis
from cassandra.concurrent import execute_concurrent_with_args

from dataflow import schema
from dataflow.cassandra_session import connect as cassandra_connect
from dataflow.exhaust import archive, crypto, job_requests, safe
from dataflow.exhaust.settings import ExhaustSettings

# spec exhaust.md §2: Sunbird's table, created only when it does not exist.
USER_CONSENT_DDL = (
    "CREATE TABLE IF NOT EXISTS {ks}.user_consent (user_id text, consumer_id text, "
    "object_id text, categories list<text>, consent_data text, consumer_type text, "
    "created_on timestamp, expiry timestamp, id text, last_updated_on timestamp, "
    "object_type text, status text, PRIMARY KEY (user_id, consumer_id, object_id))"
)
FIRST = ("Asha", "Bala", "Chitra", "Deepak", "Esha", "Farhan", "Gita", "Hari", "Indu", "Jaya")
LAST = ("Rao", "Iyer", "Khan", "Nair", "Patil", "Reddy", "Singh", "", "Das", "Menon")
DISTRICTS = (
    ("Bengaluru", "North", "29001", "GHS Hebbal"),
    ("Mysuru", "Hunsur", "29102", "GHPS Hunsur"),
    ("Belagavi", "Athani", "29203", "GHS Athani"),
)
LOCAL = ("localhost", "")


def _local(host: str) -> bool:
    if host in LOCAL:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def user_ids(program_id: str, n: int) -> list[str]:
    """The demo's user ids: UUIDs like Sunbird's, the same for a program at every run."""
    space = uuid.uuid5(uuid.NAMESPACE_URL, f"program-user-info-demo:{program_id}")
    return [str(uuid.uuid5(space, str(i))) for i in range(n)]


def main(conf: ExhaustSettings, args) -> int:
    def refuse(message: str, code: int = 2) -> int:
        print(f"program-user-info exhaust: seed-demo: {message}", file=sys.stderr)
        return code

    if not 1 <= args.users <= 10_000:
        return refuse("--users must be between 1 and 10000")
    if not conf.salt:
        return refuse(
            "PUI_ENCRYPTION_SALT is not set: the demo encrypts email and phone with it, as "
            "Sunbird does, and run needs the same value (any text will do for a demo)"
        )
    hosts = [*conf.cassandra.cassandra_hosts, urlsplit(conf.redis_url).hostname or ""]
    if not args.force and not all(_local(h) for h in hosts):
        return refuse(
            "Cassandra or Redis is not on this machine; seed-demo writes sample users into "
            "them: pass --force if that is really meant"
        )
    problem = archive.key_problem(args.encryption_key, conf.security_level, conf.zip_encryption)
    if not args.no_request and problem is not None:
        return refuse(f"--encryption-key: {problem}")
    pid = args.program_id
    if safe.id_problem(pid) is not None:
        return refuse("--program-id: use letters, digits, '.', '_' or '-'")

    rng = random.Random(pid)
    users = user_ids(pid, args.users)
    today = dt.date.today()
    enrolments, consents, cached = [], [], {}
    for n, uid in enumerate(users):
        district, block, school_code, school = DISTRICTS[n % len(DISTRICTS)]
        locations = {
            "state_name": "Karnataka",
            "district_name": district,
            "block_name": block,
            "cluster_name": f"{block} C{n % 4 + 1}",
            "school_code": school_code,
            "school_name": school,
        }
        if n % 10 == 9:
            locations = None  # kept in the report with blank location cells
        row = {"program_id": pid, "user_id": uid, "program_externalid": "PGM-DEMO",
               "program_name": "Demo Program", "pii_consent_required": True,
               "user_locations": locations, "organisation_id": "org-demo",
               "organisation_name": "Demo Education Department", "user_type": "administrator",
               "user_sub_type": rng.choice(["HM", "CRP", "BRP"]), "created_at": today,
               "updated_at": today}  # fmt: skip
        enrolments.append(schema.values(row))
        roll = rng.random()
        if roll < 0.8:
            status = "ACTIVE" if roll < 0.6 else "REVOKED"
            when = dt.datetime(2024, 1, 1) + dt.timedelta(minutes=rng.randrange(500_000))
            consents.append((uid, "org-demo", pid, status, when))
        if n % 7 != 6:  # a few users are not in the cache: blank PII, consent still shown
            first, last = FIRST[n % len(FIRST)], LAST[(n * 3) % len(LAST)]
            cached[uid] = {
                "firstname": first,
                "lastname": last,
                "email": crypto.encrypt(f"{first.lower()}.{n}@example.org", conf.salt),
                "phone": crypto.encrypt(f"9{rng.randrange(10**9):09d}", conf.salt),
            }

    try:
        rid = _seed(conf, args, enrolments, consents, cached)
    except ConnectionError as exc:  # Cassandra, after PUI_STORE_WAIT
        return refuse(str(exc), 1)
    except redis.RedisError as exc:
        return refuse(f"the user cache (Redis): {type(exc).__name__}: {exc}", 1)
    print(
        f"seeded program {pid}: {len(users)} enrolments, {len(consents)} consents, "
        f"{len(cached)} users in the user cache",
        file=sys.stderr,
    )
    if rid is None:
        return 0
    print(rid)
    print(
        "next: python -m dataflow.exhaust run --once, then: "
        f"python -m dataflow.exhaust status {rid} (the zip's password is --encryption-key, "
        "by default demo-password)",
        file=sys.stderr,
    )
    return 0


def _seed(conf: ExhaustSettings, args, enrolments, consents, cached) -> str | None:
    """Create and fill; returns the request_id submitted, if any."""
    pid = args.program_id
    conn = job_requests.connect(conf.postgres_dsn, conf.processing_timeout)
    with conn:
        job_requests.init_db(conn)
        c = conf.cassandra
        cluster, session = cassandra_connect(c, wait=conf.store_wait)
        try:
            for ddl in (
                schema.keyspace_ddl(c.cassandra_keyspace, c.cassandra_replication),
                schema.program_enrollment_ddl(c.cassandra_keyspace, c.cassandra_table),
                schema.keyspace_ddl(conf.user_keyspace, c.cassandra_replication),
                USER_CONSENT_DDL.format(ks=conf.user_keyspace),
            ):
                session.execute(ddl, timeout=60)
            insert = session.prepare(schema.insert_cql(c.cassandra_keyspace, c.cassandra_table))
            give = session.prepare(
                f"INSERT INTO {conf.user_keyspace}.user_consent (user_id, consumer_id, "
                "object_id, status, last_updated_on, object_type) VALUES (?,?,?,?,?,'Program')"
            )
            for stmt, rows in ((insert, enrolments), (give, consents)):
                for ok, result in execute_concurrent_with_args(session, stmt, rows, 32):
                    if not ok:
                        raise result
        finally:
            cluster.shutdown()
        cache = redis.Redis.from_url(conf.redis_url, socket_connect_timeout=10)
        try:
            pipe = cache.pipeline(transaction=False)
            for uid, fields in cached.items():
                pipe.hset(f"user:{uid}", mapping=fields)
            pipe.execute()
        finally:
            cache.close()
        if args.no_request:
            return None
        rid = uuid.uuid4().hex
        from dataflow.exhaust.__main__ import request_data

        job_requests.submit(
            conn, rid, request_data(pid, []), args.encryption_key, "seed-demo", "demo"
        )
    return rid
