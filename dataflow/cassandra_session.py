"""The Cassandra session every part of the project opens: contact points, credentials, client
TLS, token-aware routing, consistency, and patient reconnection while Cassandra is away."""

from __future__ import annotations

import logging
import ssl
import time

from cassandra import AuthenticationFailed, ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

from dataflow.config import ConfigError, Settings

log = logging.getLogger("dataflow.cassandra")


def connect(settings: Settings, *, wait: float | None = None) -> tuple[Cluster, Session]:
    """Connect to Cassandra, retrying while it is unavailable (forever when ``wait`` is None)."""
    auth = None
    if settings.cassandra_username:
        auth = PlainTextAuthProvider(settings.cassandra_username, settings.cassandra_password)
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(
            DCAwareRoundRobinPolicy(local_dc=settings.cassandra_local_dc)
        ),
        consistency_level=ConsistencyLevel.name_to_value[settings.cassandra_consistency],
    )
    tls = tls_context(settings)
    deadline = None if wait is None else time.monotonic() + wait
    attempt = 0
    while True:
        cluster = Cluster(
            list(settings.cassandra_hosts),
            port=settings.cassandra_port,
            auth_provider=auth,
            ssl_context=tls,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            # v5 wraps every frame in CRC-checked segments that the driver computes in
            # Python (a tenth of the job's CPU in a profile); v4 has everything we use.
            protocol_version=4,
            connect_timeout=10,
        )
        try:
            return cluster, cluster.connect()
        except NoHostAvailable as exc:
            cluster.shutdown()
            if any(isinstance(e, AuthenticationFailed) for e in exc.errors.values()):
                # Waiting does not fix a wrong password: say so now, naming the settings.
                raise ConnectionError(
                    "Cassandra rejected the credentials: check PUI_CASSANDRA_USERNAME "
                    f"({settings.cassandra_username or 'not set'}) and PUI_CASSANDRA_PASSWORD"
                ) from None
            tls_problem = _tls_failure(exc)
            if tls_problem:
                # A certificate that does not verify, or TLS against a clear-text port, stays so.
                raise ConnectionError(tls_failure_message(settings, tls_problem)) from None
            attempt += 1
            if deadline is not None and time.monotonic() >= deadline:
                raise ConnectionError(
                    f"Cassandra is not reachable at {','.join(settings.cassandra_hosts)}:"
                    f"{settings.cassandra_port}: {describe(exc)}"
                ) from None
            pause = min(2**attempt, 30)
            if deadline is not None:
                # One more attempt right at the deadline rather than a sleep past it.
                pause = max(min(pause, deadline - time.monotonic()), 0.1)
            log.warning("Cassandra not reachable (%s); retrying in %.0fs", describe(exc), pause)
            time.sleep(pause)


def tls_failure_message(settings: Settings, problem: str) -> str:
    """What both engines say when the TLS handshake fails."""
    return (
        f"TLS with Cassandra at {','.join(settings.cassandra_hosts)}:{settings.cassandra_port} "
        f"failed ({problem}): check PUI_CASSANDRA_TLS"
        f"{'_*' if settings.cassandra_tls else ' (off)'} and the server's "
        "client_encryption_options"
    )


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context of PUI_CASSANDRA_TLS*, or None when TLS is off. The server's
    certificate chain is always verified; its name against the contact point unless
    PUI_CASSANDRA_TLS_CHECK_HOSTNAME=false (e.g. certificates issued for IPs you do not use)."""
    if not settings.cassandra_tls:
        return None
    ca = settings.cassandra_tls_ca_file
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"PUI_CASSANDRA_TLS_CA_FILE ({ca}) is not a PEM file of CA certificates: {exc}"
        ) from None
    context.check_hostname = settings.cassandra_tls_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.cassandra_tls_cert_file:
        try:
            context.load_cert_chain(
                settings.cassandra_tls_cert_file, settings.cassandra_tls_key_file
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"PUI_CASSANDRA_TLS_CERT_FILE ({settings.cassandra_tls_cert_file}) and "
                f"PUI_CASSANDRA_TLS_KEY_FILE ({settings.cassandra_tls_key_file}) are not a PEM "
                f"certificate and its unencrypted private key: {exc}"
            ) from None
    return context


def _tls_failure(exc: NoHostAvailable) -> str | None:
    """The TLS error among the hosts' errors, if the failure was one."""
    for err in exc.errors.values():
        text = str(err)
        if isinstance(err, ssl.SSLError) or "SSL" in text or "certificate" in text.lower():
            return text[:200]
    return None


def describe(exc: BaseException) -> str:
    """One line for logs and failed-topic details (per-host reasons when no host answered)."""
    if isinstance(exc, NoHostAvailable) and exc.errors:
        return "; ".join(f"{host}: {err}" for host, err in exc.errors.items())[:300]
    return (str(exc) or type(exc).__name__)[:300]
