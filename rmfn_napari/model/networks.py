"""Residual multiplicative filter networks (rMFN) and the BACON multi-head baseline.

One class covers the three methods compared in the paper (Table 1):

=====================================  ==========================================
method                                 settings
=====================================  ==========================================
staged BACON ("fair")                  ``init="bacon", residual=False``
staged + residual, BACON init          ``init="bacon", residual=True``
staged + residual + proposed init      ``init="residual", residual=True`` (rMFN)
=====================================  ==========================================

The network (paper Eqs. 1, 5, 8), L scales, L + 1 filters::

    z0 = g0(x)
    zi = gi(x) * (Wi z(i-1))                  # Hadamard product, i = 1..L
    hi = Wout_i zi + bout_i                   # one linear head per layer, i = 1..L
    y_i = y_(i-1) + act(hi)   (residual)      # scale i = sum of heads 1..i
    y_i = act(hi)             (BACON)

In code, scales are 0-based: scale k is the head on ``z^(k+1)``.

``act`` is the identity, or a ReLU per head when the represented signal is
non-negative (cryo-EM density). Coordinates are in ``[-0.5, 0.5)`` per axis, ordered
``(x, y[, z])``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .filters import INITS, SineFilter, bacon_frequencies, layer_band_limits, residual_frequencies
from .gabor import (
    FILTER_KINDS, WINDOW_SHARE, GaborFilter, window_caps, window_centres, window_rng, window_widths,
)
from .precision import hidden_linear


def grid_axis(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Coordinates of an n-sample axis on the unit box: ``(j - n//2) / n``, j = 0..n-1.

    Sample ``n//2`` sits at the origin (the box centre / rotation centre), and the
    samples span ``[-0.5, 0.5)`` for even n.
    """
    return (torch.arange(n, device=device, dtype=dtype) - (n // 2)) / n


def grid_coords(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """All coordinates of a regular grid, shape ``(*shape, d)`` ordered ``(x, y[, z])``.

    ``shape`` is in array order (``(ny, nx)`` or ``(nz, ny, nx)``).
    """
    axes = [grid_axis(n, device, dtype) for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh[::-1], dim=-1)


class ResidualMFN(nn.Module):
    """A multiplicative filter network with one output per scale.

    Parameters
    ----------
    in_dim : int
        Coordinate dimension (2 for images, 3 for volumes).
    hidden : int
        Width of every hidden layer.
    n_layers : int
        Number of scales = hidden layers = output heads (the network has n_layers + 1
        filters: the first one feeds the first hidden layer).
    out_dim : int
        Channels of the output (1 for grey images and densities, 3 for RGB).
    init : {"residual", "bacon"}
        Frequency initialisation (see :mod:`rmfn_napari.model.filters`).
    residual : bool
        Sum the heads through skip connections (rMFN) or not (BACON multi-head).
    lambdas : (float, float)
        ``(lambda1, lambda2)`` of the proposed init; also fix the growth factor of the
        band limits shared by both inits. Paper: (0.3, 2.0).
    resolution : int
        Samples per unit length N of the finest grid the network is meant for; the
        finest scale is band-limited to N/2 cycles per unit (its Nyquist).
    head_activation : {None, "relu"}
        Applied to each head before summing (paper §6 uses a ReLU: density >= 0).
    seed : int
        Seed of the initialisation (frequencies, phases, weights).
    bacon_quantized : bool
        With ``init="bacon"``: BACON's integer-lattice frequencies instead of continuous.
    new_head_scale : float
        Multiplies the initial weights of heads 1..L-1, so that a new scale starts as a
        small correction of the previous one (1.0: the paper's init; the cryo-EM engine
        uses a small value so that opening a stage does not wreck the map).
    filters : {"sine", "gabor"}
        Sine filters (the paper) or Gabor filters, sines under Gaussian windows
        (:mod:`rmfn_napari.model.gabor`): the same frequency init on the bands shrunk by
        ``1 - window_share``, the windows' widths capped so that each scale's spectrum stays
        (>= 99% of its energy) inside the same declared band as the sine network's.
    window_share : float
        Gabor only: the share eta of each band left to the windows' blur (0 < eta < 1).
    window_radius : float
        Gabor only: half-width (box units) of the cube in which the windows' centres are
        drawn, and the domain the widths are scaled to: 0.5 for an image, the mask radius
        for a particle.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        n_layers: int,
        out_dim: int = 1,
        init: str = "residual",
        residual: bool = True,
        lambdas: tuple[float, float] = (0.3, 2.0),
        resolution: int = 256,
        head_activation: str | None = None,
        seed: int = 0,
        new_head_scale: float = 1.0,
        bacon_quantized: bool = False,
        filters: str = "sine",
        window_share: float = WINDOW_SHARE,
        window_radius: float = 0.5,
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if filters not in FILTER_KINDS:
            raise ValueError(f"filters must be one of {FILTER_KINDS}, got {filters!r}")
        if filters == "gabor" and not (0.0 < window_share < 1.0 and window_radius > 0.0):
            raise ValueError(f"window_share must be in (0, 1) and window_radius > 0, got {window_share}, "
                             f"{window_radius}")
        if head_activation not in (None, "relu"):
            raise ValueError(f"head_activation must be None or 'relu', got {head_activation!r}")
        if min(in_dim, hidden, n_layers, out_dim, resolution) < 1:
            raise ValueError("in_dim, hidden, n_layers, out_dim and resolution must be >= 1")
        self.in_dim, self.hidden, self.n_layers, self.out_dim = in_dim, hidden, n_layers, out_dim
        self.init, self.residual, self.resolution = init, residual, resolution
        self.lambdas = (float(lambdas[0]), float(lambdas[1]))
        self.head_activation = head_activation
        self.seed = int(seed)
        self.new_head_scale = float(new_head_scale)
        self.bacon_quantized = bool(bacon_quantized)
        self.filter_kind = filters
        self.window_share, self.window_radius = float(window_share), float(window_radius)
        gen = torch.Generator().manual_seed(seed)
        layer_bands = layer_band_limits(resolution, n_layers, self.lambdas)  # z^0 .. z^L
        self._layer_bands_rad = layer_bands
        self._bands_rad = layer_bands[1:]
        gabor = filters == "gabor"
        # Gabor: the frequencies fill (1 - eta) of each band, the windows' blur the rest
        omega_bands = [b * (1.0 - self.window_share) for b in layer_bands] if gabor else layer_bands
        self._omega_bands_rad = omega_bands
        caps = window_caps(layer_bands, self.window_share) if gabor else None
        rng = window_rng(seed) if gabor else None
        modules = []
        for i in range(n_layers + 1):
            if init == "residual":
                freq = residual_frequencies(i, in_dim, hidden, omega_bands, self.lambdas, gen)
            else:
                freq = bacon_frequencies(i, in_dim, hidden, omega_bands, gen, self.bacon_quantized)
            if gabor:
                gamma = window_widths(i, n_layers + 1, hidden, caps[i], self.window_radius, rng)
                centre = window_centres(hidden, in_dim, self.window_radius, rng)
                modules.append(GaborFilter(freq, gamma, centre, gen))
            else:
                modules.append(SineFilter(freq, gen))
        self.filters = nn.ModuleList(modules)
        # hidden linears: the proposed init has no bias (DESIGN.md §3); BACON keeps one
        self.linears = nn.ModuleList(
            [nn.Linear(hidden, hidden, bias=(init == "bacon")) for _ in range(n_layers)]
        )
        self.heads = nn.ModuleList([nn.Linear(hidden, out_dim) for _ in range(n_layers)])
        # a run-time setting, not part of the model: precision of the hidden products W z
        # (:mod:`rmfn_napari.model.precision`); the filters and heads are always float32
        self.hidden_precision = "float32"
        bound = math.sqrt(6.0 / hidden)
        with torch.no_grad():
            for lin in list(self.linears) + list(self.heads):
                lin.weight.uniform_(-bound, bound, generator=gen)
                if lin.bias is not None:
                    lin.bias.zero_()
            for head in list(self.heads)[1:]:
                head.weight.mul_(self.new_head_scale)

    # ------------------------------------------------------------------ bands
    @property
    def band_limits(self) -> list[float]:
        """Per-axis band limit of each scale in cycles per unit length (= cycles/box)."""
        return [b / (2 * math.pi) for b in self._bands_rad]

    @property
    def band_limits_rad(self) -> list[float]:
        """Per-axis band limit of each scale in rad per unit length."""
        return list(self._bands_rad)

    @property
    def layer_band_limits_rad(self) -> list[float]:
        """Per-axis band limit of the hidden states ``z^0 .. z^L`` in rad per unit length."""
        return list(self._layer_bands_rad)

    @property
    def frequency_band_limits_rad(self) -> list[float]:
        """Per-axis bound (rad/unit) of the filter frequencies' sums in ``z^0 .. z^L``: the layer
        bands for sine filters, ``(1 - window_share)`` of them for Gabor filters."""
        return list(self._omega_bands_rad)

    # ---------------------------------------------------------------- forward
    def _check_scale(self, max_scale: int | None) -> int:
        if max_scale is None:
            return self.n_layers - 1
        if not 0 <= max_scale < self.n_layers:
            raise ValueError(f"max_scale must be in [0, {self.n_layers - 1}], got {max_scale}")
        return max_scale

    def _features(self, filter_out, max_scale: int) -> list[torch.Tensor]:
        z = filter_out(0)
        feats = []
        for i in range(1, max_scale + 2):
            z = filter_out(i) * hidden_linear(self.linears[i - 1], z, self.hidden_precision)
            feats.append(z)
        return feats

    def features(self, coords: torch.Tensor, max_scale: int | None = None) -> list[torch.Tensor]:
        """The hidden state under each scale's head, ``z^1 .. z^(max_scale+1)``, at coords
        (..., in_dim) -> list of (..., hidden)."""
        last = self._check_scale(max_scale)
        return self._features(lambda i: self.filters[i](coords), last)

    def grid_features(self, shape: Sequence[int], max_scale: int | None = None) -> list[torch.Tensor]:
        """Hidden states on the regular grid of ``shape`` (array order) via separable filters."""
        ref = self.heads[0].weight
        return self.axes_features([grid_axis(n, ref.device, ref.dtype) for n in shape], max_scale)

    def axes_features(self, axes: Sequence[torch.Tensor], max_scale: int | None = None) -> list[torch.Tensor]:
        """Hidden states on the grid spanned by 1D coordinate vectors (array order)."""
        last = self._check_scale(max_scale)
        return self._features(lambda i: self.filters[i].on_grid(list(axes)), last)

    def render_axes(self, axes: Sequence[torch.Tensor], max_scale: int | None = None) -> list[torch.Tensor]:
        """Outputs of every scale on the grid spanned by 1D coordinate vectors (array order)."""
        return self.combine(self.axes_features(axes, max_scale))

    def head(self, i: int, z: torch.Tensor) -> torch.Tensor:
        """Output of head i (with its activation) for hidden state ``z``."""
        out = self.heads[i](z)
        return torch.relu(out) if self.head_activation == "relu" else out

    def combine(self, feats: list[torch.Tensor], detach_below: int | None = None) -> list[torch.Tensor]:
        """Turn hidden states into per-scale outputs.

        ``detach_below=s`` feeds the heads of scales < s with detached features, so their
        losses train only those heads ("fair" staged BACON, paper §3).
        """
        outs: list[torch.Tensor] = []
        prev = None
        for i, z in enumerate(feats):
            if detach_below is not None and i < detach_below:
                z = z.detach()
            h = self.head(i, z)
            y = h if (prev is None or not self.residual) else prev + h
            outs.append(y)
            prev = y
        return outs

    def forward(self, coords: torch.Tensor, max_scale: int | None = None) -> list[torch.Tensor]:
        """Outputs of every scale 0..max_scale at coords (..., in_dim) in [-0.5, 0.5).

        Returns a list with one tensor (..., out_dim) per scale.
        """
        if coords.shape[-1] != self.in_dim:
            raise ValueError(f"coords must have last dimension {self.in_dim}, got {tuple(coords.shape)}")
        return self.combine(self.features(coords, max_scale))

    def render_grid(self, shape: Sequence[int], max_scale: int | None = None) -> list[torch.Tensor]:
        """Outputs of every scale on the regular grid ``shape`` (array order).

        Equivalent to ``self(grid_coords(shape))`` but uses the separable filters.
        Returns tensors of shape ``(*shape, out_dim)``.
        """
        if len(shape) != self.in_dim:
            raise ValueError(f"grid shape must have {self.in_dim} axes, got {tuple(shape)}")
        return self.combine(self.grid_features(shape, max_scale))

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Parameters that shape scale ``stage``: filters 0..stage+1, linears and heads 0..stage."""
        params: list[nn.Parameter] = list(self.filters[0].parameters())
        for i in range(stage + 1):
            params += list(self.filters[i + 1].parameters()) + list(self.linears[i].parameters())
            params += list(self.heads[i].parameters())
        return params

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable) to rebuild this network (the Gabor ones only
        for a Gabor network, so that a sine network's config is what it was before)."""
        out = dict(
            in_dim=self.in_dim, hidden=self.hidden, n_layers=self.n_layers, out_dim=self.out_dim,
            init=self.init, residual=self.residual, lambdas=list(self.lambdas),
            resolution=self.resolution, head_activation=self.head_activation, seed=self.seed,
            new_head_scale=self.new_head_scale, bacon_quantized=self.bacon_quantized,
        )
        if self.filter_kind != "sine":
            out.update(filters=self.filter_kind, window_share=self.window_share,
                       window_radius=self.window_radius)
        return out


METHODS = {
    "rmfn": dict(init="residual", residual=True),
    "res-bacon": dict(init="bacon", residual=True),
    "bacon": dict(init="bacon", residual=False),
}
"""The paper's three methods as constructor settings (Table 1 rows)."""
