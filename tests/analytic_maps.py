"""Analytic densities for tests: independent of the network, with the two methods the
forward models call (``render_grid`` and ``__call__`` on coordinates in box units)."""

from __future__ import annotations

import torch


class GaussianBlobs(torch.nn.Module):
    """A compact analytic density: ``n`` 3D Gaussians of width ``sigma`` (box units) at random
    centres within ±0.2 of the box centre, weights in [0.5, 1.5)."""

    def __init__(self, seed=0, n=5, sigma=0.09):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.centres = (torch.rand(n, 3, generator=g) - 0.5) * 0.4
        self.weights = torch.rand(n, generator=g) + 0.5
        self.sigma = sigma

    def __call__(self, coords, max_scale=None):
        d2 = ((coords[..., None, :] - self.centres) ** 2).sum(-1)
        return [(self.weights * torch.exp(-d2 / (2 * self.sigma**2))).sum(-1, keepdim=True)]

    def render_grid(self, shape, max_scale=None):
        from rmfn_napari.model import grid_coords

        return self(grid_coords(shape))


def write_sample_map_16(path):
    """The bundled 1OL5 32³ map (2 Å) Fourier-cropped to 16³ (4 Å), written to ``path``."""
    from rmfn_napari.cryoem.downsample import fourier_crop_volume
    from rmfn_napari.cryoem.io import read_map, write_map

    vol, apix = read_map("sample_data/maps/1ol5_32_2.0A.mrc")
    return write_map(path, fourier_crop_volume(vol, 16), apix * 2)
