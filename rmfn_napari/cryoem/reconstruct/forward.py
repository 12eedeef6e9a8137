"""The forward model of one stage: band, window, frequencies, render, Fourier slices, loss.

See the package docstring for the image model; :func:`forward_images_real_space` is the slow
real-space reference. The stage compares spectra on a :class:`FrequencySet` (half-plane,
inside Nyquist) and renders the map on the mask's support (:class:`SupportGrid`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ...engine.distributed import SINGLE, Ranks, unwrap
from ...model import ResidualMFN, growth_factor
from ...model.networks import grid_axis
from ..offsets import centring_phase_at
from ..pose_search import residual_loss
from ..projector import fourier_slices_at, volume_fourier
from .frequencies import FrequencySet
from .render import SupportGrid, spherical_mask


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

    Parameters
    ----------
    box, apix : the images' size (px) and pixel size (Å).
    scale : the scale (0-based) this stage trains; ``band_cycles`` its band (cycles/box).
    sigma : the stage's Gaussian low-pass (Fourier px).
    pad : zero-padding factor of the 3D FFT.
    mask_radius : soft spherical mask radius (box fraction), None: none.
    device, chunk, compile : where the stage runs; voxels per network evaluation; whether the
        network evaluation goes through ``torch.compile`` (:class:`SupportGrid`).
    render_n : samples across the box of the map whose spectrum :meth:`slices` samples; default
        the stage's window + 4 (a few samples of margin: the ReLU heads add harmonics beyond
        the band), at most the box. A map given at the full box (e.g. a reference) uses ``box``.
    ranks : the data-parallel group (default: one process). With several ranks the render is
        split: each rank evaluates the network on its own part of the support
        (:meth:`SupportGrid.split`) and the parts are joined, so every rank holds the whole map
        for its own images; in a structure step the map's gradient is summed over the ranks and
        each back-propagates it through its own part only. :meth:`volume_ft` and
        :meth:`structure_backward` are then collectives: every rank calls them together.
    """

    def __init__(self, box: int, apix: float, scale: int, band_cycles: float, sigma: float, pad: int,
                 mask_radius: float | None = None, device="cpu", chunk: int | None = None,
                 compile: bool = False, render_n: int | None = None, ranks: Ranks = SINGLE):
        self.box, self.apix, self.scale, self.pad = box, apix, scale, pad
        self.mask_radius = mask_radius
        self.sigma = sigma
        self.window = stage_window(band_cycles, sigma, box)
        self.render_n = int(min(box, self.window + 4) if render_n is None else render_n)
        self.freqs = FrequencySet(box, self.window, sigma, device)
        self.support = SupportGrid(self.render_n, mask_radius, device, chunk, compile)
        # a grid of n samples over the box sums to (n/D)^3 of the D-grid sum; the 1/D
        # makes images O(1)
        self._factor = (self.box / self.render_n) ** 3 / self.box
        self.ranks = ranks
        self.parts = self.support.split(ranks.world) if ranks.active and len(self.support) >= ranks.world else None

    def map_ft(self, values: torch.Tensor) -> torch.Tensor:
        """Padded centred 3D FT of the masked map from the support's voxel values ``(P,)``,
        scaled to the full box's units (differentiable in ``values``)."""
        return volume_fourier(self.support.volume(values), pad=self.pad) * self._factor

    def volume_ft(self, net) -> torch.Tensor:
        """Padded centred 3D FT of the stage's map, without gradients (with several ranks each
        renders its part: every rank calls this together)."""
        with torch.no_grad():
            if self.parts is None:
                return self.map_ft(self.support.values(net, self.scale))
            own = self.support.values(unwrap(net), self.scale, part=self.parts[self.ranks.rank])
            return self.map_ft(self.ranks.join(own, self.parts, "joining the map's parts"))

    def slices(self, vol_ft: torch.Tensor, rotations: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        """Model spectra at the stage's frequencies (or at ``k`` ``(K, 2)``, cycles/box),
        ``(B, K)`` complex (no CTF). The map was rendered on ``render_n`` samples across the
        box, so its padded spectrum has ``pad`` samples per cycle/box."""
        return fourier_slices_at(vol_ft, rotations, self.render_n, self.freqs.k if k is None else k)

    def centre(self, obs: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
        """Observed spectra ``(B, K)`` of images with RELION origins ``shifts_px`` (px), centred."""
        return obs * centring_phase_at(self.box, shifts_px, self.freqs.k)

    def loss(self, pred: torch.Tensor, obs: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
        """Per-image weighted squared error ``(B,)`` of model spectra against centred data."""
        return residual_loss(pred, obs, ctf, self.freqs.weight)

    def structure_backward(self, net, obs: torch.Tensor, ctf: torch.Tensor, rotations: torch.Tensor,
                           loss_scale: float | None = None) -> torch.Tensor:
        """Loss of one batch at fixed poses, ``loss_scale`` × the sum of the per-image losses
        (default ``1/B``: the mean); its gradient is accumulated into the network's ``.grad`` (by
        one graph, or chunk by chunk: :class:`SupportGrid`). Returns the loss, detached, on the
        device.

        ``net`` may be the network in ``DistributedDataParallel``: its gradients are then
        all-reduced (averaged over the ranks) once, after the last chunk; a rank's
        ``loss_scale`` of ``world / global batch`` makes that average the gradient of the global
        batch's mean loss. A rank with no image in the batch still takes part (zero loss)."""
        if loss_scale is None:
            loss_scale = 1.0 / max(1, obs.shape[0])
        if self.parts is not None:
            return self._split_structure_backward(net, obs, ctf, rotations, loss_scale)
        if self.support.single_chunk:
            values = self.support.values(net, self.scale, grad=True)
            loss = self.loss(self.slices(self.map_ft(values), rotations), obs, ctf).sum() * loss_scale
            loss.backward()
            return loss.detach()
        values = self.support.values(unwrap(net), self.scale).requires_grad_(True)
        loss = self.loss(self.slices(self.map_ft(values), rotations), obs, ctf).sum() * loss_scale
        loss.backward()
        self.support.backward(net, self.scale, values.grad)
        return loss.detach()

    def _split_structure_backward(self, net, obs, ctf, rotations, loss_scale: float) -> torch.Tensor:
        """:meth:`structure_backward` with the render split over the ranks. Rank r's parameter
        gradient is ``J_rᵀ g``: its voxels' Jacobian times ``g``, the map's gradient summed over
        the ranks' losses; DistributedDataParallel's average ``(1/W) Σ_r J_rᵀ g`` is then the
        one-process gradient ``Jᵀ g / W`` of the global batch's mean (``loss_scale`` is
        ``W / global batch``)."""
        part = self.parts[self.ranks.rank]
        # one chunk: keep its graph. Decided alike on every rank (the parts may differ by a
        # voxel): the two paths meet DistributedDataParallel's collectives in different orders
        graph = max(p.stop - p.start for p in self.parts) <= self.support.chunk
        own = self.support.values(net if graph else unwrap(net), self.scale, grad=graph, part=part)
        values = self.ranks.join(own, self.parts, "joining the map's parts").requires_grad_(True)
        loss = self.loss(self.slices(self.map_ft(values), rotations), obs, ctf).sum() * loss_scale
        loss.backward()
        grad = self.ranks.sum(values.grad, "summing the map's gradient")
        if graph:
            own.backward(grad[part])
        else:
            self.support.backward(net, self.scale, grad, part=part)
        return loss.detach()
