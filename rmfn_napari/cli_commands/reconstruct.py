"""``rmfn reconstruct``: coarse-to-fine cryo-EM reconstruction of a map and the poses."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from ..cryoem.reconstruct import PRESETS, ReconstructConfig, reconstruct
from ..cryoem.reconstruct.settings import epochs_for_layers
from ..cryoem.reconstruct.settings_spec import DEFAULT_PRESET, RECONSTRUCT_SETTINGS
from ..cryoem.reconstruct.data import load_dataset
from ..engine.control import RunControl
from ..engine.distributed import launched_world, start, stop
from ..errors import InputError
from ..engine.outdir import check_output_dir, estimate_reconstruct_bytes, existing_results, prepare_run_dir
from ..engine.settings_spec import add_arguments, overrides_from_args
from ._events import consume, stop_on_interrupt
from ._launch import launch_local, strip_nproc


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct", help="reconstruct a 3D map and the poses from a particle STAR file",
        description="Joint coarse-to-fine estimation of a 3D map (a residual MFN) and per-particle "
        "poses (paper §6). Writes scale_k.mrc, poses.star, the backprojected half_map_1.mrc, "
        "half_map_2.mrc, map.mrc and mask_auto.mrc, metrics.json (gold-standard FSC of the "
        "half-maps; FSC per scale against --reference after alignment; pose and offset errors "
        "against --true-poses), checkpoint.pt and run.log to --out.",
    )
    p.add_argument("star", help="RELION particle STAR file (images in .mrcs stacks)")
    p.add_argument("--reference", help="reference map (MRC) for FSC, at the particles' box and pixel size "
                   "(cropped like them with --box) or at the --box size (optics groups resampled to one grid: any "
                   "map, resampled likewise from its voxel size); the ground truth for simulated data")
    p.add_argument("--true-poses", metavar="STAR",
                   help="STAR with the true angles and origins of these particles (rmfn simulate writes "
                   "true_poses.star); pose and offset errors are reported only with it")
    p.add_argument("--out", required=True, help="output directory")
    # every setting of ReconstructConfig the widget offers too: one spec, the same help text
    add_arguments(p, RECONSTRUCT_SETTINGS, defaults={"preset": DEFAULT_PRESET})
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; per process "
                   "with --nproc)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel over N processes on this machine (torch.distributed: one per GPU "
                   "with NCCL, else CPU processes with gloo); the same as torchrun --standalone "
                   "--nproc-per-node N -m rmfn_napari.cli reconstruct ... (use torchrun itself for "
                   "several machines). --batch is the global batch, split between the processes")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs in --out "
                   "(without it, a new run into a folder that holds results is refused)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ReconstructConfig:
    """Build the run settings from the preset and the explicit flags (see
    :data:`~rmfn_napari.cryoem.reconstruct.settings_spec.RECONSTRUCT_SETTINGS`)."""
    overrides = overrides_from_args(args, RECONSTRUCT_SETTINGS)
    overrides.pop("preset", None)
    if args.n_layers is not None and args.n_layers < 1:  # before epochs_per_stage is sized by it
        raise InputError(f"--layers must be an integer >= 1, got {args.n_layers}")
    if args.n_layers and not args.epochs_per_stage:  # --layers alone: the preset's epochs, extended
        overrides["epochs_per_stage"] = epochs_for_layers(PRESETS[args.preset]["epochs_per_stage"], args.n_layers)
    cfg = ReconstructConfig.from_preset(args.preset, **overrides)
    cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    import torch

    cfg = config_from_args(args)
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.nproc < 1:
        raise InputError(f"--nproc must be >= 1, got {args.nproc}")
    if launched_world() == 1 or os.environ.get("RANK", "0") == "0":  # said once, by rank 0
        _check_no_earlier_run(args)
    if args.nproc > 1 and launched_world() == 1:  # launch the ranks; each runs this command
        if args.nproc > cfg.batch_size:
            raise InputError(f"--nproc {args.nproc} is more processes than the batch has particles "
                             f"({cfg.batch_size}); --batch is the global batch")
        ds = load_dataset(args.star, cfg.box, cfg.apix)  # a bad STAR or stack is said once, before the launch
        n = ds.n if cfg.max_particles is None else min(ds.n, int(cfg.max_particles))
        if args.nproc > n:  # and so is a rank without particles
            raise InputError(f"--nproc {args.nproc} is more processes than the {n} particles: at most one "
                             "process per particle", args.star)
        existed = os.path.exists(args.out)
        check_output_dir(args.out, 0, "reconstruct")  # and so is a bad --out
        status = launch_local(args.nproc, strip_nproc(args.argv), "reconstruct", lambda: _left_in(args.out))
        if status != 0 and not existed:  # a failed launch leaves no empty folder (as one process)
            with contextlib.suppress(OSError):
                os.rmdir(args.out)
        return status
    ranks = start(cfg.device)
    try:
        return _run_rank(args, cfg, ranks)
    finally:
        stop(ranks)


def _left_in(out) -> str:
    """What a failed data-parallel run leaves in ``out``, for its last line."""
    ckpt = os.path.join(out, "checkpoint.pt")
    if os.path.isfile(ckpt):
        return f"the last checkpoint {ckpt} is kept (--resume continues it)"
    return "no checkpoint was written"


def _check_no_earlier_run(args: argparse.Namespace) -> None:
    """A new run (no ``--resume``) into a folder holding an earlier run's results is refused
    without ``--overwrite``, as ``rmfn simulate`` refuses (and the widget asks first)."""
    if args.resume or args.overwrite:
        return
    found = existing_results(args.out)
    if found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise InputError(f"output exists: {shown} (use --overwrite to replace them, or --resume to "
                         "continue that run)", args.out)


def _free_bytes(out) -> float:
    """Free bytes on the file system that will hold ``out`` (its nearest existing folder);
    infinity when it cannot be told (the folder checks say why)."""
    import shutil
    from pathlib import Path

    anc = Path(out).absolute()
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    try:
        return float(shutil.disk_usage(anc).free)
    except OSError:
        return float("inf")


def _run_rank(args: argparse.Namespace, cfg: ReconstructConfig, ranks) -> int:
    """The run in this process (one of the ranks of a data-parallel run, or the only one)."""
    # --out checked (a file, not writable, too little space), locked against a second run and
    # cleared of dead runs' temps before the data are read; the box is known here only with --box
    need = estimate_reconstruct_bytes(box=cfg.box, n_layers=cfg.n_layers, hidden=cfg.hidden)
    if cfg.box is not None and ranks.is_main and need > _free_bytes(args.out):
        load_dataset(args.star, cfg.box, cfg.apix)  # a --box beyond the particles' box: say that, not "no space"
    with prepare_run_dir(args.out, need, "reconstruct") if ranks.is_main else contextlib.nullcontext():
        control = RunControl()
        with stop_on_interrupt(control, announce=ranks.is_main) as signalled:
            result = consume(reconstruct(args.star, cfg, control, reference=args.reference,
                                         out_dir=args.out, resume=args.resume, true_poses=args.true_poses,
                                         ranks=ranks),
                             quiet=args.quiet or not ranks.is_main)
    if not ranks.is_main:
        return signalled.exit_status
    m = result.metrics
    summary = {"mode": m.get("mode"), "gold_standard_resolution_A": m.get("gold_standard_resolution_A"),
               "resolution_A": m.get("resolution_A"), "stopped": result.stopped,
               "seconds": round(result.seconds, 1)}
    gold = m.get("gold_standard") or {}
    if gold:  # whether the number can be believed, and why not
        summary.update(gold_standard_trusted=gold.get("trusted"), gold_standard_verdict=gold.get("verdict"),
                       poses_moving_fraction=gold.get("poses_moving_fraction"))
    if m.get("pose_errors"):
        pe = m["pose_errors"]
        summary.update(pose_median_deg=pe["median_deg"], pose_frac_under_5deg=pe["frac_under_5deg"],
                       pose_frac_under_10deg=pe["frac_under_10deg"], shift_median_px=pe["shift_median_px"])
    print(json.dumps(summary))
    if not args.quiet:
        print(f"outputs in {args.out}", file=sys.stderr)
    return signalled.exit_status  # 130 after Ctrl-C, 143 after SIGTERM (a clean stop), else 0
