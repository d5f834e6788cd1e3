"""Cassandra client TLS (PUI_CASSANDRA_TLS*): settings checked at start naming the setting; the
driver's real TLS handshake with them - chain, address check, client certificate - against a TLS
listener; TLS against the local plaintext Cassandra failing at once with the cause; and the job
writing through a private Cassandra node with client encryption and required client
certificates, started from the local stack's jars on its own ports and data (about 20 s)."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from dataflow import config, engines
from dataflow.bootstrap import bootstrap_cassandra
from dataflow.cassandra_session import connect, tls_context
from dataflow.kafka_admin import ensure_topics
from dataflow.sample_events import generate
from tests.conftest import IN_CI, require_rust
from tests.streaming_helpers import final_counters, job_env, produce, run_job
from tests.test_streaming_startup import delete_topics
from tests.tls_node import NodeUnavailable, make_pki, tls_node


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 (and one for a DNS name only), a client
    certificate, and an unrelated CA."""
    return make_pki(tmp_path_factory.mktemp("pki"))


class TlsListener:
    """Accepts TLS connections with a server certificate and records each handshake's outcome
    (and the client certificate's subject); then closes, as it speaks no CQL."""

    def __init__(self, pki: Path, cert: str, require_client_cert: bool):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
        self.ctx.load_verify_locations(pki / "ca.pem")
        self.ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handshakes: list[tuple[str, str]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                tls = self.ctx.wrap_socket(conn, server_side=True)
                subject = dict(x[0] for x in (tls.getpeercert() or {}).get("subject", ()))
                self.handshakes.append(("ok", subject.get("commonName", "")))
                tls.recv(64)
                # A CQL v4 ERROR frame (protocol error) to the OPTIONS request, so the driver gives
                # up at once instead of waiting for its connect timeout.
                text = b"this listener speaks no CQL"
                body = (10).to_bytes(4, "big") + len(text).to_bytes(2, "big") + text
                tls.sendall(b"\x84\x00\x00\x00\x00" + len(body).to_bytes(4, "big") + body)
                tls.close()
            except (OSError, ssl.SSLError) as exc:
                self.handshakes.append(("refused", str(exc)))
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(pki):
    made = []

    def make(cert="server", require_client_cert=False) -> TlsListener:
        made.append(TlsListener(pki, cert, require_client_cert))
        return made[-1]

    yield make
    for item in made:
        item.close()


def settings_for(port: int, pki: Path, **extra: str) -> config.Settings:
    return config.load(
        {
            "PUI_CASSANDRA_HOSTS": "127.0.0.1",
            "PUI_CASSANDRA_PORT": str(port),
            "PUI_CASSANDRA_TLS": "true",
            "PUI_CASSANDRA_TLS_CA_FILE": str(pki / "ca.pem"),
            **extra,
        }
    )


ENGINES = ("python", "rust")


def attempt(settings: config.Settings, wait: float = 1.0, engine="python") -> tuple[str, float]:
    """How a connection attempt of the engine fails: its message and how long it took."""
    started = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        if engine == "python":
            connect(settings, wait=wait)
        else:
            require_rust()
            # One attempt: an unreachable node is NotReachable, which the engine retries.
            engines.open_writer(settings, connect_timeout_s=wait)
    if isinstance(info.value, engines.NotReachable):
        return f"not reachable: {info.value}", time.monotonic() - started
    return str(info.value), time.monotonic() - started


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


# How each engine's TLS stack words the outcome (OpenSSL for the Python engine, rustls for the
# Rust one); the line around it is the same.
NO_CQL = {"python": "this listener speaks no CQL", "rust": "Invalid protocol message"}
UNTRUSTED = {"python": "CERTIFICATE_VERIFY_FAILED", "rust": "UnknownIssuer"}
MISMATCH = {"python": "IP address mismatch", "rust": 'not valid for name "127.0.0.1"'}


def outcomes(srv: TlsListener) -> list[tuple[str, str]]:
    """The listener's handshakes, once its thread has recorded the last one (a client that
    gives up first can be back before the listener notices)."""
    deadline = time.monotonic() + 5
    while not srv.handshakes and time.monotonic() < deadline:
        time.sleep(0.05)
    return srv.handshakes


def test_trusted_certificate_for_the_address_completes_the_handshake(pki, listener, engine):
    srv = listener()
    message, _ = attempt(settings_for(srv.port, pki), engine=engine)
    assert srv.handshakes and srv.handshakes[0][0] == "ok", srv.handshakes
    # TLS worked; what failed is the CQL conversation this listener does not have.
    assert not message.startswith("TLS with") and NO_CQL[engine] in message, message


def test_untrusted_certificate_stops_at_once_naming_tls(pki, listener, engine):
    srv = listener()
    message, took = attempt(settings_for(srv.port, pki, PUI_CASSANDRA_TLS_CA_FILE=str(
        pki / "other.pem")), wait=20, engine=engine)  # fmt: skip
    assert message.startswith(f"TLS with Cassandra at 127.0.0.1:{srv.port} failed"), message
    assert UNTRUSTED[engine] in message and "PUI_CASSANDRA_TLS_*" in message
    assert took < 5  # no waiting for a certificate to change
    assert outcomes(srv) and srv.handshakes[0][0] == "refused"


def test_address_check_is_on_by_default_and_can_be_turned_off(pki, listener, engine):
    srv = listener(cert="named")  # issued for cassandra.example.org, not 127.0.0.1
    message, _ = attempt(settings_for(srv.port, pki), engine=engine)
    assert message.startswith("TLS with") and MISMATCH[engine] in message, message
    off = settings_for(srv.port, pki, PUI_CASSANDRA_TLS_CHECK_HOSTNAME="false")
    message, _ = attempt(off, engine=engine)
    assert not message.startswith("TLS with") and NO_CQL[engine] in message, message
    assert srv.handshakes[-1][0] == "ok"  # the chain is still verified, only the name is not


def test_client_certificate_is_presented(pki, listener, engine):
    srv = listener(require_client_cert=True)
    attempt(settings_for(srv.port, pki), engine=engine)
    assert outcomes(srv) and srv.handshakes[0][0] == "refused"  # none presented
    srv.handshakes.clear()
    attempt(
        settings_for(
            srv.port,
            pki,
            PUI_CASSANDRA_TLS_CERT_FILE=str(pki / "client.pem"),
            PUI_CASSANDRA_TLS_KEY_FILE=str(pki / "client.key"),
        ),
        engine=engine,
    )
    assert ("ok", "pui-client") in outcomes(srv)


def test_tls_against_the_local_plaintext_cassandra_names_the_cause(pki, cassandra_session, engine):
    message, took = attempt(settings_for(9042, pki), wait=20, engine=engine)
    assert message.startswith("TLS with Cassandra at 127.0.0.1:9042 failed")
    assert "client_encryption_options" in message
    assert took < 5


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PUI_CASSANDRA_TLS_CA_FILE": "{ca}"}, "need PUI_CASSANDRA_TLS=true"),
        ({"PUI_CASSANDRA_TLS": "yes please"}, "PUI_CASSANDRA_TLS must be true or false"),
        (
            {"PUI_CASSANDRA_TLS": "true", "PUI_CASSANDRA_TLS_CA_FILE": "/nonexistent/ca.pem"},
            "PUI_CASSANDRA_TLS_CA_FILE points to",
        ),
        (
            {"PUI_CASSANDRA_TLS": "true", "PUI_CASSANDRA_TLS_CERT_FILE": "{client}"},
            "PUI_CASSANDRA_TLS_CERT_FILE and PUI_CASSANDRA_TLS_KEY_FILE must be set together",
        ),
        (
            {"PUI_CASSANDRA_TLS": "true", "PUI_CASSANDRA_TLS_CHECK_HOSTNAME": "sometimes"},
            "PUI_CASSANDRA_TLS_CHECK_HOSTNAME",
        ),
        (
            {"PUI_CASSANDRA_TLS_CERT_FILE": "{client}", "PUI_CASSANDRA_TLS_KEY_FILE": "{ca}"},
            "PUI_CASSANDRA_TLS_CERT_FILE, PUI_CASSANDRA_TLS_KEY_FILE need PUI_CASSANDRA_TLS=true",
        ),
    ],
)
def test_bad_tls_settings_are_refused_naming_them(pki, environ, named):
    paths = {"ca": str(pki / "ca.pem"), "client": str(pki / "client.pem")}
    environ = {k: v.format(**paths) for k, v in environ.items()}
    with pytest.raises(config.ConfigError, match=named):
        config.load(environ)


def test_unusable_pem_files_are_refused_naming_them(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    s = config.load({"PUI_CASSANDRA_TLS": "true", "PUI_CASSANDRA_TLS_CA_FILE": str(garbage)})
    with pytest.raises(config.ConfigError, match="PUI_CASSANDRA_TLS_CA_FILE"):
        tls_context(s)
    mismatched = config.load(
        {
            "PUI_CASSANDRA_TLS": "true",
            "PUI_CASSANDRA_TLS_CERT_FILE": str(pki / "client.pem"),
            "PUI_CASSANDRA_TLS_KEY_FILE": str(pki / "server.key"),
        }
    )
    with pytest.raises(config.ConfigError, match="PUI_CASSANDRA_TLS_KEY_FILE"):
        tls_context(mismatched)
    assert tls_context(config.load({})) is None
    # The ConfigMap's empty values mean the defaults: TLS off, address check on.
    empty = config.load({n: "" for n in config.ENV_VARS if n.startswith("PUI_CASSANDRA_TLS")})
    assert not empty.cassandra_tls and empty.cassandra_tls_check_hostname
    ctx = tls_context(config.load({"PUI_CASSANDRA_TLS": "true"}))  # the system's CAs
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


# --- a real Cassandra with client encryption ---------------------------------------------------


@pytest.fixture(scope="module")
def tls_cassandra(pki, tmp_path_factory):
    """A one-node Cassandra whose native port accepts only TLS with a client certificate
    signed by the test CA. Yields its native port."""
    try:
        with tls_node(pki, tmp_path_factory.mktemp("tls-cassandra")) as port:
            yield port
    except NodeUnavailable as exc:
        if IN_CI:
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


def test_job_writes_through_cassandra_with_client_encryption(
    pki, tls_cassandra, kafka_brokers, engine
):
    client = {
        "PUI_CASSANDRA_TLS_CERT_FILE": str(pki / "client.pem"),
        "PUI_CASSANDRA_TLS_KEY_FILE": str(pki / "client.key"),
    }
    # Without a client certificate the node refuses, and the start says it is TLS. With TLS
    # 1.3 the client learns it from the node's alert or, when the node closes first, from an
    # EOF in the handshake: either way the line names TLS and the settings, at once.
    message, took = attempt(settings_for(tls_cassandra, pki), wait=20, engine=engine)
    assert message.startswith("TLS with Cassandra") and "PUI_CASSANDRA_TLS_" in message, message
    cause = message.upper().replace("_", "")
    assert "CERTIFICATEREQUIRED" in cause or "EOF" in cause, message
    assert took < 5, message
    # In clear text the node only resets the connection.
    plain = config.load({"PUI_CASSANDRA_PORT": str(tls_cassandra)})
    assert "not reachable" in attempt(plain, engine=engine)[0]

    env = job_env(
        "tlsjob",
        PUI_KAFKA_BROKERS=kafka_brokers,
        PUI_ENV=f"tls{os.getpid()}{engine}",
        PUI_ENGINE=engine,
        PUI_CASSANDRA_KEYSPACE=f"ks_tls_{engine}",
        PUI_CASSANDRA_HOSTS="127.0.0.1",
        PUI_CASSANDRA_PORT=str(tls_cassandra),
        PUI_CASSANDRA_TLS="true",
        PUI_CASSANDRA_TLS_CA_FILE=str(pki / "ca.pem"),
        **client,
    )
    settings = config.load(env)
    bootstrap_cassandra(settings, wait=120)
    ensure_topics(settings, 2)
    try:
        produce(settings, [(i % 2, v, None) for i, v in enumerate(generate(300, seed=3))])
        stderr = run_job(env).stderr
        assert f"with the {engine} engine" in stderr
        counters = final_counters(stderr)
        assert counters["upserted"] == 300 and counters["cassandra_errors"] == 0
        cluster, session = connect(settings, wait=30)
        try:
            table = f"{settings.cassandra_keyspace}.{settings.cassandra_table}"
            assert session.execute(f"SELECT COUNT(*) FROM {table}").one()[0] == 300
            session.execute(f"DROP KEYSPACE {settings.cassandra_keyspace}", timeout=60)
        finally:
            cluster.shutdown()
    finally:
        delete_topics(kafka_brokers, settings.input_topic, settings.failed_topic)
