"""Live plots and tables for the dock widgets (GUI thread only).

Plots are vispy ``SceneCanvas`` es (napari already ships vispy; matplotlib is not a
dependency): a line plot of FSC curves, one per scale, with the threshold line, and a bar
histogram of pose errors in degrees (0–180). Each redraw only swaps vertex data of existing
visuals and asks vispy for an update, so it is cheap and never blocks the event loop. The
legend (scale colours and resolutions in Å) is a Qt label under the canvas.

Nothing here computes a metric: curves, resolutions and errors come from ``Metrics`` events.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtWidgets import QLabel, QSizePolicy, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

#: Colours of scales 1, 2, 3, ... (RGB in [0, 1]); the last repeats.
SCALE_COLORS = [
    (0.35, 0.65, 1.00),  # blue
    (1.00, 0.65, 0.20),  # orange
    (0.40, 0.85, 0.40),  # green
    (0.90, 0.35, 0.80),  # magenta
    (1.00, 0.90, 0.30),  # yellow
]


def scale_color(scale: int) -> tuple[float, float, float]:
    """Colour of 0-based ``scale``."""
    return SCALE_COLORS[min(scale, len(SCALE_COLORS) - 1)]


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgb[:3])


class _VispyPlot(QWidget):
    """A vispy 2D plot: title, axes, a pan-zoom view, and a Qt legend label below."""

    def __init__(self, title: str, x_label: str, y_label: str, parent: QWidget | None = None):
        super().__init__(parent)
        from vispy import scene

        self._scene = scene
        self.canvas = scene.SceneCanvas(keys=None, show=False, size=(360, 240),
                                        bgcolor=(0.15, 0.16, 0.19, 1.0))
        grid = self.canvas.central_widget.add_grid(margin=6)
        self.title = scene.Label(title, color="white", font_size=9)
        self.title.height_max = 22
        grid.add_widget(self.title, row=0, col=0, col_span=2)
        self.y_axis = scene.AxisWidget(orientation="left", axis_label=y_label, axis_font_size=8,
                                       tick_label_margin=4, axis_label_margin=34,
                                       text_color="white", axis_color="white", tick_color="white")
        self.y_axis.width_max = 52
        grid.add_widget(self.y_axis, row=1, col=0)
        self.x_axis = scene.AxisWidget(orientation="bottom", axis_label=x_label, axis_font_size=8,
                                       tick_label_margin=12, axis_label_margin=28,
                                       text_color="white", axis_color="white", tick_color="white")
        self.x_axis.height_max = 44
        grid.add_widget(self.x_axis, row=2, col=1)
        self.view = grid.add_view(row=1, col=1, border_color=(0.6, 0.6, 0.6, 1.0))
        self.view.camera = "panzoom"
        self.x_axis.link_view(self.view)
        self.y_axis.link_view(self.view)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        native = self.canvas.native
        native.setMinimumHeight(200)
        native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(native, 1)
        lay.addWidget(self.legend)
        self.n_redraws = 0

    def set_x_label(self, text: str) -> None:
        """Change the x-axis label."""
        self.x_axis.axis.axis_label = text

    def set_range(self, x, y) -> None:
        """Show ``x = (x0, x1)``, ``y = (y0, y1)``."""
        self.view.camera.set_range(x=x, y=y, margin=0.02)

    def redraw(self) -> None:
        """Ask vispy to repaint at the next event-loop pass (like matplotlib's draw_idle)."""
        self.n_redraws += 1
        self.canvas.update()

    def grab_image(self) -> np.ndarray:
        """Render the canvas to an RGBA array (for screenshots)."""
        return self.canvas.render()


class FSCPlot(_VispyPlot):
    """FSC curves against the reference, one per scale, with the threshold line.

    The legend lists each scale's resolution (Å) at the threshold. Call :meth:`set_curve`
    whenever a new FSC for a scale arrives; the scale's line is updated in place.
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__("FSC vs reference", "spatial frequency (1/Å)", "FSC", parent)
        scene = self._scene
        self.threshold = 0.5
        self._threshold_line = scene.Line(np.array([[0, 0.5], [1, 0.5]], np.float32),
                                          color=(0.8, 0.8, 0.8, 0.8), width=1,
                                          parent=self.view.scene)
        self._zero_line = scene.Line(np.array([[0, 0.0], [1, 0.0]], np.float32),
                                     color=(0.5, 0.5, 0.5, 0.6), width=1, parent=self.view.scene)
        self.curves: dict[int, object] = {}
        self.resolutions: dict[int, float] = {}
        self._x_ends: dict[int, float] = {}
        self._x_max = 1.0
        self.set_range((0, 1), (-0.2, 1.05))
        self._update_legend()

    @property
    def n_curves(self) -> int:
        """Number of scales with a curve."""
        return len(self.curves)

    def set_curve(self, scale: int, freq, fsc, resolution_A: float | None,
                  threshold: float = 0.5, x_label: str | None = None) -> None:
        """Draw (or replace) 0-based ``scale``'s curve ``fsc(freq)``.

        ``freq`` is in the unit named by ``x_label`` (default 1/Å); NaN values are drawn as 0.
        """
        x = np.asarray(freq, dtype=np.float64)
        y = np.nan_to_num(np.asarray(fsc, dtype=np.float64), nan=0.0)
        n = min(x.size, y.size)
        pos = np.column_stack([x[:n], y[:n]]).astype(np.float32)
        color = scale_color(scale) + (1.0,)
        if scale in self.curves:
            self.curves[scale].set_data(pos=pos, color=color)
        else:
            self.curves[scale] = self._scene.Line(pos, color=color, width=2,
                                                   parent=self.view.scene, antialias=True)
        self.resolutions[scale] = float("nan") if resolution_A is None else float(resolution_A)
        if x_label:
            self.set_x_label(x_label)
        self.threshold = float(threshold)
        self._x_ends[scale] = float(np.nanmax(x[:n])) if n else 0.0
        self._x_max = max(self._x_ends.values()) or 1.0
        line = np.array([[0, self.threshold], [self._x_max, self.threshold]], np.float32)
        self._threshold_line.set_data(pos=line)
        self._zero_line.set_data(pos=np.array([[0, 0], [self._x_max, 0]], np.float32))
        self.set_range((0, self._x_max), (-0.2, 1.05))
        self._update_legend()
        self.redraw()

    def clear(self) -> None:
        """Remove every curve (new run)."""
        for line in self.curves.values():
            line.parent = None
        self.curves.clear()
        self.resolutions.clear()
        self._x_ends.clear()
        self._x_max = 1.0
        self._update_legend()
        self.redraw()

    def _update_legend(self) -> None:
        parts = [f"<span style='color:#cccccc'>— FSC = {self.threshold:g}</span>"]
        for k in sorted(self.curves):
            res = self.resolutions.get(k, float("nan"))
            res_txt = f"{res:.1f} Å" if math.isfinite(res) else ("—" if math.isnan(res) else "∞")
            parts.append(f"<span style='color:{_hex(scale_color(k))}'>■ scale {k + 1}: "
                         f"{res_txt}</span>")
        if not self.curves:
            parts.append("no FSC yet (needs a reference map)")
        self.legend.setText(" &nbsp; ".join(parts))


class PoseHistogram(_VispyPlot):
    """Histogram of pose errors in degrees over 0–180°, redrawn in place.

    Call :meth:`set_counts` with bin counts and edges (from the engine), or
    :meth:`set_errors` with per-image errors (binned here for display only).
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__("pose errors", "angular error (°)", "particles", parent)
        self.counts = np.zeros(0, dtype=np.int64)
        self.edges = np.linspace(0, 180, 37)
        self._mesh = self._scene.Mesh(parent=self.view.scene, color=(0.35, 0.65, 1.0, 0.9))
        self.set_range((0, 180), (0, 1))
        self.legend.setText("no pose errors yet")

    @property
    def total(self) -> int:
        """Number of particles in the histogram."""
        return int(self.counts.sum())

    def set_errors(self, errors_deg, n_bins: int = 36, summary: str = "") -> None:
        """Bin per-image errors (degrees) into ``n_bins`` over 0–180° and draw them."""
        e = np.clip(np.asarray(errors_deg, dtype=np.float64).ravel(), 0.0, 180.0)
        counts, edges = np.histogram(e, bins=n_bins, range=(0.0, 180.0))
        self.set_counts(counts, edges, summary)

    def set_counts(self, counts, edges, summary: str = "", color=None) -> None:
        """Draw bars of ``counts`` between consecutive ``edges`` (degrees)."""
        counts = np.asarray(counts, dtype=np.float64)
        edges = np.asarray(edges, dtype=np.float64)
        self.counts, self.edges = counts.astype(np.int64), edges
        n = counts.size
        x0, x1 = edges[:-1], edges[1:]
        gap = 0.08 * (x1 - x0)
        verts = np.zeros((n, 4, 3), np.float32)
        verts[:, 0, :2] = np.column_stack([x0 + gap, np.zeros(n)])
        verts[:, 1, :2] = np.column_stack([x1 - gap, np.zeros(n)])
        verts[:, 2, :2] = np.column_stack([x1 - gap, counts])
        verts[:, 3, :2] = np.column_stack([x0 + gap, counts])
        base = (np.arange(n) * 4)[:, None]
        faces = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]]).astype(np.uint32)
        kwargs = {"color": color + (0.9,)} if color is not None else {}
        if n:
            self._mesh.set_data(vertices=verts.reshape(-1, 3), faces=faces, **kwargs)
        self.set_range((0, 180), (0, max(1.0, float(counts.max()) * 1.08 if n else 1.0)))
        self.legend.setText(summary or f"{self.total} particles")
        self.redraw()


class ScaleMetricsTable(QTableWidget):
    """A small table: one row per scale ("scale k"), one column per metric."""

    def __init__(self, columns: list[str], parent: QWidget | None = None):
        super().__init__(0, len(columns), parent)
        self.setHorizontalHeaderLabels(columns)
        self.horizontalHeader().setStretchLastSection(True)
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.setMaximumHeight(150)

    def set_rows(self, n: int) -> None:
        """One row per scale, labelled 1-based."""
        self.setRowCount(n)
        self.setVerticalHeaderLabels([f"scale {k + 1}" for k in range(n)])

    def set_value(self, row: int, col: int, value, fmt: str = "{:.4g}") -> None:
        """Show ``value`` formatted in cell (row, col), growing the table when needed."""
        if row >= self.rowCount():
            self.set_rows(row + 1)
        try:
            text = fmt.format(float(value))
        except (TypeError, ValueError):
            text = "—" if value is None else str(value)
        self.setItem(row, col, QTableWidgetItem(text))

    def value_text(self, row: int, col: int) -> str:
        """Text of a cell ('' when empty)."""
        item = self.item(row, col)
        return "" if item is None else item.text()

    def clear_values(self) -> None:
        """Empty every cell (new run)."""
        self.clearContents()


__all__ = ["FSCPlot", "PoseHistogram", "ScaleMetricsTable", "scale_color"]
