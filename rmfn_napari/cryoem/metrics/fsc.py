"""Fourier shell correlation and the resolution read from it — the one place where the FSC
conventions of the package are fixed (DESIGN.md §2).

* Shells are 1 voxel wide: a voxel of the centred Fourier grid with frequency vector ``k``
  (cycles/box) belongs to shell ``round(|k|)``; shells go from 0 (DC) to Nyquist ``D/2``.
* A shell of radius ``k`` cycles/box is the resolution ``D·apix / k`` Å.
* The resolution at a threshold (0.5 against a ground truth, 0.143 between half-maps) is the
  first crossing below the threshold **after the first shell** (the shell after DC),
  linearly interpolated between the two shells that bracket it.
* A curve that is already below the threshold at the first shell is **not resolved**:
  :func:`resolution_at` returns ``None``. It never reports a resolution coarser than the box
  (no interpolation towards the DC shell, which holds only the mean of the maps).
"""

from __future__ import annotations

import numpy as np

from ._common import _check_pair, _shell_index
from .alignment import align_map

__all__ = ["fsc", "resolution_at", "fsc_crossing", "fsc_report"]


def fsc(map_a, map_b):
    """Fourier shell correlation between two maps.

    Parameters
    ----------
    map_a, map_b : array_like, shape (D, D, D)
        Real maps indexed ``[z, y, x]`` on the same cubic grid (D even).

    Returns
    -------
    freq : ndarray of float, shape (D/2 + 1,)
        Shell radii in cycles/box: ``0, 1, ..., D/2``. Nyquist (``D/2``) is **included**. A voxel
        of the centred Fourier grid with frequency vector ``k`` belongs to shell ``round(|k|)``
        (shells are 1 voxel wide); voxels with ``round(|k|) > D/2`` (the corners of the cube)
        are ignored. The Nyquist shell is therefore only partly populated.
    fsc : ndarray of float, shape (D/2 + 1,)
        ``Re Σ F_a F_b* / sqrt(Σ |F_a|² Σ |F_b|²)`` over each shell. Shell 0 holds only the
        DC term (so it is ``±1`` unless a map has zero mean). A shell where either map has zero
        power is NaN.
    """
    a, b = _check_pair(map_a, map_b)
    box = a.shape[0]
    fa = np.fft.fftshift(np.fft.fftn(a.astype(np.float64)))
    fb = np.fft.fftshift(np.fft.fftn(b.astype(np.float64)))
    shells = _shell_index(box).ravel()
    keep = shells <= box // 2
    shells = shells[keep]
    nshell = box // 2 + 1
    cross = np.bincount(shells, weights=(fa * np.conj(fb)).real.ravel()[keep], minlength=nshell)
    pa = np.bincount(shells, weights=(np.abs(fa) ** 2).ravel()[keep], minlength=nshell)
    pb = np.bincount(shells, weights=(np.abs(fb) ** 2).ravel()[keep], minlength=nshell)
    denom = np.sqrt(pa * pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), np.nan)
    return np.arange(nshell, dtype=np.float64), curve


def fsc_crossing(freqs, curve, threshold):
    """Where an FSC curve first drops below ``threshold``, by the package's convention.

    Parameters
    ----------
    freqs : array_like, shape (n,)
        Shell radii in cycles/box, increasing. Shells with ``freqs <= 0`` (DC) are ignored;
        the *first shell* is the first one with ``freqs > 0`` (index 1 for :func:`fsc`).
    curve : array_like, shape (n,)
        FSC per shell; NaN counts as 0 (no correlation).
    threshold : float

    Returns
    -------
    k : float or None
        The crossing in cycles/box: for the first shell ``i`` after the first shell with
        ``curve[i] < threshold``, ``k`` is linearly interpolated between shells ``i−1`` and
        ``i``. ``None`` when the curve is already below the threshold at the first shell
        (**not resolved**). The last shell's radius when the curve never drops below.
    crossed : bool
        Whether the curve drops below the threshold at some shell after DC (false: it stays
        above up to the last shell, and ``k`` is that shell's radius).
    """
    freqs = np.asarray(freqs, dtype=np.float64)
    curve = np.nan_to_num(np.asarray(curve, dtype=np.float64), nan=0.0)
    if freqs.ndim != 1 or freqs.shape != curve.shape:
        raise ValueError("freqs and fsc must be 1D arrays of the same length")
    shells = np.nonzero(freqs > 0)[0]
    if shells.size == 0:
        raise ValueError("freqs holds no shell beyond DC")
    first = int(shells[0])
    below = shells[curve[shells] < threshold]
    if below.size == 0:
        return float(freqs[-1]), False
    i = int(below[0])
    if i == first:
        return None, True
    f0, f1 = curve[i - 1], curve[i]
    k0, k1 = freqs[i - 1], freqs[i]
    return float(k0 + (f0 - threshold) / (f0 - f1) * (k1 - k0)), True


def resolution_at(freqs, fsc, threshold, box, apix):
    """Resolution (Å) at which an FSC curve first drops below a threshold, or ``None``.

    Parameters
    ----------
    freqs : array_like, shape (n,)
        Shell radii in cycles/box, increasing (as returned by :func:`fsc`; shell 0 is DC).
    fsc : array_like, shape (n,)
        FSC values per shell. NaN entries are treated as 0 (no correlation).
    threshold : float
        0.5 against a ground-truth reference, 0.143 between half-maps.
    box : int
        Box size D in voxels.
    apix : float
        Voxel size in Å.

    Returns
    -------
    float or None
        ``D * apix / k*`` in Å, ``k*`` (cycles/box) being the first crossing after the first
        shell (the shell after DC, index 1 for :func:`fsc`): the first shell ``i`` with
        ``fsc[i] < threshold`` is found and ``k*`` is linearly interpolated between shells
        ``i−1`` and ``i``. So the result is never coarser than ``D·apix`` (the first shell).

        * ``None`` — **not resolved** — when the curve is already below the threshold at the
          first shell (the DC shell is never used for interpolation).
        * If the curve **never** drops below the threshold, the resolution of the last shell,
          i.e. the Nyquist resolution ``2 * apix`` Å for a curve from :func:`fsc` (use
          :func:`fsc_report`'s ``"crossed"`` flag, or :func:`fsc_crossing`, to tell the two
          cases apart).
    """
    if box <= 0 or apix <= 0:
        raise ValueError("box and apix must be positive")
    k, _ = fsc_crossing(freqs, fsc, threshold)
    if k is None:
        return None
    return float(box * apix / k)


def fsc_report(map, reference, apix, threshold=0.5, align=True, **align_kwargs):  # noqa: A002
    """FSC of a map against a reference, optionally after aligning it, with its resolution.

    Parameters
    ----------
    map : array_like, shape (D, D, D)
        The map to evaluate (e.g. a reconstruction), ``[z, y, x]``.
    reference : array_like, shape (D, D, D)
        The reference (e.g. ground truth) on the same grid.
    apix : float
        Voxel size in Å.
    threshold : float, optional
        FSC threshold (0.5 against a reference, 0.143 for half-maps).
    align : bool, optional
        If true, :func:`~rmfn_napari.cryoem.metrics.align_map` first finds the rotation,
        translation and hand that best superimpose ``map`` onto ``reference`` and the FSC is
        computed on the aligned map.
    **align_kwargs
        Passed on to :func:`~rmfn_napari.cryoem.metrics.align_map`.

    Returns
    -------
    dict
        ``freq_cycles_per_box`` (list), ``resolution_per_shell_A`` (list, ``inf`` at k=0),
        ``fsc`` (list), ``threshold``, ``resolution_A`` (float in Å, or ``None`` when not
        resolved: see :func:`resolution_at`), ``crossing_cycles_per_box`` (float or ``None``),
        ``resolved`` (bool), ``crossed`` (bool: false means the curve stayed above the
        threshold up to Nyquist and ``resolution_A`` is the Nyquist limit ``2·apix``), ``box``,
        ``apix``, and ``alignment`` (``None`` or the ``Alignment.to_dict()`` of the alignment
        applied). Everything is JSON-serialisable except ``inf``/``nan`` floats.
    """
    m, ref = _check_pair(map, reference)
    box = m.shape[0]
    alignment = None
    if align:
        m, alignment = align_map(m, ref, apix, **align_kwargs)
    freqs, curve = fsc(m, ref)
    k, crossed = fsc_crossing(freqs, curve, threshold)
    res = resolution_at(freqs, curve, threshold, box, apix)
    with np.errstate(divide="ignore"):
        per_shell = np.where(freqs > 0, box * apix / np.where(freqs > 0, freqs, 1.0), np.inf)
    return {
        "freq_cycles_per_box": freqs.tolist(),
        "resolution_per_shell_A": per_shell.tolist(),
        "fsc": curve.tolist(),
        "threshold": float(threshold),
        "resolution_A": res,
        "crossing_cycles_per_box": k,
        "resolved": res is not None,
        "crossed": bool(crossed),
        "box": int(box),
        "apix": float(apix),
        "alignment": None if alignment is None else alignment.to_dict(),
    }
