"""Worker plumbing: run an engine event stream in a napari thread worker, steer it, and hand
its events to the GUI thread.

The engine (``rmfn_napari.fitting.image_fitting.fit_image``,
``rmfn_napari.cryoem.reconstruct.reconstruct``) is a generator of typed events
(:mod:`rmfn_napari.engine.events`) steered by a :class:`~rmfn_napari.engine.control.RunControl`.
:class:`EngineRunner` starts it with :func:`napari.qt.threading.create_worker`, so the
optimisation runs in a ``QThreadPool`` thread; every event travels to the GUI thread through the
worker's ``yielded`` signal (a queued connection) and is re-emitted there as
:attr:`EngineRunner.event`. Nothing here touches a layer or a widget from the worker thread.

GUI set-up before training: after the engine's ``RunStarted`` and after each ``StageStarted``
the worker waits (at most :data:`SETUP_HOLD_S`, or until stopped) until the GUI has handled that
event and released every :meth:`EngineRunner.hold` taken meanwhile, e.g. by the layer updater
while it creates the layers that stage needs one per event-loop pass, so no layer is created
while the engine trains. Likewise, with
:attr:`EngineRunner.hold_stage_ends` on, the worker waits after each ``StageFinished`` (at most
:data:`STAGE_END_HOLD_S`) until :meth:`EngineRunner.stage_end_drawn` says the GUI has drawn the
stage's results: on a small machine the engine's thread, busy with the next stage, would
otherwise compete with that one heavy redraw for the GIL and the cores (it roughly doubles).

Pause, resume, next stage and stop go through the ``RunControl``; the engine blocks *itself*
while paused (inside the worker thread), so the GUI thread never waits. While a run is alive
Python's thread switch interval is lowered to :data:`RUN_SWITCH_INTERVAL_S`, so the GUI thread
gets the GIL back quickly from the engine's thread, and the objects that existed when it
started are frozen out of the cyclic garbage collector (``gc.freeze``): with napari and torch
loaded a full collection traverses millions of them, 0.3–0.45 s during which every thread
stops — the GUI's longest stalls in ``benchmarks/gui_responsiveness.py`` before this. What the
run's start makes (its placeholder layers, its data) is frozen too, layer by layer and when the
engine is let go (:func:`freeze_objects_made_so_far`); objects made while it trains are
collected as usual; the freeze is lifted when the last run ends. The price: cycles among the
frozen objects that become garbage during the run (e.g. the layers of an earlier run that a
new run removes) wait until the next full collection after it.

Every event is delivered (counters stay exact at pauses and stops); the widgets repaint the
progress bar at a bounded rate and heavy layer updates are throttled in :mod:`.layers`. Any
exception raised by the engine is caught in the worker and delivered as a :class:`RunFailed`
event (superqt would otherwise turn a ``RuntimeError`` into a bare warning).
"""

from __future__ import annotations

import enum
import gc
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Iterator

from qtpy.QtCore import QObject, Signal

from ..engine.control import RunControl
from ..engine.events import (
    Event, Progress, RunFinished, RunPaused, RunResumed, RunStarted, StageFinished, StageStarted,
)
from ..errors import InputError
from .display_prep import DisplayPreparer

#: Longest wait of the worker for the GUI's set-up after ``RunStarted`` (s).
SETUP_HOLD_S = 30.0
#: Longest wait of the worker, after a ``StageFinished``, for the GUI to draw the stage (s).
STAGE_END_HOLD_S = 2.0
#: Python's thread switch interval while a run is alive (s; Python's default is 0.005). The
#: engine's thread holds the GIL between torch calls; the GUI thread, which needs it for every
#: slot and gives it up in every Qt call, waited up to the interval each time: with 5 ms an
#: in-stage 256² layer update cost ~86 ms of GUI time during a fit, ~25 ms without a run
#: (benchmarks/results/gui_responsiveness.md).
RUN_SWITCH_INTERVAL_S = 0.001


class _SwitchInterval:
    """Lowers ``sys.setswitchinterval`` and freezes the objects the garbage collector tracks
    (unless something else froze some already) while at least one run is alive; restores both
    after.

    :meth:`enter` returns a token that :meth:`leave` takes once (later calls do nothing). The
    runner leaves from a plain callable connected to the worker's ``finished`` signal, not
    from one of its own slots, so the interval comes back even when the widget (and its
    runner) is deleted during the run."""

    def __init__(self):
        self.active: set[int] = set()
        self.saved: float | None = None
        self.froze = False  # whether enter() froze the tracked objects
        self._next = 0
        self._lock = threading.Lock()

    def enter(self) -> int:
        with self._lock:
            if not self.active:
                self.saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self.saved, RUN_SWITCH_INTERVAL_S))
                self.froze = gc.get_freeze_count() == 0
                if self.froze:
                    gc.freeze()
            self._next += 1
            self.active.add(self._next)
            return self._next

    def refreeze(self) -> None:
        """While a run is alive and :meth:`enter` froze, freeze what was made since too (young
        garbage collected first: generations 0 and 1, a few ms)."""
        with self._lock:
            if not (self.active and self.froze):
                return
        gc.collect(1)  # outside the lock: finalisers run here
        with self._lock:
            if self.active and self.froze:  # the last run may have ended meanwhile
                gc.freeze()

    def leave(self, token: int) -> None:
        with self._lock:
            if token not in self.active:
                return
            self.active.discard(token)
            if not self.active and self.saved is not None:
                sys.setswitchinterval(self.saved)
                if self.froze:
                    gc.unfreeze()
                    self.froze = False


_switch_interval = _SwitchInterval()


def freeze_objects_made_so_far() -> None:
    """Move the objects made since a run started (its layers, its data, the engine's set-up)
    out of the cyclic garbage collector's reach too, like those frozen when it started. Called
    after each placeholder layer and when the engine is let go after its set-up: a full
    collection, which traverses every tracked object that is not frozen, took 86 ms during
    training when only the objects of before the run were frozen. No-op when no run froze
    (see :class:`_SwitchInterval`)."""
    _switch_interval.refreeze()


EventSource = Callable[[RunControl], Iterator[Event]]
"""A callable that builds an engine event stream for a given ``RunControl``.

It is *called in the worker thread*, so slow set-up (reading a particle stack, simulating a
dataset) happens off the GUI thread and its errors are reported like the engine's.
"""


class RunState(str, enum.Enum):
    """Life cycle of a run as the widgets show it."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass
class RunFailed(Event):
    """GUI-side event: the run raised. ``message`` is one line for the status label.

    ``user_error`` is True for :class:`~rmfn_napari.errors.InputError` (bad input: no traceback
    is worth showing); ``details`` holds the formatted traceback otherwise.
    """

    message: str
    user_error: bool = False
    details: str = ""


def _release_device_memory() -> None:
    """Free cached CUDA memory after a run (no-op without CUDA)."""
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _wait_for_gate(gate: threading.Event, control: RunControl, limit_s: float) -> None:
    """Block (worker thread) until ``gate`` is set, the run is stopped, or ``limit_s`` passed."""
    deadline = time.monotonic() + limit_s
    while not gate.wait(0.05):
        if control.stop_requested or time.monotonic() > deadline:
            return


def drive(source: EventSource, control: RunControl,
          setup_gate: threading.Event | None = None,
          stage_end_gate: threading.Event | None = None) -> Iterator[Event]:
    """Worker-side generator: run ``source(control)`` and yield its events.

    Runs in the worker thread. With ``setup_gate``, the engine is not resumed after its
    ``RunStarted`` and after each ``StageStarted`` (the gate is cleared before the event is
    handed over) until the gate is set (the GUI's set-up; at most :data:`SETUP_HOLD_S`, or
    until a stop is asked); with ``stage_end_gate``, likewise after each ``StageFinished`` (the
    gate is cleared before the event is handed over; at most :data:`STAGE_END_HOLD_S`). Snapshots are made ready for display here
    (:class:`~.display_prep.DisplayPreparer`: float32 contiguous arrays at display size, their
    contrast limits and grid), so the GUI thread only assigns them; other events pass
    unchanged. Exceptions become a final :class:`RunFailed` event. The engine generator is
    closed and device memory released when it ends, however it ends.
    """
    gen = None
    prepare = DisplayPreparer()
    try:
        gen = source(control)
        for ev in gen:
            stage_end = stage_end_gate is not None and isinstance(ev, StageFinished)
            if stage_end:
                stage_end_gate.clear()  # before the GUI can see the event (and set it)
            setup = setup_gate is not None and isinstance(ev, (RunStarted, StageStarted))
            if setup:
                setup_gate.clear()
            yield prepare(ev)
            if setup:
                _wait_for_gate(setup_gate, control, SETUP_HOLD_S)
            elif stage_end:
                _wait_for_gate(stage_end_gate, control, STAGE_END_HOLD_S)
    except InputError as exc:
        yield RunFailed(str(exc), user_error=True)
    except Exception as exc:  # noqa: BLE001 - reported in the GUI, not swallowed
        yield RunFailed(f"{type(exc).__name__}: {exc}", user_error=False,
                        details=traceback.format_exc())
    finally:
        if gen is not None:
            gen.close()
        del gen
        _release_device_memory()


class EngineRunner(QObject):
    """Owns one run at a time: its worker, its ``RunControl`` and its state.

    Signals (all emitted on the GUI thread)
    ---------------------------------------
    event(object)
        Every engine event, in order (plus :class:`RunFailed` on an error).
    state_changed(str)
        The new :class:`RunState` value.
    finished()
        The worker thread ended (normally, stopped or failed); the runner is idle again.

    """

    event = Signal(object)
    state_changed = Signal(str)
    finished = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.control: RunControl | None = None
        self.worker = None
        self.state = RunState.IDLE
        self.last_event: Event | None = None
        self.finished_event: RunFinished | None = None
        self.failure: RunFailed | None = None
        self._stage_boundary = False
        self._setup_gate: threading.Event | None = None
        self._holds = 0
        #: Whether the engine waits after each StageFinished until :meth:`stage_end_drawn`
        #: (set by whoever draws stage ends, e.g. the layer updater; read at :meth:`start`).
        self.hold_stage_ends = False
        self._stage_end_gate: threading.Event | None = None

    # ---- queries -------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a worker is alive (from Start until its thread ended)."""
        return self.worker is not None

    # ---- commands (GUI thread) -----------------------------------------------------
    def start(self, source: EventSource, pause_at_stage_end: bool = False):
        """Start ``source`` in a thread worker. Returns the worker.

        Raises ``RuntimeError`` if a run is already in progress.
        """
        from napari.qt.threading import create_worker

        if self.busy:
            raise RuntimeError("a run is already in progress")
        self.control = RunControl(pause_at_stage_end=pause_at_stage_end)
        self.finished_event = None
        self.failure = None
        self.last_event = None
        self._stage_boundary = False
        self._setup_gate, self._holds = threading.Event(), 0
        self._stage_end_gate = threading.Event() if self.hold_stage_ends else None
        worker = create_worker(drive, source, self.control, self._setup_gate, self._stage_end_gate,
                               _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_yielded)
        token = _switch_interval.enter()
        # first (restored before the runner says "finished"), and a plain callable: it outlives
        # the runner when the widget is deleted during the run
        worker.finished.connect(lambda t=token: _switch_interval.leave(t))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_state(RunState.STARTING)
        worker.start()
        return worker

    def hold(self) -> Callable[[], None]:
        """Keep the engine waiting after its ``RunStarted`` or a ``StageStarted`` (GUI set-up,
        e.g. creating layers) until the returned ``release()`` is called (once; later calls do
        nothing). Call it while handling that event; the worker waits at most
        :data:`SETUP_HOLD_S`."""
        gate = self._setup_gate
        if gate is None:  # no run: nothing to hold
            return lambda: None
        self._holds += 1
        released = False

        def release() -> None:
            nonlocal released
            if released or gate is not self._setup_gate:
                return
            released = True
            self._holds -= 1
            if self._holds <= 0:
                freeze_objects_made_so_far()
                gate.set()

        return release

    def stage_end_drawn(self) -> None:
        """The GUI has drawn the last stage end: the engine goes on (see
        :attr:`hold_stage_ends`). Harmless when nothing waits."""
        if self._stage_end_gate is not None:
            self._stage_end_gate.set()

    def set_pause_at_stage_end(self, on: bool) -> None:
        """Change "pause at the end of each stage" (also while running)."""
        if self.control is not None:
            self.control.pause_at_stage_end = bool(on)

    def pause(self) -> None:
        """Ask the run to pause.

        The state turns PAUSED at once: the ``RunControl`` guarantees that no optimisation
        step starts after the current one (an engine may block inside a batch without
        yielding ``RunPaused``, so the GUI does not wait for that event).
        """
        if self.control is not None and self.state == RunState.RUNNING:
            self.control.pause()
            self._set_state(RunState.PAUSED)

    def resume(self) -> None:
        """Resume a paused run."""
        if self.control is not None:
            self.control.resume()
            if self.state == RunState.PAUSED:
                self._set_state(RunState.RUNNING)

    def toggle_pause(self) -> None:
        """Pause a running run, resume a paused one."""
        if self.state == RunState.PAUSED:
            self.resume()
        else:
            self.pause()

    def next_stage(self) -> None:
        """End the current stage now and go on with the next one.

        While paused right at the start of a stage (e.g. after "pause at the end of each
        stage"), the stage that just began *is* the next one, so this only resumes; while
        paused in the middle of a stage it ends that stage and resumes.
        """
        if self.control is None:
            return
        if self.state == RunState.PAUSED:
            if not self._stage_boundary:
                self.control.request_next_stage()
            self.resume()
        elif self.state == RunState.RUNNING:
            self.control.request_next_stage()

    def stop(self) -> None:
        """Ask the run to stop; the engine ends after its current step and writes its outputs."""
        if self.control is not None and self.busy:
            self.control.request_stop()
            if self.state not in (RunState.FINISHED, RunState.FAILED):
                self._set_state(RunState.STOPPING)

    def abort(self) -> None:
        """Stop and also ask the worker to quit at its next yield (used when closing)."""
        if self.control is not None:
            self.control.request_stop()
        if self.worker is not None:
            self.worker.quit()

    # ---- worker signals (GUI thread) -----------------------------------------------
    def _on_yielded(self, ev: Event) -> None:
        self.last_event = ev
        if isinstance(ev, RunStarted):
            self._set_state(RunState.RUNNING)
        elif isinstance(ev, RunPaused):
            if self.control is not None and self.control.paused:  # not already resumed
                self._set_state(RunState.PAUSED)
        elif isinstance(ev, RunResumed):
            if self.control is not None and self.control.stop_requested:
                self._set_state(RunState.STOPPING)
            elif self.state == RunState.PAUSED and not self.control.paused:
                self._set_state(RunState.RUNNING)
        elif isinstance(ev, RunFinished):
            self.finished_event = ev
        elif isinstance(ev, RunFailed):
            self.failure = ev
        # a pause right after StageStarted (no step of the stage yet) sits on a stage boundary
        if isinstance(ev, StageStarted):
            self._stage_boundary = True
        elif isinstance(ev, Progress):
            self._stage_boundary = False
        self.event.emit(ev)
        if isinstance(ev, (RunStarted, StageStarted)) and self._holds <= 0 and self._setup_gate is not None:
            freeze_objects_made_so_far()
            self._setup_gate.set()  # nobody set anything up: go on at once

    def _on_finished(self) -> None:
        self.worker = None
        if self.failure is not None:
            self._set_state(RunState.FAILED)
        else:
            self._set_state(RunState.FINISHED)
        self.finished.emit()

    def _set_state(self, state: RunState) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state.value)


__all__ = ["EngineRunner", "EventSource", "RunFailed", "RunState", "drive", "freeze_objects_made_so_far"]
