"""The run's log in the dock: a collapsible, read-only, time-stamped view of the engine's
messages, stage starts and ends and errors, with "Copy", "Save log…" and "Open output folder".
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

from qtpy.QtCore import QUrl
from qtpy.QtGui import QDesktopServices
from qtpy.QtWidgets import (
    QApplication, QFileDialog, QHBoxLayout, QPlainTextEdit, QPushButton, QToolButton,
    QVBoxLayout, QWidget,
)

from ..engine.atomic import atomic_path
from ..engine.events import (
    Log, RunFinished, RunPaused, RunResumed, RunStarted, StageFinished, StageStarted,
)
from .runner import RunFailed


def _angstrom(value) -> str:
    """A resolution in Å, or "—" when there is none (not resolved)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    return f"{v:.1f} Å" if math.isfinite(v) and v > 0 else "—"


def _mib(value: float) -> str:
    return f"{value:.1f} MiB" if value < 10 else f"{value:.0f} MiB"


def _stage_data_sentence(v: dict) -> str:
    each = " on each process" if v.get("per_rank") else ""
    memory = {"cpu": "CPU", "cuda": "GPU", "mps": "GPU"}.get(v.get("device"), v.get("device"))
    where = (f"kept in {memory} memory" if v.get("resident")
             else "computed batch by batch (over the memory budget)")
    return (f"Stage {v['stage']} data: {v['n_images']} particle images{each}, "
            f"{v['n_frequencies']} frequencies each (spectra and CTFs), {_mib(v['mib'])}, {where}.")


def _stage_summary_sentence(v: dict) -> str:
    head = (f"Stage {v['stage']} done: scale {v['scale']}, {v['epochs_done']} "
            f"epoch{'s' if v['epochs_done'] != 1 else ''} in {v['seconds']:.1f} s, "
            f"band {v['band_cycles']:.1f} cycles/box ({_angstrom(v['band_resolution_A'])})")
    parts = [head]
    if "gold_standard_resolution_A" in v:
        parts.append(f"gold standard {_angstrom(v['gold_standard_resolution_A'])} "
                     f"(unmasked {_angstrom(v.get('gold_standard_unmasked_A'))})")
    scales = sorted((int(k[len("fsc_resolution_A_scale"):]), r) for k, r in v.items()
                    if k.startswith("fsc_resolution_A_scale"))
    if scales:
        parts.append("FSC against the reference " + ", ".join(f"scale {k} {_angstrom(r)}"
                                                              for k, r in scales))
    if "pose_median_deg" in v:
        parts.append(f"pose error median {v['pose_median_deg']:.1f}°, "
                     f"{100 * v['pose_frac_under_5deg']:.0f}% under 5°")
    if v.get("shift_median_px") is not None:
        parts.append(f"offset error median {v['shift_median_px']:.2f} px")
    return "; ".join(parts) + "."


#: Sentences for the engine messages that carry numbers (``Log.about``): the GUI shows these,
#: run.log and the CLI the engine's own text.
_SENTENCES = {"stage_data": _stage_data_sentence, "stage_summary": _stage_summary_sentence}


def log_sentence(ev: Log) -> str:
    """What the GUI shows for an engine :class:`Log` (status line, log panel): a sentence with
    units for a message with numbers (``ev.about``), else the message itself, trimmed."""
    words = _SENTENCES.get(ev.about)
    if words is not None:
        try:
            return words(ev.values)
        except (KeyError, TypeError, ValueError):  # values from another version: its text
            pass
    return ev.message.strip()


def event_log_line(ev) -> tuple[str, str] | None:
    """``(level, text)`` for an engine event worth a log line, else None.

    Levels: ``"info"``, ``"warning"``, ``"error"``. Progress, snapshots and metrics are not
    logged (the bar and the plots show them).
    """
    if isinstance(ev, Log):
        return ("warning" if ev.level == "warning" else "info"), log_sentence(ev)
    if isinstance(ev, RunStarted):
        return "info", (f"run started on {ev.device}: {ev.n_stages} stages, "
                        f"{ev.total_steps} steps")
    if isinstance(ev, StageStarted):
        return "info", (f"stage {ev.stage + 1}/{ev.n_stages} started: scale {ev.trained_scale + 1}, "
                        f"{ev.steps} steps, band {ev.band_cycles:.3g} cycles/box")
    if isinstance(ev, StageFinished):
        how = " (ended early)" if ev.skipped_early else ""
        return "info", (f"stage {ev.stage + 1} finished{how}: {ev.steps_done} steps, "
                        f"{ev.seconds:.1f} s")
    if isinstance(ev, RunPaused):
        return "info", f"paused at step {ev.step}"
    if isinstance(ev, RunResumed):
        return "info", f"resumed at step {ev.step}"
    if isinstance(ev, RunFinished):
        verb = "stopped" if ev.stopped else "finished"
        return "info", f"run {verb} after {ev.steps_done} steps, {ev.seconds:.1f} s"
    if isinstance(ev, RunFailed):
        return "error", ev.message
    return None


class LogPanel(QWidget):
    """"▸ Log (n)" header that folds a read-only text view, plus Copy / Save log… / Open
    output folder.

    Parameters
    ----------
    max_lines : int
        Only the last ``max_lines`` lines are kept.
    open_url : callable(QUrl) -> bool, optional
        Opens the output folder (``QDesktopServices.openUrl`` by default; tests pass a fake).

    Attributes
    ----------
    folder : str or None
        The current run's output folder ("Open output folder" is enabled once it is set).
    ask_save_path : callable(parent, caption, start) -> str
        Asks where to save the log ("" cancels); replaceable in tests.
    """

    def __init__(self, max_lines: int = 1000, open_url: Callable[[QUrl], bool] | None = None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.max_lines = int(max_lines)
        self.open_url = open_url or QDesktopServices.openUrl
        self.ask_save_path = _ask_save_path
        self.folder: str | None = None
        self.toggle = QToolButton()
        self.toggle.setCheckable(True)
        self.toggle.setAutoRaise(True)
        self.toggle.setToolTip("Show or hide the run's log")
        self.view = QPlainTextEdit()
        self.view.setReadOnly(True)
        self.view.setMaximumBlockCount(self.max_lines)
        self.view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.view.setFixedHeight(160)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the log to the clipboard")
        self.save_button = QPushButton("Save log…")
        self.save_button.setToolTip("Write the log to a text file")
        self.open_folder_button = QPushButton("Open output folder")
        self.open_folder_button.setToolTip("Open the run's output folder in the file browser")
        self.open_folder_button.setEnabled(False)

        header = QHBoxLayout()
        header.addWidget(self.toggle)
        header.addStretch(1)
        header.addWidget(self.open_folder_button)
        self.body = QWidget()
        body = QVBoxLayout(self.body)
        body.setContentsMargins(0, 0, 0, 0)
        body.addWidget(self.view)
        actions = QHBoxLayout()
        actions.addWidget(self.copy_button)
        actions.addWidget(self.save_button)
        actions.addStretch(1)
        body.addLayout(actions)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(header)
        lay.addWidget(self.body)

        self.toggle.toggled.connect(self.set_expanded)
        self.copy_button.clicked.connect(self.copy)
        self.save_button.clicked.connect(lambda: self.save())
        self.open_folder_button.clicked.connect(self.open_folder)
        self.set_expanded(False)

    # ---- folding ----------------------------------------------------------------------
    def set_expanded(self, on: bool) -> None:
        """Show (True) or fold (False) the text view."""
        self.toggle.blockSignals(True)
        self.toggle.setChecked(on)
        self.toggle.blockSignals(False)
        self.body.setVisible(on)
        self._relabel()

    @property
    def expanded(self) -> bool:
        """True while the text view is shown."""
        return self.toggle.isChecked()

    def _relabel(self) -> None:
        n = len(self.lines())
        self.toggle.setText(f"{'▾' if self.expanded else '▸'} Log ({n} lines)")

    # ---- content ----------------------------------------------------------------------
    def add(self, text: str, level: str = "info", when: float | None = None) -> None:
        """Append ``[HH:MM:SS] text`` (``WARNING:`` / ``ERROR:`` before warnings and errors);
        ``when`` is seconds since the epoch (default now)."""
        stamp = time.strftime("%H:%M:%S", time.localtime(when))
        tag = {"warning": "WARNING: ", "error": "ERROR: "}.get(level, "")
        for i, line in enumerate(str(text).splitlines() or [""]):
            self.view.appendPlainText(f"[{stamp}] {tag}{line}" if i == 0 else f"    {line}")
        self._relabel()

    def handle(self, ev) -> None:
        """Log an engine event (see :func:`event_log_line`); others are ignored."""
        line = event_log_line(ev)
        if line is not None:
            self.add(line[1], line[0])

    def text(self) -> str:
        """The whole log as shown."""
        return self.view.toPlainText()

    def lines(self) -> list[str]:
        """The log's lines (the last ``max_lines``)."""
        text = self.text()
        return text.splitlines() if text else []

    def clear(self) -> None:
        """Empty the log (a new run begins)."""
        self.view.clear()
        self._relabel()

    # ---- actions ----------------------------------------------------------------------
    def copy(self) -> None:
        """Put the log on the clipboard."""
        QApplication.clipboard().setText(self.text())

    def save(self, path: str | None = None) -> str | None:
        """Write the log to ``path`` (asked for when None). Returns the path, None if cancelled."""
        if path is None:
            start = str(Path(self.folder) / "gui.log") if self.folder else "rmfn-log.txt"
            path = self.ask_save_path(self, "Save log", start)
            if not path:
                return None
        try:
            with atomic_path(path) as tmp:  # all or nothing, as every file the project writes
                Path(tmp).write_text(self.text() + "\n", encoding="utf-8")
        except OSError as exc:
            self.add(f"cannot save the log to {path}: {exc.strerror or exc}", "error")
            return None
        return str(path)

    def set_folder(self, folder: str | None) -> None:
        """The current run's output folder (None disables "Open output folder")."""
        self.folder = str(folder) if folder else None
        self.open_folder_button.setEnabled(self.folder is not None)
        if self.folder:
            self.open_folder_button.setToolTip(f"Open {self.folder}")

    def open_folder(self) -> bool:
        """Open the output folder in the system's file browser; False when it does not exist."""
        if not self.folder:
            return False
        if not Path(self.folder).is_dir():
            self.add(f"{self.folder} does not exist yet (nothing written so far)", "warning")
            return False
        return bool(self.open_url(QUrl.fromLocalFile(str(Path(self.folder).resolve()))))


def _ask_save_path(parent: QWidget | None, caption: str, start: str) -> str:
    path, _filter = QFileDialog.getSaveFileName(parent, caption, start, "Text (*.txt *.log)")
    return path


__all__ = ["LogPanel", "event_log_line"]
