"""The flattener benchmark corpus: reproducible events of three sizes (see sample_events)."""

from __future__ import annotations

from functools import cache

from dataflow.sample_events import generate

SIZES = ("minimal", "realistic", "large")
BATCH = 1000


@cache
def corpus(size: str, count: int = 20 * BATCH) -> list[bytes]:
    return generate(count, programs=50, seed=1234, size=size)


def batches(size: str) -> list[list[bytes]]:
    events = corpus(size)
    return [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
