"""The exhaust against what the portal and operators send it, on the real servers
(issue 15): request ids that would leave the report store, request text in log lines."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psycopg
import pytest

from dataflow.exhaust import crypto
from dataflow.exhaust.__main__ import request_data
from tests.exhaust_world import KEY, ROOT, SALT, World, ids
from tests.test_exhaust import Proxy
from tests.test_exhaust_pure import HOSTILE_IDS

pytestmark = pytest.mark.services


def test_hostile_request_ids_fail_and_write_nothing_outside_the_store(world, tmp_path):
    """Each id becomes FAILED with the rule in err_message; no file appears anywhere but in the
    store, and a valid identical twin of a refused request still gets its report."""
    pid = "p-hostile"
    world.enrol(pid, ids(1)[0], pii=False)
    data = request_data(pid, [])
    for rid in HOSTILE_IDS:
        world.submit(rid, data)
    world.submit("good-twin", data)  # identical to all of them: claimed together
    before = {p for p in tmp_path.parent.rglob("*")}
    assert world.run_once() == (1, len(HOSTILE_IDS))
    for rid in HOSTILE_IDS:
        row = world.row(rid)
        assert row["status"] == "FAILED", rid
        assert row["err_message"].startswith("refused: "), rid
        assert "letters" in row["err_message"]
        assert row["download_urls"] is None
    good = world.row("good-twin")
    assert good["status"] == "SUCCESS"
    (url,) = good["download_urls"]
    assert url.startswith(str(world.store / "program-user-exhaust" / "good-twin_"))
    created = {p for p in tmp_path.parent.rglob("*")} - before
    outside = [p for p in created if p.is_file() and not p.is_relative_to(world.store)]
    assert outside == []
    assert [p.name for p in created if p.is_file()] == [url.rsplit("/", 1)[1]]


def test_request_text_cannot_forge_a_log_line(world):
    pid = "p-logs"
    world.enrol(pid, ids(1)[0], pii=False)
    forged = "2026-01-01 00:00:00,000 INFO dataflow.exhaust: request forged: SUCCESS"
    world.submit(f"evil\n{forged}", request_data(pid, []))
    data = request_data(pid, [])
    data["params"]["filters"][0]["table_filters"].append(
        {"name": f"bad\n{forged}", "operator": "=", "value": "1"}
    )
    world.submit("bad-filter", data)
    run = subprocess.run(
        [sys.executable, "-m", "dataflow.exhaust", "run", "--once"],
        env=world.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    assert not [line for line in lines if line.startswith("2026-01-01")], run.stderr
    assert f"evil\\n{forged}" in run.stderr
    assert f"bad\\n{forged}" in run.stderr
    assert "Traceback" not in run.stderr


# --- report files and zip passwords ---------------------------------------------------------


def pii_program(w: World, pid: str, n: int = 3, salt: str = SALT) -> list[str]:
    users = ids(n)
    for uid in users:
        w.enrol(pid, uid, pii=True)
        w.give_consent(uid, pid, "ACTIVE", dt.datetime(2023, 1, 1))
        w.cache(
            uid,
            firstname="F",
            email=crypto.encrypt(f"{uid}@example.org", salt),
            phone=crypto.encrypt("9876543210", salt),
        )
    return users


def store_files(w: World) -> list[Path]:
    return sorted(p for p in w.store.rglob("*")) if w.store.exists() else []


def test_report_is_owner_only_and_the_csv_lives_in_a_private_folder(world):
    pid = "p-files"
    users = pii_program(world, pid)
    world.submit("rfiles", request_data(pid, []))
    seen: list[tuple[Path, int, int]] = []  # (csv, its mode, its folder's mode) mid-report
    worker = world.worker()
    real = worker.read_cache

    def spying(user_ids):
        for csv_file in world.store.rglob("*.csv"):
            seen.append(
                (csv_file, csv_file.stat().st_mode & 0o777, csv_file.parent.stat().st_mode & 0o777)
            )
        return real(user_ids)

    worker.read_cache = spying
    try:
        assert worker.run_once() == (1, 0)
    finally:
        worker.close()
    (csv_file, csv_mode, folder_mode) = seen[0]
    assert folder_mode == 0o700 and csv_mode == 0o600
    assert csv_file.parent.name.startswith(".building-")
    (url,) = world.row("rfiles")["download_urls"]
    assert store_files(world) == [Path(url).parent, Path(url)]  # the folder and the zip only
    assert Path(url).stat().st_mode & 0o777 == 0o600
    assert f"{users[0]}@example.org" in world.csv_of("rfiles")


def test_report_mode_is_a_setting_and_a_failure_leaves_no_file(make_world):
    w = make_world(PUI_REPORT_FILE_MODE="0640")
    pid = "p-mode"
    pii_program(w, pid)
    w.submit("rmode", request_data(pid, []))
    assert w.run_once() == (1, 0)
    (url,) = w.row("rmode")["download_urls"]
    assert Path(url).stat().st_mode & 0o777 == 0o640
    # A report that fails after its CSV was written (every value undecryptable) leaves
    # nothing behind: no CSV, no zip, no building folder.
    wrong = make_world(PUI_ENCRYPTION_SALT="not-the-salt")
    pii_program(wrong, pid)
    wrong.submit("rwrong", request_data(pid, []))
    assert wrong.run_once() == (0, 1)
    assert [p.name for p in store_files(wrong)] == ["program-user-exhaust"]


def test_zipcrypto_password_never_on_a_command_line(make_world, tmp_path):
    """7z gets the password on its standard input: a 7z stand-in first on PATH records the
    command line, then runs the real 7z."""
    shim = tmp_path / "bin"
    shim.mkdir()
    record = tmp_path / "argv.txt"
    (shim / "7z").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >> {record}\nexec {shutil.which("7z")} "$@"\n'
    )
    (shim / "7z").chmod(0o755)
    w = make_world(PUI_ZIP_ENCRYPTION="zipcrypto")
    w.env["PATH"] = f"{shim}:{w.env['PATH']}"
    pid = "p-zc-argv"
    users = pii_program(w, pid, 1)
    w.submit("rzc", request_data(pid, []))
    run = subprocess.run(
        [sys.executable, "-m", "dataflow.exhaust", "run", "--once"],
        env=w.env, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    argv = record.read_text()
    assert "-mem=ZipCrypto" in argv
    assert KEY not in argv
    (url,) = w.row("rzc")["download_urls"]
    assert Path(url).stat().st_mode & 0o777 == 0o600
    with zipfile.ZipFile(url) as zf:
        text = zf.read(zf.namelist()[0], pwd=KEY.encode()).decode()
    assert f"{users[0]}@example.org" in text
    # and the OS's unzip opens it too
    out = subprocess.run(["unzip", "-p", "-P", KEY, url], capture_output=True, text=True)
    assert f"{users[0]}@example.org" in out.stdout


def test_zipcrypto_without_7z_is_refused_at_start(world, tmp_path):
    empty = tmp_path / "no-tools"
    empty.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "dataflow.exhaust", "run", "--once"],
        env={**world.env, "PUI_ZIP_ENCRYPTION": "zipcrypto", "PATH": str(empty)},
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert "PUI_ZIP_ENCRYPTION=zipcrypto needs the 7z program" in run.stderr
    assert "Traceback" not in run.stderr


AES_LONGEST = "é" * 49 + "a"  # 99 bytes in UTF-8


@pytest.mark.parametrize(
    ("key", "status", "words"),
    [
        ("", "FAILED", "Not a Valid Request"),
        ("a" * 100, "FAILED", "at most 99 bytes"),
        ("é" * 50, "FAILED", "is 100 bytes long"),
        ("tab\there", "FAILED", "control character"),
        ("a" * 99, "SUCCESS", ""),
        (AES_LONGEST, "SUCCESS", ""),
    ],
)
def test_aes_key_limits_are_checked_when_claimed(world, tmp_path, key, status, words):
    pid = "p-keys"
    uid = ids(1)[0]
    world.enrol(pid, uid, pii=False)
    world.submit("rkey", request_data(pid, []), key=key)
    assert world.run_once() == ((1, 0) if status == "SUCCESS" else (0, 1))
    row = world.row("rkey")
    assert row["status"] == status
    if status == "FAILED":
        assert words in row["err_message"]
        assert row["download_urls"] is None
        return
    # 7-Zip, the tool the limit comes from, opens it (the password is an argument here only
    # because this is a test).
    (url,) = row["download_urls"]
    out = tmp_path / "x"
    done = subprocess.run(["7z", "x", "-y", f"-p{key}", f"-o{out}", url], capture_output=True)
    assert done.returncode == 0, done.stdout
    assert next(out.iterdir()).read_text().splitlines()[1].startswith(uid)


@pytest.mark.parametrize(
    ("key", "words"),
    [("a" * 81, "at most 80"), ("pässword", "non-ASCII"), ("", "Not a Valid Request")],
)
def test_zipcrypto_key_limits(make_world, key, words):
    w = make_world(PUI_ZIP_ENCRYPTION="zipcrypto")
    pid = "p-zkeys"
    w.enrol(pid, ids(1)[0], pii=False)
    w.submit("rz", request_data(pid, []), key=key)
    w.submit("rz-80", request_data(pid, []), key="b" * 80)
    assert w.run_once() == (1, 1)
    assert words in w.row("rz")["err_message"]
    assert w.row("rz-80")["status"] == "SUCCESS"
    (url,) = w.row("rz-80")["download_urls"]
    with zipfile.ZipFile(url) as zf:
        assert zf.read(zf.namelist()[0], pwd=b"b" * 80).startswith(b"User UUID")


def test_a_refused_key_is_refused_before_any_data_is_read(world):
    # The program has no rows: a key check after the read would say "No Data Found".
    world.submit("rlong", request_data("p-nothing", []), key="k" * 200)
    assert world.run_once() == (0, 1)
    assert "at most 99 bytes" in world.row("rlong")["err_message"]


# --- honest failure -------------------------------------------------------------------------


def run_cli(w: World, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dataflow.exhaust", *args],
        env={**w.env, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_wrong_salt_fails_the_request_naming_the_setting(make_world):
    w = make_world(PUI_ENCRYPTION_SALT="not-the-salt")
    pid = "p-salt"
    pii_program(w, pid, 3)  # encrypted with SALT, 6 values
    w.submit("rsalt", request_data(pid, []))
    assert w.run_once() == (0, 1)
    row = w.row("rsalt")
    assert row["status"] == "FAILED"
    assert "none of the 6 encrypted email and phone values" in row["err_message"]
    assert "PUI_ENCRYPTION_SALT" in row["err_message"]
    assert "not-the-salt" not in row["err_message"]
    assert row["download_urls"] is None


def test_a_few_undecryptable_values_stay_blank_and_counted(world):
    pid = "p-few"
    users = pii_program(world, pid, 3)
    world.cache(users[0], email="corrupt")
    world.submit("rfew", request_data(pid, []))
    run = run_cli(world, "run", "--once")
    assert run.returncode == 0, run.stderr
    assert "1 undecryptable values" in run.stderr
    text = world.csv_of("rfew")
    assert "corrupt" not in text
    assert f"{users[1]}@example.org" in text


def test_run_refuses_to_start_without_a_salt(world, tmp_path):
    pid = "p-nosalt"
    world.enrol(pid, ids(1)[0], pii=False)
    world.submit("rns", request_data(pid, []))
    run = run_cli(world, "run", "--once", env={"PUI_ENCRYPTION_SALT": ""})
    assert run.returncode == 2
    assert "PUI_ENCRYPTION_SALT is not set" in run.stderr
    assert "Traceback" not in run.stderr
    assert world.row("rns")["status"] == "SUBMITTED"
    # A layout without email and phone needs no salt.
    model = json.loads((ROOT / "dataflow/exhaust/default_model.json").read_text())
    params = model["modelParams"]
    for field in ("email", "phone"):
        label = params["label_mapping"].pop(field)
        params["order_of_csv_column"].remove(label)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    run = run_cli(
        world,
        "run",
        "--once",
        env={"PUI_ENCRYPTION_SALT": "", "PUI_EXHAUST_MODEL_CONFIG": str(path)},
    )
    assert run.returncode == 0, run.stderr
    assert world.row("rns")["status"] == "SUCCESS"


def test_cassandra_unreachable_bounded_wait_one_line_per_retry(world):
    pid = "p-cass-down"
    world.enrol(pid, ids(1)[0], pii=False)
    world.submit("rcd", request_data(pid, []))
    began = time.monotonic()
    # Port 1 on this machine: a real server address where nothing listens.
    run = run_cli(world, "run", "--once", env={"PUI_CASSANDRA_PORT": "1", "PUI_STORE_WAIT": "3"})
    took = time.monotonic() - began
    assert run.returncode == 1, run.stderr
    assert took < 30
    lines = run.stderr.splitlines()
    retries = [line for line in lines if "Cassandra not reachable" in line]
    assert len(retries) >= 1
    assert "Traceback" not in run.stderr
    assert not [line for line in lines if not line.startswith("20")], run.stderr  # one-liners
    assert "stopped: Cassandra is not reachable at 127.0.0.1:1" in run.stderr
    # No request was taken: it waits, with all its attempts, for Cassandra to be back.
    row = world.row("rcd")
    assert (row["status"], row["iteration"]) == ("SUBMITTED", 0)
    assert run_cli(world, "run", "--once").returncode == 0
    assert world.row("rcd")["status"] == "SUCCESS"


def test_redis_unreachable_fails_by_the_retry_rules_and_stops_the_run(world):
    pid = "p-redis-down"
    pii_program(world, pid, 2)
    world.submit("rr1", request_data(pid, []))
    world.submit("rr2", request_data(pid, []), key="another-key")
    run = run_cli(
        world,
        "run",
        "--once",
        env={"PUI_REDIS_URL": "redis://127.0.0.1:1/5", "PUI_STORE_WAIT": "2"},
    )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert len([line for line in run.stderr.splitlines() if "Redis not reachable" in line]) >= 1
    first = world.row("rr1")
    assert (first["status"], first["iteration"]) == ("FAILED", 1)
    assert "the user cache (Redis) is not reachable" in first["err_message"]
    # The run stopped: the next request was not made to wait for the same Redis.
    assert (world.row("rr2")["status"], world.row("rr2")["iteration"]) == ("SUBMITTED", 0)
    assert "done: 0 succeeded, 1 failed" in run.stderr
    # Redis back (the real URL): the failed request is retried and both succeed.
    again = run_cli(world, "run", "--once")
    assert again.returncode == 0, again.stderr
    assert world.row("rr1")["status"] == world.row("rr2")["status"] == "SUCCESS"


def test_final_line_counts_requests_not_reports(world):
    pid = "p-count"
    world.enrol(pid, ids(1)[0], pii=False)
    for rid in ("t1", "t2", "t3"):
        world.submit(rid, request_data(pid, []))
    world.submit("solo", request_data(pid, []), key="other")
    run = run_cli(world, "run", "--once")
    assert run.returncode == 0, run.stderr
    assert "done: 4 succeeded, 0 failed" in run.stderr


def test_least_privilege_role_runs_everything_but_init_db(world, postgres_dsn):
    role = f"{world.name}_app"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT USAGE ON SCHEMA {world.name} TO {role}")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE ON {world.name}.job_request TO {role}")
    try:
        env = {"PUI_POSTGRES_DSN": world.dsn.replace("postgres@", f"{role}@", 1)}
        pid = "p-role"
        world.enrol(pid, ids(1)[0], pii=False)
        sub = run_cli(
            world, "submit", "--program-id", pid, "--encryption-key", KEY, "--requested-by",
            "me", "--request-id", "rrole", env=env,
        )  # fmt: skip
        assert sub.returncode == 0, sub.stderr
        run = run_cli(world, "run", "--once", env=env)
        assert run.returncode == 0, run.stderr
        status = run_cli(world, "status", "rrole", env=env)
        assert status.returncode == 0, status.stderr
        assert '"status": "SUCCESS"' in status.stdout
        # init-db is the one command that creates: this role may not, and is told in a line.
        init = run_cli(world, "init-db", env=env)
        assert init.returncode == 1
        assert "PostgreSQL refused: permission denied" in init.stderr
        assert "Traceback" not in init.stderr
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


def test_a_missing_table_is_one_line_naming_init_db(world):
    world.pg.execute("DROP TABLE job_request")
    for args in (("status", "x"), ("run", "--once")):
        run = run_cli(world, *args)
        assert run.returncode == 1
        assert "the job_request table does not exist" in run.stderr
        assert "init-db" in run.stderr
        assert "Traceback" not in run.stderr


# --- the command line -----------------------------------------------------------------------


def test_submit_filter_values_with_spaces(world):
    pid = "p-spaces"
    a, b = ids(2)
    world.enrol(pid, a, pii=False, org="Karnataka Education")
    world.enrol(pid, b, pii=False, org="Karnataka")
    sub = run_cli(
        world, "submit", "--program-id", pid, "--encryption-key", KEY, "--requested-by", "me",
        "--filter", "organisation_name = Karnataka Education", "--request-id", "rsp",
    )  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    (_, extra) = world.row("rsp")["request_data"]["params"]["filters"][0]["table_filters"]
    assert extra == {"name": "organisation_name", "operator": "=", "value": "Karnataka Education"}
    assert run_cli(world, "run", "--once").returncode == 0
    assert [line.split(",")[0] for line in world.csv_of("rsp").splitlines()[1:]] == [a]


def test_submit_refusals_are_one_line(world):
    base = ["submit", "--program-id", "p", "--requested-by", "me"]
    first = run_cli(world, *base, "--encryption-key", KEY, "--request-id", "dup")
    assert first.returncode == 0, first.stderr
    again = run_cli(world, *base, "--encryption-key", KEY, "--request-id", "dup")
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        "program-user-info exhaust: a request with request_id dup already exists "
        "(see: python -m dataflow.exhaust status dup)"
    ]
    for extra, words in (
        (["--encryption-key", KEY, "--request-id", "../x"], "refused: the request_id"),
        (["--encryption-key", ""], "the encryption key is empty"),
        (["--encryption-key", "k" * 100], "at most 99 bytes"),
        (["--encryption-key", KEY, "--filter", "organisation_name Karnataka"], "NAME OPERATOR"),
    ):
        run = run_cli(world, *base, *extra)
        assert run.returncode != 0
        assert words in run.stderr
        assert "Traceback" not in run.stderr
    count = world.pg.execute("SELECT count(*) AS n FROM job_request").fetchone()["n"]
    assert count == 1


def test_seed_demo_then_a_report_in_three_commands(world, cassandra_session):
    """On a database without job_request and keyspaces that do not exist yet."""
    world.pg.execute("DROP TABLE job_request")
    env = {
        "PUI_CASSANDRA_KEYSPACE": f"{world.ks}_demo",
        "PUI_USER_KEYSPACE": f"{world.uks}_demo",
    }
    pid = f"demo-{world.name}"
    try:
        seed = run_cli(world, "seed-demo", "--program-id", pid, "--users", "30", env=env)
        assert seed.returncode == 0, seed.stderr
        rid = seed.stdout.strip()
        run = run_cli(world, "run", "--once", env=env)
        assert run.returncode == 0, run.stderr
        status = run_cli(world, "status", rid, env=env)
        assert '"status": "SUCCESS"' in status.stdout
        text = world.csv_of(rid, password="demo-password")
        body = text.splitlines()[1:]
        assert len(body) == 30
        assert any("@example.org" in line and ",Yes," in line for line in body)
        assert any(",No," in line for line in body)
        assert "0 undecryptable values" in run.stderr
    finally:
        from dataflow.exhaust import demo

        world.redis.delete(*(f"user:{uid}" for uid in demo.user_ids(pid, 30)))
        cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {world.ks}_demo")
        cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {world.uks}_demo")


def test_seed_demo_needs_the_salt(world):
    run = run_cli(world, "seed-demo", env={"PUI_ENCRYPTION_SALT": ""})
    assert run.returncode == 2
    assert "PUI_ENCRYPTION_SALT is not set" in run.stderr


def test_cassandra_lost_mid_run_fails_by_the_retry_rules_and_stops(make_world):
    """Cassandra reached through a proxy that is cut after the worker connected: the claimed
    request fails (an attempt spent, retried later) and the run stops before the next one."""
    proxy = Proxy(("127.0.0.1", 9042))
    w = make_world(PUI_CASSANDRA_PORT=str(proxy.port), PUI_STORE_WAIT="2")
    pid = "p-cass-lost"
    w.enrol(pid, ids(1)[0], pii=False)
    w.submit("rl1", request_data(pid, []))
    w.submit("rl2", request_data(pid, []), key="another-key")
    worker = w.worker()
    try:
        worker.cassandra()
        proxy.cut()
        assert worker.run_once() == (0, 1)
        assert "Cassandra stopped answering" in worker.unavailable
    finally:
        worker.close()
        proxy.cut()
    first = w.row("rl1")
    assert (first["status"], first["iteration"]) == ("FAILED", 1)
    assert "Cassandra stopped answering" in first["err_message"]
    assert (w.row("rl2")["status"], w.row("rl2")["iteration"]) == ("SUBMITTED", 0)
