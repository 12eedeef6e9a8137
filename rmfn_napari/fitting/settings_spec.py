"""The user-facing settings of an image fit: one :class:`~rmfn_napari.engine.settings_spec.Setting`
per field of :class:`~rmfn_napari.fitting.image_fitting.FitImageConfig` that the CLI
(``rmfn fit-image``) and the widget offer, both made from :data:`FIT_IMAGE_SETTINGS`.
"""

from __future__ import annotations

from ..engine.settings_spec import Setting, check_against, filters_setting, lambdas_setting
from ..model import METHODS
from .image_fitting import FitImageConfig
from .presets import PRESETS

#: Sections of the form, in order (``top`` rows come before them; ``advanced`` starts folded).
SECTIONS = ("model", "schedule", "run", "advanced")

FIT_IMAGE_SETTINGS: tuple[Setting, ...] = (
    Setting("preset", "--preset", "preset", "top",
            "Named defaults: cpu (~35 s on a 2-core CPU for a 512^2 image: trained at "
            "128^2, width 64, 800 steps), paper (the paper's section 5 protocol, for a GPU: "
            "trained at 256^2, width 256, 10,000 steps); default: paper on a CUDA device, else "
            "cpu; the flags below override it", "choice", choices=tuple(sorted(PRESETS))),
    Setting("method", "--method", "method", "model",
            "rmfn (residual MFN, the proposed init), res-bacon (residual, BACON init), bacon "
            "(staged 'fair' BACON baseline)", "choice", choices=tuple(METHODS),
            preset_keeps=True),
    filters_setting("model"),
    Setting("hidden", "--hidden", "width", "model",
            "Hidden units per layer of the network", "int", minimum=4, maximum=4096),
    lambdas_setting("advanced"),
    Setting("schedule", "--schedule", "steps per stage", "schedule",
            "Optimisation steps of each stage, one stage per scale, e.g. 500,500,1000,8000 (the "
            "number of stages is the number of scales)", "csv-ints"),
    Setting("lr", "--lr", "learning rate", "schedule",
            "Adam learning rate (the paper: 0.005)", "float", minimum=1e-6, maximum=1.0),
    Setting("downsample", "--downsample", "training downsampling", "schedule",
            "Train on the image block-averaged by this factor; PSNR is measured on the original "
            "(the paper: 2 for 512^2 images)", "int", minimum=1, maximum=16, suffix=" ×"),
    Setting("device", "--device", "device", "run",
            "auto (a CUDA GPU if there is one, else MPS, else the CPU), cpu, cuda, cuda:N, mps",
            "choice", choices=None, preset_keeps=True),
    Setting("seed", "--seed", "seed", "run",
            "Seed of the network's init (same seed, same run)", "int",
            minimum=0, maximum=2**31 - 1, preset_keeps=True),
)

check_against(FIT_IMAGE_SETTINGS, FitImageConfig)

__all__ = ["FIT_IMAGE_SETTINGS", "SECTIONS"]
