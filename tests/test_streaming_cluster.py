"""Two Bytewax processes over a 4-partition topic, and a kill followed by a restart from
recovery: every row lands exactly as the events say."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from dataflow.sample_events import generate
from tests.streaming_helpers import ROOT, bootstrap, job_env, produce

pytestmark = pytest.mark.services

PARTITIONS = 4
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def expected_write_times(values: list[bytes]) -> dict[tuple[str, str], int]:
    """(program, user) -> updatedAt in µs, straight from the event text."""
    out = {}
    for raw in values:
        ev = json.loads(raw)
        moment = datetime.fromisoformat(ev["updatedAt"])
        out[(ev["programId"], ev["userId"])] = (moment - EPOCH) // timedelta(microseconds=1)
    return out


def start_cluster(env: dict[str, str], ports: tuple[int, int], recovery: str | None):
    addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
    args = ["-a", addresses]
    if recovery:
        args += ["-r", recovery, "-s", "1", "-b", "10"]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflow:flow", "-i", str(i), *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for i in range(len(ports))
    ]


def wait_all(procs, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(deadline - time.monotonic(), 1)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


def write_times(session, settings) -> dict[tuple[str, str], int]:
    table = f"{settings.cassandra_keyspace}.{settings.cassandra_table}"
    return {
        (r.program_id, r.user_id): r.wt
        for r in session.execute(
            f"SELECT program_id, user_id, WRITETIME(updated_at) AS wt FROM {table}", timeout=60
        )
    }


@pytest.fixture
def cluster_job(unique_name, cassandra_session):
    env = job_env(unique_name)
    settings = bootstrap(env, PARTITIONS)
    yield env, settings
    cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}", timeout=60)


def test_two_processes_land_every_row(cluster_job, cassandra_session):
    env, settings = cluster_job
    values = generate(2000, programs=8, seed=5)
    produce(settings, ((i % PARTITIONS, v, None) for i, v in enumerate(values)))
    procs = start_cluster(env, (2311, 2312), recovery=None)
    codes = wait_all(procs, timeout=240)
    assert codes == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    assert write_times(cassandra_session, settings) == expected_write_times(values)


def test_killed_process_stops_cluster_and_recovery_completes(
    cluster_job, cassandra_session, tmp_path
):
    env, settings = cluster_job
    # Enough events that the job (about 10,000 a second with the Rust engine) is still
    # running when the kill comes at 2,000 rows.
    values = generate(150_000, programs=8, seed=6, size="minimal")
    produce(settings, ((i % PARTITIONS, v, None) for i, v in enumerate(values)))
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery), "2"],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
    )
    table = f"{settings.cassandra_keyspace}.{settings.cassandra_table}"

    # Not stopping at the end of the topic: had the job drained it before the kill (a fast run,
    # a slow COUNT), process 1 would exit by itself and there would be nothing to kill.
    procs = start_cluster(env | {"PUI_STOP_AT_END": "false"}, (2321, 2322), str(recovery))
    # Kill process 1 once some rows have landed but (normally) well before the end.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        landed = cassandra_session.execute(f"SELECT COUNT(*) FROM {table}", timeout=60).one()[0]
        if landed >= 2000 or any(p.poll() is not None for p in procs):
            break
        time.sleep(0.2)
    os.killpg(procs[1].pid, signal.SIGKILL)
    codes = wait_all(procs, timeout=60)
    assert codes[1] == -signal.SIGKILL
    assert codes[0] != 0, "the surviving process must stop when its peer dies"

    procs = start_cluster(env, (2321, 2322), recovery=str(recovery))
    codes = wait_all(procs, timeout=300)
    assert codes == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    assert write_times(cassandra_session, settings) == expected_write_times(values)
