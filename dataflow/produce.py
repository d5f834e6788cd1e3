"""Publish program-user events to the input topic: a file of events, or N generated ones.

A file holds one JSON event per line (empty lines are skipped). Generated events are realistic
(the shape of Sunbird's samples) and reproducible with --seed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from confluent_kafka import KafkaException, Producer
from tqdm import tqdm

from dataflow import config, kafka_config
from dataflow.sample_events import generate


def producer(settings: config.Settings) -> Producer:
    return Producer(kafka_config.cli_producer(settings))


class NotDelivered(RuntimeError):
    """Some messages were not acknowledged by Kafka."""

    def __init__(self, topic: str, brokers: str, sent: int, failed: int, first: str | None):
        self.sent = sent
        self.failed = failed
        super().__init__(
            f"{failed} of {sent} event(s) were not delivered to {topic} on {brokers}"
            + (f" (first error: {first})" if first else " (no delivery report in time)")
        )


def publish(
    settings: config.Settings,
    topic: str,
    values,
    *,
    total: int | None = None,
    progress: bool = True,
) -> int:
    """Send ``values`` (bytes) to ``topic``; returns how many Kafka acknowledged.

    Raises :class:`NotDelivered` unless every message got a successful delivery report within
    ``settings.produce_timeout`` seconds of being produced."""
    prod = producer(settings)
    delivered = 0
    first_error: list[str] = []
    sent = 0

    def on_delivery(err, _msg):
        nonlocal delivered
        if err is None:
            delivered += 1
        elif not first_error:
            first_error.append(err.str())

    with tqdm(
        total=total, unit="ev", disable=not progress, file=sys.stderr, desc=f"-> {topic}"
    ) as bar:
        for value in values:
            while True:
                try:
                    prod.produce(topic, value=value, on_delivery=on_delivery)
                    break
                except BufferError:
                    prod.poll(0.05)
                except KafkaException as exc:
                    # Refused before sending (e.g. larger than message.max.bytes).
                    if not first_error:
                        first_error.append(exc.args[0].str())
                    break
            sent += 1
            if sent % 1000 == 0:
                prod.poll(0)
                bar.update(1000)
        bar.update(sent % 1000)
        # Every message times out after message.timeout.ms, so this returns in bounded time;
        # the margin covers the last batch's linger and report delivery.
        prod.flush(settings.produce_timeout + 5)
    if delivered != sent:
        first = first_error[0] if first_error else None
        raise NotDelivered(topic, settings.kafka_brokers, sent, sent - delivered, first)
    return sent


def _read_lines(path: str):
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    with stream:
        for line in stream:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataflow.produce", description=__doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="file with one JSON event per line ('-' for stdin)")
    src.add_argument("--generate", type=int, metavar="N", help="generate N realistic events")
    parser.add_argument("--topic", help="target topic (default: the job's input topic)")
    parser.add_argument("--programs", type=int, default=20, help="programs to spread over")
    parser.add_argument("--users", type=int, help="distinct users (default: one per event)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument(
        "--size",
        choices=("minimal", "realistic", "large"),
        default="realistic",
        help="event size (default realistic, ~2.5 KB)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        settings = config.load()
        # librdkafka checks PUI_KAFKA_CONFIG_* now: a bad one is a configuration error.
        kafka_config.validate(settings)
        topic = args.topic or settings.input_topic
        if args.file:
            values, total = _read_lines(args.file), None
        else:
            values = generate(
                args.generate,
                programs=args.programs,
                users=args.users,
                seed=args.seed,
                size=args.size,
            )
            total = len(values)
        sent = publish(settings, topic, values, total=total, progress=not args.quiet)
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:
        print(f"produce failed: {exc}", file=sys.stderr)
        return 1
    print(f"published {sent} event(s) to {topic}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
