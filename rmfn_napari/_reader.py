"""npe2 reader: MRC/MRCS/MAP volumes, RELION ``.star`` particle stacks and finished runs' output
folders as napari image layers.

Conventions (DESIGN.md §2): arrays are indexed ``[z, y, x]``; the MRC header's voxel size (Å)
becomes the layer's ``scale``, so a volume of voxel size ``apix`` gets ``scale=(apix,)*3`` and
napari's world coordinates are in Å. A particle stack (``.mrcs`` or ``.star``) is a 3D layer
``(n, D, D)`` whose first axis is the particle index (scale 1) and whose ``y, x`` axes carry the
pixel size.

Large files are not read into memory: an MRC file is memory-mapped when it is bigger than
:data:`MMAP_THRESHOLD_BYTES`, and a ``.star`` stack is a dask array whose chunks are read on
demand through :func:`rmfn_napari.cryoem.particles.read_particles`.

Every problem with a file is raised as :class:`rmfn_napari.errors.InputError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .cryoem.mrc import MMAP_THRESHOLD_BYTES  # MRC files larger than this are memory-mapped
from .errors import InputError

#: Extensions read as MRC (volumes, images or image stacks).
MRC_EXTENSIONS = (".mrc", ".mrcs", ".map")
#: Extensions read as RELION particle STAR files.
STAR_EXTENSIONS = (".star",)
#: Number of particle images per lazily read chunk of a ``.star`` stack.
STAR_CHUNK = 256

LayerData = tuple[Any, dict, str]


def get_reader(path: str | os.PathLike | list) -> Callable[[Any], list[LayerData]] | None:
    """Return a reader function for ``path`` if this plugin can read it, else ``None``.

    Parameters
    ----------
    path : str, PathLike or list of them
        A file path (or a list of paths, all of which must have a supported extension), or
        a run's output folder (or a list of them).

    Returns
    -------
    callable or None
        :func:`read_layers` when every path ends in ``.mrc``, ``.mrcs``, ``.map`` or ``.star``
        (case-insensitive); :func:`read_run_folders` when every path is a run folder
        (``metrics.json`` and ``scale_k.mrc`` or ``scale_k.tif``); ``None`` otherwise (a folder
        that is not a run, another extension), so napari can try another reader.
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths:
        return None
    if all(Path(str(p)).is_dir() for p in paths):
        from .cryoem.reconstruct.run_folder import is_run_folder  # the run folder's format

        return read_run_folders if all(is_run_folder(p) for p in paths) else None
    for p in paths:
        if Path(str(p)).suffix.lower() not in MRC_EXTENSIONS + STAR_EXTENSIONS:
            return None
    return read_layers


def read_run_folders(path: str | os.PathLike | list) -> list[LayerData]:
    """Read one or several finished runs' output folders (``rmfn reconstruct/fit-image
    --out``) into layer data: their maps (or images), read by
    :mod:`rmfn_napari.cryoem.reconstruct.run_folder`, named and placed as the live run shows
    them (:func:`rmfn_napari._widgets.open_run.run_layer_data`, as "Open run…" does).

    Raises
    ------
    InputError
        If a map, image or ``metrics.json`` cannot be read (the message names the file).
    """
    from ._reader_preference import prefer_rmfn_reader
    from ._widgets.open_run import run_layer_data

    paths = path if isinstance(path, (list, tuple)) else [path]
    layers = [layer for p in paths for layer in run_layer_data(p)]
    for p in paths:  # read once with rMFN (chosen in napari's dialog): rMFN from now on
        prefer_rmfn_reader(p)
    return layers


def read_layers(path: str | os.PathLike | list) -> list[LayerData]:
    """Read one or several supported files into napari layer data tuples.

    Parameters
    ----------
    path : str, PathLike or list of them

    Returns
    -------
    list of (data, kwargs, "image")
        One image layer per file, with ``scale`` in Å, ``name`` from the file name and
        ``metadata = {"voxel_size": apix, "path": str(path), ...}``.

    Raises
    ------
    InputError
        If a file is missing, truncated or not a valid MRC/STAR file (the message names it).
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    layers = []
    for p in paths:
        suffix = Path(str(p)).suffix.lower()
        if suffix in STAR_EXTENSIONS:
            layers.append(read_star_stack(p))
        elif suffix in MRC_EXTENSIONS:
            layers.append(read_mrc(p))
        else:
            raise InputError(
                f"unsupported extension {suffix!r} (expected one of "
                f"{', '.join(MRC_EXTENSIONS + STAR_EXTENSIONS)})", path=p)
    return layers


# ----------------------------------------------------------------------------------------- MRC
def read_mrc(path: str | os.PathLike) -> LayerData:
    """Read an MRC/MRCS/MAP file as an image layer data tuple.

    The header is validated and the data read by the engine's own functions
    (:func:`rmfn_napari.cryoem.io.read_mrc_header`, :func:`~rmfn_napari.cryoem.io.read_mrc_data`,
    as :func:`~rmfn_napari.cryoem.io.read_map` does), so a map with a non-standard axis order
    (``mapc/mapr/maps``) is shown in the same ``[z, y, x]`` orientation the engine uses.

    Parameters
    ----------
    path : str or PathLike
        The file. ``.mrcs`` files, and MRC files whose header says "image stack"
        (space group 0 with more than one section), are read as particle stacks.

    Returns
    -------
    (data, kwargs, "image")
        ``data`` indexed ``[z, y, x]`` in its stored dtype (memory-mapped when large).
        ``kwargs`` holds ``name``, ``scale`` (Å per voxel, ``(1, apix, apix)`` for a stack),
        ``translate`` (the header origin in Å, when non-zero) and ``metadata`` with
        ``voxel_size`` (Å, the x voxel size), ``path``, ``is_stack``.

    Raises
    ------
    InputError
        If the file does not exist, or its header is invalid or does not fit the file.
    """
    from .cryoem.io import read_mrc_data, read_mrc_header  # lazy: keeps napari start-up light

    path = Path(path)
    lay = read_mrc_header(path)  # checked against the file size before any allocation
    vx, vy, vz = lay.voxel
    # sections are images for .mrcs, or space group 0 when the axis order allows it (maps = 3)
    is_stack = len(lay.shape) == 3 and (
        path.suffix.lower() == ".mrcs" or (lay.ispg == 0 and lay.axis_order[2] == 3))
    data = read_mrc_data(lay, stack=is_stack, mmap_bytes=MMAP_THRESHOLD_BYTES)

    apix = vx if vx > 0 else 1.0

    def _v(v: float) -> float:  # an unset (0) header voxel size falls back to the x size
        return v if v > 0 else apix

    if data.ndim == 2:
        scale = (_v(vy), apix)
    elif data.ndim == 3:
        scale = (1.0, _v(vy), apix) if is_stack else (_v(vz), _v(vy), apix)
    else:  # a volume stack (4D): the leading axes are indices
        scale = (1.0,) * (data.ndim - 3) + (_v(vz), _v(vy), apix)

    kwargs: dict[str, Any] = {
        "name": path.stem,
        "scale": scale,
        "metadata": {
            "voxel_size": apix,
            "path": str(path),
            "is_stack": bool(is_stack),
            "voxel_size_in_header": bool(vx > 0),
        },
    }
    origin = np.array(lay.origin[::-1])  # [z, y, x], Å
    if data.ndim == 3 and not is_stack and np.any(origin != 0) and np.all(np.isfinite(origin)):
        kwargs["translate"] = tuple(origin)
    if is_stack and data.shape[0] > 1:
        kwargs["contrast_limits"] = _contrast_limits(np.asarray(data[: min(len(data), 64)]))
    return data, kwargs, "image"


# ---------------------------------------------------------------------------------------- STAR
def read_star_stack(path: str | os.PathLike) -> LayerData:
    """Read the particle images referenced by a RELION ``.star`` file as a lazy 3D layer.

    The images are read through :func:`rmfn_napari.cryoem.particles.read_particles`, in chunks of
    :data:`STAR_CHUNK` particles, only when napari displays them (a dask array).

    Parameters
    ----------
    path : str or PathLike
        A RELION particle STAR file (``data_particles`` with ``rlnImageName``).

    Returns
    -------
    (data, kwargs, "image")
        ``data``: dask array ``(n, D, D)`` float32; ``kwargs`` with ``scale=(1, apix, apix)``,
        ``name`` from the file, and ``metadata`` with ``voxel_size``, ``path``, ``n_particles``,
        ``box``, ``is_stack=True``.

    Raises
    ------
    InputError
        If the file is missing, or is not a particle STAR file whose images can be read.
    """
    import dask
    import dask.array as da

    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path=path)

    from .cryoem.particles import read_particles  # lazy: keeps napari start-up light
    try:
        particles = read_particles(path)
    except InputError:
        raise
    except Exception as exc:  # starfile/pandas/mrcfile errors → one clear line
        raise InputError(f"could not read particles from STAR file ({type(exc).__name__}: {exc})",
                         path=path) from None

    n, box, apix = int(particles.n), int(particles.box), float(particles.apix)
    if n <= 0:
        raise InputError("STAR file lists no particles", path=path)

    def _chunk(start: int, stop: int) -> np.ndarray:
        return np.asarray(particles.images(np.arange(start, stop)), dtype=np.float32)

    blocks = [
        da.from_delayed(dask.delayed(_chunk)(s, min(s + STAR_CHUNK, n)),
                        shape=(min(s + STAR_CHUNK, n) - s, box, box), dtype=np.float32)
        for s in range(0, n, STAR_CHUNK)
    ]
    data = blocks[0] if len(blocks) == 1 else da.concatenate(blocks, axis=0)
    first = _chunk(0, min(n, 64))  # also proves the image files are readable now, not later
    kwargs = {
        "name": path.stem,
        "scale": (1.0, apix, apix),
        "contrast_limits": _contrast_limits(first),
        "metadata": {
            "voxel_size": apix,
            "path": str(path),
            "n_particles": n,
            "box": box,
            "is_stack": True,
        },
    }
    return data, kwargs, "image"


def _contrast_limits(sample: np.ndarray) -> tuple[float, float]:
    """Robust display range (0.5–99.5 percentiles) of a sample of images."""
    sample = np.asarray(sample, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(sample[np.isfinite(sample)], [0.5, 99.5]))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi
