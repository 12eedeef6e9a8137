"""Fit-image dock widget: 2D coarse-to-fine fitting (paper §5) of any 2D image layer.

Drives :func:`rmfn_napari.fitting.image_fitting.fit_image`; streams each scale's image and
spectrum into ``"rMFN scale k"`` / ``"rMFN spectrum k"`` layers and shows the PSNR after each
stage and the spectrum drift per scale (Table 1's metric) in a small table.
"""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import create_widget
from qtpy.QtWidgets import QLabel, QWidget

from ..engine.devices import available_devices
from ..engine.events import Metrics, RunStarted
from ..engine.settings_spec import overrides_from_values
from ..errors import InputError
from ..fitting.image_fitting import FitImageConfig, check_image_size, fit_image
from ..fitting.presets import default_preset
from ..fitting.settings_spec import FIT_IMAGE_SETTINGS, SECTIONS
from .layers import REFERENCE_NAME
from ._base import RunWidgetBase
from .plots import ScaleMetricsTable
from .remembered import load_remembered, save_remembered
from .settings_form import SettingsForm

OWN_LAYER_PREFIXES = ("rMFN scale ", "rMFN spectrum ")
#: Sections that start folded (the preset fills them).
FOLDED_SECTIONS = ("run", "advanced")


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

    Form: the image layer, then the settings of
    :data:`~rmfn_napari.fitting.settings_spec.FIT_IMAGE_SETTINGS` (preset — ``cpu`` or
    ``paper``, chosen by the device at first —, method, width, steps per stage, learning
    rate, training downsampling, device, seed) in folding sections, each input also an
    attribute (``preset``, ``schedule``, ``hidden``, ``lr``…); then the run controls, the
    scale stepper and the metrics table. The settings of the last Start are remembered.
    """

    task = "fit-image"
    spatial_ndim = 2

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.settings_form = SettingsForm(FIT_IMAGE_SETTINGS, SECTIONS, folded=FOLDED_SECTIONS,
                                          choices={"device": available_devices()})
        for setting in FIT_IMAGE_SETTINGS:
            inputs = self.settings_form.inputs[setting.name]
            for attr, widget in zip(setting.attrs, inputs if isinstance(inputs, tuple) else (inputs,)):
                setattr(self, attr, widget)
        # the layer picker: magicgui's napari layer combo box (its value is the Layer), offering
        # only 2D image layers; reset_choices follows the viewer's layer list (napari's
        # "QWidget class widgets" pattern). layer_combo is its QComboBox.
        self.layer_picker = create_widget(
            annotation=napari.layers.Image, label="image",
            options={"choices": lambda _w: [(layer.name, layer) for layer in self.viewer.layers
                                            if is_2d_image_layer(layer)]})
        self.layer_combo = self.layer_picker.native
        self.settings_form.add_row("top", "image", self.layer_combo,
                                   "2D image layer to fit (grey or RGB); it is the PSNR reference",
                                   index=0)
        self.form.addRow(self.settings_form)
        self.form.addRow("output folder", self.out_dir)

        self.table = ScaleMetricsTable(["PSNR (dB)", "spectrum drift"])
        self.table.setToolTip("PSNR of the full output on the original grid after each stage; "
                              "spectrum drift of each scale from its stage end to the run end "
                              "(Table 1: mean abs. difference of amplitude spectra)")
        self.extra.addWidget(QLabel("Per scale"))
        self.extra.addWidget(self.table)

        self.preset.currentIndexChanged.connect(lambda *_: self.apply_preset(self.preset.currentText()))
        self.set_config(FitImageConfig.from_preset(default_preset("auto")))  # every input
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.layer_picker.reset_choices)
        self.layer_picker.reset_choices()
        self.restore_settings()

    # ---- form -------------------------------------------------------------------------
    def form_widgets(self):
        """Inputs locked during a run."""
        return [self.layer_combo, *self.settings_form.input_widgets()]

    def apply_preset(self, name: str) -> None:
        """Fill the settings from preset ``name`` (``cpu``, ``paper``); method, device and
        seed stay as they are."""
        self.settings_form.set_config(FitImageConfig.from_preset(name), keep_run_settings=True)

    def set_config(self, cfg: FitImageConfig) -> None:
        """Fill every setting of the form from a :class:`FitImageConfig`."""
        self.preset.blockSignals(True)
        try:
            self.settings_form.set_config(cfg)
        finally:
            self.preset.blockSignals(False)

    def restore_settings(self) -> None:
        """Fill the form from the settings remembered at the last Start (if any)."""
        settings = load_remembered(self.task).get("settings") or {}
        if isinstance(settings, dict) and settings:
            if "preset" in settings:
                self.settings_form.set_value("preset", settings["preset"])  # applies the preset
            self.settings_form.set_values(settings, skip=("preset",))

    def config(self) -> FitImageConfig:
        """The :class:`FitImageConfig` the form describes (raises InputError when invalid)."""
        values = self.settings_form.values()
        preset = values.pop("preset")
        cfg = FitImageConfig.from_preset(preset, snapshot_interval_s=0.5,
                                         **overrides_from_values(FIT_IMAGE_SETTINGS, values))
        cfg.validate()
        return cfg

    def image(self) -> np.ndarray:
        """A copy of the chosen layer's image (taken on the GUI thread)."""
        layer = self.layer_picker.value
        if layer is None or layer not in self.viewer.layers:
            raise InputError("image: choose a 2D image layer (open an image or a sample first)")
        name = layer.name
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        image = np.array(data)  # copy: the worker never sees the layer
        check_image_size(image.shape, int(self.downsample.value()), f"layer {name!r}")  # the CLI's check
        return image

    def build_source(self, out_dir: str, resume: bool = False):
        """Read the form and return the fit-image event source for the worker. ``resume=True``
        continues the fit saved in ``out_dir`` ("Resume…", ``rmfn fit-image --resume``): the
        form is filled with its settings (the device stays the form's) and the chosen layer must
        hold the same image (else the engine refuses in one line)."""
        if resume:
            self.set_config(self._resumed_config(out_dir))
        cfg = self.config()
        image = self.image()
        layer = self.layer_picker.value
        self.layers.set_data_grid(layer.scale[-2:], layer.translate[-2:])  # results on its grid
        save_remembered(self.task, {"settings": self.settings_form.values()})
        self.table.clear_values()
        self.panel.headline.setText("")

        def source(control):
            return fit_image(image, cfg, control, out_dir=out_dir, resume=resume)

        return source

    def _resumed_config(self, out_dir: str) -> FitImageConfig:
        """The settings saved in ``out_dir``'s checkpoint, with the form's device (a fit may
        continue elsewhere). InputError when there is no readable checkpoint."""
        from dataclasses import fields, replace

        from ..fitting.checkpoint import read_fit_checkpoint

        saved = read_fit_checkpoint(out_dir).get("config") or {}
        known = {f.name for f in fields(FitImageConfig)}
        cfg = FitImageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known})
        cfg = replace(cfg, device=self.device.currentText())
        cfg.validate()
        return cfg

    # ---- events -----------------------------------------------------------------------
    def on_run_started(self, ev: RunStarted) -> None:
        """Size the metrics table to the number of scales."""
        self.table.set_rows(ev.n_stages)

    def open_run(self, folder: str) -> str:
        """"Open run…": a finished run's images and spectra, placed on the original image's grid
        (:func:`~.open_run.open_run_folder`); returns its one-line summary."""
        from .open_run import open_run_folder, scale_files

        summary = open_run_folder(self.viewer, folder)
        self.layers.adopt_opened_run(len(scale_files(folder)))  # the stepper steps through them
        return summary

    def on_metrics(self, ev: Metrics) -> None:
        """PSNR after each stage; spectrum drift per scale at the end."""
        if ev.name == "psnr":
            scale = int(ev.values.get("scale", ev.stage))
            self.table.set_value(scale, 0, ev.values.get("psnr_db"), "{:.2f}")
            psnr = ev.values.get("psnr_db")
            if psnr is not None:  # the pinned headline: the latest PSNR on the original grid
                self.panel.headline.setText(f"PSNR after stage {ev.stage + 1}: <b>{float(psnr):.2f} dB</b>")
        elif ev.name == "spectrum_drift":
            for k, value in enumerate(ev.values.get("spectrum_drift", [])):
                self.table.set_value(k, 1, value, "{:.4g}")


__all__ = ["FitImageWidget", "is_2d_image_layer"]
