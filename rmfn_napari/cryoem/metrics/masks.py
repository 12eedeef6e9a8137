"""Real-space masks for masked FSC: a soft sphere and a loose automatic mask.

Volumes are ``[z, y, x]`` on a cubic box of even size D; the centre is the voxel with index
``D/2`` on every axis (DESIGN.md §2). Masks are float32 in ``[0, 1]``.

Both masks have a raised-cosine ("soft") edge: a sharp mask edge convolves the maps' Fourier
transforms with a kernel that has long tails, which spreads correlated low-resolution signal
into high-resolution shells and inflates a masked FSC (see
:mod:`rmfn_napari.cryoem.metrics.gold_standard` for the correction).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._common import _check_volume, _gaussian_lowpass

__all__ = ["soft_sphere_mask", "auto_mask"]


def _raised_cosine(dist, inner: float, width: float) -> np.ndarray:
    """1 for ``dist <= inner``, 0 for ``dist >= inner + width``, ``½(1 + cos(π (dist − inner)
    / width))`` in between (0.5 at ``inner + width/2``); a hard step when ``width <= 0``."""
    if width <= 0:
        return (dist <= inner).astype(np.float32)
    m = np.clip((inner + width - dist) / width, 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * m)).astype(np.float32)


def soft_sphere_mask(box: int, radius_px: float, edge_px: float) -> np.ndarray:
    """A sphere centred at index ``D/2`` with a raised-cosine edge.

    Parameters
    ----------
    box : int
        Box size D (voxels).
    radius_px : float
        Radius (voxels) of the region where the mask is exactly 1.
    edge_px : float
        Width (voxels) of the soft edge: the mask falls from 1 at ``radius_px`` to 0 at
        ``radius_px + edge_px`` as ``½(1 + cos(π (r − radius_px) / edge_px))``, so it is 0.5 at
        ``radius_px + edge_px / 2``. ``edge_px = 0`` gives a hard binary sphere (``r <= radius``).

    Returns
    -------
    ndarray, float32, shape (D, D, D)
        ``r`` is the distance of a voxel from the centre voxel ``(D/2, D/2, D/2)``.
    """
    box = int(box)
    if box <= 0:
        raise ValueError("box must be positive")
    if radius_px < 0 or edge_px < 0:
        raise ValueError("radius_px and edge_px must be >= 0")
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    return _raised_cosine(r, float(radius_px), float(edge_px))


def auto_mask(volume, apix: float, lowpass_A: float | None = 15.0, threshold: float | None = None,
              dilate_px: float = 3, edge_px: float = 6) -> np.ndarray:
    """A loose automatic mask around the density, as RELION's ``relion_mask_create`` makes it.

    Steps: (1) low-pass the map with a Gaussian in Fourier space whose amplitude is 0.5 at
    ``lowpass_A`` (Å), so noise and fine detail do not decide the envelope; (2) threshold it to
    a binary mask; (3) dilate the binary mask by ``dilate_px`` voxels with a spherical
    structuring element; (4) add a raised-cosine soft edge ``edge_px`` voxels wide.

    Steps 3 and 4 use one Euclidean distance transform ``d`` (distance of each voxel to the
    nearest voxel of the binary mask): ``d <= dilate_px`` is exactly the dilation by the
    discrete ball ``{v : |v| <= dilate_px}``, and the mask is ``½(1 + cos(π (d − dilate_px) /
    edge_px))`` for ``dilate_px < d < dilate_px + edge_px`` and 0 beyond (as RELION's
    ``--extend_inimask`` and ``--width_soft_edge``).

    Parameters
    ----------
    volume : array_like, shape (D, D, D)
        The map, ``[z, y, x]`` (e.g. the average of the two half-maps), protein positive.
    apix : float
        Voxel size in Å.
    lowpass_A : float or None, optional
        Low-pass resolution in Å (RELION's ``--lowpass``; 15 Å is its usual choice).
        ``None`` skips the filter.
    threshold : float or None, optional
        Binarisation threshold on the low-passed map (RELION's ``--ini_threshold``). Default
        (``None``): ``median + 0.1·(max − median)`` of the low-passed map — 10% of the way from
        the solvent level (the median: a map is mostly solvent) to the highest density, i.e.
        ``0.1·max`` for a map whose solvent is at 0. Loose on purpose: the dilation and the
        soft edge must not cut the signal, and a mask that is too loose only costs a little
        resolution, never a spurious one.
    dilate_px : float, optional
        Dilation radius in voxels (RELION's ``--extend_inimask``).
    edge_px : float, optional
        Soft-edge width in voxels (RELION's ``--width_soft_edge``); 0 gives a binary mask.

    Returns
    -------
    ndarray, float32, shape (D, D, D), values in ``[0, 1]``
        All zeros when nothing exceeds the threshold.
    """
    vol = _check_volume(volume).astype(np.float32)
    if apix <= 0:
        raise ValueError("apix must be positive")
    if dilate_px < 0 or edge_px < 0:
        raise ValueError("dilate_px and edge_px must be >= 0")
    box = vol.shape[0]
    low = vol
    if lowpass_A is not None:
        if lowpass_A <= 0:
            raise ValueError("lowpass_A must be positive")
        low = _gaussian_lowpass(vol, box * apix / float(lowpass_A))
    if threshold is None:
        med = float(np.median(low))
        threshold = med + 0.1 * (float(low.max()) - med)
    binary = low > threshold
    if not binary.any():
        return np.zeros(vol.shape, dtype=np.float32)
    dist = ndimage.distance_transform_edt(~binary)
    return _raised_cosine(dist, float(dilate_px), float(edge_px))
