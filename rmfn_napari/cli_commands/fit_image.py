"""``rmfn fit-image``: coarse-to-fine fitting of a 2D image (paper §5)."""

from __future__ import annotations

import argparse
import json

from ..engine.control import RunControl
from ..engine.outdir import estimate_fit_image_bytes, prepare_run_dir
from ..fitting import FitImageConfig, fit_image, load_image
from ..engine.settings_spec import add_arguments, overrides_from_args
from ..fitting.checkpoint import CHECKPOINT_EVERY_STEPS
from ..fitting.image_fitting import check_image_size, check_training_memory
from ..fitting.presets import default_preset
from ..fitting.settings_spec import FIT_IMAGE_SETTINGS
from ._events import consume, stop_on_interrupt


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit-image", help="fit an image coarse to fine, one scale per stage",
        description="Fit a 2D image with a residual MFN (or a baseline) coarse to fine. Writes "
        "scale_k.tif, spectrum_k.tif (centred log-amplitude) and metrics.json (psnr_db, "
        "spectrum_drift per scale) to --out, and checkpoint.pt, which --resume continues.",
    )
    p.add_argument("image", help="PNG/TIFF/JPEG image; it is the PSNR reference, training uses it "
                   "block-averaged by --downsample")
    # every setting of FitImageConfig the widget offers too: one spec, the same help text
    add_arguments(p, FIT_IMAGE_SETTINGS)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the fit whose checkpoint.pt is in --out (written every "
                   f"{CHECKPOINT_EVERY_STEPS} steps, at each stage end and at a stop); the image and "
                   "the settings must be the same (only --device may change)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def _image_shape(path) -> tuple:
    """The image's shape from its header alone (() when it cannot be told: the API checks
    the space again once the image is read)."""
    try:
        import imageio.v3 as iio

        return tuple(iio.improps(path).shape)
    except Exception:  # unreadable: load_image says why, one line
        return ()


def config_from_args(args: argparse.Namespace) -> FitImageConfig:
    """The fit's settings: the preset (``--preset``, else the device's: ``paper`` on CUDA, else
    ``cpu``) with the flags that were given."""
    overrides = overrides_from_args(args, FIT_IMAGE_SETTINGS)
    preset = overrides.pop("preset", None) or default_preset(overrides.get("device", "auto"))
    config = FitImageConfig.from_preset(preset, **overrides)
    config.validate()
    return config


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    shape = _image_shape(args.image)
    check_training_memory(shape, config, args.image)  # from the header: before the image is read
    need = estimate_fit_image_bytes(shape, config.downsample, len(config.schedule), config.hidden) \
        if len(shape) >= 2 else 0
    # --out checked, locked and cleared of dead runs' temps before the image is read
    with prepare_run_dir(args.out, need, f"fit-image ({len(config.schedule)} scales)"):
        image = load_image(args.image)
        check_image_size(image.shape, config.downsample, args.image)
        control = RunControl()
        with stop_on_interrupt(control) as signalled:
            result = consume(fit_image(image, config, control, out_dir=args.out, resume=args.resume),
                             quiet=args.quiet)
    summary = {k: result.metrics[k] for k in ("method", "psnr_db", "spectrum_drift", "stopped")}
    summary.update(preset=config.preset, seconds=round(result.seconds, 1))
    print(json.dumps(summary))
    return signalled.exit_status  # 130 after Ctrl-C, 143 after SIGTERM (a clean stop), else 0
