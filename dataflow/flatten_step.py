"""The dataflow's middle step: one call of the flattener per consumed batch."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cassandra.query import UNSET_VALUE

from dataflow.config import Settings
from dataflow.flatten import engine_function, resolve_engine
from dataflow.source import MessageBatch

log = logging.getLogger("dataflow.flatten")


@dataclass(slots=True)
class FlatBatch:
    """A consumed batch and, index for index, the flattener's outcome for each message."""

    source: MessageBatch
    results: list[tuple]


class Flattener:
    def __init__(self, settings: Settings):
        self.engine = resolve_engine(settings.flattener)
        self._fn = engine_function(self.engine)
        self._max_bytes = settings.max_message_bytes
        log.info("flattener engine: %s", self.engine)

    def __call__(self, batch: MessageBatch) -> FlatBatch:
        values = batch.values
        if None in values:
            # A null Kafka value (tombstone) is not JSON: the flattener rejects the empty bytes.
            values = [b"" if v is None else v for v in values]
        return FlatBatch(batch, self._fn(values, self._max_bytes, UNSET_VALUE))
