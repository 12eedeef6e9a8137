"""The Fourier samples a stage compares: its window's frequencies inside Nyquist, halved by
Friedel symmetry.

Particle images and projections are real, so their spectra are Hermitian, ``F(−k) = F(k)*``;
the CTF and the Gaussian low-pass weight are even in ``k``. A weighted squared error over a set
of frequencies that is symmetric under ``k ↔ −k`` is therefore twice its sum over one half of
the set, plus the self-conjugate origin once. A stage keeps the half-plane ``ky > 0`` (and
``ky = 0, kx > 0``) and the origin, weighted ``√2·w`` and ``w``, and computes every loss, score
and central slice on those ``K`` points alone: about half of the window's samples and none of
its corners beyond Nyquist, for the same loss.

The set is the square ``|kx|, |ky| ≤ window/2 − 1`` (symmetric, unlike the even ``window``'s
``[−window/2, window/2 − 1]``) intersected with the open Nyquist disc ``|k| < D/2``.
"""

from __future__ import annotations

import torch

__all__ = ["FrequencySet"]


class FrequencySet:
    """Half-plane frequencies ``k`` (cycles/box) of a stage, with their loss weights.

    Parameters
    ----------
    box : int
        Image size D (px); the Nyquist disc is ``|k| < D/2``.
    window : int
        Even size of the stage's central window; the set spans ``|kx|, |ky| ≤ window/2 − 1``.
    sigma : float
        Gaussian low-pass ``exp(−|k|²/(2σ²))`` of the stage (Fourier px); None: weight 1.
    device
        Where ``k`` and ``weight`` live.

    Attributes
    ----------
    k : tensor ``(K, 2)`` float32, ``(kx, ky)`` cycles/box.
    weight : tensor ``(K,)`` float32, the low-pass times ``√multiplicity`` (2 off the origin):
        ``Σ_K |weight·e|²`` over the half-plane equals ``Σ |w·e|²`` over the whole set for a
        Hermitian error ``e``.
    """

    def __init__(self, box: int, window: int, sigma: float | None, device=None):
        self.box, self.window = int(box), int(window)
        reach = self.window // 2 - 1
        axis = torch.arange(-reach, reach + 1, dtype=torch.float32)
        ky, kx = torch.meshgrid(axis, axis, indexing="ij")
        k2 = kx**2 + ky**2
        half = (ky > 0) | ((ky == 0) & (kx >= 0))
        keep = half & (k2 < (self.box / 2) ** 2)
        self.k = torch.stack([kx[keep], ky[keep]], -1).to(device)
        gauss = torch.ones_like(k2) if sigma is None else torch.exp(-k2 / (2 * sigma**2))
        multiplicity = torch.where(k2 == 0, 1.0, 2.0)
        self.weight = (gauss * multiplicity.sqrt())[keep].to(device)

    def __len__(self) -> int:
        return self.k.shape[0]

    def take(self, spectra: torch.Tensor) -> torch.Tensor:
        """Values at the set's frequencies from centred spectra ``(..., w, w)`` (any even
        ``w ≥ window − 2``; index ``j`` ↔ ``k = j − w/2``), ``(..., K)``."""
        w = spectra.shape[-1]
        if w < 2 * (self.window // 2 - 1) + 1:
            raise ValueError(f"spectra of {w}^2 do not cover the {self.window}-window")
        jx = (self.k[:, 0] + w // 2).long().to(spectra.device)
        jy = (self.k[:, 1] + w // 2).long().to(spectra.device)
        return spectra[..., jy, jx]

    def within(self, window: int) -> torch.Tensor:
        """Indices of the points inside the smaller symmetric window ``|kx|, |ky| ≤ window/2 − 1``
        (e.g. the global search's), as a long tensor on the set's device."""
        reach = int(window) // 2 - 1
        inside = (self.k.abs() <= reach).all(-1)
        return torch.nonzero(inside).reshape(-1)

    def to(self, device) -> "FrequencySet":
        """The same set on ``device``."""
        out = object.__new__(FrequencySet)
        out.box, out.window = self.box, self.window
        out.k, out.weight = self.k.to(device), self.weight.to(device)
        return out
