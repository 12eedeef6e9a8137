"""Evaluation metrics for cryo-EM reconstructions, one module per algorithm.

* :mod:`.fsc` — Fourier shell correlation, the resolution read from it (the package's single
  FSC convention: first crossing after the first shell, interpolated; ``None`` = not
  resolved), :func:`fsc_report` against a reference.
* :mod:`.masks` — :func:`soft_sphere_mask`, :func:`auto_mask` (RELION-style loose mask).
* :mod:`.gold_standard` — half-map FSC, masked and corrected by phase randomisation
  (Chen et al. 2013), :func:`phase_randomise`, :func:`fsc_full_from_half`.
* :mod:`.alignment` — :func:`align_map`, :func:`apply_alignment`, :class:`Alignment`.
* :mod:`.pose_errors` — :func:`pose_errors` and friends.

Conventions (DESIGN.md §2)
--------------------------
* Volumes are float32 arrays indexed ``[z, y, x]`` in a cubic box of even size ``D`` with voxel
  size ``apix`` in Å. The rotation centre is the voxel with index ``D/2`` on every axis, and a
  point ``p = (x, y, z)`` in voxels relative to that centre is the array element
  ``[z + D/2, y + D/2, x + D/2]`` (``x`` is the fastest axis).
* Fourier space is used centred (``fftshift``): index ``j`` along an axis is the spatial
  frequency ``k = j - D/2`` cycles/box. A shell of radius ``k`` cycles/box corresponds to a
  resolution of ``D * apix / k`` Å; Nyquist is ``D/2`` cycles/box, i.e. ``2 * apix`` Å.
* Rotations are 3×3 matrices acting on column vectors ``(x, y, z)``. A particle image with pose
  ``R`` is the projection along z of ``V(Rᵀ x)``. The geodesic distance between two rotations is
  ``degrees(arccos(clip((tr(R1ᵀ R2) - 1) / 2, -1, 1)))``. Rotation maths comes from
  :mod:`rmfn_napari.cryoem.rotations`.
* The hand flip (mirror) used throughout is ``J = diag(1, 1, -1)`` acting on ``(x, y, z)``,
  i.e. ``z -> -z`` about the box centre (:data:`MIRROR`).

Needs numpy, torch and scipy (``scipy.ndimage`` for the automatic mask); no Qt.
"""

from ._common import MIRROR
from .alignment import Alignment, align_map, apply_alignment
from .fsc import fsc, fsc_crossing, fsc_report, resolution_at
from .gold_standard import (
    RANDOMISE_BELOW,
    GoldStandardFSC,
    fsc_full_from_half,
    gold_standard_fsc,
    phase_randomise,
)
from .masks import auto_mask, soft_sphere_mask
from .pose_errors import geodesic_distance_deg, global_rotation_between, pose_error_stats, pose_errors

__all__ = [
    "fsc",
    "resolution_at",
    "fsc_crossing",
    "fsc_report",
    "soft_sphere_mask",
    "auto_mask",
    "phase_randomise",
    "gold_standard_fsc",
    "GoldStandardFSC",
    "fsc_full_from_half",
    "RANDOMISE_BELOW",
    "Alignment",
    "align_map",
    "apply_alignment",
    "geodesic_distance_deg",
    "global_rotation_between",
    "pose_errors",
    "pose_error_stats",
    "MIRROR",
]
