"""The peer: the seed's own design (``flink-job-design.txt``) as a PyFlink DataStream job.

Kafka source (bounded at the offsets present when it starts) -> the same flattening rules (our
pure-Python reference, one event per call) -> Flink's Cassandra sink, into a table of the same
schema. Runs inside the PyFlink virtualenv that ``benchmarks/peers/pyflink_peer.py`` creates;
it is not part of the product.

    python pyflink_job.py --brokers B --topic T --group G --keyspace K --table T --jars J1;J2
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from pyflink.common import Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.cassandra import CassandraSink
from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource

from dataflow.flatten import COLUMNS, NOT_WRITTEN, UPSERT, engine_function
from dataflow.schema import TABLE

# Flink's type for each CQL type of the table; a date travels as a timestamp that the
# INSERT turns into a date with toDate().
FLINK_TYPES = {
    "text": Types.STRING(),
    "boolean": Types.BOOLEAN(),
    "map<text,text>": Types.MAP(Types.STRING(), Types.STRING()),
    "date": Types.SQL_TIMESTAMP(),
}
# The table's columns, then the write timestamp (µs).
ROW = Types.ROW([*(FLINK_TYPES[c.cql_type] for c in TABLE), Types.LONG()])
DATES = [n for n, c in enumerate(TABLE) if c.cql_type == "date"]


def flatten(value: str):
    """One event -> zero or one row. Deletes and rejections are dropped: Flink's Cassandra sink
    runs one statement, and the peer is measured on upserts only."""
    from pyflink.common import Row

    fn = engine_function("python")
    out = []
    for op, payload, ts, _invalid in fn([value.encode()], 1 << 20, NOT_WRITTEN):
        if op != UPSERT:
            continue
        row = [None if v is NOT_WRITTEN else v for v in payload]
        for i in DATES:
            if isinstance(row[i], dt.date):
                row[i] = dt.datetime(row[i].year, row[i].month, row[i].day)
        out.append(Row(*row, ts if ts is not None else time.time_ns() // 1000))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("brokers", "cassandra", "topic", "group", "keyspace", "table", "jars"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args()

    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(args.parallelism)
    env.set_python_executable(sys.executable)
    env.add_jars(*(f"file://{j}" for j in args.jars.split(";")))
    source = (
        KafkaSource.builder()
        .set_bootstrap_servers(args.brokers)
        .set_topics(args.topic)
        .set_group_id(args.group)
        .set_starting_offsets(KafkaOffsetsInitializer.earliest())
        .set_bounded(KafkaOffsetsInitializer.latest())
        .set_value_only_deserializer(SimpleStringSchema())
        .build()
    )
    events = env.from_source(source, WatermarkStrategy.no_watermarks(), "kafka")
    rows = events.flat_map(flatten, output_type=ROW)
    marks = ", ".join("toDate((timestamp)?)" if c.cql_type == "date" else "?" for c in TABLE)
    query = (
        f"INSERT INTO {args.keyspace}.{args.table} ({', '.join(COLUMNS)}) VALUES "
        f"({marks}) USING TIMESTAMP ?;"
    )
    # Null fields are left unset, as our sink does, instead of writing tombstones.
    sink = CassandraSink.add_sink(rows).set_query(query).set_host(args.cassandra, 9042)
    # Unbounded (the default), the sink overruns the driver's request queue (BusyPoolException);
    # 128 in flight is what our own single-row ceiling uses.
    sink.set_max_concurrent_requests(128).enable_ignore_null_fields().build()
    env.execute("program-user-info peer (PyFlink)")


if __name__ == "__main__":
    main()
