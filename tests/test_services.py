"""The local stack works as the product needs it: one round trip per server, on the real thing."""

from __future__ import annotations

import datetime as dt
import time
import tomllib
from pathlib import Path

import pytest

from dataflow import schema

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parent.parent


def test_kafka_topic_with_four_partitions_delivers_every_message(kafka_brokers, unique_name):
    from confluent_kafka import Consumer, KafkaError, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_brokers})
    admin.create_topics([NewTopic(unique_name, num_partitions=4, replication_factor=1)])[
        unique_name
    ].result(30)
    meta = admin.list_topics(unique_name, timeout=10)
    assert len(meta.topics[unique_name].partitions) == 4

    sent = {f"message-{i}".encode() for i in range(1000)}
    producer = Producer({"bootstrap.servers": kafka_brokers})
    for i, value in enumerate(sorted(sent)):
        producer.produce(unique_name, value=value, key=str(i).encode())
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_brokers,
            "group.id": unique_name,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    consumer.subscribe([unique_name])
    received: list[bytes] = []
    partitions: set[int] = set()
    at_eof: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition())
                    if len(at_eof) == 4 and len(received) >= len(sent):
                        break
                    continue
                raise AssertionError(msg.error().str())
            received.append(msg.value())
            partitions.add(msg.partition())
    finally:
        consumer.close()
        admin.delete_topics([unique_name])
    assert len(received) == len(sent)
    assert set(received) == sent
    # Keyed messages spread over the partitions: a topic silently created with one partition
    # would put all of them in partition 0.
    assert partitions == {0, 1, 2, 3}


def test_cassandra_program_enrollment_map_and_write_timestamps(cassandra_session, unique_name):
    session = cassandra_session
    session.execute(schema.keyspace_ddl(unique_name))
    try:
        session.execute(schema.program_enrollment_ddl(unique_name, "program_enrollment"))
        insert = session.prepare(
            f"INSERT INTO {unique_name}.program_enrollment "
            "(program_id, user_id, user_locations, created_at) VALUES (?, ?, ?, ?) "
            "USING TIMESTAMP ?"
        )
        locations = {"state_name": "Karnataka", "district_name": "Bengaluru Urban"}
        session.execute(insert, ("p1", "u1", locations, dt.date(2023, 1, 12), 2_000_000))
        # An older write loses against the newer one, whatever order they arrive in.
        session.execute(insert, ("p1", "u1", {"state_name": "Old"}, dt.date(2020, 1, 1), 1_000))
        row = session.execute(
            f"SELECT user_locations, created_at, WRITETIME(created_at) AS wt "
            f"FROM {unique_name}.program_enrollment WHERE program_id = 'p1' AND user_id = 'u1'"
        ).one()
        assert dict(row.user_locations) == locations
        assert row.created_at.date() == dt.date(2023, 1, 12)
        assert row.wt == 2_000_000
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {unique_name}")


def test_redis_hash_round_trip(redis_url, unique_name):
    import redis

    client = redis.Redis.from_url(redis_url)
    key = f"user:{unique_name}"
    try:
        client.hset(key, mapping={"firstname": "Asha", "email": "ZW5j\ncnlwdGVk"})
        assert client.hgetall(key) == {b"firstname": b"Asha", b"email": b"ZW5j\ncnlwdGVk"}
    finally:
        client.delete(key)
        client.close()


def test_postgres_json_round_trip(postgres_dsn, unique_name):
    import psycopg
    from psycopg.types.json import Json

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {unique_name} (id text PRIMARY KEY, data json)")
        try:
            conn.execute(
                f"INSERT INTO {unique_name} VALUES (%s, %s)", ("r1", Json({"type": "x", "n": 1}))
            )
            assert conn.execute(f"SELECT data FROM {unique_name}").fetchall() == [
                ({"type": "x", "n": 1},)
            ]
        finally:
            conn.execute(f"DROP TABLE {unique_name}")


def test_rust_extension_is_built_from_this_checkout():
    from tests.conftest import require_rust

    require_rust()
    from dataflow.flatten import native

    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert native().version() == cargo["package"]["version"]
