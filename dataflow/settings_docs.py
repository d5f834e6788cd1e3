"""The settings tables of README.md and docs/exhaust.md, generated from the settings classes.

``python -m dataflow.settings_docs`` rewrites each table between its two marker comments;
``--check`` only reports the files that differ (tests/test_config.py runs the same check). Edit
the help text, defaults and bounds in dataflow/config.py or dataflow/exhaust/settings.py, never
in the Markdown.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ".venv/bin/python -m dataflow.settings_docs"
_BEGIN = "<!-- {name} settings: generated from {source} by python -m dataflow.settings_docs -->"
_END = "<!-- end of the {name} settings -->"


def _streaming() -> list[tuple[str, str, str]]:
    from dataflow import config

    return config.doc_rows()


def _exhaust() -> list[tuple[str, str, str]]:
    from dataflow.exhaust import settings

    return settings.doc_rows()


# (file, table name, where the settings are declared, their rows)
TABLES: tuple[tuple[str, str, str, Callable[[], list[tuple[str, str, str]]]], ...] = (
    ("README.md", "streaming", "dataflow/config.py", _streaming),
    ("docs/exhaust.md", "exhaust", "dataflow/exhaust/settings.py", _exhaust),
)


def markdown(rows: Iterable[tuple[str, str, str]]) -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| {v} | {d} | {m.replace('|', '&#124;')} |" for v, d, m in rows]
    return "\n".join(lines)


def rewrite(text: str, name: str, source: str, rows: Iterable[tuple[str, str, str]]) -> str:
    """``text`` with the named table replaced; a ValueError when its markers are missing."""
    begin, end = _BEGIN.format(name=name, source=source), _END.format(name=name)
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"the markers of the {name} settings table are missing: {begin} ... {end}")
    return text[: start + len(begin)] + "\n" + markdown(rows) + "\n" + text[stop:]


def stale(root: Path = ROOT) -> list[str]:
    """The files whose tables differ from the settings classes."""
    out = []
    for path, name, source, rows in TABLES:
        text = (root / path).read_text()
        if rewrite(text, name, source, rows()) != text:
            out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataflow.settings_docs", description=__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        files = stale()
        for path in files:
            print(f"{path}: settings table out of date; run {COMMAND}", file=sys.stderr)
        return 1 if files else 0
    for path, name, source, rows in TABLES:
        file = ROOT / path
        text = file.read_text()
        new = rewrite(text, name, source, rows())
        if new != text:
            file.write_text(new)
            print(f"rewrote the settings table of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
