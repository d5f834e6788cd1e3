"""Flattener throughput of every contender on the same corpus in one run, with ratios.

    .venv/bin/python -m benchmarks.flatten_ratios [--repeat 7]

Each contender flattens the whole corpus (20 batches of 1,000 events) ``--repeat`` times; the
best time counts (the least disturbed by the rest of the machine). Before timing, the baselines'
rows are checked against the Rust engine's, so every contender does the same work.
"""

from __future__ import annotations

import argparse
import gc
import time

from benchmarks.baselines import msgspec_typed, stdlib_json
from benchmarks.corpus import SIZES, batches
from dataflow.flatten import NOT_WRITTEN, engine_function

MAX = 1 << 20


def contenders():
    rust = engine_function("rust")
    python = engine_function("python")
    return {
        "rust": lambda b: rust(b, MAX, NOT_WRITTEN),
        "python": lambda b: python(b, MAX, NOT_WRITTEN),
        "msgspec+walk": lambda b: msgspec_typed(b, NOT_WRITTEN),
        "json+walk": lambda b: stdlib_json(b, NOT_WRITTEN),
    }


def check_same_rows(fns, data) -> None:
    want = [fns["rust"](b) for b in data]
    for name, fn in fns.items():
        got = [fn(b) for b in data]
        if got != want:
            bad = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
            raise SystemExit(f"{name} disagrees with the Rust engine in batch {bad}")


def best_seconds(fn, data, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        for b in data:
            fn(b)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    fns = contenders()
    print("| corpus | contender | µs/event | events/s | rust speed-up |")
    print("|---|---|---|---|---|")
    for size in SIZES:
        data = batches(size)
        check_same_rows(fns, data)
        n = sum(len(b) for b in data)
        avg = sum(len(e) for b in data for e in b) / n
        times = {name: best_seconds(fn, data, args.repeat) for name, fn in fns.items()}
        for name, secs in times.items():
            print(
                f"| {size} (~{avg / 1024:.1f} KB) | {name} | {secs / n * 1e6:.2f} | "
                f"{n / secs:,.0f} | {secs / times['rust']:.2f}x |"
            )


if __name__ == "__main__":
    main()
