"""Coverage-guided fuzzing of the Rust flattener through its Python binding (atheris/libFuzzer).

    .venv/bin/pip install atheris==2.3.0          # or: pip install -e '.[fuzz]'
    .venv/bin/python fuzz/fuzz_flatten.py -max_total_time=600 fuzz/corpus

Each input is one Kafka message value. The target fails on a panic turned into
``internal_error``, on any exception, on a result that breaks the contract, and on any
difference from the Python reference engine (apart from a rejection's free-text detail). The
seed corpus is the demo events; findings are written by libFuzzer as ``crash-*`` files and
belong in tests/test_flatten_rules.py as regression cases.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from dataflow.flatten import NOT_WRITTEN, engine_function

RUST = engine_function("rust")
PYTHON = engine_function("python")
LIMIT = 1 << 16


def check(data: bytes) -> None:
    (got,) = RUST([data], LIMIT, NOT_WRITTEN)
    (want,) = PYTHON([data], LIMIT, NOT_WRITTEN)
    if got[0] == "reject":
        assert got[1] != "internal_error", (data, got)
        assert want[0] == "reject" and want[1] == got[1], (data, got, want)
    else:
        assert got == want, (data, got, want)


def main() -> None:
    corpus = Path(__file__).parent / "corpus"
    if not corpus.exists():
        corpus.mkdir()
        demo = Path(__file__).parents[1] / "dataflow" / "samples" / "demo-events.jsonl"
        for n, line in enumerate(demo.read_bytes().splitlines()):
            (corpus / f"demo-{n}").write_bytes(line)
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
