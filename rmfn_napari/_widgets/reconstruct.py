"""Reconstruct dock widget: cryo-EM ab initio reconstruction (paper §6) from napari.

Drives :func:`rmfn_napari.cryoem.reconstruct.reconstruct` in a thread worker. The dataset is a
RELION ``.star`` file (with, optionally, a STAR of the true angles and origins of the same
particles, for pose errors), or a stack simulated (in the worker) from a map — a bundled sample
or an MRC file — with off-centre particles and realistic defoci, whose ``true_poses.star``
gives the pose errors. An optional reference map (an image layer, a file, or the map the
simulation used; never a particle stack) is shown as the ``"reference"`` layer and used by the
engine for FSC. The settings form is generated from the same spec as ``rmfn reconstruct``'s flags
(:mod:`.settings_form`), presets fill it, the last Start's settings are remembered, and Start
runs the engine's own input checks first (the CLI's refusals, in its words). Volumes stream into ``"rMFN scale k"`` / ``"rMFN spectrum k"`` layers
(3D, scaled by the voxel size); at each stage's end the backprojected half-maps and full map
arrive as ``"half map 1"``, ``"half map 2"`` and ``"map (backprojected)"``. The FSC dock plots
the gold-standard FSC between the half-maps (unmasked, sphere and auto mask; 0.143) and, when
there is a reference, each scale's FSC against it (0.5); the headline gold-standard resolution
is shown under the run panel and in the status line. The pose-error histogram is docked too.
"""

from __future__ import annotations

import html

from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from ..cryoem.reconstruct.settings import ReconstructConfig
from ..cryoem.reconstruct.settings_spec import DEFAULT_PRESET, RECONSTRUCT_SETTINGS, SECTIONS
from ..engine.devices import available_devices
from ..engine.events import Metrics, RunFinished, RunStarted, ScaleSnapshot, StageFinished
from ..engine.settings_spec import overrides_from_values
from ..errors import InputError
from ._base import RunWidgetBase
from .open_run import open_run_folder, scale_files
from .plot_docks import PlotDocks, _alive
from .plots import resolution_text
from .reconstruct_dataset import (  # noqa: F401 - the names tests and scripts use
    DATASET_SIMULATE, DATASET_STAR, MAP_FILE, OWN_LAYER_PREFIXES, REF_FILE, REF_NONE,
    REF_SIMULATION, SAMPLE_MAPS, WIDGETS, DatasetInputs, is_reference_candidate,
)
from .remembered import load_remembered, save_remembered
from .settings_form import SettingsForm
#: the form's --split-at values: after stage 1, 2 or 3, or at a resolution (the CLI takes any)
SPLIT_CHOICES = ("2", "1", "3", "60A", "40A", "20A")

#: How the gold-standard masks are named for people.
MASK_WORDS = {"unmasked": "unmasked", "sphere": "sphere mask", "auto": "auto mask"}
#: Sections that start folded (the preset fills them; the dock must fit a 1366×768 screen).
FOLDED_SECTIONS = ("model", "run", "advanced")


def gold_standard_text(mask: str, resolution_A) -> str:
    """``"gold standard (auto mask): 7.9 Å"``, or ``"... : not resolved"`` for None/NaN."""
    return f"gold standard ({MASK_WORDS.get(mask, mask)}): {resolution_text(resolution_A)}"


class ReconstructWidget(RunWidgetBase):
    """Dock widget: reconstruct a 3D map and particle poses coarse to fine.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (npe2 passes it as the first argument).

    The settings form is made from :data:`~rmfn_napari.cryoem.reconstruct.settings_spec.RECONSTRUCT_SETTINGS`
    (``settings_form``; each input is also an attribute: ``preset``, ``n_layers``, ``epochs``,
    ``lr_structure``…), in folding sections; the settings of the last Start are remembered
    (:mod:`.remembered`). The FSC plot and the pose-error histogram (``fsc_plot``,
    ``pose_plot``) are docked in the viewer when the widget is first shown (tabbed; one pair per
    viewer, :mod:`.plot_docks`). ``resolution_label``
    (the run panel's pinned headline) gives the latest gold-standard resolution (the engine's headline mask)
    and the other masks'; ``gold_standard`` holds the latest ``Metrics("gold_standard")`` values.
    """

    task = "reconstruct"
    spatial_ndim = 3

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.settings_form = SettingsForm(
            RECONSTRUCT_SETTINGS, SECTIONS, folded=FOLDED_SECTIONS,
            choices={"device": available_devices(needs_float64=True), "split_at": SPLIT_CHOICES})
        for setting in RECONSTRUCT_SETTINGS:
            inputs = self.settings_form.inputs[setting.name]
            for attr, widget in zip(setting.attrs, inputs if isinstance(inputs, tuple) else (inputs,)):
                setattr(self, attr, widget)
        self.dataset = DatasetInputs(self.settings_form, self.viewer)
        for name in WIDGETS:
            setattr(self, name, getattr(self.dataset, name))
        self.form.addRow(self.settings_form)
        self.form.addRow("output folder", self.out_dir)
        self.n_layers.valueChanged.connect(self._layers_changed)

        self.plot_docks = PlotDocks.for_viewer(self.viewer)  # one FSC and one pose dock per viewer
        self.plot_docks.acquire(self)
        self.fsc_plot = self.plot_docks.fsc_plot
        self.pose_plot = self.plot_docks.pose_plot
        self._plots_warmed = False  # docked at the first show (showEvent)
        self._box_apix: tuple[int, float] | None = None
        self.gold_standard: dict | None = None
        self.resolution_label = self.panel.headline  # pinned with the run panel
        self.resolution_label.setToolTip(
            "Gold-standard FSC at 0.143 between the half-maps (independent half-sets), "
            "masked curves corrected by phase randomisation")

        self.preset.currentIndexChanged.connect(lambda *_: self.apply_preset(self.preset.currentText()))
        self.set_config(ReconstructConfig.from_preset(DEFAULT_PRESET))  # every input, the CLI's defaults
        events = self.viewer.layers.events
        events.inserted.connect(self.dataset.refresh_references)
        events.removed.connect(self.dataset.refresh_references)
        self.dataset.kind_changed()
        self.restore_settings()

    # ---- form -------------------------------------------------------------------------
    def form_widgets(self):
        """Inputs locked during a run."""
        return [*self.dataset.rows(), *self.settings_form.input_widgets()]

    def row_label(self, field: QWidget):
        """The label of a field's row in the settings form (None if it has none)."""
        return self.settings_form.row_label(field)

    def apply_preset(self, name: str) -> None:
        """Fill the settings from preset ``name``; device, seed, mode and the other run
        settings (``preset_keeps``) stay as they are."""
        self.settings_form.set_config(ReconstructConfig.from_preset(name), keep_run_settings=True)

    def set_config(self, cfg) -> None:
        """Fill every setting of the form from a :class:`ReconstructConfig`."""
        self.preset.blockSignals(True)
        try:
            self.settings_form.set_config(cfg)
        finally:
            self.preset.blockSignals(False)

    def _layers_changed(self, n_layers: int) -> None:
        """One epoch count per layer: the list follows the layer count as ``--layers N`` alone
        does in the CLI (:func:`~rmfn_napari.cryoem.reconstruct.settings.epochs_for_layers`)."""
        from ..cryoem.reconstruct.settings import epochs_for_layers
        from ..engine.settings_spec import parse_csv_ints

        try:
            epochs = parse_csv_ints(self.epochs.text(), "epochs per stage")
        except InputError:
            return  # text being edited: Start says what is wrong with it
        if len(epochs) != n_layers:
            self.epochs.setText(",".join(str(e) for e in epochs_for_layers(epochs, n_layers)))

    def config(self):
        """The :class:`~rmfn_napari.cryoem.reconstruct.ReconstructConfig` the form describes."""
        values = self.settings_form.values()
        preset = values.pop("preset")
        cfg = ReconstructConfig.from_preset(preset, **overrides_from_values(RECONSTRUCT_SETTINGS, values))
        cfg.validate()
        return cfg

    # ---- remembered settings ----------------------------------------------------------------
    def remembered_values(self) -> dict:
        """What :meth:`restore_settings` brings back: the settings and the dataset rows."""
        return {"settings": self.settings_form.values(), "dataset": self.dataset.remembered()}

    def restore_settings(self) -> None:
        """Fill the form from the settings remembered at the last Start (if any)."""
        saved = load_remembered(self.task)
        settings, dataset = saved.get("settings") or {}, saved.get("dataset") or {}
        if isinstance(settings, dict) and settings:
            if "preset" in settings:
                self.settings_form.set_value("preset", settings["preset"])  # applies the preset
            self.settings_form.set_values(settings, skip=("preset",))
        if isinstance(dataset, dict):
            self.dataset.restore(dataset)

    # ---- start --------------------------------------------------------------------------------
    def build_source(self, out_dir: str, resume: bool = False):
        """Read the form, run the engine's input checks, and return the reconstruction event
        source for the worker.

        The checks are the CLI's (:func:`~rmfn_napari.cryoem.reconstruct.preflight.check_inputs`:
        the settings, the STAR file and its stacks, the box, the reference's size and voxel
        size): the widget refuses what ``rmfn reconstruct`` refuses, with the same words. For
        "simulate from map" the stack is simulated in the worker into ``<output folder>/simulated``
        before training starts, and its ``true_poses.star`` gives the pose errors; for a STAR file
        the optional "true poses" file does. ``resume=True`` continues the run in ``out_dir`` from
        its checkpoint (``rmfn reconstruct --resume``); a simulated stack is then reused.
        """
        from ..cryoem.io import read_map
        from ..cryoem.reconstruct import reconstruct
        from ..cryoem.reconstruct.preflight import check_inputs

        simulate = self.dataset_kind.currentText() == DATASET_SIMULATE
        sim_map = self.dataset.simulation_map() if simulate else None
        star = true_poses = simulated = None
        if resume:  # the run's own settings and data, from its checkpoint
            cfg, star, true_poses = self._resumed_run(out_dir)
            simulate = False
        elif simulate:
            cfg = self.config()
            sim = self.dataset.simulation_settings()
        else:
            cfg = self.config()
            star = self.star_path.path()
            if not star or not Path(star).is_file():
                raise InputError("dataset: choose an existing RELION .star particle file")
            true_poses = self.dataset.true_poses()
        ref = self.dataset.reference_map(sim_map)
        ref_volume = None if ref is None else ref[0]
        ref_file = None if ref is None or ref[2] is None else str(ref[2])
        if simulate:
            vol, apix = read_map(sim_map)
            simulated = (int(vol.shape[-1]), float(apix), sim_map)
        check_inputs(cfg, star=star, simulated=simulated,
                     reference=None if ref is None else (ref[2] or ref_volume),
                     reference_apix=None if ref is None else ref[1])
        if ref is not None and ref[2] is not None:  # a file: show it; a layer is already on show
            self.layers.set_reference(ref_volume, ref[1])
        save_remembered(self.task, self.remembered_values())
        seed = int(cfg.seed)
        self.fsc_plot.clear()
        self.fsc_plot.set_reference_expected(ref is not None)
        self.gold_standard = None
        self.resolution_label.setText("")
        empty = "no pose errors yet" if simulate or true_poses else "no true poses: no pose errors"
        self.pose_plot.set_counts(np.zeros(36), np.linspace(0, 180, 37), empty)
        self._box_apix = None
        self.dock_plots()

        def source(control):
            from ..engine.events import Log

            dataset, truth = star, true_poses
            if simulate:
                from ..cryoem.simulate import simulate_particles

                yield Log(f"simulating {sim['n']} particles from {Path(sim_map).name} at SNR "
                          f"{sim['snr']:g}, off-centre by up to {sim['max_shift']:g} px…")
                result = simulate_particles(sim_map, Path(out_dir) / "simulated", seed=seed,
                                            overwrite=True, **sim)
                dataset, truth = result.star, result.true_poses
                yield Log(f"simulated {result.n} particles of {result.box}² at "
                          f"{result.apix:g} Å/px: {result.star}")
                if control.stop_requested:
                    return
            # a file by its path (metrics.json records it); a layer's array is kept in the run folder
            yield from reconstruct(dataset, cfg, control, reference=ref_file or ref_volume,
                                   out_dir=out_dir, true_poses=truth, resume=resume)

        return source

    def _resumed_run(self, out_dir: str):
        """(settings, STAR, true-poses STAR or None) of the run saved in ``out_dir``'s
        checkpoint; the form is filled with those settings (the device stays the form's: a run
        may continue elsewhere). InputError when the checkpoint or the run's particles are gone."""
        from dataclasses import fields, replace

        from ..cryoem.reconstruct.outputs import load_checkpoint

        path = Path(out_dir) / "checkpoint.pt"
        payload = load_checkpoint(path)
        known = {f.name for f in fields(ReconstructConfig)}
        saved = {k: tuple(v) if isinstance(v, list) else v
                 for k, v in (payload.get("config") or {}).items() if k in known}
        cfg = replace(ReconstructConfig(**saved), device=self.device.currentText())
        cfg.validate()
        self.set_config(cfg)  # the form shows the run that continues
        identity = payload.get("identity") or {}
        star = identity.get("star")
        if not star or not Path(star).is_file():
            raise InputError(f"resume: the run's particles ({star}) are not there any more", path)
        truth = identity.get("true_poses")
        return cfg, Path(star), Path(truth) if truth and Path(truth).is_file() else None

    def dock_plots(self) -> None:
        """Dock the viewer's FSC and pose-error plots (tabbed), or show again ones closed."""
        self.plot_docks.show()

    def showEvent(self, event):  # noqa: N802 - Qt name
        """Dock the plots as soon as the widget is first shown, not at Start: docking them
        relays the window out and paints them for the first time, better done before a run
        than the moment it begins (with the former vispy plots this was a ~3 s freeze under
        software OpenGL; with QPainter, ~0.2 s)."""
        super().showEvent(event)
        if not self._plots_warmed:
            self._plots_warmed = True
            QTimer.singleShot(0, self._dock_plots_if_alive)

    def _dock_plots_if_alive(self) -> None:
        if _alive(self) and self.isVisible():
            self.dock_plots()

    def open_run(self, folder: str) -> str:
        """"Open run…": a finished run's maps, half-maps and plots in the viewer; returns its
        one-line summary (:func:`~.open_run.open_run_folder`; InputError for a folder that is
        not a run)."""
        summary = open_run_folder(self.viewer, folder, plots=self.plot_docks)
        self.layers.adopt_opened_run(len(scale_files(folder)))  # the stepper steps through them
        self.resolution_label.setText(summary)
        return summary

    # ---- events -----------------------------------------------------------------------
    def on_run_started(self, ev: RunStarted) -> None:
        """The plots were cleared at Start; the empty FSC plot now spans the data's frequencies
        (to Nyquist at the run's voxel size)."""
        if ev.snapshot_voxel_size:
            self.fsc_plot.set_nyquist(float(ev.snapshot_voxel_size))

    def _on_event(self, ev) -> None:
        if isinstance(ev, ScaleSnapshot) and self._box_apix is None:
            self._box_apix = (int(ev.data.shape[-1]), float(ev.voxel_size))
        super()._on_event(ev)  # VolumeSnapshot -> layers.handle_volume, Metrics -> on_metrics
        headline = self.gold_standard_headline()
        if headline and isinstance(ev, (StageFinished, RunFinished)):
            # the stage-end / run-end status line carries the resolution a reviewer reads first
            self.panel.set_status(f"{self.panel.status.text()} · {headline}")

    def gold_standard_headline(self) -> str:
        """``"gold standard (auto mask): 7.9 Å"`` for the latest half-map FSC ('' before one)."""
        gs = self.gold_standard
        if not gs:
            return ""
        mask = gs.get("headline") or "auto"
        return gold_standard_text(mask, (gs.get("resolution_A") or {}).get(mask))

    def _freq_axis(self, v: dict, own_box_apix: bool = False):
        """(frequencies, x label): in 1/Å when box and voxel size are known, else cycles/box."""
        freq = np.asarray(v.get("freq_cycles", v.get("freq_cycles_per_box", [])), float)
        box_apix = self._box_apix
        if own_box_apix and v.get("box") and v.get("apix"):
            box_apix = (int(v["box"]), float(v["apix"]))
        if box_apix is None:
            return freq, "spatial frequency (cycles/box)"
        box, apix = box_apix
        return freq / (box * apix), "spatial frequency (1/Å)"  # cycles/box -> 1/Å

    def on_metrics(self, ev: Metrics) -> None:
        """FSC curves (gold standard between half-maps, and per scale against a reference)
        and the pose-error histogram."""
        v = ev.values
        if ev.name == "fsc":
            freq, x_label = self._freq_axis(v)
            self.fsc_plot.set_curve(int(v.get("scale", ev.stage)), freq, v.get("fsc", []),
                                    v.get("resolution_A"), float(v.get("threshold", 0.5)), x_label)
        elif ev.name == "gold_standard":
            freq, x_label = self._freq_axis(v, own_box_apix=True)
            curves = dict(v.get("curves") or {})
            resolutions = dict(v.get("resolution_A") or {})
            headline = v.get("headline") or "auto"
            self.fsc_plot.set_gold_standard(freq, curves, resolutions,
                                            float(v.get("threshold", 0.143)), x_label,
                                            headline=headline, bands=v, stage=ev.stage)
            self.gold_standard = dict(v, stage=ev.stage)
            text = self.gold_standard_headline()
            others = [f"{MASK_WORDS.get(m, m)} {resolution_text(resolutions.get(m))}"
                      for m in curves if m != headline]
            n_half = v.get("n_half")
            halves = (f" · half-sets of {int(n_half[0])} and {int(n_half[1])} particles"
                      if n_half and len(n_half) == 2 else "")
            verdict = ("" if v.get("trusted", True) else
                       f"<br><span style='color:#e8a33d'>⚠ {html.escape(str(v.get('verdict', '')))}</span>")
            self.resolution_label.setText(
                f"Stage {ev.stage + 1}: <b>{text}</b>"
                + (f" ({', '.join(others)})" if others else "") + halves + verdict)
            self.panel.set_status(f"Stage {ev.stage + 1}: {text}"
                                  + ("" if v.get("trusted", True) else " (not trusted: see the resolution line)"))
        elif ev.name == "pose_errors":
            summary = (f"stage {ev.stage + 1}: median {v.get('median_deg', float('nan')):.1f}°, "
                       f"mean {v.get('mean_deg', float('nan')):.1f}°, "
                       f"{100 * v.get('frac_under_5deg', float('nan')):.0f}% under 5°")
            if "hist_counts" in v and "hist_edges_deg" in v:
                self.pose_plot.set_counts(v["hist_counts"], v["hist_edges_deg"], summary)
            elif "errors_deg" in ev.arrays:
                self.pose_plot.set_errors(ev.arrays["errors_deg"], summary=summary)


__all__ = ["ReconstructWidget"]
