"""GUI tests of the plot docks (one FSC and one pose dock per viewer), the plots' PNG/CSV export
and the FSC legend (run under Xvfb: ``bash scripts/run_tests.sh``).

The dock manager is driven by a small stand-in for the reconstruct widget: it acquires the
viewer's plots when made and shows their docks on "Start", as the reconstruct widget does.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("napari")

from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtGui import QImage  # noqa: E402
from qtpy.QtWidgets import QDockWidget, QLabel, QVBoxLayout, QWidget  # noqa: E402

from rmfn_napari._widgets.plot_base import image_to_rgba  # noqa: E402
from rmfn_napari._widgets.plot_docks import FSC_DOCK_NAME, POSE_DOCK_NAME, PlotDocks  # noqa: E402
from rmfn_napari._widgets.plots import FSCPlot, PoseHistogram  # noqa: E402


#: The run widget's own minimum height in these tests (a form that scrolls, issue 15): with the
#: plots on top, the window must still fit a 768 px screen.
RUN_WIDGET_MIN_HEIGHT = 420


class StandIn(QWidget):
    """What the reconstruct widget does with the plots: acquire them when made, show them at
    Start."""

    def __init__(self, viewer):
        super().__init__()
        QVBoxLayout(self).addWidget(QLabel("a run widget"))
        self.setMinimumHeight(RUN_WIDGET_MIN_HEIGHT)
        self.plot_docks = PlotDocks.for_viewer(viewer)
        self.plot_docks.acquire(self)
        self.fsc_plot = self.plot_docks.fsc_plot
        self.pose_plot = self.plot_docks.pose_plot

    def start(self):
        self.plot_docks.show()


def _plot_docks(viewer, kind) -> list[QDockWidget]:
    main = viewer.window._qt_window
    return [d for d in main.findChildren(QDockWidget) if isinstance(d.widget(), kind)]


def _window_menu(viewer) -> list[str]:
    return [a.text() for a in viewer.window.window_menu.actions()]


def _open_widget(viewer, name="Reconstruct (cryo-EM)"):
    w = StandIn(viewer)
    dock = viewer.window.add_dock_widget(w, name=name, area="right")
    return w, dock


def test_one_dock_pair_per_viewer_removed_with_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w1, dock1 = _open_widget(viewer)
    w1.start()
    w1.start()  # a second Start docks nothing more
    assert len(_plot_docks(viewer, FSCPlot)) == 1 and len(_plot_docks(viewer, PoseHistogram)) == 1

    # the widget closed (its × removes its dock): the plot docks go with it
    viewer.window.remove_dock_widget(dock1)
    qtbot.waitUntil(lambda: not _plot_docks(viewer, FSCPlot), timeout=2000)
    assert not _plot_docks(viewer, PoseHistogram)
    assert FSC_DOCK_NAME not in viewer.window.dock_widgets
    assert POSE_DOCK_NAME not in viewer.window.dock_widgets
    qtbot.waitUntil(lambda: FSC_DOCK_NAME not in _window_menu(viewer), timeout=2000)
    assert POSE_DOCK_NAME not in _window_menu(viewer)

    # reopened: the same plots, docked once
    w2, _dock2 = _open_widget(viewer)
    assert w2.fsc_plot is w1.fsc_plot and w2.pose_plot is w1.pose_plot
    w2.start()
    fsc_docks = _plot_docks(viewer, FSCPlot)
    assert len(fsc_docks) == 1 and len(_plot_docks(viewer, PoseHistogram)) == 1
    assert fsc_docks[0].widget() is w2.fsc_plot and not fsc_docks[0].isHidden()
    assert not w2.fsc_plot.isHidden() and not w2.pose_plot.isHidden()  # not an empty dock


def test_two_widgets_share_the_docks_until_the_last_closes(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    a, dock_a = _open_widget(viewer, "first")
    b, dock_b = _open_widget(viewer, "second")
    a.start()
    b.start()
    assert len(_plot_docks(viewer, FSCPlot)) == 1
    viewer.window.remove_dock_widget(dock_a)
    qtbot.wait(50)
    assert len(_plot_docks(viewer, FSCPlot)) == 1  # b still uses them
    viewer.window.remove_dock_widget(dock_b)
    qtbot.waitUntil(lambda: not _plot_docks(viewer, FSCPlot), timeout=2000)


def test_closed_plot_dock_is_shown_again_on_start(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w, _dock = _open_widget(viewer)
    w.start()
    docks = w.plot_docks
    # the user's × on the FSC dock: hidden, still in the Window menu
    docks.fsc_dock.title.close_button.click()
    assert docks.fsc_dock.isHidden()
    assert FSC_DOCK_NAME in _window_menu(viewer) and POSE_DOCK_NAME in _window_menu(viewer)
    w.start()
    assert not docks.fsc_dock.isHidden() and len(_plot_docks(viewer, FSCPlot)) == 1

    # taken out of the window by other means (remove_dock_widget): docked again on Start
    viewer.window.remove_dock_widget(docks.fsc_dock)
    qtbot.wait(10)
    assert not _plot_docks(viewer, FSCPlot)
    w.start()
    fsc = _plot_docks(viewer, FSCPlot)
    assert len(fsc) == 1 and not fsc[0].isHidden() and fsc[0].widget() is w.fsc_plot


def test_docks_tabbed_in_window_menu_and_window_fits_768(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    w, _dock = _open_widget(viewer)
    w.start()
    main = viewer.window._qt_window
    docks = w.plot_docks
    assert main.tabifiedDockWidgets(docks.fsc_dock) == [docks.pose_dock]
    menu_texts = _window_menu(viewer)
    assert menu_texts.count(FSC_DOCK_NAME) == 1 and menu_texts.count(POSE_DOCK_NAME) == 1
    # the longest legend (three half-map curves, three reference curves) in a narrow dock
    freq = np.linspace(0, 0.25, 17)
    curve = np.linspace(1, 0, 17)
    w.fsc_plot.set_gold_standard(freq, {"unmasked": curve, "sphere": curve, "auto": curve},
                                 {"unmasked": 9.3, "sphere": None, "auto": 7.9})
    for k in range(3):
        w.fsc_plot.set_curve(k, freq, curve, 10.5)
    qtbot.wait(50)
    assert main.minimumSizeHint().height() < 768
    assert w.fsc_plot.minimumSizeHint().height() < 300


# --------------------------------------------------------------------------------- export
def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_fsc_csv_holds_the_curves_that_were_set(qtbot, tmp_path):
    plot = FSCPlot()
    qtbot.addWidget(plot)
    freq = np.arange(9) / (16 * 2.0)  # 1/Å
    auto = np.linspace(1.0, 0.05, 9)
    sphere = [1.0, 0.9, None, 0.6, 0.5, 0.4, float("nan"), 0.1, 0.0]
    ref = np.cos(np.linspace(0, 1.4, 5))
    plot.set_gold_standard(freq, {"auto": auto, "sphere": sphere}, {"auto": 7.9, "sphere": 8.5},
                           x_label="spatial frequency (1/Å)")
    plot.set_curve(0, freq[::2], ref, 11.0, x_label="spatial frequency (1/Å)")
    rows = _read_csv(plot.save_csv(tmp_path / "fsc.csv"))
    assert rows[0] == ["frequency (1/Å)", "gold-standard auto", "gold-standard sphere",
                       "scale 1 vs reference"]
    table = np.array([[float(v) if v else np.nan for v in row] for row in rows[1:]])
    np.testing.assert_array_equal(table[:, 0], freq)
    np.testing.assert_array_equal(table[:, 1], auto)
    np.testing.assert_array_equal(table[:, 2], np.array(sphere, dtype=float))  # None -> empty
    np.testing.assert_array_equal(table[::2, 3], ref)
    assert np.isnan(table[1::2, 3]).all()  # no reference value at the odd frequencies

    plot.set_x_label("spatial frequency (cycles/box)")
    assert _read_csv(plot.save_csv(tmp_path / "c.csv"))[0][0] == "frequency (cycles/box)"


def test_pose_csv_holds_edges_and_counts(qtbot, tmp_path):
    plot = PoseHistogram()
    qtbot.addWidget(plot)
    counts = np.array([5, 0, 3, 7])
    edges = np.array([0.0, 45.0, 90.0, 135.0, 180.0])
    plot.set_counts(counts, edges, "four bins")
    rows = _read_csv(plot.save_csv(tmp_path / "poses.csv"))
    assert rows[0] == ["bin start (deg)", "bin end (deg)", "particles"]
    got = np.array(rows[1:], dtype=float)
    np.testing.assert_array_equal(got[:, 0], edges[:-1])
    np.testing.assert_array_equal(got[:, 1], edges[1:])
    np.testing.assert_array_equal(got[:, 2], counts)


def test_png_is_the_plot_and_not_blank(qtbot, tmp_path):
    plot = FSCPlot()
    qtbot.addWidget(plot)
    plot.resize(420, 320)
    plot.show()
    qtbot.waitExposed(plot)
    freq = np.linspace(0, 0.25, 17)
    plot.set_gold_standard(freq, {"auto": np.linspace(1, 0, 17)}, {"auto": 7.9})
    path = plot.save_png(tmp_path / "fsc.png")
    image = QImage(str(path))
    assert not image.isNull()
    rgba = plot.grab_image()  # the pyqtgraph plot alone
    legend_h = plot.legend.grab().height()
    assert (image.width(), image.height()) == (rgba.shape[1], rgba.shape[0] + legend_h)
    # not blank: the plot part is the plot as drawn, with the background, the curve's red and
    # white text
    pixels = image_to_rgba(image)
    plot_part = pixels[:rgba.shape[0]]
    np.testing.assert_array_equal(plot_part, rgba)
    colors = {tuple(p) for p in plot_part[..., :3].reshape(-1, 3)[::7]}
    assert len(colors) > 20
    red = (plot_part[..., 0] > 200) & (plot_part[..., 1] < 120) & (plot_part[..., 2] < 120)
    assert red.sum() > 50  # the auto-mask curve (red) is drawn


def test_fsc_items_follow_the_curves(qtbot):
    """The pyqtgraph items behind the FSC plot: data in place, NaN breaks a line, each threshold
    line only with its kind of curve, the view from 0 to the last frequency."""
    plot = FSCPlot()
    qtbot.addWidget(plot)
    assert not plot.has_gold_threshold_line and not plot.has_reference_threshold_line
    freq = np.arange(5) / 40.0
    plot.set_curve(1, freq, [1.0, 0.8, None, 0.3, 0.1], 12.0)
    line = plot.curves[1]
    x, y = line.getData()
    np.testing.assert_array_equal(x, freq)
    np.testing.assert_array_equal(y, [1.0, 0.8, np.nan, 0.3, 0.1])
    assert line.opts["connect"] == "finite" and line.isVisible()
    assert plot.has_reference_threshold_line and not plot.has_gold_threshold_line
    assert plot._threshold_line.value() == 0.5
    (x0, x1), (y0, y1) = plot.view_range()
    assert x0 < 0 < 0.1 < x1 < 0.11 and y0 < -0.2 and 1.05 < y1 < 1.1  # 2 % padding
    assert plot.title == "FSC vs reference"
    plot.set_gold_standard(freq, {"auto": [1.0, 0.6, 0.3, 0.1, 0.0]}, {"auto": 9.0})
    assert plot.has_gold_threshold_line and plot._gold_threshold_line.value() == pytest.approx(0.143)
    assert plot._gold_threshold_line.pen.style() == Qt.PenStyle.DashLine

    # the user's zoom is kept through updates, and forgotten by clear() (a new run)
    plot.plot_item.getViewBox().scaleBy((0.5, 0.5))
    plot.plot_item.getViewBox().sigRangeChangedManually.emit([True, True])
    zoomed = plot.view_range()
    plot.set_curve(0, freq, [1.0, 0.9, 0.7, 0.4, 0.2], 10.0)
    np.testing.assert_allclose(plot.view_range(), zoomed)
    plot.clear()
    assert plot.view_range()[0][1] > 1.0  # the empty view again: 0 to 1
    plot.set_nyquist(2.0)  # a run at 2 Å/px starts: the empty plot spans 0 to 0.25 1/Å
    assert 0.25 < plot.view_range()[0][1] < 0.26
    plot.set_curve(0, freq, [1.0, 0.9, 0.7, 0.4, 0.2], 10.0)
    plot.set_nyquist(4.0)  # with curves shown, the curves keep the range
    assert 0.1 < plot.view_range()[0][1] < 0.11


def test_pose_bars_span_their_bins_from_zero(qtbot):
    plot = PoseHistogram()
    qtbot.addWidget(plot)
    plot.set_counts(np.array([5, 0, 3]), np.array([0.0, 60.0, 120.0, 180.0]), "three bins")
    opts = plot.bars.opts
    gap = 0.08 * 60.0  # a bar leaves 8 % of its bin free on each side
    np.testing.assert_allclose(opts["x0"], [gap, 60 + gap, 120 + gap])
    np.testing.assert_allclose(opts["x1"], [60 - gap, 120 - gap, 180 - gap])
    np.testing.assert_array_equal(opts["height"], [5, 0, 3])
    assert plot.view_range()[1][1] > 5 * 1.08  # the tallest bar fits
    assert plot.legend_text() == "three bins"


def test_unwritable_export_is_one_line(qtbot, tmp_path):
    from rmfn_napari.errors import InputError

    plot = PoseHistogram()
    qtbot.addWidget(plot)
    target = tmp_path / "missing" / "poses.csv"
    with pytest.raises(InputError, match="missing/poses.csv: cannot write the CSV"):
        plot.save_csv(target)
    with pytest.raises(InputError, match="poses.png: cannot write the PNG"):
        plot.save_png(tmp_path / "missing" / "poses.png")


# --------------------------------------------------------------------------------- legend
def test_fsc_legend_with_a_reference_never_asks_for_one(qtbot):
    plot = FSCPlot()
    qtbot.addWidget(plot)
    plot.set_reference_expected(True)
    text = plot.legend_text()
    assert "against the reference" in text and "needs a reference" not in text
    freq = np.linspace(0, 0.25, 17)
    plot.set_gold_standard(freq, {"auto": np.linspace(1, 0, 17)}, {"auto": 7.9})
    assert plot.legend_entries()[-1] == "vs reference: at the end of the stage"
    plot.set_curve(0, freq, np.linspace(1, 0, 17), 12.0)
    assert "vs reference: at the end" not in plot.legend_text()
    assert "scale 1: 12.0 Å" in plot.legend_text()

    plot.clear()
    plot.set_reference_expected(False)  # no reference: the legend says nothing about one
    assert "reference" not in plot.legend_text()
    plot.set_gold_standard(freq, {"auto": np.linspace(1, 0, 17)}, {"auto": 7.9})
    assert "reference" not in plot.legend_text()


# ----------------------------------------------------- the real reconstruct widget, patched
def _reconstruct_widget_with_plot_docks(monkeypatch):
    """ReconstructWidget switched to PlotDocks as the lines proposed for it do (get the
    viewer's plots in __init__; dock_plots -> PlotDocks.show)."""
    from rmfn_napari._widgets import reconstruct

    cls = reconstruct.ReconstructWidget
    original = cls.__init__

    def init(self, viewer, *args, **kwargs):
        original(self, viewer, *args, **kwargs)
        self.plot_docks = PlotDocks.for_viewer(viewer)
        self.plot_docks.acquire(self)
        self.fsc_plot, self.pose_plot = self.plot_docks.fsc_plot, self.plot_docks.pose_plot

    monkeypatch.setattr(cls, "__init__", init)
    monkeypatch.setattr(cls, "dock_plots", lambda self: self.plot_docks.show())
    return cls


def test_reconstruct_widget_closed_and_reopened_has_one_fsc_dock(make_napari_viewer, qtbot,
                                                                  monkeypatch):
    cls = _reconstruct_widget_with_plot_docks(monkeypatch)
    viewer = make_napari_viewer()
    w1 = cls(viewer)
    dock1 = viewer.window.add_dock_widget(w1, name="Reconstruct (cryo-EM)")
    w1.dock_plots()  # what Start does
    assert len(_plot_docks(viewer, FSCPlot)) == 1
    dock1.title.close_button.click()  # the widget's × removes its dock
    qtbot.waitUntil(lambda: not _plot_docks(viewer, FSCPlot), timeout=2000)
    assert not _plot_docks(viewer, PoseHistogram)

    w2 = cls(viewer)
    viewer.window.add_dock_widget(w2, name="Reconstruct (cryo-EM)")
    w2.dock_plots()
    w2.dock_plots()
    assert len(_plot_docks(viewer, FSCPlot)) == 1 and len(_plot_docks(viewer, PoseHistogram)) == 1
    assert _plot_docks(viewer, FSCPlot)[0].widget() is w2.fsc_plot
