"""pytest-benchmark of the flattener contenders, one batch of 1,000 events per round.

    .venv/bin/pytest benchmarks/bench_flatten.py --benchmark-group-by=param:size

For ratios against the baselines in one run, see ``python -m benchmarks.flatten_ratios``.
"""

from __future__ import annotations

import pytest

from benchmarks.baselines import msgspec_typed, stdlib_json
from benchmarks.corpus import SIZES, batches
from dataflow.flatten import NOT_WRITTEN, engine_function

CONTENDERS = {
    "rust": lambda: engine_function("rust"),
    "python": lambda: engine_function("python"),
    "stdlib_json": lambda: lambda msgs, _max, unset: stdlib_json(msgs, unset),
    "msgspec": lambda: lambda msgs, _max, unset: msgspec_typed(msgs, unset),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_flatten(benchmark, contender, size):
    fn = CONTENDERS[contender]()
    batch = batches(size)[0]
    results = benchmark(fn, batch, 1 << 20, NOT_WRITTEN)
    assert len(results) == len(batch)
    assert all(r[0] == "upsert" for r in results)
