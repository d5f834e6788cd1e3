"""The two engines on the same input, on the real stack: identical tables (every cell and its
write time) and identical failed-topic messages.

The input mixes what the rules treat differently: columns absent (an older value survives),
written as null, deletes, out-of-order and duplicated versions, dates the rules cannot read
(stamped from the Kafka timestamp), dates in the future (clamped to the wall clock, so only
their cells are compared, not their write times), rejections, and a row Cassandra refuses.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter

import pytest
from confluent_kafka.admin import AdminClient

from dataflow.sample_events import generate
from tests.conftest import require_rust
from tests.streaming_helpers import (
    bootstrap,
    failed_messages,
    final_counters,
    job_env,
    produce,
    run_job,
    table_rows,
)

pytestmark = pytest.mark.services

PARTITIONS = 4
KAFKA_TS_MS = 1_700_000_000_456
FUTURE = "2099-06-01T00:00:00Z"


def mutate(rng: random.Random, raw: bytes) -> bytes:
    """One of the shapes the rules distinguish, chosen at random."""
    ev = json.loads(raw)
    profile = ev.get("userProfile") or {}
    choice = rng.randrange(10)
    if choice == 0:
        ev.pop("userProfile", None)  # locations, org and types: not written
    elif choice == 1:
        profile.pop("rootOrg", None)  # falls back to organisations[] or not written
    elif choice == 2:
        profile["profileUserTypes"] = []  # both written as null
    elif choice == 3:
        ev["programName"] = ""  # written as null
    elif choice == 4:
        ev["updatedAt"] = "2023-02-30T10:00:00Z"  # unusable: stamped from Kafka
    elif choice == 5:
        ev["requestForPIIConsent"] = "TRUE"
    elif choice == 6:
        profile["userLocations"] = [{"type": "district", "name": "Dé", "code": 7}]
    return json.dumps(ev).encode()


def corpus() -> list[bytes]:
    rng = random.Random(77)
    # Three versions of 400 rows, every 25th a delete, most of them reshaped.
    base = generate(1200, programs=6, users=400, seed=3, delete_every=25)
    values = [mutate(rng, v) for v in base]
    values += rng.sample(values, 100)  # duplicates
    future = json.loads(base[0])
    future.update(userId="future-user", updatedAt=FUTURE, deleted=False)
    values.append(json.dumps(future).encode())
    values += [
        b"{not json",
        b'{"programId": "p1"}',
        b'{"programId": "p1", "userId": "u1", "userProfile": {"rootOrg": "x"}}',
        b'{"programId": "p1", "userId": "u1", "requestForPIIConsent": "maybe"}',
        json.dumps({"programId": "k" * 70_000, "userId": "u1"}).encode(),  # refused by Cassandra
        # Refused too, but inside a batch of its program's good rows: only it is rejected.
        json.dumps({"programId": future["programId"], "userId": "u" * 70_000}).encode(),
    ]
    rng.shuffle(values)
    return values


@pytest.fixture(scope="module")
def runs(cassandra_session):
    """The same records (same partitions, same Kafka timestamps) through each engine."""
    require_rust()
    name = f"d{uuid.uuid4().hex[:10]}"
    rng = random.Random(5)
    values = corpus()
    records = [(rng.randrange(PARTITIONS), v, KAFKA_TS_MS) for v in values]
    out = {}
    try:
        for engine in ("python", "rust"):
            env = job_env(f"{name}{engine}", PUI_ENGINE=engine)
            settings = bootstrap(env, PARTITIONS)
            produce(settings, records)
            proc = run_job(env)
            assert f"with the {engine} engine" in proc.stderr
            out[engine] = {
                "settings": settings,
                "rows": table_rows(cassandra_session, settings),
                "counters": final_counters(proc.stderr),
                "failed": failed_messages(settings, 6),
            }
        yield out
    finally:
        for run in out.values():
            settings = run["settings"]
            cassandra_session.execute(
                f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}", timeout=60
            )
            admin = AdminClient({"bootstrap.servers": settings.kafka_brokers})
            for future in admin.delete_topics(
                [settings.input_topic, settings.failed_topic]
            ).values():
                future.result(30)


def test_same_table_cells_and_write_times(runs):
    python, rust = runs["python"]["rows"], runs["rust"]["rows"]
    assert len(python) > 300
    assert python.keys() == rust.keys()
    clamped = [k for k in python if k[1] == "future-user"]
    assert len(clamped) == 1
    for key in clamped:
        p, r = python.pop(key), rust.pop(key)
        assert {c: v for c, v in p.items() if not c.startswith("wt_")} == {
            c: v for c, v in r.items() if not c.startswith("wt_")
        }
    different = [k for k in python if python[k] != rust[k]]
    assert not different, (different[:3], python[different[0]], rust[different[0]])


def test_same_counters(runs):
    python, rust = runs["python"]["counters"], runs["rust"]["counters"]
    assert python == rust
    assert python["rejected"] == 6
    assert python["invalid_date"] > 0
    assert python["deleted"] > 0


def test_same_failed_topic_messages(runs):
    def view(messages):
        out = Counter()
        for msg in messages:
            h = {k: v.decode() for k, v in msg.headers()}
            out[
                (
                    msg.value(),
                    h["error.reason"],
                    h["source.partition"],
                    h["source.offset"],
                    h["source.timestamp"],
                )
            ] += 1
        return out

    python, rust = view(runs["python"]["failed"]), view(runs["rust"]["failed"])
    assert python == rust
    reasons = Counter(key[1] for key in python.elements())
    assert reasons["cassandra_rejected"] == 2
    assert reasons["malformed_json"] == 1
