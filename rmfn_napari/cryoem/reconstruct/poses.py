"""Poses and offsets: where they start, which stages move them, the per-batch structure and
pose steps (paper §6), the offset grids of the global search and their clamp."""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np
import torch

from ...engine.distributed import unwrap
from ...errors import InputError
from ..ground_truth import TruePoses
from ..offsets import shift_grid
from ..projector import channels_first
from ..rotations import axis_angle_to_matrix, geodesic_distance, perturb_rotations, random_rotations
from .forward import ForwardModel
from .settings import ReconstructConfig


def initial_rotations(ds, n: int, cfg: ReconstructConfig, truth: TruePoses | None = None):
    """Starting rotations ``(n, 3, 3)`` float64 and a sentence saying where they come from."""
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    star = torch.as_tensor(ds.rotations[:n], dtype=torch.float64) if ds.has_poses else None
    known = torch.as_tensor(truth.rotations, dtype=torch.float64) if truth is not None else star
    if cfg.mode == "oracle-poses":
        if known is None:
            raise InputError("oracle-poses needs the true poses (--true-poses) or angles in the STAR",
                             ds.star_path)
        return known.clone(), "poses fixed at the " + ("true poses" if truth is not None else "STAR's angles")
    init = cfg.pose_init
    if init == "auto":
        init = "star" if star is not None else "random"
    if init == "star":
        if star is None:
            raise InputError("pose init 'star' needs rlnAngleRot/Tilt/Psi in the STAR", ds.star_path)
        return star.clone(), "starting from the STAR's angles"
    if init == "perturb":
        if known is None:
            raise InputError("pose init 'perturb' (the paper's protocol) turns known poses away: give "
                             "--true-poses or a STAR with angles", ds.star_path)
        lo, hi = cfg.perturb_deg
        return (perturb_rotations(known, lo, hi, generator=gen),
                f"starting {lo:g}-{hi:g}° from the " + ("true poses" if truth is not None else "STAR's angles"))
    note = "" if star is not None else " (the STAR has no angles)"
    return random_rotations(n, generator=gen), f"starting from uniformly random poses{note}"


def initial_shifts(ds, n: int, cfg: ReconstructConfig, truth: TruePoses | None) -> torch.Tensor:
    """Starting origins ``(n, 2)`` float64 in px of the working box (RELION convention): the
    truth's where the rotations come from it (oracle poses, or perturbed true poses), else
    the STAR's (zero where it has none)."""
    from_truth = truth is not None and (cfg.mode == "oracle-poses" or cfg.pose_init == "perturb")
    shifts_A = truth.shifts_A if from_truth else ds.shifts_A[:n]
    return torch.as_tensor(np.asarray(shifts_A) / ds.apix, dtype=torch.float64).clone()


def _orthonormalize(R: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(R)
    d = torch.sign(torch.linalg.det(u @ vh))
    u = u.clone()
    u[..., :, -1] *= d[..., None]
    return u @ vh


def structure_steps(net, opt, fwd: ForwardModel, obs, ctf_b, R, steps: int, control=None,
                    loss_scale: float | None = None) -> torch.Tensor:
    """``steps`` Adam steps on the network for one batch at fixed poses ``R`` (B, 3, 3).

    ``obs`` are centred spectra at the stage's frequencies (offsets applied). Returns the last
    loss (weighted squared error; the mean per image, or ``loss_scale`` × the sum:
    :meth:`ForwardModel.structure_backward`), a tensor on the device: nothing inside the loop
    waits for the device. ``net`` may be in ``DistributedDataParallel`` (then ``control`` must be
    None: every rank takes every step).
    """
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        if control is not None and control.wait_or_stop():
            break
        opt.zero_grad(set_to_none=True)
        loss = fwd.structure_backward(net, obs, ctf_b, R, loss_scale)
        opt.step()
    return loss


def pose_steps(vol_ft, fwd: ForwardModel, obs, ctf_b, R, steps: int, lr: float,
               betas=(0.9, 0.9), control=None, shifts_px=None, lr_shift: float = 0.0,
               prior_centres=None, prior_px: float | None = None):
    """Refine poses of one batch against a fixed (rendered) volume; no network pass.

    Each image gets an axis-angle correction ``w_i`` (radians), ``R_i <- exp([w_i]x) R_i``,
    optimised by Adam for ``steps`` steps on its own loss. With ``shifts_px`` (B, 2) the
    ``obs`` are the uncentred spectra and are centred with those origins (px, RELION
    convention); ``lr_shift`` > 0 also refines each origin by Adam (px per step), and with
    ``prior_px`` under a Gaussian prior of that width (px) around ``prior_centres`` (B, 2)
    (:func:`~rmfn_napari.cryoem.pose_search.global_pose_search` explains the prior).

    Returns
    -------
    (rotations (B, 3, 3) float64, origins (B, 2) px float64 or None, last mean loss), all on the
    device: nothing here waits for it (the caller reads them back once per batch)
    """
    omega = torch.zeros(R.shape[0], 3, device=R.device, dtype=R.dtype, requires_grad=True)
    groups = [{"params": [omega], "lr": lr}]
    delta = None
    if shifts_px is not None:
        delta = torch.zeros(R.shape[0], 2, device=R.device, dtype=torch.float32, requires_grad=lr_shift > 0)
        if lr_shift > 0:
            groups.append({"params": [delta], "lr": lr_shift})
    popt = torch.optim.Adam(groups, betas=tuple(betas))
    volume = channels_first(vol_ft)  # laid out once for the sampler, not once per step
    target = obs if delta is None else fwd.centre(obs, shifts_px)
    last = torch.tensor(float("nan"))
    noise = None
    for _ in range(steps):
        if control is not None and control.wait_or_stop():
            break
        if delta is not None and lr_shift > 0:
            target = fwd.centre(obs, shifts_px + delta)
        per_image = fwd.loss(fwd.slices(volume, axis_angle_to_matrix(omega) @ R), target, ctf_b)
        popt.zero_grad(set_to_none=True)
        total = per_image.sum()
        if prior_px is not None and delta is not None and lr_shift > 0:
            if noise is None:  # each image's residual power per coefficient at the start: its noise
                noise = per_image.detach() / (fwd.freqs.weight ** 2).sum()
            # the Gaussian prior in the loss's units: σ² |t − t₀|² / (2 s²)
            total = total + (noise * ((shifts_px + delta - prior_centres) ** 2).sum(-1)).sum() / (2 * prior_px**2)
        total.backward()
        popt.step()
        last = per_image.detach()
    with torch.no_grad():
        new = axis_angle_to_matrix(omega.detach().double()) @ R.double()
    new_shifts = None if delta is None else (shifts_px + delta).detach().double()
    return new, new_shifts, last.mean()


def _poses_free(cfg: ReconstructConfig, stage_idx: int, first_stage: int) -> bool:
    """Whether poses may change in stage ``stage_idx`` (0-based) under a setting that starts at
    ``first_stage``: never with oracle poses, always in a full-scale run's single stage."""
    if cfg.mode == "oracle-poses":
        return False
    return cfg.mode == "full-scale" or stage_idx >= first_stage


def moves_poses(cfg: ReconstructConfig, stage_idx: int) -> bool:
    """Whether batches of stage ``stage_idx`` (0-based) run pose steps."""
    return cfg.pose_steps > 0 and _poses_free(cfg, stage_idx, cfg.pose_from_stage)


def searches_poses(cfg: ReconstructConfig, stage_idx: int, scale: int) -> bool:
    """Whether stage ``stage_idx`` (0-based), which trains ``scale``, runs the global search."""
    if not cfg.pose_search or not _poses_free(cfg, stage_idx, cfg.search_from_stage):
        return False
    return cfg.search_in_finest or scale < cfg.n_layers - 1


def shift_prior(cfg: ReconstructConfig) -> float | None:
    """Width (px) of the Gaussian prior on each offset around its starting origin, or None
    (``shift_prior_px`` 0: maximum likelihood, no prior).

    One width for the whole run. Releasing it once the poses settle was measured and did not
    help (docs/results.md, "The offset prior's width"): released at any stage, a quiet stage-2
    epoch (poses 74-90° off) let the search fit the noise again (both protocols ended at 18°);
    released in the finest stage, the paper's 45-90° start ended at 10.2° and 11.5 Å instead of
    8.3° and 7.3 Å, the demo at 11.1° instead of 10.2°."""
    return cfg.shift_prior_px if cfg.shift_prior_px > 0 else None


def estimates_shifts(cfg: ReconstructConfig) -> bool:
    """Whether this run estimates in-plane offsets (a range > 0 and poses not fixed)."""
    return cfg.shift_range_px > 0 and cfg.mode != "oracle-poses"


def search_offsets(cfg: ReconstructConfig, fwd: ForwardModel, whole_range: bool) -> tuple[torch.Tensor, bool]:
    """Candidate offsets (px) of a global search, and whether they span the whole range.

    The grid spacing follows the scored band: ``D / (4 k_max)`` px (a quarter period of the
    highest frequency scored), at least 0.25 px. Until one search has covered it, the grid
    spans ±``shift_range_px`` around each particle's starting origin; after that, searches
    refine locally, one grid step around each particle's current offset. Without offset
    estimation: (0, 0) around the current offset.
    """
    if not estimates_shifts(cfg):
        return shift_grid(0.0, 1.0), False
    k_max = min(cfg.search_window, fwd.window) / 2
    step = max(0.25, fwd.box / (4 * k_max))
    if whole_range:
        return shift_grid(cfg.shift_range_px, step), True
    return shift_grid(min(step, cfg.shift_range_px), step), False


MOVING_DEG = 5.0  # a pose that turned by more than this in an epoch has not converged


def moving_poses(before: torch.Tensor, after: torch.Tensor, threshold_deg: float = MOVING_DEG) -> dict:
    """How far the rotations ``(n, 3, 3)`` turned between ``before`` and ``after`` (one epoch):
    ``fraction_moving`` (turned by more than ``threshold_deg`` degrees), ``median_deg`` and
    ``threshold_deg``. A converged refinement moves few poses; a failed one keeps moving them."""
    angle = torch.as_tensor(geodesic_distance(before, after), dtype=torch.float64)
    return {"fraction_moving": float((angle > threshold_deg).double().mean()),
            "median_deg": float(angle.median()), "threshold_deg": float(threshold_deg)}


def clamp_offsets(shifts_px: torch.Tensor, start: torch.Tensor, range_px: float, idx=None) -> None:
    """Keep offsets within ±``range_px`` (per axis) of their starting origins, in place."""
    if idx is None:
        idx = slice(None)
    lo, hi = start[idx] - range_px, start[idx] + range_px
    shifts_px[idx] = torch.maximum(torch.minimum(shifts_px[idx], hi), lo)


def train_batch(net, opt, fwd: ForwardModel, obs, ctf_b, rotations, shifts_px, start_shifts, idx, cfg,
                control, device, move_poses: bool, loss_scale: float | None = None,
                reduce=None, prior_px: float | None = None, times=None) -> tuple[float, float]:
    """One batch: structure steps at the current poses (images centred with their offsets), then
    pose steps that also refine the offsets when they are estimated; the stored rotations
    (float64) and offsets (px, clamped around their starting origins) are updated in place.

    In a data-parallel run ``net`` is in ``DistributedDataParallel``, ``idx`` is this rank's part
    of the global batch (possibly empty), ``loss_scale`` is ``world / global batch`` and
    ``reduce`` averages the two losses over the ranks (:meth:`Ranks.mean`); ``control`` is None
    there (a stop is agreed between batches). ``prior_px``: the offsets' prior width
    (:func:`shift_prior`; None: none). ``times``: a
    :class:`~rmfn_napari.engine.part_times.PartTimes` the structure and pose steps are counted
    in (None: not timed). Returns the last structure and pose losses (means
    over the batch), read from the device once, here."""
    if loss_scale is None:
        loss_scale = 1.0 / max(1, len(idx))
    R = rotations[idx].to(device=device, dtype=torch.float32)
    sh = shifts_px[idx].to(device=device, dtype=torch.float32)
    with times.part("structure steps") if times is not None else nullcontext():
        loss_s = structure_steps(net, opt, fwd, fwd.centre(obs, sh), ctf_b, R, cfg.structure_steps, control,
                                 loss_scale)
    loss_p = torch.tensor(float("nan"))
    stopping = control is not None and control.stop_requested
    if move_poses and not stopping:
        started = time.perf_counter()
        loss_p = torch.zeros(())
        vol_ft = fwd.volume_ft(unwrap(net))  # every rank: with several, each renders a part
        if len(idx) > 0:
            loss_p = _pose_batch(vol_ft, fwd, obs, ctf_b, R, sh, rotations, shifts_px, start_shifts,
                                 idx, cfg, control, prior_px) * (len(idx) * loss_scale)
        if times is not None:
            times.add("pose steps", time.perf_counter() - started)
    losses = torch.stack([loss_s.float().to(device), loss_p.float().to(device)])
    if reduce is not None:
        losses = reduce(losses)
    return tuple(losses.cpu().tolist())


def _pose_batch(vol_ft, fwd: ForwardModel, obs, ctf_b, R, sh, rotations, shifts_px, start_shifts, idx, cfg,
                control, prior_px: float | None) -> torch.Tensor:
    """The pose steps of :func:`train_batch` against the map's spectrum ``vol_ft``; returns their
    last mean loss (NaN: diverged, and the stored poses were left as they were)."""
    lr_shift = cfg.lr_shift if estimates_shifts(cfg) else 0.0
    new, new_sh, loss_p = pose_steps(vol_ft, fwd, obs, ctf_b, R, cfg.pose_steps, cfg.lr_pose,
                                     cfg.pose_betas, control, shifts_px=sh, lr_shift=lr_shift,
                                     prior_centres=start_shifts[idx].to(sh.device, sh.dtype),
                                     prior_px=prior_px)
    # fold the float32 correction into the float64 stored pose (on the CPU: one read-back)
    new, new_sh = new.cpu(), new_sh.cpu() if lr_shift > 0 else None
    if not (bool(torch.isfinite(new).all()) and (new_sh is None or bool(torch.isfinite(new_sh).all()))):
        return torch.tensor(float("nan"))  # diverged: the stored poses stay; the caller stops
    new = _orthonormalize(new)
    delta = new @ R.double().cpu().transpose(-1, -2)
    rotations[idx] = _orthonormalize(delta @ rotations[idx])
    if lr_shift > 0:
        shifts_px[idx] = new_sh
        clamp_offsets(shifts_px, start_shifts, cfg.shift_range_px, idx)
    return loss_p
