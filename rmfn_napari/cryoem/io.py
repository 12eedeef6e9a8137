"""MRC/MRCS maps and stacks, STAR writing: read, validate, write atomically.

* MRC files are read through :mod:`rmfn_napari.cryoem.mrc` (header checked against the file
  size before any allocation, axis order applied); mrcfile writes them.
* Maps are ``[z, y, x]`` float32 cubic boxes of even size with the voxel size (Å) in the header.
* Particle STAR files (RELION 3.0 and 3.1+) are read by :mod:`rmfn_napari.cryoem.particles`;
  :func:`write_particles_star` writes one (RELION 3.1) for a dataset with new poses.
* Every problem with an input file raises :class:`rmfn_napari.errors.InputError` naming the
  file and the problem. Every writer writes to a temporary name in the destination
  directory (``.NAME.tmp-PID``), fsyncs it and renames it into place
  (:func:`rmfn_napari.engine.atomic.atomic_path`), so an interrupted write never leaves a
  half-written file under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..engine.atomic import atomic_path as _atomic_path
from ..engine.atomic import temp_path_for
from ..errors import InputError
from .mrc import MrcLayout, read_mrc_data, read_mrc_header
from .rotations import matrix_to_euler

if TYPE_CHECKING:  # particles imports this module
    from .particles import ParticleDataset

__all__ = [
    "MrcLayout",
    "read_mrc_header",
    "read_mrc_data",
    "read_map",
    "write_map",
    "atomic_path",
    "StackWriter",
    "write_star",
    "star_round",
    "write_particles_star",
]


# --------------------------------------------------------------------------- atomic writing
def _tmp_name(path: Path) -> Path:
    """``.NAME.tmp-PID`` next to ``path``: the pid tells a dead run's leftover from a live
    run's temp (:func:`rmfn_napari.engine.atomic.clean_stale_temps`)."""
    return temp_path_for(path)


#: ``with atomic_path(path) as tmp:`` yields ``_tmp_name(path)``; on success the file is fsynced
#: and renamed onto ``path``; on any exception (KeyboardInterrupt too) the temp is removed and
#: ``path`` is left untouched.
atomic_path = _atomic_path


# --------------------------------------------------------------------------------- maps
def read_map(path):
    """Read a cubic density map.

    The header is validated against the file size first (:func:`read_mrc_header`), and the
    axes are put in ``[z, y, x]`` order from ``mapc/mapr/maps`` (:func:`read_mrc_data`, the
    function napari's reader uses too).

    Parameters
    ----------
    path : str or Path
        MRC file.

    Returns
    -------
    volume : ndarray, float32, shape ``(D, D, D)``, indexed ``[z, y, x]``
    apix : float
        Voxel size in Å (from the header).

    Raises
    ------
    InputError
        Missing/truncated file or bad header, not 3D, non-cubic or odd box, voxel size ≤ 0 or
        anisotropic, NaN/Inf voxels.
    """
    lay = read_mrc_header(path)
    path = lay.path
    if len(lay.shape) != 3:
        raise InputError(f"expected a 3D map, got data of shape {lay.shape}", path)
    apix = lay.voxel[0]
    if not np.all(np.isfinite(lay.voxel)) or apix <= 0:
        raise InputError(f"voxel size in the header is {apix} Å; it must be > 0", path)
    if not np.allclose(lay.voxel, apix, rtol=1e-4):
        raise InputError(f"anisotropic voxel size {lay.voxel} Å", path)
    D = lay.shape[0]
    if lay.shape != (D, D, D):
        raise InputError(f"map is not cubic: shape {lay.shape} (as stored)", path)
    if D % 2:
        raise InputError(f"map box size {D} is odd; an even box is required", path)
    data = np.ascontiguousarray(read_mrc_data(lay), dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputError(f"map has {int((~np.isfinite(data)).sum())} NaN/Inf voxels", path)
    return data, float(apix)


def write_map(path, volume, apix: float) -> Path:
    """Write a ``[z, y, x]`` volume as a float32 MRC with ``voxel_size = apix`` Å, atomically.

    Parameters
    ----------
    path : str or Path
    volume : array_like, shape ``(D, D, D)``
    apix : float
        Voxel size in Å (> 0).

    Returns
    -------
    Path
    """
    import mrcfile

    path = Path(path)
    vol = np.asarray(volume.detach().cpu() if hasattr(volume, "detach") else volume, dtype=np.float32)
    if vol.ndim != 3:
        raise InputError(f"volume must be 3D, got shape {vol.shape}", path)
    if not np.isfinite(apix) or apix <= 0:
        raise InputError(f"voxel size must be > 0 Å, got {apix}", path)
    if not np.all(np.isfinite(vol)):
        raise InputError("refusing to write a volume with NaN/Inf voxels", path)
    with atomic_path(path) as tmp:
        with mrcfile.new(str(tmp), overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(vol))
            mrc.voxel_size = float(apix)
    return path


# ------------------------------------------------------------------------- stack writing
class StackWriter:
    """Stream a float32 image stack ``(n, D, D)`` to an MRCS file chunk by chunk.

    The header is written first (``mrcfile.new_mmap``, image-stack space group, voxel size),
    then chunks are appended with plain file writes, so memory use is one chunk; the
    header statistics (min, max, mean, rms) are accumulated and written on :meth:`close`.
    Use it on a temporary path (see :func:`atomic_path`).
    """

    def __init__(self, path, n: int, box: int, apix: float):
        import mrcfile

        self.path, self.n, self.box = Path(path), int(n), int(box)
        with mrcfile.new_mmap(str(self.path), shape=(self.n, self.box, self.box), mrc_mode=2,
                              overwrite=True) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = float(apix)
            self._offset = int(mrc.header.nbytes + mrc.extended_header.nbytes)
            self._dtype = mrc.data.dtype
        self._f = open(self.path, "r+b")
        self._f.seek(self._offset)
        self.written = 0
        self._min, self._max, self._sum, self._sumsq = np.inf, -np.inf, 0.0, 0.0

    def write(self, images: np.ndarray) -> None:
        """Append images ``(k, D, D)``."""
        images = np.asarray(images, dtype=self._dtype)
        if images.ndim != 3 or images.shape[1:] != (self.box, self.box):
            raise ValueError(f"expected (k, {self.box}, {self.box}) images, got {images.shape}")
        if self.written + len(images) > self.n:
            raise ValueError("more images than the stack was created for")
        self._f.write(np.ascontiguousarray(images).tobytes())
        self.written += len(images)
        flat = images.reshape(-1)
        self._min = min(self._min, float(flat.min()))
        self._max = max(self._max, float(flat.max()))
        self._sum += float(flat.sum(dtype=np.float64))
        self._sumsq += float(np.einsum("i,i->", flat, flat, dtype=np.float64))

    def close(self) -> None:
        """Close the file and write the header statistics."""
        import mrcfile

        self._f.close()
        if self.written != self.n:
            raise ValueError(f"stack {self.path} got {self.written} of {self.n} images")
        count = self.n * self.box * self.box
        mean = self._sum / count
        with mrcfile.mmap(str(self.path), mode="r+", permissive=False) as mrc:
            mrc.header.dmin = self._min
            mrc.header.dmax = self._max
            mrc.header.dmean = mean
            mrc.header.rms = np.sqrt(max(self._sumsq / count - mean * mean, 0.0))


# ----------------------------------------------------------------------------- STAR writing
def write_star(path, blocks: dict) -> Path:
    """Write STAR data blocks (``{name: DataFrame}``) atomically with ``starfile``.

    Floats are written with 6 decimals (``%.6f``).
    """
    import starfile

    path = Path(path)
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
    return path


_STAR_FLOAT = "%.6f"


def star_round(x) -> np.ndarray:
    """Round values exactly as they come back from a STAR file written by :func:`write_star`."""
    x = np.asarray(x, dtype=np.float64)
    return np.char.mod(_STAR_FLOAT, x).astype(np.float64)


# ------------------------------------------------------------------ particle STAR writing
def _relative_name(target: Path, star_dir: Path) -> str:
    try:
        return os.path.relpath(target.resolve(), star_dir.resolve())
    except ValueError:  # different drives on Windows
        return str(target.resolve())


def write_particles_star(path, dataset: ParticleDataset, rotations=None, shifts_A=None,
                         random_subset=None) -> Path:
    """Write a RELION 3.1 STAR for ``dataset`` with (optionally) new poses, atomically.

    All particle columns of the source STAR are kept; image names are rewritten relative to
    the new file's directory; the Euler angles (and origins) are replaced when given.

    Parameters
    ----------
    path : str or Path
        Output STAR file.
    dataset : ParticleDataset or CroppedParticles
        A wrapper with a ``source`` dataset (:class:`~rmfn_napari.cryoem.downsample.CroppedParticles`)
        is written as its source: the STAR describes the original stacks, box and pixel size
        (origins in Å do not depend on the box).
    rotations : array_like ``(n, 3, 3)``, optional
        RELION matrices ``A`` (e.g. estimated poses); converted to rlnAngleRot/Tilt/Psi (°).
    shifts_A : array_like ``(n, 2)``, optional
        rlnOriginXAngst/YAngst in Å.
    random_subset : array_like ``(n,)`` of 1/2, optional
        rlnRandomSubset: the gold-standard half-set of each particle.

    Returns
    -------
    Path
    """
    import pandas as pd

    path = Path(path)
    dataset = getattr(dataset, "source", dataset)
    p = dataset.particles.copy()
    names = []
    for i in range(dataset.n):
        s, k = int(dataset._stack_of[i]), int(dataset._index[i])
        names.append(f"{k + 1:06d}@{_relative_name(dataset._stack_paths[s], path.parent)}")
    p["rlnImageName"] = names
    if rotations is not None:
        R = np.asarray(rotations.detach().cpu() if hasattr(rotations, "detach") else rotations,
                       dtype=np.float64)
        if R.shape != (dataset.n, 3, 3):
            raise ValueError(f"rotations must have shape ({dataset.n}, 3, 3), got {R.shape}")
        rot, tilt, psi = matrix_to_euler(R)
        p["rlnAngleRot"], p["rlnAngleTilt"], p["rlnAnglePsi"] = rot, tilt, psi
    if shifts_A is not None:
        sh = np.asarray(shifts_A, dtype=np.float64).reshape(dataset.n, 2)
        p["rlnOriginXAngst"], p["rlnOriginYAngst"] = sh[:, 0], sh[:, 1]
        p = p.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in p.columns])  # RELION 3.0 px
    if random_subset is not None:
        p["rlnRandomSubset"] = np.asarray(random_subset, dtype=np.int64).reshape(dataset.n)
    if dataset.optics is not None:
        optics = dataset.optics.copy()
        p = p[[c for c in p.columns if c not in optics.columns or c == "rlnOpticsGroup"]]
    else:
        row = {"rlnOpticsGroup": 1, "rlnOpticsGroupName": "opticsGroup1"}
        for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
            if c in p.columns and p[c].nunique() == 1:
                row[c] = float(p[c].iloc[0])
                p = p.drop(columns=c)
        row.update(rlnImagePixelSize=dataset.apix, rlnImageSize=dataset.box,
                   rlnImageDimensionality=2)
        optics = pd.DataFrame([row])
        p["rlnOpticsGroup"] = 1
    return write_star(path, {"optics": optics, "particles": p})
