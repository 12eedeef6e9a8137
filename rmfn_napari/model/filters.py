"""Sine filter banks and the frequency initialisation schemes of the paper.

Coordinates are in ``[-0.5, 0.5)`` per axis (one unit = one box), ordered ``(x, y)`` or
``(x, y, z)`` with x the fastest array axis. A frequency of ``k`` cycles per unit is
``2*pi*k`` rad per unit. Band limits are per-axis bounds on the frequencies: a signal is
"band-limited to B" when every Fourier component has ``|omega_a| <= B`` on every axis a.

Two initialisations are provided, both with *frozen* filter frequencies:

``"residual"`` (paper Eq. 7)
    Layer 0: ``omega ~ U(-B_0, B_0)^d``. Layer i: ``omega = lambda2 * B_{i-1} * r +
    U(-lambda1*B_{i-1}, lambda1*B_{i-1})^d`` with ``r`` drawn per hidden unit from the
    direction set (2D: 4 directions, 3D: 13 directions, unnormalised). The output of
    layer i is then band-limited to ``B_i = (1 + lambda1 + lambda2) * B_{i-1}``.

``"bacon"`` (BACON, Lindell et al. 2022)
    Layer i draws ``omega ~ U(-b_i, b_i)^d`` with ``b_0 = B_0`` and
    ``b_i = B_i - B_{i-1}``, so ``z^i`` is band-limited to ``B_i`` too ("the frequencies
    for all methods are initialised to have the same band-limit", paper §5). Continuous,
    as in the authors' code for Table 1; BACON's integer lattice is an option.

An L-scale network has L + 1 filters (paper Eq. 1): ``z^0 = g^0(x)`` and
``z^i = g^i(x) * (W^i z^(i-1))`` for i = 1..L, with the head of scale i on ``z^i``. The
bands are shared: ``B_L = pi * N`` rad/unit (the Nyquist frequency of an N-sample grid on
the unit box, N/2 cycles/box) and ``B_i = B_L / g^(L-i)`` with the growth factor
``g = 1 + lambda1 + lambda2``.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

#: Expansion directions for 2D (paper Eq. 7): half of the 8 neighbours, since the sign
#: factors s = +-1 of the Hadamard product give the opposite shifts for free.
DIRECTIONS_2D = ((0, 1), (1, 0), (1, 1), (-1, 1))

#: The 13 directions for 3D: half of the 26 neighbours of the unit cube, one per
#: antipodal pair: {(i, j, 1)} U {(i, 1, 0)} U {(1, 0, 0)}.
DIRECTIONS_3D = tuple(
    [(i, j, 1) for i, j in itertools.product((-1, 0, 1), repeat=2)]
    + [(i, 1, 0) for i in (-1, 0, 1)]
    + [(1, 0, 0)]
)

INITS = ("residual", "bacon")


def growth_factor(lambdas: tuple[float, float]) -> float:
    """Band growth per layer, ``g = 1 + lambda1 + lambda2`` (3.3 for the paper's 0.3, 2)."""
    lam1, lam2 = lambdas
    return 1.0 + lam1 + lam2


def layer_band_limits(resolution: int, n_scales: int, lambdas: tuple[float, float]) -> list[float]:
    """Per-axis band limit (rad/unit) of every hidden state ``z^0 .. z^L`` (L = n_scales).

    ``z^i`` is band-limited to ``pi * N / g^(L - i)``: ``z^L`` (the finest scale) to the
    Nyquist frequency of the N-grid, the first filter ``z^0`` to ``pi * N / g^L``. Scale k
    (1-based) is the head on ``z^k``, so the scale bands are this list without its first
    entry (:func:`scale_band_limits`).
    """
    if resolution <= 0 or n_scales <= 0:
        raise ValueError("resolution and n_scales must be positive")
    g = growth_factor(lambdas)
    top = math.pi * resolution
    return [top / g ** (n_scales - i) for i in range(n_scales + 1)]


def scale_band_limits(resolution: int, n_scales: int, lambdas: tuple[float, float]) -> list[float]:
    """Per-axis band limit of every scale in rad per unit length.

    Parameters
    ----------
    resolution : int
        Samples per unit length N of the finest grid; the finest scale is band-limited
        to its Nyquist frequency ``pi * N`` rad/unit (= N/2 cycles/box).
    n_scales : int
        Number of scales (= network layers = output heads).
    lambdas : (float, float)
        ``(lambda1, lambda2)`` of the initialisation; they set the growth factor.

    Returns
    -------
    list of float
        ``B_0 < B_1 < ... < B_{L-1}`` in rad/unit; divide by ``2*pi`` for cycles/box.
    """
    return layer_band_limits(resolution, n_scales, lambdas)[1:]


def directions(in_dim: int) -> torch.Tensor:
    """The direction set R of Eq. 7 for ``in_dim`` = 2 or 3, as a float tensor (n, d)."""
    if in_dim == 2:
        return torch.tensor(DIRECTIONS_2D, dtype=torch.float32)
    if in_dim == 3:
        return torch.tensor(DIRECTIONS_3D, dtype=torch.float32)
    if in_dim == 1:
        return torch.tensor([[1.0]])
    raise ValueError(f"no direction set for in_dim={in_dim} (supported: 1, 2, 3)")


def residual_frequencies(
    layer: int,
    in_dim: int,
    hidden: int,
    bands: list[float],
    lambdas: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Filter frequencies (rad/unit), shape (hidden, in_dim), of the proposed init (Eq. 7).

    ``bands`` are the hidden-state bands of :func:`layer_band_limits`; filter ``layer``
    shifts the band of ``z^(layer-1)``.
    """
    if layer == 0:
        b0 = bands[0]
        return (torch.rand(hidden, in_dim, generator=generator) * 2 - 1) * b0
    lam1, lam2 = lambdas
    prev = bands[layer - 1]
    dirs = directions(in_dim)
    pick = torch.randint(0, dirs.shape[0], (hidden,), generator=generator)
    jitter = (torch.rand(hidden, in_dim, generator=generator) * 2 - 1) * lam1 * prev
    return lam2 * prev * dirs[pick] + jitter


def bacon_frequencies(
    layer: int, in_dim: int, hidden: int, bands: list[float], generator: torch.Generator,
    quantized: bool = False,
) -> torch.Tensor:
    """BACON band split: filter frequencies (rad/unit), shape (hidden, in_dim).

    Filter ``layer`` gets a per-axis bandwidth ``b = B_0`` (layer 0) or ``B_i - B_{i-1}``
    (``bands`` from :func:`layer_band_limits`), so the bands add up layer by layer.
    Frequencies are drawn U(-b, b) per axis, as the rMFN authors' code does for its BACON
    baselines (Table 1); ``quantized=True`` gives BACON's own integer lattice instead
    (whole cycles per unit: periodic on the unit box).
    """
    width = bands[0] if layer == 0 else bands[layer] - bands[layer - 1]
    if not quantized:
        return (torch.rand(hidden, in_dim, generator=generator) * 2 - 1) * width
    m_max = int(math.floor(width / (2 * math.pi) + 1e-9))
    m = torch.randint(-m_max, m_max + 1, (hidden, in_dim), generator=generator)
    return 2 * math.pi * m.to(torch.float32)


class SineFilter(nn.Module):
    """``g(x) = sin(omega x + phi)`` with frozen frequencies and trainable phases.

    ``frequency`` (buffer, rad/unit) has shape (hidden, in_dim); ``phase`` (parameter,
    rad) has shape (hidden,), initialised U(-pi, pi).
    """

    def __init__(self, frequency: torch.Tensor, generator: torch.Generator):
        super().__init__()
        self.register_buffer("frequency", frequency.clone())
        hidden = frequency.shape[0]
        self.phase = nn.Parameter((torch.rand(hidden, generator=generator) * 2 - 1) * math.pi)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Filter responses at coords (..., in_dim) -> (..., hidden)."""
        return torch.sin(coords @ self.frequency.T + self.phase)

    def on_grid(self, axes: list[torch.Tensor]) -> torch.Tensor:
        """Responses on the regular grid spanned by 1D coordinate vectors.

        ``axes`` are in array order (``[y, x]`` or ``[z, y, x]``; the coordinate order of
        ``frequency`` is ``(x, y[, z])``). Returns a tensor of shape
        ``(len(axes[0]), ..., len(axes[-1]), hidden)``.

        The filter is separable: with ``a_k = omega_k x_k`` (+ the phase on one axis),
        ``sin(sum a_k)`` is built up by the angle-addition formulas from 1D sines and
        cosines, so no ``N^d x d`` matmul and only ``N x hidden`` transcendental calls
        per axis are needed; the cost per grid point is a few multiply-adds.
        """
        d = len(axes)
        freq = self.frequency
        # angle per axis, array axis j corresponds to coordinate index d-1-j
        angles = [axes[j][:, None] * freq[:, d - 1 - j][None, :] for j in range(d)]
        angles[0] = angles[0] + self.phase  # fold the phase into the slowest axis
        s, c = torch.sin(angles[0]), torch.cos(angles[0])
        for j in range(1, d):
            sj, cj = torch.sin(angles[j]), torch.cos(angles[j])
            s_exp, c_exp = s.unsqueeze(-2), c.unsqueeze(-2)  # (..., 1, hidden)
            if j == d - 1:  # the last axis needs the sine only
                return s_exp * cj + c_exp * sj
            s, c = s_exp * cj + c_exp * sj, c_exp * cj - s_exp * sj
        return s
