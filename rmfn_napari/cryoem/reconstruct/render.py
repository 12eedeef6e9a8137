"""The map of a stage on the solvent mask's support: which voxels are rendered, how the
network is evaluated there, and how the loss's gradient reaches the network.

The rendered map is the network times the soft spherical mask (:func:`spherical_mask`); outside
the mask's support, ``r ≥ radius + edge``, it is exactly zero, so only the voxels inside are
evaluated: 52% of the cube for the default radius 0.45 and edge 0.05 (box fractions).

A structure step evaluates those voxels in chunks without building an autograd graph, assembles
the map, computes the loss and its gradient with respect to the voxel values, then evaluates
the network again chunk by chunk and back-propagates each chunk's share of that gradient
(activation checkpointing): the parameter gradients of one graph over the whole map, while the
working set of each chunk (a few thousand voxels × hidden) stays in a CPU's cache. When the
support fits in one chunk (a GPU's default), the graph is built once and nothing is recomputed.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ...model.networks import grid_axis

__all__ = ["SupportGrid", "spherical_mask", "default_chunk"]

MASK_EDGE = 0.05  # width of the mask's raised-cosine edge, box fraction


def spherical_mask(n: int, radius: float | None, device=None) -> torch.Tensor | None:
    """Soft spherical mask on an n^3 grid over the box: 1 inside ``radius`` (fraction of the
    box), a raised-cosine edge 0.05 box wide, 0 outside. None when ``radius`` is None."""
    if radius is None:
        return None
    c = grid_axis(n, device)
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    t = ((r - radius) / MASK_EDGE).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def default_chunk(device: torch.device) -> int:
    """Voxels per network evaluation: cache-sized on a CPU (measured fastest at hidden 64-128),
    the whole support of a 128^3 map on a GPU (one graph, no recomputation)."""
    return 2048 if torch.device(device).type == "cpu" else 1 << 21


class SupportGrid:
    """The voxels of an ``n``³ grid over the box where the masked map can be non-zero.

    Parameters
    ----------
    n : int
        Grid size (samples over the unit box, ``grid_axis`` coordinates).
    mask_radius : float or None
        Radius of the soft spherical mask (box fraction); None: every voxel, weight 1.
    device
    chunk : int, optional
        Voxels per network evaluation (:func:`default_chunk` of ``device``).
    compile : bool
        Evaluate the network through ``torch.compile`` (fixed chunk shapes; the last chunk is
        padded), for a GPU.

    Attributes
    ----------
    coords : ``(P, 3)`` float32, ``(x, y, z)`` in box units; ``mask`` ``(P,)`` the mask's values;
    index : ``(P,)`` long, the voxels' flat indices in the ``[z, y, x]`` grid.
    """

    def __init__(self, n: int, mask_radius: float | None, device=None, chunk: int | None = None,
                 compile: bool = False):
        self.n, self.device = int(n), torch.device(device or "cpu")
        c = grid_axis(self.n, self.device)
        z, y, x = torch.meshgrid(c, c, c, indexing="ij")
        mask = spherical_mask(self.n, mask_radius, self.device)
        mask = torch.ones_like(x) if mask is None else mask
        inside = mask.reshape(-1) > 0
        self.index = torch.nonzero(inside).reshape(-1)
        self.coords = torch.stack([x, y, z], -1).reshape(-1, 3)[self.index].contiguous()
        self.mask = mask.reshape(-1)[self.index].contiguous()
        self.chunk = int(chunk or default_chunk(self.device))
        self.compile = bool(compile)
        self._compiled = {}

    def __len__(self) -> int:
        return self.index.shape[0]

    def _evaluator(self, net, scale: int):
        def evaluate(coords):
            return net(coords, max_scale=scale)[-1][..., 0]
        if not self.compile or hasattr(net, "no_sync"):  # not through DistributedDataParallel
            return evaluate
        key = (id(net), scale)
        if key not in self._compiled:
            self._compiled[key] = torch.compile(evaluate, dynamic=False)
        return self._compiled[key]

    def _chunks(self, part: slice | None = None):
        lo, hi = (0, len(self)) if part is None else (part.start, part.stop)
        for start in range(lo, hi, self.chunk):
            yield slice(start, min(start + self.chunk, hi))

    def _evaluate(self, fn, sl: slice) -> torch.Tensor:
        coords = self.coords[sl]
        short = self.chunk - coords.shape[0]
        if self.compile and short > 0:  # one shape for the compiled graph
            coords = torch.cat([coords, coords[-1:].expand(short, 3)])
        out = fn(coords)
        return out[:out.shape[0] - short] if self.compile and short > 0 else out

    def values(self, net, scale: int, grad: bool = False, part: slice | None = None) -> torch.Tensor:
        """Network output of ``scale`` at the support's voxels, ``(P,)`` (not yet masked), or at
        the voxels ``part`` of them only. ``grad=True`` builds the autograd graph (one chunk
        only: see :meth:`backward`)."""
        fn = self._evaluator(net, scale)
        with torch.set_grad_enabled(grad):
            return torch.cat([self._evaluate(fn, sl) for sl in self._chunks(part)])

    def volume(self, values: torch.Tensor) -> torch.Tensor:
        """The masked map ``(n, n, n)`` ``[z, y, x]`` from voxel values ``(P,)``, zero outside."""
        vol = torch.zeros(self.n**3, dtype=values.dtype, device=values.device)
        return vol.index_put((self.index,), values * self.mask).reshape(self.n, self.n, self.n)

    def backward(self, net, scale: int, grad_values: torch.Tensor, part: slice | None = None) -> None:
        """Accumulate into the network's ``.grad`` the gradient whose derivative with respect
        to the voxel values is ``grad_values`` ``(P,)``, one chunk at a time (over the voxels
        ``part`` only, when given: the network's share of the gradient that flows through them).

        A network in ``DistributedDataParallel`` accumulates the chunks locally (``no_sync``)
        and all-reduces the sum once, in the last chunk's backward pass."""
        fn = self._evaluator(net, scale)
        chunks = list(self._chunks(part))
        for i, sl in enumerate(chunks):
            local = net.no_sync() if hasattr(net, "no_sync") and i < len(chunks) - 1 else contextlib.nullcontext()
            with local, torch.enable_grad():
                out = self._evaluate(fn, sl)
                out.backward(grad_values[sl])

    @property
    def single_chunk(self) -> bool:
        """Whether the whole support is one chunk (then a structure step needs no recomputation)."""
        return len(self) <= self.chunk

    def split(self, parts: int) -> list[slice]:
        """The support's voxels in ``parts`` contiguous ranges of nearly equal size (one per
        rank of a data-parallel run: each renders its own); every voxel in exactly one."""
        edges = [len(self) * i // parts for i in range(parts + 1)]
        return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]
