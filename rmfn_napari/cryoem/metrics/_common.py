"""Small helpers shared by the metrics modules (private).

Conventions are those of the package docstring (:mod:`rmfn_napari.cryoem.metrics`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: The reflection used for the hand flip: ``z -> -z`` on column vectors ``(x, y, z)``.
MIRROR = np.diag([1.0, 1.0, -1.0])


def _to_numpy(x):
    """Arrays, lists or (CPU/GPU) torch tensors -> numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_volume(vol, name="volume"):
    """A cubic 3D map with an even box, as a numpy array."""
    v = _to_numpy(vol)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"{name} must be a cubic 3D map, got shape {v.shape}")
    if v.shape[0] % 2:
        raise ValueError(f"box size must be even, got {v.shape[0]}")
    return v


def _check_pair(map_a, map_b):
    a = _to_numpy(map_a)
    b = _to_numpy(map_b)
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"maps must be 3D and of the same shape, got {a.shape} and {b.shape}")
    if len(set(a.shape)) != 1:
        raise ValueError(f"maps must be cubic, got {a.shape}")
    if a.shape[0] % 2:
        raise ValueError(f"box size must be even, got {a.shape[0]}")
    return a, b


def _shell_index(box: int) -> np.ndarray:
    """Integer shell index ``round(|k|)`` (k in cycles/box) on the centred D³ Fourier grid."""
    k = np.arange(box) - box // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(np.int64)


def _shell_index_unshifted(box: int) -> np.ndarray:
    """``round(|k|)`` on the *uncentred* (``np.fft.fftn`` order) D³ grid."""
    k = np.fft.fftfreq(box) * box
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(np.int64)


def _gaussian_lowpass(vol: np.ndarray, k_half: float) -> np.ndarray:
    """Gaussian low-pass whose amplitude is 0.5 at ``k_half`` cycles/box (float32 out)."""
    box = vol.shape[0]
    k = np.fft.fftfreq(box) * box
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    sigma = k_half / math.sqrt(2 * math.log(2))
    filt = np.exp(-(kx**2 + ky**2 + kz**2) / (2 * sigma**2))
    return np.fft.ifftn(np.fft.fftn(vol.astype(np.float64)) * filt).real.astype(np.float32)
