"""The part both dock widgets share: a runner, a layer updater, the run panel and the scale
stepper, wired to the engine's event stream. Subclasses build the form and the event source.
"""

from __future__ import annotations

import sys
import time

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFormLayout, QVBoxLayout, QWidget

from ..engine.events import (
    Log, Metrics, Progress, RunFinished, RunPaused, RunResumed, RunStarted, ScaleSnapshot,
    StageFinished, StageStarted, VolumeSnapshot,
)
from ..errors import InputError
from .controls import OutDirField, RunPanel, ScaleStepper
from .layers import LayerUpdater
from .runner import EngineRunner, EventSource, RunFailed, RunState


class RunWidgetBase(QWidget):
    """Base of the rMFN dock widgets (not a contribution by itself).

    Subclasses fill ``self.form`` (a ``QFormLayout``) and implement :meth:`build_source`
    (read the form on the GUI thread, return an :data:`~.runner.EventSource` that runs in the
    worker) and optionally :meth:`on_metrics` / :meth:`on_run_started`.

    Attributes useful to scripts and tests: ``runner`` (:class:`~.runner.EngineRunner`),
    ``layers`` (:class:`~.layers.LayerUpdater`), ``panel`` (:class:`~.controls.RunPanel`),
    ``steps_done`` (last step reported), ``stage`` (0-based current stage), ``events_seen``.
    """

    task = "run"
    spatial_ndim = 2

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.runner = EngineRunner(self)
        self.layers = LayerUpdater(napari_viewer, spatial_ndim=self.spatial_ndim, parent=self)
        self.panel = RunPanel()
        self.stepper = ScaleStepper()
        self.out_dir = OutDirField(self.task)
        self.n_stages = 0
        self.steps_done = 0
        self.stage = -1
        self.events_seen: dict[str, int] = {}
        self.last_outputs: dict[str, str] = {}
        self.run_out_dir: str | None = None
        self.run_config: dict = {}
        self.progress_interval_s = 0.05  # repaint the progress bar at most 20 times a second
        self._last_progress: Progress | None = None
        self._last_paint = 0.0
        self._paint_timer = QTimer(self)
        self._paint_timer.setSingleShot(True)
        self._paint_timer.timeout.connect(self._paint_progress)

        self.form = QFormLayout()
        outer = QVBoxLayout(self)
        outer.addLayout(self.form)
        self.extra = QVBoxLayout()  # subclasses add their displays here
        outer.addWidget(self.panel)
        outer.addWidget(self.stepper)
        outer.addLayout(self.extra)
        outer.addStretch(1)

        self.panel.start_clicked.connect(self.start)
        self.panel.pause_clicked.connect(self._toggle_pause)
        self.panel.next_clicked.connect(self.runner.next_stage)
        self.panel.stop_clicked.connect(self.stop)
        self.panel.pause_at_stage_end_changed.connect(self.runner.set_pause_at_stage_end)
        self.runner.event.connect(self._on_event)
        self.runner.state_changed.connect(self._on_state)
        self.layers.scales_changed.connect(self.stepper.set_count)
        self.stepper.show_scale.connect(self.layers.show_scale)
        self.stepper.show_all.connect(self.layers.show_all)
        self.stepper.follow_changed.connect(self._set_follow)

    # ---- to implement ---------------------------------------------------------------
    def build_source(self, out_dir: str) -> EventSource:
        """Read the form (GUI thread) and return the event source to run in the worker.

        Raise :class:`~rmfn_napari.errors.InputError` for a form that cannot run.
        """
        raise NotImplementedError

    def on_metrics(self, ev: Metrics) -> None:
        """Show a :class:`~rmfn_napari.engine.events.Metrics` event (subclass hook)."""

    def on_run_started(self, ev: RunStarted) -> None:
        """Subclass hook called when the engine reports ``RunStarted``."""

    def form_widgets(self) -> list[QWidget]:
        """Inputs to lock while a run is going (subclass hook)."""
        return []

    # ---- actions ----------------------------------------------------------------------
    def start(self):
        """Start a run from the form; errors in the form go to the status line. Returns the
        worker, or None when nothing started."""
        if self.runner.busy:
            return None
        out_dir = self.out_dir.for_new_run()
        try:
            source = self.build_source(out_dir)
        except InputError as exc:
            self.panel.set_status(str(exc), error=True)
            return None
        self.run_out_dir = out_dir
        self.steps_done, self.stage, self.n_stages = 0, -1, 0
        self._last_progress = None
        self.events_seen = {}
        self.last_outputs = {}
        self.layers.reset(self.spatial_ndim)
        self.panel.set_total(1)
        self.panel.set_status(f"Starting… outputs will go to {out_dir}")
        worker = self.runner.start(source,
                                   pause_at_stage_end=self.panel.pause_at_stage_end.isChecked())
        # if the widget goes away (dock closed, viewer closed) the run must not outlive it,
        # or a paused engine would block the thread pool forever
        control = self.runner.control
        self.destroyed.connect(lambda *_args, c=control: c.request_stop())
        return worker

    def _toggle_pause(self) -> None:
        paused = self.runner.state == RunState.PAUSED
        self.runner.toggle_pause()
        if not paused and self.runner.state == RunState.PAUSED:
            self.panel.set_status(f"Paused after step {self.steps_done}. "
                                  "Resume, Next stage or Stop.")
        elif paused:
            self.panel.set_status("Resumed.")

    def stop(self) -> None:
        """Stop the run after its current step; its outputs are still written."""
        self.runner.stop()
        if self.runner.busy:
            self.panel.set_status("Stopping after the current step…")

    def shutdown(self) -> None:
        """Stop any run (used when the widget or the viewer closes)."""
        if self.runner.busy:
            self.runner.abort()

    def closeEvent(self, event):  # noqa: N802 - Qt name
        """Stop the run when the dock widget is closed."""
        self.shutdown()
        super().closeEvent(event)

    # ---- event handling (GUI thread) -------------------------------------------------
    def _set_follow(self, on: bool) -> None:
        if on and self.layers.n_scales:
            self.layers.show_scale(self.layers.n_scales - 1)
        self.layers.follow = on

    def _paint_progress(self) -> None:
        self._paint_timer.stop()
        ev = self._last_progress
        if ev is not None:
            self._last_paint = time.monotonic()
            self.panel.show_progress(ev, self.n_stages, self._epochs_of_stage(ev.stage))

    def _epochs_of_stage(self, stage: int) -> int | None:
        epochs = self.run_config.get("epochs_per_stage")
        if not epochs:
            return None
        epochs = list(epochs)
        if len(epochs) == self.n_stages:
            return int(epochs[stage]) if 0 <= stage < len(epochs) else None
        return int(sum(epochs)) if self.n_stages == 1 else None

    def _on_state(self, state: str) -> None:
        self.panel.set_state(state)
        running = state in (RunState.STARTING.value, RunState.RUNNING.value,
                            RunState.PAUSED.value, RunState.STOPPING.value)
        for w in self.form_widgets():
            w.setEnabled(not running)
        self.out_dir.setEnabled(not running)

    def _on_event(self, ev) -> None:
        name = type(ev).__name__
        self.events_seen[name] = self.events_seen.get(name, 0) + 1
        if isinstance(ev, Progress):
            self.steps_done, self.stage = ev.step, ev.stage
            self._last_progress = ev
            now = time.monotonic()
            if now - self._last_paint >= self.progress_interval_s or ev.step >= ev.total_steps:
                self._paint_progress()
            elif not self._paint_timer.isActive():
                self._paint_timer.start(int(self.progress_interval_s * 1000))
        elif isinstance(ev, ScaleSnapshot):
            self.layers.handle(ev)
        elif isinstance(ev, VolumeSnapshot):
            self.layers.handle_volume(ev)
        elif isinstance(ev, Metrics):
            self.on_metrics(ev)
        elif isinstance(ev, StageStarted):
            self.stage = ev.stage
            self.panel.set_status(f"Stage {ev.stage + 1}/{ev.n_stages}: training scale "
                                  f"{ev.stage + 1} (band {ev.band_cycles:.3g} cycles/box)")
        elif isinstance(ev, StageFinished):
            how = " (ended early)" if ev.skipped_early else ""
            self.panel.set_status(f"Stage {ev.stage + 1} finished{how} after {ev.steps_done} "
                                  f"steps, {ev.seconds:.1f} s")
        elif isinstance(ev, RunPaused):
            self.steps_done = ev.step
            self._paint_progress()
            if self.runner.state == RunState.PAUSED:
                self.panel.set_status(f"Paused at step {ev.step}. Resume, Next stage or Stop.")
        elif isinstance(ev, RunResumed):
            self.panel.set_status(f"Resumed at step {ev.step}.")
        elif isinstance(ev, RunStarted):
            self.n_stages = ev.n_stages
            self.run_config = dict(ev.config or {})
            self.panel.set_total(ev.total_steps)
            self.panel.set_status(f"Running on {ev.device}: {ev.n_stages} stages, "
                                  f"{ev.total_steps} steps. Outputs: {self.run_out_dir}")
            self.on_run_started(ev)
        elif isinstance(ev, Log):
            self.panel.set_status(ev.message, error=ev.level == "warning")
        elif isinstance(ev, RunFinished):
            self._paint_progress()
            self.layers.flush()
            self.last_outputs = dict(ev.outputs)
            self.steps_done = ev.steps_done
            if not ev.stopped:
                self.panel.progress.setValue(self.panel.progress.maximum())
                self.panel.progress.setFormat(f"done · {ev.steps_done} steps · {ev.seconds:.1f} s")
            else:
                self.panel.progress.setFormat(f"stopped at step {ev.steps_done}")
            where = self.run_out_dir if ev.outputs else "(nothing written)"
            verb = "Stopped" if ev.stopped else "Finished"
            self.panel.set_status(f"{verb} after {ev.steps_done} steps, {ev.seconds:.1f} s. "
                                  f"Outputs: {where}")
        elif isinstance(ev, RunFailed):
            self.panel.progress.setFormat("failed")
            self.panel.set_status(ev.message, error=True)
            if ev.details:
                print(ev.details, file=sys.stderr)


__all__ = ["RunWidgetBase"]
