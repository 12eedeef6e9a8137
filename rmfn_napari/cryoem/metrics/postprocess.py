"""Post-processing of two half-maps into one map to look at, as RELION's ``relion_postprocess``
and cryoSPARC's sharpening do (DESIGN.md §2):

1. the mean of the half-maps, each Fourier shell weighted by ``√(2·FSC/(1+FSC))`` (Rosenthal &
   Henderson 2003; 0 where the gold-standard FSC is ≤ 0), the FSC of the full map against the
   truth that the half-map FSC implies;
2. a B-factor fitted to the Guinier plot: ``ln`` of the shells' mean amplitude against
   ``s² = 1/d²`` (Å⁻²) between ``fit_from_A`` (10 Å) and the gold-standard resolution; amplitudes
   fall as ``exp(−B s²/4)``, so the slope is ``−B/4``;
3. sharpened by ``exp(+B s²/4)``, low-passed at the resolution (a raised-cosine edge one shell
   wide), multiplied by the mask.

Shells follow :func:`~rmfn_napari.cryoem.metrics.fsc.fsc`: radius ``round(|k|)`` in cycles/box,
``s = k / (D·apix)`` Å⁻¹.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import _shell_index

__all__ = ["PostProcessed", "postprocess", "guinier_bfactor"]


@dataclass
class PostProcessed:
    """Result of :func:`postprocess`.

    Attributes
    ----------
    map : ndarray ``(D, D, D)`` float32, the post-processed map.
    bfactor : float, the fitted B-factor in Å² (positive: amplitudes fall with resolution; the
        map was sharpened by ``exp(+B s²/4)``); NaN when fewer than 3 shells lay in the fit range.
    fit_range_A : (float, float), the Guinier fit's range, coarse to fine, Å.
    resolution_A : float, the low-pass resolution (the gold standard's).
    """

    map: np.ndarray
    bfactor: float
    fit_range_A: tuple[float, float]
    resolution_A: float


def _shell_amplitudes(ft: np.ndarray, shells: np.ndarray, n: int) -> np.ndarray:
    """Mean amplitude ``|F|`` per shell ``0..n-1`` of a centred spectrum."""
    keep = shells < n
    total = np.bincount(shells[keep], weights=np.abs(ft).ravel()[keep], minlength=n)
    count = np.bincount(shells[keep], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / np.maximum(count, 1)


def guinier_bfactor(volume: np.ndarray, apix: float, fit_from_A: float, fit_to_A: float) -> float:
    """B-factor (Å²) of ``volume`` from the slope of ``ln`` mean shell amplitude against ``s²``
    between ``fit_from_A`` and ``fit_to_A`` (Å, coarse to fine): ``B = −4 · slope``. NaN with
    fewer than 3 shells in the range."""
    box = volume.shape[0]
    ft = np.fft.fftshift(np.fft.fftn(volume.astype(np.float64)))
    shells = _shell_index(box).ravel()
    amp = _shell_amplitudes(ft, shells, box // 2 + 1)
    k = np.arange(box // 2 + 1, dtype=np.float64)
    s = k / (box * apix)
    use = (k > 0) & (s >= 1.0 / fit_from_A) & (s <= 1.0 / fit_to_A) & (amp > 0)
    if use.sum() < 3:
        return float("nan")
    slope = np.polyfit(s[use] ** 2, np.log(amp[use]), 1)[0]
    return float(-4.0 * slope)


def postprocess(half1, half2, fsc_curve, resolution_A: float, apix: float, mask=None,
                fit_from_A: float = 10.0) -> PostProcessed:
    """Post-process two half-maps (see the module's docstring).

    Parameters
    ----------
    half1, half2 : array_like ``(D, D, D)``, the independent half-maps.
    fsc_curve : array_like ``(D/2 + 1,)``, their gold-standard FSC per shell (cycles/box
        ``0..D/2``; NaN counts as 0).
    resolution_A : float, the gold-standard resolution (Å): the Guinier fit's fine end and the
        low-pass.
    apix : float, voxel size in Å.
    mask : array_like ``(D, D, D)``, optional, multiplied in last.
    fit_from_A : float, the Guinier fit's coarse end (Å; RELION: 10 Å). When the resolution is
        coarser than that, the fit spans the resolution's last 3 shells instead.
    """
    a = np.asarray(half1, dtype=np.float64)
    b = np.asarray(half2, dtype=np.float64)
    box = a.shape[0]
    n = box // 2 + 1
    curve = np.nan_to_num(np.asarray(fsc_curve, dtype=np.float64), nan=0.0)[:n]
    weight = np.sqrt(np.clip(2 * curve / (1 + np.clip(curve, 0, None)), 0, None))
    ft = np.fft.fftshift(np.fft.fftn((a + b) / 2))
    shells = _shell_index(box)
    inside = shells < n
    ft_weighted = np.where(inside, ft * weight[np.minimum(shells, n - 1)], 0)
    weighted = np.fft.ifftn(np.fft.ifftshift(ft_weighted)).real
    k_res = box * apix / resolution_A
    coarse = fit_from_A if resolution_A < fit_from_A else box * apix / max(k_res - 3, 1.0)
    bfactor = guinier_bfactor(weighted, apix, coarse, resolution_A)
    k = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.arange(box) - box // 2] * 3, indexing="ij")))
    s2 = (k / (box * apix)) ** 2
    sharpen = np.exp(bfactor * s2 / 4) if np.isfinite(bfactor) else 1.0
    edge = np.clip(k - k_res + 0.5, 0.0, 1.0)  # one shell of raised cosine past the resolution
    lowpass = np.where(k <= k_res - 0.5, 1.0, 0.5 * (1 + np.cos(np.pi * edge)))
    out = np.fft.ifftn(np.fft.ifftshift(ft_weighted * sharpen * lowpass)).real
    if mask is not None:
        out = out * np.asarray(mask, dtype=np.float64)
    return PostProcessed(out.astype(np.float32), bfactor, (float(coarse), float(resolution_A)), float(resolution_A))
