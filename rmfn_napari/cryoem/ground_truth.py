"""Ground truth for evaluation, and only from where the user says it is.

A reconstruction reports pose and offset errors only against a STAR file given explicitly
(``--true-poses``; ``rmfn simulate`` writes ``true_poses.star``). The angles a particle STAR
happens to hold are never taken for the truth. Particles are matched by image (stack file
and index in it), not by row, so the truth may list them in another order or hold more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .particles import read_particles

__all__ = ["TruePoses", "read_true_poses"]


@dataclass
class TruePoses:
    """True poses of the particles of a dataset, in its row order.

    Attributes
    ----------
    path : Path
    rotations : ndarray ``(n, 3, 3)`` float64, RELION matrices A.
    shifts_A : ndarray ``(n, 2)``, RELION origins in Å.
    """

    path: Path
    rotations: np.ndarray
    shifts_A: np.ndarray


def _image_keys(ds) -> list[tuple[str, int]]:
    return getattr(ds, "source", ds).image_keys()  # a cropped dataset: its source's images


def read_true_poses(path, dataset, n: int | None = None) -> TruePoses:
    """Read the true poses of the first ``n`` particles of ``dataset`` from a STAR file.

    Raises
    ------
    InputError
        The file cannot be read, has no angles, or lacks one of the dataset's particles.
    """
    path = Path(path)
    try:
        truth = read_particles(path)
    except InputError as exc:  # a problem of this file (or a stack it names): say it is --true-poses's
        said = str(exc) if str(exc).startswith(f"{path}: ") else f"{path}: {exc}"
        raise InputError(f"--true-poses {said}") from None
    if not truth.has_poses:
        raise InputError("true poses: no rlnAngleRot/Tilt/Psi columns", path)
    n = dataset.n if n is None else int(n)
    row_of = {key: i for i, key in enumerate(_image_keys(truth))}
    keys = _image_keys(dataset)[:n]
    rows = np.empty(n, dtype=np.int64)
    for i, key in enumerate(keys):
        r = row_of.get(key)
        if r is None:
            raise InputError(f"true poses: particle {i + 1} ({dataset.image_names[i]!r}) is not in this "
                             f"file", path)
        rows[i] = r
    truth.close()
    return TruePoses(path, truth.rotations[rows].copy(), truth.shifts_A[rows].copy())
