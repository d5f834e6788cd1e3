"""Print what the streaming job wrote: row count, a few rows, failed-topic size, group lag.

``--cutover`` instead checks a table taken over from Sunbird's job (docs/cutover.md): how many
rows still carry a write timestamp that is not ours, and the newest such stamp.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

from cassandra import DriverException
from cassandra.cluster import EXEC_PROFILE_DEFAULT, NoHostAvailable
from cassandra.query import SimpleStatement, tuple_factory
from confluent_kafka import Consumer, TopicPartition

from dataflow import config
from dataflow.cassandra_session import connect, describe
from dataflow.source import consumer_config, list_partitions


def topic_sizes(settings: config.Settings, topic: str) -> tuple[int, int]:
    """(messages in ``topic``, committed lag of the job's group on it)."""
    consumer = Consumer(consumer_config(settings, eof=False))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return 0, 0
        parts = [TopicPartition(topic, p) for p in meta.partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
        total = lag = 0
        for tp in parts:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            total += high - low
            done = committed.get(tp.partition, -1)
            lag += high - (done if done >= 0 else low)
        return total, lag
    finally:
        consumer.close()


DAY_US = 86_400_000_000
# A date is kept as written (spec §3.4), so the instant of an updatedAt written with a UTC
# offset (at most 14 h either way) can fall outside its UTC day by that much.
ZONE_SLACK_US = 14 * 3_600_000_000
# The row's write timestamp is the newest of these cells: both jobs write them on every upsert
# (ours writes pii_consent_required even when the event lacks it).
STAMPED = ("pii_consent_required", "updated_at", "program_name", "program_externalid")


def is_ours(stamp_us: int, updated_day: int | None, offset_us: int) -> bool:
    """Whether a row's write timestamp can be one our job wrote (dataflow.write_time).

    Ours is ``updatedAt + offset``, where updatedAt is a whole millisecond (MongoDB dates, as
    JSON.stringify writes them) on the row's ``updated_at`` date (days since the epoch, the
    date as written, so within 14 h of that UTC day). Sunbird's job stamps with its hosts'
    microsecond clock when it writes, so only about one of its stamps in a thousand is a whole
    millisecond by chance, and that one must also fall on its row's day, less the offset.
    A row without ``updated_at`` is ours: Sunbird's job never wrote one (it crashed on such
    events), while ours writes it as null and stamps the row from the Kafka timestamp.
    """
    if updated_day is None:
        return True
    event_us = stamp_us - offset_us
    day_start = updated_day * DAY_US
    return (
        event_us % 1000 == 0
        and day_start - ZONE_SLACK_US <= event_us < day_start + DAY_US + ZONE_SLACK_US
    )


def cutover_report(session, settings: config.Settings, page_size: int = 1000) -> dict:
    """Scan the table page by page: rows, rows not ours, newest stamp that is not ours."""
    table = f"{settings.cassandra_keyspace}.{settings.cassandra_table}"
    stamps = ", ".join(f"WRITETIME({c})" for c in STAMPED)
    query = SimpleStatement(f"SELECT updated_at, {stamps} FROM {table}", fetch_size=page_size)
    offset = settings.write_timestamp_offset_us
    rows = foreign = unstamped = 0
    newest: int | None = None
    # Plain tuples: the scan can cover millions of rows.
    profile = session.execution_profile_clone_update(
        EXEC_PROFILE_DEFAULT, row_factory=tuple_factory
    )
    for updated_at, *cell_stamps in session.execute(query, timeout=120, execution_profile=profile):
        rows += 1
        present = [s for s in cell_stamps if s is not None]
        if not present:
            unstamped += 1
            continue
        stamp = max(present)
        day = None if updated_at is None else updated_at.days_from_epoch
        if not is_ours(stamp, day, offset):
            foreign += 1
            if newest is None or stamp > newest:
                newest = stamp
    return {
        "table": table,
        "offset_us": offset,
        "rows": rows,
        "not_ours": foreign,
        "unstamped": unstamped,
        "newest_not_ours_us": newest,
    }


def _instant(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat()


def print_cutover(report: dict) -> None:
    offset = report["offset_us"]
    print(
        f"{report['table']}: {report['rows']} row(s), write-timestamp offset {offset} µs "
        f"({timedelta(microseconds=offset)})"
    )
    print(f"  not ours: {report['not_ours']} row(s)")
    if report["unstamped"]:
        print(f"  without a stamped cell: {report['unstamped']} row(s)")
    newest = report["newest_not_ours_us"]
    if newest is None:
        print("  every row carries a stamp of ours: the offset has nothing left to cover")
        return
    print(f"  newest stamp not ours: {newest} ({_instant(newest)})")
    # Our stamp of an event is its updatedAt + offset: it beats every stamp above when the
    # event is dated after this instant; an older event in the backlog needs a larger offset.
    print(f"  events dated after {_instant(newest - offset)} win over every such stamp")


def _shown(value) -> str:
    """Dates as yyyy-MM-dd and maps as dicts, the way a user reads them."""
    if hasattr(value, "date") and type(value).__name__ == "Date":
        return str(value.date())
    if hasattr(value, "items"):
        return repr(dict(value.items()))
    return repr(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataflow.show", description=__doc__)
    parser.add_argument("--rows", type=int, default=5, help="rows to print (default 5)")
    parser.add_argument(
        "--cutover",
        action="store_true",
        help="count rows whose write timestamp is not ours (PUI_WRITE_TIMESTAMP_OFFSET applies)",
    )
    args = parser.parse_args(argv)
    try:
        settings = config.load()
        if not args.cutover:
            list_partitions(settings, timeout=10)
        cluster, session = connect(settings, wait=30)
    except (config.ConfigError, RuntimeError, ConnectionError) as exc:
        print(f"show failed: {exc}", file=sys.stderr)
        return 1
    if args.cutover:
        try:
            print_cutover(cutover_report(session, settings))
        except (DriverException, NoHostAvailable) as exc:
            print(f"show failed: {describe(exc)}", file=sys.stderr)
            return 1
        finally:
            cluster.shutdown()
        return 0
    try:
        table = f"{settings.cassandra_keyspace}.{settings.cassandra_table}"
        count = session.execute(f"SELECT COUNT(*) FROM {table}", timeout=120).one()[0]
        print(f"{table}: {count} row(s)")
        for row in session.execute(f"SELECT * FROM {table} LIMIT {int(args.rows)}"):
            print("  " + ", ".join(f"{k}={_shown(v)}" for k, v in row._asdict().items()))
    finally:
        cluster.shutdown()
    consumed, lag = topic_sizes(settings, settings.input_topic)
    failed, _ = topic_sizes(settings, settings.failed_topic)
    print(f"{settings.input_topic}: {consumed} message(s), group {settings.group_id} lag {lag}")
    print(f"{settings.failed_topic}: {failed} rejected message(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
