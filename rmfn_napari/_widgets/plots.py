"""Live plots and tables for the dock widgets (GUI thread only).

Plots are drawn with QPainter (:mod:`.plot_canvas`; the shared frame and PNG/CSV export:
:mod:`.plot_base`): a line plot of FSC
curves — the gold-standard curves between half-maps (unmasked, sphere and auto mask,
threshold 0.143) and the curves against a reference, one per scale (threshold 0.5),
together — and a bar histogram of pose errors in degrees (0–180, :mod:`.pose_plot`).
Each update only swaps the arrays of existing lines and asks Qt for a repaint (a few ms, with
or without a GPU). The legend (colours, thresholds and resolutions in
Å, or "not resolved") is a Qt label under the canvas.

Nothing here computes a metric: curves, resolutions and errors come from ``Metrics`` events.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem, QWidget

from .plot_base import NB_HYPHEN, PlotWidget, hex_color
from .plot_canvas import Series
from .pose_plot import PoseHistogram  # noqa: F401 - re-exported: the plots live here for users

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


#: Gold-standard (half-map) curves: mask key -> (legend label, colour). Distinct from the
#: scale colours, so a half-map curve is never mistaken for a reference curve.
GOLD_STANDARD_CURVES = {
    "unmasked": ("gold-standard unmasked", (0.80, 0.80, 0.80)),  # light grey
    "sphere": ("gold-standard sphere", (0.30, 0.90, 0.90)),  # cyan
    "auto": ("gold-standard auto", (1.00, 0.40, 0.40)),  # red
}
#: Threshold lines: 0.143 between half-maps (dashed), 0.5 against a reference (solid).
GOLD_THRESHOLD_COLOR = (1.00, 0.60, 0.60, 0.85)
REFERENCE_THRESHOLD_COLOR = (0.80, 0.80, 0.80, 0.80)
NOT_RESOLVED = "not resolved"
#: The legend before any FSC arrives, when no reference map was chosen.
EMPTY_LEGEND = "no FSC yet: the half-map FSC comes at the end of each stage"
#: The legend before any FSC arrives, with a reference map.
EMPTY_LEGEND_WITH_REFERENCE = ("no FSC yet: the half-map FSC and each scale's FSC against the "
                               "reference come at the end of each stage")
#: A legend row while half-map curves are shown and the reference's have not come yet.
REFERENCE_PENDING = "vs reference: at the end of the stage"


def resolution_text(res_A) -> str:
    """A resolution for people: ``"7.9 Å"``, or ``"not resolved"`` for None/NaN (the FSC is
    below its threshold from the first shell on, DESIGN §2)."""
    try:
        res = float(res_A)
    except (TypeError, ValueError):
        return NOT_RESOLVED
    if math.isnan(res):
        return NOT_RESOLVED
    return f"{res:.1f} Å" if math.isfinite(res) else "∞"


def _points(freq, fsc) -> tuple[np.ndarray, np.ndarray]:
    """A curve's points as float arrays of one length (None -> NaN), for export."""
    x = np.asarray(freq, dtype=np.float64).ravel()
    y = np.asarray([np.nan if v is None else v for v in np.asarray(fsc, dtype=object).ravel()],
                   dtype=np.float64)
    n = min(x.size, y.size)
    return x[:n], y[:n]


class FSCPlot(PlotWidget):
    """FSC curves: the gold-standard curves between half-maps (threshold 0.143) and the
    curves against a reference, one per scale (threshold 0.5), on one plot.

    Call :meth:`set_gold_standard` when a stage's half-map FSC arrives (unmasked, soft sphere
    and automatic mask; the three lines are updated in place) and :meth:`set_curve` whenever a
    scale's FSC against the reference arrives. Each kind's threshold line is drawn only while
    that kind has a curve (dashed 0.143 for half-maps, solid 0.5 for the reference). The legend
    under the canvas gives both thresholds and each curve's resolution in Å, or "not resolved"
    (None/NaN: below the threshold from the first shell on). :meth:`clear` removes both kinds.

    Attributes useful to tests: ``curves`` / ``resolutions`` (reference curves by 0-based
    scale), ``gold_curves`` / ``gold_resolutions`` (by label ``"gold-standard auto"`` ...),
    ``threshold`` (reference, 0.5), ``gold_threshold`` (0.143), ``gold_headline`` (label).
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__("FSC", "spatial frequency (1/Å)", "FSC", parent)
        self.threshold = 0.5
        self.gold_threshold = 0.143
        canvas = self.canvas
        self._zero_line = canvas.add_series("zero", Series(color=(0.5, 0.5, 0.5, 0.6)))
        self._threshold_line = canvas.add_series(
            "threshold", Series(color=REFERENCE_THRESHOLD_COLOR))
        self._gold_threshold_line = canvas.add_series(
            "gold threshold", Series(color=GOLD_THRESHOLD_COLOR, dashed=True))
        self.curves: dict[int, Series] = {}
        self.resolutions: dict[int, float] = {}
        self.gold_curves: dict[str, Series] = {}
        self.gold_resolutions: dict[str, float] = {}
        self.gold_headline: str | None = None
        #: Whether the run compares against a reference map (the legend then says when its
        #: curves come; it never asks for a reference, :meth:`set_reference_expected`).
        self.reference_expected = False
        self._x_ends: dict[object, float] = {}
        self._points: dict[object, tuple[np.ndarray, np.ndarray]] = {}
        self._x_max = 1.0
        self.set_range((0, 1), (-0.2, 1.05))
        self._update_lines()
        self._update_legend()

    @property
    def n_curves(self) -> int:
        """Number of scales with a curve against the reference."""
        return len(self.curves)

    @property
    def n_gold_curves(self) -> int:
        """Number of gold-standard (half-map) curves shown."""
        return len(self.gold_curves)

    @property
    def has_gold_threshold_line(self) -> bool:
        """Whether the 0.143 line is drawn."""
        return bool(self._gold_threshold_line.visible)

    @property
    def has_reference_threshold_line(self) -> bool:
        """Whether the 0.5 line is drawn."""
        return bool(self._threshold_line.visible)

    def _draw(self, store: dict, key, freq, fsc, color, width: int) -> None:
        x, y = self._points[key] = _points(freq, fsc)
        line = store.get(key)
        if line is None:
            line = store[key] = self.canvas.add_series(("curve", key), Series())
        line.set_data(x, y)
        line.color, line.width = tuple(color[:3]) + (1.0,), width
        line.visible = line.drawable
        ok = np.isfinite(x) & np.isfinite(y)
        self._x_ends[key] = float(np.max(x[ok])) if line.visible else 0.0

    def set_curve(self, scale: int, freq, fsc, resolution_A: float | None,
                  threshold: float = 0.5, x_label: str | None = None) -> None:
        """Draw (or replace) 0-based ``scale``'s curve ``fsc(freq)`` against the reference.

        ``freq`` is in the unit named by ``x_label`` (default 1/Å); None/NaN values break the
        line. ``resolution_A`` None or NaN reads "not resolved".
        """
        self._draw(self.curves, int(scale), freq, fsc, scale_color(int(scale)), 2)
        self.resolutions[int(scale)] = (float("nan") if resolution_A is None
                                        else float(resolution_A))
        self.threshold = float(threshold)
        self._after_update(x_label)

    def set_gold_standard(self, freq, curves: dict, resolutions: dict,
                          threshold: float = 0.143, x_label: str | None = None,
                          headline: str | None = "auto") -> None:
        """Draw (or replace) the gold-standard curves between the half-maps.

        ``curves`` and ``resolutions`` map a mask (``"unmasked"``, ``"sphere"``, ``"auto"``,
        or the labels ``"gold-standard unmasked"`` ...) to an FSC list over ``freq`` (None/NaN
        allowed) and to a resolution in Å (None/NaN: "not resolved"). ``headline`` names the
        curve the legend puts first and in bold (the engine's headline, the auto mask).
        Masks missing from ``curves`` are removed from the plot.
        """
        wanted = {}
        for key, fsc in curves.items():
            mask = str(key).removeprefix("gold-standard ").strip()
            label, color = GOLD_STANDARD_CURVES.get(mask, (f"gold-standard {mask}",
                                                           (0.95, 0.95, 0.95)))
            res = resolutions.get(key, resolutions.get(mask, resolutions.get(label)))
            wanted[label] = (fsc, color, res, mask)
        for label in [k for k in self.gold_curves if k not in wanted]:
            self.gold_curves.pop(label)
            self.canvas.remove_series(("curve", label))
            self.gold_resolutions.pop(label, None)
            self._x_ends.pop(label, None)
            self._points.pop(label, None)
        head = None if headline is None else GOLD_STANDARD_CURVES.get(
            str(headline), (f"gold-standard {headline}", None))[0]
        for label, (fsc, color, res, _mask) in wanted.items():
            self._draw(self.gold_curves, label, freq, fsc, color, 3 if label == head else 2)
            try:
                self.gold_resolutions[label] = float("nan") if res is None else float(res)
            except (TypeError, ValueError):
                self.gold_resolutions[label] = float("nan")
        self.gold_headline = head if head in self.gold_curves else None
        self.gold_threshold = float(threshold)
        self._after_update(x_label)

    def clear(self) -> None:
        """Remove every curve, gold-standard and reference (new run)."""
        for key in list(self.curves) + list(self.gold_curves):
            self.canvas.remove_series(("curve", key))
        self.curves.clear()
        self.resolutions.clear()
        self.gold_curves.clear()
        self.gold_resolutions.clear()
        self.gold_headline = None
        self._x_ends.clear()
        self._points.clear()
        self._x_max = 1.0
        self._update_lines()
        self._update_legend()
        self.redraw()

    def set_reference_expected(self, expected: bool) -> None:
        """Say whether this run has a reference map (set at Start): the legend then tells
        when the curves against it come, and says nothing about a reference otherwise."""
        self.reference_expected = bool(expected)
        self._update_legend()

    # ---- export -------------------------------------------------------------------
    export_stem = "fsc"

    def curve_columns(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every curve shown, by its CSV column name (``"gold-standard auto"`` ...,
        ``"scale 1 vs reference"`` ...): (frequencies in the x-axis unit, FSC; NaN where the
        engine gave none)."""
        columns = {label: self._points[label] for label in self._gold_order()}
        for k in sorted(self.curves):
            columns[f"scale {k + 1} vs reference"] = self._points[k]
        return columns

    def frequency_unit(self) -> str:
        """The unit of the x axis: ``"1/Å"`` or ``"cycles/box"``."""
        label = self.x_label
        return label[label.rfind("(") + 1:label.rfind(")")] if "(" in label else label

    def csv_rows(self) -> list[list]:
        """Header ``frequency (<unit>), <curve>, ...``, then one row per frequency (the union
        of the curves' frequencies, ascending); a curve without that frequency (or with
        None/NaN there) leaves its cell empty."""
        columns = self.curve_columns()
        freqs = sorted({float(f) for x, _y in columns.values() for f in x})
        rows: list[list] = [[f"frequency ({self.frequency_unit()})", *columns]]
        lookup = [dict(zip(map(float, x), map(float, y))) for x, y in columns.values()]
        for f in freqs:
            values = [table.get(f) for table in lookup]
            rows.append([f, *[None if v is None or math.isnan(v) else v for v in values]])
        return rows

    # ---- internals ----------------------------------------------------------------
    def _after_update(self, x_label: str | None) -> None:
        if x_label:
            self.set_x_label(x_label)
        self._x_max = max(self._x_ends.values(), default=0.0) or 1.0
        self._update_lines()
        self.set_range((0, self._x_max), (-0.2, 1.05))
        self._update_legend()
        self.redraw()

    def _update_lines(self) -> None:
        x1 = self._x_max
        self._threshold_line.set_data([0, x1], [self.threshold] * 2)
        self._gold_threshold_line.set_data([0, x1], [self.gold_threshold] * 2)
        self._zero_line.set_data([0, x1], [0, 0])
        self._threshold_line.visible = bool(self.curves)
        self._gold_threshold_line.visible = bool(self.gold_curves)
        if self.gold_curves and self.curves:
            title = "FSC: half-maps (gold standard) and vs reference"
        elif self.gold_curves:
            title = "gold-standard FSC (half-maps)"
        elif self.curves:
            title = "FSC vs reference"
        else:
            title = "FSC"
        self.set_title(title)

    def legend_entries(self) -> list[str]:
        """The legend as plain text: per kind, its threshold line, then each curve with its
        resolution (half-map curves first, the headline mask first among them)."""
        entries = []
        if self.gold_curves:
            entries.append(f"┄ FSC = {self.gold_threshold:g} (half-maps)")
            for label in self._gold_order():
                entries.append(f"■ {label}: {resolution_text(self.gold_resolutions.get(label))}")
        if self.curves:
            entries.append(f"— FSC = {self.threshold:g} (vs reference)")
            for k in sorted(self.curves):
                entries.append(f"■ scale {k + 1}: {resolution_text(self.resolutions.get(k))}")
        elif entries and self.reference_expected:
            entries.append(REFERENCE_PENDING)
        if not entries:
            entries.append(self._empty_legend())
        return entries

    def _empty_legend(self) -> str:
        return EMPTY_LEGEND_WITH_REFERENCE if self.reference_expected else EMPTY_LEGEND

    def _gold_order(self) -> list[str]:
        order = [lab for lab, _c in GOLD_STANDARD_CURVES.values() if lab in self.gold_curves]
        order += [k for k in self.gold_curves if k not in order]
        if self.gold_headline in order:
            order.remove(self.gold_headline)
            order.insert(0, self.gold_headline)
        return order

    def _update_legend(self) -> None:
        colors = {lab: c for lab, c in GOLD_STANDARD_CURVES.values()}

        def span(text: str, rgb, bold: bool = False) -> str:
            weight = "font-weight:bold;" if bold else ""
            return (f"<span style='color:{hex_color(rgb)};white-space:nowrap;{weight}'>"
                    f"{text.replace(' ', '&nbsp;').replace('-', NB_HYPHEN)}</span>")

        rows = []
        if self.gold_curves:
            parts = [span(f"┄ FSC = {self.gold_threshold:g} (half-maps)", GOLD_THRESHOLD_COLOR)]
            for label in self._gold_order():
                parts.append(span(f"■ {label}: "
                                  f"{resolution_text(self.gold_resolutions.get(label))}",
                                  colors.get(label, (1, 1, 1)), bold=label == self.gold_headline))
            rows.append(" &nbsp; ".join(parts))
        if self.curves:
            parts = [span(f"— FSC = {self.threshold:g} (vs reference)",
                          REFERENCE_THRESHOLD_COLOR)]
            for k in sorted(self.curves):
                parts.append(span(f"■ scale {k + 1}: "
                                  f"{resolution_text(self.resolutions.get(k))}", scale_color(k)))
            rows.append(" &nbsp; ".join(parts))
        elif rows and self.reference_expected:
            rows.append(span(REFERENCE_PENDING, REFERENCE_THRESHOLD_COLOR))
        if not rows:
            rows.append(self._empty_legend())
        self.set_legend("<br>".join(rows))


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


__all__ = ["EMPTY_LEGEND", "EMPTY_LEGEND_WITH_REFERENCE", "FSCPlot", "GOLD_STANDARD_CURVES",
           "NOT_RESOLVED", "PoseHistogram", "REFERENCE_PENDING", "ScaleMetricsTable",
           "resolution_text", "scale_color"]
