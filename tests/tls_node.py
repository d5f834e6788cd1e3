"""A test PKI and a private one-node Cassandra with client encryption, started from the local
stack's jars on ports of its own: shared by tests/test_cassandra_tls.py and
benchmarks/tls_e2e.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.local_services import services


class NodeUnavailable(RuntimeError):
    """Java 17 or the Cassandra jars are missing."""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> Path:
    """In ``d``: a CA, a server certificate for 127.0.0.1 (``server``), one for a DNS name only
    (``named``), a client certificate (``client``) and an unrelated CA (``other``)."""
    key = ["-newkey", "rsa:2048", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=pui-test-ca", cwd=d)  # fmt: skip
    _openssl("req", "-x509", *key, "-keyout", "other.key", "-out", "other.pem", "-days", "2",
             "-subj", "/CN=other-ca", cwd=d)  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("named", "subjectAltName=DNS:cassandra.example.org"),
        # An X.509 v3 certificate (any extension makes one): rustls refuses v1 ones.
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=pui-{name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


def free_port() -> int:
    """A local port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tls_node(
    pki: Path, d: Path, *, require_client_auth: bool = True, optional: bool = False
) -> Iterator[int]:
    """A one-node Cassandra (the local stack's jars and settings) in ``d`` whose native port
    speaks TLS with the ``server`` certificate; ``optional`` also accepts clear text on it.
    Yields the port; the node is stopped on exit."""
    jars = services.VAR / "lib" / "cassandra"
    if not services.JAVA.exists() or next(jars.glob("jamm-*.jar"), None) is None:
        raise NodeUnavailable("Java 17 and the Cassandra jars are needed: run scripts/install")
    (d / "keystore.pem").write_text(
        (pki / "server.key").read_text() + (pki / "server.pem").read_text()
    )
    port, storage, ssl_storage = free_port(), free_port(), free_port()
    ports = (port, storage, ssl_storage)
    yaml = services.cassandra_yaml(*ports, "pui tls node", "AllowAllAuthenticator")
    assert "client_encryption_options" not in yaml
    yaml += f"""
client_encryption_options:
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
  enabled: true
  optional: {str(optional).lower()}
  keystore: {d}/keystore.pem
  truststore: {pki}/ca.pem
  require_client_auth: {str(require_client_auth).lower()}
"""
    (d / "cassandra.yaml").write_text(yaml)
    argv = services.cassandra_argv(d / "cassandra.yaml", d / "data", d, "512m")
    with open(d / "node.log", "wb") as log:
        node = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=d, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            if node.poll() is not None:
                raise RuntimeError((d / "node.log").read_text()[-3000:])
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the TLS Cassandra node did not start") from None
                time.sleep(1)
        yield port
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(30)
