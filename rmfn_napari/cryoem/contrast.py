"""Which way round is the contrast? A matched filter, before any training.

The engine's image model is RELION's: ``image = CTF · projection`` with ``CTF(0) = +w`` and a
non-negative map, so inside the CTF's first lobe a particle is *brighter* than its
surroundings (DESIGN.md §2). Any compact non-negative density looks, at low resolution, like
a Gaussian blob; so the inner product of each (centred) image with its own CTF times a blob
is positive on average for particles in this convention, and negative for dark particles
(RELION's extraction without "invert contrast", or cryoDRGN's sign). The statistic is
``z = mean(s) / (std(s) / √n)`` over the per-image scores ``s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ContrastCheck", "contrast_check", "Z_DARK"]

# |z| beyond this is a verdict; pure noise gives |z| ~ 1
Z_DARK = 5.0


@dataclass
class ContrastCheck:
    """Result of :func:`contrast_check`.

    Attributes
    ----------
    z : float
        Mean score over its standard error (positive: bright particles, as expected).
    n : int
        Images scored.
    verdict : {"bright", "dark", "unclear"}
    """

    z: float
    n: int
    verdict: str


def contrast_check(obs: torch.Tensor, ctf: torch.Tensor, box: int, blob_sigma_px: float) -> ContrastCheck:
    """Matched-filter test of the particles' contrast against the CTF convention.

    Parameters
    ----------
    obs : complex tensor ``(B, w, w)``
        Centred spectra of centred images (offsets removed), central ``w``² window.
    ctf : tensor ``(B, w, w)``
        Their CTFs on the same window.
    box : int
        Image size D (px): frequencies are ``k`` cycles/box.
    blob_sigma_px : float
        Real-space width of the blob template (px of the same box).

    Returns
    -------
    ContrastCheck
    """
    w = obs.shape[-1]
    k = (torch.arange(w, dtype=torch.float32, device=obs.device) - w // 2) / box
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    blob = torch.exp(-2 * math.pi**2 * blob_sigma_px**2 * k2)
    scores = (obs.real * ctf * blob).sum((-1, -2)).double()
    n = int(scores.numel())
    spread = float(scores.std()) if n > 1 else 0.0
    z = float(scores.mean()) / (spread / math.sqrt(n)) if spread > 0 else 0.0
    verdict = "bright" if z > Z_DARK else "dark" if z < -Z_DARK else "unclear"
    return ContrastCheck(z, n, verdict)
