"""Reconstruct dock widget: cryo-EM ab initio reconstruction (paper §6) from napari.

Drives :func:`rmfn_napari.cryoem.reconstruct.reconstruct` in a thread worker. The dataset is a
RELION ``.star`` file (with, optionally, a STAR of the true angles and origins of the same
particles, for pose errors), or a stack simulated (in the worker) from a map — a bundled sample
or an MRC file — with off-centre particles and realistic defoci, whose ``true_poses.star``
gives the pose errors. An optional reference map (an image layer, a file, or the map the
simulation used) is shown as the ``"reference"`` layer and used by the engine for FSC. Presets
fill the key parameters. Volumes stream into ``"rMFN scale k"`` / ``"rMFN spectrum k"`` layers
(3D, scaled by the voxel size); at each stage's end the backprojected half-maps and full map
arrive as ``"half map 1"``, ``"half map 2"`` and ``"map (backprojected)"``. The FSC dock plots
the gold-standard FSC between the half-maps (unmasked, sphere and auto mask; 0.143) and, when
there is a reference, each scale's FSC against it (0.5); the headline gold-standard resolution
is shown under the run panel and in the status line. The pose-error histogram is docked too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QSpinBox,
    QStackedWidget, QToolButton, QWidget,
)

from ..engine.devices import available_devices
from ..model.precision import PRECISIONS
from ..engine.events import Metrics, RunFinished, RunStarted, ScaleSnapshot, StageFinished
from ..errors import InputError
from ._base import RunWidgetBase
from .plots import FSCPlot, PoseHistogram, resolution_text

#: Bundled maps offered for "simulate from map": label -> sample key.
SAMPLE_MAPS = {
    "1OL5 sample (32³, 2 Å)": "1ol5_32",
    "4AKE sample (32³, 2.4 Å)": "4ake_32",
    "1OL5 sample (64³, 1 Å)": "1ol5_64",
    "4AKE sample (64³, 1.2 Å)": "4ake_64",
}
MAP_FILE = "map file…"
DATASET_STAR = "STAR file"
DATASET_SIMULATE = "simulate from map"
REF_NONE = "(none)"
REF_SIMULATION = "(map used for the simulation)"
REF_FILE = "(file…)"
PRESET_NAMES = ("cpu-small", "paper", "tiny")
OWN_LAYER_PREFIXES = ("rMFN scale ", "rMFN spectrum ", "half map ", "map (backprojected)")
#: How the gold-standard masks are named for people.
MASK_WORDS = {"unmasked": "unmasked", "sphere": "sphere mask", "auto": "auto mask"}
# the form's pose-search labels -> keys of the engine's POSE_SEARCH_MODES (the CLI's --pose-search)
POSE_SEARCH_LABELS = {"coarse stages": "coarse", "every stage": "all", "off (gradient only)": "off"}
POSE_INITS = ("auto", "random", "perturb", "star")
BOX_STACK = "stack's size"


class _PathField(QWidget):
    """A line edit with a "…" button opening a file dialog."""

    def __init__(self, caption: str, filter_: str, placeholder: str = "",
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.caption, self.filter = caption, filter_
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        button = QToolButton()
        button.setText("…")
        button.clicked.connect(self._choose)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit)
        lay.addWidget(button)

    def _choose(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, self.caption, self.edit.text(), self.filter)
        if path:
            self.edit.setText(path)

    def path(self) -> str:
        """The path typed or chosen ('' when empty)."""
        return self.edit.text().strip()


def gold_standard_text(mask: str, resolution_A) -> str:
    """``"gold standard (auto mask): 7.9 Å"``, or ``"... : not resolved"`` for None/NaN."""
    return f"gold standard ({MASK_WORDS.get(mask, mask)}): {resolution_text(resolution_A)}"


def _csv_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.replace(";", ",").split(",") if t.strip())
    except ValueError:
        raise InputError(f"{what}: expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise InputError(f"{what}: need positive whole numbers, got {text!r}")
    return values


class ReconstructWidget(RunWidgetBase):
    """Dock widget: reconstruct a 3D map and particle poses coarse to fine.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (npe2 passes it as the first argument).

    The FSC plot and the pose-error histogram (``fsc_plot``, ``pose_plot``) are docked in the
    viewer the first time a run starts. ``resolution_label`` (under the run panel) gives the
    latest gold-standard resolution (the engine's headline mask) and the other masks';
    ``gold_standard`` holds the latest ``Metrics("gold_standard")`` values.
    """

    task = "reconstruct"
    spatial_ndim = 3

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        # -- dataset
        self.dataset_kind = QComboBox()
        self.dataset_kind.addItems([DATASET_SIMULATE, DATASET_STAR])
        self.star_path = _PathField("Particle STAR file", "RELION STAR (*.star)",
                                    "particles.star")
        sim = QWidget()
        sim_row = QHBoxLayout(sim)
        sim_row.setContentsMargins(0, 0, 0, 0)
        self.sim_map = QComboBox()
        self.sim_map.addItems(list(SAMPLE_MAPS) + [MAP_FILE])
        self.sim_n = QSpinBox()
        self.sim_n.setRange(10, 1_000_000)
        self.sim_n.setValue(2000)
        self.sim_n.setPrefix("n ")
        self.sim_n.setToolTip("Number of particles to simulate")
        self.sim_n.setMinimumWidth(90)
        self.sim_snr = QDoubleSpinBox()
        self.sim_snr.setDecimals(2)
        self.sim_snr.setMinimumWidth(90)
        self.sim_snr.setToolTip("Signal-to-noise ratio per image (the paper: 0.1)")
        self.sim_snr.setRange(0.001, 100.0)
        self.sim_snr.setValue(0.1)
        self.sim_snr.setPrefix("SNR ")
        self.sim_max_shift = QDoubleSpinBox()
        self.sim_max_shift.setDecimals(1)
        self.sim_max_shift.setRange(0.0, 64.0)
        self.sim_max_shift.setSingleStep(0.5)
        self.sim_max_shift.setValue(2.0)
        self.sim_max_shift.setPrefix("max shift ")
        self.sim_max_shift.setSuffix(" px")
        self.sim_max_shift.setToolTip("Place particles off-centre by up to this many pixels "
                                      "(origins uniform in the disc, < box/4), as picked particles "
                                      "are; the true origins go to true_poses.star")
        sim_row.addWidget(self.sim_map)
        self.sim_params = QWidget()
        params_row = QHBoxLayout(self.sim_params)
        params_row.setContentsMargins(0, 0, 0, 0)
        params_row.addWidget(self.sim_n)
        params_row.addWidget(self.sim_snr)
        params_row.addWidget(self.sim_max_shift)
        self.sim_defocus_min = QDoubleSpinBox()
        self.sim_defocus_max = QDoubleSpinBox()
        for spin, prefix, value in ((self.sim_defocus_min, "defocus ", 0.8),
                                    (self.sim_defocus_max, "to ", 2.5)):
            spin.setDecimals(2)
            spin.setRange(0.0, 10.0)
            spin.setSingleStep(0.1)
            spin.setPrefix(prefix)
            spin.setSuffix(" µm")
            spin.setValue(value)
            spin.setToolTip("Mean defocus range (µm), uniform per particle")
        self.sim_astig_max = QDoubleSpinBox()
        self.sim_astig_max.setDecimals(0)
        self.sim_astig_max.setRange(0.0, 5000.0)
        self.sim_astig_max.setSingleStep(50.0)
        self.sim_astig_max.setValue(500.0)
        self.sim_astig_max.setPrefix("astig. ≤ ")
        self.sim_astig_max.setSuffix(" Å")
        self.sim_astig_max.setToolTip("Largest astigmatism dfU − dfV (Å); drawn uniformly from 0 "
                                      "to it, at a uniform angle")
        self.sim_ctf = QWidget()
        ctf_row = QHBoxLayout(self.sim_ctf)
        ctf_row.setContentsMargins(0, 0, 0, 0)
        ctf_row.addWidget(self.sim_defocus_min)
        ctf_row.addWidget(self.sim_defocus_max)
        ctf_row.addWidget(self.sim_astig_max)
        self.sim_map_path = _PathField("Map to simulate from", "MRC (*.mrc *.map)", "map.mrc")
        self.dataset_stack = QStackedWidget()
        self.dataset_stack.addWidget(sim)
        self.dataset_stack.addWidget(self.star_path)
        self.true_poses_path = _PathField("STAR file with the true poses", "RELION STAR (*.star)",
                                          "true_poses.star (optional)")
        self.true_poses_path.setToolTip("ground truth for pose errors; without it no pose errors "
                                        "are computed")
        self.dataset_kind.currentIndexChanged.connect(self._dataset_kind_changed)
        self.sim_map.currentTextChanged.connect(self._sim_map_changed)
        # -- reference
        self.reference = QComboBox()
        self.reference_path = _PathField("Reference map", "MRC (*.mrc *.map)", "reference.mrc")
        self.reference.currentTextChanged.connect(self._reference_changed)
        # -- parameters
        self.preset = QComboBox()
        self.preset.addItems(list(PRESET_NAMES))
        self.preset.setToolTip("cpu-small: 32³ data on a laptop CPU; paper: the paper's §6 "
                               "protocol (GPU); tiny: a seconds-long smoke run")
        self.n_layers = QSpinBox()
        self.n_layers.setRange(1, 8)
        self.hidden = QSpinBox()
        self.hidden.setRange(4, 2048)
        self.lambda1 = QDoubleSpinBox()
        self.lambda1.setDecimals(3)
        self.lambda1.setRange(0.0, 10.0)
        self.lambda2 = QDoubleSpinBox()
        self.lambda2.setDecimals(3)
        self.lambda2.setRange(0.0, 20.0)
        lam = QWidget()
        lam_row = QHBoxLayout(lam)
        lam_row.setContentsMargins(0, 0, 0, 0)
        self.lambda1.setPrefix("λ1 ")
        self.lambda2.setPrefix("λ2 ")
        lam_row.addWidget(self.lambda1)
        lam_row.addWidget(self.lambda2)
        self.epochs = QLineEdit()
        self.epochs.setToolTip("Epochs of each stage, one number per layer, e.g. 10,15,15")
        self.batch = QSpinBox()
        self.batch.setRange(1, 100_000)
        self.lr_structure = QDoubleSpinBox()
        self.lr_structure.setDecimals(5)
        self.lr_structure.setRange(1e-5, 1.0)
        self.lr_structure.setPrefix("structure ")
        self.lr_pose = QDoubleSpinBox()
        self.lr_pose.setDecimals(5)
        self.lr_pose.setRange(1e-5, 1.0)
        self.lr_pose.setPrefix("pose ")
        lr = QWidget()
        lr_row = QHBoxLayout(lr)
        lr_row.setContentsMargins(0, 0, 0, 0)
        lr_row.addWidget(self.lr_structure)
        lr_row.addWidget(self.lr_pose)
        self.pose_init = QComboBox()
        self.pose_init.addItems(list(POSE_INITS))
        self.pose_init.setToolTip("auto: the STAR's angles if it has them, else random; random: "
                                  "uniform; perturb: the paper's protocol, the true angles (the "
                                  "true poses when given, else the STAR's) turned 45–90° away — "
                                  "needs angles; star: the STAR's angles as they are")
        self.box = QSpinBox()
        self.box.setRange(0, 4096)
        self.box.setSingleStep(2)
        self.box.setSpecialValueText(BOX_STACK)
        self.box.setSuffix(" px")
        self.box.setToolTip("Fourier-crop the particles to this box on read (even, ≤ the particles' "
                            "box); maps are written at this box with the matching voxel size")
        self.shift_search = QDoubleSpinBox()
        self.shift_search.setDecimals(1)
        self.shift_search.setRange(0.0, 64.0)
        self.shift_search.setSingleStep(0.5)
        self.shift_search.setSpecialValueText("off")
        self.shift_search.setPrefix("± ")
        self.shift_search.setSuffix(" px")
        self.shift_search.setToolTip("Range of the in-plane shift search (± px at the working box); "
                                     "off: the shifts stay at the STAR's origins")
        self.invert_contrast = QCheckBox("invert (dark particles)")
        self.invert_contrast.setToolTip("Multiply the images by -1: for particles darker than their "
                                        "surroundings (RELION extraction without 'invert contrast'). "
                                        "The run checks the contrast before training and says when "
                                        "this is needed.")
        self.mode = QComboBox()
        self.mode.addItems(["coarse-to-fine", "full-scale", "oracle-poses"])
        self.mode.setToolTip("coarse-to-fine: one scale per stage (the paper); full-scale: the finest "
                             "scale from the start (baseline); oracle-poses: poses fixed at the "
                             "true poses (else the STAR's angles)")
        self.pose_search = QComboBox()
        self.pose_search.addItems(list(POSE_SEARCH_LABELS))
        self.pose_search.setToolTip("Each epoch, score every particle against thousands of random "
                                    "rotations and keep the best (not in the paper, which refines "
                                    "poses by gradient steps only). coarse stages: search at the "
                                    "coarse bands, refine locally at the finest (so a full-scale run "
                                    "never searches); every stage: the finest searches too")
        self.device = QComboBox()
        self.device.addItems(available_devices(needs_float64=True))
        self.precision = QComboBox()
        self.precision.addItems(list(PRECISIONS))
        self.precision.setToolTip("Precision of the hidden layers' matrix products only: float32, "
                                  "tf32 (CUDA GPUs), bf16 (GPUs, CPUs with bfloat16 units)")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setSpecialValueText("0")

        self.form.addRow("dataset", self.dataset_kind)
        self.form.addRow("", self.dataset_stack)
        self.form.addRow("particles", self.sim_params)
        self.form.addRow("CTF", self.sim_ctf)
        self.form.addRow("true poses", self.true_poses_path)
        self.form.addRow("map file", self.sim_map_path)
        self.form.addRow("reference", self.reference)
        self.form.addRow("reference file", self.reference_path)
        self.form.addRow("preset", self.preset)
        self.form.addRow("box", self.box)
        self.form.addRow("mode", self.mode)
        self.form.addRow("layers", self.n_layers)
        self.form.addRow("width", self.hidden)
        self.form.addRow("frequency init", lam)
        self.form.addRow("epochs per stage", self.epochs)
        self.form.addRow("batch", self.batch)
        self.form.addRow("learning rates", lr)
        self.form.addRow("pose init", self.pose_init)
        self.form.addRow("pose search", self.pose_search)
        self.form.addRow("shift search", self.shift_search)
        self.form.addRow("contrast", self.invert_contrast)
        self.form.addRow("device", self.device)
        self.form.addRow("precision", self.precision)
        self.form.addRow("seed", self.seed)
        self.form.addRow("output folder", self.out_dir)

        self.fsc_plot = FSCPlot()
        self.pose_plot = PoseHistogram()
        self._plots_docked = False
        self._box_apix: tuple[int, float] | None = None
        self.gold_standard: dict | None = None
        self.resolution_label = QLabel("")
        self.resolution_label.setWordWrap(True)
        self.resolution_label.setToolTip(
            "Gold-standard FSC at 0.143 between the half-maps (independent half-sets), "
            "masked curves corrected by phase randomisation")
        self.extra.addWidget(self.resolution_label)

        self.preset.currentTextChanged.connect(self.apply_preset)
        self.apply_preset(self.preset.currentText())
        events = napari_viewer.layers.events
        events.inserted.connect(self._refresh_layers)
        events.removed.connect(self._refresh_layers)
        self._refresh_layers()
        self._dataset_kind_changed()
        self._sim_map_changed(self.sim_map.currentText())

    # ---- form -------------------------------------------------------------------------
    def form_widgets(self):
        """Inputs locked during a run."""
        return [self.dataset_kind, self.dataset_stack, self.sim_params, self.sim_ctf,
                self.true_poses_path, self.sim_map_path, self.reference, self.reference_path,
                self.preset, self.box, self.n_layers, self.hidden, self.lambda1, self.lambda2,
                self.epochs, self.batch, self.lr_structure, self.lr_pose, self.pose_init, self.mode,
                self.pose_search, self.shift_search, self.invert_contrast, self.device, self.precision,
                self.seed]

    def apply_preset(self, name: str) -> None:
        """Fill the key parameters from preset ``name``."""
        from ..cryoem.reconstruct import ReconstructConfig, pose_search_mode

        cfg = ReconstructConfig.from_preset(name)
        self.n_layers.setValue(cfg.n_layers)
        self.hidden.setValue(cfg.hidden)
        self.lambda1.setValue(cfg.lambdas[0])
        self.lambda2.setValue(cfg.lambdas[1])
        self.epochs.setText(",".join(str(e) for e in cfg.epochs_per_stage))
        self.batch.setValue(cfg.batch_size)
        self.lr_structure.setValue(cfg.lr_structure)
        self.lr_pose.setValue(cfg.lr_pose)
        self.pose_init.setCurrentText(cfg.pose_init)
        self.box.setValue(cfg.box or 0)
        self.shift_search.setValue(cfg.shift_range_px)
        label = {key: text for text, key in POSE_SEARCH_LABELS.items()}[pose_search_mode(cfg)]
        self.pose_search.setCurrentText(label)

    def _set_row_visible(self, field: QWidget, visible: bool) -> None:
        field.setVisible(visible)
        label = self.form.labelForField(field)
        if label is not None:
            label.setVisible(visible)

    def _dataset_kind_changed(self, *_args) -> None:
        simulate = self.dataset_kind.currentText() == DATASET_SIMULATE
        self.dataset_stack.setCurrentIndex(0 if simulate else 1)
        self._set_row_visible(self.sim_params, simulate)
        self._set_row_visible(self.sim_ctf, simulate)
        self._set_row_visible(self.true_poses_path, not simulate)
        self._sim_map_changed(self.sim_map.currentText())
        self._refresh_layers()

    def _sim_map_changed(self, text: str) -> None:
        simulate = self.dataset_kind.currentText() == DATASET_SIMULATE
        self._set_row_visible(self.sim_map_path, simulate and text == MAP_FILE)

    def _reference_changed(self, text: str) -> None:
        self._set_row_visible(self.reference_path, text == REF_FILE)

    def _refresh_layers(self, *_args) -> None:
        current = self.reference.currentText()
        items = [REF_NONE]
        if self.dataset_kind.currentText() == DATASET_SIMULATE:
            items.append(REF_SIMULATION)
        items.append(REF_FILE)
        items += [layer.name for layer in self.viewer.layers
                  if type(layer).__name__ == "Image" and layer.ndim == 3
                  and not getattr(layer, "rgb", False)
                  and not layer.name.startswith(OWN_LAYER_PREFIXES)]
        self.reference.blockSignals(True)
        self.reference.clear()
        self.reference.addItems(items)
        if current in items:
            self.reference.setCurrentText(current)
        elif REF_SIMULATION in items:
            self.reference.setCurrentText(REF_SIMULATION)
        self.reference.blockSignals(False)
        self._reference_changed(self.reference.currentText())

    def config(self):
        """The :class:`~rmfn_napari.cryoem.reconstruct.ReconstructConfig` the form describes."""
        from ..cryoem.reconstruct import POSE_SEARCH_MODES, ReconstructConfig

        cfg = ReconstructConfig.from_preset(
            self.preset.currentText(),
            n_layers=int(self.n_layers.value()),
            hidden=int(self.hidden.value()),
            lambdas=(float(self.lambda1.value()), float(self.lambda2.value())),
            epochs_per_stage=_csv_ints(self.epochs.text(), "epochs per stage"),
            batch_size=int(self.batch.value()),
            lr_structure=float(self.lr_structure.value()),
            lr_pose=float(self.lr_pose.value()),
            pose_init=self.pose_init.currentText(),
            box=int(self.box.value()) or None,
            mode=self.mode.currentText(),
            **POSE_SEARCH_MODES[POSE_SEARCH_LABELS[self.pose_search.currentText()]],
            shift_range_px=float(self.shift_search.value()),
            invert_contrast=bool(self.invert_contrast.isChecked()),
            device=self.device.currentText(),
            precision=self.precision.currentText(),
            seed=int(self.seed.value()),
        )
        cfg.validate()
        return cfg

    def _simulation_map(self) -> Path:
        from .._sample_data import map_path

        label = self.sim_map.currentText()
        if label == MAP_FILE:
            path = Path(self.sim_map_path.path())
            if not self.sim_map_path.path() or not path.is_file():
                raise InputError("map file: choose an existing .mrc map to simulate from")
            return path
        return map_path(SAMPLE_MAPS[label])

    def _reference(self, sim_map: Path | None):
        """(volume, voxel size, path or None) of the chosen reference, or None (GUI thread)."""
        from ..cryoem.io import read_map

        choice = self.reference.currentText()
        if choice == REF_NONE:
            return None
        if choice == REF_SIMULATION:
            if sim_map is None:
                return None
            vol, apix = read_map(sim_map)
            return np.asarray(vol, np.float32), float(apix), sim_map
        if choice == REF_FILE:
            path = self.reference_path.path()
            if not path:
                raise InputError("reference file: choose a map file or set reference to (none)")
            vol, apix = read_map(path)
            return np.asarray(vol, np.float32), float(apix), Path(path)
        if choice not in self.viewer.layers:
            raise InputError(f"reference: layer {choice!r} is gone")
        layer = self.viewer.layers[choice]
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        apix = float(layer.metadata.get("voxel_size", layer.scale[-1]))
        return np.array(data, dtype=np.float32), apix, None

    def _simulation_settings(self) -> dict:
        """Keyword arguments of the simulation the form describes (n, SNR, origins in px,
        defocus and astigmatism ranges in Å)."""
        dmin, dmax = float(self.sim_defocus_min.value()), float(self.sim_defocus_max.value())
        if dmin > dmax:
            raise InputError(f"CTF: the defocus range {dmin:g} to {dmax:g} µm is empty")
        return dict(n=int(self.sim_n.value()), snr=float(self.sim_snr.value()),
                    max_shift=float(self.sim_max_shift.value()),
                    defocus_range=(dmin * 1e4, dmax * 1e4),
                    astig_range=(0.0, float(self.sim_astig_max.value())))

    def _true_poses(self) -> Path | None:
        """The "true poses" STAR (None when the field is empty)."""
        text = self.true_poses_path.path()
        if not text:
            return None
        if not Path(text).is_file():
            raise InputError(f"true poses: {text} is not a file; choose the STAR with the true "
                             "angles and origins, or leave it empty (no pose errors)")
        return Path(text)

    def build_source(self, out_dir: str):
        """Read the form and return the reconstruction event source for the worker.

        For "simulate from map" the stack is simulated in the worker into
        ``<output folder>/simulated`` before training starts, and its ``true_poses.star``
        gives the pose errors; for a STAR file the optional "true poses" file does.
        """
        from ..cryoem.reconstruct import reconstruct

        cfg = self.config()
        simulate = self.dataset_kind.currentText() == DATASET_SIMULATE
        sim_map = self._simulation_map() if simulate else None
        star = true_poses = None
        if simulate:
            sim = self._simulation_settings()
        else:
            star = self.star_path.path()
            if not star or not Path(star).is_file():
                raise InputError("dataset: choose an existing RELION .star particle file")
            true_poses = self._true_poses()
        ref = self._reference(sim_map)
        ref_volume = None
        if ref is not None:
            ref_volume, ref_apix, ref_path = ref
            if ref_path is not None:  # a file: show it; a layer is already on show
                self.layers.set_reference(ref_volume, ref_apix)
        seed = int(self.seed.value())
        self.fsc_plot.clear()
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
            yield from reconstruct(dataset, cfg, control, reference=ref_volume, out_dir=out_dir,
                                   true_poses=truth)

        return source

    def dock_plots(self) -> None:
        """Dock the FSC plot and the pose-error histogram in the viewer (once)."""
        if self._plots_docked:
            return
        window = getattr(self.viewer, "window", None)
        if window is None or not hasattr(window, "add_dock_widget"):
            return
        window.add_dock_widget(self.fsc_plot, name="FSC", area="right")
        window.add_dock_widget(self.pose_plot, name="pose errors", area="right")
        self._plots_docked = True

    # ---- events -----------------------------------------------------------------------
    def on_run_started(self, ev: RunStarted) -> None:
        """Nothing extra: plots were cleared at Start."""

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
                                            headline=headline)
            self.gold_standard = dict(v, stage=ev.stage)
            text = self.gold_standard_headline()
            others = [f"{MASK_WORDS.get(m, m)} {resolution_text(resolutions.get(m))}"
                      for m in curves if m != headline]
            n_half = v.get("n_half")
            halves = (f" · half-sets of {int(n_half[0])} and {int(n_half[1])} particles"
                      if n_half and len(n_half) == 2 else "")
            self.resolution_label.setText(
                f"Stage {ev.stage + 1}: <b>{text}</b>"
                + (f" ({', '.join(others)})" if others else "") + halves)
            self.panel.set_status(f"Stage {ev.stage + 1}: {text}")
        elif ev.name == "pose_errors":
            summary = (f"stage {ev.stage + 1}: median {v.get('median_deg', float('nan')):.1f}°, "
                       f"mean {v.get('mean_deg', float('nan')):.1f}°, "
                       f"{100 * v.get('frac_under_5deg', float('nan')):.0f}% under 5°")
            if "hist_counts" in v and "hist_edges_deg" in v:
                self.pose_plot.set_counts(v["hist_counts"], v["hist_edges_deg"], summary)
            elif "errors_deg" in ev.arrays:
                self.pose_plot.set_errors(ev.arrays["errors_deg"], summary=summary)


__all__ = ["ReconstructWidget"]
