"""The dataset rows of the reconstruct widget: a RELION STAR file or a stack simulated from a
map, the optional true poses, the reference map (a file, an open 3D map layer — never a
particle stack —, or the map of the simulation). They read the form on the GUI thread and say
what is wrong in one line; the widget runs the engine's own checks on what they return.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QComboBox, QFormLayout, QLabel, QSizePolicy, QStackedWidget, QWidget,
)

from ..errors import InputError
from .settings_form import PathField, SettingsForm, WholeTextDoubleSpinBox, WholeTextSpinBox

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
#: The run's own layers, never offered as references.
OWN_LAYER_PREFIXES = ("rMFN scale ", "rMFN spectrum ", "half map ", "map (backprojected)")
#: The dataset rows remembered between sessions: attribute -> kind.
REMEMBERED_DATASET = {"dataset_kind": "combo", "star_path": "path", "true_poses_path": "path",
                      "sim_map": "combo", "sim_map_path": "path", "sim_n": "number",
                      "sim_snr": "number", "sim_max_shift": "number", "sim_defocus_min": "number",
                      "sim_defocus_max": "number", "sim_astig_max": "number",
                      "reference": "combo", "reference_path": "path"}



def is_reference_candidate(layer) -> bool:
    """A 3D map layer that can serve as the reference: not a particle stack (its metadata
    says ``is_stack``), not RGB, not one of the run's own layers."""
    return (type(layer).__name__ == "Image" and layer.ndim == 3
            and not getattr(layer, "rgb", False)
            and not (getattr(layer, "metadata", None) or {}).get("is_stack", False)
            and not layer.name.startswith(OWN_LAYER_PREFIXES))


def _spin(kind, lo, hi, value, tooltip, decimals=2, step=None, suffix="", prefix=""):
    spin = WholeTextSpinBox() if kind is int else WholeTextDoubleSpinBox()
    if kind is not int:
        spin.setDecimals(decimals)
    spin.setRange(lo, hi)
    if step is not None:
        spin.setSingleStep(step)
    spin.setPrefix(prefix)
    spin.setSuffix(suffix)
    spin.setValue(value)
    spin.setToolTip(tooltip)
    return spin


def _rows(*labelled) -> QWidget:
    """A small form of ``(label, widget)`` rows: one row of the dataset section holding several
    numbers, each on its own line with its label (three in one line were unreadable at the
    dock's width: "SNR 0.", "shift ≤ 2.(")."""
    box = QWidget()
    lay = QFormLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    lay.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    for label, widget in labelled:
        widget.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        text = QLabel(label)
        text.setToolTip(widget.toolTip())
        lay.addRow(text, widget)
    return box


class DatasetInputs:
    """The dataset rows, added at the top of ``form``'s "dataset" section.

    Widgets (also attributes of the reconstruct widget, :data:`WIDGETS`): ``dataset_kind``,
    ``star_path``, ``sim_map``, ``sim_map_path``, ``sim_n``, ``sim_snr``, ``sim_max_shift``,
    ``sim_defocus_min``/``max``, ``sim_astig_max``, ``true_poses_path``, ``reference``,
    ``reference_path``, and the rows ``dataset_stack``, ``sim_params``, ``sim_ctf``.
    """

    def __init__(self, form: SettingsForm, viewer):
        self.form, self.viewer = form, viewer
        self.dataset_kind = QComboBox()
        self.dataset_kind.addItems([DATASET_SIMULATE, DATASET_STAR])
        self.dataset_kind.setToolTip("simulate from map: a stack simulated (in the run) from a map, "
                                     "with its true poses; STAR file: your RELION particles")
        self.star_path = PathField("Particle STAR file", "RELION STAR (*.star)", "particles.star")
        self.star_path.setToolTip("RELION particle STAR file (images in .mrcs stacks)")
        self.sim_map = QComboBox()
        self.sim_map.addItems(list(SAMPLE_MAPS) + [MAP_FILE])
        self.sim_map.setToolTip("The map the particles are simulated from")
        self.sim_n = _spin(int, 10, 1_000_000, 2000, "Number of particles to simulate")
        self.sim_snr = _spin(float, 0.001, 100.0, 0.1, "Signal-to-noise ratio per image (the "
                             "paper: 0.1)")
        self.sim_max_shift = _spin(float, 0.0, 64.0, 2.0, "Place particles off-centre by up to "
                                   "this many pixels (origins uniform in the disc, < box/4), as "
                                   "picked particles are; the true origins go to true_poses.star",
                                   decimals=1, step=0.5, suffix=" px")
        self.sim_params = _rows(("number", self.sim_n), ("SNR", self.sim_snr),
                                ("max. shift", self.sim_max_shift))
        self.sim_params.setToolTip("Simulated particles: number, SNR, largest off-centre shift (px)")
        defocus_tip = "Mean defocus range (µm), uniform per particle"
        self.sim_defocus_min = _spin(float, 0.0, 10.0, 0.8, defocus_tip, step=0.1, suffix=" µm")
        self.sim_defocus_max = _spin(float, 0.0, 10.0, 2.5, defocus_tip, step=0.1, suffix=" µm")
        self.sim_astig_max = _spin(float, 0.0, 5000.0, 500.0, "Largest astigmatism dfU − dfV (Å); "
                                   "drawn uniformly from 0 to it, at a uniform angle", decimals=0,
                                   step=50.0, suffix=" Å")
        self.sim_ctf = _rows(("defocus from", self.sim_defocus_min), ("to", self.sim_defocus_max),
                             ("max. astigmatism", self.sim_astig_max))
        self.sim_ctf.setToolTip("Simulated CTF: defocus range (µm) and largest astigmatism (Å)")
        self.sim_map_path = PathField("Map to simulate from", "MRC (*.mrc *.map)", "map.mrc")
        self.sim_map_path.setToolTip("An MRC map (cubic, even box, voxel size in the header)")
        self.dataset_stack = QStackedWidget()
        self.dataset_stack.addWidget(self.sim_map)
        self.dataset_stack.addWidget(self.star_path)
        self.dataset_stack.setToolTip("The map to simulate from, or the particle STAR file")
        self.true_poses_path = PathField("STAR file with the true poses", "RELION STAR (*.star)",
                                         "true_poses.star (optional)")
        self.true_poses_path.setToolTip("STAR with the true angles and origins of these particles: "
                                        "the ground truth for pose errors; without it no pose "
                                        "errors are computed")
        self.reference = QComboBox()
        self.reference.setToolTip("Reference map for FSC (at the particles' box and voxel size, or "
                                  "at the working box): a file, an open 3D map layer (particle "
                                  "stacks are not offered), or the map of the simulation")
        self.reference_path = PathField("Reference map", "MRC (*.mrc *.map)", "reference.mrc")
        self.reference_path.setToolTip("The reference map file (MRC)")
        rows = (("dataset", self.dataset_kind), ("source", self.dataset_stack),
                ("particles", self.sim_params), ("CTF", self.sim_ctf),
                ("true poses", self.true_poses_path), ("map file", self.sim_map_path),
                ("reference", self.reference), ("reference file", self.reference_path))
        for index, (label, widget) in enumerate(rows):
            self.form.add_row("dataset", label, widget, index=index)
        self.dataset_kind.currentIndexChanged.connect(self.kind_changed)
        self.sim_map.currentTextChanged.connect(self._sim_map_changed)
        self.reference.currentTextChanged.connect(self._reference_changed)


    def rows(self) -> list[QWidget]:
        """The rows' widgets (locked during a run)."""
        return [self.dataset_kind, self.dataset_stack, self.sim_params, self.sim_ctf,
                self.true_poses_path, self.sim_map_path, self.reference, self.reference_path]

    @property
    def simulate(self) -> bool:
        """Whether the particles are to be simulated from a map."""
        return self.dataset_kind.currentText() == DATASET_SIMULATE

    def kind_changed(self, *_args) -> None:
        """Show the rows of the chosen dataset kind."""
        simulate = self.dataset_kind.currentText() == DATASET_SIMULATE
        self.dataset_stack.setCurrentIndex(0 if simulate else 1)
        self.form.set_row_visible(self.sim_params, simulate)
        self.form.set_row_visible(self.sim_ctf, simulate)
        self.form.set_row_visible(self.true_poses_path, not simulate)
        self._sim_map_changed(self.sim_map.currentText())
        self.refresh_references()

    def _sim_map_changed(self, text: str) -> None:
        simulate = self.dataset_kind.currentText() == DATASET_SIMULATE
        self.form.set_row_visible(self.sim_map_path, simulate and text == MAP_FILE)

    def _reference_changed(self, text: str) -> None:
        self.form.set_row_visible(self.reference_path, text == REF_FILE)

    def refresh_references(self, *_args) -> None:
        """Offer (none), the simulation's map, a file, and the open 3D maps as references."""
        current = self.reference.currentText()
        items = [REF_NONE]
        if self.dataset_kind.currentText() == DATASET_SIMULATE:
            items.append(REF_SIMULATION)
        items.append(REF_FILE)
        items += [layer.name for layer in self.viewer.layers if is_reference_candidate(layer)]
        self.reference.blockSignals(True)
        self.reference.clear()
        self.reference.addItems(items)
        if current in items:
            self.reference.setCurrentText(current)
        elif REF_SIMULATION in items:
            self.reference.setCurrentText(REF_SIMULATION)
        self.reference.blockSignals(False)
        self._reference_changed(self.reference.currentText())

    def remembered(self) -> dict:
        """The rows' values, for :func:`~.remembered.save_remembered`."""
        out = {}
        for attr, kind in REMEMBERED_DATASET.items():
            widget = getattr(self, attr)
            out[attr] = (widget.currentText() if kind == "combo" else
                         widget.path() if kind == "path" else widget.value())
        return out

    def restore(self, values: dict) -> None:
        """Put remembered values back (values that do not fit are left out)."""
        for attr, kind in REMEMBERED_DATASET.items():
            value = values.get(attr)
            widget = getattr(self, attr)
            if kind == "combo" and isinstance(value, str) and widget.findText(value) >= 0:
                widget.setCurrentText(value)
            elif kind == "path" and isinstance(value, str):
                widget.edit.setText(value)
            elif kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
                widget.setValue(value)

    def simulation_map(self) -> Path:
        """The map to simulate from (a bundled sample or a file)."""
        from .._sample_data import map_path

        label = self.sim_map.currentText()
        if label == MAP_FILE:
            path = Path(self.sim_map_path.path())
            if not self.sim_map_path.path() or not path.is_file():
                raise InputError("map file: choose an existing .mrc map to simulate from")
            return path
        return map_path(SAMPLE_MAPS[label])

    def reference_map(self, sim_map: Path | None):
        """(volume, voxel size, path or None) of the chosen reference, or None (GUI thread).
        The path is the file the volume came from (a layer read from a file has one)."""
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

    def simulation_settings(self) -> dict:
        """Keyword arguments of the simulation the form describes (n, SNR, origins in px,
        defocus and astigmatism ranges in Å)."""
        dmin, dmax = float(self.sim_defocus_min.value()), float(self.sim_defocus_max.value())
        if dmin > dmax:
            raise InputError(f"CTF: the defocus range {dmin:g} to {dmax:g} µm is empty")
        return dict(n=int(self.sim_n.value()), snr=float(self.sim_snr.value()),
                    max_shift=float(self.sim_max_shift.value()),
                    defocus_range=(dmin * 1e4, dmax * 1e4),
                    astig_range=(0.0, float(self.sim_astig_max.value())))

    def true_poses(self) -> Path | None:
        """The "true poses" STAR (None when the field is empty)."""
        text = self.true_poses_path.path()
        if not text:
            return None
        if not Path(text).is_file():
            raise InputError(f"true poses: {text} is not a file; choose the STAR with the true "
                             "angles and origins, or leave it empty (no pose errors)")
        return Path(text)



#: The widgets the reconstruct widget exposes as its own attributes.
WIDGETS = ("dataset_kind", "star_path", "sim_map", "sim_map_path", "sim_n", "sim_snr",
           "sim_max_shift", "sim_defocus_min", "sim_defocus_max", "sim_astig_max",
           "true_poses_path", "reference", "reference_path", "dataset_stack", "sim_params", "sim_ctf")
