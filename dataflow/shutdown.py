"""A requested stop (SIGTERM from Kubernetes, Ctrl-C) is a clean stop.

Bytewax 0.21's ``python -m bytewax.run`` leaves SIGTERM at its default (the process dies at
once; as PID 1 in a container it is ignored until the kubelet's SIGKILL), and turns SIGINT into
a ``KeyboardInterrupt`` that aborts the run with a "signal received" traceback and exit status 1.

Instead, the first signal only sets a flag: every source partition then ends its input as at
the end of a topic (``StopIteration``), so Bytewax finishes the dataflow the normal way: the
sinks wait for their writes, commit the group offsets, log the final counters, and the process
exits 0. Bytewax runs Python signal handlers from its main loop, so the flag is seen within one
idle pause (20 ms). A multi-process cluster only ends when every process's input has ended;
if the dataflow has not finished within ``PUI_STOP_TIMEOUT`` seconds (the other pods were not
asked to stop), or on a second signal, the process leaves without waiting: what was not
acknowledged is replayed from the recovery state and the committed offsets at the next start.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading

from dataflow import metrics

log = logging.getLogger("dataflow.shutdown")

_requested = threading.Event()
_installed = False


def requested() -> bool:
    """True once a stop was asked for: sources end their input."""
    return _requested.is_set()


def install(timeout: float) -> None:
    """Handle SIGTERM and SIGINT as a stop request (once per process, main thread only)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True

    def on_signal(signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if _requested.is_set():
            log.warning("%s again: leaving now; final counters %s", name, metrics.log_line())
            _leave(0)
        _requested.set()
        log.info(
            "%s: stopping; the batches in flight are written and committed first "
            "(at most %g s, PUI_STOP_TIMEOUT)",
            name,
            timeout,
        )
        threading.Thread(target=_watchdog, args=(timeout,), daemon=True, name="pui-stop").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The sinks log their totals when they close, but a worker that never received a message
    # has none: say once, at exit, that the stop was completed and with what totals.
    atexit.register(_on_exit)


def _on_exit() -> None:
    if _requested.is_set():
        log.info("stopped on request; final counters %s", metrics.log_line())


def _watchdog(timeout: float) -> None:
    threading.Event().wait(timeout)
    log.warning(
        "the dataflow did not finish within %g s of the stop request (PUI_STOP_TIMEOUT; other "
        "processes still running?); leaving now, unacknowledged work is replayed at the next "
        "start; final counters %s",
        timeout,
        metrics.log_line(),
    )
    _leave(0)


def _leave(status: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(status)
