"""Fit-image dock widget: 2D coarse-to-fine fitting (paper §5) of any 2D image layer.

Drives :func:`rmfn_napari.fitting.image_fitting.fit_image`; streams each scale's image and
spectrum into ``"rMFN scale k"`` / ``"rMFN spectrum k"`` layers and shows the PSNR after each
stage and the spectrum drift per scale (Table 1's metric) in a small table.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import (
    QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QLineEdit, QSpinBox, QWidget,
)

from ..engine.devices import available_devices
from ..engine.events import Metrics, RunStarted
from ..errors import InputError
from ..fitting.image_fitting import PAPER_SCHEDULE, FitImageConfig, fit_image
from ..model import METHODS
from .layers import REFERENCE_NAME
from ._base import RunWidgetBase
from .plots import ScaleMetricsTable

OWN_LAYER_PREFIXES = ("rMFN scale ", "rMFN spectrum ")


def parse_schedule(text: str, factor: float = 1.0) -> tuple[int, ...]:
    """``"500,500,1000,8000"`` × ``factor`` -> steps per stage (each at least 1).

    Raises :class:`~rmfn_napari.errors.InputError` naming the field when the text is not a
    comma-separated list of positive numbers.
    """
    try:
        values = [float(t) for t in text.replace(";", ",").split(",") if t.strip()]
    except ValueError:
        raise InputError(f"schedule: expected comma-separated step counts, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise InputError(f"schedule: need one positive step count per stage, got {text!r}")
    if not factor > 0:
        raise InputError(f"schedule scale factor must be > 0, got {factor}")
    return tuple(max(1, int(round(v * factor))) for v in values)


def is_2d_image_layer(layer) -> bool:
    """True for image layers holding one 2D image (grey, or RGB/RGBA)."""
    if type(layer).__name__ != "Image" or layer.name.startswith(OWN_LAYER_PREFIXES):
        return False
    if layer.name == REFERENCE_NAME:
        return False
    ndim = layer.ndim  # spatial dims (RGB channel axis excluded)
    return ndim == 2


class FitImageWidget(RunWidgetBase):
    """Dock widget: fit a 2D image layer coarse to fine with rMFN / Res-BACON / BACON.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (npe2 passes it as the first argument).

    Form: image layer (2D grey or RGB), method, schedule (steps per stage, times a scale
    factor), hidden width, learning rate, training downsampling, device, seed; then the run
    controls, the scale stepper and the metrics table.
    """

    task = "fit-image"
    spatial_ndim = 2

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("2D image layer to fit (grey or RGB)")
        self.method = QComboBox()
        self.method.addItems(list(METHODS))
        self.method.setToolTip("rmfn: residual MFN (proposed init); res-bacon: residual with "
                               "BACON init; bacon: BACON baseline")
        self.schedule = QLineEdit(",".join(str(s) for s in PAPER_SCHEDULE))
        self.schedule.setToolTip("Steps of each stage; the number of stages is the number of scales")
        self.schedule_factor = QDoubleSpinBox()
        self.schedule_factor.setDecimals(2)
        self.schedule_factor.setMinimumWidth(80)
        self.schedule_factor.setRange(0.001, 100.0)
        self.schedule_factor.setValue(1.0)
        self.schedule_factor.setPrefix("× ")
        self.schedule_factor.setToolTip("Multiply every stage's steps (e.g. 0.1 for a quick look)")
        sched_row = QWidget()
        row = QHBoxLayout(sched_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.schedule, 3)
        row.addWidget(self.schedule_factor, 1)
        self.hidden = QSpinBox()
        self.hidden.setRange(4, 4096)
        self.hidden.setValue(256)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(1e-3)
        self.lr.setValue(5e-3)
        self.downsample = QSpinBox()
        self.downsample.setRange(1, 16)
        self.downsample.setValue(2)
        self.downsample.setToolTip("Train on the image block-averaged by this factor; PSNR is "
                                   "measured on the original (the paper: 2)")
        self.device = QComboBox()
        self.device.addItems(available_devices())
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setSpecialValueText("0")

        self.form.addRow("image", self.layer_combo)
        self.form.addRow("method", self.method)
        self.form.addRow("schedule", sched_row)
        self.form.addRow("hidden", self.hidden)
        self.form.addRow("learning rate", self.lr)
        self.form.addRow("downsample", self.downsample)
        self.form.addRow("device", self.device)
        self.form.addRow("seed", self.seed)
        self.form.addRow("output folder", self.out_dir)

        self.table = ScaleMetricsTable(["PSNR (dB)", "spectrum drift"])
        self.table.setToolTip("PSNR of the full output on the original grid after each stage; "
                              "spectrum drift of each scale from its stage end to the run end "
                              "(Table 1: mean abs. difference of amplitude spectra)")
        self.extra.addWidget(QLabel("Per scale"))
        self.extra.addWidget(self.table)

        events = napari_viewer.layers.events
        events.inserted.connect(self._refresh_layers)
        events.removed.connect(self._refresh_layers)
        events.reordered.connect(self._refresh_layers)
        self._refresh_layers()

    # ---- form -------------------------------------------------------------------------
    def form_widgets(self):
        """Inputs locked during a run."""
        return [self.layer_combo, self.method, self.schedule, self.schedule_factor, self.hidden,
                self.lr, self.downsample, self.device, self.seed]

    def _refresh_layers(self, *_args) -> None:
        current = self.layer_combo.currentText()
        names = [layer.name for layer in self.viewer.layers if is_2d_image_layer(layer)]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)

    def config(self) -> FitImageConfig:
        """The :class:`FitImageConfig` the form describes (raises InputError when invalid)."""
        cfg = FitImageConfig(
            method=self.method.currentText(),
            schedule=parse_schedule(self.schedule.text(), self.schedule_factor.value()),
            hidden=int(self.hidden.value()),
            lr=float(self.lr.value()),
            downsample=int(self.downsample.value()),
            device=self.device.currentText(),
            seed=int(self.seed.value()),
            snapshot_interval_s=0.5,
        )
        cfg.validate()
        return cfg

    def image(self) -> np.ndarray:
        """A copy of the chosen layer's image (taken on the GUI thread)."""
        name = self.layer_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise InputError("image: choose a 2D image layer (open an image or a sample first)")
        layer = self.viewer.layers[name]
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        image = np.array(data)  # copy: the worker never sees the layer
        min_side = min(image.shape[:2]) // int(self.downsample.value())
        if min_side < 4:
            raise InputError(f"image: {name!r} is too small ({image.shape[:2]}) for downsampling "
                             f"by {self.downsample.value()}")
        return image

    def build_source(self, out_dir: str):
        """Read the form and return the fit-image event source for the worker."""
        cfg = self.config()
        image = self.image()
        self.table.clear_values()

        def source(control):
            return fit_image(image, cfg, control, out_dir=out_dir)

        return source

    # ---- events -----------------------------------------------------------------------
    def on_run_started(self, ev: RunStarted) -> None:
        """Size the metrics table to the number of scales."""
        self.table.set_rows(ev.n_stages)

    def on_metrics(self, ev: Metrics) -> None:
        """PSNR after each stage; spectrum drift per scale at the end."""
        if ev.name == "psnr":
            scale = int(ev.values.get("scale", ev.stage))
            self.table.set_value(scale, 0, ev.values.get("psnr_db"), "{:.2f}")
        elif ev.name == "spectrum_drift":
            for k, value in enumerate(ev.values.get("spectrum_drift", [])):
                self.table.set_value(k, 1, value, "{:.4g}")


__all__ = ["FitImageWidget", "parse_schedule"]
