"""Reports in cloud storage, on real emulators started by ``scripts/services up azurite
seaweedfs`` (installed by ``scripts/install emulators``): Azure Blob on Azurite, S3 on SeaweedFS.

Each report test builds a real report from PostgreSQL, Cassandra and Redis (the helpers of
test_exhaust.py), uploads it, downloads it through the signed URL the CLI prints, opens it with
the request's password and compares the CSV with the one written out by hand.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import obstore
import pytest
import pyzipper

from dataflow.config import ConfigError
from dataflow.exhaust import storage
from dataflow.exhaust.__main__ import request_data
from tests.conftest import _require
from tests.exhaust_world import KEY, ROOT, World, ids, lines
from tests.local_services import services
from tests.test_exhaust import HEADER_PLAIN, LOC_A

AZURITE = services.SERVICES["azurite"]
SEAWEED = services.SERVICES["seaweedfs"]
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
MIB = 1024 * 1024


def azure_env(port: int = AZURITE.port) -> dict[str, str]:
    return {
        "PUI_STORAGE_TYPE": "azure",
        "PUI_STORAGE_KEY": services.AZURITE_ACCOUNT,
        "PUI_STORAGE_SECRET": services.AZURITE_KEY,
        "PUI_STORAGE_ENDPOINT": f"http://127.0.0.1:{port}/{services.AZURITE_ACCOUNT}",
    }


def s3_env(port: int = SEAWEED.port) -> dict[str, str]:
    return {
        "PUI_STORAGE_TYPE": "s3",
        "PUI_STORAGE_KEY": services.SEAWEED_ACCESS_KEY,
        "PUI_STORAGE_SECRET": services.SEAWEED_SECRET_KEY,
        "PUI_STORAGE_ENDPOINT": f"http://127.0.0.1:{port}",
    }


ENVS = {"azure": azure_env, "s3": s3_env}
EMULATORS = {"azure": ("Azurite", AZURITE), "s3": ("SeaweedFS", SEAWEED)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cloud_store(env: dict[str, str]) -> storage.CloudStore:
    return storage.CloudStore(storage.load(env))


def keys_under(store: storage.CloudStore, start: str) -> list[str]:
    """Keys that start with ``start`` (object_store lists whole folders, so filter here)."""
    folder = start.rsplit("/", 1)[0]
    found = obstore.list(store._store, prefix=folder).collect()
    return sorted(meta["path"] for meta in found if meta["path"].startswith(start))


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=20) as resp:
        return resp.read()


def tamper(url: str) -> str:
    """The same signed URL with one bit of its signature flipped (still well-formed)."""
    import base64

    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    out = []
    for name, value in query:
        if name == "sig":  # Azure SAS: base64
            raw = bytearray(base64.b64decode(value))
            raw[0] ^= 1
            value = base64.b64encode(bytes(raw)).decode()
        elif name == "X-Amz-Signature":  # S3: hex
            value = f"{int(value[0], 16) ^ 1:x}{value[1:]}"
        out.append((name, value))
    assert out != query
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(out)))


def open_zip(raw: bytes, password: str | None) -> str:
    with pyzipper.AESZipFile(io.BytesIO(raw)) as zf:
        if password:
            zf.setpassword(password.encode())
        (name,) = zf.namelist()
        return zf.read(name).decode("utf-8")


@pytest.fixture(params=["azure", "s3"])
def kind(request) -> str:
    name, svc = EMULATORS[request.param]
    _require(name, ("127.0.0.1", svc.port))
    return request.param


@pytest.fixture
def cloud_world(kind, unique_name, cassandra_session, postgres_dsn, redis_url, tmp_path):
    w = World(unique_name, cassandra_session, postgres_dsn, redis_url, tmp_path, **ENVS[kind]())
    w.kind = kind
    w.cloud = cloud_store(w.env)
    yield w
    # Drop what the test stored: its request ids all start with the unique name.
    for key in keys_under(w.cloud, f"ml_reports/program-user-exhaust/{unique_name}"):
        w.cloud.delete(key)
    w.dispose()


def cli(world, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dataflow.exhaust", *args],
        env=world.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


TAIL_A = "'Prog One',PGM-1,Karnataka,Bengaluru,North,C1,29001,GHS One,administrator,HM,Org A"


def tail(uid: str) -> str:
    return f"{uid},{TAIL_A}"


# --- settings ---------------------------------------------------------------------------------


def test_local_is_the_default_with_sunbirds_container_and_prefix():
    s = storage.load({})
    assert (s.kind, s.container, s.prefix) == ("local", "reports", "ml_reports")
    assert isinstance(storage.open_store(s, Path("var/reports")), storage.LocalStore)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"PUI_STORAGE_TYPE": "ftp"}, "PUI_STORAGE_TYPE"),
        ({"PUI_STORAGE_CONTAINER": "../etc"}, "PUI_STORAGE_CONTAINER"),
        ({"PUI_STORAGE_CONTAINER": "Reports"}, "PUI_STORAGE_CONTAINER"),
        ({"PUI_STORAGE_PREFIX": "ml_reports/../x"}, "PUI_STORAGE_PREFIX"),
        ({"PUI_STORAGE_PREFIX": "a\nb"}, "PUI_STORAGE_PREFIX"),
        ({"PUI_STORAGE_TYPE": "s3", "PUI_STORAGE_ENDPOINT": "file:///etc"}, "http(s) URL$"),
        (
            {"PUI_STORAGE_TYPE": "s3", "PUI_STORAGE_ENDPOINT": "http://u:p@127.0.0.1:1"},
            "credentials",
        ),
        ({"PUI_STORAGE_TYPE": "s3", "PUI_STORAGE_KEY": "k"}, "together"),
        ({"PUI_STORAGE_TYPE": "azure"}, "account name"),
        ({"PUI_STORAGE_URL_EXPIRY": "10"}, "PUI_STORAGE_URL_EXPIRY"),
        ({"PUI_STORAGE_PART_SIZE": "1024"}, "PUI_STORAGE_PART_SIZE"),
        ({"PUI_STORAGE_SECRET_FILE": "/nonexistent/secret"}, "PUI_STORAGE_SECRET_FILE"),
        ({"PUI_STORAGE_TYPE": "gcs", "PUI_STORAGE_SECRET": "-----BEGIN PRIVATE"}, "e-mail"),
    ],
)
def test_bad_storage_settings_name_the_setting(env, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        storage.load(env)


def test_secret_from_a_file_is_never_shown(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("dmVyeS1zZWNyZXQtYWNjb3VudC1rZXk=\n")  # an account key is base64
    s = storage.load(
        {
            "PUI_STORAGE_TYPE": "azure",
            "PUI_STORAGE_KEY": "acct",
            "PUI_STORAGE_SECRET_FILE": str(secret),
        }
    )
    assert s.secret == "dmVyeS1zZWNyZXQtYWNjb3VudC1rZXk="
    assert "dmVyeS1zZWNy" not in repr(s)
    assert "dmVyeS1zZWNy" not in s.describe()
    assert "storage.secret=***" in s.describe()


def test_sunbird_hocon_names_and_variables_winning(tmp_path):
    conf = tmp_path / "exhaust.conf"
    conf.write_text(
        'cloud_storage_type = "azure"\n'
        'storageContainer = "sunbird-reports"\n'
        'storageKeyConfig = "azure_storage_key"\n'
        'storageSecretConfig = "azure_storage_secret"\n'
        'azure_storage_key = "sunbirdacct"\n'
        'azure_storage_secret = "ZnJvbS10aGUtZmlsZQ=="\n'
        'ml.exhaust.store.prefix = "ml_reports_v2"\n'
    )
    s = storage.load({"PUI_CONFIG": str(conf)})
    assert (s.kind, s.container, s.prefix) == ("azure", "sunbird-reports", "ml_reports_v2")
    assert (s.key, s.secret) == ("sunbirdacct", "ZnJvbS10aGUtZmlsZQ==")
    s = storage.load({"PUI_CONFIG": str(conf), "PUI_STORAGE_CONTAINER": "other"})
    assert s.container == "other"
    # The type from the environment picks that store's Sunbird key names in the file.
    conf.write_text('aws_storage_key = "AKIAEXAMPLE"\naws_storage_secret = "s3-secret"\n')
    s = storage.load({"PUI_CONFIG": str(conf), "PUI_STORAGE_TYPE": "s3"})
    assert (s.kind, s.key, s.secret) == ("s3", "AKIAEXAMPLE", "s3-secret")
    # A bad value in the file names the file's key.
    conf.write_text('store = "dropbox"\n')
    with pytest.raises(ConfigError, match="PUI_CONFIG"):
        storage.load({"PUI_CONFIG": str(conf)})


@pytest.mark.parametrize("name", ["../x.zip", "a/../../b.zip", "a//b", "r1\n.zip", "a b.zip"])
def test_object_names_that_could_escape_are_refused(name):
    with pytest.raises(storage.StorageError, match="unsafe"):
        storage.check_key(name)


def test_local_store_keeps_todays_behaviour(tmp_path):
    zipped = tmp_path / "program-user-exhaust" / "r1_20260101.zip"
    zipped.parent.mkdir()
    zipped.write_bytes(b"zip")
    store = storage.open_store(storage.load({}), tmp_path)
    assert store.put(zipped, "program-user-exhaust/r1_20260101.zip") == str(zipped)
    assert zipped.exists()
    assert store.signed_url(str(zipped)) == zipped.resolve().as_uri()


# --- on the emulators -------------------------------------------------------------------------


def test_report_lands_where_sunbird_puts_it_and_opens_through_the_signed_url(cloud_world):
    w = cloud_world
    pid = f"p-{w.name}"
    a, b = ids(2)
    for uid in (a, b):
        w.enrol(pid, uid, pii=False, locations=LOC_A)
    rid = f"{w.name}-r1"
    w.submit(rid, request_data(pid, []))
    assert w.run_once() == (1, 0)
    row = w.row(rid)
    assert row["status"] == "SUCCESS", row["err_message"]
    day = dt.datetime.now(IST).strftime("%Y%m%d")
    # The path inside the container, exactly as Sunbird's exhaust records it.
    key = f"ml_reports/program-user-exhaust/{rid}_{day}.zip"
    assert row["download_urls"] == [key]
    # Nothing stays on the worker's disk.
    assert not list(w.store.rglob("*.zip")) and not list(w.store.rglob("*.csv"))
    assert w.cloud.head(key)["size"] > 0

    w.env["PUI_STORAGE_URL_EXPIRY"] = "600"
    shown = cli(w, "status", rid, "--url")
    assert shown.returncode == 0, shown.stderr
    url = shown.stdout.strip().splitlines()[-1]
    assert url.startswith("http://127.0.0.1:") and "?" in url
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    if w.kind == "s3":
        assert query["X-Amz-Expires"] == ["600"]
    else:  # a read-only SAS for this one blob, valid from st to se
        assert (query["sp"], query["sr"]) == (["r"], ["b"])
        valid = dt.datetime.fromisoformat(query["se"][0]) - dt.datetime.fromisoformat(
            query["st"][0]
        )
        assert valid == dt.timedelta(seconds=600)
    assert w.env["PUI_STORAGE_SECRET"] not in shown.stdout + shown.stderr
    raw = fetch(url)
    # Only the encrypted zip left the worker: no CSV text in the object, no opening without
    # the request's password.
    assert HEADER_PLAIN.encode() not in raw
    with pytest.raises(RuntimeError):
        open_zip(raw, None)
    assert lines(open_zip(raw, KEY)) == [HEADER_PLAIN, tail(a), tail(b)]

    # The container is private and the signature is checked.
    for bad in (url.split("?")[0], tamper(url)):
        with pytest.raises(urllib.error.HTTPError) as err:
            fetch(bad)
        assert err.value.code in (401, 403)


def test_rerun_replaces_its_own_object_and_nothing_else(cloud_world):
    w = cloud_world
    p1, p2 = f"p1-{w.name}", f"p2-{w.name}"
    a, b, c = ids(3)
    w.enrol(p1, a, pii=False, locations=LOC_A)
    w.enrol(p2, b, pii=False, locations=LOC_A)
    r1, r2 = f"{w.name}-r1", f"{w.name}-r2"
    w.submit(r1, request_data(p1, []))
    w.submit(r2, request_data(p2, []), key="another-password")
    assert w.run_once() == (2, 0)
    (k1,) = w.row(r1)["download_urls"]
    (k2,) = w.row(r2)["download_urls"]
    before = w.cloud.head(k2)
    r2_bytes = fetch(w.cloud.signed_url(k2))

    w.enrol(p1, c, pii=False, locations=LOC_A)
    w.pg.execute("UPDATE job_request SET status = 'SUBMITTED' WHERE request_id = %s", (r1,))
    assert w.run_once() == (1, 0)
    assert w.row(r1)["download_urls"] == [k1]
    assert lines(open_zip(fetch(w.cloud.signed_url(k1)), KEY)) == [HEADER_PLAIN, tail(a), tail(c)]
    assert w.cloud.head(k2)["e_tag"] == before["e_tag"]
    assert fetch(w.cloud.signed_url(k2)) == r2_bytes
    assert keys_under(w.cloud, f"ml_reports/program-user-exhaust/{w.name}") == sorted([k1, k2])


def test_store_down_fails_the_request_which_succeeds_on_retry(cloud_world):
    w = cloud_world
    pid = f"p-{w.name}"
    (a,) = ids(1)
    w.enrol(pid, a, pii=False, locations=LOC_A)
    rid, later = f"{w.name}-down", f"{w.name}-later"
    w.submit(rid, request_data(pid, []))
    w.submit(later, request_data(pid, []), key="another-password")
    nothing_there = ENVS[w.kind](free_port())
    w.env.update(nothing_there)
    worker = w.worker()
    try:
        assert worker.run_once() == (0, 1)
    finally:
        worker.close()
    # The run stopped there: the next request would only fail the same way.
    assert "storage failed" in worker.unavailable
    assert (w.row(later)["status"], w.row(later)["iteration"]) == ("SUBMITTED", 0)
    row = w.row(rid)
    assert row["status"] == "FAILED"
    assert row["iteration"] == 1
    assert row["err_message"].startswith(f"uploading the report to {w.kind} storage failed")
    assert "Traceback" not in row["err_message"] and "\n" not in row["err_message"]
    assert w.env["PUI_STORAGE_SECRET"] not in row["err_message"]
    assert not row["download_urls"]
    assert not list(w.store.rglob("*.zip")) and not list(w.store.rglob("*.csv"))
    assert keys_under(w.cloud, f"ml_reports/program-user-exhaust/{w.name}") == []
    shown = cli(w, "status", rid, "--url")
    assert shown.returncode == 1
    assert "has no report to download" in shown.stderr

    # The request's retry rules take it again; with the store back it succeeds.
    w.env.update(ENVS[w.kind]())
    assert w.run_once() == (2, 0)
    row = w.row(rid)
    assert (row["status"], row["iteration"]) == ("SUCCESS", 2)
    assert lines(open_zip(fetch(w.cloud.signed_url(row["download_urls"][0])), KEY)) == [
        HEADER_PLAIN,
        tail(a),
    ]


def test_a_store_that_stays_down_ends_failed_after_three_attempts(cloud_world):
    w = cloud_world
    pid = f"p-{w.name}"
    w.enrol(pid, ids(1)[0], pii=False, locations=LOC_A)
    rid = f"{w.name}-gone"
    w.submit(rid, request_data(pid, []))
    w.env.update(ENVS[w.kind](free_port()))
    for _ in range(3):
        assert w.run_once() == (0, 1)
    assert w.run_once() == (0, 0)
    row = w.row(rid)
    assert (row["status"], row["iteration"]) == ("FAILED", 3)
    assert "storage failed" in row["err_message"]


class CuttingProxy:
    """Forwards to the emulator until ``budget`` bytes of requests went through, then cuts every
    connection: an upload that loses its store half-way."""

    def __init__(self, port: int, budget: int) -> None:
        self.upstream = port
        self.budget = budget
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _take(self, n: int) -> bool:
        with self.lock:
            if self.budget < n:
                self.budget = 0
                return False
            self.budget -= n
            return True

    def _serve(self, client: socket.socket) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream), 5)
        except OSError:
            client.close()
            return

        def back() -> None:
            try:
                while data := up.recv(65536):
                    client.sendall(data)
            except OSError:
                pass
            finally:
                client.close()

        threading.Thread(target=back, daemon=True).start()
        try:
            while data := client.recv(65536):
                if not self._take(len(data)):
                    break
                up.sendall(data)
        except OSError:
            pass
        finally:
            for s in (client, up):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.stopped = True
        self.server.close()


def test_large_zip_goes_up_in_parts_and_a_cut_upload_leaves_the_old_object(
    kind, unique_name, tmp_path
):
    env = {**ENVS[kind](), "PUI_STORAGE_PART_SIZE": str(5 * MIB)}
    store = cloud_store(env)
    name = f"program-user-exhaust/{unique_name}-big_20260101.zip"
    key = f"ml_reports/{name}"
    first = os.urandom(12 * MIB)
    zipped = tmp_path / "big.zip"
    zipped.write_bytes(first)
    try:
        assert store.put(zipped, name) == key
        assert not zipped.exists()
        url = store.signed_url(key)
        assert fetch(url) == first
        # Uploaded in parts of 5 MiB read from disk: 3 blocks on Azure, a 3-part ETag on S3.
        if kind == "azure":
            blocks = fetch(url + "&comp=blocklist").decode()
            assert blocks.count("<Block>") == 3, blocks
        else:
            assert store.head(key)["e_tag"].strip('"').endswith("-3")

        proxy = CuttingProxy(AZURITE.port if kind == "azure" else SEAWEED.port, 7 * MIB)
        try:
            cut = cloud_store({**ENVS[kind](proxy.port), "PUI_STORAGE_PART_SIZE": str(5 * MIB)})
            zipped.write_bytes(os.urandom(12 * MIB))
            with pytest.raises(storage.StorageError, match=f"uploading the report to {kind}"):
                cut.put(zipped, name)
        finally:
            proxy.close()
        # The store shows the previous complete object, never a part of the new one.
        assert fetch(store.signed_url(key)) == first
        assert keys_under(store, f"ml_reports/program-user-exhaust/{unique_name}") == [key]
    finally:
        store.delete(key)
    assert store.head(key) is None


UPLOAD_AND_MEASURE = """
import json, os, resource, sys
from pathlib import Path
from dataflow.exhaust import storage
env, path, name = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
store = storage.open_store(storage.load(env), path.parent)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
key = store.put(path, name)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, key)
"""


def test_upload_memory_is_bounded_by_the_parts_not_the_file(kind, unique_name, tmp_path):
    """A 128 MiB zip goes up with at most a few 8 MiB parts in memory at once."""
    import json

    big = tmp_path / "big.zip"
    with open(big, "wb") as f:
        for _ in range(128):
            f.write(os.urandom(MIB))
    env = ENVS[kind]()
    name = f"program-user-exhaust/{unique_name}-mem_20260101.zip"
    done = subprocess.run(
        [sys.executable, "-c", UPLOAD_AND_MEASURE, json.dumps(env), str(big), name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    grown_kib, key = done.stdout.split()
    try:
        assert cloud_store(env).head(key)["size"] == 128 * MIB
        assert int(grown_kib) < 80 * 1024, f"peak RSS grew by {int(grown_kib) // 1024} MiB"
    finally:
        cloud_store(env).delete(key)


@pytest.mark.parametrize("form", ["pem", "json"])
def test_gcs_signed_url_is_signed_with_the_service_accounts_key(form):
    """No GCS emulator here: the URL is checked offline against the public half of the key the
    settings carry (V4 signing is done locally; no network call is made)."""
    import hashlib
    import json

    from Cryptodome.Hash import SHA256
    from Cryptodome.PublicKey import RSA
    from Cryptodome.Signature import pkcs1_15

    rsa = RSA.generate(2048)
    pem = rsa.export_key(pkcs=8).decode()
    email = "pui-reports@sunbird-project.iam.gserviceaccount.com"
    if form == "pem":  # Sunbird's gcloud_client_key + gcloud_private_secret
        env = {"PUI_STORAGE_KEY": email, "PUI_STORAGE_SECRET": pem}
    else:
        account = {"type": "service_account", "client_email": email, "private_key": pem}
        env = {"PUI_STORAGE_SECRET": json.dumps({**account, "private_key_id": "k1"})}
    env.update(PUI_STORAGE_TYPE="gcs", PUI_STORAGE_URL_EXPIRY="900")
    key = "ml_reports/program-user-exhaust/r1_20260101.zip"
    url = cloud_store(env).signed_url(key)

    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "storage.googleapis.com",
        f"/reports/{key}",
    )
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-Expires"] == "900"
    assert query["X-Goog-Credential"].startswith(f"{email}/")
    # Rebuild the V4 string to sign and check the signature with the public key.
    signed = sorted((k, v) for k, v in query.items() if k != "X-Goog-Signature")
    quote = urllib.parse.quote
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in signed
    )
    canonical = (
        f"GET\n{parts.path}\n{canonical_query}\nhost:{parts.netloc}\n\nhost\nUNSIGNED-PAYLOAD"
    )
    scope = query["X-Goog-Credential"].split("/", 1)[1]
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"GOOG4-RSA-SHA256\n{query['X-Goog-Date']}\n{scope}\n{digest}"
    signature = bytes.fromhex(query["X-Goog-Signature"])
    pkcs1_15.new(rsa.publickey()).verify(SHA256.new(to_sign.encode()), signature)
    with pytest.raises(ValueError):
        other = RSA.generate(2048).publickey()
        pkcs1_15.new(other).verify(SHA256.new(to_sign.encode()), signature)
