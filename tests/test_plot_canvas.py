"""The QPainter plot canvas: ticks, and where a data point lands, checked against pixel
positions computed by hand from the plot area's corners (not against the canvas's own
mapping)."""

import numpy as np
import pytest

from rmfn_napari._widgets.plot_canvas import (
    BOTTOM_H, LEFT_W, RIGHT_W, TITLE_H, Bars, PlotCanvas, Series, nice_ticks, tick_label,
)


@pytest.mark.parametrize("lo, hi, n, expected", [
    (0.0, 1.0, 6, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (-0.2, 1.05, 6, [0.0, 0.5, 1.0]),
    (0.0, 180.0, 7, [0, 50, 100, 150]),
    (0.0, 0.25, 6, [0.0, 0.05, 0.1, 0.15, 0.2, 0.25]),
    (3.0, 3.0, 6, []),
])
def test_nice_ticks(lo, hi, n, expected):
    np.testing.assert_allclose(nice_ticks(lo, hi, n), expected)


def test_tick_labels_have_the_decimals_of_the_step():
    assert tick_label(0.05, 0.05) == "0.05"
    assert tick_label(0.1, 0.05) == "0.10"
    assert tick_label(150.0, 50.0) == "150"
    assert tick_label(0.5, 0.5) == "0.5"


def _plot_area(w, h):
    """(left, top, right, bottom) of the plot area of a w x h canvas, by hand."""
    return LEFT_W, TITLE_H, w - RIGHT_W, h - BOTTOM_H


def test_a_horizontal_line_lands_on_the_row_computed_by_hand(qtbot):
    canvas = PlotCanvas("t", "x", "y")
    qtbot.addWidget(canvas)
    canvas.resize(400, 300)
    canvas.set_range((0.0, 2.0), (-1.0, 3.0))
    canvas.add_series("line", Series(np.array([0.0, 2.0]), np.array([2.0, 2.0]),
                                     color=(1, 0, 0, 1), width=1))
    left, top, right, bottom = _plot_area(400, 300)
    row = top + (3.0 - 2.0) / 4.0 * (bottom - top)  # y = 2 is 1/4 of the way down
    rgba = canvas.render_rgba()
    red = (rgba[..., 0] > 200) & (rgba[..., 1] < 80) & (rgba[..., 2] < 80)
    rows = np.flatnonzero(red.sum(axis=1) > 100)
    assert rows.size and abs(rows.mean() + 0.5 - row) <= 1.0
    cols = np.flatnonzero(red.any(axis=0))
    assert cols.min() >= left - 1 and cols.max() <= right + 1 and cols.size > 0.9 * (right - left)


def test_a_non_finite_point_breaks_the_line(qtbot):
    canvas = PlotCanvas("t", "x", "y")
    qtbot.addWidget(canvas)
    canvas.resize(400, 300)
    canvas.set_range((0.0, 4.0), (0.0, 1.0))
    canvas.add_series("line", Series(np.array([0.0, 1.0, 2.0, 3.0, 4.0]),
                                     np.array([0.5, 0.5, np.nan, 0.5, 0.5]),
                                     color=(1, 0, 0, 1), width=2))
    left, top, right, bottom = _plot_area(400, 300)
    rgba = canvas.render_rgba()
    red = (rgba[..., 0] > 200) & (rgba[..., 1] < 80) & (rgba[..., 2] < 80)
    col = lambda x: int(round(left + x / 4.0 * (right - left)))  # noqa: E731
    assert red[:, col(0.5)].any() and red[:, col(3.5)].any()
    assert not red[:, col(1.5)].any() and not red[:, col(2.5)].any()  # no segment through NaN
    assert not Series(np.array([0.0, 1.0]), np.array([np.nan, 1.0])).drawable


def test_a_bar_fills_its_bin_from_zero_to_its_height(qtbot):
    canvas = PlotCanvas("t", "x", "y")
    qtbot.addWidget(canvas)
    canvas.resize(400, 300)
    canvas.set_range((0.0, 10.0), (0.0, 4.0))
    canvas.bars = Bars(np.array([2.0]), np.array([4.0]), np.array([3.0]), color=(0, 1, 0, 1))
    left, top, right, bottom = _plot_area(400, 300)
    rgba = canvas.render_rgba()
    green = (rgba[..., 1] > 200) & (rgba[..., 0] < 80) & (rgba[..., 2] < 80)
    ys, xs = np.nonzero(green)
    x_of = lambda x: left + x / 10.0 * (right - left)  # noqa: E731
    y_of = lambda y: top + (4.0 - y) / 4.0 * (bottom - top)  # noqa: E731
    assert abs(xs.min() - x_of(2.0)) <= 1 and abs(xs.max() + 1 - x_of(4.0)) <= 1
    assert abs(ys.min() - y_of(3.0)) <= 1 and abs(ys.max() + 1 - y_of(0.0)) <= 1
