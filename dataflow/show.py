"""Print what the streaming job wrote: row count, a few rows, failed-topic size, group lag."""

from __future__ import annotations

import argparse
import sys

from confluent_kafka import Consumer, TopicPartition

from dataflow import config
from dataflow.cassandra_session import connect
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
    args = parser.parse_args(argv)
    try:
        settings = config.load()
        list_partitions(settings, timeout=10)
        cluster, session = connect(settings, wait=30)
    except (config.ConfigError, RuntimeError, ConnectionError) as exc:
        print(f"show failed: {exc}", file=sys.stderr)
        return 1
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
