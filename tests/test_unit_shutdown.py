"""Stop requests without servers: the first SIGTERM/SIGINT only asks the sources to end, a
second one or the stop timeout leaves at once with status 0. Signal handlers are process-wide,
so each case runs in its own interpreter. tests/test_streaming_stop.py stops the real job."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(body: str, timeout: float = 20) -> subprocess.CompletedProcess:
    script = textwrap.dedent(
        """
        import logging, os, signal, sys, time
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        from dataflow import shutdown
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_first_signal_only_requests_a_stop():
    done = run(
        """
        shutdown.install(30)
        print("before", shutdown.requested())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        print("after", shutdown.requested())
        """
    )
    assert done.returncode == 0, done.stderr
    assert "before False" in done.stdout
    assert "after True" in done.stdout, "the process kept running and saw the request"
    assert "SIGTERM: stopping" in done.stdout
    assert "stopped on request; final counters consumed=" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_second_signal_leaves_at_once_with_status_0():
    done = run(
        """
        shutdown.install(30)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        print("main thread went on")
        """
    )
    assert done.returncode == 0
    assert "main thread went on" not in done.stdout
    assert "SIGINT again: leaving now" in done.stdout
    assert "KeyboardInterrupt" not in done.stderr


def test_the_stop_timeout_leaves_when_the_dataflow_does_not_finish():
    done = run(
        """
        shutdown.install(0.3)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        print("main thread went on")
        """
    )
    assert done.returncode == 0
    assert "main thread went on" not in done.stdout
    assert "did not finish within 0.3 s of the stop request" in done.stdout


def test_no_request_no_stop_line():
    done = run(
        """
        shutdown.install(30)
        print("requested", shutdown.requested())
        """
    )
    assert done.returncode == 0
    assert "requested False" in done.stdout
    assert "stopped on request" not in done.stdout
