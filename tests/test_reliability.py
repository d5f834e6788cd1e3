"""Nothing lost, never stuck: the streaming job under faults, on the real stack.

Every scenario reads the same input (versions of the same rows in several partitions, deletes)
and must end with exactly the table of a clean run of that input, row for row, write times
included. The clean run uses the Python engine (the reference) and the scenarios the Rust
engine, so each scenario is also a differential test of the two engines under that fault.
Servers are stopped and started with the project's own `scripts/services`, always brought back
up, one at a time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from dataflow import config
from dataflow.kafka_admin import ensure_topic
from dataflow.sample_events import generate
from tests.streaming_helpers import (
    ROOT,
    bootstrap,
    committed_lag,
    failed_messages,
    final_counters,
    job_env,
    produce,
    run_job,
    table_rows,
)

pytestmark = pytest.mark.services

PARTITIONS = 4
EVENTS = int(os.environ.get("PUI_RELIABILITY_EVENTS", "50000"))
SERVICES = str(ROOT / "scripts" / "services")


def services(*args: str) -> None:
    done = subprocess.run([SERVICES, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def spread(values: list[bytes]) -> list[tuple[int, bytes, None]]:
    """Round-robin over the partitions, so versions of one row sit in different partitions."""
    return [(i % PARTITIONS, v, None) for i, v in enumerate(values)]


@pytest.fixture(scope="module")
def source(kafka_brokers, cassandra_session):
    """One input topic for every scenario, and the table of a clean run over it."""
    name = f"rel{os.getpid()}{int(time.time()) % 100000}"
    env = job_env(name, PUI_ENGINE="python")
    settings = bootstrap(env, PARTITIONS)
    # Half as many users as events (a multiple of the 20 programs): every row has two versions
    # with different updatedAt; every 40th event is a delete.
    values = generate(EVENTS, programs=20, users=EVENTS // 2, seed=5, delete_every=40)
    produce(settings, spread(values))
    run_job(env, timeout=600)
    clean = table_rows(cassandra_session, settings)
    assert len(clean) > EVENTS // 3
    yield {"name": name, "topic": settings.input_topic, "values": values, "clean": clean}
    # Every scenario's keyspace starts with the clean run's: leftovers fill Cassandra's heap.
    for row in cassandra_session.execute("SELECT keyspace_name FROM system_schema.keyspaces"):
        if row.keyspace_name.startswith(settings.cassandra_keyspace):
            cassandra_session.execute(f"DROP KEYSPACE {row.keyspace_name}", timeout=120)


def scenario_env(source, label: str, **extra: str) -> tuple[dict, config.Settings]:
    env = job_env(
        f"{source['name']}{label}",
        PUI_INPUT_TOPIC=source["topic"],
        PUI_LOG_INTERVAL="1",
        **({"PUI_ENGINE": "rust"} | extra),
    )
    return env, bootstrap(env, PARTITIONS)


def start_job(env: dict, recovery: str | None = None) -> subprocess.Popen:
    args = ["-r", recovery, "-s", "1", "-b", "10"] if recovery else []
    return subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflow:flow", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_progress(settings: config.Settings, done: int, job: subprocess.Popen) -> None:
    """Until at least ``done`` events are written and committed."""
    deadline = time.monotonic() + 300
    while EVENTS - committed_lag(settings) < done:
        assert job.poll() is None, job.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.2)


def finish(job: subprocess.Popen, timeout: float = 600) -> str:
    try:
        _out, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        raise
    assert job.returncode == 0, err[-4000:]
    assert "Traceback" not in err, err[-4000:]
    return err


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def assert_same_table(session, settings, clean) -> None:
    got = table_rows(session, settings)
    assert got.keys() == clean.keys()
    different = [k for k in clean if got[k] != clean[k]]
    assert not different, (different[:3], got[different[0]], clean[different[0]])


def test_kill_9_at_half_then_restart_from_recovery(source, cassandra_session, tmp_path):
    env, settings = scenario_env(source, "kill")
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery), str(PARTITIONS)], check=True
    )
    job = start_job(env, str(recovery))
    wait_progress(settings, EVENTS // 2, job)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert committed_lag(settings) > 0, "the job finished before it could be killed"

    err = finish(start_job(env, str(recovery)))
    assert final_counters(err)["consumed"] < EVENTS  # it resumed, it did not start over
    assert_same_table(cassandra_session, settings, source["clean"])
    assert committed_lag(settings) == 0


def test_cassandra_down_30s_job_waits_and_finishes(source, cassandra_session):
    env, settings = scenario_env(source, "cass")
    job = start_job(env)
    wait_progress(settings, EVENTS // 5, job)
    services("down", "cassandra")
    try:
        before = cpu_seconds(job.pid)
        time.sleep(30)
        spent = cpu_seconds(job.pid) - before
        assert job.poll() is None, job.stderr.read()[-3000:]
    finally:
        services("up", "cassandra")
    err = finish(job)
    # Waiting is not spinning: well under a core for the 30 s outage.
    assert spent < 10, f"{spent:.1f} CPU seconds while Cassandra was down"
    counters = final_counters(err)
    assert counters["cassandra_retries"] > 0
    assert counters["upserted"] + counters["deleted"] == EVENTS
    assert_same_table(cassandra_session, settings, source["clean"])


def test_kafka_restart_mid_stream(source, cassandra_session):
    env, settings = scenario_env(source, "kafka")
    job = start_job(env)
    wait_progress(settings, EVENTS // 5, job)
    services("down", "kafka")
    try:
        time.sleep(5)
        assert job.poll() is None, job.stderr.read()[-3000:]
    finally:
        services("up", "kafka")
    finish(job)
    assert_same_table(cassandra_session, settings, source["clean"])
    assert committed_lag(settings) == 0


def test_every_event_twice_shuffled_ends_as_latest_state(source, cassandra_session):
    env = job_env(f"{source['name']}dup")
    settings = bootstrap(env, PARTITIONS)
    twice = source["values"] * 2
    random.Random(9).shuffle(twice)
    produce(settings, spread(twice))
    err = run_job(env, timeout=600).stderr
    assert final_counters(err)["consumed"] == 2 * EVENTS
    assert_same_table(cassandra_session, settings, source["clean"])


def poison_pills(good: list[bytes], rng: random.Random) -> list[tuple[bytes, str]]:
    """One pill of each kind per round, with the reason code the spec gives it."""
    kinds = [
        (lambda e: e[: len(e) // 2], "malformed_json"),  # truncated
        (lambda e: b"{" + e, "malformed_json"),  # malformed
        (lambda e: e.replace(b'"', b'"\xff', 1), "malformed_json"),  # invalid UTF-8
        (lambda e: b"[" * 100_000 + b"]" * 100_000, "malformed_json"),  # 100k-deep nesting
        (
            lambda e: e.replace(b'"programId":"', b'"programId":1,"x":"', 1),
            "invalid_type:programId",
        ),
        (lambda e: b'{"pad":"' + b"x" * 2_000_000 + b'"}', "too_large"),
    ]
    pills = []
    for i in range(len(good) // 10):
        make, reason = kinds[i % len(kinds)]
        pills.append((make(rng.choice(good)), reason))
    return pills


def test_ten_percent_poison_pills(source, cassandra_session, kafka_brokers):
    good = source["values"][:5000]
    rng = random.Random(4)
    pills = poison_pills(good, rng)
    # The clean table of just the good events, to compare with.
    clean_env = job_env(f"{source['name']}good")
    clean_settings = bootstrap(clean_env, PARTITIONS)
    produce(clean_settings, spread(good))
    run_job(clean_env)
    clean = table_rows(cassandra_session, clean_settings)

    env = job_env(f"{source['name']}pill")
    settings = config.load(env)
    # 2 MB pills must reach the job to be rejected by it: the topic accepts them.
    ensure_topic(
        settings, settings.input_topic, PARTITIONS, config={"max.message.bytes": "3000000"}
    )
    bootstrap(env, PARTITIONS)
    mixed = [(v, None) for v in good] + pills
    rng.shuffle(mixed)
    produce(settings, [(i % PARTITIONS, v, None) for i, (v, _) in enumerate(mixed)])
    err = run_job(env, timeout=600).stderr

    counters = final_counters(err)
    assert counters["rejected"] == len(pills)
    failed = failed_messages(settings, len(pills), timeout=120)
    got = Counter(dict(m.headers())["error.reason"].decode() for m in failed)
    assert got == Counter(reason for _, reason in pills)
    assert_same_table(cassandra_session, settings, clean)


def test_cassandra_credentials_come_from_the_environment_and_never_show(source):
    """Against a second node with PasswordAuthenticator (`scripts/services up cassandra-auth`,
    port 9043), so the main node keeps running for everything else."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    secret = f"S3cret-{int(time.time())}-pw"
    services("up", "cassandra-auth")
    try:
        admin = Cluster(
            ["127.0.0.1"],
            port=9043,
            protocol_version=5,
            auth_provider=PlainTextAuthProvider("cassandra", "cassandra"),
        )
        session = admin.connect()
        session.execute("CREATE ROLE IF NOT EXISTS pui_job WITH LOGIN = true")
        # The node's data outlives a run: set this run's password whatever exists.
        session.execute(f"ALTER ROLE pui_job WITH PASSWORD = '{secret}' AND SUPERUSER = true")
        admin.shutdown()

        env = job_env(
            f"{source['name']}auth",
            PUI_CASSANDRA_PORT="9043",
            PUI_CASSANDRA_USERNAME="pui_job",
            PUI_CASSANDRA_PASSWORD=secret,
            PUI_LOG_LEVEL="DEBUG",
        )
        settings = bootstrap(env, PARTITIONS)
        produce(settings, spread(source["values"][:500]))
        err = run_job(env).stderr
        counters = final_counters(err)
        assert counters["upserted"] + counters["deleted"] == 500
        described = subprocess.run(
            [sys.executable, "-m", "dataflow.config"], env=env, capture_output=True, text=True
        )
        wrong = subprocess.run(
            [sys.executable, "-m", "bytewax.run", "dataflow:flow"],
            env={**env, "PUI_CASSANDRA_PASSWORD": secret + "x", "PUI_LOG_LEVEL": "INFO"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        services("down", "cassandra-auth")
    for output in (err, described.stdout + described.stderr, wrong.stdout + wrong.stderr):
        assert secret not in output
    assert "***" in described.stdout + described.stderr  # masked, not omitted
    assert wrong.returncode != 0
    assert "Traceback" not in wrong.stderr
    assert "PUI_CASSANDRA_PASSWORD" in wrong.stderr


def test_pills_keep_json_lines_valid():
    """The pills above are what they claim to be (guards the fixture itself)."""
    good = generate(60, seed=1)
    for pill, reason in poison_pills(good, random.Random(1)):
        if reason == "malformed_json":
            with pytest.raises((ValueError, RecursionError)):
                json.loads(pill)
        elif reason == "too_large":
            assert len(pill) > 1024 * 1024
