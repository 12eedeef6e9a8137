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


def _check_destination(path: Path) -> None:
    """InputError naming ``path`` when it cannot be a file: it is a folder, or one of the folders
    above it is a file (``a.txt/map.mrc``)."""
    if path.is_dir():
        raise InputError("is a folder; give a file name (e.g. map.mrc inside it)", path=path)
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise InputError(f"cannot write there: {anc} is a file, not a folder", path=path)


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
        One line naming the file, nothing written: the data are RGB, not 2D/3D, not numbers,
        or hold NaN/Inf; the voxel size (``scale``) is not > 0; the path is a folder or lies
        under a file; the file cannot be written (a full disk). napari shows a writer's exception
        as an error notification (an empty list would only say "save failed").
    """
    import mrcfile

    meta = dict(meta or {})
    path = Path(path)
    if path.is_dir():  # a folder (whatever its name): never write a file beside it instead
        raise InputError("is a folder; give a file name (e.g. map.mrc inside it)", path=path)
    if path.suffix.lower() not in EXTENSIONS:
        path = path.with_name(path.name + ".mrc")
    if meta.get("multiscale"):
        data = data[0]
    if meta.get("rgb"):
        raise InputError("an RGB image cannot be written as MRC; convert it to greyscale first",
                         path=path)
    _check_destination(path)
    if np.iscomplexobj(data):
        raise InputError("the layer's data are complex; write its real part or its amplitude "
                         "(a float layer) instead", path=path)
    try:
        arr = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError) as exc:  # strings, objects: not numbers
        raise InputError(f"the layer's data are not numbers ({type(exc).__name__}: {exc})", path=path) from None
    if arr.ndim not in (2, 3):
        raise InputError(f"MRC needs 2D or 3D data, got shape {arr.shape}", path=path)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise InputError(f"the layer has {bad} NaN/Inf values (of {arr.size}); nothing written", path=path)

    scale = [float(s) for s in (meta.get("scale") or [1.0] * arr.ndim)][-arr.ndim:]
    if not all(np.isfinite(s) and s > 0 for s in scale):
        raise InputError(f"voxel size must be > 0 Å on every axis, got the layer's scale "
                         f"{tuple(scale)}; nothing written", path=path)
    vx = scale[-1]
    vy = scale[-2]
    vz = scale[-3] if arr.ndim == 3 else vx
    translate = [float(t) for t in (meta.get("translate") or [0.0] * arr.ndim)][-arr.ndim:]
    if not all(np.isfinite(translate)):
        raise InputError(f"the layer's translate {tuple(translate)} is not finite; nothing written", path=path)
    origin = (translate[-1], translate[-2], translate[-3] if arr.ndim == 3 else 0.0)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder {path.parent} ({exc.strerror or exc})", path=path) from None
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
