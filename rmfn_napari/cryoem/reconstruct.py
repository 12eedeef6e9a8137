"""Coarse-to-fine joint estimation of a 3D map and particle poses (paper §6).

The map is a 3D residual MFN in real space (coordinates: voxel index j -> (j - D/2)/D per
axis, x fastest), one non-negative output per scale (a ReLU on each head). Training goes
in stages, one scale per stage; in stage s the observed images and the model's images are
low-passed by a Gaussian of sigma = band_s * D / 3 Fourier pixels (band_s = 1/g^2, 1/g, 1
of Nyquist for three scales, g = 1 + lambda1 + lambda2).

Forward model (fast path): the network is rendered once per structure step on a grid sized
to the stage's band (not the full box), zero-padded 2x and Fourier transformed; each
particle's image is the central slice at its pose (Fourier slice theorem) times its CTF,
compared with the observed image inside the stage's frequency window (Parseval: equal to
the real-space squared error of the low-passed images). Pose steps reuse the rendered
volume and need no network pass. :func:`forward_images_real_space` is the slow reference
(one network evaluation per rotated grid point per image).

Per batch (paper): ``structure_steps`` Adam steps on the network (lr 1e-3), then
``pose_steps`` Adam steps (lr 1e-2, betas (0.9, 0.9)) on a per-image axis-angle correction
``R_i <- exp([w_i]x) R_i`` that is folded into the stored rotation after the batch.

Units: box D pixels, pixel size apix Å, frequencies in cycles/box, resolutions in Å,
angles in degrees.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..engine.control import RunControl, honour_requests
from ..engine.devices import resolve_device
from ..engine.events import (
    Event, Log, Metrics, Progress, RunFinished, RunStarted, ScaleSnapshot, StageFinished,
    StageStarted,
)
from ..errors import InputError
from ..fitting.metrics import log_spectrum
from ..model import ResidualMFN, growth_factor
from ..model.networks import grid_axis
from .io import ParticleDataset, read_map, read_particles, write_map, write_particles_star
from .metrics import align_map, apply_alignment, fsc, pose_error_stats, pose_errors, resolution_at
from .projector import fft2_centered, fourier_slices, volume_fourier
from .rotations import axis_angle_to_matrix, perturb_rotations, random_rotations

MODES = ("coarse-to-fine", "full-scale", "oracle-poses")
POSE_INITS = ("star", "perturb", "random")
# where the global pose search runs (the CLI's --pose-search, the widget's "pose search"):
# the coarse stages only, every stage from ``search_from_stage`` on, or nowhere (paper)
POSE_SEARCH_MODES: dict[str, dict] = {
    "coarse": dict(pose_search=True, search_in_finest=False),
    "all": dict(pose_search=True, search_in_finest=True),
    "off": dict(pose_search=False),
}


def pose_search_mode(cfg: "ReconstructConfig") -> str:
    """The key of :data:`POSE_SEARCH_MODES` that describes ``cfg``."""
    if not cfg.pose_search:
        return "off"
    return "all" if cfg.search_in_finest else "coarse"


@dataclass
class ReconstructConfig:
    """Settings of a reconstruction. ``from_preset`` gives the named defaults.

    Attributes
    ----------
    preset : str
        Name of the preset these settings started from (for the record).
    mode : {"coarse-to-fine", "full-scale", "oracle-poses"}
        ``full-scale``: one stage at the finest scale from the start (paper Fig. 6 right);
        ``oracle-poses``: poses fixed at the STAR's (the truth, for simulated data).
    n_layers, hidden, lambdas : network (paper: 3, 128, (0.3, 2.0)).
    epochs_per_stage : epochs of each stage (len = n_layers); ``full-scale`` runs their sum.
    batch_size : particles per batch.
    structure_steps, pose_steps : optimisation steps per batch (paper: 5, 20).
    lr_structure, lr_pose : Adam learning rates (paper: 1e-3, 1e-2); pose betas (0.9, 0.9).
    pose_init : {"star", "perturb", "random"}
        Initial poses: the STAR's, the STAR's perturbed by a random rotation of
        ``perturb_deg`` (paper protocol, when the STAR holds the truth), or uniform.
    perturb_deg : (min, max) geodesic perturbation in degrees.
    poses_are_truth : evaluate pose errors against the STAR's poses (simulated data).
    mask_radius : soft spherical solvent mask applied to the rendered map, radius as a
        fraction of the box (0.45: 0.45 D, cosine edge of 0.05 D); None: no mask.
    new_head_scale : initial weight scale of heads 2..L relative to the paper's init, so
        that opening a stage does not wreck the map (1.0: the paper's init).
    pose_search : before each epoch, score every particle against ``search_rotations``
        random rotations (a fresh uniform set each epoch) on the stage's central Fourier
        window (at most ``search_window`` pixels wide) and keep the best pose where it
        beats the current one; the paper's gradient steps then refine locally. It runs
        from stage ``search_from_stage`` (0-based; the first stage's band cannot fix
        poses) and skips each stage's first epoch (the new head is still settling). Our
        extension (not in the paper): gradient-only refinement is local (DESIGN.md §4b).
    search_in_finest : whether the global search also runs in the finest stage (and so in
        a ``full-scale`` run, whose one stage is the finest). False: search at the coarse
        bands only and refine locally (gradient steps) at the finest, as cryo-EM packages
        do: global search at low resolution, local refinement at high resolution.
    pose_from_stage : first stage (0-based) whose batches run pose steps; earlier stages
        train the map only and keep the poses (0: every stage, as in the paper). A
        ``full-scale`` run has one stage and always refines poses.
    invert_contrast : multiply the images by -1 (data with dark particles).
    max_particles : use only the first N particles (None: all).
    pad : zero-padding factor of the 3D FFT (2).
    snapshot_interval_s : minimum seconds between in-stage volume snapshots.
    align_for_fsc : align (rotation, shift, hand) each map to the reference before FSC.
    device, seed : where and how reproducibly to run.
    """

    preset: str = "cpu-small"
    mode: str = "coarse-to-fine"
    n_layers: int = 3
    hidden: int = 128
    lambdas: tuple[float, float] = (0.3, 2.0)
    epochs_per_stage: tuple[int, ...] = (15, 15, 70)
    batch_size: int = 600
    structure_steps: int = 5
    pose_steps: int = 20
    lr_structure: float = 1e-3
    lr_pose: float = 1e-2
    pose_betas: tuple[float, float] = (0.9, 0.9)
    pose_init: str = "perturb"
    perturb_deg: tuple[float, float] = (45.0, 90.0)
    poses_are_truth: bool = True
    invert_contrast: bool = False
    max_particles: int | None = None
    mask_radius: float | None = 0.45
    new_head_scale: float = 0.05
    pose_search: bool = False
    search_from_stage: int = 1
    search_rotations: int = 4000
    search_window: int = 20
    search_in_finest: bool = True
    pose_from_stage: int = 0
    pad: int = 2
    snapshot_interval_s: float = 5.0
    align_for_fsc: bool = True
    device: str = "auto"
    seed: int = 0

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ReconstructConfig":
        """Settings of preset ``name`` (see :data:`PRESETS`) with keyword overrides."""
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"unknown settings: {', '.join(sorted(unknown))}")
        return replace(cls(**PRESETS[name]), preset=name, **overrides)

    def validate(self) -> None:
        """Raise :class:`InputError` for settings that cannot run."""
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.pose_init not in POSE_INITS:
            raise InputError(f"pose_init must be one of {POSE_INITS}, got {self.pose_init!r}")
        if len(self.epochs_per_stage) != self.n_layers:
            raise InputError(f"epochs_per_stage needs {self.n_layers} values (one per layer), "
                             f"got {tuple(self.epochs_per_stage)}")
        if min(self.epochs_per_stage) < 1 or self.batch_size < 1 or self.hidden < 1:
            raise InputError("epochs, batch size and width must be positive")
        if self.structure_steps < 1 or self.pose_steps < 0:
            raise InputError("structure_steps must be >= 1 and pose_steps >= 0")
        if self.pose_from_stage < 0 or self.search_from_stage < 0:
            raise InputError("pose_from_stage and search_from_stage are stage indices (>= 0)")

    def stage_plan(self) -> list[tuple[int, int]]:
        """``[(scale, epochs), ...]``: which scale each stage trains and for how long."""
        if self.mode == "full-scale":
            return [(self.n_layers - 1, int(sum(self.epochs_per_stage)))]
        return [(s, int(e)) for s, e in enumerate(self.epochs_per_stage)]


PRESETS: dict[str, dict] = {
    # the paper's protocol (§6): 64^3, 50,000 particles, 100 epochs, for a GPU
    "paper": dict(n_layers=3, hidden=128, epochs_per_stage=(15, 15, 70), batch_size=600,
                  structure_steps=5, pose_steps=20, lr_structure=1e-3, lr_pose=1e-2),
    # a 2-core CPU in ~10 minutes: 32^3 maps, a few thousand particles. Smaller batches
    # give more structure updates per epoch. At D = 32 the first band (~1.5 cycles/box,
    # 44 Å) cannot orient particles: gradient pose steps there only randomised the poses
    # (median error 67° -> 87°), so stage 1 trains the map alone; poses are searched
    # globally from stage 2 and the finest stage gets the most epochs, as in the paper.
    # (`--pose-search coarse --epochs 10,60,30` searches at stage 2 only and refines
    # locally at the finest: the paper's claim shows more clearly, results are a little worse.)
    "cpu-small": dict(n_layers=3, hidden=64, epochs_per_stage=(10, 15, 35), batch_size=200,
                      structure_steps=5, pose_steps=20, lr_structure=1e-3, lr_pose=1e-2,
                      pose_search=True, pose_from_stage=1),
    # seconds: smoke tests and the napari demo
    "tiny": dict(n_layers=3, hidden=32, epochs_per_stage=(1, 1, 1), batch_size=64,
                 structure_steps=2, pose_steps=4, lr_structure=1e-3, lr_pose=1e-2,
                 snapshot_interval_s=1.0, align_for_fsc=False),
}


# ------------------------------------------------------------------------------ helpers
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


def gaussian_weight(window: int, sigma: float, device) -> torch.Tensor:
    """Centred 2D Gaussian ``exp(-k^2 / (2 sigma^2))`` on a window x window Fourier grid."""
    k = torch.arange(window, device=device, dtype=torch.float32) - window // 2
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    return torch.exp(-k2 / (2 * sigma**2))


def crop_center(ft: torch.Tensor, window: int) -> torch.Tensor:
    """Central ``window x window`` of centred 2D spectra ``(..., D, D)``."""
    D = ft.shape[-1]
    lo = D // 2 - window // 2
    return ft[..., lo:lo + window, lo:lo + window]


def shift_phase(box: int, shifts_px: torch.Tensor, window: int) -> torch.Tensor:
    """Phase ramps that undo image shifts (RELION origins, pixels) on the central window."""
    k = (torch.arange(window, dtype=torch.float32, device=shifts_px.device) - window // 2) / box
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    phase = 2 * math.pi * (kx[None] * shifts_px[:, 0, None, None] + ky[None] * shifts_px[:, 1, None, None])
    return torch.polar(torch.ones_like(phase), phase)


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


# ------------------------------------------------------------------------------- engine
def _load_dataset(dataset) -> ParticleDataset:
    if isinstance(dataset, ParticleDataset):
        return dataset
    return read_particles(dataset)


def _load_reference(reference, box: int, apix: float):
    if reference is None:
        return None
    if isinstance(reference, (str, Path)):
        vol, ref_apix = read_map(reference)
        if vol.shape != (box,) * 3:
            raise InputError(f"reference map is {vol.shape[0]}^3 but the particles are {box}x{box}", reference)
        if abs(ref_apix - apix) > 1e-3 * apix:
            raise InputError(f"reference voxel size {ref_apix:.4g} Å differs from the particles' "
                             f"pixel size {apix:.4g} Å", reference)
        return vol
    vol = np.asarray(reference, dtype=np.float32)
    if vol.shape != (box,) * 3:
        raise InputError(f"reference map has shape {vol.shape}, expected {(box,) * 3}")
    if not np.all(np.isfinite(vol)):
        raise InputError("reference map contains NaN or Inf")
    return vol


def _initial_rotations(ds: ParticleDataset, n: int, cfg: ReconstructConfig) -> torch.Tensor:
    star = torch.as_tensor(ds.rotations[:n], dtype=torch.float64)
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    if cfg.mode == "oracle-poses" or cfg.pose_init == "star":
        return star.clone()
    if cfg.pose_init == "perturb":
        return perturb_rotations(star, cfg.perturb_deg[0], cfg.perturb_deg[1], generator=gen)
    return random_rotations(n, generator=gen)


def _orthonormalize(R: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(R)
    d = torch.sign(torch.linalg.det(u @ vh))
    u = u.clone()
    u[..., :, -1] *= d[..., None]
    return u @ vh


@dataclass
class _State:
    """Everything a checkpoint holds beyond the network and optimiser."""

    stage: int = 0
    epoch_in_stage: int = 0  # epochs completed in the current stage
    step: int = 0  # batches done over the run
    elapsed_s: float = 0.0
    history: dict = field(default_factory=dict)


def _save_checkpoint(path: Path, net, opt, rotations, state: _State, cfg: ReconstructConfig) -> None:
    payload = {
        "config": asdict(cfg), "net_config": net.config(), "net": net.state_dict(),
        "opt": opt.state_dict(), "rotations": rotations.cpu(), "state": asdict(state),
        "format": "rmfn-napari/reconstruct/1",
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint.", suffix=".pt")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict:
    """Read a reconstruction checkpoint (raises :class:`InputError` naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such checkpoint", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(f"cannot read checkpoint ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(payload, dict) or payload.get("format") != "rmfn-napari/reconstruct/1":
        raise InputError("not an rmfn-napari reconstruction checkpoint", path)
    return payload


def _evaluate(net, box, apix, scale, reference, rotations, true_rot, cfg, stage) -> list[Event]:
    """FSC of every scale up to ``scale`` against the reference, and pose errors.

    The finest map is aligned to the reference (rotation, shift, hand); every scale shares
    the network's frame, so the same transform is applied to the coarser ones.
    """
    events: list[Event] = []
    maps = render_all_scales(net, box, scale, cfg.mask_radius)
    if reference is not None:
        alignment = None
        if cfg.align_for_fsc:
            _, alignment = align_map(maps[-1], reference, apix)
        for k, vol in enumerate(maps):
            aligned = apply_alignment(vol, alignment) if alignment is not None else vol
            freqs, curve = fsc(aligned, reference)
            res = resolution_at(freqs, curve, 0.5, box, apix)
            events.append(Metrics("fsc", stage, {
                "scale": k, "resolution_A": res, "crossed": bool(np.any(curve < 0.5)),
                "freq_cycles": np.asarray(freqs).tolist(), "fsc": np.asarray(curve).tolist(),
                "threshold": 0.5, "alignment": None if alignment is None else alignment.to_dict(),
            }))
    if true_rot is not None:
        err, g, flipped = pose_errors(rotations.numpy(), true_rot, allow_flip=True, return_transform=True)
        stats = pose_error_stats(err)
        stats.update(global_rotation=np.asarray(g).tolist(), hand_flipped=bool(flipped))
        events.append(Metrics("pose_errors", stage, stats, {"errors_deg": np.asarray(err, np.float32)}))
    return events


def reconstruct(
    dataset,
    config: ReconstructConfig | None = None,
    control: RunControl | None = None,
    reference=None,
    out_dir: str | Path | None = None,
    resume: bool = False,
) -> Iterator[Event]:
    """Reconstruct a map and the poses from a particle stack, coarse to fine.

    Parameters
    ----------
    dataset : str, Path or ParticleDataset
        A RELION particle STAR file (images read lazily, batch by batch) or an open dataset.
    config : ReconstructConfig
    control : RunControl, optional
        Pause / next stage / stop; honoured between optimisation steps.
    reference : array (D, D, D), path to an MRC, or None
        Ground-truth/reference map for FSC (aligned first unless ``align_for_fsc=False``).
    out_dir : path, optional
        Per-scale maps ``scale_k.mrc``, ``poses.star``, ``metrics.json``, ``checkpoint.pt``
        (every epoch) and ``run.log`` are written there.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` (same data and settings).

    Yields
    ------
    Event
        RunStarted, StageStarted, Progress (per batch; ``extra`` = epoch, pose loss),
        ScaleSnapshot (3D volumes, voxel size in Å), Metrics ("fsc" per scale,
        "pose_errors"), StageFinished, RunFinished.
    """
    cfg = config or ReconstructConfig()
    cfg.validate()
    control = control or RunControl()
    ds = _load_dataset(dataset)
    box, apix = ds.box, ds.apix
    if box % 2:
        raise InputError(f"odd image size {box} is not supported", ds.star_path)
    n = ds.n if cfg.max_particles is None else min(ds.n, int(cfg.max_particles))
    ref = _load_reference(reference, box, apix)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt" if out is not None else None
    device = resolve_device(cfg.device)
    log_lines: list[str] = []

    torch.manual_seed(cfg.seed)
    net = ResidualMFN(3, cfg.hidden, cfg.n_layers, out_dim=1, init="residual", residual=True,
                      lambdas=cfg.lambdas, resolution=box, head_activation="relu", seed=cfg.seed,
                      new_head_scale=cfg.new_head_scale).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr_structure)
    rotations = _initial_rotations(ds, n, cfg)
    true_rot = ds.rotations[:n] if (cfg.poses_are_truth and ds.has_poses) else None
    state = _State()
    if resume:
        if ckpt_path is None:
            raise InputError("resume needs the output directory of the interrupted run")
        payload = load_checkpoint(ckpt_path)
        if payload["net_config"] != net.config() or payload["rotations"].shape[0] != n:
            raise InputError("checkpoint was made with other settings or data", ckpt_path)
        net.load_state_dict(payload["net"])
        opt.load_state_dict(payload["opt"])
        rotations = payload["rotations"].to(torch.float64)
        state = _State(**payload["state"])

    ctf = ds.ctf
    shifts_px = torch.as_tensor(ds.shifts_A[:n] / apix, dtype=torch.float32)
    scale_img = _image_scale(ds, n, cfg)
    plan = cfg.stage_plan()
    batches_per_epoch = int(math.ceil(n / cfg.batch_size))
    total_batches = batches_per_epoch * sum(e for _, e in plan)
    yield RunStarted("reconstruct", len(plan), total_batches, str(device), config=asdict(cfg))
    yield Log(f"{n} particles of {box}x{box} at {apix:.3g} Å/px; mode {cfg.mode}; "
              f"{len(plan)} stage(s) {[e for _, e in plan]} epochs; batch {cfg.batch_size}")
    if resume:
        yield Log(f"resumed at stage {state.stage + 1}, epoch {state.epoch_in_stage}, batch {state.step}")

    t_start = time.perf_counter() - state.elapsed_s
    stopped = False
    metrics_out: dict = {"stages": state.history.get("stages", [])}
    last_eval: list[Event] = []
    last_scale = plan[min(state.stage, len(plan) - 1)][0]

    def log(msg: str) -> Log:
        log_lines.append(msg)
        return Log(msg)

    for stage_idx in range(state.stage, len(plan)):
        scale, epochs = plan[stage_idx]
        last_scale = scale
        band = net.band_limits[scale]
        sigma = stage_sigma(scale, cfg.n_layers, box, cfg.lambdas)
        fwd = ForwardModel(box, apix, scale, band, sigma, cfg.pad, cfg.mask_radius)
        weight = gaussian_weight(fwd.window, sigma, device)
        yield StageStarted(stage_idx, len(plan), epochs * batches_per_epoch, band)
        yield log(f"stage {stage_idx + 1}: scale {scale + 1}, band {band:.2f} cycles/box "
                  f"({box * apix / max(band, 1e-9):.1f} Å), low-pass sigma {sigma:.2f} px, "
                  f"window {fwd.window}, render grid {fwd.render_n}^3")
        stage_t0 = time.perf_counter()
        last_snap = stage_t0
        skipped = False
        start_epoch = state.epoch_in_stage if stage_idx == state.stage else 0
        stage_batches = 0
        for epoch in range(start_epoch, epochs):
            order = np.random.default_rng([cfg.seed, stage_idx, epoch]).permutation(n)
            epoch_loss = 0.0
            search_now = _searches_poses(cfg, stage_idx, scale) and epoch > 0
            if search_now and not control.stop_requested:
                t_search = time.perf_counter()
                gen = torch.Generator().manual_seed(cfg.seed * 100003 + stage_idx * 1009 + epoch)
                batches = ((idx, *_batch_data(ds, idx, ctf, shifts_px, fwd, scale_img, cfg, device))
                           for idx in np.array_split(np.arange(n), max(1, n // 1000)))
                moved, total = global_pose_search(net, fwd, weight, batches, rotations,
                                                  cfg.search_rotations, cfg.search_window, gen, device)
                yield log(f"  epoch {epoch + 1}: global search moved {moved}/{total} poses "
                          f"({time.perf_counter() - t_search:.1f} s)")
            for b in range(batches_per_epoch):
                command = yield from honour_requests(control, state.step)
                if command is not None:
                    stopped, skipped = command == "stop", command == "next"
                    break
                idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
                obs, ctf_b = _batch_data(ds, idx, ctf, shifts_px, fwd, scale_img, cfg, device)
                loss_s, loss_p = _train_batch(net, opt, fwd, weight, obs, ctf_b, rotations, idx, cfg,
                                              control, device, _moves_poses(cfg, stage_idx))
                state.step += 1
                stage_batches += 1
                epoch_loss += loss_s
                elapsed = time.perf_counter() - t_start
                done_frac = state.step / total_batches
                eta = elapsed / max(done_frac, 1e-9) * (1 - done_frac) if state.step > 0 else float("nan")
                yield Progress(stage_idx, state.step, total_batches, epoch * batches_per_epoch + b + 1,
                               epochs * batches_per_epoch, loss_s, elapsed, eta,
                               {"epoch": epoch + 1, "pose_loss": loss_p})
                now = time.perf_counter()
                if now - last_snap >= cfg.snapshot_interval_s:
                    last_snap = now
                    yield _snapshot(net, box, apix, scale, stage_idx, final=False, mask_radius=cfg.mask_radius)
            if stopped or skipped:
                break
            state.epoch_in_stage = epoch + 1
            state.elapsed_s = time.perf_counter() - t_start
            if ckpt_path is not None:
                state.stage = stage_idx
                state.history = {"stages": metrics_out["stages"]}
                _save_checkpoint(ckpt_path, net, opt, rotations, state, cfg)
        # end of stage: snapshots of every scale so far, FSC, pose errors
        for k in range(scale + 1):
            yield _snapshot(net, box, apix, k, stage_idx, final=True, mask_radius=cfg.mask_radius)
        last_eval = _evaluate(net, box, apix, scale, ref, rotations, true_rot, cfg, stage_idx)
        summary = _summarise(last_eval)
        summary.update(stage=stage_idx + 1, scale=scale + 1, epochs_done=state.epoch_in_stage,
                       seconds=time.perf_counter() - stage_t0, band_cycles=band,
                       band_resolution_A=box * apix / band)
        metrics_out["stages"].append(summary)
        for ev in last_eval:
            yield ev
        yield StageFinished(stage_idx, stage_batches, time.perf_counter() - stage_t0, skipped,
                            {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        yield log("stage {stage}: {s}".format(stage=stage_idx + 1, s=json.dumps(
            {k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()})))
        if stopped:
            break
        state.stage, state.epoch_in_stage = stage_idx + 1, 0
        if ckpt_path is not None:
            state.elapsed_s = time.perf_counter() - t_start
            state.history = {"stages": metrics_out["stages"]}
            _save_checkpoint(ckpt_path, net, opt, rotations, state, cfg)
        if control.pause_at_stage_end and stage_idx < len(plan) - 1:
            control.pause()

    seconds = time.perf_counter() - t_start
    metrics_out.update(_final_metrics(last_eval), mode=cfg.mode, preset=cfg.preset, n_particles=n,
                       box=box, apix=apix, seconds=seconds, stopped=stopped, batches=state.step,
                       band_limits_cycles=net.band_limits)
    outputs: dict[str, str] = {}
    if out is not None:
        outputs = _write_outputs(out, net, box, apix, last_scale, ds, n, rotations, metrics_out,
                                 log_lines, scale_img, cfg.mask_radius)
        if ckpt_path is not None and ckpt_path.exists():
            outputs["checkpoint"] = str(ckpt_path)
    yield RunFinished(stopped, state.step, seconds, outputs, metrics_out)


def _image_scale(ds: ParticleDataset, n: int, cfg: ReconstructConfig) -> float:
    """Global intensity scale of the images (std over up to 512 particles)."""
    idx = np.linspace(0, n - 1, num=min(n, 512)).astype(int)
    imgs = ds.images(np.unique(idx))
    s = float(np.std(imgs))
    if not np.isfinite(s) or s <= 0:
        raise InputError("the particle images are constant or not finite", ds.star_path)
    return s


def _batch_data(ds, idx, ctf, shifts_px, fwd: ForwardModel, scale_img, cfg, device):
    imgs = torch.as_tensor(ds.images(idx), dtype=torch.float32)
    if not torch.all(torch.isfinite(imgs)):
        raise InputError(f"NaN/Inf pixels in particles {idx[:5].tolist()}...", ds.star_path)
    if cfg.invert_contrast:
        imgs = -imgs
    ft = crop_center(fft2_centered(imgs / scale_img), fwd.window)
    sh = shifts_px[idx]
    if torch.any(sh != 0):
        ft = ft * shift_phase(fwd.box, sh, fwd.window)
    if ctf is not None:
        c = crop_center(ctf.evaluate(fwd.box, fwd.apix, idx, dtype=torch.float32), fwd.window)
    else:
        c = torch.ones_like(ft.real)
    # the centred 2D FFT of an image sums D^2 pixels: divide so both sides match Parseval
    return (ft / fwd.box).to(device), c.to(device)


def _residual_loss(pred: torch.Tensor, obs: torch.Tensor, ctf: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-image weighted squared error on the stage window, ``(B,)``."""
    diff = (pred * ctf - obs) * weight
    return (diff.real**2 + diff.imag**2).sum((-1, -2))


def structure_steps(net, opt, fwd: ForwardModel, weight, obs, ctf_b, R, steps: int, control=None) -> float:
    """``steps`` Adam steps on the network for one batch at fixed poses ``R`` (B, 3, 3).

    Returns the last mean per-image loss (weighted squared error on the stage window).
    """
    loss_value = float("nan")
    for _ in range(steps):
        if control is not None and control.wait_or_stop():
            break
        vol_ft = fwd.volume_ft(net)
        loss = _residual_loss(fwd.slices(vol_ft, R), obs, ctf_b, weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
    return loss_value


def pose_steps(vol_ft, fwd: ForwardModel, weight, obs, ctf_b, R, steps: int, lr: float,
               betas=(0.9, 0.9), control=None) -> tuple[torch.Tensor, float]:
    """Refine poses of one batch against a fixed (rendered) volume; no network pass.

    Each image gets an axis-angle correction ``w_i`` (radians), ``R_i <- exp([w_i]x) R_i``,
    optimised by Adam for ``steps`` steps on its own loss. Returns the corrected
    rotations (B, 3, 3), orthonormalised, and the last mean per-image loss.
    """
    omega = torch.zeros(R.shape[0], 3, device=R.device, dtype=R.dtype, requires_grad=True)
    popt = torch.optim.Adam([omega], lr=lr, betas=tuple(betas))
    loss_value = float("nan")
    for _ in range(steps):
        if control is not None and control.wait_or_stop():
            break
        per_image = _residual_loss(fwd.slices(vol_ft, axis_angle_to_matrix(omega) @ R), obs, ctf_b, weight)
        popt.zero_grad(set_to_none=True)
        per_image.sum().backward()
        popt.step()
        loss_value = float(per_image.detach().mean())
    with torch.no_grad():
        new = axis_angle_to_matrix(omega.detach().double()) @ R.double()
    return _orthonormalize(new.cpu()), loss_value


def score_rotations(slices: torch.Tensor, obs: torch.Tensor, ctf_b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted squared error of every image against every candidate slice, ``(B, G)``.

    ``slices`` (G, w, w) are model spectra (no CTF); ``obs`` and ``ctf_b`` (B, w, w).
    Expands ``sum_k w^2 |c S - o|^2 = sum w^2 c^2 |S|^2 - 2 Re sum w^2 c conj(o) S + const``
    into two matrix products, so all B x G pairs cost one pass; the constant
    ``sum w^2 |o|^2`` is added so values equal :func:`_residual_loss`.
    """
    w2 = (weight**2).reshape(1, -1)
    S = slices.reshape(slices.shape[0], -1)
    o = obs.reshape(obs.shape[0], -1)
    c = ctf_b.reshape(ctf_b.shape[0], -1)
    a = w2 * c * o.conj()
    cross = a.real @ S.real.T - a.imag @ S.imag.T
    quad = (w2 * c * c) @ (S.real**2 + S.imag**2).T
    const = (w2 * (o.real**2 + o.imag**2)).sum(-1, keepdim=True)
    return quad - 2 * cross + const


def global_pose_search(net, fwd: ForwardModel, weight, batches, rotations, n_candidates: int,
                       window: int, generator: torch.Generator, device) -> tuple[int, int]:
    """Replace poses by the best of ``n_candidates`` random rotations where that fits better.

    ``batches`` yields ``(idx, obs, ctf)`` on the stage window. The score uses the central
    ``window`` x ``window`` frequencies. Returns (particles improved, particles scored).
    """
    cand = random_rotations(n_candidates, generator=generator, dtype=torch.float64)
    win = int(min(window, fwd.window))
    w = crop_center(weight, win)
    with torch.no_grad():
        vol_ft = fwd.volume_ft(net)
        S = crop_center(fwd.slices(vol_ft, cand.to(device=device, dtype=torch.float32)), win)
        improved = scored = 0
        for idx, obs, ctf_b in batches:
            obs_c, ctf_c = crop_center(obs, win), crop_center(ctf_b, win)
            scores = score_rotations(S, obs_c, ctf_c, w)
            best, arg = scores.min(dim=1)
            R_now = rotations[idx].to(device=device, dtype=torch.float32)
            now = _residual_loss(crop_center(fwd.slices(vol_ft, R_now), win), obs_c, ctf_c, w)
            better = (best < now).cpu()
            sel = torch.as_tensor(idx)[better]
            rotations[sel] = cand[arg.cpu()[better]]
            improved += int(better.sum())
            scored += len(idx)
    return improved, scored


def _poses_free(cfg: ReconstructConfig, stage_idx: int, first_stage: int) -> bool:
    """Whether poses may change in stage ``stage_idx`` (0-based) under a setting that starts at
    ``first_stage``: never with oracle poses, always in a full-scale run's single stage."""
    if cfg.mode == "oracle-poses":
        return False
    return cfg.mode == "full-scale" or stage_idx >= first_stage


def _moves_poses(cfg: ReconstructConfig, stage_idx: int) -> bool:
    """Whether batches of stage ``stage_idx`` (0-based) run pose steps."""
    return cfg.pose_steps > 0 and _poses_free(cfg, stage_idx, cfg.pose_from_stage)


def _searches_poses(cfg: ReconstructConfig, stage_idx: int, scale: int) -> bool:
    """Whether stage ``stage_idx`` (0-based), which trains ``scale``, runs the global search."""
    if not cfg.pose_search or not _poses_free(cfg, stage_idx, cfg.search_from_stage):
        return False
    return cfg.search_in_finest or scale < cfg.n_layers - 1


def _train_batch(net, opt, fwd: ForwardModel, weight, obs, ctf_b, rotations, idx, cfg, control, device,
                 move_poses: bool):
    R = rotations[idx].to(device=device, dtype=torch.float32)
    loss_s = structure_steps(net, opt, fwd, weight, obs, ctf_b, R, cfg.structure_steps, control)
    loss_p = float("nan")
    if move_poses and not control.stop_requested:
        with torch.no_grad():
            vol_ft = fwd.volume_ft(net)
        new, loss_p = pose_steps(vol_ft, fwd, weight, obs, ctf_b, R, cfg.pose_steps, cfg.lr_pose,
                                 cfg.pose_betas, control)
        # fold the float32 correction into the float64 stored pose
        delta = new @ R.double().cpu().transpose(-1, -2)
        rotations[idx] = _orthonormalize(delta @ rotations[idx])
    return loss_s, loss_p


def _snapshot(net, box, apix, scale, stage, final, mask_radius=None) -> ScaleSnapshot:
    with torch.no_grad():
        vol = render_volume(net, box, scale, mask_radius).float().cpu().numpy()
    return ScaleSnapshot(scale, vol, log_spectrum(vol), apix, stage, final)


def _summarise(events: list[Event]) -> dict:
    out: dict = {}
    for ev in events:
        if isinstance(ev, Metrics) and ev.name == "fsc":
            out[f"fsc_resolution_A_scale{ev.values['scale'] + 1}"] = ev.values["resolution_A"]
        if isinstance(ev, Metrics) and ev.name == "pose_errors":
            out.update(pose_median_deg=ev.values["median_deg"], pose_frac_under_5deg=ev.values["frac_under_5deg"])
    return out


def _final_metrics(events: list[Event]) -> dict:
    fsc = {}
    poses = None
    for ev in events:
        if isinstance(ev, Metrics) and ev.name == "fsc":
            v = dict(ev.values)
            fsc[f"scale{v['scale'] + 1}"] = v
        if isinstance(ev, Metrics) and ev.name == "pose_errors":
            poses = ev.values
    res = {"fsc": fsc, "pose_errors": poses}
    if fsc:
        res["resolution_A"] = fsc[max(fsc)]["resolution_A"]
    return res


def _write_outputs(out: Path, net, box, apix, last_scale, ds, n, rotations, metrics, log_lines, scale_img,
                   mask_radius=None):
    written: dict[str, str] = {}
    maps = render_all_scales(net, box, last_scale, mask_radius)
    for k, vol in enumerate(maps):
        # back to the images' units: image = sum_z V / D in units of the image std
        path = write_map(out / f"scale_{k + 1}.mrc", vol * scale_img, apix)
        written[f"scale_{k + 1}"] = str(path)
    if n == ds.n:
        written["poses"] = str(write_particles_star(out / "poses.star", ds, rotations=rotations.numpy()))
    else:
        np.save(out / "poses_subset.npy", rotations.numpy())
        written["poses"] = str(out / "poses_subset.npy")
    mpath = out / "metrics.json"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".metrics.", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(metrics, fh, indent=1, default=_json_default)
    os.replace(tmp, mpath)
    written["metrics"] = str(mpath)
    (out / "run.log").write_text("\n".join(log_lines) + "\n")
    written["log"] = str(out / "run.log")
    return written


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
