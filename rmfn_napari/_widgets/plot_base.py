"""The frame every rMFN plot shares (GUI thread only): a plot canvas with a title, axes and
a view range, a Qt legend under it, and export of what is drawn.

The canvas is a :class:`.plot_canvas.PlotCanvas`, drawn with QPainter (not OpenGL: see that
module for why; matplotlib is not a dependency). Export: :meth:`PlotWidget.save_png` writes the
canvas with the legend under it (pixels: the canvas's size, plus the legend's height);
:meth:`PlotWidget.save_csv` writes the numbers behind the plot (each plot says which columns,
:meth:`PlotWidget.csv_rows`). The "Save…" button beside the legend offers both, through a file
dialog.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPainter
from qtpy.QtWidgets import (
    QFileDialog, QHBoxLayout, QLabel, QMenu, QSizePolicy, QToolButton, QVBoxLayout, QWidget,
)

from ..engine.atomic import atomic_path
from ..errors import InputError
from .plot_canvas import PlotCanvas

#: Legend entries never break inside (Qt ignores ``white-space: nowrap`` on a span).
NB_HYPHEN = "\u2011"
#: Smallest canvas height (px): small, so the docked plots never make the window taller than
#: a 1366x768 screen (the dock can still be enlarged by the user).
CANVAS_MIN_HEIGHT = 110
#: Smallest plot width (px).
PLOT_MIN_WIDTH = 160


def hex_color(rgb) -> str:
    """``"#rrggbb"`` of an RGB(A) colour in [0, 1]."""
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgb[:3])


class PlotWidget(QWidget):
    """A 2D plot: title, axes, a view range, a Qt legend label below, and a "Save…" menu
    (PNG, CSV).

    Subclasses put :class:`.plot_canvas.Series` and :class:`.plot_canvas.Bars` on
    :attr:`canvas` and fill :meth:`csv_rows` with the plot's numbers (a header row, then data
    rows).
    """

    #: Default file name stem offered by the save dialogs.
    export_stem = "plot"

    def __init__(self, title: str, x_label: str, y_label: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.canvas = PlotCanvas(title, x_label, y_label)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.save_button = QToolButton()
        self.save_button.setText("Save…")
        self.save_button.setToolTip("save this plot as a PNG image or its numbers as CSV")
        self.save_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.save_button)
        self.save_png_action = menu.addAction("Save PNG…", self._ask_png)
        self.save_csv_action = menu.addAction("Save CSV…", self._ask_csv)
        self.save_button.setMenu(menu)
        self.canvas.setMinimumSize(PLOT_MIN_WIDTH, CANVAS_MIN_HEIGHT)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        below = QHBoxLayout()
        below.setContentsMargins(0, 0, 0, 0)
        below.addWidget(self.legend, 1)
        below.addWidget(self.save_button, 0, Qt.AlignmentFlag.AlignTop)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.canvas, 1)
        lay.addLayout(below)
        self.setMinimumWidth(PLOT_MIN_WIDTH)
        self.n_redraws = 0

    # ---- legend ---------------------------------------------------------------------
    def set_legend(self, html: str) -> None:
        """Show ``html`` under the canvas, with the height its wrapped text needs (a word-
        wrapped QLabel's size hint ignores its width, so a dock could squeeze it over the
        canvas)."""
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
        self.canvas.x_label = text

    @property
    def x_label(self) -> str:
        """The x-axis label (with its unit)."""
        return self.canvas.x_label

    @property
    def title(self) -> str:
        """The title drawn above the plot."""
        return self.canvas.title

    def set_title(self, text: str) -> None:
        """Change the title."""
        self.canvas.title = text

    def set_range(self, x, y) -> None:
        """Show ``x = (x0, x1)``, ``y = (y0, y1)`` (each widened by 2 % of its span)."""
        self.canvas.set_range(x, y, margin=0.02)

    def redraw(self) -> None:
        """Ask Qt to repaint the canvas at the next event-loop pass (like matplotlib's
        draw_idle; repeated requests are coalesced into one paint)."""
        self.n_redraws += 1
        self.canvas.update()

    def grab_image(self) -> np.ndarray:
        """The canvas as RGBA ``(H, W, 4)`` uint8 (for screenshots; also when hidden)."""
        return self.canvas.render_rgba()

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
        """The canvas as drawn now with the legend under it (width: the canvas's)."""
        rgba = self.canvas.render_rgba()
        h, w = rgba.shape[:2]
        canvas_img = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        legend = self.legend.grab() if self.legend.text() else None
        extra = legend.height() if legend is not None else 0
        image = QImage(w, h + extra, QImage.Format.Format_RGBA8888)
        # the legend strip in the legend's own background, also right of a narrower legend
        image.fill(legend.toImage().pixelColor(0, 0) if legend is not None
                   else Qt.GlobalColor.black)
        painter = QPainter(image)
        painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_Source)
        painter.drawImage(0, 0, canvas_img)  # the canvas's pixels as they are
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


__all__ = ["CANVAS_MIN_HEIGHT", "NB_HYPHEN", "PLOT_MIN_WIDTH", "PlotWidget", "hex_color"]
