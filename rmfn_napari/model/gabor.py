"""Gabor filters for the residual MFN, with a band rule per scale.

A Gabor filter (GaborNet, Fathony et al. 2021) is a sine filter under a Gaussian window::

    g(x) = sin(omega . x + phi) * exp(-gamma/2 * ||x - mu||^2)

Its amplitude spectrum is a Gaussian of width (standard deviation) ``sqrt(gamma)`` rad/unit
per axis around ``+-omega``; it is not band-limited, so the band guarantee of the sine rMFN
(:mod:`.filters`) is rebuilt here as a bound that holds for >= 99% of the energy.

**Products of filters.** Each term of an MFN's hidden state ``z^i`` is a product of one
filter of every layer 0..i. Products of Gaussians are Gaussians whose gammas add, so the term's
window has ``Gamma_i = sum_l gamma_l`` (its centre moves, which only changes the phase of the
spectrum), and its spectrum is the sine term's line at ``omega_bar`` (paper Eq. 4: a sum of
the layers' frequencies) blurred by a Gaussian of width ``sqrt(Gamma_i)``.

**The band rule.** Scale i keeps the sine network's declared band ``B_i``
(:func:`.filters.layer_band_limits`) and splits it: a share ``1 - eta`` for the frequencies and
``eta`` for the windows' blur. The frequencies are drawn by the same init as the sine filters
(Eq. 7, or BACON's) on the bands ``(1 - eta) B_i``, so every ``|omega_bar_a| <= (1 - eta) B_i``;
the widths are capped per layer (:func:`window_caps`) so that every path's window satisfies::

    k * sqrt(Gamma_i) <= eta * B_i        hence        |omega_bar_a| + k sqrt(Gamma_i) <= B_i

on every axis a and for every hidden state ``z^0 .. z^L``. The caps telescope:
``cap_0 = (eta B_0 / k)^2`` and ``cap_l = (eta B_l / k)^2 - (eta B_(l-1) / k)^2``, so the sum of
the caps of layers 0..i is ``(eta B_i / k)^2``.

**Choice of k.** The power spectrum of the window is ``exp(-xi^2 / Gamma)`` per axis: a normal
density of standard deviation ``sqrt(Gamma / 2)``. A term whose centre lies at least
``k sqrt(Gamma)`` inside the band edge on an axis loses at most ``Q(sqrt(2) k)`` of its power
beyond that edge (Q: the normal tail; the far edge is ``>= B + k sqrt(Gamma)`` away, at least
``k / eta`` standard deviations more, negligible). Over d axes at least ``(1 - Q(sqrt(2) k))^d``
stays inside. 99% in 3D needs ``Q(sqrt(2) k) <= 1 - 0.99^(1/3) = 0.00334``, i.e. ``k >= 1.918``;
:data:`BAND_K` = 2 gives ``Q(2.83) = 0.23%`` per axis: >= 99.30% inside in 3D, 99.53% in 2D.
This bounds each term; the sum of terms is measured (tests/test_model_bands.py).

**Windows for a particle in a box.** Centres ``mu`` are drawn uniformly in ``[-r, r]^d`` (box
units; r = 0.5: the image, r = the mask radius: a particle); widths as GaborNet draws them,
``gamma ~ Gamma(alpha / (L + 1), rate beta)`` for coordinates spanning ``[-1, 1]``, here
rescaled to a domain of half-width r (``gamma / r^2``) and then clipped to the layer's cap.
GaborNet's defaults alpha = 6, beta = 1: the product of the L + 1 windows has a mean width
``1 / sqrt(alpha / r^2)`` = 0.2 box for r = 0.5. Both ``gamma`` and ``mu`` are frozen (buffers,
like ``omega``): a trained ``gamma`` would leave the band, and frozen centres keep the
trainable parameters exactly those of the sine rMFN (the phases, hidden linears and heads).
The windows are drawn from their own generator (seeded from the network's seed), so a Gabor
network has the same phases, frequency directions and weights as the sine network of the same
seed: only the frequencies' scale ``1 - eta`` and the windows differ.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .filters import SineFilter

#: The band rule's k: ``|omega_bar| + BAND_K * sqrt(Gamma) <= B`` (>= 99.3% inside in 3D).
BAND_K = 2.0
#: Default share eta of each band given to the windows' blur.
WINDOW_SHARE = 0.25
#: GaborNet's Gamma prior (shape alpha / (L + 1), rate beta, coordinates in [-1, 1]).
GABOR_ALPHA, GABOR_BETA = 6.0, 1.0
#: Offset added to the network's seed for the windows' generator.
WINDOW_SEED_OFFSET = 7919

FILTER_KINDS = ("sine", "gabor")


def window_caps(layer_bands: list[float], share: float, k: float = BAND_K) -> list[float]:
    """Largest window width ``gamma`` (rad^2/unit^2) allowed in each filter 0..L.

    ``layer_bands`` are the per-axis bands ``B_0 .. B_L`` (rad/unit) of the hidden states
    (:func:`.filters.layer_band_limits`); ``share`` is eta. The caps of layers 0..i add up to
    ``(share * B_i / k)^2``, so ``k * sqrt(sum of gammas) <= share * B_i`` on every path.
    """
    budget = [(share * b / k) ** 2 for b in layer_bands]
    return [budget[0]] + [b - a for a, b in zip(budget, budget[1:])]


def window_widths(layer: int, n_filters: int, hidden: int, cap: float, radius: float,
                  rng: np.random.Generator, alpha: float = GABOR_ALPHA,
                  beta: float = GABOR_BETA) -> torch.Tensor:
    """GaborNet's ``gamma ~ Gamma(alpha / n_filters, rate beta)`` (domain [-1, 1]) rescaled to a
    domain of half-width ``radius`` (box units), clipped to ``cap``: shape (hidden,), rad^2/unit^2."""
    del layer  # one prior for every layer, as GaborNet; the cap is what differs
    gamma = rng.gamma(alpha / n_filters, 1.0 / beta, size=hidden) / radius**2
    return torch.as_tensor(np.minimum(gamma, cap), dtype=torch.float32)


def window_centres(hidden: int, in_dim: int, radius: float, rng: np.random.Generator) -> torch.Tensor:
    """Window centres uniform in ``[-radius, radius]^in_dim`` (box units), shape (hidden, in_dim)."""
    return torch.as_tensor(rng.uniform(-radius, radius, size=(hidden, in_dim)), dtype=torch.float32)


class GaborFilter(SineFilter):
    """``g(x) = sin(omega x + phi) * exp(-gamma/2 ||x - mu||^2)``.

    ``frequency`` (rad/unit, (hidden, in_dim)), ``gamma`` (rad^2/unit^2, (hidden,)) and
    ``centre`` (box units, (hidden, in_dim)) are frozen buffers; ``phase`` is trained, as in
    :class:`.filters.SineFilter` (drawn from ``generator`` the same way).
    """

    def __init__(self, frequency: torch.Tensor, gamma: torch.Tensor, centre: torch.Tensor,
                 generator: torch.Generator):
        super().__init__(frequency, generator)
        self.register_buffer("gamma", gamma.clone())
        self.register_buffer("centre", centre.clone())

    def window(self, coords: torch.Tensor) -> torch.Tensor:
        """The Gaussian windows at coords (..., in_dim) -> (..., hidden)."""
        d2 = (coords.unsqueeze(-2) - self.centre).square().sum(-1)
        return torch.exp(-0.5 * self.gamma * d2)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Filter responses at coords (..., in_dim) -> (..., hidden)."""
        return super().forward(coords) * self.window(coords)

    def on_grid(self, axes: list[torch.Tensor]) -> torch.Tensor:
        """Responses on the grid spanned by 1D coordinate vectors (array order), as
        :meth:`.filters.SineFilter.on_grid`; the window is separable too (a product of 1D
        Gaussians, one per axis)."""
        out = super().on_grid(axes)
        d = len(axes)
        for j, ax in enumerate(axes):
            w = torch.exp(-0.5 * self.gamma * (ax[:, None] - self.centre[:, d - 1 - j][None, :]).square())
            out = out * w.reshape([1] * j + [ax.shape[0]] + [1] * (d - 1 - j) + [-1])
        return out


def window_rng(seed: int) -> np.random.Generator:
    """The windows' own generator for a network seeded ``seed``."""
    return np.random.default_rng(int(seed) + WINDOW_SEED_OFFSET)


def window_spread(filters, k: float = BAND_K) -> list[float]:
    """``k * sqrt(sum of max gamma_l over filters 0..i)`` (rad/unit) for every hidden state
    ``z^0 .. z^L``: the widest blur any path's window adds to its spectrum (0 for sine filters)."""
    out, total = [], 0.0
    for f in filters:
        total += float(f.gamma.max()) if isinstance(f, GaborFilter) else 0.0
        out.append(k * math.sqrt(total))
    return out


__all__ = ["BAND_K", "FILTER_KINDS", "GABOR_ALPHA", "GABOR_BETA", "GaborFilter", "WINDOW_SHARE",
           "window_caps", "window_centres", "window_rng", "window_spread", "window_widths"]
