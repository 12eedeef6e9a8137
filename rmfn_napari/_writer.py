"""npe2 writer: a napari image layer to a float32 MRC file that keeps the voxel size.

The layer's ``scale`` (Å per voxel, napari axis order ``[z, y, x]``) becomes the MRC header's
voxel size, and its ``translate`` (Å) the header origin, so that reading the file back with
:mod:`rmfn_napari._reader` gives the same layer geometry. The file is written atomically
(:func:`rmfn_napari.engine.atomic.atomic_path`: a temporary file in the target directory,
fsynced and moved into place), so a crash or a full disk never leaves a half-written file
under the requested name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .engine.atomic import atomic_path
from .errors import InputError

#: Extensions this writer produces; another suffix gets ``.mrc`` appended.
EXTENSIONS = (".mrc", ".map", ".mrcs")


def write_mrc(path: str | os.PathLike, data: Any, meta: dict) -> list[str]:
    """Write one image layer to ``path`` as a float32 MRC file.

    Parameters
    ----------
    path : str or PathLike
        Destination. ``.mrc`` is appended unless it ends in ``.mrc``, ``.map`` or ``.mrcs``.
    data : array-like
        The layer data, 2D ``[y, x]`` or 3D ``[z, y, x]`` (numpy, dask, memmap...). For a
        multiscale layer the first (full-resolution) level is written.
    meta : dict
        The layer attributes napari passes (``layer._get_state()``). Used: ``scale`` (Å per
        voxel; the last axis gives the voxel size, anisotropic sizes are kept per axis),
        ``translate`` (Å, written as the header origin), ``rgb``, ``multiscale``.

    Returns
    -------
    list of str
        ``[path]`` of the file written.

    Raises
    ------
    InputError
        If the data is RGB, not 2D/3D, or the file cannot be written (the message names it).
    """
    import mrcfile

    meta = dict(meta or {})
    path = Path(path)
    if path.suffix.lower() not in EXTENSIONS:
        path = path.with_name(path.name + ".mrc")
    if meta.get("multiscale"):
        data = data[0]
    if meta.get("rgb"):
        raise InputError("an RGB image cannot be written as MRC; convert it to greyscale first",
                         path=path)
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise InputError(f"MRC needs 2D or 3D data, got shape {arr.shape}", path=path)

    scale = [float(s) for s in (meta.get("scale") or [1.0] * arr.ndim)][-arr.ndim:]
    vx = scale[-1]
    vy = scale[-2]
    vz = scale[-3] if arr.ndim == 3 else vx
    translate = [float(t) for t in (meta.get("translate") or [0.0] * arr.ndim)][-arr.ndim:]
    origin = (translate[-1], translate[-2], translate[-3] if arr.ndim == 3 else 0.0)

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # mrcfile creates the temp with open(): the usual 0666 & ~umask (no chmod needed)
        with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(arr))
            mrc.voxel_size = (vx, vy, vz)
            mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = origin
            mrc.update_header_stats()
    except OSError as exc:
        raise InputError(f"could not write MRC file ({exc})", path=path) from None
    return [str(path)]
