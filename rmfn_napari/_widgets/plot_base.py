"""The frame every rMFN plot shares (GUI thread only): a pyqtgraph plot with a title, axes and
a view range, a Qt legend under it, and export of what is drawn.

The plot is pyqtgraph's ``PlotWidget`` (:attr:`PlotPanel.plot`, its ``PlotItem``:
:attr:`PlotPanel.plot_item`). pyqtgraph paints with QPainter into Qt's backing store (no
OpenGL unless asked), so where OpenGL is a software rasteriser (llvmpipe under Xvfb, VNC, X
forwarding) a repaint stays a few milliseconds; the vispy canvases the plots once were cost
45–65 ms per repaint there. Zoom and pan (mouse wheel, drag; "A" in the corner or the context
menu's "View All" goes back), and the context menu's "Export…" (PNG, SVG, CSV of each curve)
come with pyqtgraph.

The legend is a word-wrapped Qt label under the plot rather than pyqtgraph's ``LegendItem``:
in a dock 240 px tall, seven entries with resolutions would cover the curves, and a label wraps
to the dock's width. Export in the project's own form: :meth:`PlotPanel.save_png` writes the
plot with the legend under it (pixels: the plot's size, plus the legend's height);
:meth:`PlotPanel.save_csv` writes the numbers behind the plot (each plot says which columns,
:meth:`PlotPanel.csv_rows`). The "Save…" button beside the legend offers both, through a file
dialog.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QImage, QPainter
from qtpy.QtWidgets import (
    QFileDialog, QHBoxLayout, QLabel, QMenu, QSizePolicy, QToolButton, QVBoxLayout, QWidget,
)

from ..engine.atomic import atomic_path
from ..errors import InputError

#: Legend entries never break inside (Qt ignores ``white-space: nowrap`` on a span).
NB_HYPHEN = "\u2011"
#: Smallest plot height (px): small, so the docked plots never make the window taller than
#: a 1366x768 screen (the dock can still be enlarged by the user).
CANVAS_MIN_HEIGHT = 110
#: Smallest plot width (px).
PLOT_MIN_WIDTH = 160
#: Background and text colours (RGB 0-255): napari's dark theme.
BACKGROUND = (38, 41, 48)
FOREGROUND = (230, 230, 230)
#: Point sizes of the title and of the axes' labels.
TITLE_PT, AXIS_PT = 9, 8


def hex_color(rgb) -> str:
    """``"#rrggbb"`` of an RGB(A) colour in [0, 1]."""
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgb[:3])


def rgb255(rgba) -> tuple:
    """An RGB(A) colour in [0, 1] as 0-255 integers (pyqtgraph's colour tuples)."""
    return tuple(int(round(255 * float(c))) for c in rgba)


def image_to_rgba(image: QImage) -> np.ndarray:
    """A QImage as RGBA ``(H, W, 4)`` uint8 (a copy)."""
    image = image.convertToFormat(QImage.Format.Format_RGBA8888)
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    rows = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, :4 * image.width()].reshape(image.height(), image.width(), 4).copy()


class _PlotView(pg.PlotWidget):
    """pyqtgraph's PlotWidget with the size hint of a docked plot."""

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt name
        """520 × 240 px: in a dock this wide the longest FSC legend (three half-map and three
        reference curves) takes three lines, and the window still fits a 1366 × 768 screen."""
        return QSize(520, 240)


class PlotPanel(QWidget):
    """A pyqtgraph plot (title, axes, a view range), a Qt legend label below, and a "Save…"
    menu (PNG, CSV).

    Subclasses add pyqtgraph items to :attr:`plot_item` and fill :meth:`csv_rows` with the
    plot's numbers (a header row, then data rows). :meth:`set_range` sets the view until the
    user zooms or pans; from then on their view is kept until :meth:`reset_view` (a new run)
    or pyqtgraph's "A" button.
    """

    #: Default file name stem offered by the save dialogs.
    export_stem = "plot"

    def __init__(self, title: str, x_label: str, y_label: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.plot = _PlotView(background=BACKGROUND)
        self.plot_item: pg.PlotItem = self.plot.getPlotItem()
        self.plot_item.showGrid(x=False, y=False)
        self.plot_item.setMenuEnabled(True)
        for side in ("left", "bottom"):
            axis = self.plot_item.getAxis(side)
            axis.setTextPen(FOREGROUND)
            axis.setPen(pg.mkPen(FOREGROUND))
            font = axis.font() if hasattr(axis, "font") else self.font()
            font.setPointSize(AXIS_PT)
            axis.setStyle(tickFont=font)
            axis.enableAutoSIPrefix(False)  # "1/Å", never "1/Å (x0.001)"
        self._title = ""
        self._x_label = ""
        self.set_title(title)
        self.set_x_label(x_label)
        self.plot_item.setLabel("left", y_label, color=FOREGROUND, **{"font-size": f"{AXIS_PT}pt"})
        self._user_view = False
        self._setting_range = False
        self.plot_item.getViewBox().sigRangeChangedManually.connect(self._on_user_view)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.save_button = QToolButton()
        self.save_button.setText("Save…")
        self.save_button.setToolTip("save this plot as a PNG image or its numbers as CSV "
                                    "(right-click the plot for pyqtgraph's own export: SVG, ...)")
        self.save_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.save_button)
        self.save_png_action = menu.addAction("Save PNG…", self._ask_png)
        self.save_csv_action = menu.addAction("Save CSV…", self._ask_csv)
        self.save_button.setMenu(menu)
        self.plot.setMinimumSize(PLOT_MIN_WIDTH, CANVAS_MIN_HEIGHT)
        self.plot.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        below = QHBoxLayout()
        below.setContentsMargins(0, 0, 0, 0)
        below.addWidget(self.legend, 1)
        below.addWidget(self.save_button, 0, Qt.AlignmentFlag.AlignTop)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.plot, 1)
        lay.addLayout(below)
        self.setMinimumWidth(PLOT_MIN_WIDTH)
        self.n_redraws = 0

    # ---- legend ---------------------------------------------------------------------
    def set_legend(self, html: str) -> None:
        """Show ``html`` under the plot, with the height its wrapped text needs (a word-
        wrapped QLabel's size hint ignores its width, so a dock could squeeze it over the
        plot)."""
        self.legend.setText(html)
        self._fit_legend()

    def legend_text(self) -> str:
        """The legend as a person reads it (plain text, ordinary spaces)."""
        from qtpy.QtGui import QTextDocument

        doc = QTextDocument()
        doc.setHtml(self.legend.text())
        return doc.toPlainText().replace("\xa0", " ").replace(NB_HYPHEN, "-")

    def _fit_legend(self) -> None:
        width = self.legend.width() if self.legend.width() > 50 else max(self.width() - 60, 300)
        self.legend.setMinimumHeight(max(0, self.legend.heightForWidth(width)))

    def resizeEvent(self, event):  # noqa: N802 - Qt name
        """Keep the legend's height right for the new width."""
        super().resizeEvent(event)
        self._fit_legend()

    # ---- view -----------------------------------------------------------------------
    def set_x_label(self, text: str) -> None:
        """Change the x-axis label."""
        self._x_label = text
        self.plot_item.setLabel("bottom", text, color=FOREGROUND, **{"font-size": f"{AXIS_PT}pt"})

    @property
    def x_label(self) -> str:
        """The x-axis label (with its unit)."""
        return self._x_label

    @property
    def title(self) -> str:
        """The title drawn above the plot."""
        return self._title

    def set_title(self, text: str) -> None:
        """Change the title."""
        if text != self._title:
            self._title = text
            self.plot_item.setTitle(text, color=FOREGROUND, size=f"{TITLE_PT}pt")

    def set_range(self, x, y) -> None:
        """Show ``x = (x0, x1)``, ``y = (y0, y1)`` (each widened by 2 % of its span), unless
        the user has zoomed or panned since the last :meth:`reset_view`."""
        if self._user_view:
            return
        self._setting_range = True
        try:
            self.plot_item.setRange(xRange=tuple(map(float, x)), yRange=tuple(map(float, y)),
                                    padding=0.02)
        finally:
            self._setting_range = False

    def view_range(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The view shown: ``((x0, x1), (y0, y1))`` in data units."""
        (x0, x1), (y0, y1) = self.plot_item.getViewBox().viewRange()
        return (float(x0), float(x1)), (float(y0), float(y1))

    def reset_view(self) -> None:
        """Forget the user's zoom and pan: :meth:`set_range` applies again."""
        self._user_view = False

    def _on_user_view(self, *_args) -> None:
        if not self._setting_range:
            self._user_view = True

    def redraw(self) -> None:
        """Ask Qt to repaint the plot at the next event-loop pass (repeated requests are
        coalesced into one paint; pyqtgraph also repaints on its own when items change)."""
        self.n_redraws += 1
        self.plot.viewport().update()

    def grab_image(self) -> np.ndarray:
        """The plot (without the legend) as RGBA ``(H, W, 4)`` uint8 (for screenshots; also
        when hidden)."""
        return image_to_rgba(self.plot.grab().toImage())

    # ---- export ---------------------------------------------------------------------
    def csv_rows(self) -> list[list]:
        """The plot's numbers: a header row, then one row per data point (subclasses)."""
        raise NotImplementedError

    def save_csv(self, path) -> Path:
        """Write :meth:`csv_rows` to ``path`` (comma-separated, numbers at full precision, an
        empty cell where a curve has no value). Returns the path; :class:`InputError` naming
        the file when it cannot be written."""
        path = Path(path)
        rows = self.csv_rows()
        try:
            with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                for row in rows:
                    writer.writerow(["" if v is None else (repr(float(v))
                                                           if isinstance(v, (float, np.floating))
                                                           else v) for v in row])
        except OSError as exc:
            raise InputError(f"cannot write the CSV ({exc.strerror or exc})", path) from None
        return path

    def render_image(self) -> QImage:
        """The plot as drawn now with the legend under it (width: the plot's)."""
        plot = self.plot.grab().toImage()
        w, h = plot.width(), plot.height()
        legend = self.legend.grab() if self.legend.text() else None
        extra = legend.height() if legend is not None else 0
        image = QImage(w, h + extra, QImage.Format.Format_RGBA8888)
        # the legend strip in the legend's own background, also right of a narrower legend
        image.fill(legend.toImage().pixelColor(0, 0) if legend is not None
                   else Qt.GlobalColor.black)
        painter = QPainter(image)
        painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_Source)
        painter.drawImage(0, 0, plot)  # the plot's pixels as they are
        painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_SourceOver)
        if legend is not None:
            painter.drawPixmap(0, h, legend)
        painter.end()
        return image

    def save_png(self, path) -> Path:
        """Write :meth:`render_image` to ``path`` as PNG. Returns the path;
        :class:`InputError` naming the file when it cannot be written."""
        path = Path(path)
        try:
            with atomic_path(path) as tmp:
                if not self.render_image().save(str(tmp), "PNG"):
                    raise OSError("folder missing or not writable?")
        except OSError as exc:
            raise InputError(f"cannot write the PNG ({exc.strerror or exc})", path) from None
        return path

    def _ask_png(self) -> None:
        self._ask_and_save("PNG image (*.png)", ".png", self.save_png)

    def _ask_csv(self) -> None:
        self._ask_and_save("CSV table (*.csv)", ".csv", self.save_csv)

    def _ask_and_save(self, file_filter: str, suffix: str, save) -> None:
        dialog = QFileDialog(self, f"Save {self.export_stem}", self.export_stem + suffix, file_filter)
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setDefaultSuffix(suffix.lstrip("."))  # added before the overwrite question, not after
        if not dialog.exec() or not dialog.selectedFiles():
            return
        path = dialog.selectedFiles()[0]
        try:
            save(path)
        except InputError as exc:
            from napari.utils.notifications import show_error

            show_error(str(exc))


__all__ = ["CANVAS_MIN_HEIGHT", "NB_HYPHEN", "PLOT_MIN_WIDTH", "PlotPanel", "hex_color",
           "image_to_rgba", "rgb255"]
