"""Cooperative run control: pause / resume / next stage / stop, safe across threads.

A front end (napari widget, CLI signal handler) calls the request methods from any
thread; the engine's loop calls :meth:`RunControl.checkpoint` between optimisation steps,
so every request is honoured within one step. Pause blocks the engine thread on a
condition variable (no sleep loop).
"""

from __future__ import annotations

import threading
from typing import Generator

from .events import Event, RunPaused, RunResumed


class StopRequested(Exception):
    """Raised inside an engine loop when a stop was requested (caught by the engine)."""


class RunControl:
    """Thread-safe flags that steer a running engine.

    Parameters
    ----------
    pause_at_stage_end : bool
        When True the engine pauses itself after each stage finishes (the user resumes).
    """

    def __init__(self, pause_at_stage_end: bool = False):
        self._cond = threading.Condition()
        self._paused = False
        self._stop = False
        self._next_stage = False
        self.pause_at_stage_end = pause_at_stage_end

    # ---- requests (any thread) -------------------------------------------------
    def pause(self) -> None:
        """Ask the run to pause before its next step."""
        with self._cond:
            self._paused = True
            self._cond.notify_all()

    def resume(self) -> None:
        """Resume a paused run."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def request_stop(self) -> None:
        """Ask the run to stop; it ends after the current step and writes its outputs."""
        with self._cond:
            self._stop = True
            self._paused = False
            self._cond.notify_all()

    def request_next_stage(self) -> None:
        """Ask the run to end the current stage now and start the next one."""
        with self._cond:
            self._next_stage = True
            self._cond.notify_all()

    # ---- state ------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stop_requested(self) -> bool:
        return self._stop

    # ---- engine side ------------------------------------------------------------
    def take_next_stage(self) -> bool:
        """Return True (once) if "next stage" was requested since the last call."""
        with self._cond:
            flag, self._next_stage = self._next_stage, False
            return flag

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Block while paused (returns early on stop). Returns True if it waited."""
        waited = False
        with self._cond:
            while self._paused and not self._stop:
                waited = True
                if not self._cond.wait(timeout=timeout):
                    break
        return waited

    def wait_or_stop(self) -> bool:
        """Block while paused; return True when a stop was requested (inner loops)."""
        self.wait_while_paused()
        return self._stop

    def check_stop(self) -> None:
        """Raise :class:`StopRequested` when a stop was requested."""
        if self._stop:
            raise StopRequested()


def honour_requests(control: RunControl, step: int) -> Generator[Event, None, str | None]:
    """The engines' check between steps: pause (yielding RunPaused/RunResumed around the
    wait), then stop or next stage.

    Use as ``command = yield from honour_requests(control, step)``; ``command`` is
    ``"stop"``, ``"next"`` or None.
    """
    if control.paused:
        yield RunPaused(step)
        control.wait_while_paused()
        yield RunResumed(step)
    if control.stop_requested:
        return "stop"
    if control.take_next_stage():
        return "next"
    return None
