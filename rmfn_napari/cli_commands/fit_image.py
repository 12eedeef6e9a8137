"""``rmfn fit-image``: coarse-to-fine fitting of a 2D image (paper §5)."""

from __future__ import annotations

import argparse
import json

from ..engine.control import RunControl
from ..engine.outdir import estimate_fit_image_bytes, prepare_run_dir
from ..errors import InputError
from ..fitting import FitImageConfig, fit_image, load_image
from ..fitting.image_fitting import PAPER_SCHEDULE, check_training_memory
from ..model import METHODS
from ._args import positive_ints
from ._events import consume, stop_on_interrupt


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit-image", help="fit an image coarse to fine, one scale per stage",
        description="Fit a 2D image with a residual MFN (or a baseline) coarse to fine. Writes "
        "scale_k.tif, spectrum_k.tif (centred log-amplitude) and metrics.json (psnr_db, "
        "spectrum_drift per scale) to --out.",
    )
    p.add_argument("image", help="PNG/TIFF/JPEG image; it is the PSNR reference, training uses it "
                   "block-averaged by --downsample")
    p.add_argument("--method", choices=sorted(METHODS), default="rmfn",
                   help="rmfn (residual + proposed init), res-bacon (residual + BACON init), "
                   "bacon (staged 'fair' BACON); default rmfn")
    p.add_argument("--schedule", type=positive_ints, default=PAPER_SCHEDULE,
                   help="steps per stage, one stage per scale (default 500,500,1000,8000)")
    p.add_argument("--hidden", type=int, default=256, help="hidden width (default 256)")
    p.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate (default 5e-3)")
    p.add_argument("--lambdas", type=float, nargs=2, default=(0.3, 2.0), metavar=("L1", "L2"),
                   help="lambda1 lambda2 of the init (default 0.3 2.0)")
    p.add_argument("--downsample", type=int, default=2, help="training image = image / this (default 2)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
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


def run(args: argparse.Namespace) -> int:
    config = FitImageConfig(method=args.method, schedule=tuple(args.schedule), hidden=args.hidden,
                            lr=args.lr, lambdas=tuple(args.lambdas), downsample=args.downsample,
                            device=args.device, seed=args.seed)
    config.validate()
    shape = _image_shape(args.image)
    check_training_memory(shape, config, args.image)  # from the header: before the image is read
    need = estimate_fit_image_bytes(shape, args.downsample, len(config.schedule)) if len(shape) >= 2 else 0
    # --out checked, locked and cleared of dead runs' temps before the image is read
    with prepare_run_dir(args.out, need, f"fit-image ({len(config.schedule)} scales)"):
        image = load_image(args.image)
        if min(image.shape[:2]) // args.downsample < 8:
            raise InputError(f"image of {image.shape[0]}x{image.shape[1]} is too small for "
                             f"--downsample {args.downsample}", args.image)
        control = RunControl()
        with stop_on_interrupt(control) as signalled:
            result = consume(fit_image(image, config, control, out_dir=args.out), quiet=args.quiet)
    summary = {k: result.metrics[k] for k in ("method", "psnr_db", "spectrum_drift", "stopped")}
    print(json.dumps(summary))
    return signalled.exit_status  # 130 after Ctrl-C, 143 after SIGTERM (a clean stop), else 0
