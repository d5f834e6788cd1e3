"""`scripts/services down` stops exactly what `up` started and frees the ports; `up` brings it back.

These tests stop and restart real servers of the shared local stack, so they run one service
at a time and always leave it up again.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parent.parent
SERVICES = str(ROOT / "scripts" / "services")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SERVICES, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def _port_bound(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


def _our_processes(service: str) -> list[int]:
    """Processes whose working directory is the service's folder under var/ (how `up` starts
    them), found without trusting our own pid files."""
    home = (ROOT / "var" / service).resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == home or home in cwd.parents:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize(("service", "port"), [("redis", 6379), ("kafka", 9092)])
def test_down_frees_port_and_up_restores(service, port, request):
    fixture = {"redis": "redis_url", "kafka": "kafka_brokers"}[service]
    request.getfixturevalue(fixture)  # fails under CI when the stack is not running

    try:
        stopped = _run("down", service)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not _port_bound(port)
        assert _our_processes(service) == []
        assert not (ROOT / "var" / service / "pid").exists()

        status = _run("status", service)
        assert status.returncode == 3
        assert "down" in status.stdout + status.stderr
    finally:
        started = _run("up", service)
    assert started.returncode == 0, started.stdout + started.stderr
    assert _port_bound(port)
    assert _our_processes(service)
    status = _run("status", service)
    assert status.returncode == 0
    assert f"127.0.0.1:{port}" in status.stdout + status.stderr


def test_up_is_idempotent(redis_url):
    pid_file = ROOT / "var" / "redis" / "pid"
    before = pid_file.read_text()
    again = _run("up", "redis")
    assert again.returncode == 0
    assert "already running" in again.stdout + again.stderr
    # The same process still serves: `up` did not start a second one.
    assert pid_file.read_text() == before
    assert _our_processes("redis") == [int(before)]
