"""Create what the streaming job needs: the Cassandra keyspace and table, the Kafka topics.

Idempotent: running it again changes nothing. Settings come from the same PUI_* variables as
the job (see README); the keyspace replication is PUI_CASSANDRA_REPLICATION.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dataflow import config, kafka_config
from dataflow.schema import keyspace_ddl, program_enrollment_ddl

log = logging.getLogger("dataflow.bootstrap")


def bootstrap_cassandra(settings: config.Settings, wait: float = 120.0) -> None:
    from dataflow.cassandra_session import connect

    cluster, session = connect(settings, wait=wait)
    try:
        session.execute(
            keyspace_ddl(settings.cassandra_keyspace, settings.cassandra_replication), timeout=60
        )
        session.execute(
            program_enrollment_ddl(settings.cassandra_keyspace, settings.cassandra_table),
            timeout=60,
        )
        log.info(
            "Cassandra table %s.%s is ready", settings.cassandra_keyspace, settings.cassandra_table
        )
    finally:
        cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataflow.bootstrap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--skip-cassandra", action="store_true", help="do not create the keyspace and table"
    )
    parser.add_argument("--skip-kafka", action="store_true", help="do not create the topics")
    parser.add_argument(
        "--partitions",
        type=int,
        default=4,
        help="partitions of new topics (default 4; make it a multiple of the "
        "number of Bytewax processes)",
    )
    parser.add_argument(
        "--replication-factor",
        type=int,
        default=1,
        help="replication factor of new topics (default 1)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        settings = config.load()
        # librdkafka checks PUI_KAFKA_CONFIG_* now: a bad one is a configuration error.
        kafka_config.validate(settings)
        if not args.skip_cassandra:
            bootstrap_cassandra(settings)
        if not args.skip_kafka:
            from dataflow.kafka_admin import ensure_topics

            ensure_topics(settings, args.partitions, args.replication_factor)
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a clear one-line message, never a stack trace
        print(f"bootstrap failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
