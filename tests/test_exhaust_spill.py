"""Reports larger than PUI_REPORT_SORT_ROWS: sorted in runs spilled to the report's private
folder and merged (issue 18). The spilled report must equal the one sorted in memory, byte for
byte, and leave no file behind, whether it succeeds or fails. These run on the real servers;
the sort on its own is tested in test_exhaust_pure.py."""

from __future__ import annotations

import datetime as dt
import logging
import random
import re
import uuid
from pathlib import Path

import pytest
from cassandra.concurrent import execute_concurrent_with_args

from dataflow.exhaust import crypto, report
from dataflow.exhaust import settings as exhaust_settings
from dataflow.exhaust.__main__ import request_data
from dataflow.exhaust.runner import Worker
from tests.exhaust_world import SALT, World

# --- on the real servers ------------------------------------------------------------------


USERS = 3000
LIMIT = "300"


def big_program(w: World, pid: str, salt: str = SALT) -> None:
    """USERS users in varied places: 80% need consent (ACTIVE, REVOKED or none, some of them
    missing from the user cache), some without locations, some with the same school."""
    rng = random.Random(18)
    enrolments, consents = [], []
    pipe = w.redis.pipeline(transaction=False)
    for n in range(USERS):
        uid = str(uuid.UUID(int=rng.getrandbits(128)))
        district = rng.choice(["Bengaluru", "Anekal", "Mysuru", "=cmd", ""])
        locations = None if n % 10 == 3 else {
            "state_name": "Karnataka",
            "district_name": district,
            "block_name": f"{district} B{rng.randrange(4)}",
            "cluster_name": f"C{rng.randrange(6)}",
            "school_code": str(29_000 + rng.randrange(40)),
            "school_name": f"School, \"{rng.randrange(40)}\"",
        }  # fmt: skip
        pii = n % 5 != 0
        day = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(365))
        enrolments.append(
            (pid, uid, "PGM-1", "Prog", pii, locations, "o1", "Org", "teacher", "HM", day, day)
        )
        roll = rng.random()
        if roll < 0.8:
            status = "ACTIVE" if roll < 0.6 else "REVOKED"
            when = dt.datetime(2023, 5, 1) + dt.timedelta(hours=rng.randrange(2000))
            consents.append((uid, "c1", pid, status, when))
            if status == "ACTIVE" and n % 17:
                pipe.hset(
                    f"user:{uid}",
                    mapping={
                        "firstname": rng.choice(["Asha", "Ravi", "+Formula"]),
                        "lastname": str(n),
                        "email": crypto.encrypt(f"u{n}@example.org", salt),
                        "phone": crypto.encrypt(f"9{n:09d}", salt),
                    },
                )
                w.cached.add(f"user:{uid}")
    for stmt, args in ((w.insert, enrolments), (w.consent, consents)):
        for ok, result in execute_concurrent_with_args(w.session, stmt, args, concurrency=32):
            assert ok, result
    pipe.execute()


def worker(w: World, **env) -> Worker:
    return Worker(exhaust_settings.load({**w.env, **env}), progress=False)


def leftovers(w: World) -> list[str]:
    """What the store holds besides the report folder and its zips."""
    return sorted(
        str(p.relative_to(w.store))
        for p in w.store.rglob("*")
        if p.name != "program-user-exhaust" and p.suffix != ".zip"
    )


def test_report_sorted_through_spills_equals_the_in_memory_one(make_world, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="dataflow.exhaust")
    # The user cache is read for each 500 rows written: the spy below sees the runs mid-merge.
    monkeypatch.setattr(report, "CHUNK", 500)
    w = make_world()
    pid = "p-spill"
    big_program(w, pid)
    w.submit("rmem", request_data(pid, []))
    memory = worker(w)
    try:
        assert memory.run_once() == (1, 0)
    finally:
        memory.close()
    assert "sorted in memory" in caplog.text
    w.submit("rspill", request_data(pid, []), key="another-key")
    spilling = worker(w, PUI_REPORT_SORT_ROWS=LIMIT)
    seen: list[tuple[int, int, bool]] = []  # (runs, folder mode, PII in runs) mid-report
    real = spilling.read_cache

    def spying(user_ids):
        runs = [p for p in w.store.glob(".building-*/run-*")]
        if runs:
            text = b"".join(p.read_bytes() for p in runs)
            modes = {p.stat().st_mode & 0o777 for p in runs}
            assert modes == {0o600}
            seen.append((len(runs), runs[0].parent.stat().st_mode & 0o777, b"@example" in text))
        return real(user_ids)

    spilling.read_cache = spying
    try:
        assert spilling.run_once() == (1, 0)
    finally:
        spilling.close()
    runs = int(
        re.search(r"request rspill: SUCCESS .* sorted in (\d+) runs on disk", caplog.text)[1]
    )
    assert runs == USERS // int(LIMIT)
    # The runs were on disk while the CSV was written, in the 0700 folder, without PII.
    assert seen and seen[0][0] == runs and seen[0][1] == 0o700
    assert not any(pii for _, _, pii in seen)
    in_memory, spilled = w.csv_of("rmem"), w.csv_of("rspill", "another-key")
    assert spilled == in_memory
    body = in_memory.split("\r\n")[1:-1]
    assert len(body) == USERS
    assert sum(",Yes," in line for line in body) > USERS / 3
    assert "u1@example.org" in in_memory or "u2@example.org" in in_memory
    # Nothing but the two zips is left.
    assert leftovers(w) == []
    assert len(list(w.store.rglob("*.zip"))) == 2


@pytest.mark.parametrize("failure", ["wrong salt", "Redis unreachable"])
def test_a_failed_spilled_report_leaves_no_file(make_world, failure):
    if failure == "wrong salt":
        # The salt is checked after the whole CSV is written from the merged runs.
        w = make_world(PUI_ENCRYPTION_SALT="not-the-salt", PUI_REPORT_SORT_ROWS=LIMIT)
        env = {}
    else:
        # The runs are spilled, then the first user-cache read fails: nothing listens on
        # port 1.
        w = make_world(PUI_REPORT_SORT_ROWS=LIMIT)
        env = {"PUI_REDIS_URL": "redis://127.0.0.1:1/5", "PUI_STORE_WAIT": "0"}
    pid = "p-spill-fail"
    big_program(w, pid, salt=SALT)
    w.submit("rfail", request_data(pid, []))
    failing = worker(w, **env)
    spilled: list[int] = []
    real_spill = report.Report._spill

    def counting(self, items):
        spilled.append(1)
        return real_spill(self, items)

    report.Report._spill = counting
    try:
        assert failing.run_once() == (0, 1)
    finally:
        report.Report._spill = real_spill
        failing.close()
    assert len(spilled) == USERS // int(LIMIT)
    row = w.row("rfail")
    assert row["status"] == "FAILED"
    expected = "PUI_ENCRYPTION_SALT is not the salt" if failure == "wrong salt" else "Redis"
    assert expected in row["err_message"]
    assert leftovers(w) == []
    assert not list(w.store.rglob("*.zip"))
    assert not list(Path(w.store).glob(".building-*"))


# --- the user cache, read by script or by pipeline -------------------------------------------


def test_user_cache_by_script_and_by_pipeline_when_scripts_are_refused(redis_url, unique_name):
    """A Redis whose ACL refuses scripts is read by pipeline, with the same answers."""
    import redis

    from dataflow.exhaust import sources

    admin = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/5")
    users = [f"{unique_name}-{n}" for n in range(2500)]  # three script calls of 1,000
    pipe = admin.pipeline(transaction=False)
    for n, uid in enumerate(users):
        if n % 3:
            pipe.hset(f"user:{uid}", mapping={"firstname": f"F{n}", "email": "e", "phone": "p"})
    pipe.execute()
    account, password = f"pui-noscript-{unique_name}", "test-only-password"
    admin.execute_command(
        "ACL", "SETUSER", account, "on", f">{password}", "~user:*", "+@all", "-@scripting"
    )
    refused = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/5", username=account,
                                   password=password)  # fmt: skip
    try:
        by_script = sources.UserCache(admin)
        got = by_script.pii(users)
        assert by_script.scripted
        expected = {uid: (f"F{n}", None, "e", "p") for n, uid in enumerate(users) if n % 3}
        assert got == expected
        by_pipeline = sources.UserCache(refused)
        assert by_pipeline.pii(users) == expected
        assert not by_pipeline.scripted  # refused once, then read by pipeline
        with pytest.raises(redis.ResponseError, match=r"(?i)noperm|permission"):
            refused.eval("return 1", 0)
    finally:
        refused.close()
        admin.execute_command("ACL", "DELUSER", account)
        admin.delete(*[f"user:{uid}" for uid in users])
        admin.close()


def test_report_reads_are_routed_like_the_connection(make_world):
    """The exhaust's row profile keeps the token-aware policy in the configured local DC
    (the driver's default policy for a new profile knows no local DC)."""
    from dataflow.exhaust import sources

    w = make_world(PUI_CASSANDRA_LOCAL_DC="datacenter1")  # the local server's DC
    reader = worker(w)
    try:
        reader.cassandra()
        profiles = reader.cluster.profile_manager
        policy = profiles.profiles[sources.TUPLES].load_balancing_policy
        assert policy is profiles.default.load_balancing_policy
        assert type(policy).__name__ == "TokenAwarePolicy"
        assert policy._child_policy.local_dc == "datacenter1"
    finally:
        reader.close()
