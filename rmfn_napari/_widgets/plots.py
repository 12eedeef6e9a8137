"""Live plots and tables for the dock widgets (GUI thread only).

Plots are pyqtgraph plots (the shared frame, legend and PNG/CSV export: :mod:`.plot_base`): a
line plot of FSC curves — the gold-standard curves between half-maps (unmasked, sphere and auto
mask, threshold 0.143) and the curves against a reference, one per scale (threshold 0.5),
together, with the band the halves shared shaded — and a bar histogram of pose errors in
degrees (0–180, :mod:`.pose_plot`). Each update only swaps the arrays of existing items
(pyqtgraph repaints with QPainter: a few ms, with or without a GPU). The legend (colours,
thresholds and resolutions in Å, or "not resolved", the stage's band progress) is a Qt label
under the plot.

Nothing here computes a metric: curves, resolutions, bands and errors come from ``Metrics``
events (or a run's ``metrics.json``).
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem, QWidget

from .plot_base import NB_HYPHEN, PlotPanel, hex_color, rgb255
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


#: The band the halves shared (a crossing inside it is not a resolution): shading and edge.
SHARED_BAND_COLOR = (0.85, 0.85, 0.55)
#: The stage's band (its network's finest frequency): a dotted line in the headline's colour.
STAGE_BAND_COLOR = (1.00, 0.40, 0.40)


def shared_band_text(shared_A: float) -> str:
    """The shared band's label: ``"halves shared up to 13.2 Å"``."""
    return f"halves shared up to {shared_A:.1f} Å"


def _drawable(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether two consecutive points are finite (a segment can be drawn)."""
    ok = np.isfinite(x) & np.isfinite(y)
    return bool(np.any(ok[:-1] & ok[1:])) if ok.size > 1 else False


#: Where a line's label sits against its point: above and right of it (horizontal lines, at
#: the left end, where the FSC is still near 1), right or left of it (vertical lines, by the
#: side with room).
ABOVE_RIGHT, RIGHT_OF, LEFT_OF = [(0, 1), (0, 1)], [(0, 0), (0, 0)], [(1, 0), (1, 0)]


def _line(angle: int, rgba, width: float = 1.0, style=Qt.PenStyle.SolidLine,
          label: str | None = None, position: float = 0.95) -> pg.InfiniteLine:
    """A fixed horizontal (angle 0) or vertical (90) line, hidden until placed."""
    pen = pg.mkPen(rgb255(rgba), width=width, style=style)
    line = pg.InfiniteLine(angle=angle, pen=pen, movable=False, label=label,
                           labelOpts=None if label is None else
                           {"position": position, "color": rgb255(rgba[:3]),
                            "anchors": ABOVE_RIGHT if angle == 0 else RIGHT_OF})
    line.setVisible(False)
    return line


class FSCPlot(PlotPanel):
    """FSC curves: the gold-standard curves between half-maps (threshold 0.143) and the
    curves against a reference, one per scale (threshold 0.5), on one plot.

    Call :meth:`set_gold_standard` when a stage's half-map FSC arrives (unmasked, soft sphere
    and automatic mask; the three lines are updated in place; with the engine's values, the
    band the halves shared is shaded and the stage's band marked) and :meth:`set_curve`
    whenever a scale's FSC against the reference arrives. Each kind's threshold line is drawn
    only while that kind has a curve (dashed 0.143 for half-maps, solid 0.5 for the
    reference). The legend under the plot gives both thresholds and each curve's resolution in
    Å, or "not resolved" (None/NaN: below the threshold from the first shell on, or inside the
    shared band), and the stage's band progress. :meth:`clear` removes everything.

    Attributes useful to tests: ``curves`` / ``resolutions`` (reference curves by 0-based
    scale: ``pg.PlotDataItem``), ``gold_curves`` / ``gold_resolutions`` (by label
    ``"gold-standard auto"`` ...), ``threshold`` (reference, 0.5), ``gold_threshold`` (0.143),
    ``gold_headline`` (label), ``shared_band_line`` / ``shared_band_region`` / ``band_line``
    (``pg.InfiniteLine`` / ``pg.LinearRegionItem``), ``band_note``.
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__("FSC", "spatial frequency (1/Å)", "FSC", parent)
        self.threshold = 0.5
        self.gold_threshold = 0.143
        item = self.plot_item
        self._zero_line = _line(0, (0.5, 0.5, 0.5, 0.6))
        self._zero_line.setVisible(True)
        self._threshold_line = _line(0, REFERENCE_THRESHOLD_COLOR, label="", position=0.01)
        self._gold_threshold_line = _line(0, GOLD_THRESHOLD_COLOR, style=Qt.PenStyle.DashLine,
                                          label="", position=0.01)
        self.shared_band_region = pg.LinearRegionItem(
            (0.0, 0.0), movable=False, brush=pg.mkBrush(rgb255(SHARED_BAND_COLOR + (0.16,))),
            pen=pg.mkPen(None))
        self.shared_band_region.setVisible(False)
        self.shared_band_line = _line(90, SHARED_BAND_COLOR + (0.9,), style=Qt.PenStyle.DashDotLine,
                                      label="", position=0.12)
        self.band_line = _line(90, STAGE_BAND_COLOR + (0.8,), style=Qt.PenStyle.DotLine,
                               label="", position=0.85)
        for it in (self.shared_band_region, self._zero_line, self._threshold_line,
                   self._gold_threshold_line, self.shared_band_line, self.band_line):
            item.addItem(it, ignoreBounds=True)
        self.curves: dict[int, pg.PlotDataItem] = {}
        self.resolutions: dict[int, float] = {}
        self.gold_curves: dict[str, pg.PlotDataItem] = {}
        self.gold_resolutions: dict[str, float] = {}
        self.gold_headline: str | None = None
        #: Whether the run compares against a reference map (the legend then says when its
        #: curves come; it never asks for a reference, :meth:`set_reference_expected`).
        self.reference_expected = False
        #: The engine's band values of the last gold standard (Å; None: none shown).
        self.shared_band_A: float | None = None
        self.band_A: float | None = None
        self.band_note: str | None = None
        self._band_stage: int | None = None
        self._length_A: float | None = None  # box x voxel size: Å -> cycles/box
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
        return self._gold_threshold_line.isVisible()

    @property
    def has_reference_threshold_line(self) -> bool:
        """Whether the 0.5 line is drawn."""
        return self._threshold_line.isVisible()

    @property
    def shared_band_label(self) -> str:
        """The text beside the shared band's edge ('' when none is drawn)."""
        return self.shared_band_line.label.toPlainText() if self.shared_band_line.isVisible() else ""

    def _draw(self, store: dict, key, name: str, freq, fsc, color, width: int) -> None:
        x, y = self._points[key] = _points(freq, fsc)
        line = store.get(key)
        if line is None:
            line = store[key] = pg.PlotDataItem(connect="finite", antialias=True, name=name)
            self.plot_item.addItem(line)
        line.setData(x, y)
        line.setPen(pg.mkPen(rgb255(color[:3]), width=width))
        visible = _drawable(x, y)
        line.setVisible(visible)
        ok = np.isfinite(x) & np.isfinite(y)
        self._x_ends[key] = float(np.max(x[ok])) if visible else 0.0

    def _remove(self, store: dict, key) -> None:
        line = store.pop(key, None)
        if line is not None:
            self.plot_item.removeItem(line)
        self._x_ends.pop(key, None)
        self._points.pop(key, None)

    def set_curve(self, scale: int, freq, fsc, resolution_A: float | None,
                  threshold: float = 0.5, x_label: str | None = None) -> None:
        """Draw (or replace) 0-based ``scale``'s curve ``fsc(freq)`` against the reference.

        ``freq`` is in the unit named by ``x_label`` (default 1/Å); None/NaN values break the
        line. ``resolution_A`` None or NaN reads "not resolved".
        """
        scale = int(scale)
        self._draw(self.curves, scale, f"scale {scale + 1} vs reference", freq, fsc,
                   scale_color(scale), 2)
        self.resolutions[scale] = float("nan") if resolution_A is None else float(resolution_A)
        self.threshold = float(threshold)
        self._after_update(x_label)

    def set_gold_standard(self, freq, curves: dict, resolutions: dict,
                          threshold: float = 0.143, x_label: str | None = None,
                          headline: str | None = "auto", bands: dict | None = None,
                          stage: int | None = None) -> None:
        """Draw (or replace) the gold-standard curves between the half-maps.

        ``curves`` and ``resolutions`` map a mask (``"unmasked"``, ``"sphere"``, ``"auto"``,
        or the labels ``"gold-standard unmasked"`` ...) to an FSC list over ``freq`` (None/NaN
        allowed) and to a resolution in Å (None/NaN: "not resolved"). ``headline`` names the
        curve the legend puts first and in bold (the engine's headline, the auto mask).
        Masks missing from ``curves`` are removed from the plot.

        ``bands``: the engine's gold-standard values (``Metrics("gold_standard")`` or
        ``metrics.json``'s ``gold_standard``); of them ``shared_band_A`` (Å: the band the
        halves shared, shaded from 0 to its edge and labelled "halves shared up to 13.2 Å"),
        ``band_A`` (Å: the stage's band, a dotted line), ``band_note`` ("resolved 16.5 Å of
        its 15.8 Å band", in the legend with 0-based ``stage``) and ``box`` × ``apix`` (Å, to
        place them on a cycles/box axis) are used. None or missing: nothing drawn for them.
        """
        wanted = {}
        for key, fsc in curves.items():
            mask = str(key).removeprefix("gold-standard ").strip()
            label, color = GOLD_STANDARD_CURVES.get(mask, (f"gold-standard {mask}",
                                                           (0.95, 0.95, 0.95)))
            res = resolutions.get(key, resolutions.get(mask, resolutions.get(label)))
            wanted[label] = (fsc, color, res)
        for label in [k for k in self.gold_curves if k not in wanted]:
            self._remove(self.gold_curves, label)
            self.gold_resolutions.pop(label, None)
        head = None if headline is None else GOLD_STANDARD_CURVES.get(
            str(headline), (f"gold-standard {headline}", None))[0]
        for label, (fsc, color, res) in wanted.items():
            self._draw(self.gold_curves, label, label, freq, fsc, color, 3 if label == head else 2)
            try:
                self.gold_resolutions[label] = float("nan") if res is None else float(res)
            except (TypeError, ValueError):
                self.gold_resolutions[label] = float("nan")
        self.gold_headline = head if head in self.gold_curves else None
        self.gold_threshold = float(threshold)
        self._set_bands(bands or {}, stage)
        self._after_update(x_label)

    def _set_bands(self, values: dict, stage: int | None) -> None:
        def angstrom(key):
            try:
                v = float(values.get(key))
            except (TypeError, ValueError):
                return None
            return v if math.isfinite(v) and v > 0 else None

        self.shared_band_A, self.band_A = angstrom("shared_band_A"), angstrom("band_A")
        note = values.get("band_note")
        self.band_note = str(note) if note else None
        self._band_stage = None if stage is None else int(stage)
        box, apix = angstrom("box"), angstrom("apix")
        self._length_A = box * apix if box and apix else None

    def x_of_resolution(self, res_A: float | None) -> float | None:
        """Where ``res_A`` (Å) lies on the x axis: 1/res in 1/Å, box·apix/res in cycles/box
        (None when the box and voxel size are unknown there, or without a resolution)."""
        if res_A is None:
            return None
        if self.frequency_unit() == "1/Å":
            return 1.0 / res_A
        return None if self._length_A is None else self._length_A / res_A

    def clear(self) -> None:
        """Remove every curve, gold-standard and reference, and the bands (new run); the
        user's zoom is forgotten."""
        for key in list(self.curves):
            self._remove(self.curves, key)
        for key in list(self.gold_curves):
            self._remove(self.gold_curves, key)
        self.resolutions.clear()
        self.gold_resolutions.clear()
        self.gold_headline = None
        self._set_bands({}, None)
        self._x_max = 1.0
        self.reset_view()
        self.set_range((0, 1), (-0.2, 1.05))
        self._update_lines()
        self._update_legend()
        self.redraw()

    def set_nyquist(self, voxel_size_A: float) -> None:
        """Before any curve arrives: the x axis spans 0 to the data's Nyquist frequency,
        1 / (2 × voxel size) 1/Å, instead of 0 to 1 1/Å (four times past the data at 2 Å/px).
        Curves set afterwards take the range over as before."""
        if self.curves or self.gold_curves or not (voxel_size_A and voxel_size_A > 0):
            return
        self._x_max = 0.5 / float(voxel_size_A)
        self.set_range((0, self._x_max), (-0.2, 1.05))

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
        # each line shown before its label is set (a hidden label ignores its text)
        for line, value, shown in ((self._threshold_line, self.threshold, bool(self.curves)),
                                   (self._gold_threshold_line, self.gold_threshold,
                                    bool(self.gold_curves))):
            line.setVisible(shown)
            line.setValue(value)
            line.label.setFormat(f"{value:g}")
        shared_x = self.x_of_resolution(self.shared_band_A) if self.gold_curves else None
        self.shared_band_region.setVisible(shared_x is not None)
        self.shared_band_line.setVisible(shared_x is not None)
        if shared_x is not None:
            self.shared_band_region.setRegion((0.0, shared_x))
            self.shared_band_line.setValue(shared_x)
            self._label_side(self.shared_band_line, shared_x, shared_band_text(self.shared_band_A))
        band_x = self.x_of_resolution(self.band_A) if self.gold_curves else None
        self.band_line.setVisible(band_x is not None)
        if band_x is not None:
            self.band_line.setValue(band_x)
            self._label_side(self.band_line, band_x, f"band {self.band_A:.1f} Å")
        if self.gold_curves and self.curves:
            title = "FSC: half-maps (gold standard) and vs reference"
        elif self.gold_curves:
            title = "gold-standard FSC (half-maps)"
        elif self.curves:
            title = "FSC vs reference"
        else:
            title = "FSC"
        self.set_title(title)

    def _label_side(self, line: pg.InfiniteLine, x: float, text: str) -> None:
        """Label a vertical line on the side with room: right of it in the left 60 % of the
        x range, else left of it."""
        line.label.anchors = RIGHT_OF if x <= 0.6 * self._x_max else LEFT_OF
        line.label.setFormat(text)
        line.label.valueChanged()

    def _band_entries(self) -> list[str]:
        """The legend's band rows (plain text): the shared band, the stage's progress."""
        if not self.gold_curves:
            return []
        entries = []
        if self.shared_band_A is not None:
            entries.append(f"▒ {shared_band_text(self.shared_band_A)}: "
                           "a crossing there is not a resolution")
        if self.band_note:
            stage = "" if self._band_stage is None else f"stage {self._band_stage + 1} "
            entries.append(f"┆ {stage}{self.band_note}")
        return entries

    def legend_entries(self) -> list[str]:
        """The legend as plain text: per kind, its threshold line, then each curve with its
        resolution (half-map curves first, the headline mask first among them), then the
        bands."""
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
        entries += self._band_entries()
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

        def span(text: str, rgb, bold: bool = False, wrap: bool = False) -> str:
            weight = "font-weight:bold;" if bold else ""
            if not wrap:  # an entry never breaks inside
                text = text.replace(" ", "&nbsp;").replace("-", NB_HYPHEN)
            return f"<span style='color:{hex_color(rgb)};{weight}'>{text}</span>"

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
        bands = self._band_entries()
        if bands:
            band_colors = [SHARED_BAND_COLOR] * (self.shared_band_A is not None) + [STAGE_BAND_COLOR]
            rows += [span(text, rgb, wrap=True)  # sentences, one row each: they wrap
                     for text, rgb in zip(bands, band_colors)]
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
           "resolution_text", "scale_color", "shared_band_text"]
