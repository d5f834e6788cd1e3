"""Where Cassandra's CPU goes in a report's reads: the partition and the consent lookups,
issued in several ways, on data kept by ``exhaust_bench --keep`` (issue: exhaust at scale).

    .venv/bin/python -m benchmarks.consent_reads --reuse NAME [--users 200000]

Each line is one way of reading, with its wall time, this process's CPU and the local
Cassandra's CPU meanwhile (benchmarks/RESULTS.md §3). The job's own way is marked. Needs the
local stack and nothing else running, or the CPU columns mix in other work.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from collections.abc import Callable

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.murmur3 import murmur3
from cassandra.query import SimpleStatement, tuple_factory

from benchmarks.exhaust_bench import cassandra_cpu
from dataflow.exhaust import sources

PROGRAM = "pii-program"


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(label: str, read: Callable[[], int]) -> None:
    cpu, cassandra, start = own_cpu(), cassandra_cpu(), time.perf_counter()
    rows = read()
    print(
        f"| {label} | {rows:,} | {time.perf_counter() - start:.1f} "
        f"| {own_cpu() - cpu:.1f} | {cassandra_cpu() - cassandra:.1f} |",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reuse", required=True, metavar="NAME", help="data of exhaust_bench")
    parser.add_argument("--users", type=int, default=200_000, help="users per consent variant")
    args = parser.parse_args()
    ks, uks = f"ks_{args.reuse}", f"uk_{args.reuse}"
    profile = ExecutionProfile(row_factory=tuple_factory, request_timeout=120)
    cluster = Cluster(
        ["127.0.0.1"],
        execution_profiles={EXEC_PROFILE_DEFAULT: profile, sources.TUPLES: profile},
    )
    session = cluster.connect()
    try:
        stmt = SimpleStatement(
            f"SELECT user_id FROM {ks}.program_enrollment WHERE program_id = %s", fetch_size=5000
        )
        users = [row[0] for row in session.execute(stmt, (PROGRAM,), timeout=120)]
        random.Random(3).shuffle(users)
        print("| read | rows | wall s | client CPU s | Cassandra CPU s |\n|---|---|---|---|---|")

        def partition(page: int) -> Callable[[], int]:
            def read() -> int:
                sources.RANGE_PAGE = page
                return sum(
                    1 for _ in sources.enrolments(session, ks, "program_enrollment", PROGRAM)
                )

            return read

        def lookups(ids: list[str], per_query: int, in_flight: int) -> Callable[[], int]:
            where = "user_id IN ?" if per_query > 1 else "user_id = ?"
            query = session.prepare(
                f"SELECT user_id, object_id, status, last_updated_on FROM {uks}.user_consent "
                f"WHERE {where}"
            )
            query.fetch_size = sources.PAGE
            if per_query > 1:
                params = [(ids[i : i + per_query],) for i in range(0, len(ids), per_query)]
            else:
                params = [(uid,) for uid in ids]

            def read() -> int:
                results = execute_concurrent_with_args(
                    session, query, params, concurrency=in_flight, results_generator=True
                )
                found = 0
                for ok, result in results:
                    if not ok:
                        raise result
                    found += sum(1 for _ in result)
                return found

            return read

        def scan() -> int:
            every = SimpleStatement(
                f"SELECT user_id, object_id, status, last_updated_on FROM {uks}.user_consent",
                fetch_size=5000,
            )
            return sum(1 for _ in session.execute(every, timeout=120))

        n = args.users
        # Fresh users for each variant: none is served from a cache warmed by another.
        parts = [users[i * n : (i + 1) * n] for i in range(len(users) // n)]
        if len(parts) < 5:
            raise SystemExit(f"need {5 * n:,} users, the program has {len(users):,}")
        by_token = sorted(parts[3], key=lambda uid: murmur3(uid.encode()))
        job = (sources.USERS_PER_QUERY, sources.CONCURRENCY)
        page = sources.RANGE_PAGE
        measure(f"partition, {page}-row pages (the job)", partition(page))
        measure("partition, 5000-row pages", partition(5000))
        measure(f"consents, IN of {job[0]}, {job[1]} in flight (the job)", lookups(parts[0], *job))
        measure("consents, IN of 500, 8 in flight", lookups(parts[1], 500, 8))
        measure("consents, one query per user, 128 in flight", lookups(parts[2], 1, 128))
        measure(f"consents, IN of {job[0]} sorted by token", lookups(by_token, *job))
        measure(f"consents, IN of {job[0]}, 4 in flight", lookups(parts[4], job[0], 4))
        measure("full scan of user_consent", scan)
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
