"""The forward model of one stage: band, window, weight, mask, render, Fourier slices, CTF.

See the package docstring for the image model; :func:`forward_images_real_space` is the slow
real-space reference."""

from __future__ import annotations

import math

import numpy as np
import torch

from ...model import ResidualMFN, growth_factor
from ...model.networks import grid_axis
from ..projector import fourier_slices, volume_fourier


def stage_sigma(scale: int, n_layers: int, box: int, lambdas) -> float:
    """Gaussian low-pass sigma of a stage in Fourier pixels: ``band * D / 3``.

    ``band = 1 / g^(L-1-scale)`` (fraction of Nyquist), so for three layers and g = 3.3:
    1/3.3^2, 1/3.3, 1 (DESIGN.md §3).
    """
    band = 1.0 / growth_factor(lambdas) ** (n_layers - 1 - scale)
    return band * box / 3.0


def stage_window(band_cycles: float, sigma: float, box: int) -> int:
    """Even size of the central Fourier window (and render grid) a stage needs.

    Frequencies beyond ``min(3 sigma, band + 1)`` cycles/box carry neither model content
    (the scale is band-limited) nor low-passed data weight, so the loss is computed on
    the central window only; the volume is rendered on a grid of the same size.
    """
    reach = min(3.0 * sigma, band_cycles + 1.0)
    n = 2 * int(math.ceil(reach)) + 2
    return int(min(box, n + (n % 2)))


def gaussian_weight(window: int, sigma: float, device, nyquist: float | None = None) -> torch.Tensor:
    """Centred 2D Gaussian ``exp(-k^2 / (2 sigma^2))`` on a window x window Fourier grid,
    zero beyond the circle ``|k| <= nyquist`` (cycles/box) when given: the corners of the
    square beyond Nyquist would enter the loss with a pose-dependent weight."""
    k = torch.arange(window, device=device, dtype=torch.float32) - window // 2
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    w = torch.exp(-k2 / (2 * sigma**2))
    return w if nyquist is None else w * (k2 <= nyquist**2)


def spherical_mask(n: int, radius: float | None, device=None) -> torch.Tensor | None:
    """Soft spherical mask on an n^3 grid over the box: 1 inside ``radius`` (fraction of the
    box), a raised-cosine edge 0.05 box wide, 0 outside. None when ``radius`` is None."""
    if radius is None:
        return None
    c = grid_axis(n, device)
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    width = 0.05
    t = ((r - radius) / width).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def render_volume(net: ResidualMFN, n: int, scale: int, mask_radius: float | None = None) -> torch.Tensor:
    """The map of ``scale`` rendered on an n^3 grid over the whole box, ``[z, y, x]``,
    times the soft spherical mask of ``mask_radius`` (fraction of the box) if given."""
    vol = net.render_grid((n, n, n), max_scale=scale)[-1][..., 0]
    mask = spherical_mask(n, mask_radius, vol.device)
    return vol if mask is None else vol * mask


def render_all_scales(net: ResidualMFN, box: int, upto: int, mask_radius: float | None = None) -> list[np.ndarray]:
    """Every scale 0..upto on the full D^3 grid (numpy float32, masked), without gradients."""
    with torch.no_grad():
        outs = net.render_grid((box, box, box), max_scale=upto)
        mask = spherical_mask(box, mask_radius, outs[0].device)
    return [(o[..., 0] if mask is None else o[..., 0] * mask).float().cpu().numpy() for o in outs]


def forward_images_real_space(net: ResidualMFN, rotations: torch.Tensor, box: int, scale: int) -> torch.Tensor:
    """Reference forward model: ``I(x, y) = sum_z V(R^T (x, y, z))`` evaluating the network
    at every rotated voxel of every image (no CTF). Slow; for tests and benchmarks.

    The map is the network inside the box and zero outside it (the same volume the
    Fourier path pads with zeros): points whose rotated coordinates leave the box
    ``[-0.5, 0.5 - 1/D]^3`` (the span of the voxel samples) contribute nothing.
    Returns images (B, D, D) in the same units as the fast path (sum over D voxels / D).
    """
    c = grid_axis(box, rotations.device)
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    pts = torch.stack([x, y, z], -1).reshape(-1, 3)
    lo, hi = float(c[0]), float(c[-1])
    out = []
    for R in rotations.to(torch.float32):
        src = pts @ R  # row-vector form of R^T x
        inside = ((src >= lo) & (src <= hi)).all(-1)
        vals = net(src, max_scale=scale)[-1][..., 0] * inside
        out.append(vals.reshape(box, box, box).sum(0) / box)
    return torch.stack(out)


class ForwardModel:
    """Fast forward model for one stage: renders, pads, slices, applies CTF and low-pass.

    Images are compared in units where ``image = (sum_z V) / D`` (so an O(1) density gives
    O(1) images); see :func:`forward_images_real_space` for the same quantity in real space.
    """

    def __init__(self, box: int, apix: float, scale: int, band_cycles: float, sigma: float, pad: int,
                 mask_radius: float | None = None):
        self.box, self.apix, self.scale, self.pad = box, apix, scale, pad
        self.mask_radius = mask_radius
        self.sigma = sigma
        self.window = stage_window(band_cycles, sigma, box)
        # a few samples of margin: the ReLU heads add harmonics beyond the band
        self.render_n = int(min(box, self.window + 4))

    def volume_ft(self, net: ResidualMFN) -> torch.Tensor:
        """Padded centred 3D FT of the stage's volume, scaled to the full box's units."""
        vol = render_volume(net, self.render_n, self.scale, self.mask_radius)
        # a grid of n samples over the box sums to (n/D)^3 of the D-grid sum; the 1/D
        # makes images O(1)
        factor = (self.box / self.render_n) ** 3 / self.box
        return volume_fourier(vol, pad=self.pad) * factor

    def slices(self, vol_ft: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """Model spectra on the stage window, ``(B, w, w)`` complex (no CTF)."""
        return fourier_slices(vol_ft, rotations, self.render_n, crop=self.window)
