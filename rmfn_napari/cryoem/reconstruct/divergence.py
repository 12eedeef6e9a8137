"""Divergence caught within a batch: losses and weights checked before anything is kept.

Every batch's structure loss (and pose loss, where poses moved) is read back once and compared
with the loss of an empty map on the stage's first batch — the data's own weighted power, which
no learning rate can move. A loss that is not finite, or :data:`EXPLOSION_FACTOR` times that
reference, stops the run within the batch with one line naming the stage, epoch, batch and step
and the likely cause; the last checkpoint (from an epoch's end) is kept, and no map of the
diverged state is written (:func:`check_finite` runs before every checkpoint and every map).
"""

from __future__ import annotations

import math

import torch

from ...engine.control import RunControl
from ...errors import InputError
from .forward import ForwardModel
from .settings import ReconstructConfig

# A loss above this many times the loss of an empty map (the data's own weighted power, on the
# stage's first batch) means the map has blown up. Measured: a freshly initialised network
# scores ~25x at D = 16 and ~400x at D = 64 on its first batch (growing about as D^2, so ~1e5x
# at D = 1024), and falls below 5x as it trains; with --lr-structure 1e3 the first batch
# already scores ~6e14x. The learning rate cannot move this reference, unlike a first loss.
EXPLOSION_FACTOR = 1e8


def empty_map_loss(fwd: ForwardModel, obs, ctf_b, loss_scale: float | None = None, reduce=None) -> float:
    """Mean loss of an all-zero map on one batch (sum of w² |obs|² per image; offsets, being
    phases, do not change it). Read back once per stage. In a data-parallel run, ``loss_scale``
    and ``reduce`` make it the global batch's mean, as in :func:`~.poses.train_batch`."""
    if loss_scale is None:
        loss_scale = 1.0 / max(1, obs.shape[0])
    with torch.no_grad():
        loss = fwd.loss(torch.zeros_like(obs), obs, ctf_b).sum() * loss_scale
        return float(loss if reduce is None else reduce(loss.reshape(1))[0])


def check_losses(loss_s: float, loss_p: float, empty_loss: float, cfg: ReconstructConfig,
                 control: RunControl | None, poses_moved: bool, where: str) -> None:
    """Stop the run within its batch when the structure loss, or the pose loss of a batch that
    refined poses, is not finite or exceeds :data:`EXPLOSION_FACTOR` x ``empty_loss``. Nothing
    of the batch is kept: the error leaves the last checkpoint (from an epoch's end) as it was.

    ``control`` is the one the batch's steps honoured: a batch cut short by its stop request
    may report a NaN placeholder, which is not checked here (:func:`check_finite` checks the
    weights before anything is written). None: the batch took every step (a data-parallel
    run, where the losses are the ranks' average), so every loss is checked — the same
    decision on every rank, whatever stop each of them was asked for."""
    if control is not None and control.stop_requested:
        return
    limit = EXPLOSION_FACTOR * max(empty_loss, 1e-30)
    structure = f"--lr-structure than {cfg.lr_structure:g}"
    checks = [("structure", loss_s, structure)]
    if poses_moved:  # the pose steps also see the map the structure steps left
        checks.append(("pose", loss_p, f"--lr-pose than {cfg.lr_pose:g} or {structure}"))
    for name, value, advice in checks:
        if math.isfinite(value) and value <= limit:
            continue
        what = (f"is {value:.3g}, over {EXPLOSION_FACTOR:g} x the loss of an empty map ({empty_loss:.3g})"
                if math.isfinite(value) else f"is {value} (not finite)")
        raise InputError(f"{where}: the {name} loss {what}: the training diverged (learning rate too "
                         f"high? try a smaller {advice}); stopped within this batch, nothing of it "
                         f"was written and the last checkpoint is kept")


def check_finite(net, rotations, shifts_px, cfg: ReconstructConfig, where: str) -> None:
    """Refuse to go on (and so to write a checkpoint or a map) with non-finite weights, poses
    or offsets."""
    weights = torch.stack([torch.isfinite(p).all() for p in net.parameters()]).all()
    if bool(weights) and bool(torch.isfinite(rotations).all()) and bool(torch.isfinite(shifts_px).all()):
        return
    raise InputError(f"{where}: the network's weights or the poses are not finite: the training "
                     f"diverged (learning rate too high? try a smaller --lr-structure than "
                     f"{cfg.lr_structure:g} or --lr-pose than {cfg.lr_pose:g}); nothing of it was "
                     f"written and the last checkpoint is kept")
