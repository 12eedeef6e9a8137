"""The checks a reconstruction makes on its inputs before any work, runnable on their own: the
widget calls :func:`check_inputs` at Start (on the GUI thread) so that it refuses exactly what
``rmfn reconstruct`` refuses, with the same words.

Cost: a STAR file's table is parsed and its stacks' headers are checked (no pixels are read:
:func:`~rmfn_napari.cryoem.particles.read_particles` is lazy), the reference map is read once.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ...errors import InputError
from ..downsample import validate_box
from ..optics_groups import working_grid
from .data import load_dataset, load_reference
from .settings import ReconstructConfig

__all__ = ["check_inputs", "simulated_dataset_shape"]


def simulated_dataset_shape(box: int, apix: float, cfg: ReconstructConfig, source=None):
    """What :func:`~.data.load_dataset` would give for particles of ``box`` px at ``apix`` Å
    (a stack still to be simulated from a map): the box and pixel size at ``cfg.box``, with
    the same :class:`InputError` for a box the particles cannot be cropped to (and at
    ``cfg.apix``, resampled: :func:`~rmfn_napari.cryoem.optics_groups.working_grid`)."""
    if cfg.apix is not None:
        new, new_apix = working_grid([(apix, box)], cfg.box, cfg.apix, source)
        return SimpleNamespace(box=new, apix=new_apix, star_path=source)
    if cfg.box is None or int(cfg.box) == int(box):
        return SimpleNamespace(box=int(box), apix=float(apix), star_path=source)
    validate_box(int(cfg.box), int(box), source)
    new = int(cfg.box)
    return SimpleNamespace(box=new, apix=float(apix) * box / new, source_box=int(box),
                           source_apix=float(apix), star_path=source)


def check_inputs(cfg: ReconstructConfig, *, star=None, simulated=None, reference=None,
                 reference_apix: float | None = None):
    """Raise the engine's :class:`InputError` for inputs a run would refuse; return the dataset.

    Parameters
    ----------
    cfg : the run's settings (validated here too).
    star : the particle STAR file (read lazily: :func:`~.data.load_dataset`).
    simulated : ``(box px, apix Å, map path)`` of particles still to be simulated, instead
        of ``star``.
    reference : a map file (path) or a volume (array) for FSC, or None.
    reference_apix : the voxel size (Å) of an array ``reference`` (a napari layer's), checked
        against the particles' like a file's header is.
    """
    cfg.validate()
    if star is not None:
        ds = load_dataset(star, cfg.box, cfg.apix)
    elif simulated is not None:
        box, apix, source = simulated
        ds = simulated_dataset_shape(box, apix, cfg, source)
    else:
        raise InputError("dataset: choose a RELION .star particle file or a map to simulate from")
    if reference is None:
        return ds
    if isinstance(reference, (str, Path)):
        load_reference(Path(reference), ds)
        return ds
    load_reference(np.asarray(reference), ds, apix=reference_apix)  # shape, voxel size, finiteness
    return ds
