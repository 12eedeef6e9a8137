"""Histogram of pose errors in degrees (0–180) for the reconstruct widget (GUI thread only).

Bars are a pyqtgraph ``BarGraphItem`` (frame and export: :mod:`.plot_base`), replaced on each
update; the numbers come from the engine's ``Metrics("pose_errors")`` (bin counts and edges) or, binned here for display only,
from per-image errors. Export: :meth:`PoseHistogram.save_png`, :meth:`PoseHistogram.save_csv`.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from qtpy.QtWidgets import QWidget

from .plot_base import PlotPanel, rgb255

#: Bar colour (RGBA in [0, 1]).
BAR_COLOR = (0.35, 0.65, 1.0, 0.9)


class PoseHistogram(PlotPanel):
    """Histogram of pose errors in degrees over 0–180°, redrawn in place.

    Call :meth:`set_counts` with bin counts and edges (from the engine), or
    :meth:`set_errors` with per-image errors (binned here for display only). ``bars`` is the
    ``pg.BarGraphItem`` (its ``opts``: x0, x1, height).
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__("pose errors", "angular error (°)", "particles", parent)
        self.counts = np.zeros(0, dtype=np.int64)
        self.edges = np.linspace(0, 180, 37)
        self.bars = pg.BarGraphItem(x0=[], x1=[], height=[], pen=pg.mkPen(None),
                                    brush=pg.mkBrush(rgb255(BAR_COLOR)))
        self.plot_item.addItem(self.bars)
        self.set_range((0, 180), (0, 1))
        self.set_legend("no pose errors yet")

    export_stem = "pose_errors"

    def csv_rows(self) -> list[list]:
        """Header ``bin start (deg), bin end (deg), particles``, then one row per bin."""
        rows: list[list] = [["bin start (deg)", "bin end (deg)", "particles"]]
        edges = np.asarray(self.edges, dtype=np.float64)
        for k, count in enumerate(np.asarray(self.counts).tolist()):
            rows.append([float(edges[k]), float(edges[k + 1]), int(count)])
        return rows

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
        opts = {"x0": x0 + gap, "x1": x1 - gap, "height": counts}
        if color is not None:
            opts["brush"] = pg.mkBrush(rgb255(tuple(color[:3]) + (0.9,)))
        self.bars.setOpts(**opts)
        self.set_range((0, 180), (0, max(1.0, float(counts.max()) * 1.08 if n else 1.0)))
        self.set_legend(summary or f"{self.total} particles")
        self.redraw()


__all__ = ["PoseHistogram"]
