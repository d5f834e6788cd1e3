"""Wall time and peak RSS of the User Detail Report for a large program (issue: exhaust).

    .venv/bin/python -m benchmarks.exhaust_bench [--users 100000] [--keep | --reuse NAME]
        [--programs pii-program,plain-program] [--sort-rows N ...] [--runs 1]

Needs the local stack. Generates, in its own keyspaces, PostgreSQL schema and Redis DB 6:
a program that requires PII consent with N enrolled users (60% ACTIVE consent, 20% REVOKED,
20% none; consenting users in the Redis cache with Sunbird-encrypted email and phone) and a
program without PII of the same size. Then times one `python -m dataflow.exhaust run --once`
per report in a fresh process and reads that process's peak RSS (VmHWM). Each ``--sort-rows``
value runs every report once with that PUI_REPORT_SORT_ROWS (``default``: the job's own).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import psycopg
import redis
from cassandra.concurrent import execute_concurrent
from cassandra.query import BatchStatement, BatchType, SimpleStatement
from Cryptodome.Cipher import AES
from Cryptodome.Util.Padding import pad

from benchmarks.e2e import hwm_mib
from dataflow import config, schema
from dataflow.cassandra_session import connect
from dataflow.exhaust import crypto, job_requests
from dataflow.exhaust.__main__ import request_data

ROOT = Path(__file__).resolve().parents[1]
SALT = "bench-salt"
CONSENT_DDL = (
    "CREATE TABLE IF NOT EXISTS {ks}.user_consent (user_id text, consumer_id text, "
    "object_id text, categories list<text>, consent_data text, consumer_type text, "
    "created_on timestamp, expiry timestamp, id text, last_updated_on timestamp, "
    "object_type text, status text, PRIMARY KEY (user_id, consumer_id, object_id))"
)


def say(msg: str) -> None:
    print(f"[exhaust-bench] {msg}", file=sys.stderr, flush=True)


def load(
    session,
    ks: str,
    uks: str,
    cache,
    users: int,
    pii_program: str,
    plain_program: str,
    start: int = 0,
):
    """``users`` users numbered from ``start``: a later call with a later start adds users
    to the same programs (other random ids)."""
    rng = random.Random(1 + start)
    insert = session.prepare(schema.insert_cql(ks, "program_enrollment"))
    # A program is one partition: its rows go in unlogged batches of one partition each,
    # one mutation for Cassandra instead of one per row (loading 1M users took 878 s).
    pii_rows: list[tuple] = []
    plain_rows: list[tuple] = []
    consent = session.prepare(
        f"INSERT INTO {uks}.user_consent (user_id, consumer_id, object_id, status, "
        "last_updated_on, object_type) VALUES (?,?,?,?,?,'Program')"
    )
    districts = [f"District {i:02d}" for i in range(30)]
    consents = []
    cached: list[tuple[str, int]] = []
    last = start + users - 1
    for n in range(start, start + users):
        uid = str(uuid.UUID(int=rng.getrandbits(128)))
        district = rng.choice(districts)
        locs = {
            "state_name": "Karnataka",
            "district_name": district,
            "block_name": f"{district} B{rng.randrange(10)}",
            "cluster_name": f"C{rng.randrange(50)}",
            "school_code": str(29_000_000 + rng.randrange(5000)),
            "school_name": f"School {rng.randrange(5000)}",
        }
        day = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(365))
        for pid, pii, rows in ((pii_program, True, pii_rows), (plain_program, False, plain_rows)):
            if pid:
                row = {"program_id": pid, "user_id": uid, "program_externalid": "PGM-1",
                       "program_name": "Program", "pii_consent_required": pii,
                       "user_locations": locs, "organisation_id": "o1",
                       "organisation_name": "Org", "user_type": "teacher",
                       "user_sub_type": "HM", "created_at": day, "updated_at": day}  # fmt: skip
                rows.append(schema.values(row))
        roll = rng.random()
        if roll < 0.8 and pii_program:
            status = "ACTIVE" if roll < 0.6 else "REVOKED"
            consents.append((uid, "c1", pii_program, status, dt.datetime(2023, 5, 1)))
            if status == "ACTIVE":
                cached.append((uid, n))
        if len(consents) >= 40_000 or n == last:
            for rows in (pii_rows, plain_rows):
                write_batches(session, insert, rows)
                rows.clear()
            write_batches(session, consent, consents, size=10)
            consents = []
            cache_users(cache, cached)
            cached = []
            say(f"loaded {n + 1:,} users")


def encrypt_many(values: list[str], salt: str) -> list[str]:
    """crypto.encrypt of many values, one AES call per round (ECB has no chaining)."""
    cipher = AES.new(crypto.SUNBIRD_KEY, AES.MODE_ECB)
    out = values
    for _ in range(crypto.ROUNDS):
        padded = [pad((salt + v).encode("utf-8"), AES.block_size) for v in out]
        sealed = cipher.encrypt(b"".join(padded))
        at, out = 0, []
        for block in padded:
            out.append(crypto._mime(sealed[at : at + len(block)]))
            at += len(block)
    return out


def cache_users(cache, cached: list[tuple[str, int]]) -> None:
    emails = encrypt_many([f"u{n}@example.org" for _, n in cached], SALT)
    phones = encrypt_many([f"9{n:09d}" for _, n in cached], SALT)
    pipe = cache.pipeline(transaction=False)
    for (uid, n), email, phone in zip(cached, emails, phones, strict=True):
        pipe.hset(
            f"user:{uid}",
            mapping={"firstname": "User", "lastname": str(n), "email": email, "phone": phone},
        )
    pipe.execute()


def write_batches(session, stmt, rows, size: int = 100) -> None:
    """Rows in unlogged batches of ``size``: rows of one partition, or (consents) of at most
    10 partitions, Cassandra's threshold for a warning about multi-partition batches."""
    batches = []
    for i in range(0, len(rows), size):
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for row in rows[i : i + size]:
            batch.add(stmt, row)
        batches.append(batch)
    # Few at once into one partition: concurrent writes to it contend in Cassandra's memtable
    # (16 at once timed out). A timed-out batch is written again (the same values).
    concurrency = 4 if size > 10 else 12
    for _attempt in range(5):
        results = execute_concurrent(
            session, [(b, ()) for b in batches], concurrency=concurrency, raise_on_first_error=False
        )
        failed = [b for b, (ok, _) in zip(batches, results, strict=True) if not ok]
        if not failed:
            return
        say(f"{len(failed)} batches timed out; writing them again")
        batches = failed
    raise RuntimeError("batches kept timing out")


def cassandra_cpu() -> float:
    """CPU seconds the local Cassandra has used so far (0 when it is not ours to read)."""
    try:
        pid = int((ROOT / "var" / "cassandra" / "pid").read_text().strip())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Run(NamedTuple):
    """One report process: what it took and what the box was doing meanwhile."""

    wall: float
    peak_mib: float
    phases: str
    sort: str
    cpu: float  # the report process, user + system
    cassandra_cpu: float  # the local Cassandra during the report
    load: float  # 1-minute load average at the end


def report(env: dict, rid: str) -> Run:
    """Wall seconds and peak RSS of one report process, and its own time per phase.

    The CPU columns say where the time went: the report process against Cassandra, which
    shares the cores; the load average says whether anything else did."""
    cpu_before, cassandra_before = children_cpu(), cassandra_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataflow.exhaust", "run", "--once", "--no-progress"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, hwm_mib(proc.pid))
        time.sleep(0.1)
    err = proc.stderr.read()
    if proc.returncode != 0 or f"request {rid}: SUCCESS" not in err:
        raise SystemExit(f"report {rid} failed:\n{err[-2000:]}")
    phases = re.search(r"\((enrolments [^)]*)\)", err)
    sort = re.search(r"sorted in (memory|\d+ runs on disk)", err)
    return Run(
        time.perf_counter() - start,
        peak,
        phases.group(1) if phases else "",
        sort.group(1) if sort else "",
        children_cpu() - cpu_before,
        cassandra_cpu() - cassandra_before,
        os.getloadavg()[0],
    )


def side_by_side(env: dict, pg, pid: str, workers: int) -> None:
    """``workers`` worker processes started at once on as many requests for ``pid``: each
    claims its own (requests with different keys are not identical, so not merged)."""
    rids = [f"{pid}-w{n}-{time.time_ns()}" for n in range(workers)]
    for n, rid in enumerate(rids):
        job_requests.submit(pg, rid, request_data(pid, []), f"pw{n}", "bench")
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dataflow.exhaust", "run", "--once", "--no-progress"],
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    ended = [0.0] * workers
    peaks = [0.0] * workers
    while not all(ended):
        for n, proc in enumerate(procs):
            if not ended[n]:
                peaks[n] = max(peaks[n], hwm_mib(proc.pid))
                if proc.poll() is not None:
                    ended[n] = time.perf_counter() - start
        time.sleep(0.1)
    print("\n| worker | requests it served | wall s | peak RSS MiB |\n|---|---|---|---|")
    for n, proc in enumerate(procs):
        err = proc.stderr.read()
        served = re.findall(r"request (\S+): SUCCESS in ([\d.]+) s", err)
        if proc.returncode != 0 or not served:
            raise SystemExit(f"worker {n} failed:\n{err[-2000:]}")
        shown = ", ".join(f"{rid} ({secs} s)" for rid, secs in served)
        print(f"| {n + 1} | {shown} | {ended[n]:.1f} | {peaks[n]:.0f} |", flush=True)
    print(f"\n{workers} requests by {workers} workers side by side: {max(ended):.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument(
        "--programs",
        default="pii-program,plain-program",
        help="the reports to time (and, when loading, the programs to load)",
    )
    parser.add_argument(
        "--sort-rows",
        action="append",
        help="PUI_REPORT_SORT_ROWS of the reports, repeatable ('default': not set)",
    )
    parser.add_argument("--runs", type=int, default=1, help="times each report is made")
    parser.add_argument(
        "--grow",
        type=int,
        default=0,
        metavar="N",
        help="with --reuse: first add N users to the programs given by --programs",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="then time this many workers side by side on as many requests (first program)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument(
        "--reuse",
        metavar="NAME",
        help="time the reports on data kept by an earlier --keep run (its NAME is printed);"
        " implies --keep",
    )
    args = parser.parse_args()
    name = args.reuse or f"xb{int(time.time())}"
    keep = args.keep or bool(args.reuse)
    ks, uks = f"ks_{name}", f"uk_{name}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/pui?options=-csearch_path%3D{name}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PUI_")},
        "PUI_POSTGRES_DSN": dsn,
        "PUI_REDIS_URL": "redis://127.0.0.1:6379/6",
        "PUI_CASSANDRA_KEYSPACE": ks,
        "PUI_USER_KEYSPACE": uks,
        "PUI_REPORT_STORE": f"/tmp/{name}",
        "PUI_ENCRYPTION_SALT": SALT,
    }
    settings = config.load(env)
    cluster, session = connect(settings, wait=60)
    cache = redis.Redis.from_url(env["PUI_REDIS_URL"])
    programs = args.programs.split(",")
    pg = None
    try:
        if args.reuse:
            # Counted by paging through the partition: count(*) of 1M rows times out.
            stmt = SimpleStatement(
                f"SELECT user_id FROM {ks}.program_enrollment WHERE program_id = %s",
                fetch_size=5000,
            )
            users = sum(1 for _ in session.execute(stmt, (programs[0],), timeout=120))
            say(f"reusing {name}: {users:,} users in {programs[0]}")
            if args.grow:
                say(f"adding {args.grow:,} users to {args.programs}")
                started = time.perf_counter()
                load(
                    session,
                    ks,
                    uks,
                    cache,
                    args.grow,
                    "pii-program" if "pii-program" in programs else "",
                    "plain-program" if "plain-program" in programs else "",
                    start=users,
                )
                say(f"added in {time.perf_counter() - started:.0f} s")
                users += args.grow
        else:
            users = args.users
            with psycopg.connect(
                "postgresql://postgres@127.0.0.1:5432/pui", autocommit=True
            ) as conn:
                conn.execute(f"CREATE SCHEMA {name}")
            session.execute(schema.keyspace_ddl(ks))
            session.execute(schema.program_enrollment_ddl(ks))
            session.execute(schema.keyspace_ddl(uks))
            session.execute(CONSENT_DDL.format(ks=uks))
            say(f"loading {users:,} users into {args.programs}")
            started = time.perf_counter()
            load(
                session,
                ks,
                uks,
                cache,
                users,
                "pii-program" if "pii-program" in programs else "",
                "plain-program" if "plain-program" in programs else "",
            )
            say(f"loaded in {time.perf_counter() - started:.0f} s")
        pg = job_requests.connect(dsn, 60)
        job_requests.init_db(pg)
        print(
            "| program | users | PUI_REPORT_SORT_ROWS | wall s | peak RSS MiB | report CPU s "
            "| Cassandra CPU s | load | sorted | phases |\n" + "|---" * 10 + "|"
        )
        for _ in range(args.runs):
            for limit in args.sort_rows or ["default"]:
                for pid in programs:
                    rid = f"{pid}-{time.time_ns()}"
                    job_requests.submit(pg, rid, request_data(pid, []), "pw", "bench")
                    run_env = dict(env)
                    if limit != "default":
                        run_env["PUI_REPORT_SORT_ROWS"] = limit
                    run = report(run_env, rid)
                    print(
                        f"| {pid} | {users:,} | {limit} | {run.wall:.1f} | {run.peak_mib:.0f} "
                        f"| {run.cpu:.1f} | {run.cassandra_cpu:.1f} | {run.load:.1f} "
                        f"| {run.sort} | {run.phases} |",
                        flush=True,
                    )
        if args.workers:
            side_by_side(env, pg, programs[0], args.workers)
    finally:
        if pg is not None:
            pg.close()
        if keep:
            say(f"data kept; time again with --reuse {name}")
        else:
            say("dropping the generated data")
            session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
            session.execute(f"DROP KEYSPACE IF EXISTS {uks}", timeout=120)
            cache.flushdb()
            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/pui") as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
            shutil.rmtree(env["PUI_REPORT_STORE"], ignore_errors=True)
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
