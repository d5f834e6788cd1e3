"""python -m dataflow.flatten [--engine auto|rust|python] [--max-bytes N] < messages

Reads Kafka message values from standard input, one per line (empty lines are skipped), and
prints one JSON object per message, in order (spec: streaming.md §7):

  {"op": "upsert", "row": {...}, "write_timestamp": <µs or null>}
  {"op": "delete", "key": {"program_id": ..., "user_id": ...}, "write_timestamp": ...}
  {"op": "reject", "reason": "<code>", "detail": "..."}

"row" holds only the columns the message writes (a null is written as null; a column left
untouched is absent), user_locations as an object, dates as YYYY-MM-DD. write_timestamp is null
when updatedAt is unusable (the job then uses the Kafka timestamp).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import date

from dataflow.flatten import COLUMNS, DEFAULT_MAX_BYTES, NOT_WRITTEN, flatten_batch, resolve_engine

CHUNK = 1000


def to_json(result: tuple) -> dict:
    op, payload, ts, _invalid_date = result
    if op == "upsert":
        row = {}
        for column, value in zip(COLUMNS, payload, strict=True):
            if value is NOT_WRITTEN:
                continue
            row[column] = value.isoformat() if isinstance(value, date) else value
        return {"op": "upsert", "row": row, "write_timestamp": ts}
    if op == "delete":
        return {
            "op": "delete",
            "key": {"program_id": payload[0], "user_id": payload[1]},
            "write_timestamp": ts,
        }
    return {"op": "reject", "reason": payload, "detail": ts}


def lines(stream):
    """Message values, split on \\n only (a \\r stays part of the message)."""
    rest = b""
    while chunk := stream.read(1 << 20):
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from (p for p in parts if p)
    if rest:
        yield rest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataflow.flatten",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "rust", "python"),
        default=None,
        help="flattener engine (default: PUI_ENGINE, else auto)",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help=f"size limit per message (default {DEFAULT_MAX_BYTES})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        engine = resolve_engine(args.engine)
    except (ValueError, ImportError) as exc:
        print(f"flatten: {exc}", file=sys.stderr)
        return 2
    logging.info("flattener engine: %s", engine)
    out = sys.stdout
    batch: list[bytes] = []

    def emit():
        for result in flatten_batch(batch, engine, max_bytes=args.max_bytes):
            out.write(json.dumps(to_json(result), ensure_ascii=False) + "\n")
        batch.clear()

    sys.stdout.reconfigure(encoding="utf-8")
    for line in lines(sys.stdin.buffer):
        batch.append(line)
        if len(batch) >= CHUNK:
            emit()
    if batch:
        emit()
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
