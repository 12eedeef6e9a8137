"""Gold-standard FSC between half-maps, masked FSC corrected by phase randomisation.

Conventions (DESIGN.md §2)
--------------------------
* Two half-maps, each reconstructed from one of two half-sets of particles fixed at the start
  (``rlnRandomSubset`` 1/2); their FSC is read at **0.143**.
* Masking the half-maps removes solvent noise (a better estimate of the FSC of the particle)
  but a mask also multiplies the maps, i.e. convolves their Fourier transforms with the mask's,
  which spreads correlated low-resolution signal into higher shells and can inflate the
  masked FSC. Chen et al. (2013, Ultramicroscopy 135, 24–35) measure that inflation by
  replacing the phases of both half-maps with random ones beyond the shell ``k_r`` where the
  *unmasked* FSC first drops below 0.8 (RELION's choice), masking these phase-randomised maps
  with the same mask and computing their FSC, ``FSC_random``. For shells ``k >= k_r``::

      FSC_true = (FSC_masked − FSC_random) / (1 − FSC_random)

  and ``FSC_true = FSC_masked`` below ``k_r``.
* The FSC of a full map against the truth corresponds to the half-map FSC by
  ``FSC_full = √(2·FSC_half / (1 + FSC_half))`` (so 0.143 between half-maps ↔ 0.5 against
  the truth): :func:`fsc_full_from_half`.
* Resolution: :func:`rmfn_napari.cryoem.metrics.fsc.resolution_at` (the first crossing after
  the first shell, interpolated; ``None`` = not resolved).

Shells are those of :func:`rmfn_napari.cryoem.metrics.fsc.fsc`: ``round(|k|)`` in cycles/box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._common import _check_pair, _check_volume, _shell_index_unshifted
from .fsc import fsc, resolution_at

__all__ = ["phase_randomise", "gold_standard_fsc", "GoldStandardFSC", "fsc_full_from_half",
           "RANDOMISE_BELOW"]

#: The unmasked FSC value below which phases are randomised (RELION's choice).
RANDOMISE_BELOW = 0.8


def phase_randomise(volume, from_shell: int, seed=0) -> np.ndarray:
    """Replace the Fourier phases of a map by random ones in every shell ``>= from_shell``.

    Parameters
    ----------
    volume : array_like, shape (D, D, D)
        Real map ``[z, y, x]``, D even.
    from_shell : int
        First randomised shell (cycles/box): Fourier voxels with ``round(|k|) >= from_shell``
        (including the corners of the cube beyond Nyquist) get random phases; voxels below
        keep their complex values exactly.
    seed : int, numpy.random.Generator or None
        Source of the random phases (a Generator is advanced, so two calls with the same
        Generator give independent phases).

    Returns
    -------
    ndarray, shape (D, D, D)
        float64 for a float64 input, else float32. A real map whose Fourier amplitudes
        equal those of ``volume`` in every voxel. The random phases are the phases of the
        Fourier transform of real white Gaussian noise, so they are uniform on ``[−π, π)``
        and Hermitian-symmetric (``φ(−k) = −φ(k)``): the randomised spectrum is that of a
        real map, and nothing is lost by taking it back to real space.
    """
    vol = _check_volume(volume)
    out_dtype = np.float64 if vol.dtype == np.float64 else np.float32
    vol = vol.astype(np.float64)
    box = vol.shape[0]
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    f = np.fft.rfftn(vol)
    noise_ft = np.fft.rfftn(rng.standard_normal(vol.shape))
    mag = np.abs(noise_ft)
    phase = np.where(mag > 0, noise_ft / np.where(mag > 0, mag, 1.0), 1.0)
    shells = _shell_index_unshifted(box)[..., : box // 2 + 1]  # the rfftn half-space
    rand = shells >= int(from_shell)
    f = np.where(rand, np.abs(f) * phase, f)
    return np.fft.irfftn(f, s=vol.shape).astype(out_dtype)


def fsc_full_from_half(fsc_half):
    """FSC of the full map (both halves) against the truth, from the half-map FSC.

    ``√(2·FSC_half / (1 + FSC_half))`` (DESIGN.md §2; Rosenthal & Henderson 2003). FSC values
    are clipped to ``[0, 1]`` first (a negative half-map FSC means no signal). Scalars give a
    float, arrays an array.
    """
    f = np.clip(np.asarray(fsc_half, dtype=np.float64), 0.0, 1.0)
    out = np.sqrt(2.0 * f / (1.0 + f))
    return float(out) if out.ndim == 0 else out


@dataclass
class GoldStandardFSC:
    """Result of :func:`gold_standard_fsc`. Curves are per shell ``freqs`` (cycles/box).

    Attributes
    ----------
    freqs : ndarray
        Shell radii ``0 .. D/2`` in cycles/box (shell 0 is DC).
    fsc_unmasked : ndarray
        FSC of the half-maps as they are.
    fsc_masked : ndarray or None
        FSC of the masked half-maps (``None`` without a mask).
    fsc_random : ndarray or None
        FSC of the masked phase-randomised half-maps (``None`` without a mask, or when the
        unmasked FSC never drops below 0.8 and nothing was randomised).
    fsc_corrected : ndarray or None
        ``fsc_masked`` below ``randomise_from_shell``, ``(FSC_masked − FSC_random) /
        (1 − FSC_random)`` from it on (``None`` without a mask).
    randomise_from_shell : int or None
        ``k_r``: the first shell after DC where the unmasked FSC is below 0.8.
    threshold : float
    resolution_A : float or None
        Resolution (Å) at ``threshold`` of the corrected masked curve when a mask was given,
        else of the unmasked curve; ``None`` when not resolved.
    resolution_unmasked_A : float or None
        Resolution of the unmasked curve.
    box : int
    apix : float
    """

    freqs: np.ndarray
    fsc_unmasked: np.ndarray
    fsc_masked: np.ndarray | None
    fsc_random: np.ndarray | None
    fsc_corrected: np.ndarray | None
    randomise_from_shell: int | None
    threshold: float
    resolution_A: float | None
    resolution_unmasked_A: float | None
    box: int
    apix: float

    @property
    def fsc(self) -> np.ndarray:
        """The curve the resolution is read from: corrected if masked, else unmasked."""
        return self.fsc_unmasked if self.fsc_corrected is None else self.fsc_corrected

    @property
    def randomise_from_A(self) -> float | None:
        """``k_r`` as a resolution in Å (``D·apix / k_r``)."""
        k = self.randomise_from_shell
        return None if k is None else float(self.box * self.apix / k)

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary (curves as lists, NaN -> None)."""
        def curve(c):
            if c is None:
                return None
            return [None if not math.isfinite(v) else float(v) for v in np.asarray(c, dtype=float)]

        return {
            "freq_cycles_per_box": [float(v) for v in self.freqs],
            "fsc_unmasked": curve(self.fsc_unmasked),
            "fsc_masked": curve(self.fsc_masked),
            "fsc_random": curve(self.fsc_random),
            "fsc_corrected": curve(self.fsc_corrected),
            "randomise_from_shell": self.randomise_from_shell,
            "randomise_from_A": self.randomise_from_A,
            "threshold": float(self.threshold),
            "resolution_A": self.resolution_A,
            "resolution_unmasked_A": self.resolution_unmasked_A,
            "box": int(self.box),
            "apix": float(self.apix),
        }


def gold_standard_fsc(half1, half2, apix: float, mask=None, threshold: float = 0.143,
                      seed=0) -> GoldStandardFSC:
    """Gold-standard FSC between two half-maps, optionally masked and corrected.

    Parameters
    ----------
    half1, half2 : array_like, shape (D, D, D)
        Half-maps ``[z, y, x]`` from independent half-sets, same grid.
    apix : float
        Voxel size in Å.
    mask : array_like, shape (D, D, D), optional
        Real-space mask (e.g. :func:`~rmfn_napari.cryoem.metrics.masks.soft_sphere_mask` or
        :func:`~rmfn_napari.cryoem.metrics.masks.auto_mask`), applied to both half-maps.
    threshold : float, optional
        FSC threshold for the resolution (0.143 for half-maps).
    seed : int or numpy.random.Generator, optional
        For the random phases (the two half-maps get independent phases).

    Returns
    -------
    GoldStandardFSC
        Without a mask: the unmasked curve and its resolution. With a mask: also the masked,
        phase-randomised and corrected curves, ``k_r``, and the corrected resolution
        (module docstring: Chen et al. 2013, as RELION's postprocessing does it).
    """
    h1, h2 = _check_pair(half1, half2)
    if apix <= 0:
        raise ValueError("apix must be positive")
    box = h1.shape[0]
    h1 = h1.astype(np.float64)
    h2 = h2.astype(np.float64)
    freqs, unmasked = fsc(h1, h2)
    res_unmasked = resolution_at(freqs, unmasked, threshold, box, apix)
    if mask is None:
        return GoldStandardFSC(freqs, unmasked, None, None, None, None, float(threshold),
                               res_unmasked, res_unmasked, box, float(apix))
    m, _ = _check_pair(mask, h1)
    m = m.astype(np.float64)
    _, masked = fsc(h1 * m, h2 * m)
    below = np.nonzero((freqs > 0) & (np.nan_to_num(unmasked, nan=0.0) < RANDOMISE_BELOW))[0]
    k_r = int(freqs[below[0]]) if below.size else None
    corrected = masked.copy()
    random = None
    if k_r is not None:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        r1 = phase_randomise(h1, k_r, rng)
        r2 = phase_randomise(h2, k_r, rng)
        _, random = fsc(r1 * m, r2 * m)
        beyond = freqs >= k_r
        denom = np.maximum(1.0 - random, 1e-6)
        corrected[beyond] = ((masked - random) / denom)[beyond]
    res = resolution_at(freqs, corrected, threshold, box, apix)
    return GoldStandardFSC(freqs, unmasked, masked, random, corrected, k_r, float(threshold),
                           res, res_unmasked, box, float(apix))
