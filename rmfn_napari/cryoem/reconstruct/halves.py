"""Independent half-set refinement: one network before the split, one per half-set after it.

RELION's auto-refine and cryoSPARC refine the two half-sets apart from a common start that is
low-passed well below the resolution anyone will claim (RELION's ``--ini_high``, ~60 Å for ab
initio); only then is the FSC between their maps a gold standard (DESIGN.md §2). Here the coarse
scales play the common start: up to the end of stage ``split_after`` one network is trained on
every particle; from the next stage on there are two, both copies of the shared one (and of its
optimiser state) at the split, and half-set ``h`` trains network ``h`` only, with its own poses
and offsets, searched and refined against network ``h`` only. Frequencies below the shared
band's edge are not measured by the half-maps' FSC: a crossing there is not a resolution.

``split_after`` is a stage count: 2 (the default) shares stages 1-2 — 13 Å at 32 px and 2 Å/px —
and splits before stage 3. A split after stage 1 (44 Å, the role of RELION's ~60 Å start) was
measured first: there the shared map had not yet fixed the hand (poses still 67° off), and the
two halves of the cpu benchmark settled in mirrored frames; RELION's ``--ini_high`` start is a
converged map whose hand is fixed. ``--split-at 40A`` shares every stage whose band is coarser
than 40 Å. A split at or after the last stage never happens: the halves then share one
network, and the run says its half-map FSC is not a gold standard.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import torch

from ...errors import InputError

__all__ = ["HalfNetworks", "AveragedNetwork", "split_stage", "parse_split_at", "epoch_batches"]

_SPLIT_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(a|å|angstrom)?\s*$", re.IGNORECASE)


def parse_split_at(text) -> tuple[str, float]:
    """``("stage", N)`` for a stage count (``"1"``: split after stage 1) or ``("angstrom", d)`` for
    a resolution (``"40A"``, ``"40 Å"``: share the stages whose band is coarser than d Å).
    Raises :class:`InputError` for anything else."""
    m = _SPLIT_RE.match(str(text))
    if m is None:
        raise InputError(f"--split-at must be a stage count (e.g. 1) or a resolution in Å (e.g. 40A), got {text!r}")
    value = float(m.group(1))
    if m.group(2):
        if value <= 0:
            raise InputError(f"--split-at {text}: a resolution must be > 0 Å")
        return "angstrom", value
    if not value.is_integer():
        raise InputError(f"--split-at {text}: a stage count is a whole number (or give Å: {value:g}A)")
    return "stage", value


def split_stage(text, plan: list[tuple[int, int]], band_limits: list[float], box: int, apix: float) -> int:
    """The 0-based stage of ``plan`` from which the half-sets have their own networks
    (``len(plan)``: never). Stage-count form: that count, at least 1 (stage 1 is always shared:
    an ab initio run's frame and hand are fixed there). Ångström form: the first stage whose band
    (``box · apix / band`` Å) is finer than the given resolution, at least 1."""
    kind, value = parse_split_at(text)
    if kind == "stage":
        return int(min(max(1, value), len(plan)))
    for i, (scale, _epochs) in enumerate(plan):
        if box * apix / max(band_limits[scale], 1e-9) < value:
            return max(1, i)
    return len(plan)


def epoch_batches(order: np.ndarray, halves: np.ndarray | None, batch_size: int) -> list[tuple[int, np.ndarray]]:
    """One epoch's batches, ``[(half, sorted particle indices), ...]``, from the epoch's order.

    Before the split (``halves`` None) every batch mixes the half-sets (``half`` 0: the shared
    network). After it each batch holds one half-set's particles, the halves' batches taken in
    turn, so that every particle passes through its own network once per epoch."""
    if halves is None:
        n_b = int(np.ceil(len(order) / batch_size))
        return [(0, np.sort(order[b * batch_size:(b + 1) * batch_size])) for b in range(n_b)]
    per_half = []
    for h in (1, 2):
        mine = order[halves[order] == h]
        per_half.append([(h, np.sort(mine[b * batch_size:(b + 1) * batch_size]))
                         for b in range(int(np.ceil(len(mine) / batch_size)))])
    out = []
    for b in range(max(len(p) for p in per_half)):
        out += [p[b] for p in per_half if b < len(p)]
    return out


class AveragedNetwork(torch.nn.Module):
    """The mean of the half-set networks' outputs, for rendering only (``render_grid``,
    ``band_limits``): the map a user looks at and the one compared with a reference."""

    def __init__(self, nets: list[torch.nn.Module]):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)

    @property
    def band_limits(self) -> list[float]:
        return self.nets[0].band_limits

    def render_grid(self, shape, max_scale: int | None = None) -> list[torch.Tensor]:
        """Each scale's map, the mean over the networks (the networks' ``render_grid``)."""
        outs = [net.render_grid(shape, max_scale=max_scale) for net in self.nets]
        return [sum(parts) / len(parts) for parts in zip(*outs)]

    def forward(self, coords: torch.Tensor, max_scale: int | None = None) -> list[torch.Tensor]:
        outs = [net(coords, max_scale=max_scale) for net in self.nets]
        return [sum(parts) / len(parts) for parts in zip(*outs)]


class HalfNetworks:
    """The shared network and its optimiser, then, after :meth:`split`, one of each per half-set.

    ``net(h)`` / ``opt(h)`` give half-set ``h``'s (1 or 2; 0 or any before the split: the shared
    one). ``display`` is the network to render for a user: the shared one, or the mean of the
    halves' (:class:`AveragedNetwork`).
    """

    def __init__(self, net: torch.nn.Module, opt: torch.optim.Optimizer):
        self.nets = [net]
        self.opts = [opt]

    @property
    def independent(self) -> bool:
        """Whether the half-sets have their own networks (the run has passed its split)."""
        return len(self.nets) == 2

    def split(self) -> None:
        """Copy the shared network and its optimiser state: half-set 1 keeps the original,
        half-set 2 gets the copy. Nothing is shared afterwards (no parameter, buffer or moment)."""
        if self.independent:
            return
        net2 = copy.deepcopy(self.nets[0])
        opt2 = type(self.opts[0])(net2.parameters(), **self.opts[0].defaults)
        opt2.load_state_dict(copy.deepcopy(self.opts[0].state_dict()))
        self.nets.append(net2)
        self.opts.append(opt2)

    def net(self, half: int) -> torch.nn.Module:
        return self.nets[half - 1] if self.independent and half in (1, 2) else self.nets[0]

    def opt(self, half: int) -> torch.optim.Optimizer:
        return self.opts[half - 1] if self.independent and half in (1, 2) else self.opts[0]

    def groups(self) -> list[int]:
        """The half-sets that train a network of their own (``[1, 2]``), or ``[0]`` (shared)."""
        return [1, 2] if self.independent else [0]

    @property
    def display(self) -> torch.nn.Module:
        return AveragedNetwork(self.nets) if self.independent else self.nets[0]

    def state(self) -> dict:
        """What a checkpoint keeps: the networks' and optimisers' states (the second half-set's
        None before the split)."""
        return {"net": self.nets[0].state_dict(), "opt": self.opts[0].state_dict(),
                "net_half2": self.nets[1].state_dict() if self.independent else None,
                "opt_half2": self.opts[1].state_dict() if self.independent else None}

    def load(self, saved: dict) -> None:
        """Restore :meth:`state` (splitting first where the saved run had split)."""
        self.nets[0].load_state_dict(saved["net"])
        self.opts[0].load_state_dict(saved["opt"])
        if saved.get("net_half2") is not None:
            self.split()
            self.nets[1].load_state_dict(saved["net_half2"])
            self.opts[1].load_state_dict(saved["opt_half2"])
