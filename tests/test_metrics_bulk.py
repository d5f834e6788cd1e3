"""``metrics.observe_many`` must leave a histogram exactly as one ``observe`` per amount."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from dataflow.metrics import observe_many

BUCKETS = (0.005, 0.01, 0.1, 1, 10)


def samples(histogram: Histogram) -> dict:
    return {
        (s.name, tuple(s.labels.items())): s.value
        for m in histogram.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False) | st.sampled_from(BUCKETS)))
def test_same_buckets_count_and_sum_as_observe(amounts):
    one = Histogram("h", "d", buckets=BUCKETS, registry=CollectorRegistry())
    bulk = Histogram("h", "d", buckets=BUCKETS, registry=CollectorRegistry())
    for a in amounts:
        one.observe(a)
    observe_many(bulk, amounts)
    want, got = samples(one), samples(bulk)
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key
