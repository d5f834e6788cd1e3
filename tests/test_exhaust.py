"""The User Detail Report on the real PostgreSQL, Cassandra and Redis (spec exhaust.md).

Each test gets its own PostgreSQL schema, Cassandra keyspaces and user ids. Expected CSVs are
written out by hand from the spec's rules for the data each test creates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from dataflow.exhaust import crypto, job_requests, sources
from dataflow.exhaust.__main__ import request_data
from tests.exhaust_world import KEY, ROOT, SALT, ids, lines

pytestmark = pytest.mark.services
HEADER_PII = (
    "User UUID,User Name(On user consent),Mobile number(On user consent),"
    "Email ID(On user consent),Consent Provided,Consent Provided Date,Program Name,Program ID,"
    "State,District,Block,Cluster,School Id,School Name,Usertype,Usersubtype,Org Name"
)
HEADER_PLAIN = (
    "User UUID,Program Name,Program ID,State,District,Block,Cluster,School Id,School Name,"
    "Usertype,Usersubtype,Org Name"
)
LOC_A = {
    "state_name": "Karnataka",
    "district_name": "Bengaluru",
    "block_name": "North",
    "cluster_name": "C1",
    "school_code": "29001",
    "school_name": "GHS One",
    "district_id": "d-1",
}
LOC_B = {**LOC_A, "district_name": "Anekal", "district_id": "d-2", "school_code": "29002"}


def test_every_consent_combination_byte_for_byte(world):
    pid = "p-consent"
    a, b, c, d, e, f, g = ids(7)
    ist_day = dt.datetime(2023, 5, 1, 20, 0)  # 01:30 next day in Asia/Kolkata
    for uid, locs in ((a, LOC_A), (b, LOC_A), (c, LOC_B), (d, LOC_B), (e, None), (f, LOC_A)):
        world.enrol(pid, uid, pii=True, locations=locs)
    world.enrol(pid, g, pii=False, locations=LOC_A, org="=SUM(A1)")
    # a: ACTIVE, full PII; b: "active" in lower case, only a first name, corrupt email;
    # c: REVOKED; d: no consent row (only one for another program); e: ACTIVE, no locations,
    # not in the user cache; f: an older ACTIVE row and a newer REVOKED one.
    world.give_consent(a, pid, "ACTIVE", ist_day)
    world.give_consent(b, pid, "active", dt.datetime(2023, 1, 2, 3, 4))
    world.give_consent(c, pid, "REVOKED", dt.datetime(2023, 2, 3, 4, 5))
    world.give_consent(d, "another-program", "ACTIVE", dt.datetime(2023, 2, 3, 4, 5))
    world.give_consent(e, pid, "ACTIVE", dt.datetime(2023, 3, 4, 5, 6))
    world.give_consent(f, pid, "ACTIVE", dt.datetime(2023, 1, 1), consumer="old")
    world.give_consent(f, pid, "REVOKED", dt.datetime(2023, 4, 1), consumer="new")
    world.cache(
        a,
        firstname="Asha",
        lastname="Rao",
        email=crypto.encrypt("asha@example.org", SALT),
        phone=crypto.encrypt("+919876543210", SALT),
    )
    world.cache(b, firstname="Bala", email="not-a-ciphertext", phone=crypto.encrypt("98", SALT))
    world.cache(c, firstname="Chitra", email=crypto.encrypt("c@x.org", SALT))
    world.submit("r1", request_data(pid, []))

    assert world.run_once() == (1, 0)
    row = world.row("r1")
    assert row["status"] == "SUCCESS"
    assert row["err_message"] == ""
    assert row["download_urls"][0].endswith(".zip")
    day = dt.datetime.now(dt.timezone(dt.timedelta(hours=5, minutes=30))).strftime("%Y%m%d")
    assert Path(row["download_urls"][0]).name == f"r1_{day}.zip"
    tail_a = "'Prog One',PGM-1,Karnataka,Bengaluru,North,C1,29001,GHS One,administrator,HM,Org A"
    tail_b = "'Prog One',PGM-1,Karnataka,Anekal,North,C1,29002,GHS One,administrator,HM,Org A"
    tail_none = "'Prog One',PGM-1,,,,,,,administrator,HM,Org A"
    tail_g = tail_a.replace("Org A", "'=SUM(A1)")
    # Sorted by District (blank first, then code point: Anekal < Bengaluru), then User UUID.
    expected = [
        HEADER_PII,
        f"{e},,,,Yes,04/03/2023,{tail_none}",
        f"{c},,,,No,03/02/2023,{tail_b}",
        f"{d},,,,No,,{tail_b}",
        f"{a},'Asha Rao','+919876543210,asha@example.org,Yes,02/05/2023,{tail_a}",
        f"{b},'Bala',98,,Yes,02/01/2023,{tail_a}",
        f"{f},,,,No,01/04/2023,{tail_a}",
        f"{g},,,,No,,{tail_g}",
    ]
    assert lines(world.csv_of("r1")) == expected


def test_no_user_needs_consent_drops_five_columns_and_plain_zip(make_world):
    w = make_world(PUI_DATA_SECURITY_LEVEL="PLAIN_DATASET")
    pid = "p-plain"
    a, b = ids(2)
    w.enrol(pid, a, pii=False, locations=LOC_B, name='Say "hi", all')
    w.enrol(pid, b, pii=False, locations=None, name='Say "hi", all')
    w.give_consent(a, pid, "ACTIVE", dt.datetime(2023, 1, 1))
    w.submit("r-plain", request_data(pid, []))
    assert w.run_once() == (1, 0)
    (url,) = w.row("r-plain")["download_urls"]
    with zipfile.ZipFile(url) as zf:  # no password needed
        text = zf.read(zf.namelist()[0]).decode()
    assert lines(text) == [
        HEADER_PLAIN,
        f'{b},"\'Say ""hi"", all\'",PGM-1,,,,,,,administrator,HM,Org A',
        f'{a},"\'Say ""hi"", all\'",PGM-1,Karnataka,Anekal,North,C1,29002,GHS One,'
        "administrator,HM,Org A",
    ]


def test_filters_on_district_organisation_and_dates(world):
    pid = "p-filter"
    a, b, c, d = ids(4)
    world.enrol(pid, a, pii=False, locations=LOC_A, updated=dt.date(2023, 3, 1))
    world.enrol(pid, b, pii=False, locations=LOC_B, updated=dt.date(2023, 3, 1))
    world.enrol(pid, c, pii=False, locations=LOC_A, updated=dt.date(2022, 12, 31))
    world.enrol(pid, d, pii=False, locations=LOC_A, org="Org B", updated=dt.date(2023, 3, 1))
    data = request_data(pid, [])
    data["params"]["filters"][0]["table_filters"] += [
        {"name": "user_locations['district_id']", "operator": "=", "value": "d-1"},
        {"name": "organisation_name", "operator": "!=", "value": "Org B"},
        {"name": "updated_at", "operator": ">=", "value": "2023-01-01"},
        {"name": "updated_at", "operator": "<=", "value": "2023-12-31"},
    ]
    world.submit("rf", data)
    world.run_once()
    got = lines(world.csv_of("rf"))
    assert [line.split(",")[0] for line in got[1:]] == [a]


def test_partition_read_in_ranges_returns_every_row_once(world, monkeypatch):
    pid = "p-ranges"
    shapes = ["", "0", "1", "10", "9", ":", "A-upper", "Z", "`", "a", "e~", "f", "ff", "g", "zz",
              "é-unicode", "\U0001f600"]  # fmt: skip
    uids = shapes + [str(uuid.UUID(int=random.Random(n).getrandbits(128))) for n in range(300)]
    for uid in uids:
        world.enrol(pid, uid, pii=False)
    monkeypatch.setattr(sources, "RANGE_PAGE", 7)  # many pages per range
    worker = world.worker()
    try:
        rows = sources.enrolments(worker.cassandra(), world.ks, "program_enrollment", pid)
        got = [row[sources.ENROLMENT_FIELDS.index("user_id")] for row in rows]
    finally:
        worker.close()
    assert sorted(got) == sorted(uids)


def test_consent_filter_on_a_column_the_report_does_not_show(world):
    """A consent row failing a user_consent filter counts as no consent."""
    pid = "p-cfilter"
    a, b = ids(2)
    for uid, consumer in ((a, "org-1"), (b, "org-2")):
        world.enrol(pid, uid, pii=True, locations=LOC_A)
        world.give_consent(uid, pid, "ACTIVE", dt.datetime(2023, 1, 1), consumer=consumer)
        world.cache(uid, firstname=f"N{consumer}")
    data = request_data(pid, [])
    data["params"]["filters"][1]["table_filters"].append(
        {"name": "consumer_id", "operator": "=", "value": "org-1"}
    )
    world.submit("rc", data)
    assert world.run_once() == (1, 0)
    got = [line.split(",")[:5] for line in lines(world.csv_of("rc"))[1:]]
    assert got == [[a, "'Norg-1'", "", "", "Yes"], [b, "", "", "", "No"]]


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"name": "x' OR '1'='1", "operator": "=", "value": "1"}, "x' OR '1'='1"),
        ({"name": "password", "operator": "=", "value": "1"}, "password"),
        ({"name": "user_id", "operator": "LIKE", "value": "%"}, "LIKE"),
        ({"name": "updated_at", "operator": ">", "value": "yesterday"}, "updated_at"),
    ],
)
def test_bad_filters_fail_with_a_message_naming_them(world, bad, words):
    pid = "p-bad"
    world.enrol(pid, ids(1)[0], pii=False)
    data = request_data(pid, [])
    data["params"]["filters"][0]["table_filters"].append(bad)
    world.submit("rb", data)
    assert world.run_once() == (0, 1)
    row = world.row("rb")
    assert row["status"] == "FAILED"
    assert words in row["err_message"]
    assert "Traceback" not in row["err_message"]
    assert row["download_urls"] is None


def test_invalid_requests_no_data_and_retries(world):
    pid = "p-none"
    world.submit("no-data", request_data(pid, []))
    world.submit("no-key", request_data(pid, []), key=None)
    world.submit("no-body", None)
    assert world.run_once() == (0, 3)
    assert world.row("no-data")["err_message"] == "No Data Found"
    assert world.row("no-key")["err_message"] == "Not a Valid Request"
    assert world.row("no-body")["err_message"] == "Not a Valid Request"
    # FAILED is retried while iteration < 3; each attempt adds one.
    assert world.run_once() == (0, 3)
    assert world.run_once() == (0, 3)
    assert world.run_once() == (0, 0)
    assert world.row("no-data")["iteration"] == 3
    assert world.row("no-data")["status"] == "FAILED"
    # Data appears before the last attempt would have been made: a fresh request succeeds.
    world.enrol(pid, ids(1)[0], pii=False)
    world.submit("later", request_data(pid, []))
    assert world.run_once() == (1, 0)


def test_duplicates_are_computed_once(world):
    pid = "p-dup"
    world.enrol(pid, ids(1)[0], pii=False)
    for rid in ("d1", "d2", "d3"):
        world.submit(rid, request_data(pid, []))
    world.submit("other-key", request_data(pid, []), key="another")
    # Two reports serve four requests: the counts (and the final log line) are of requests.
    assert world.run_once() == (4, 0)
    urls = {rid: world.row(rid)["download_urls"][0] for rid in ("d1", "d2", "d3", "other-key")}
    assert urls["d1"] == urls["d2"] == urls["d3"] != urls["other-key"]
    assert world.row("d2")["status"] == "SUCCESS"


def test_two_concurrent_workers_never_share_a_request(world):
    pid = "p-conc"
    for uid in ids(30):
        world.enrol(pid, uid, pii=False)
    for i in range(12):
        world.submit(f"c{i:02d}", request_data(pid, []), key=f"k{i}")
    claimed: list[list[str]] = [[], []]

    def work(n: int) -> None:
        worker = world.worker()
        try:
            while (claim := job_requests.claim(worker.postgres())) is not None:
                claimed[n].append(claim.request_id)
                time.sleep(0.05)  # hold it a while, as a real report would
                job_requests.succeed(worker.postgres(), claim, "x", 1)
                job_requests.release(worker.postgres(), claim)
        finally:
            worker.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed[0] + claimed[1]) == [f"c{i:02d}" for i in range(12)]
    assert not set(claimed[0]) & set(claimed[1])
    assert claimed[0] and claimed[1]


def test_a_killed_worker_leaves_a_request_that_is_picked_up_again(world):
    pid = "p-kill"
    world.enrol(pid, ids(1)[0], pii=False)
    world.submit("rk", request_data(pid, []))
    # A worker process claims the request and dies before finishing.
    code = (
        "import os; from dataflow.exhaust import job_requests;"
        "c = job_requests.connect(os.environ['PUI_POSTGRES_DSN'], 60);"
        "assert job_requests.claim(c).request_id == 'rk'; os._exit(9)"
    )
    died = subprocess.run([sys.executable, "-c", code], env=world.env, cwd=ROOT, check=False)
    assert died.returncode == 9
    assert world.row("rk")["status"] == "PROCESSING"
    assert world.run_once() == (1, 0)
    row = world.row("rk")
    assert row["status"] == "SUCCESS"
    assert row["iteration"] == 2


def test_zip_opens_with_7z_only_with_the_password(world, tmp_path):
    pid = "p-7z"
    uid = ids(1)[0]
    world.enrol(pid, uid, pii=False)
    world.submit("r7", request_data(pid, []))
    world.run_once()
    (url,) = world.row("r7")["download_urls"]
    wrong = subprocess.run(
        ["7z", "x", "-y", "-pwrong", f"-o{tmp_path / 'bad'}", url], capture_output=True
    )
    assert wrong.returncode != 0
    good = subprocess.run(
        ["7z", "x", "-y", f"-p{KEY}", f"-o{tmp_path / 'ok'}", url], capture_output=True
    )
    assert good.returncode == 0, good.stdout + good.stderr
    (out,) = (tmp_path / "ok").iterdir()
    assert out.read_text().splitlines()[1].startswith(uid)
    listing = subprocess.run(["7z", "l", "-slt", url], capture_output=True, text=True)
    assert "AES-256" in listing.stdout


def test_zipcrypto_option_opens_with_7z(make_world):
    w = make_world(PUI_ZIP_ENCRYPTION="zipcrypto")
    pid = "p-zc"
    uid = ids(1)[0]
    w.enrol(pid, uid, pii=False)
    w.submit("rz", request_data(pid, []))
    assert w.run_once() == (1, 0)
    (url,) = w.row("rz")["download_urls"]
    listing = subprocess.run(["7z", "l", "-slt", url], capture_output=True, text=True)
    assert "ZipCrypto" in listing.stdout
    with zipfile.ZipFile(url) as zf:
        with pytest.raises(RuntimeError):
            zf.read(zf.namelist()[0])
        text = zf.read(zf.namelist()[0], pwd=KEY.encode()).decode()
    assert text.splitlines()[1].startswith(uid)


def test_cli_submit_run_once_and_status(world):
    pid = "p-cli"
    uid = ids(1)[0]
    world.enrol(pid, uid, pii=False, locations=LOC_A)
    cmd = [sys.executable, "-m", "dataflow.exhaust"]
    sub = subprocess.run(
        [*cmd, "submit", "--program-id", pid, "--encryption-key", KEY, "--requested-by", "me",
         "--filter", "user_locations['district_id'] = d-1"],
        env=world.env, cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rid = sub.stdout.strip()
    run = subprocess.run(
        [*cmd, "run", "--once"], env=world.env, cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert f"request {rid}: SUCCESS" in run.stderr
    # Where the time went, phase by phase, in the order the report is built.
    assert re.search(
        r"\(enrolments [\d.]+ s, consents [\d.]+ s, user cache [\d.]+ s, csv [\d.]+ s, "
        r"zip [\d.]+ s\)",
        run.stderr,
    ), run.stderr
    assert SALT not in run.stderr
    status = subprocess.run(
        [*cmd, "status", rid], env=world.env, cwd=ROOT, capture_output=True, text=True
    )
    assert '"status": "SUCCESS"' in status.stdout
    assert job_requests.status(world.pg, rid)["download_urls"] == world.row(rid)["download_urls"]
    assert job_requests.status(world.pg, "no-such-request") is None
    assert world.csv_of(rid).splitlines()[1].startswith(uid)


def test_bad_configuration_names_the_setting(world):
    run = subprocess.run(
        [sys.executable, "-m", "dataflow.exhaust", "run", "--once"],
        env={**world.env, "PUI_DATA_SECURITY_LEVEL": "TOP_SECRET"},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "PUI_DATA_SECURITY_LEVEL" in run.stderr
    assert "Traceback" not in run.stderr


class Proxy:
    """A TCP forwarder to a real server that a test can cut and restore: the client sees its
    connections reset and new ones refused, as when the server goes away, while the shared
    server itself keeps running for everyone else's tests."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.open_sockets: list[socket.socket] = []
        self.restore()

    def restore(self) -> None:
        self.up = True
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen()
        self.listener.settimeout(0.2)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def cut(self) -> None:
        self.up = False
        self.listener.close()
        for sock in self.open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.open_sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self.up:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.open_sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def test_poller_survives_losing_postgres(world):
    pid = "p-poll"
    uid = ids(1)[0]
    world.enrol(pid, uid, pii=False)
    world.submit("before", request_data(pid, []))
    proxy = Proxy(("127.0.0.1", 5432))
    dsn = world.dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}", 1)
    poller = subprocess.Popen(
        [sys.executable, "-m", "dataflow.exhaust", "run", "--poll-interval", "0.5"],
        env={**world.env, "PUI_POSTGRES_DSN": dsn},
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )

    def wait_status(rid: str, conn) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT status FROM job_request WHERE request_id = %s", (rid,)
            ).fetchone()
            if row and row["status"] == "SUCCESS":
                return "SUCCESS"
            time.sleep(0.3)
        return row["status"] if row else "missing"

    try:
        assert wait_status("before", world.pg) == "SUCCESS"
        proxy.cut()
        time.sleep(2)
        proxy.restore()
        assert poller.poll() is None, "the poller died with PostgreSQL"
        world.submit("after", request_data(pid, []), key="other")
        assert wait_status("after", world.pg) == "SUCCESS"
    finally:
        poller.terminate()
        _out, err = poller.communicate(timeout=30)
        proxy.cut()
    assert "PostgreSQL unavailable" in err
    assert "Traceback" not in err
