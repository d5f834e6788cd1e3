"""Fixtures for the real local stack (``scripts/services up``).

A test that needs a server fails under ``CI=true`` when the server is missing, and skips with
the same message elsewhere, so a developer without the stack can still run the pure tests.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

KAFKA = ("127.0.0.1", 9092)
CASSANDRA = ("127.0.0.1", 9042)
REDIS = ("127.0.0.1", 6379)
POSTGRES = ("127.0.0.1", 5432)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require(name: str, addr: tuple[str, int]) -> None:
    try:
        socket.create_connection(addr, 2).close()
    except OSError:
        msg = f"{name} is not running on {addr[0]}:{addr[1]}: run scripts/services up"
        if IN_CI:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def require_rust() -> None:
    """The Rust engine must be built in CI; elsewhere its absence skips."""
    from dataflow.flatten import StaleExtension, native

    try:
        native().flatten_batch  # noqa: B018 - the attribute is the check
    except StaleExtension as exc:
        # Built, but for other columns than the table's definition: a failure to fix, even
        # outside CI, never a skip.
        pytest.fail(str(exc), pytrace=False)
    except (ImportError, AttributeError):
        msg = "the Rust flattener is not built: run scripts/install"
        if IN_CI:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def kafka_brokers() -> str:
    _require("Kafka", KAFKA)
    return f"{KAFKA[0]}:{KAFKA[1]}"


@pytest.fixture(scope="session")
def cassandra_session():
    _require("Cassandra", CASSANDRA)
    from cassandra.cluster import Cluster
    from cassandra.policies import ConstantReconnectionPolicy

    # Some tests restart Cassandra: reconnect within a second, not after exponential backoff.
    cluster = Cluster(
        [CASSANDRA[0]],
        port=CASSANDRA[1],
        protocol_version=5,
        reconnection_policy=ConstantReconnectionPolicy(1.0),
    )
    session = cluster.connect()
    yield session
    cluster.shutdown()


@pytest.fixture(scope="session")
def redis_url() -> str:
    _require("Redis", REDIS)
    return f"redis://{REDIS[0]}:{REDIS[1]}/0"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    _require("PostgreSQL", POSTGRES)
    return f"postgresql://postgres@{POSTGRES[0]}:{POSTGRES[1]}/pui"


@pytest.fixture
def unique_name() -> str:
    """A short identifier unique to this test run, usable as a topic, keyspace or prefix."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_world(unique_name, cassandra_session, postgres_dsn, redis_url, tmp_path):
    """Exhaust worlds (tests/exhaust_world.py), each with the given PUI_* settings and its own
    schema, keyspaces and store; all disposed of afterwards."""
    from tests.exhaust_world import World  # only the exhaust's tests pay for its imports

    made: list[World] = []

    def make(**env: str) -> World:
        name = f"{unique_name}_{len(made)}"
        made.append(World(name, cassandra_session, postgres_dsn, redis_url, tmp_path / name, **env))
        return made[-1]

    yield make
    for w in made:
        w.dispose()


@pytest.fixture
def world(make_world):
    """One exhaust world with the default settings."""
    return make_world()
