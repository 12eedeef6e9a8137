"""Widgets shared by the two forms: run buttons, progress bar, status line, output folder,
and the scale stepper. They hold no science: every number shown comes from an engine event.
"""

from __future__ import annotations

import math
from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QMessageBox, QProgressBar,
    QPushButton, QSpinBox, QToolButton, QVBoxLayout, QWidget,
)

from ..engine.events import Progress
from ..engine.outdir import new_run_dir
from .runner import RunState

#: Answers of :func:`ask_about_results`.
NEW_FOLDER, OVERWRITE, CANCEL = "new", "overwrite", "cancel"


def format_eta(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` past an hour); ``--:--`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def format_progress(ev: Progress, n_stages: int, n_epochs: int | None = None,
                    paused: bool = False) -> str:
    """Progress bar text: ``stage s/S · epoch e/E · step n/N · ETA mm:ss``.

    The epoch part appears when the event's ``extra`` holds ``epoch`` (1-based, as the
    engine reports it); ``/E`` when ``n_epochs`` (epochs of the current stage) is known.
    While ``paused`` the ETA reads ``ETA paused`` (the engine's estimate is stale then).
    """
    parts = [f"stage {ev.stage + 1}/{n_stages}"]
    epoch = (ev.extra or {}).get("epoch")
    if epoch is not None:
        parts.append(f"epoch {int(epoch)}/{int(n_epochs)}" if n_epochs else f"epoch {int(epoch)}")
    parts.append(f"step {ev.step}/{ev.total_steps}")
    parts.append("ETA paused" if paused else f"ETA {format_eta(ev.eta_s)}")
    return " · ".join(parts)


def default_out_dir(task: str) -> str:
    """A fresh (not yet created) folder for a run's outputs:
    ``~/rmfn-napari/<task>-YYYYmmdd-HHMMSS`` (``$RMFN_NAPARI_HOME`` replaces ``~/rmfn-napari``;
    see :func:`rmfn_napari.engine.outdir.new_run_dir`)."""
    return str(new_run_dir(task))


def ask_about_results(parent: QWidget | None, folder: str, names: list[str],
                      new_folder: str) -> str:
    """Ask what to do with an output folder that already holds results (a modal question).

    Returns :data:`NEW_FOLDER` ("Use a new folder <new_folder>"), :data:`OVERWRITE` or
    :data:`CANCEL`. Widgets keep this function in an attribute, so tests can replace it.
    """
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Output folder holds results")
    box.setText(f"{folder} already holds results ({shown}).")
    box.setInformativeText("A new run would overwrite them.")
    new = box.addButton(f"Use a new folder {Path(new_folder).name}",
                        QMessageBox.ButtonRole.AcceptRole)
    over = box.addButton("Overwrite", QMessageBox.ButtonRole.DestructiveRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(new)
    box.setEscapeButton(cancel)
    box.exec()
    clicked = box.clickedButton()
    return NEW_FOLDER if clicked is new else OVERWRITE if clicked is over else CANCEL


def choose_folder(parent: QWidget | None, caption: str, start: str = "") -> str:
    """Ask for an existing folder (a file dialog); "" when cancelled. Replaceable in tests."""
    return QFileDialog.getExistingDirectory(parent, caption, start)


class OutDirField(QWidget):
    """Output folder: a line edit with a folder-picker button.

    Until the user edits it, the field holds an automatic folder under the user's home
    (:func:`default_out_dir`) that is renewed for every run (:meth:`for_new_run`), so runs
    never overwrite each other.
    """

    def __init__(self, task: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.task = task
        self.auto = True
        self.edit = QLineEdit(default_out_dir(task))
        self.edit.setToolTip("Folder for the run's outputs (written when it ends or is stopped)")
        self.edit.textEdited.connect(self._edited)
        self.button = QToolButton()
        self.button.setText("…")
        self.button.setToolTip("Choose the output folder")
        self.button.clicked.connect(self._choose)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit)
        lay.addWidget(self.button)

    def _edited(self, _text: str) -> None:
        self.auto = False

    def _choose(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder", self.edit.text())
        if path:
            self.set_path(path)

    def set_path(self, path: str) -> None:
        """Use ``path`` (the user's choice) for the next runs."""
        self.edit.setText(str(path))
        self.auto = False

    def path(self) -> str:
        """The folder currently shown."""
        return self.edit.text().strip()

    def for_new_run(self) -> str:
        """The folder for a run starting now (a fresh automatic one unless the user chose)."""
        if self.auto or not self.path():
            self.edit.setText(default_out_dir(self.task))
            self.auto = True
        return self.path()


class Headline(QLabel):
    """The run's headline result (e.g. the gold-standard resolution), rich text, word-wrapped;
    hidden while empty so that it takes no height before there is a result."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("", parent)
        self.setWordWrap(True)
        self.setVisible(False)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt name
        """Show ``text`` ('' hides the line)."""
        super().setText(text)
        self.setVisible(bool(text))


class RunPanel(QWidget):
    """The run panel a user must always see: Start / Pause-Resume / Next stage / Stop, the
    progress bar (with the ETA), the status line and the headline result (:class:`Headline`,
    ``headline``). Emits the user's requests; :meth:`set_state` enables the buttons.

    The less urgent controls — "Open run…", "Resume…" and "pause at the end of each stage" —
    sit in a separate widget, ``options``, that the dock puts in its scrolling form; the panel
    itself is pinned above the form (:class:`~._base.RunWidgetBase`), so at 1366×768 Start,
    the bar and Stop stay in sight whatever the form's scroll position.

    Signals
    -------
    start_clicked, pause_clicked, next_clicked, stop_clicked()
    open_run_clicked, resume_clicked()
        "Open run…" and "Resume…" (a finished or stopped run's folder).
    pause_at_stage_end_changed(bool)
    """

    open_run_clicked = Signal()
    resume_clicked = Signal()
    start_clicked = Signal()
    pause_clicked = Signal()
    next_clicked = Signal()
    stop_clicked = Signal()
    pause_at_stage_end_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.next_button = QPushButton("Next stage")
        self.stop_button = QPushButton("Stop")
        self.start_button.setToolTip("Start training in a background thread")
        self.pause_button.setToolTip("Pause / resume after the current optimisation step")
        self.next_button.setToolTip("End the current stage now and go on with the next scale")
        self.stop_button.setToolTip("Stop after the current step; outputs are written")
        self.open_run_button = QPushButton("Open run…")
        self.open_run_button.setToolTip("Show a finished run's maps and plots from its folder")
        self.resume_button = QPushButton("Resume…")
        self.resume_button.setToolTip("Continue a stopped run from the checkpoint in its folder "
                                      "(it writes into that same folder)")
        self.pause_at_stage_end = QCheckBox("Pause at the end of each stage")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(self.status.textInteractionFlags()
                                            | self._selectable_flag())
        self.headline = Headline()
        self.headline.setTextInteractionFlags(self.headline.textInteractionFlags()
                                              | self._selectable_flag())

        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.next_button, self.stop_button):
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.headline)

        self.options = QWidget()  # in the scrolling form, not pinned
        options = QVBoxLayout(self.options)
        options.setContentsMargins(0, 0, 0, 0)
        runs = QHBoxLayout()
        runs.addWidget(self.open_run_button)
        runs.addWidget(self.resume_button)
        options.addLayout(runs)
        options.addWidget(self.pause_at_stage_end)

        self.start_button.clicked.connect(self.start_clicked)
        self.pause_button.clicked.connect(self.pause_clicked)
        self.next_button.clicked.connect(self.next_clicked)
        self.stop_button.clicked.connect(self.stop_clicked)
        self.open_run_button.clicked.connect(self.open_run_clicked)
        self.resume_button.clicked.connect(self.resume_clicked)
        self.pause_at_stage_end.toggled.connect(self.pause_at_stage_end_changed)
        self.set_state(RunState.IDLE.value)

    @staticmethod
    def _selectable_flag():
        from qtpy.QtCore import Qt

        return Qt.TextInteractionFlag.TextSelectableByMouse

    def set_state(self, state: str) -> None:
        """Enable/disable and relabel the buttons for a :class:`RunState` value."""
        state = RunState(state)
        live = state in (RunState.RUNNING, RunState.PAUSED)
        idle = state in (RunState.IDLE, RunState.FINISHED, RunState.FAILED)
        self.start_button.setEnabled(idle)
        self.open_run_button.setEnabled(idle)
        self.resume_button.setEnabled(idle)
        self.pause_button.setEnabled(live)
        self.pause_button.setText("Resume" if state == RunState.PAUSED else "Pause")
        self.next_button.setEnabled(live)
        self.stop_button.setEnabled(live or state == RunState.STARTING)

    def set_status(self, text: str, error: bool = False) -> None:
        """Show one line of status (red for errors)."""
        self.status.setStyleSheet("color: #ff6b6b;" if error else "")
        self.status.setText(text)

    def set_total(self, total_steps: int) -> None:
        """Set the bar's range at the start of a run."""
        self.progress.setRange(0, max(1, int(total_steps)))
        self.progress.setValue(0)
        self.progress.setFormat("starting…")

    def show_progress(self, ev: Progress, n_stages: int, n_epochs: int | None = None,
                      paused: bool = False) -> None:
        """Move the bar to ``ev.step`` with the formatted text (``ETA paused`` while paused).

        The bar is repainted with the window's next paint, not at once: ``QProgressBar.setValue``
        repaints synchronously, and with napari's OpenGL canvas in the window every repaint
        composes the whole window (~23 ms with a software OpenGL, measured twice per call
        before: the value's repaint and the text's)."""
        bar = self.progress
        bar.setUpdatesEnabled(False)  # setValue's synchronous repaint does nothing...
        try:
            if bar.maximum() != max(1, ev.total_steps):
                bar.setMaximum(max(1, ev.total_steps))
            bar.setValue(min(ev.step, bar.maximum()))
            bar.setFormat(format_progress(ev, n_stages, n_epochs, paused))
        finally:
            bar.setUpdatesEnabled(True)  # ...and this schedules one ordinary repaint

    def percent(self) -> float:
        """The bar's position in percent."""
        lo, hi = self.progress.minimum(), self.progress.maximum()
        return 100.0 * (self.progress.value() - lo) / max(1, hi - lo)


class ScaleStepper(QWidget):
    """"Show scale [k] ◀ ▶ [all] [follow] [spectra]": look at one scale's layers at a time.

    Signals
    -------
    show_scale(int)
        0-based scale to show alone.
    show_all()
    follow_changed(bool)
    spectra_changed(bool)
        Show or hide the spectrum layers.
    """

    show_scale = Signal(int)
    show_all = Signal()
    follow_changed = Signal(bool)
    spectra_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.spin = QSpinBox()
        self.spin.setRange(1, 1)
        self.spin.setToolTip("Show only this scale's layers (image and spectrum)")
        self.prev_button = QToolButton()
        self.prev_button.setText("◀")
        self.next_button = QToolButton()
        self.next_button.setText("▶")
        self.all_button = QPushButton("all")
        self.all_button.setToolTip("Show every scale's layers")
        self.follow = QCheckBox("follow")
        self.follow.setChecked(True)
        self.follow.setToolTip("Show each new scale as training reaches it")
        self.spectra = QCheckBox("spectra")
        self.spectra.setChecked(True)
        self.spectra.setToolTip("Show the Fourier spectrum layer beside each scale (hiding them "
                                "leaves fewer volumes to draw in each frame)")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(QLabel("Show scale"))
        lay.addWidget(self.prev_button)
        lay.addWidget(self.spin)
        lay.addWidget(self.next_button)
        lay.addWidget(self.all_button)
        lay.addWidget(self.follow)
        lay.addWidget(self.spectra)
        self.spin.valueChanged.connect(self._picked)
        self.prev_button.clicked.connect(lambda: self.spin.setValue(self.spin.value() - 1))
        self.next_button.clicked.connect(lambda: self.spin.setValue(self.spin.value() + 1))
        self.all_button.clicked.connect(self.show_all)
        self.follow.toggled.connect(self.follow_changed)
        self.spectra.toggled.connect(self.spectra_changed)
        self.set_count(0)

    def set_count(self, n: int) -> None:
        """Number of scales available (0 disables the stepper)."""
        self.setEnabled(n > 0)
        self.spin.blockSignals(True)
        self.spin.setRange(1, max(1, n))
        if self.follow.isChecked() and n > 0:
            self.spin.setValue(n)
        self.spin.blockSignals(False)

    def _picked(self, value: int) -> None:
        self.follow.blockSignals(True)
        self.follow.setChecked(False)
        self.follow.blockSignals(False)
        self.follow_changed.emit(False)
        self.show_scale.emit(value - 1)


__all__ = ["CANCEL", "NEW_FOLDER", "OVERWRITE", "Headline", "OutDirField", "RunPanel", "ScaleStepper",
           "ask_about_results", "choose_folder", "default_out_dir", "format_eta",
           "format_progress"]
