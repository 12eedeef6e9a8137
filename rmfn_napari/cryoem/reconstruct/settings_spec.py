"""The user-facing settings of a reconstruction: one :class:`~rmfn_napari.engine.settings_spec.Setting`
per field of :class:`ReconstructConfig` that the CLI (``rmfn reconstruct``) and the widget
offer. Both are made from :data:`RECONSTRUCT_SETTINGS`; the tests check it against the dataclass.
"""

from __future__ import annotations

from ...engine.settings_spec import Setting, check_against, filters_setting, lambdas_setting
from ...model.precision import PRECISIONS
from .settings import MODES, POSE_SEARCH_MODES, PRESETS, ReconstructConfig, pose_search_mode
from .advance import ADVANCE_MODES

#: Sections of the form, in order (``top`` rows come before them; ``advanced`` starts folded).
SECTIONS = ("dataset", "model", "schedule", "run", "advanced")
#: The preset without ``--preset``, and the form's first.
DEFAULT_PRESET = "cpu-small"
#: The form's pose-init order (auto first: what a new user wants).
POSE_INIT_ORDER = ("auto", "random", "perturb", "star")
#: The form's text of each ``--pose-search`` value.
POSE_SEARCH_LABELS = {"coarse": "coarse stages", "all": "every stage", "off": "off (gradient only)"}

RECONSTRUCT_SETTINGS: tuple[Setting, ...] = (
    Setting("preset", "--preset", "preset", "top",
            "Named defaults: cpu-small (minutes on a CPU, 32^3 data), paper (the paper's section 6 "
            "protocol, for a GPU), tiny (seconds, smoke test); the flags below override them",
            "choice", choices=(DEFAULT_PRESET, *(p for p in PRESETS if p != DEFAULT_PRESET))),
    # -- dataset
    Setting("box", "--box", "box", "dataset",
            "Fourier-crop the particles to D px (even, <= their box) on read; the pixel size grows "
            "by box/D and maps are written at D (form: 'stack's size' keeps the particles' box)",
            "int", minimum=0, maximum=4096, step=2, special="stack's size", none_at_minimum=True,
            suffix=" px",
            metavar="D"),
    Setting("apix", "--apix", "pixel size", "dataset",
            "Working pixel size in A: each optics group is Fourier-cropped (or padded) to it on "
            "read and windowed to one box, so groups of different pixel sizes and boxes go "
            "together (default: the stack's own; mixed groups: the coarsest group's after --box)",
            "float", minimum=0.0, maximum=100.0, step=0.1, decimals=3, special="coarsest group's",
            none_at_minimum=True, suffix=" Å", metavar="A", preset_keeps=True),
    Setting("invert_contrast", "--invert-contrast", "invert contrast", "dataset",
            "Multiply the images by -1: for particles darker than their surroundings (RELION "
            "extraction without 'invert contrast'); the run checks the contrast before training "
            "and says when this is needed", "bool", preset_keeps=True),
    # -- model
    Setting("mode", "--mode", "mode", "model",
            "coarse-to-fine: one scale per stage (the paper); full-scale: the finest scale from the "
            "start (baseline); oracle-poses: poses and offsets fixed at the true poses, else at the "
            "STAR's", "choice", choices=MODES, preset_keeps=True),
    Setting("n_layers", "--layers", "layers (= scales)", "model",
            "Network layers = scales = stages of a coarse-to-fine run", "int",
            minimum=1, maximum=8),
    Setting("hidden", "--hidden", "width", "model",
            "Hidden units per layer of the network", "int", minimum=4, maximum=2048),
    lambdas_setting("model"),
    filters_setting("model"),
    # -- schedule
    Setting("epochs_per_stage", "--epochs", "epochs per stage", "schedule",
            "Epochs of each stage, one number per layer, e.g. 15,15,70", "csv-ints",
            attr="epochs"),
    Setting("batch_size", "--batch", "batch", "schedule",
            "Particles per batch (the global batch with --nproc)", "int",
            minimum=1, maximum=100_000, suffix=" particles", attr="batch"),
    Setting("lr_structure", "--lr-structure", "learning rate, map", "schedule",
            "Adam learning rate of the network (the paper: 0.001)", "float",
            minimum=1e-6, maximum=1.0),
    Setting("lr_pose", "--lr-pose", "learning rate, poses", "schedule",
            "Adam learning rate of the poses (the paper: 0.01)", "float",
            minimum=1e-6, maximum=1.0),
    Setting("pose_init", "--pose-init", "pose init", "schedule",
            "Initial poses: auto (the STAR's angles if it has them, else random); random (uniform); "
            "perturb (the true poses when given, else the STAR's, turned 45-90 deg away: the "
            "paper's protocol; needs angles); star (the STAR's angles as they are)",
            "choice", choices=POSE_INIT_ORDER),
    Setting("pose_search", "--pose-search", "pose search", "schedule",
            "Per-epoch global pose search against thousands of random rotations (not in the "
            "paper): coarse stages only, then local gradient refinement at the finest (so never in "
            "a full-scale run); every stage including the finest (cpu-small); off: gradient steps "
            "only (the paper)", "choice", choices=tuple(POSE_SEARCH_MODES),
            choice_labels=tuple(POSE_SEARCH_LABELS[k] for k in POSE_SEARCH_MODES),
            to_fields=lambda key: dict(POSE_SEARCH_MODES[key]), from_config=pose_search_mode),
    Setting("shift_range_px", "--shift-range", "shift search", "schedule",
            "Estimate in-plane offsets within +-PX px of the working box (global search grid and "
            "pose steps); 0 (off) keeps the STAR's origins (cpu-small: 3)", "float",
            minimum=0.0, maximum=64.0, step=0.5, decimals=1, special="off", suffix=" px",
            metavar="PX", attr="shift_search"),
    Setting("shift_prior_px", "--shift-prior", "shift prior", "schedule",
            "Width (px) of the Gaussian prior on each offset around its starting origin (the "
            "STAR's, else the box centre): the search and the pose steps move an offset only as "
            "far as the data pay for (RELION's sigma_offset). 0: no prior", "float",
            minimum=0.0, maximum=64.0, step=0.1, decimals=2, special="none", suffix=" px",
            metavar="PX", preset_keeps=True),
    Setting("split_at", "--split-at", "independent halves after", "schedule",
            "Where the half-sets stop sharing one network: a stage count (2, the default: stages "
            "1-2 are shared, each half-set trains its own copy from stage 3 on) or a resolution "
            "(40A: the stages whose band is coarser than 40 A are shared). The gold-standard FSC "
            "measures only what the halves learned apart", "choice", choices=None,
            preset_keeps=True, metavar="N|DA"),
    Setting("advance", "--advance", "stage advance", "schedule",
            "When a stage ends: fixed (its planned epochs) or auto (from the split on, steered by "
            "the independent halves' gold standard, checked each epoch: the next stage starts "
            "early once the halves have resolved the stage's band and the poses have settled; a "
            "stage whose band is not resolved but still improving is held, up to twice its epochs)",
            "choice", choices=ADVANCE_MODES, preset_keeps=True),
    # -- run
    Setting("device", "--device", "device", "run",
            "auto (a CUDA GPU if there is one, else the CPU), cpu, cuda, cuda:N", "choice",
            choices=None, preset_keeps=True),
    Setting("seed", "--seed", "seed", "run",
            "Seed of the random init, poses and batches (same seed, same run)", "int",
            minimum=0, maximum=2**31 - 1, preset_keeps=True),
    # -- advanced (folded)
    Setting("precision", "--precision", "precision", "advanced",
            "Precision of the hidden layers' matrix products only: float32 (default), tf32 (CUDA "
            "GPUs), bf16 (GPUs, CPUs with bfloat16 units)", "choice", choices=tuple(PRECISIONS),
            preset_keeps=True),
    Setting("max_particles", "--max-particles", "particles used", "advanced",
            "Use only the first N particles (form: 'all' uses every particle)", "int",
            minimum=0, maximum=10_000_000, special="all", none_at_minimum=True, metavar="N",
            preset_keeps=True),
    Setting("align_for_fsc", "--no-align", "align to the reference before FSC", "advanced",
            "FSC against the reference after aligning each map to it (rotation, shift, hand); "
            "--no-align: without aligning", "bool", negated_flag=True),
    Setting("compile_render", "--compile", "torch.compile the network", "advanced",
            "Evaluate the network through torch.compile (for a GPU; the first batch of each stage "
            "waits for the compiler)", "bool", preset_keeps=True),
)

check_against(RECONSTRUCT_SETTINGS, ReconstructConfig)

__all__ = ["DEFAULT_PRESET", "POSE_INIT_ORDER", "POSE_SEARCH_LABELS", "RECONSTRUCT_SETTINGS", "SECTIONS"]
