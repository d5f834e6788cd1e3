"""Taking over a table Sunbird's job wrote (spec streaming.md §3.4, docs/cutover.md), on the
real stack.

Sunbird's job consumed each row's first event three hours after it was produced and wrote the
row with plain INSERTs: wall-clock write timestamps, ``updated_at`` as a date. Its consumer
group committed its offsets (as Flink's Kafka consumer does on checkpoint). Then our job starts
on the same group and consumes what Sunbird had not: updates dated between the first event and
Sunbird's write, a delete, a new row. With ``PUI_WRITE_TIMESTAMP_OFFSET`` covering Sunbird's
lag they all take effect and a replay of the whole topic ends at the newest state; without it,
Cassandra keeps Sunbird's older state while our job counts the update as written.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from dataflow import config, schema
from dataflow.show import cutover_report, is_ours
from tests.conftest import require_rust
from tests.streaming_helpers import (
    ROOT,
    bootstrap,
    committed_lag,
    final_counters,
    job_env,
    produce,
    run_job,
    table_rows,
)

PARTITIONS = 2
HOUR = timedelta(hours=1)
LAG = 3 * HOUR  # how late Sunbird's job wrote each row after its event
OFFSET = "4h"  # covers LAG

# Rows Sunbird wrote before the switch, and what happens to each after it.
UPDATED = [("P1", "U1"), ("P1", "U2"), ("P2", "U3")]  # (a) one update, older than Sunbird's write
REORDERED = ("P2", "U4")  # (a) two updates, delivered newest first
DELETED = ("P1", "U5")  # (c) deleted after the switch
UNTOUCHED = [("P1", "U6"), ("P2", "U7")]  # nothing after the switch: Sunbird's stamps stay
SUNBIRD_ROWS = [*UPDATED, REORDERED, DELETED, *UNTOUCHED]
NEW = ("P3", "U8")  # first seen after the switch


def engines() -> list[dict[str, str]]:
    """The engine settings this checkout accepts: PUI_ENGINE when the lead's writer landed,
    else the flattener choice (both go through the same sink today)."""
    name = "PUI_ENGINE" if "PUI_ENGINE" in config.ENV_VARS else "PUI_FLATTENER"
    return [{name: "python"}, {name: "rust"}]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def event(p: str, u: str, version: int, when: datetime, created: datetime) -> dict:
    return {
        "_id": f"{p}-{u}-{version}",
        "programId": p,
        "userId": u,
        "programExternalId": f"EXT-{p}",
        "programName": f"Program {p} v{version}",
        "requestForPIIConsent": version % 2 == 0,
        "userProfile": {
            "userLocations": [
                {"type": "district", "name": f"D{version}", "id": f"d{version}", "code": version}
            ],
            "rootOrg": {"id": f"org-{version}", "orgName": f"Org {version}"},
            "profileUserTypes": [{"type": "Teacher", "subType": "hm"}],
        },
        "createdAt": iso(created),
        "updatedAt": iso(when),
        "deleted": False,
    }


def row(p: str, u: str, version: int, when: datetime, created: datetime) -> dict:
    """The row both jobs write for ``event(...)`` (its fields are ones where they agree)."""
    return {
        "program_externalid": f"EXT-{p}",
        "program_name": f"Program {p} v{version}",
        "pii_consent_required": version % 2 == 0,
        "user_locations": {"district_name": f"D{version}", "district_id": f"d{version}"}
        | {"district_code": str(version)},
        "organisation_id": f"org-{version}",
        "organisation_name": f"Org {version}",
        "user_type": "teacher",
        "user_sub_type": "HM",
        "created_at": created.date(),
        "updated_at": when.date(),
    }


def partition_of(key: tuple[str, str]) -> int:
    return sum(map(ord, "".join(key))) % PARTITIONS


class Scenario:
    """One table and topic: Sunbird's era, then the events our job takes over with."""

    def __init__(self, session, env: dict[str, str]):
        self.session = session
        self.env = env
        self.settings = bootstrap(env, PARTITIONS)
        self.table = f"{self.settings.cassandra_keyspace}.{self.settings.cassandra_table}"
        # Whole milliseconds, as the producer's JSON dates are.
        now = datetime.now(UTC).replace(microsecond=0)
        self.created = now - 30 * 24 * HOUR
        self.first = now - LAG  # each row's event that Sunbird wrote at about `now`
        self.update = now - HOUR  # newer than `first`, older than Sunbird's write
        self.expected: dict[tuple[str, str], dict] = {}
        self.sunbird_stamps: dict[tuple[str, str], int] = {}

    def sunbird_era(self) -> None:
        """Events in the topic, rows written Sunbird's way, offsets committed to the group."""
        records = []
        for key in SUNBIRD_ROWS:
            ev = event(*key, 1, self.first, self.created)
            records.append((partition_of(key), json.dumps(ev).encode(), ms(self.first)))
        produce(self.settings, records)
        insert = self.session.prepare(
            schema.insert_cql(self.settings.cassandra_keyspace, self.settings.cassandra_table)
        )
        stamp = self.session.prepare(
            f"SELECT WRITETIME(program_name) FROM {self.table} WHERE program_id = ? AND user_id = ?"
        )
        for key in SUNBIRD_ROWS:
            r = row(*key, 1, self.first, self.created)
            values = schema.values({"program_id": key[0], "user_id": key[1], **r})
            # A plain INSERT: the driver stamps it with the wall clock in microseconds, as
            # Sunbird's Java driver does. One stamp in a thousand is a whole millisecond, which
            # the check cannot tell from ours: write such a row again, a moment later.
            for _ in range(5):
                self.session.execute(insert, values)
                written = self.session.execute(stamp, key).one()[0]
                if written % 1000:
                    break
                time.sleep(0.002)
            self.sunbird_stamps[key] = written
            self.expected[key] = r
        # Sunbird's Flink consumer commits what it consumed to the group on checkpoint.
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_brokers,
                "group.id": self.settings.group_id,
                "enable.auto.commit": False,
            }
        )
        try:
            ends = []
            for p in range(PARTITIONS):
                tp = TopicPartition(self.settings.input_topic, p)
                ends.append(TopicPartition(tp.topic, p, consumer.get_watermark_offsets(tp, 10)[1]))
            consumer.commit(offsets=ends, asynchronous=False)
        finally:
            consumer.close()
        assert committed_lag(self.settings) == 0

    def after_switch(self) -> int:
        """What our job consumes after the switch; returns the number of messages."""
        records = []

        def add(key, payload, when):
            records.append((partition_of(key), json.dumps(payload).encode(), ms(when)))

        for key in UPDATED:
            add(key, event(*key, 2, self.update, self.created), self.update)
            self.expected[key] = row(*key, 2, self.update, self.created)
        newest = self.update + timedelta(minutes=10)
        add(REORDERED, event(*REORDERED, 3, newest, self.created), newest)
        add(REORDERED, event(*REORDERED, 2, self.update, self.created), self.update)
        self.expected[REORDERED] = row(*REORDERED, 3, newest, self.created)
        gone = {"programId": DELETED[0], "userId": DELETED[1], "deleted": True}
        add(DELETED, gone | {"updatedAt": iso(self.update)}, self.update)
        del self.expected[DELETED]
        add(NEW, event(*NEW, 1, self.update, self.created), self.update)
        self.expected[NEW] = row(*NEW, 1, self.update, self.created)
        produce(self.settings, records)
        return len(records)

    def rows(self) -> dict:
        return table_rows(self.session, self.settings)

    def show_cutover(self) -> tuple[int, int, int | None]:
        """``python -m dataflow.show --cutover``: (rows, rows not ours, newest not ours)."""
        proc = subprocess.run(
            [sys.executable, "-m", "dataflow.show", "--cutover"],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        total = int(re.search(r": (\d+) row\(s\), write-timestamp offset", proc.stdout)[1])
        foreign = int(re.search(r"not ours: (\d+) row", proc.stdout)[1])
        newest = re.search(r"newest stamp not ours: (\d+)", proc.stdout)
        return total, foreign, int(newest[1]) if newest else None

    def drop(self) -> None:
        self.session.execute(f"DROP KEYSPACE IF EXISTS {self.settings.cassandra_keyspace}")
        admin = AdminClient({"bootstrap.servers": self.settings.kafka_brokers})
        topics = [self.settings.input_topic, self.settings.failed_topic]
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            future.result()
        groups = [self.settings.group_id, f"{self.env['PUI_ENV']}-r"]
        for future in admin.delete_consumer_groups(groups, request_timeout=30).values():
            # The replay group exists only in the test that replays.
            with contextlib.suppress(KafkaException):
                future.result()


@pytest.fixture
def scenario(unique_name, kafka_brokers, cassandra_session):
    made = []

    def make(**extra: str) -> Scenario:
        s = Scenario(cassandra_session, job_env(f"{unique_name}{len(made)}", **extra))
        made.append(s)
        return s

    yield make
    for s in made:
        s.drop()


def assert_rows(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key, want in expected.items():
        for column, value in want.items():
            assert got[key][column] == value, (key, column)


@pytest.mark.services
@pytest.mark.parametrize("engine", engines(), ids=lambda e: "-".join(e.values()))
def test_with_the_offset_nothing_is_lost(scenario, engine):
    if "rust" in engine.values():
        require_rust()
    s = scenario(PUI_WRITE_TIMESTAMP_OFFSET=OFFSET, **engine)
    offset_us = 4 * 3_600_000_000
    s.sunbird_era()

    # Before the switch every row carries Sunbird's stamp, and the check says so.
    total, foreign, newest = s.show_cutover()
    assert (total, foreign) == (len(SUNBIRD_ROWS), len(SUNBIRD_ROWS))
    assert newest == max(s.sunbird_stamps.values())

    consumed = s.after_switch()
    proc = run_job(s.env)
    counters = final_counters(proc.stderr)
    # It resumed from the offsets Sunbird's group committed: only the new messages were read.
    assert counters["consumed"] == consumed
    assert counters["deleted"] == 1
    assert committed_lag(s.settings) == 0
    rows = s.rows()
    # (a) the updates took effect; (c) the delete removed the row.
    assert_rows(rows, s.expected)
    assert DELETED not in rows
    for key in [*UPDATED, NEW]:
        assert rows[key]["wt_program_name"] == int(s.update.timestamp()) * 10**6 + offset_us
    for key in UNTOUCHED:
        assert rows[key]["wt_program_name"] == s.sunbird_stamps[key]

    # Only the rows nobody wrote since the switch still carry Sunbird's stamps.
    total, foreign, newest = s.show_cutover()
    assert (total, foreign) == (len(s.expected), len(UNTOUCHED))
    assert newest == max(s.sunbird_stamps[k] for k in UNTOUCHED)
    # The same across many small pages.
    paged = cutover_report(s.session, s.settings, page_size=2)
    assert (paged["rows"], paged["not_ours"], paged["newest_not_ours_us"]) == (
        total,
        foreign,
        newest,
    )

    # (b) a replay of the whole topic from its start ends at the newest state of every row,
    # and then every stamp in the table is ours.
    replay = s.env | {"PUI_START_OFFSET": "earliest", "PUI_GROUP_ID": f"{s.env['PUI_ENV']}-r"}
    proc = run_job(replay)
    assert final_counters(proc.stderr)["consumed"] == len(SUNBIRD_ROWS) + consumed
    rows = s.rows()
    assert_rows(rows, s.expected)
    first_us = int(s.first.timestamp()) * 10**6
    for key in UNTOUCHED:
        assert rows[key]["wt_program_name"] == first_us + offset_us
    assert s.show_cutover()[1:] == (0, None)


@pytest.mark.services
def test_without_the_offset_the_update_is_lost(scenario):
    """The same switch with the default offset 0: Cassandra keeps Sunbird's stamps."""
    s = scenario()
    s.sunbird_era()
    before = dict(s.expected)
    consumed = s.after_switch()
    proc = run_job(s.env)
    counters = final_counters(proc.stderr)
    assert counters["consumed"] == consumed
    # Our job wrote them all, as far as it can tell...
    assert counters["upserted"] == consumed - 1
    assert counters["deleted"] == 1
    rows = s.rows()
    # ...but every update older than Sunbird's write was discarded, and the delete too.
    for key in [*UPDATED, REORDERED, DELETED]:
        assert rows[key]["program_name"] == before[key]["program_name"], key
        assert rows[key]["updated_at"] == s.first.date()
        assert rows[key]["wt_program_name"] == s.sunbird_stamps[key]
    assert rows[NEW]["program_name"] == s.expected[NEW]["program_name"]


# --- the "ours" criterion of show --cutover, without servers ----------------------------------

DAY = 86_400_000_000


def days(d: date) -> int:
    return (d - date(1970, 1, 1)).days


@pytest.mark.parametrize(
    ("stamp", "day", "offset", "ours"),
    [
        # Our stamp of an updatedAt at 10:00 UTC on day 19369, with and without an offset.
        (19369 * DAY + 36_000_000_000, 19369, 0, True),
        (19369 * DAY + 36_000_000_000 + 7_200_000_000, 19369, 7_200_000_000, True),
        # An updatedAt written with a -05:00 offset late in the day lands on the next UTC day.
        (19370 * DAY + 4 * 3_600_000_000, 19369, 0, True),
        # Sunbird's wall clock, microseconds: not a whole millisecond.
        (19369 * DAY + 36_000_000_123, 19369, 0, False),
        # A whole millisecond, but three days after its row's date: Sunbird's late write.
        (19372 * DAY + 36_000_000_000, 19369, 0, False),
        # ...and the same stamp once an offset of three days is set: it could be ours.
        (19372 * DAY + 36_000_000_000, 19369, 3 * DAY, True),
        # Before the row's date once the offset is taken off: a stamp the offset already beats.
        (19369 * DAY, 19369, DAY, False),
        # No updated_at: only our job writes such rows.
        (123, None, 0, True),
    ],
)
def test_is_ours(stamp, day, offset, ours):
    assert is_ours(stamp, day, offset) is ours


def test_is_ours_matches_the_write_rule():
    from dataflow.write_time import write_timestamp

    offset = 7_200_000_000
    for when in (
        datetime(2023, 1, 12, 0, 0, tzinfo=UTC),
        datetime(2023, 1, 12, 23, 59, 59, tzinfo=UTC),
    ):
        updated_us = int(when.timestamp()) * 10**6
        stamp = write_timestamp(updated_us, None, updated_us + DAY, offset)
        assert is_ours(stamp, days(when.date()), offset)
        assert not is_ours(stamp + 1, days(when.date()), offset)
