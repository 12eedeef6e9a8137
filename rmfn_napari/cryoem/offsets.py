"""In-plane particle offsets in RELION's convention — written down once, here.

RELION's origin ``o = (rlnOriginXAngst, rlnOriginYAngst) / apix`` (px) is the translation
that brings the particle into register with the reference projection ``P``: the particle's
centre sits at **−o** in the image, ``I(x) = P(x + o)`` (DESIGN.md §2). With the centred
DFT of :mod:`rmfn_napari.cryoem.projector` (``F(k) = Σ_x f(x) exp(−2πi k·x / D)``, ``k`` in
cycles/box, ``x`` in px from the box centre, x the fastest array axis)::

    F_I(k) = F_P(k) · exp(+2πi k·o / D)       (placing: what the simulator does)
    F_P(k) = F_I(k) · exp(−2πi k·o / D)       (centring: what the reconstruction does)

Offsets are stored in Å in STAR files and handled in pixels of the working box inside the
engine (after a Fourier crop the pixel size changes, the offset in Å does not).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["centring_phase", "centring_phase_at", "centre_spectra", "window_points", "shift_grid", "shift_errors"]


def window_points(window: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The frequencies ``(kx, ky)`` (cycles/box) of a centred ``window``² grid, ``(window², 2)``,
    in array order (ky slow, kx fast): index ``j`` ↔ ``k = j − window/2``."""
    k = torch.arange(window, dtype=dtype, device=device) - window // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([kx.reshape(-1), ky.reshape(-1)], -1)


def centring_phase_at(box: int, shifts_px: torch.Tensor, k_points: torch.Tensor) -> torch.Tensor:
    """Phase factors ``exp(−2πi k·o / D)`` that centre images with RELION origins ``o``.

    Parameters
    ----------
    box : int
        Image size D (px) the frequencies refer to.
    shifts_px : tensor ``(B, 2)``
        Origins ``(ox, oy)`` in px of that box (differentiable).
    k_points : tensor ``(K, 2)``
        Frequencies ``(kx, ky)`` in cycles/box.

    Returns
    -------
    complex tensor ``(B, K)``; multiply the image spectra at ``k_points`` by it.
    """
    k = k_points.to(device=shifts_px.device, dtype=shifts_px.dtype)
    angle = (shifts_px @ k.T) * (-2 * math.pi / box)
    return torch.polar(torch.ones_like(angle), angle)


def centring_phase(box: int, shifts_px: torch.Tensor, window: int) -> torch.Tensor:
    """:func:`centring_phase_at` on the central ``window``² of a centred grid, ``(B, w, w)``."""
    phase = centring_phase_at(box, shifts_px, window_points(window, shifts_px.device, shifts_px.dtype))
    return phase.reshape(shifts_px.shape[0], window, window)


def centre_spectra(spectra: torch.Tensor, box: int, shifts_px: torch.Tensor) -> torch.Tensor:
    """Centred image spectra ``(B, w, w)`` of images with origins ``shifts_px`` (px), centred."""
    return spectra * centring_phase(box, shifts_px.to(torch.float32), spectra.shape[-1])


def shift_grid(radius_px: float, step_px: float, device=None) -> torch.Tensor:
    """Square grid of in-plane offsets ``(T, 2)`` in px: ``[−r, r]²`` with spacing ≤ ``step_px``.

    The grid is symmetric and always contains (0, 0); ``radius_px`` = 0 gives only (0, 0).
    """
    if radius_px <= 0:
        return torch.zeros(1, 2, device=device)
    n_side = max(1, int(math.ceil(radius_px / max(step_px, 1e-6) - 1e-9)))
    axis = torch.linspace(-radius_px, radius_px, 2 * n_side + 1, device=device)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)


def shift_errors(est_px, true_px, est_rotations, inliers=None):
    """Per-particle offset errors (px) after removing the map's global translation.

    An ab initio map is free to sit anywhere in the box: if it is the true map moved by a 3D
    translation ``t`` (px), every particle's origin changes by the projection of ``R t``
    (``R`` its pose in the estimated map's frame), ``o_est = o_true + (R t)_xy``. ``t`` is
    fitted by least squares over ``inliers`` (e.g. particles whose orientation is right;
    default all), then the errors are ``|o_est − o_true − (R t)_xy|``.

    Parameters
    ----------
    est_px, true_px : array ``(n, 2)``
        Estimated and true origins, px (same box).
    est_rotations : array ``(n, 3, 3)``
        Estimated rotations (RELION matrices A).
    inliers : bool array ``(n,)``, optional

    Returns
    -------
    errors_px : ndarray ``(n,)``
    translation_px : ndarray ``(3,)``, the fitted ``t`` (x, y, z)
    """
    est = np.asarray(est_px, np.float64)
    true = np.asarray(true_px, np.float64)
    R = np.asarray(est_rotations, np.float64)
    resid = est - true
    sel = np.ones(len(est), bool) if inliers is None else np.asarray(inliers, bool)
    if sel.sum() < 3:
        sel = np.ones(len(est), bool)
    A = R[sel, :2, :].reshape(-1, 3)
    t, *_ = np.linalg.lstsq(A, resid[sel].reshape(-1), rcond=None)
    err = resid - np.einsum("nij,j->ni", R[:, :2, :], t)
    return np.linalg.norm(err, axis=1), t
