"""The write timestamp of every Cassandra write (spec streaming.md §3.4), in one pure function.

Both engines and every sink apply exactly this rule, so that a row's cells always carry the
same stamp for the same message, whoever wrote them:

1. the base is the event's ``updatedAt`` in microseconds since the epoch (UTC), as the
   flattener produced it;
2. when ``updatedAt`` is unusable (the flattener gave ``None``), the base is the Kafka message
   timestamp (milliseconds, times 1000); when the message has no timestamp either (Kafka's
   ``-1``; any negative value is treated the same), the base is the wall clock;
3. the base is clamped to the wall clock at processing time (an event dated in the future
   must not pin the row against every later update);
4. the fixed write-timestamp offset (``PUI_WRITE_TIMESTAMP_OFFSET``, default 0) is added last.

So ``stamp = min(base, clock) + offset``: the same as ``updatedAt + offset`` clamped to
``clock + offset``. Adding one constant to every stamp keeps our writes in the order of their
events, while lifting all of them above the wall-clock stamps that Sunbird's job left on the
rows it wrote before the switch (its lag plus clock skew, which the offset must cover; see
docs/cutover.md).
"""

from __future__ import annotations

__all__ = ["write_timestamp"]


def write_timestamp(
    updated_at_us: int | None, kafka_ts_ms: int | None, clock_us: int, offset_us: int
) -> int:
    """``USING TIMESTAMP`` in microseconds for one write.

    ``updated_at_us``: the event's ``updatedAt`` (µs), or None when it was unusable.
    ``kafka_ts_ms``: the Kafka message timestamp (ms), or None / negative when absent.
    ``clock_us``: the wall clock at processing time (µs), read once per batch.
    ``offset_us``: the deployment's fixed offset (µs, never negative).
    """
    if updated_at_us is not None:
        base = updated_at_us
    elif kafka_ts_ms is not None and kafka_ts_ms >= 0:
        base = kafka_ts_ms * 1000
    else:
        base = clock_us
    if base > clock_us:
        base = clock_us
    return base + offset_us
