"""The streaming job: Kafka -> flatten -> Cassandra (spec: shared/spec/streaming.md)."""

from __future__ import annotations

import logging
import time

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from dataflow import config, engines, kafka_config, metrics, shutdown
from dataflow.cassandra_session import connect
from dataflow.sink import CassandraSink
from dataflow.source import KafkaBatchSource, list_partitions

log = logging.getLogger("dataflow")


def build_flow(settings: config.Settings | None = None) -> Dataflow:
    settings = settings or config.load()
    configure_logging(settings.log_level)
    log.info(
        "program-user-info: %s -> %s.%s (failed: %s, group %s)",
        settings.input_topic,
        settings.cassandra_keyspace,
        settings.cassandra_table,
        settings.failed_topic,
        settings.group_id,
    )
    log.info("write-timestamp offset %d µs", settings.write_timestamp_offset_us)
    # librdkafka checks the PUI_KAFKA_CONFIG_* names and values now, not in a worker thread.
    kafka_config.validate(settings)
    log.info("write engine: %s", engines.choose(settings))
    check_ready(settings)
    shutdown.install(settings.stop_timeout)
    metrics.start(settings)

    return wire(settings, KafkaBatchSource(settings))


def wire(settings: config.Settings, source) -> Dataflow:
    """The dataflow's steps from ``source`` (unit tests pass one of bytewax.testing's)."""
    flow = Dataflow("program_user_info")
    batches = op.input("kafka_in", flow, source)
    # The sink is partitioned like the source: a batch is flattened and written by the worker
    # that read it (the engine does both; see dataflow.engines).
    keyed = op.key_on("by_partition", batches, lambda batch: str(batch.partition))
    op.output("cassandra_out", keyed, CassandraSink(settings))
    return flow


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        root.setLevel(level)
    # The driver logs every reconnect attempt, with stack traces; our own log says what
    # happened once, in one line. Its own logs only show when debugging.
    driver_level = logging.DEBUG if level == "DEBUG" else logging.CRITICAL
    logging.getLogger("cassandra").setLevel(driver_level)


def check_ready(settings: config.Settings) -> None:
    """Fail at start with one line that says what to check: Kafka and Cassandra are each waited
    for within PUI_STARTUP_TIMEOUT (one budget for both), a missing topic or table is named
    with the bootstrap command that creates it."""
    deadline = time.monotonic() + settings.startup_timeout
    partitions = list_partitions(settings)
    log.info("input topic %s has %d partition(s)", settings.input_topic, len(partitions))
    cluster, _ = connect(settings, wait=max(deadline - time.monotonic(), 1.0))
    try:
        ks = cluster.metadata.keyspaces.get(settings.cassandra_keyspace)
        if ks is None or settings.cassandra_table not in ks.tables:
            raise RuntimeError(
                f"Cassandra table {settings.cassandra_keyspace}.{settings.cassandra_table} "
                "does not exist: run python -m dataflow.bootstrap"
            )
    finally:
        cluster.shutdown()
