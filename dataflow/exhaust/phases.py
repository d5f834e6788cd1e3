"""Where a report's time went, phase by phase, for the request's final log line."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Wall seconds per phase of one report, in the order the log line shows them.

    A report is built in steps, one after the other (``step``). Waits for a store happen
    inside those steps (consents while the partition is read, the user cache while it is read
    or while the CSV is written) and are phases of their own (``waiting``): a step's time
    leaves out the waits inside it, so that each second is counted once and a slow store is
    not mistaken for slow code.
    """

    def __init__(self, *shown: str, clock: Callable[[], float] = time.monotonic) -> None:
        # Phases named here are shown (at 0.0 s) even when nothing was spent in them, in this
        # order; others follow in the order they are first timed.
        self.seconds: dict[str, float] = dict.fromkeys(shown, 0.0)
        self._clock = clock
        self._waited = 0.0  # all the waits so far, whichever step they happened in

    def _add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @contextmanager
    def step(self, phase: str) -> Iterator[None]:
        """Time a step of the report, less the waits timed inside it."""
        began, waited = self._clock(), self._waited
        try:
            yield
        finally:
            self._add(phase, self._clock() - began - (self._waited - waited))

    @contextmanager
    def waiting(self, phase: str) -> Iterator[None]:
        """Time a wait for a store, inside a step or not."""
        began = self._clock()
        try:
            yield
        finally:
            spent = self._clock() - began
            self._add(phase, spent)
            self._waited += spent

    def line(self) -> str:
        """``enrolments 4.1 s, consents 0.3 s, ...``: the end of the request's log line."""
        return ", ".join(f"{phase} {sec:.1f} s" for phase, sec in self.seconds.items())
