"""Closing napari, or a widget's dock, while a run goes on (issue 29): a question — stop and
save / keep running until done / cancel — and napari never closes on a worker still writing.
The question is answered through the widget's ``ask_about_closing`` attribute."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest

pytest.importorskip("napari")

from rmfn_napari._widgets.closing import CANCEL, KEEP_RUNNING, STOP_AND_SAVE  # noqa: E402
from rmfn_napari.engine.runlock import LOCK_NAME  # noqa: E402


class NapariCloseProbe:
    """Stands in for napari's own closeEvent: installed on the QMainWindow before the widget
    (so the widget's close guard filters first), it records what a close that reached napari
    found — whether a worker was still alive and the lock still there — and swallows it, so
    the window is left for the fixture to close."""

    def __init__(self, main, out):
        from qtpy.QtCore import QEvent, QObject

        probe = self

        class Filter(QObject):
            def eventFilter(self, obj, event):  # noqa: N802 - Qt name
                if event.type() == QEvent.Type.Close and probe.widget is not None:
                    probe.reached.append((probe.widget.runner.busy, (out / LOCK_NAME).exists()))
                    event.ignore()
                    return True
                return False

        self.widget = None
        self.reached: list[tuple[bool, bool]] = []
        self.filter = Filter(main)
        main.installEventFilter(self.filter)

    def user_closes(self, main) -> bool:
        """Close the window as its × does; True when the close reached napari."""
        before = len(self.reached)
        main.close()
        reached = len(self.reached) > before
        if reached:
            self.widget = None  # once: the fixture's close is napari's own, whole
        return reached


def _fit_widget(make_napari_viewer, out, schedule="3,100000"):
    """A docked fit-image widget on a small image, its run to go into ``out``, and the probe
    on the window."""
    from rmfn_napari._widgets import FitImageWidget

    viewer = make_napari_viewer(show=True)
    probe = NapariCloseProbe(viewer.window._qt_window, out)
    y, x = np.mgrid[0:32, 0:32] / 32
    viewer.add_image((0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y)).astype(np.float32), name="target")
    w = FitImageWidget(viewer)
    probe.widget = w
    viewer.window.add_dock_widget(w, name="Fit image (2D)")
    w.layer_combo.setCurrentText("target")
    w.schedule.setText(schedule)
    w.hidden.setValue(16)
    w.downsample.setValue(1)
    w.device.setCurrentText("cpu")
    w.out_dir.set_path(str(out))
    return viewer, w, probe


def _answer(w, answer):
    asked = []

    def ask(parent, what, runs):
        asked.append((what, runs))
        return answer

    w.ask_about_closing = ask
    return asked


def _mid_run(qtbot, w, out):
    w.panel.start_button.click()
    qtbot.waitUntil(lambda: w.steps_done >= 5, timeout=60000)
    assert w.runner.busy and (out / LOCK_NAME).is_file()  # the run holds its folder


@pytest.mark.parametrize("how", ["window", "viewer.close"])
def test_closing_napari_mid_run_stops_and_saves(make_napari_viewer, qtbot, tmp_path, how):
    """The window's close (its ×, File ▸ Close Window) and viewer.close() both ask; "stop and
    save" writes the outputs as Stop does (metrics.json says stopped) and the lock is gone
    before napari closes."""
    out = tmp_path / "run"
    viewer, w, probe = _fit_widget(make_napari_viewer, out)
    _mid_run(qtbot, w, out)
    asked = _answer(w, STOP_AND_SAVE)
    if how == "window":
        assert probe.user_closes(viewer.window._qt_window)
        assert probe.reached == [(False, False)]  # napari closed on no worker, no lock
    else:
        probe.widget = None  # napari's own close, whole
        viewer.close()
    assert len(asked) == 1 and asked[0][0] == "napari" and str(out) in asked[0][1][0]
    assert not w.runner.busy  # no worker outlives the window
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] is True and metrics["steps_done"] >= 5
    assert (out / "scale_1.tif").is_file()
    assert not (out / LOCK_NAME).exists()


def test_cancel_keeps_napari_open_and_the_run_going(make_napari_viewer, qtbot, tmp_path):
    out = tmp_path / "run"
    viewer, w, probe = _fit_widget(make_napari_viewer, out)
    _mid_run(qtbot, w, out)
    asked = _answer(w, CANCEL)
    assert not probe.user_closes(viewer.window._qt_window)
    assert len(asked) == 1 and w.runner.busy
    assert "was not closed" in w.panel.status.text()
    steps = w.steps_done
    qtbot.waitUntil(lambda: w.steps_done > steps + 3, timeout=30000)  # it trains on
    with qtbot.waitSignal(w.runner.finished, timeout=30000):
        w.stop()
    assert (out / "metrics.json").is_file() and not (out / LOCK_NAME).exists()
    probe.widget = None


def test_keep_running_closes_napari_when_the_run_ends(make_napari_viewer, qtbot, tmp_path):
    out = tmp_path / "run"
    viewer, w, probe = _fit_widget(make_napari_viewer, out, schedule="3,400")
    _mid_run(qtbot, w, out)
    asked = _answer(w, KEEP_RUNNING)
    assert probe.user_closes(viewer.window._qt_window)  # returns once the run has ended
    assert probe.reached == [(False, False)]
    assert len(asked) == 1 and not w.runner.busy
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] is False and metrics["steps_done"] == 403
    assert not (out / LOCK_NAME).exists()


def test_closing_the_dock_mid_run_asks_too(make_napari_viewer, qtbot, tmp_path):
    """The dock's × (napari's title bar calls its destroyOnClose): cancel keeps it, "stop and
    save" removes it once the outputs are written."""
    from qtpy.QtWidgets import QDockWidget

    out = tmp_path / "run"
    viewer, w, probe = _fit_widget(make_napari_viewer, out)
    main = viewer.window._qt_window
    dock = next(d for d in main.findChildren(QDockWidget) if d.widget() is w)
    _mid_run(qtbot, w, out)
    asked = _answer(w, CANCEL)
    dock.destroyOnClose()
    assert len(asked) == 1 and asked[0][0] == "this dock"
    assert dock.widget() is w and w.runner.busy
    _answer(w, STOP_AND_SAVE)
    dock.destroyOnClose()
    assert not w.runner.busy and dock.widget() is not w
    assert json.loads((out / "metrics.json").read_text())["stopped"] is True
    assert not (out / LOCK_NAME).exists()
    # napari leaves a removed dock's widget parentless; the run's objects, unfrozen when it
    # ended, sit in the oldest generation, which the fixture's gen-1 collection never reaches
    probe.widget = None
    del w, dock
    gc.collect()


def test_closing_without_a_run_asks_nothing(make_napari_viewer, qtbot, tmp_path):
    viewer, w, probe = _fit_widget(make_napari_viewer, tmp_path / "run")
    asked = _answer(w, CANCEL)
    assert probe.user_closes(viewer.window._qt_window) and asked == []
