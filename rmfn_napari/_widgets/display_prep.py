"""Snapshots made ready for display in the worker thread, so the GUI thread only assigns arrays.

:func:`prepare_for_display` runs in the run's worker thread (see :func:`.runner.drive`): it turns
an engine :class:`~rmfn_napari.engine.events.ScaleSnapshot` or
:class:`~rmfn_napari.engine.events.VolumeSnapshot` gets a ``display`` attribute, a
:class:`SnapshotDisplay` (the event is otherwise unchanged, so every consumer still works; it is
a fresh object per yield, owned by the receiver) whose :class:`DisplayArray` s hold float32
C-contiguous data no larger than the display needs (block-averaged above :data:`MAX_DISPLAY_2D`
px per side for images, :data:`MAX_DISPLAY_3D` for volumes), their contrast limits, and where
their pixel centres sit on the data's grid.

Grids (data units): images are in *original-image pixels*. A fit-image snapshot's
``voxel_size`` is its downsampling factor f: training pixel j is the mean of original pixels
f*j .. f*j+f-1, so its centre sits at ``f*j + (f-1)/2``. Volumes are in Å, voxel k at
``k * voxel_size``. This module never imports Qt or napari.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..engine.events import RunStarted, ScaleSnapshot, VolumeSnapshot

#: Largest side (px) of an image sent to the viewer; larger ones are block-averaged.
MAX_DISPLAY_2D = 1024
#: Largest side (voxels) of a volume sent to the viewer; larger ones are block-averaged.
MAX_DISPLAY_3D = 128


@dataclass
class DisplayArray:
    """One array ready for a napari image layer.

    Attributes
    ----------
    data : ndarray, float32, C-contiguous; RGB images ``(H, W, 3)`` clipped to [0, 1]
    contrast_limits : (low, high), low < high
    pixel : float
        Size of one display pixel/voxel in data units (original pixels, or Å).
    offset : float
        Position of the first pixel's centre along every spatial axis, in data units.
    rgb : bool
    """

    data: np.ndarray
    contrast_limits: tuple[float, float]
    pixel: float
    offset: float
    rgb: bool = False

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the RGB channel axis."""
        return tuple(self.data.shape[:-1] if self.rgb else self.data.shape)


@dataclass
class SnapshotDisplay:
    """What a snapshot looks like on screen: ``image`` (a scale's image or volume, or a
    backprojected map) and, for scale snapshots, ``spectrum``; ``n_scales`` is the run's
    number of scales (network layers), 0 when unknown."""

    image: DisplayArray
    spectrum: DisplayArray | None = None
    n_scales: int = 0


def is_rgb(data: np.ndarray) -> bool:
    """An ``(H, W, 3|4)`` colour image rather than a volume (volumes are cubic boxes)."""
    return is_rgb_shape(np.shape(data))


def is_rgb_shape(shape) -> bool:
    """:func:`is_rgb` of an array of ``shape``."""
    return len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4


def display_factor(spatial_shape, max_side: int) -> int:
    """Integer block size that brings the largest side to at most ``max_side``."""
    return max(1, math.ceil(max(spatial_shape) / max_side)) if spatial_shape else 1


def block_mean(data: np.ndarray, factor: int, spatial_ndim: int) -> np.ndarray:
    """Mean over ``factor``-sided blocks of the first ``spatial_ndim`` axes (edges cropped)."""
    if factor <= 1:
        return data
    crop = tuple(slice(0, (n // factor) * factor) for n in data.shape[:spatial_ndim])
    data = data[crop]
    shape: list[int] = []
    for n in data.shape[:spatial_ndim]:
        shape += [n // factor, factor]
    shape += list(data.shape[spatial_ndim:])
    return data.reshape(shape).mean(axis=tuple(range(1, 2 * spatial_ndim, 2)))


def contrast_of(data: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values; a flat or empty array gets (v, v + 1)."""
    finite = data[np.isfinite(data)] if not np.all(np.isfinite(data)) else data
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def display_grid(spatial_shape, pixel: float, offset: float) -> tuple[int, float, float]:
    """(block size, display pixel, display first centre) of data of ``spatial_shape`` on a
    grid of ``pixel`` data units whose first centre is at ``offset``: a block of f pixels is
    one display pixel, centred at the mean of its pixels' centres."""
    spatial_shape = tuple(spatial_shape)
    factor = display_factor(spatial_shape, MAX_DISPLAY_2D if len(spatial_shape) == 2 else MAX_DISPLAY_3D)
    return factor, pixel * factor, offset + (factor - 1) / 2 * pixel


def display_array(data, pixel: float, offset: float, *, rgb: bool = False) -> DisplayArray:
    """``data`` (one image, or volume, on a grid of ``pixel`` data units whose first centre is
    at ``offset``) as a :class:`DisplayArray`, block-averaged to the display size."""
    arr = np.asarray(data, dtype=np.float32)
    spatial = arr.ndim - 1 if rgb else arr.ndim
    factor, pixel, offset = display_grid(arr.shape[:spatial], pixel, offset)
    if factor > 1:
        arr = block_mean(arr, factor, spatial)
    if rgb:
        arr = np.clip(arr[..., :3], 0.0, 1.0)
        limits = (0.0, 1.0)
    else:
        limits = contrast_of(arr)
    return DisplayArray(np.ascontiguousarray(arr, dtype=np.float32), limits, float(pixel),
                        float(offset), rgb)


def _grid_of(shape, voxel_size: float) -> tuple[float, float]:
    """(pixel, first centre) of snapshot data of ``shape``: images in original pixels (a
    training pixel of f originals is centred at (f - 1)/2), volumes in Å from 0."""
    pixel = float(voxel_size)
    image = len(shape) == 2 or is_rgb_shape(shape)
    return pixel, ((pixel - 1.0) / 2.0 if image else 0.0)


def display_of(snap) -> SnapshotDisplay | None:
    """The :class:`SnapshotDisplay` attached to ``snap`` (None when not prepared)."""
    return getattr(snap, "display", None)


def prepare_scale_snapshot(snap: ScaleSnapshot, n_scales: int = 0) -> ScaleSnapshot:
    """Attach ``snap.display`` (image and spectrum, see the module doc) unless already there;
    ``n_scales`` the run's number of scales (0: unknown). Returns ``snap``."""
    if display_of(snap) is None:
        pixel, offset = _grid_of(np.shape(snap.data), snap.voxel_size)
        rgb = is_rgb(np.asarray(snap.data))
        snap.display = SnapshotDisplay(display_array(snap.data, pixel, offset, rgb=rgb),
                                       display_array(snap.spectrum, pixel, offset), int(n_scales))
    return snap


def prepare_volume_snapshot(snap: VolumeSnapshot) -> VolumeSnapshot:
    """Attach ``snap.display`` (the map, grid in Å, first voxel at 0) unless already there.
    Returns ``snap``."""
    if display_of(snap) is None:
        snap.display = SnapshotDisplay(display_array(snap.data, float(snap.voxel_size), 0.0))
    return snap


def placeholder_display(ev: RunStarted) -> SnapshotDisplay | None:
    """What the run's snapshots will look like on screen, filled with zeros: image and
    spectrum at their display shape and placement (from ``ev.snapshot_shape`` and
    ``snapshot_voxel_size``, as :func:`prepare_scale_snapshot` would make them), so layers can
    be made at their final shape before the run trains. None when the event does not say."""
    shape = tuple(int(n) for n in (ev.snapshot_shape or ()))
    if len(shape) not in (2, 3):
        return None
    rgb = is_rgb_shape(shape)
    spatial = shape[:-1] if rgb else shape
    factor, pixel, offset = display_grid(spatial, *_grid_of(shape, ev.snapshot_voxel_size))
    display = tuple(n // factor for n in spatial)
    image = np.zeros(display + ((3,) if rgb else ()), np.float32)
    return SnapshotDisplay(DisplayArray(image, (0.0, 1.0), pixel, offset, rgb),
                           DisplayArray(np.zeros(display, np.float32), (0.0, 1.0), pixel, offset),
                           n_scales_of(ev))


def n_scales_of(ev: RunStarted) -> int:
    """The number of scales (network layers) a run has: ``n_layers`` (reconstruct, also in a
    full-scale run's single stage), the schedule's length (fit-image), else its stages."""
    config = ev.config or {}
    if config.get("n_layers"):
        return int(config["n_layers"])
    if config.get("schedule"):
        return len(config["schedule"])
    return int(ev.n_stages)


class DisplayPreparer:
    """Worker-side: makes a run's snapshots ready for display (:meth:`__call__` on each event
    in order); remembers the run's number of scales from its ``RunStarted``."""

    def __init__(self):
        self.n_scales = 0

    def __call__(self, ev):
        """A snapshot made ready for display; any other event unchanged."""
        if isinstance(ev, RunStarted):
            self.n_scales = n_scales_of(ev)
        elif isinstance(ev, ScaleSnapshot):
            return prepare_scale_snapshot(ev, self.n_scales)
        elif isinstance(ev, VolumeSnapshot):
            return prepare_volume_snapshot(ev)
        return ev


def prepare_for_display(ev):
    """A snapshot made ready for display (run's number of scales unknown); other events unchanged."""
    return DisplayPreparer()(ev)


__all__ = ["DisplayArray", "DisplayPreparer", "MAX_DISPLAY_2D", "MAX_DISPLAY_3D", "SnapshotDisplay",
           "block_mean", "display_grid", "display_of", "n_scales_of", "display_array",
           "placeholder_display", "prepare_for_display",
           "prepare_scale_snapshot", "prepare_volume_snapshot"]
