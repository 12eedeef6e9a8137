"""A 2D plot drawn with QPainter (GUI thread only): title, axes with ticks, lines and bars.

Why not a vispy ``SceneCanvas`` (what the plots were until 2026-12): every vispy canvas is an
OpenGL widget, and where OpenGL is a software rasteriser (llvmpipe under Xvfb, VNC or X
forwarding: common on a cluster's visualisation nodes) one repaint of the two plot docks cost
45–65 ms, 130–320 ms the first time a curve appeared and ~3 s for their first paint, all on the
GUI thread (``benchmarks/results/gui_responsiveness.md``). QPainter draws a few hundred line
segments and a dozen labels into Qt's backing store in a few milliseconds on any machine.

Coordinates: a data point ``(x, y)`` is drawn at pixel
``(left + (x - x0) / (x1 - x0) * width, top + (y1 - y) / (y1 - y0) * height)`` of the plot
area (``left, top, width, height``: :meth:`PlotCanvas.plot_rect`), where ``(x0, x1), (y0, y1)``
is the view range (:meth:`PlotCanvas.set_range`); y grows upwards. Nothing is drawn outside
the plot area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QFont, QImage, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QWidget

#: Background, frame and text colours (RGBA in [0, 1]).
BACKGROUND = (0.15, 0.16, 0.19, 1.0)
FRAME = (0.6, 0.6, 0.6, 1.0)
TEXT = (1.0, 1.0, 1.0, 1.0)
#: Space around the plot area (px): title above, y axis left, x axis below, a margin right.
TITLE_H, LEFT_W, BOTTOM_H, RIGHT_W = 20, 54, 38, 10
#: Font sizes (points) of the title and of the axes' labels.
TITLE_PT, AXIS_PT = 9, 8


def qcolor(rgba) -> QColor:
    """A QColor from RGB(A) in [0, 1]."""
    r, g, b, *a = (float(c) for c in rgba)
    return QColor.fromRgbF(r, g, b, a[0] if a else 1.0)


def nice_ticks(lo: float, hi: float, max_ticks: int = 6) -> np.ndarray:
    """Tick values in ``[lo, hi]`` at a step of 1, 2 or 5 × 10^k, the smallest such step that
    gives at most ``max_ticks`` ticks (at least 2 where the range allows). Empty for an empty
    or non-finite range."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.zeros(0)
    raw = (hi - lo) / max(1, max_ticks - 1)
    base = 10.0 ** math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 5.0, 10.0):
        step = mult * base
        first = math.ceil(lo / step - 1e-9)
        last = math.floor(hi / step + 1e-9)
        if last - first + 1 <= max_ticks:
            break
    ticks = np.arange(first, last + 1) * step
    return np.round(ticks, 12) + 0.0  # no -0.0


def tick_label(value: float, step: float) -> str:
    """``value`` with as many decimals as the tick step needs (0.05 -> 2, 20 -> 0)."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{value:.{decimals}f}"


@dataclass
class Series:
    """A line through ``(x, y)``; a non-finite point breaks it (never drawn as 0).

    ``color`` RGBA in [0, 1], ``width`` px, ``dashed``: a dashed pen; ``visible``."""

    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    color: tuple = (1.0, 1.0, 1.0, 1.0)
    width: float = 1.0
    dashed: bool = False
    visible: bool = True

    def set_data(self, x, y) -> None:
        """Replace the points (float arrays of one length)."""
        self.x = np.asarray(x, dtype=np.float64).ravel()
        self.y = np.asarray(y, dtype=np.float64).ravel()

    @property
    def drawable(self) -> bool:
        """Whether two consecutive points are finite (a segment can be drawn)."""
        ok = np.isfinite(self.x) & np.isfinite(self.y)
        return bool(np.any(ok[:-1] & ok[1:])) if ok.size > 1 else False


@dataclass
class Bars:
    """Bars from 0 to ``height`` between ``left`` and ``right`` (data units)."""

    left: np.ndarray = field(default_factory=lambda: np.zeros(0))
    right: np.ndarray = field(default_factory=lambda: np.zeros(0))
    height: np.ndarray = field(default_factory=lambda: np.zeros(0))
    color: tuple = (0.35, 0.65, 1.0, 0.9)


class PlotCanvas(QWidget):
    """Title, left and bottom axes with ticks and labels, and a plot area holding
    :class:`Series` (``series``, drawn in insertion order) and one :class:`Bars`."""

    def __init__(self, title: str, x_label: str, y_label: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.title = title
        self.x_label = x_label
        self.y_label = y_label
        self.series: dict[object, Series] = {}
        self.bars: Bars | None = None
        self.x_range = (0.0, 1.0)
        self.y_range = (0.0, 1.0)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.resize(self.sizeHint())

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt name
        """520 × 240 px: in a dock this wide the longest FSC legend (three half-map and three
        reference curves) takes three lines, and the window still fits a 1366 × 768 screen."""
        return QSize(520, 240)

    # ---- model ----------------------------------------------------------------------
    def add_series(self, key, series: Series) -> Series:
        """Add (or replace) the line ``key``; returns it."""
        self.series[key] = series
        return series

    def remove_series(self, key) -> None:
        """Remove the line ``key`` (absent: nothing)."""
        self.series.pop(key, None)

    def set_range(self, x, y, margin: float = 0.0) -> None:
        """Show ``x = (x0, x1)``, ``y = (y0, y1)``, each widened by ``margin`` of its span on
        both sides."""
        def widen(lo, hi):
            lo, hi = float(lo), float(hi)
            if not hi > lo:
                hi = lo + 1.0
            pad = margin * (hi - lo)
            return lo - pad, hi + pad

        self.x_range, self.y_range = widen(*x), widen(*y)

    # ---- geometry -------------------------------------------------------------------
    def plot_rect(self) -> QRectF:
        """The plot area in widget pixels."""
        return QRectF(LEFT_W, TITLE_H, max(1, self.width() - LEFT_W - RIGHT_W),
                      max(1, self.height() - TITLE_H - BOTTOM_H))

    def to_pixels(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Widget pixel coordinates of data points (see the module doc)."""
        r = self.plot_rect()
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        px = r.left() + (np.asarray(x, np.float64) - x0) / (x1 - x0) * r.width()
        py = r.top() + (y1 - np.asarray(y, np.float64)) / (y1 - y0) * r.height()
        return px, py

    # ---- drawing --------------------------------------------------------------------
    def paintEvent(self, event):  # noqa: N802 - Qt name
        """Draw everything (Qt calls this; ask for it with ``update()``)."""
        painter = QPainter(self)
        try:
            self.paint(painter)
        finally:
            painter.end()

    def paint(self, painter: QPainter) -> None:
        """Draw the plot with ``painter`` (on this widget or on an image of its size)."""
        painter.fillRect(QRectF(0, 0, self.width(), self.height()), qcolor(BACKGROUND))
        rect = self.plot_rect()
        self._paint_title(painter)
        self._paint_axes(painter, rect)
        painter.save()
        painter.setClipRect(rect)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        if self.bars is not None:
            self._paint_bars(painter, self.bars)
        for series in self.series.values():
            if series.visible:
                self._paint_series(painter, series)
        painter.restore()
        painter.setPen(QPen(qcolor(FRAME), 1))
        painter.drawRect(rect)

    def _font(self, points: int) -> QFont:
        font = QFont(self.font())
        font.setPointSize(points)
        return font

    def _paint_title(self, painter: QPainter) -> None:
        painter.setFont(self._font(TITLE_PT))
        painter.setPen(qcolor(TEXT))
        painter.drawText(QRectF(0, 0, self.width(), TITLE_H), Qt.AlignmentFlag.AlignCenter,
                         self.title)

    def _paint_axes(self, painter: QPainter, rect: QRectF) -> None:
        painter.setFont(self._font(AXIS_PT))
        metrics = painter.fontMetrics()
        text_h = metrics.height()
        pen = QPen(qcolor(TEXT), 1)
        painter.setPen(pen)
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        max_x = max(2, int(rect.width() // max(1, metrics.horizontalAdvance("0.000") + 12)))
        xt = nice_ticks(x0, x1, min(7, max_x))
        xs, _ = self.to_pixels(xt, np.zeros_like(xt))
        step = float(xt[1] - xt[0]) if xt.size > 1 else 1.0
        for value, px in zip(xt, xs):
            painter.drawLine(QPointF(px, rect.bottom()), QPointF(px, rect.bottom() + 4))
            painter.drawText(QRectF(px - 40, rect.bottom() + 5, 80, text_h),
                             Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop,
                             tick_label(value, step))
        painter.drawText(QRectF(rect.left(), rect.bottom() + 5 + text_h, rect.width(), text_h),
                         Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, self.x_label)
        max_y = max(2, int(rect.height() // (2 * text_h)))
        yt = nice_ticks(y0, y1, min(6, max_y))
        _, ys = self.to_pixels(np.zeros_like(yt), yt)
        step = float(yt[1] - yt[0]) if yt.size > 1 else 1.0
        for value, py in zip(yt, ys):
            painter.drawLine(QPointF(rect.left() - 4, py), QPointF(rect.left(), py))
            painter.drawText(QRectF(0, py - text_h / 2, rect.left() - 6, text_h),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                             tick_label(value, step))
        painter.save()  # the y label, rotated, along the left edge
        painter.translate(2, rect.center().y())
        painter.rotate(-90)
        painter.drawText(QRectF(-rect.height() / 2, 0, rect.height(), text_h),
                         Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, self.y_label)
        painter.restore()

    def _paint_series(self, painter: QPainter, series: Series) -> None:
        n = min(series.x.size, series.y.size)
        if n < 2:
            return
        px, py = self.to_pixels(series.x[:n], series.y[:n])
        ok = np.isfinite(px) & np.isfinite(py)
        path = QPainterPath()
        pen_down = False
        for k in range(n):
            if not ok[k]:
                pen_down = False
                continue
            if pen_down:
                path.lineTo(px[k], py[k])
            elif k + 1 < n and ok[k + 1]:
                path.moveTo(px[k], py[k])
                pen_down = True
        pen = QPen(qcolor(series.color), float(series.width))
        pen.setCapStyle(Qt.PenCapStyle.FlatCap)
        if series.dashed:
            pen.setStyle(Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawPath(path)

    def _paint_bars(self, painter: QPainter, bars: Bars) -> None:
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(qcolor(bars.color))
        x0, y0 = self.to_pixels(bars.left, np.zeros_like(bars.height))
        x1, y1 = self.to_pixels(bars.right, bars.height)
        for a, b, top, bottom in zip(x0, x1, y1, y0):
            if bottom > top:
                painter.drawRect(QRectF(a, top, b - a, bottom - top))

    def render_rgba(self) -> np.ndarray:
        """The plot as drawn at the widget's size: RGBA ``(H, W, 4)`` uint8 (also when the
        widget is hidden)."""
        image = QImage(self.width(), self.height(), QImage.Format.Format_RGBA8888)
        painter = QPainter(image)
        try:
            self.paint(painter)
        finally:
            painter.end()
        ptr = image.constBits()
        ptr.setsize(image.sizeInBytes())
        rows = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine())
        return rows[:, :4 * image.width()].reshape(image.height(), image.width(), 4).copy()


__all__ = ["Bars", "PlotCanvas", "Series", "nice_ticks", "qcolor", "tick_label"]
