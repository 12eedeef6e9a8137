"""A run's output folder, read back: the one place that knows its format (no Qt, no napari).

A *run folder* is what ``rmfn reconstruct --out`` / ``rmfn fit-image --out`` (or the napari
widgets) wrote:

- **reconstruct** (:func:`.outputs.write_outputs` and the driver's stage ends):
  ``scale_1.mrc`` .. ``scale_L.mrc`` (1-based, the coarsest first), the backprojected
  ``half_map_1.mrc``, ``half_map_2.mrc``, ``map.mrc``, ``map_postprocessed.mrc``,
  ``mask_auto.mrc`` (:data:`MAP_STEMS`), ``metrics.json``, ``poses.star``, ``checkpoint.pt``,
  ``run.log``, and ``reference.mrc`` when the reference was given as an array;
- **fit-image** (:func:`rmfn_napari.fitting.image_fitting.fit_image`): ``scale_k.tif`` and
  ``spectrum_k.tif`` (centred log-amplitude), ``metrics.json``.

A folder is a run folder when it holds ``metrics.json`` and at least one ``scale_k`` file.
Volumes come back ``[z, y, x]`` with their voxel size in Å per axis from the MRC header;
images as float32 ``[y, x]`` or ``[y, x, channel]``. The napari reader
(:mod:`rmfn_napari._reader`) and "Open run…" (:mod:`rmfn_napari._widgets.open_run`) turn what
:func:`read_run_folder` returns into layers; neither reads a run's files itself.

Every problem with a file is an :class:`~rmfn_napari.errors.InputError` naming it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..mrc import MMAP_THRESHOLD_BYTES, read_mrc_data, read_mrc_header

#: File name of a run's metrics.
METRICS_FILE = "metrics.json"
#: Reconstruct maps other than the scales, by file stem (``<stem>.mrc``), in the order shown.
MAP_STEMS = ("half_map_1", "half_map_2", "map", "map_postprocessed", "mask_auto")
#: The run's own copy of a reference given as an array (working box and voxel size).
REFERENCE_COPY = "reference.mrc"
#: Run kinds, by what their scale files are.
RECONSTRUCT, FIT_IMAGE = "reconstruct", "fit-image"

_SCALE_FILE = re.compile(r"^scale_(\d+)\.(mrc|tif)$")


@dataclass
class Volume:
    """A map read from a run folder: ``data`` ``[z, y, x]`` in its stored dtype (memory-mapped
    when larger than :data:`~rmfn_napari.cryoem.mrc.MMAP_THRESHOLD_BYTES`), ``voxel_size`` in Å
    per axis ``(z, y, x)`` (an unset header size falls back to the x size, then 1 Å)."""

    data: np.ndarray
    voxel_size: tuple[float, float, float]
    path: Path


@dataclass
class RunFolder:
    """Everything a finished run's folder shows, read back (see the module docstring).

    ``scales`` by 1-based scale k: :class:`Volume` (reconstruct) or a float32 image
    (fit-image); ``maps`` by stem (:data:`MAP_STEMS`, those present); ``spectra`` by k
    (fit-image); ``reference``: the map the run's FSC was computed against, at the run's box
    (:func:`reference_map`), or None; ``downsample``: original pixels per training pixel
    (fit-image, :func:`downsample_factor`)."""

    folder: Path
    kind: str
    metrics: dict
    scales: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict)
    spectra: dict = field(default_factory=dict)
    reference: Volume | None = None
    downsample: float = 1.0


def scale_files(folder) -> dict[int, Path]:
    """``scale_k.mrc`` / ``scale_k.tif`` of a folder by 1-based k (a folder with both kinds:
    the MRC maps); empty for a folder that is not there."""
    found: dict[str, dict[int, Path]] = {"mrc": {}, "tif": {}}
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    for path in folder.iterdir():
        m = _SCALE_FILE.match(path.name)
        if m and path.is_file():
            found[m.group(2)][int(m.group(1))] = path
    return dict(sorted((found["mrc"] or found["tif"]).items()))


def is_run_folder(folder) -> bool:
    """Whether ``folder`` is a run's output folder: ``metrics.json`` and a ``scale_k`` file."""
    folder = Path(folder)
    return folder.is_dir() and (folder / METRICS_FILE).is_file() and bool(scale_files(folder))


def run_kind(folder) -> str:
    """:data:`RECONSTRUCT` (MRC maps) or :data:`FIT_IMAGE` (TIFF images)."""
    files = scale_files(folder)
    return FIT_IMAGE if files and next(iter(files.values())).suffix == ".tif" else RECONSTRUCT


def read_run_metrics(folder) -> dict:
    """``metrics.json`` of a run folder as a dict; :class:`InputError` naming the file when it
    is missing, unreadable or not a JSON object."""
    path = Path(folder) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("no such file: not a finished run's folder", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read it ({exc})", path) from None
    try:
        metrics = json.loads(text)
    except ValueError as exc:
        raise InputError(f"not valid JSON ({exc})", path) from None
    if not isinstance(metrics, dict):
        raise InputError(f"expected a JSON object, found {type(metrics).__name__}", path)
    return metrics


def downsample_factor(metrics: dict) -> float:
    """Original pixels per training pixel of a fit-image run (``metrics.json``'s
    ``eval_shape`` / ``train_shape``; 1 when it does not say)."""
    try:
        eval_h, train_h = float(metrics["eval_shape"][0]), float(metrics["train_shape"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return 1.0
    return eval_h / train_h if train_h > 0 and eval_h > 0 else 1.0


def read_volume(path, mmap_bytes: int | None = MMAP_THRESHOLD_BYTES) -> Volume:
    """One MRC map of a run folder (the header checked against the file size first, the axes
    in ``[z, y, x]`` order from ``mapc/mapr/maps``); :class:`InputError` naming the file."""
    lay = read_mrc_header(Path(path))
    data = read_mrc_data(lay, stack=False, mmap_bytes=mmap_bytes)
    vx, vy, vz = lay.voxel
    x = vx if vx > 0 else 1.0
    return Volume(data, (vz if vz > 0 else x, vy if vy > 0 else x, x), Path(path))


def read_image(path) -> np.ndarray:
    """One TIFF image of a fit-image run as float32; :class:`InputError` naming the file."""
    import tifffile

    try:
        return np.asarray(tifffile.imread(path), dtype=np.float32)
    except Exception as exc:  # tifffile's many error types -> one line
        raise InputError(f"cannot read the TIFF ({type(exc).__name__}: {exc})", path) from None


def reference_map(metrics: dict, folder=None) -> Volume | None:
    """The map the run's FSC was computed against (``metrics.json``'s ``reference``, a path),
    at the run's box (``box``) and voxel size (``apix``, Å): Fourier-cropped like the particles
    when it is at their original box (``source_box``). The run's own :data:`REFERENCE_COPY` in
    ``folder`` stands in when the recorded path is gone (the folder was moved). None when the
    run had no reference, it is gone or unreadable, or its size fits neither box (it changed
    since)."""
    path = metrics.get("reference")
    box, apix = metrics.get("box"), metrics.get("apix")
    kept = Path(folder) / REFERENCE_COPY if folder is not None else None
    if path and not Path(path).is_file() and kept is not None and kept.is_file() \
            and Path(path).name == kept.name:
        path = str(kept)  # the run's own copy, in a folder moved since
    if not path or not box or not apix or not Path(path).is_file():
        return None
    from ..io import read_map

    try:
        vol, _voxel = read_map(path)
    except (InputError, OSError, ValueError):
        return None
    box = int(box)
    if vol.shape == (int(metrics.get("source_box") or box),) * 3 and vol.shape[0] != box:
        from ..downsample import fourier_crop_volume  # torch: only for a reference to crop

        vol = fourier_crop_volume(vol, box)
    if vol.shape != (box,) * 3:
        return None
    return Volume(np.asarray(vol, np.float32), (float(apix),) * 3, Path(path))


def read_run_folder(folder, metrics: dict | None = None) -> RunFolder:
    """Read a run folder's maps (reconstruct) or images and spectra (fit-image), its metrics
    and its reference (``metrics`` is read from the folder when not given).

    Raises
    ------
    InputError
        When ``folder`` is not a run folder, or a map, image or (fit-image: it places the
        images) ``metrics.json`` cannot be read; the message names the file. A reconstruct
        run's unreadable ``metrics.json`` only costs its reference.
    """
    folder = Path(folder)
    if not is_run_folder(folder):
        raise InputError("not a run folder (expected metrics.json and scale_1.mrc or "
                         "scale_1.tif)", folder)
    kind = run_kind(folder)
    if kind == FIT_IMAGE:
        metrics = read_run_metrics(folder) if metrics is None else metrics
        run = RunFolder(folder, kind, metrics, downsample=downsample_factor(metrics))
        for k, path in scale_files(folder).items():
            run.scales[k] = read_image(path)
            spectrum = folder / f"spectrum_{k}.tif"
            if spectrum.is_file():
                run.spectra[k] = read_image(spectrum)
        return run
    if metrics is None:
        try:
            metrics = read_run_metrics(folder)
        except InputError:
            metrics = {}  # the maps do not need it, only the reference does
    run = RunFolder(folder, kind, metrics)
    run.scales = {k: read_volume(path) for k, path in scale_files(folder).items()}
    run.maps = {stem: read_volume(folder / f"{stem}.mrc") for stem in MAP_STEMS
                if (folder / f"{stem}.mrc").is_file()}
    run.reference = reference_map(metrics, folder)
    return run


__all__ = ["FIT_IMAGE", "MAP_STEMS", "METRICS_FILE", "RECONSTRUCT", "REFERENCE_COPY", "RunFolder",
           "Volume", "downsample_factor", "is_run_folder", "read_image", "read_run_folder",
           "read_run_metrics", "read_volume", "reference_map", "run_kind", "scale_files"]
