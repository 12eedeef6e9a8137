"""Settings of a reconstruction: the dataclass, its validation, the presets, the modes."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


from ...engine.settings_spec import check_filters, config_from_preset
from ...errors import InputError
from ...model.precision import PRECISIONS
from .advance import ADVANCE_MODES
from .halves import parse_split_at


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


#: The largest ``lr_pose`` (radians per step) a run accepts: one pose step then turns a particle
#: by up to sqrt(3) rad = 99° (see ``ReconstructConfig``); the widget's field stops there too.
LR_POSE_MAX = 1.0


@dataclass
class ReconstructConfig:
    """Settings of a reconstruction. ``from_preset`` gives the named defaults.

    Attributes
    ----------
    preset : str
        Name of the preset these settings started from (for the record).
    mode : {"coarse-to-fine", "full-scale", "oracle-poses"}
        ``full-scale``: one stage at the finest scale from the start (paper Fig. 6 right);
        ``oracle-poses``: poses and offsets fixed at the true poses (``true_poses``), else
        at the STAR's angles and origins.
    n_layers, hidden, lambdas : network (paper: 3, 128, (0.3, 2.0)).
    filters : ``sine`` (the paper) or ``gabor`` (:mod:`rmfn_napari.model.gabor`: the windows'
        centres drawn in the cube of half-width ``mask_radius``, 0.45 box without a mask).
    epochs_per_stage : epochs of each stage (len = n_layers); ``full-scale`` runs their sum.
    batch_size : particles per batch.
    structure_steps, pose_steps : optimisation steps per batch (paper: 5, 20).
    lr_structure, lr_pose : Adam learning rates (paper: 1e-3, 1e-2); pose betas (0.9, 0.9).
        ``lr_pose`` is in radians per step: each pose step moves the three components of a
        particle's axis-angle correction by at most ``lr_pose`` each (Adam's first step moves
        each by exactly ``lr_pose``; with ``pose_betas`` (0.9, 0.9) no later step moves more),
        i.e. turns it by up to sqrt(3) ``lr_pose`` rad. Sensible: 1e-3 to 0.1 (0.1° to 10° per
        step; the paper's 0.01 is 1°). Above :data:`LR_POSE_MAX` (1 rad: up to 99° in one step,
        the widget's maximum too) a step throws the poses instead of refining them and the run
        ends without an error with an unrelated map, so it is refused.
    box : Fourier-crop the particles to this even size (px) on read, batch by batch; the
        pixel size grows by D/box, origins in Å are unchanged, the CTF is evaluated on the
        cropped grid, maps are written at this box. None: the stack's own size.
    apix : working pixel size (Å): every optics group is resampled to it on read (Fourier crop
        or padding, then a window or zero padding to the working box; origins in Å unchanged;
        each particle's CTF evaluated at it with its own group's voltage, Cs and amplitude
        contrast; :mod:`rmfn_napari.cryoem.optics_groups`). None: the stack's own, or for
        optics groups of different pixel sizes or boxes the coarsest group's after ``box``.
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
    shift_prior_px : width (px of the working box) of a Gaussian prior on each offset around
        its starting origin (the STAR's, else 0), used by the global search and the pose steps
        (:func:`~rmfn_napari.cryoem.pose_search.global_pose_search`): an offset moves only as
        far as the data pay for. 0: no prior (maximum likelihood; the paper's 45-90° protocol
        then fails with the offset search on: docs/results.md, "The 45-90° regression").
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
    precision : {"float32", "tf32", "bf16"}
        Precision of the hidden layers' matrix products only (:mod:`rmfn_napari.model.precision`):
        ``tf32`` on a CUDA GPU, ``bf16`` on a GPU or a CPU with bfloat16 units; the filters'
        phases, FFTs, slices and the search stay float32.
    compile_render : evaluate the network through ``torch.compile`` (for a GPU; the first
        batch of each stage then waits for the compiler).
    stage_data_gb : memory budget (GiB) for each stage's spectra and CTFs on the device; over
        it they are computed batch by batch (:mod:`.stage_data`).
    split_at : where the half-sets stop sharing one network (:mod:`.halves`): a stage count
        (``"2"``, the default: stages 1-2 are shared, each half-set trains its own copy of the
        network, with its own poses and offsets, from stage 3 on) or a resolution such as
        ``"40A"`` (the stages whose band is coarser than 40 Å are shared). A split after stage 1
        (a 44 Å band at 32 px and 2 Å/px, poses still 67° off) let the halves settle in mirrored
        frames on the cpu benchmark; after stage 2 (13 Å) they kept one (docs/results.md).
    advance : when a stage ends (:mod:`.advance`): ``fixed``, after its planned epochs; ``auto``,
        from the split on, when the independent halves' gold standard says the stage's band is
        resolved (early) or no longer improving (held up to twice its epochs).
    device, seed : where and how reproducibly to run.
    """

    preset: str = "cpu-small"
    mode: str = "coarse-to-fine"
    n_layers: int = 3
    hidden: int = 128
    lambdas: tuple[float, float] = (0.3, 2.0)
    filters: str = "sine"
    epochs_per_stage: tuple[int, ...] = (15, 15, 70)
    batch_size: int = 600
    structure_steps: int = 5
    pose_steps: int = 20
    lr_structure: float = 1e-3
    lr_pose: float = 1e-2
    pose_betas: tuple[float, float] = (0.9, 0.9)
    box: int | None = None
    apix: float | None = None
    pose_init: str = "auto"
    perturb_deg: tuple[float, float] = (45.0, 90.0)
    shift_range_px: float = 0.0
    lr_shift: float = 0.05
    shift_prior_px: float = 0.5
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
    precision: str = "float32"
    compile_render: bool = False
    stage_data_gb: float = 4.0
    split_at: str = "2"
    advance: str = "fixed"
    device: str = "auto"
    seed: int = 0

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ReconstructConfig":
        """Settings of preset ``name`` (see :data:`PRESETS`) with keyword overrides."""
        return config_from_preset(cls, PRESETS, name, overrides)

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
        if self.max_particles is not None and not (_whole(self.max_particles) and self.max_particles >= 2):
            raise InputError(f"--max-particles must be an integer >= 2, got {self.max_particles}")
        if self.box is not None and (not _whole(self.box) or self.box % 2 or self.box < 8):
            why = "is odd" if _whole(self.box) and self.box % 2 else "is not a box size"
            raise InputError(f"--box {self.box} {why}; an even number of pixels >= 8 is required")
        if self.apix is not None and not (_finite(self.apix) and self.apix > 0):
            raise InputError(f"--apix must be a finite number > 0 Å, got {self.apix}")
        if not (math.isfinite(self.shift_range_px) and self.shift_range_px >= 0):
            raise InputError(f"shift_range_px must be >= 0 px, got {self.shift_range_px}")
        if not (_finite(self.shift_prior_px) and self.shift_prior_px >= 0):
            raise InputError(f"--shift-prior must be a finite number >= 0 px, got {self.shift_prior_px}")
        if not (math.isfinite(self.lr_shift) and self.lr_shift >= 0):
            raise InputError(f"lr_shift must be >= 0, got {self.lr_shift}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (math.isfinite(self.stage_data_gb) and self.stage_data_gb >= 0):
            raise InputError(f"stage_data_gb must be >= 0 GiB, got {self.stage_data_gb}")
        self._validate_numbers()
        parse_split_at(self.split_at)
        if self.advance not in ADVANCE_MODES:
            raise InputError(f"--advance must be one of {', '.join(ADVANCE_MODES)}, got {self.advance!r}")

    def _validate_numbers(self) -> None:
        """Every number is finite and in its range: one line naming it instead of a NaN run or
        a traceback deep inside torch (issue 14)."""
        for name, flag in (("lr_structure", "--lr-structure"), ("lr_pose", "--lr-pose")):
            value = getattr(self, name)
            if not (_finite(value) and value > 0):
                raise InputError(f"{flag} must be a finite number > 0, got {value}")
        if self.lr_pose > LR_POSE_MAX:  # (a too-large --lr-structure diverges and is caught in the batch)
            raise InputError(f"--lr-pose must be at most {LR_POSE_MAX:g} (radians per step), got {self.lr_pose:g}: a "
                             "pose step turns a particle by up to sqrt(3) times that (99° at 1), throwing the poses "
                             "instead of refining them (sensible: 0.001 to 0.1; the paper: 0.01)")
        check_filters(self.filters)
        if len(self.lambdas) != 2 or not all(_finite(v) and v >= 0 for v in self.lambdas) or sum(self.lambdas) <= 0:
            raise InputError(f"--lambdas must be two finite numbers >= 0, not both 0, got {tuple(self.lambdas)}")
        whole = {"n_layers": (self.n_layers, 1), "hidden": (self.hidden, 1), "batch_size": (self.batch_size, 1),
                 "structure_steps": (self.structure_steps, 1), "pose_steps": (self.pose_steps, 0),
                 "pad": (self.pad, 1), "search_rotations": (self.search_rotations, 1),
                 "search_window": (self.search_window, 2), "pose_from_stage": (self.pose_from_stage, 0),
                 "search_from_stage": (self.search_from_stage, 0), "seed": (self.seed, 0)}
        for name, (value, least) in whole.items():
            if not (_whole(value) and value >= least):
                raise InputError(f"{name} must be an integer >= {least}, got {value}")
        if not all(_whole(e) and e >= 1 for e in self.epochs_per_stage):
            raise InputError(f"epochs_per_stage must be integers >= 1, got {tuple(self.epochs_per_stage)}")
        if len(self.perturb_deg) != 2 or not all(_finite(v) for v in self.perturb_deg) \
                or not 0 <= self.perturb_deg[0] <= self.perturb_deg[1] <= 180:
            raise InputError(f"perturb_deg must be (min, max) with 0 <= min <= max <= 180 degrees, "
                             f"got {tuple(self.perturb_deg)}")
        if self.mask_radius is not None and not (_finite(self.mask_radius) and 0 < self.mask_radius <= 0.5):
            raise InputError(f"mask_radius must be in (0, 0.5] (a fraction of the box) or None, got {self.mask_radius}")
        if len(self.pose_betas) != 2 or not all(_finite(b) and 0 <= b < 1 for b in self.pose_betas):
            raise InputError(f"pose_betas must be two numbers in [0, 1), got {tuple(self.pose_betas)}")
        if not (_finite(self.new_head_scale) and self.new_head_scale >= 0):
            raise InputError(f"new_head_scale must be a finite number >= 0, got {self.new_head_scale}")
        if not (_real(self.snapshot_interval_s) and self.snapshot_interval_s >= 0):
            raise InputError(f"snapshot_interval_s must be >= 0 s, got {self.snapshot_interval_s}")

    def stage_plan(self) -> list[tuple[int, int]]:
        """``[(scale, epochs), ...]``: which scale each stage trains and for how long."""
        if self.mode == "full-scale":
            return [(self.n_layers - 1, int(sum(self.epochs_per_stage)))]
        return [(s, int(e)) for s, e in enumerate(self.epochs_per_stage)]


def epochs_for_layers(epochs, n_layers: int) -> tuple[int, ...]:
    """Epochs per stage for ``n_layers`` stages from another stage count's list: its first
    ``n_layers`` values, extended by repeating the last (``(10, 15, 35)``, 4 -> ``(10, 15, 35, 35)``).
    What ``--layers N`` without ``--epochs`` uses, and the widget when its layer count changes."""
    base = tuple(int(e) for e in epochs) or (1,)
    return tuple(base[min(i, len(base) - 1)] for i in range(int(n_layers)))


def _real(value) -> bool:
    """A real number (bool excluded), NaN not."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def _finite(value) -> bool:
    return _real(value) and math.isfinite(value)


def _whole(value) -> bool:
    """A finite whole number (``3`` or ``3.0``)."""
    return _finite(value) and float(value).is_integer()


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
