"""The part both dock widgets share: a runner, a layer updater, the run panel, the scale
stepper and the log, wired to the engine's event stream. The run panel (Start … Stop, the
progress bar, the status line, the headline result) is pinned at the top of the dock; the form,
the stepper, the displays and the log scroll below it (so the dock fits a small screen and the
run stays in sight). Subclasses build the form and the event source.

Start never overwrites results silently: an output folder that already holds a run's files
(:func:`~rmfn_napari.engine.outdir.existing_results`) makes it ask "Use a new folder <name-2>"
/ "Overwrite" / "Cancel". Errors and warnings go to the status line, the log and napari's
notifications.
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QFormLayout, QFrame, QScrollArea, QVBoxLayout, QWidget

from ..engine.events import (
    Log, Metrics, Progress, RunFinished, RunPaused, RunResumed, RunStarted, ScaleSnapshot,
    StageFinished, StageStarted, VolumeSnapshot,
)
from .._reader_preference import prefer_rmfn_reader
from ..engine.outdir import existing_results, next_free_dir
from ..errors import InputError
from .controls import (
    CANCEL, NEW_FOLDER, OutDirField, RunPanel, ScaleStepper, ask_about_results, choose_folder,
)
from . import closing as _closing
from .closing import CloseGuard, guard_dock
from .layers import LayerUpdater
from .log_panel import LogPanel, log_sentence
from .runner import EngineRunner, EventSource, RunFailed, RunState


def notify(text: str, level: str = "error") -> None:
    """Show ``text`` as a napari notification (``level`` ``"error"`` or ``"warning"``)."""
    from napari.utils.notifications import show_error, show_warning

    (show_warning if level == "warning" else show_error)(text)



class _StopOnDestroy:
    """The slot of a widget's ``destroyed`` signal: asks the widget's ``RunControl`` to stop its
    run, so a run whose widget went away (dock closed, viewer closed) cannot outlive it.

    When a widget is collected as garbage, the collector may clear the objects of its cycle
    before Qt destroys the C++ widget and emits ``destroyed``: a lambda's default argument was
    gone (PyQt6: "missing 1 required keyword-only argument"), or the control's attributes were
    (PyQt5: "'RunControl' object has no attribute '_cond'"), each an exception in the Qt event
    loop that failed a later test. A cleared control belongs to no running worker (a running
    worker holds its control), so there is nothing left to stop then."""

    def __init__(self, control):
        self.control = control

    def __call__(self, *_args) -> None:
        try:
            self.control.request_stop()
        except AttributeError:  # cleared by the garbage collector with the widget: no run to stop
            pass

class RunWidgetBase(QWidget):
    """Base of the rMFN dock widgets (not a contribution by itself).

    Subclasses fill ``self.form`` (a ``QFormLayout``) and implement :meth:`build_source`
    (read the form on the GUI thread, return an :data:`~.runner.EventSource` that runs in the
    worker) and optionally :meth:`on_metrics` / :meth:`on_run_started`, :meth:`open_run`
    ("Open run…" is hidden without it) and a ``resume`` keyword of :meth:`build_source`
    ("Resume…" is hidden without it). Displays go in ``self.extra`` (a ``QVBoxLayout``).

    Attributes useful to scripts and tests: ``runner`` (:class:`~.runner.EngineRunner`),
    ``layers`` (:class:`~.layers.LayerUpdater`), ``panel`` (:class:`~.controls.RunPanel`),
    ``log`` (:class:`~.log_panel.LogPanel`), ``scroll`` (the ``QScrollArea`` around all but
    the pinned run panel),
    ``steps_done`` (last step reported), ``stage`` (0-based current stage), ``events_seen``.
    The dialogs are attributes so that tests can answer them: ``ask_about_results``
    (:func:`~.controls.ask_about_results`), ``choose_folder``
    (:func:`~.controls.choose_folder`) and ``ask_about_closing``
    (:func:`~.closing.ask_about_closing`: closing napari or the dock during a run).
    """

    task = "run"
    spatial_ndim = 2

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        # Opened from the Plugins menu, a widget gets the viewer wrapped in napari's
        # PublicOnlyProxy, which warns (as a notification) on private names and wraps every
        # object it returns; the widgets use the viewer itself, as when a script builds them.
        napari_viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.viewer = napari_viewer
        self.runner = EngineRunner(self)
        self.layers = LayerUpdater(napari_viewer, spatial_ndim=self.spatial_ndim, parent=self)
        self.panel = RunPanel()
        self.stepper = ScaleStepper()
        self.out_dir = OutDirField(self.task)
        self.log = LogPanel()
        self.ask_about_results = ask_about_results
        self.choose_folder = choose_folder
        self.ask_about_closing = _closing.ask_about_closing
        #: Set when napari or the dock closes once the run has ended (:mod:`.closing`).
        self.closing = False
        guard = CloseGuard.for_viewer(self.viewer)  # the window's close asks about the run
        if guard is not None:
            guard.add(self)
        self.n_stages = 0
        self.steps_done = 0
        self.stage = -1
        self.events_seen: dict[str, int] = {}
        self.last_outputs: dict[str, str] = {}
        self.run_out_dir: str | None = None
        self.run_config: dict = {}
        #: Shortest time between two repaints of the progress bar, s: each repaint composes
        #: the whole window when napari's canvas is OpenGL (~23 ms in software), so twice a
        #: second; a repaint due is also done with each layer update (one composition).
        self.progress_interval_s = 0.5
        self._last_progress: Progress | None = None
        self._shown_state = RunState.IDLE.value
        self._last_paint = 0.0
        self._paint_timer = QTimer(self)
        self._paint_timer.setSingleShot(True)
        self._paint_timer.timeout.connect(self._paint_progress)

        self.form = QFormLayout()
        self.extra = QVBoxLayout()  # subclasses add their displays here
        self.content = QWidget()
        inner = QVBoxLayout(self.content)
        inner.addLayout(self.form)
        inner.addWidget(self.panel.options)
        inner.addWidget(self.stepper)
        inner.addLayout(self.extra)
        inner.addWidget(self.log)
        inner.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        # the run panel is pinned above the scrolling form: always in sight (issue 29)
        margins = inner.contentsMargins()
        self.panel.setContentsMargins(margins.left(), margins.top(), margins.right(), 4)
        outer.addWidget(self.panel)
        rule = QFrame()
        rule.setFrameShape(QFrame.Shape.HLine)
        rule.setFrameShadow(QFrame.Shadow.Sunken)
        outer.addWidget(rule)
        outer.addWidget(self.scroll, 1)
        self.panel.open_run_button.setVisible(self._implements_open_run())
        self.panel.resume_button.setVisible(self._implements_resume())

        self.panel.start_clicked.connect(self.start)
        self.panel.open_run_clicked.connect(self.open_run_dialog)
        self.panel.resume_clicked.connect(self.resume_dialog)
        self.panel.pause_clicked.connect(self._toggle_pause)
        self.panel.next_clicked.connect(self._next_stage)
        self.panel.stop_clicked.connect(self.stop)
        self.panel.pause_at_stage_end_changed.connect(self.runner.set_pause_at_stage_end)
        self.runner.event.connect(self._on_event)
        self.runner.state_changed.connect(self._on_state)
        self.runner.finished.connect(self._on_runner_finished)
        self.layers.scales_changed.connect(self.stepper.set_count)
        self.layers.redrawn.connect(self._paint_progress_if_due)
        self.stepper.show_scale.connect(self.layers.show_scale)
        self.stepper.show_all.connect(self.layers.show_all)
        self.stepper.follow_changed.connect(self._set_follow)
        self.stepper.spectra.setChecked(self.layers.spectra_visible)
        self.stepper.spectra_changed.connect(self.layers.set_spectra_visible)

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

    def open_run(self, folder: str) -> str | None:
        """Show the finished run in ``folder`` (maps, plots) in the viewer and return a one-line
        summary for the status line (subclass hook; raise
        :class:`~rmfn_napari.errors.InputError` for a folder that is not a run)."""
        raise NotImplementedError

    def _implements_open_run(self) -> bool:
        return type(self).open_run is not RunWidgetBase.open_run

    def _implements_resume(self) -> bool:
        try:
            return "resume" in inspect.signature(self.build_source).parameters
        except (TypeError, ValueError):  # pragma: no cover - a builtin
            return False

    # ---- layout -----------------------------------------------------------------------
    def minimumSizeHint(self):  # noqa: N802 - Qt name
        """Small in height (the content scrolls), never narrower than the form needs."""
        hint = super().minimumSizeHint()
        bar = self.scroll.verticalScrollBar().sizeHint().width()
        return QSize(max(hint.width(), self.content.minimumSizeHint().width() + bar),
                     hint.height())

    def sizeHint(self):  # noqa: N802 - Qt name
        """At least as wide as :meth:`minimumSizeHint`."""
        hint = super().sizeHint()
        return QSize(max(hint.width(), self.minimumSizeHint().width()), hint.height())

    # ---- messages ---------------------------------------------------------------------
    def show_error(self, text: str, level: str = "error") -> None:
        """An error (or, with ``level="warning"``, a warning): status line, log, napari
        notification."""
        self.panel.set_status(text, error=True)
        self.log.add(text, level)
        notify(text, level)

    # ---- actions ----------------------------------------------------------------------
    def start(self):
        """Start a run from the form. An output folder that already holds results asks first
        (``ask_about_results``); form errors go to the status line and napari's notifications.
        Returns the worker, or None when nothing started."""
        if self.runner.busy:
            return None
        out_dir = self.out_dir.for_new_run()
        overwriting = False
        found = existing_results(out_dir)
        if found:
            alternative = str(next_free_dir(out_dir))
            answer = self.ask_about_results(self, out_dir, found, alternative)
            if answer == CANCEL:
                self.panel.set_status(f"Not started: {out_dir} holds results; choose another "
                                      "output folder.")
                return None
            if answer == NEW_FOLDER:
                self.out_dir.set_path(alternative)
                out_dir = alternative
            else:
                overwriting = True
        try:
            source = self.build_source(out_dir)
        except InputError as exc:
            self.show_error(str(exc))
            return None
        worker = self._launch(source, out_dir, f"Starting… outputs will go to {out_dir}")
        if overwriting:
            self.log.add(f"overwriting the results in {out_dir}", "warning")
        return worker

    def resume_dialog(self):
        """"Resume…": ask for a stopped run's folder (it must hold ``checkpoint.pt``) and
        continue that run in the same folder. Returns the worker, or None."""
        if self.runner.busy:
            return None
        folder = self.choose_folder(self, "Resume the run in folder", self.out_dir.path())
        if not folder:
            return None
        if not (Path(folder) / "checkpoint.pt").is_file():
            self.show_error(f"{folder}: no checkpoint.pt, so there is no run to resume there")
            return None
        try:
            source = self.build_source(str(folder), resume=True)
        except InputError as exc:
            self.show_error(str(exc))
            return None
        self.out_dir.set_path(str(folder))
        return self._launch(source, str(folder), f"Resuming the run in {folder}…")

    def open_run_dialog(self) -> bool:
        """"Open run…": ask for a run's folder and show it (:meth:`open_run`). Returns True
        when it was shown."""
        folder = self.choose_folder(self, "Open the run in folder", self.out_dir.path())
        if not folder:
            return False
        try:
            summary = self.open_run(str(folder))
        except (InputError, OSError, ValueError) as exc:
            self.show_error(str(exc))
            return False
        self.log.set_folder(str(folder))
        self.log.add(f"opened the run in {folder}" + (f": {summary}" if summary else ""))
        # the summary once: in the headline where the widget put it there, else in the status
        shown = bool(summary) and self.panel.headline.text() == summary
        self.panel.set_status(f"Showing the run in {folder}" if shown or not summary else summary)
        return True

    def _launch(self, source: EventSource, out_dir: str, status: str):
        self.run_out_dir = out_dir
        self.steps_done, self.stage, self.n_stages = 0, -1, 0
        self._last_progress = None
        self.events_seen = {}
        self.last_outputs = {}
        self.layers.reset(self.spatial_ndim)
        self.panel.set_total(1)
        self.panel.set_status(status)
        self.log.clear()
        self.log.set_folder(out_dir)
        self.log.add(f"output folder: {out_dir}")
        prefer_rmfn_reader(out_dir)  # File ▸ Open Folder on it later: rMFN's reader, no question
        worker = self.runner.start(source,
                                   pause_at_stage_end=self.panel.pause_at_stage_end.isChecked())
        # if the widget goes away (dock closed, viewer closed) the run must not outlive it,
        # or a paused engine would block the thread pool forever
        control = self.runner.control
        self.destroyed.connect(_StopOnDestroy(control))
        return worker

    def _bar_step(self) -> int:
        """The step the progress bar shows (the last Progress event's)."""
        return self._last_progress.step if self._last_progress is not None else self.steps_done

    def _show_paused(self, step: int) -> None:
        self.panel.set_status(f"Paused at step {step}. Resume, Next stage or Stop.")

    def _toggle_pause(self) -> None:
        self.runner.toggle_pause()
        if self.runner.state == RunState.PAUSED:
            self._paint_progress()  # the bar and the status show the same step
            self._show_paused(self._bar_step())

    def _next_stage(self) -> None:
        if self.runner.state not in (RunState.RUNNING, RunState.PAUSED):
            return
        self.runner.next_stage()
        if 0 <= self.stage < self.n_stages - 1:
            self.panel.set_status(f"Ending stage {self.stage + 1}; going on with stage "
                                  f"{self.stage + 2}…")
        elif self.stage >= 0:
            self.panel.set_status(f"Ending stage {self.stage + 1} (the last)…")

    def stop(self) -> None:
        """Stop the run after its current step; its outputs are still written."""
        self.runner.stop()
        if self.runner.busy:
            self.panel.set_status("Stopping after the current step…")

    def _has_checkpoint(self) -> bool:
        return bool(self.run_out_dir) and (Path(self.run_out_dir) / "checkpoint.pt").is_file()

    def _on_runner_finished(self) -> None:
        """The worker ended. One stopped before the engine's first event (e.g. while the
        stack was being simulated) sent no RunFinished: the panel is made idle here, not left
        at "starting…"."""
        if self.runner.finished_event is not None or self.runner.failure is not None:
            return
        self.panel.progress.setRange(0, 1)
        self.panel.progress.setValue(0)
        self.panel.progress.setFormat("stopped before training")
        self.panel.set_status("Stopped before training began: nothing was trained, so nothing "
                              "can be resumed; Start runs it anew.")
        self.log.add("stopped before training began")

    def describe_run(self) -> str:
        """One line about the run going on, for the close question."""
        where = f", outputs to {self.run_out_dir}" if self.run_out_dir else ""
        return f"{self.task}: step {self._bar_step()}{where}"

    def finish_before_closing(self, stop: bool, what: str = "napari") -> None:
        """napari (or the dock, ``what``) closes once this run has ended: with ``stop``, Stop
        now (the outputs are written); the layers are no longer updated meanwhile."""
        self.closing = True
        self.layers.detach()
        if stop:
            self.stop()
            self.panel.set_status(f"Stopping: {what} closes once the outputs are written…")
        else:
            self.panel.set_status(f"{what[0].upper()}{what[1:]} closes when the run ends "
                                  "(Stop ends it now and writes the outputs).")

    def showEvent(self, event):  # noqa: N802 - Qt name
        """Once docked in napari, the dock's × asks about a run going on (:mod:`.closing`)."""
        super().showEvent(event)
        guard_dock(self)

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
            self.panel.show_progress(ev, self.n_stages, self._epochs_of_stage(ev.stage),
                                     paused=self.runner.state == RunState.PAUSED)

    def _paint_progress_if_due(self) -> None:
        """The layers were just updated: a progress repaint waiting for its interval is done
        now, in the same window repaint."""
        if self._paint_timer.isActive():
            self._paint_progress()

    def _epochs_of_stage(self, stage: int) -> int | None:
        epochs = self.run_config.get("epochs_per_stage")
        if not epochs:
            return None
        epochs = list(epochs)
        if len(epochs) == self.n_stages:
            return int(epochs[stage]) if 0 <= stage < len(epochs) else None
        return int(sum(epochs)) if self.n_stages == 1 else None

    def _on_state(self, state: str) -> None:
        was_paused, self._shown_state = self._shown_state == RunState.PAUSED.value, state
        self.panel.set_state(state)
        if was_paused and state == RunState.RUNNING.value:
            # resumed (Resume or Next stage): no "Paused" text or "ETA paused" stays behind
            self._paint_progress()
            self.panel.set_status(f"Running: resumed at step {self._bar_step()}.")
        running = state in (RunState.STARTING.value, RunState.RUNNING.value,
                            RunState.PAUSED.value, RunState.STOPPING.value)
        for w in self.form_widgets():
            w.setEnabled(not running)
        self.out_dir.setEnabled(not running)

    def _on_event(self, ev) -> None:
        name = type(ev).__name__
        self.events_seen[name] = self.events_seen.get(name, 0) + 1
        self.log.handle(ev)
        if self.closing and isinstance(ev, (ScaleSnapshot, VolumeSnapshot, Metrics, StageFinished)):
            if isinstance(ev, StageFinished):
                self.runner.stage_end_drawn()  # nothing is drawn: the engine need not wait
            return  # napari is closing: no layers, no plots
        if isinstance(ev, Progress):
            self.steps_done, self.stage = ev.step, ev.stage
            self._last_progress = ev
            now = time.monotonic()
            if self.runner.state == RunState.PAUSED:  # the step in flight at Pause landed
                self._paint_progress()
                self._show_paused(ev.step)
            elif now - self._last_paint >= self.progress_interval_s or ev.step >= ev.total_steps:
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
                                  f"{ev.trained_scale + 1} (band {ev.band_cycles:.3g} cycles/box)")
        elif isinstance(ev, StageFinished):
            self.layers.stage_finished()
            how = " (ended early)" if ev.skipped_early else ""
            self.panel.set_status(f"Stage {ev.stage + 1} finished{how} after {ev.steps_done} "
                                  f"steps, {ev.seconds:.1f} s")
        elif isinstance(ev, RunPaused):
            self.steps_done = ev.step
            self._paint_progress()
            if self.runner.state == RunState.PAUSED:
                self._show_paused(ev.step)
        elif isinstance(ev, RunResumed):
            if self.runner.state != RunState.PAUSED:
                self.panel.set_status(f"Running: resumed at step {ev.step}.")
        elif isinstance(ev, RunStarted):
            self.n_stages = ev.n_stages
            self.run_config = dict(ev.config or {})
            self.panel.set_total(ev.total_steps)
            self.panel.set_status(f"Running on {ev.device}: {ev.n_stages} stages, "
                                  f"{ev.total_steps} steps. Outputs: {self.run_out_dir}")
            self.on_run_started(ev)
        elif isinstance(ev, Log):
            self.panel.set_status(log_sentence(ev), error=ev.level == "warning")
            if ev.level == "warning":
                notify(log_sentence(ev), "warning")
        elif isinstance(ev, RunFinished):
            self._paint_progress()
            if not self.closing:
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
            text = f"{verb} after {ev.steps_done} steps, {ev.seconds:.1f} s. Outputs: {where}"
            if ev.stopped and self._implements_resume() and not self._has_checkpoint():
                text += (". It stopped before its first checkpoint (written after each epoch), "
                         "so nothing can be resumed: Start runs it anew.")
            self.panel.set_status(text)
        elif isinstance(ev, RunFailed):
            self._paint_progress()  # the last step now: no repaint due later covers "failed"
            self.layers.flush()  # what the run showed before it failed
            self.panel.progress.setFormat("failed")
            self.panel.set_status(ev.message, error=True)
            notify(ev.message, "error")
            if ev.details:
                print(ev.details, file=sys.stderr)


__all__ = ["RunWidgetBase"]
