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
    StageStarted, VolumeSnapshot,
)
from ..errors import InputError
from ..fitting.metrics import log_spectrum
from ..model import ResidualMFN, growth_factor
from ..model.networks import grid_axis
from .contrast import contrast_check
from .downsample import crop_dataset, fourier_crop_volume, validate_box
from .ground_truth import TruePoses, read_true_poses
from .io import ParticleDataset, read_map, read_particles, write_map, write_particles_star
from .metrics import align_map, apply_alignment, fsc, pose_error_stats, pose_errors, resolution_at
from .offsets import centre_spectra, centring_phase, shift_errors, shift_grid
from .pose_search import crop_center, global_pose_search, residual_loss, score_rotations  # noqa: F401
from .projector import fft2_centered, fourier_slices, volume_fourier
from .rotations import axis_angle_to_matrix, perturb_rotations, random_rotations
from .validation import gold_standard_values, half_maps, half_sets

MODES = ("coarse-to-fine", "full-scale", "oracle-poses")
POSE_INITS = ("auto", "star", "perturb", "random")
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
    box : Fourier-crop the particles to this even size (px) on read, batch by batch; the
        pixel size grows by D/box, origins in Å are unchanged, the CTF is evaluated on the
        cropped grid, maps are written at this box. None: the stack's own size.
    pose_init : {"auto", "star", "perturb", "random"}
        Initial rotations. ``auto``: the STAR's angles if it has them, else uniform random
        (ab initio); ``star``: the STAR's (needs angles); ``perturb``: the true poses (or
        the STAR's) turned by a random rotation of ``perturb_deg`` (the paper's protocol;
        needs angles); ``random``: uniform.
    perturb_deg : (min, max) geodesic perturbation in degrees.
    shift_range_px : in-plane offsets are estimated within ±this many px of the working box:
        the global search scores a grid of offsets with the rotations, and the pose steps
        refine each particle's offset with its rotation. 0: offsets stay at the STAR's
        origins (RELION convention, :mod:`rmfn_napari.cryoem.offsets`).
    lr_shift : Adam learning rate of the offsets in the pose steps (px per step).
    check_contrast : before training, test the particles' contrast with a matched filter
        (:mod:`rmfn_napari.cryoem.contrast`) and stop if they are dark.
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
    box: int | None = None
    pose_init: str = "auto"
    perturb_deg: tuple[float, float] = (45.0, 90.0)
    shift_range_px: float = 0.0
    lr_shift: float = 0.05
    check_contrast: bool = True
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
        if self.box is not None and (int(self.box) != self.box or self.box % 2 or self.box < 8):
            why = "is odd" if int(self.box) == self.box and self.box % 2 else "is not a box size"
            raise InputError(f"--box {self.box} {why}; an even number of pixels >= 8 is required")
        if not (math.isfinite(self.shift_range_px) and self.shift_range_px >= 0):
            raise InputError(f"shift_range_px must be >= 0 px, got {self.shift_range_px}")
        if not (math.isfinite(self.lr_shift) and self.lr_shift >= 0):
            raise InputError(f"lr_shift must be >= 0, got {self.lr_shift}")

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
                      pose_search=True, pose_from_stage=1, shift_range_px=3.0),
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


def gaussian_weight(window: int, sigma: float, device, nyquist: float | None = None) -> torch.Tensor:
    """Centred 2D Gaussian ``exp(-k^2 / (2 sigma^2))`` on a window x window Fourier grid,
    zero beyond the circle ``|k| <= nyquist`` (cycles/box) when given: the corners of the
    square beyond Nyquist would enter the loss with a pose-dependent weight."""
    k = torch.arange(window, device=device, dtype=torch.float32) - window // 2
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    w = torch.exp(-k2 / (2 * sigma**2))
    return w if nyquist is None else w * (k2 <= nyquist**2)


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
def _load_dataset(dataset, box: int | None):
    """The particles at the working box: read a STAR path, then Fourier-crop if asked."""
    ds = read_particles(dataset) if isinstance(dataset, (str, Path)) else dataset
    ds = getattr(ds, "source", ds)  # crop from the original images, never twice
    if box is not None:
        validate_box(int(box), ds.box, ds.star_path)
    return crop_dataset(ds, box)


def _load_reference(reference, ds) -> np.ndarray | None:
    """The reference map at the working box: a map at the particles' original box and pixel
    size is Fourier-cropped like the particles; one already at the working box is kept."""
    if reference is None:
        return None
    box, apix = ds.box, ds.apix
    src_box, src_apix = getattr(ds, "source_box", box), getattr(ds, "source_apix", apix)
    path = Path(reference) if isinstance(reference, (str, Path)) else None
    if path is not None:
        vol, ref_apix = read_map(path)
    else:
        vol, ref_apix = np.asarray(reference, dtype=np.float32), None
        if vol.ndim != 3 or not np.all(np.isfinite(vol)):
            raise InputError(f"reference map must be a finite 3D array, got shape {vol.shape}")

    def same(a, b):
        return a is None or abs(a - b) <= 1e-3 * b

    if vol.shape == (src_box,) * 3 and same(ref_apix, src_apix):
        return fourier_crop_volume(vol, box) if src_box != box else vol
    if vol.shape == (box,) * 3 and same(ref_apix, apix):
        return vol
    got = f"{vol.shape[0]}^3" + ("" if ref_apix is None else f" at {ref_apix:.4g} Å")
    raise InputError(f"reference map is {got} but the particles are {src_box} px at {src_apix:.4g} Å"
                     + (f" (cropped: {box} px at {apix:.4g} Å)" if src_box != box else ""), path)


def _initial_rotations(ds, n: int, cfg: ReconstructConfig, truth: TruePoses | None = None):
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


def _initial_shifts(ds, n: int, cfg: ReconstructConfig, truth: TruePoses | None) -> torch.Tensor:
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


@dataclass
class _State:
    """Everything a checkpoint holds beyond the network and optimiser."""

    stage: int = 0
    epoch_in_stage: int = 0  # epochs completed in the current stage
    step: int = 0  # batches done over the run
    elapsed_s: float = 0.0
    offsets_searched: bool = False  # the search over the whole offset range has run
    history: dict = field(default_factory=dict)


CHECKPOINT_FORMAT = "rmfn-napari/reconstruct/2"


def _save_checkpoint(path: Path, net, opt, rotations, shifts_px, state: _State, cfg: ReconstructConfig) -> None:
    payload = {
        "config": asdict(cfg), "net_config": net.config(), "net": net.state_dict(),
        "opt": opt.state_dict(), "rotations": rotations.cpu(), "shifts_px": shifts_px.cpu(),
        "state": asdict(state), "format": CHECKPOINT_FORMAT,
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
    if not isinstance(payload, dict) or not str(payload.get("format", "")).startswith("rmfn-napari/reconstruct/"):
        raise InputError("not an rmfn-napari reconstruction checkpoint", path)
    if payload["format"] != CHECKPOINT_FORMAT:
        raise InputError(f"checkpoint format {payload['format']} is from another version "
                         f"(this one reads {CHECKPOINT_FORMAT}); start a new run", path)
    return payload


def _evaluate(net, box, apix, scale, reference, rotations, shifts_px, truth, cfg, stage) -> list[Event]:
    """FSC of every scale up to ``scale`` against the reference, and pose and offset errors
    against the true poses (only when given).

    The finest map is aligned to the reference (rotation, shift, hand); every scale shares
    the network's frame, so the same transform is applied to the coarser ones.
    """
    events: list[Event] = []
    maps = render_all_scales(net, box, scale, cfg.mask_radius)
    if reference is not None:
        alignment = None
        if cfg.align_for_fsc:
            _, alignment = align_map(maps[-1], reference, apix)
        # the same soft mask on both maps (the network's map is rendered under it)
        mask = spherical_mask(box, cfg.mask_radius)
        mask = 1.0 if mask is None else mask.numpy()
        for k, vol in enumerate(maps):
            aligned = apply_alignment(vol, alignment) if alignment is not None else vol
            freqs, curve = fsc(aligned * mask, reference * mask)
            res = resolution_at(freqs, curve, 0.5, box, apix)
            events.append(Metrics("fsc", stage, {
                "scale": k, "resolution_A": res, "crossed": bool(np.any(curve < 0.5)),
                "freq_cycles": np.asarray(freqs).tolist(), "fsc": np.asarray(curve).tolist(),
                "threshold": 0.5, "alignment": None if alignment is None else alignment.to_dict(),
            }))
    if truth is not None:
        est = rotations.numpy()
        err, g, flipped = pose_errors(est, truth.rotations, allow_flip=True, return_transform=True)
        stats = pose_error_stats(err)
        stats.update(global_rotation=np.asarray(g).tolist(), hand_flipped=bool(flipped))
        shift_err, t = shift_errors(shifts_px.numpy(), truth.shifts_A / apix, est, inliers=err < 10.0)
        stats.update(shift_median_px=float(np.median(shift_err)), shift_median_A=float(np.median(shift_err) * apix),
                     shift_frac_under_1px=float(np.mean(shift_err < 1.0)), shift_map_translation_px=t.tolist(),
                     shift_px_of_box=box)
        events.append(Metrics("pose_errors", stage, stats, {"errors_deg": np.asarray(err, np.float32),
                                                            "shift_errors_px": shift_err.astype(np.float32)}))
    return events


def reconstruct(
    dataset,
    config: ReconstructConfig | None = None,
    control: RunControl | None = None,
    reference=None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    true_poses=None,
) -> Iterator[Event]:
    """Reconstruct a map and the poses from a particle stack, coarse to fine.

    Parameters
    ----------
    dataset : str, Path or ParticleDataset
        A RELION particle STAR file (images read lazily, batch by batch) or an open dataset.
        With ``config.box`` the images are Fourier-cropped to that box on read.
    config : ReconstructConfig
    control : RunControl, optional
        Pause / next stage / stop; honoured between optimisation steps.
    reference : array, path to an MRC, or None
        Reference map for FSC (aligned first unless ``align_for_fsc=False``), at the
        particles' box and pixel size (cropped like them) or at the working box.
    out_dir : path, optional
        Per-scale maps ``scale_k.mrc`` (working box and pixel size), ``poses.star`` (angles
        and origins in Å for the original images), ``metrics.json``, ``checkpoint.pt``
        (every epoch) and ``run.log`` are written there.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` (same data and settings).
    true_poses : path to a STAR, or None
        The true angles and origins of these particles (e.g. ``true_poses.star`` from
        ``rmfn simulate``). Pose and offset errors are reported only when it is given.

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
    ds = _load_dataset(dataset, cfg.box)
    box, apix = ds.box, ds.apix
    n = ds.n if cfg.max_particles is None else min(ds.n, int(cfg.max_particles))
    ref = _load_reference(reference, ds)
    truth = read_true_poses(true_poses, ds, n) if true_poses is not None else None
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt" if out is not None else None
    device = resolve_device(cfg.device)
    log_lines: list[str] = []

    def log(msg: str) -> Log:
        log_lines.append(msg)
        return Log(msg)

    torch.manual_seed(cfg.seed)
    net = ResidualMFN(3, cfg.hidden, cfg.n_layers, out_dim=1, init="residual", residual=True,
                      lambdas=cfg.lambdas, resolution=box, head_activation="relu", seed=cfg.seed,
                      new_head_scale=cfg.new_head_scale).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr_structure)
    if _estimates_shifts(cfg) and cfg.shift_range_px >= box / 4:
        raise InputError(f"--shift-range {cfg.shift_range_px:g} px must be less than a quarter of the "
                         f"{box} px box", ds.star_path)
    rotations, pose_origin = _initial_rotations(ds, n, cfg, truth)
    start_shifts = _initial_shifts(ds, n, cfg, truth)  # offsets are searched within ±range of these
    shifts_px = start_shifts.clone()
    halves = half_sets(ds, n, cfg.seed)  # fixed for the whole run: gold-standard half-maps
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
        shifts_px = payload["shifts_px"].to(torch.float64)
        state = _State(**payload["state"])

    ctf = ds.ctf
    scale_img = _image_scale(ds, n, cfg)
    plan = cfg.stage_plan()
    batches_per_epoch = int(math.ceil(n / cfg.batch_size))
    total_batches = batches_per_epoch * sum(e for _, e in plan)
    yield RunStarted("reconstruct", len(plan), total_batches, str(device), config=asdict(cfg))
    crop_note = ""
    if getattr(ds, "source_box", box) != box:
        crop_note = f" (Fourier-cropped from {ds.source_box} px at {ds.source_apix:.3g} Å/px)"
    yield log(f"{n} particles of {box}x{box} at {apix:.3g} Å/px{crop_note}; mode {cfg.mode}; "
              f"{len(plan)} stage(s) {[e for _, e in plan]} epochs; batch {cfg.batch_size}")
    yield log(f"poses: {pose_origin}; offsets "
              + (f"estimated within ±{cfg.shift_range_px:g} px" if _estimates_shifts(cfg) else "fixed at the STAR's origins")
              + ("; pose errors against " + str(truth.path) if truth is not None else "; no true poses given: no pose errors"))
    if resume:
        yield log(f"resumed at stage {state.stage + 1}, epoch {state.epoch_in_stage}, batch {state.step}")
    elif cfg.check_contrast:
        yield log(_check_contrast(ds, n, ctf, shifts_px, scale_img, cfg, device))

    t_start = time.perf_counter() - state.elapsed_s
    stopped = False
    metrics_out: dict = {"stages": state.history.get("stages", [])}
    last_eval: list[Event] = []
    last_scale = plan[min(state.stage, len(plan) - 1)][0]

    for stage_idx in range(state.stage, len(plan)):
        scale, epochs = plan[stage_idx]
        last_scale = scale
        band = net.band_limits[scale]
        sigma = stage_sigma(scale, cfg.n_layers, box, cfg.lambdas)
        fwd = ForwardModel(box, apix, scale, band, sigma, cfg.pad, cfg.mask_radius)
        weight = gaussian_weight(fwd.window, sigma, device, nyquist=box / 2)
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
            search_now = _searches_poses(cfg, stage_idx, scale) and epoch > 0
            if search_now and not control.stop_requested:
                t_search = time.perf_counter()
                gen = torch.Generator().manual_seed(cfg.seed * 100003 + stage_idx * 1009 + epoch)
                offsets, whole_range = _search_offsets(cfg, fwd, whole_range=not state.offsets_searched)
                batches = ((idx, *_batch_data(ds, idx, ctf, fwd.window, scale_img, cfg, device))
                           for idx in np.array_split(np.arange(n), max(1, n // 1000)))
                with torch.no_grad():
                    vol_ft = fwd.volume_ft(net)
                centres = start_shifts if whole_range else None
                moved, total = global_pose_search(fwd, vol_ft, weight, batches, rotations, shifts_px,
                                                  cfg.search_rotations, cfg.search_window, offsets,
                                                  gen, device, centres=centres)
                _clamp_offsets(shifts_px, start_shifts, cfg.shift_range_px)
                state.offsets_searched = state.offsets_searched or (whole_range and _estimates_shifts(cfg))
                yield log(f"  epoch {epoch + 1}: global search moved {moved}/{total} poses "
                          f"({len(offsets)} offsets, {time.perf_counter() - t_search:.1f} s)")
            for b in range(batches_per_epoch):
                command = yield from honour_requests(control, state.step)
                if command is not None:
                    stopped, skipped = command == "stop", command == "next"
                    break
                idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
                obs, ctf_b = _batch_data(ds, idx, ctf, fwd.window, scale_img, cfg, device)
                loss_s, loss_p = _train_batch(net, opt, fwd, weight, obs, ctf_b, rotations, shifts_px,
                                              start_shifts, idx, cfg, control, device, _moves_poses(cfg, stage_idx))
                state.step += 1
                stage_batches += 1
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
                _save_checkpoint(ckpt_path, net, opt, rotations, shifts_px, state, cfg)
        # end of stage: snapshots of every scale so far, FSC, pose errors
        for k in range(scale + 1):
            yield _snapshot(net, box, apix, k, stage_idx, final=True, mask_radius=cfg.mask_radius)
        last_eval = _evaluate(net, box, apix, scale, ref, rotations, shifts_px, truth, cfg, stage_idx)
        hm = half_maps(ds, n, rotations, shifts_px, halves, cfg.mask_radius, cfg.invert_contrast, device, cfg.seed)
        for name, vol in (("half_map_1", hm.half1), ("half_map_2", hm.half2), ("map", hm.full)):
            if out is not None:
                write_map(out / f"{name}.mrc", vol, apix)  # unmodified: what EMDB deposition needs
            yield VolumeSnapshot(name, vol, apix, stage_idx)
        if out is not None:
            write_map(out / "mask_auto.mrc", hm.masks["auto"], apix)
        last_eval.append(Metrics("gold_standard", stage_idx, gold_standard_values(hm)))
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
            _save_checkpoint(ckpt_path, net, opt, rotations, shifts_px, state, cfg)
        if control.pause_at_stage_end and stage_idx < len(plan) - 1:
            control.pause()

    seconds = time.perf_counter() - t_start
    metrics_out.update(_final_metrics(last_eval), mode=cfg.mode, preset=cfg.preset, n_particles=n,
                       box=box, apix=apix, source_box=getattr(ds, "source_box", box),
                       source_apix=getattr(ds, "source_apix", apix), seconds=seconds, stopped=stopped,
                       batches=state.step, band_limits_cycles=net.band_limits,
                       true_poses=None if truth is None else str(truth.path))
    outputs: dict[str, str] = {}
    if out is not None:
        outputs = _write_outputs(out, net, box, apix, last_scale, ds, n, rotations, shifts_px, halves,
                                 metrics_out, log_lines, scale_img, cfg.mask_radius)
        if ckpt_path is not None and ckpt_path.exists():
            outputs["checkpoint"] = str(ckpt_path)
    yield RunFinished(stopped, state.step, seconds, outputs, metrics_out)


def _image_scale(ds, n: int, cfg: ReconstructConfig) -> float:
    """Global intensity scale of the images (std over up to 512 particles)."""
    idx = np.linspace(0, n - 1, num=min(n, 512)).astype(int)
    imgs = ds.images(np.unique(idx))
    s = float(np.std(imgs))
    if not np.isfinite(s) or s <= 0:
        raise InputError("the particle images are constant or not finite", ds.star_path)
    return s


def _batch_data(ds, idx, ctf, window: int, scale_img: float, cfg, device):
    """Observed spectra (uncentred: offsets not applied) and CTFs of particles ``idx`` on the
    central ``window``² of the working box, ``(B, w, w)`` each, on ``device``."""
    imgs = torch.as_tensor(ds.images(idx), dtype=torch.float32)
    if not torch.all(torch.isfinite(imgs)):
        raise InputError(f"NaN/Inf pixels in particles {idx[:5].tolist()}...", ds.star_path)
    if cfg.invert_contrast:
        imgs = -imgs
    box = ds.box
    ft = crop_center(fft2_centered(imgs / scale_img), window)
    if ctf is not None:
        c = crop_center(ctf.evaluate(box, ds.apix, idx, dtype=torch.float32), window)
    else:
        c = torch.ones_like(ft.real)
    # the centred 2D FFT of an image sums D^2 pixels: divide so both sides match Parseval
    return (ft / box).to(device), c.to(device)


def _check_contrast(ds, n, ctf, shifts_px, scale_img, cfg, device) -> str:
    """Stop (InputError naming --invert-contrast) if the particles are dark; else a log line."""
    idx = np.unique(np.linspace(0, n - 1, num=min(n, 1000)).astype(int))
    window = min(ds.box, 16)
    obs, c = _batch_data(ds, idx, ctf, window, scale_img, cfg, device)
    obs = centre_spectra(obs, ds.box, shifts_px[idx].to(device))
    result = contrast_check(obs, c, ds.box, blob_sigma_px=0.1 * ds.box)
    what = f"contrast check: matched-filter z = {result.z:+.1f} over {result.n} particles"
    if result.verdict == "dark":
        flip = "without" if cfg.invert_contrast else "with"
        raise InputError(f"the particles are dark against the CTF convention ({what}); "
                         f"rerun {flip} --invert-contrast", ds.star_path)
    return what + (" (bright, as expected)" if result.verdict == "bright" else " (inconclusive)")


def structure_steps(net, opt, fwd: ForwardModel, weight, obs, ctf_b, R, steps: int, control=None) -> float:
    """``steps`` Adam steps on the network for one batch at fixed poses ``R`` (B, 3, 3).

    ``obs`` are centred spectra (offsets applied). Returns the last mean per-image loss
    (weighted squared error on the stage window).
    """
    loss_value = float("nan")
    for _ in range(steps):
        if control is not None and control.wait_or_stop():
            break
        vol_ft = fwd.volume_ft(net)
        loss = residual_loss(fwd.slices(vol_ft, R), obs, ctf_b, weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
    return loss_value


def pose_steps(vol_ft, fwd: ForwardModel, weight, obs, ctf_b, R, steps: int, lr: float,
               betas=(0.9, 0.9), control=None, shifts_px=None, lr_shift: float = 0.0):
    """Refine poses of one batch against a fixed (rendered) volume; no network pass.

    Each image gets an axis-angle correction ``w_i`` (radians), ``R_i <- exp([w_i]x) R_i``,
    optimised by Adam for ``steps`` steps on its own loss. With ``shifts_px`` (B, 2) the
    ``obs`` are the uncentred spectra and are centred with those origins (px, RELION
    convention); ``lr_shift`` > 0 also refines each origin by Adam (px per step).

    Returns
    -------
    (rotations (B, 3, 3) float64 orthonormalised, origins (B, 2) px or None, last mean loss)
    """
    omega = torch.zeros(R.shape[0], 3, device=R.device, dtype=R.dtype, requires_grad=True)
    groups = [{"params": [omega], "lr": lr}]
    delta = None
    if shifts_px is not None:
        delta = torch.zeros(R.shape[0], 2, device=R.device, dtype=torch.float32, requires_grad=lr_shift > 0)
        if lr_shift > 0:
            groups.append({"params": [delta], "lr": lr_shift})
    popt = torch.optim.Adam(groups, betas=tuple(betas))
    loss_value = float("nan")
    for _ in range(steps):
        if control is not None and control.wait_or_stop():
            break
        target = obs if delta is None else centre_spectra(obs, fwd.box, shifts_px + delta)
        per_image = residual_loss(fwd.slices(vol_ft, axis_angle_to_matrix(omega) @ R), target, ctf_b, weight)
        popt.zero_grad(set_to_none=True)
        per_image.sum().backward()
        popt.step()
        loss_value = float(per_image.detach().mean())
    with torch.no_grad():
        new = axis_angle_to_matrix(omega.detach().double()) @ R.double()
    new_shifts = None if delta is None else (shifts_px + delta).detach().cpu().double()
    return _orthonormalize(new.cpu()), new_shifts, loss_value


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


def _estimates_shifts(cfg: ReconstructConfig) -> bool:
    return cfg.shift_range_px > 0 and cfg.mode != "oracle-poses"


def _search_offsets(cfg: ReconstructConfig, fwd: ForwardModel, whole_range: bool) -> tuple[torch.Tensor, bool]:
    """Candidate offsets (px) of a global search, and whether they span the whole range.

    The grid spacing follows the scored band: ``D / (4 k_max)`` px (a quarter period of the
    highest frequency scored), at least 0.25 px. Until one search has covered it, the grid
    spans ±``shift_range_px`` around each particle's starting origin; after that, searches
    refine locally, one grid step around each particle's current offset. Without offset
    estimation: (0, 0) around the current offset.
    """
    if not _estimates_shifts(cfg):
        return shift_grid(0.0, 1.0), False
    k_max = min(cfg.search_window, fwd.window) / 2
    step = max(0.25, fwd.box / (4 * k_max))
    if whole_range:
        return shift_grid(cfg.shift_range_px, step), True
    return shift_grid(min(step, cfg.shift_range_px), step), False


def _clamp_offsets(shifts_px: torch.Tensor, start: torch.Tensor, range_px: float, idx=None) -> None:
    """Keep offsets within ±``range_px`` (per axis) of their starting origins, in place."""
    if idx is None:
        idx = slice(None)
    lo, hi = start[idx] - range_px, start[idx] + range_px
    shifts_px[idx] = torch.maximum(torch.minimum(shifts_px[idx], hi), lo)


def _train_batch(net, opt, fwd: ForwardModel, weight, obs, ctf_b, rotations, shifts_px, start_shifts, idx, cfg,
                 control, device, move_poses: bool):
    R = rotations[idx].to(device=device, dtype=torch.float32)
    sh = shifts_px[idx].to(device=device, dtype=torch.float32)
    loss_s = structure_steps(net, opt, fwd, weight, centre_spectra(obs, fwd.box, sh), ctf_b, R,
                             cfg.structure_steps, control)
    loss_p = float("nan")
    if move_poses and not control.stop_requested:
        with torch.no_grad():
            vol_ft = fwd.volume_ft(net)
        lr_shift = cfg.lr_shift if _estimates_shifts(cfg) else 0.0
        new, new_sh, loss_p = pose_steps(vol_ft, fwd, weight, obs, ctf_b, R, cfg.pose_steps, cfg.lr_pose,
                                         cfg.pose_betas, control, shifts_px=sh, lr_shift=lr_shift)
        # fold the float32 correction into the float64 stored pose
        delta = new @ R.double().cpu().transpose(-1, -2)
        rotations[idx] = _orthonormalize(delta @ rotations[idx])
        if lr_shift > 0:
            shifts_px[idx] = new_sh
            _clamp_offsets(shifts_px, start_shifts, cfg.shift_range_px, idx)
    return loss_s, loss_p


def _snapshot(net, box, apix, scale, stage, final, mask_radius=None) -> ScaleSnapshot:
    with torch.no_grad():
        vol = render_volume(net, box, scale, mask_radius).float().cpu().numpy()
    return ScaleSnapshot(scale, vol, log_spectrum(vol), apix, stage, final)


def _summarise(events: list[Event]) -> dict:
    out: dict = {}
    for ev in events:
        if isinstance(ev, Metrics) and ev.name == "gold_standard":
            res = ev.values["resolution_A"]
            out.update(gold_standard_resolution_A=res[ev.values["headline"]],
                       gold_standard_unmasked_A=res["unmasked"])
        if isinstance(ev, Metrics) and ev.name == "fsc":
            out[f"fsc_resolution_A_scale{ev.values['scale'] + 1}"] = ev.values["resolution_A"]
        if isinstance(ev, Metrics) and ev.name == "pose_errors":
            v = ev.values
            out.update(pose_median_deg=v["median_deg"], pose_frac_under_5deg=v["frac_under_5deg"],
                       pose_frac_under_10deg=v["frac_under_10deg"], shift_median_px=v["shift_median_px"])
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
    gold = next((ev.values for ev in events if isinstance(ev, Metrics) and ev.name == "gold_standard"), None)
    res = {"fsc": fsc, "pose_errors": poses, "gold_standard": gold}
    if fsc:
        res["resolution_A"] = fsc[max(fsc)]["resolution_A"]
    if gold is not None:
        res["gold_standard_resolution_A"] = gold["resolution_A"][gold["headline"]]
    return res


def _write_outputs(out: Path, net, box, apix, last_scale, ds, n, rotations, shifts_px, halves, metrics,
                   log_lines, scale_img, mask_radius=None):
    written: dict[str, str] = {}
    maps = render_all_scales(net, box, last_scale, mask_radius)
    for k, vol in enumerate(maps):
        # back to the images' units: image = sum_z V / D in units of the image std
        path = write_map(out / f"scale_{k + 1}.mrc", vol * scale_img, apix)
        written[f"scale_{k + 1}"] = str(path)
    for name in ("half_map_1", "half_map_2", "map", "mask_auto"):
        if (out / f"{name}.mrc").exists():
            written[name] = str(out / f"{name}.mrc")
    shifts_A = shifts_px.numpy() * apix  # origins in Å do not depend on the box
    if n == ds.n:
        written["poses"] = str(write_particles_star(out / "poses.star", ds, rotations=rotations.numpy(),
                                                    shifts_A=shifts_A, random_subset=halves))
    else:
        np.savez(out / "poses_subset.npz", rotations=rotations.numpy(), origins_A=shifts_A, random_subset=halves)
        written["poses"] = str(out / "poses_subset.npz")
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
