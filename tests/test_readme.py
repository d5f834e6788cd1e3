"""The README a new user follows: it says how to enter the virtualenv, every command it shows
exists, every streaming setting is in its table, and lag is shown with a command of ours (the
local stack has no kafka-consumer-groups.sh)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from dataflow import config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_says_how_to_enter_the_virtualenv():
    assert ". .venv/bin/activate" in README
    assert (ROOT / ".venv" / "bin" / "activate").exists() or not (ROOT / ".venv").exists()
    # Said once, before the first python -m command outside the make targets.
    first_command = re.search(r"python -m \w", README).start()
    assert README.index(".venv/bin/activate") < first_command


def test_every_module_the_readme_runs_exists():
    modules = sorted(set(re.findall(r"python -m ([\w.]+)", README)))
    assert "dataflow.show" in modules
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    assert not missing, missing


def test_every_streaming_setting_is_documented():
    missing = [v for v in config.ENV_VARS if f"`{v}`" not in README]
    assert not missing, missing


def test_lag_is_shown_with_our_command_and_it_prints_lag():
    for line_no, line in enumerate(README.splitlines()):
        if "kafka-consumer-groups.sh" in line:
            # Only ever mentioned beside our equivalent, as the tool of a full Kafka install.
            around = "\n".join(README.splitlines()[max(0, line_no - 2) : line_no + 2])
            assert "python -m dataflow.show" in around, around
    out = subprocess.run(
        [sys.executable, "-m", "dataflow.show", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "lag" in out.stdout
