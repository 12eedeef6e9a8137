"""``rmfn reconstruct``: coarse-to-fine cryo-EM reconstruction of a map and the poses."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from ..cryoem.reconstruct import MODES, POSE_INITS, POSE_SEARCH_MODES, PRESETS, ReconstructConfig, reconstruct
from ..cryoem.reconstruct.data import load_dataset
from ..engine.control import RunControl
from ..engine.distributed import launched_world, start, stop
from ..errors import InputError
from ..engine.outdir import check_output_dir, estimate_reconstruct_bytes, prepare_run_dir
from ..model.precision import PRECISIONS
from ._args import positive_ints
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
                   "(cropped like them with --box) or at the --box size; the ground truth for simulated data")
    p.add_argument("--true-poses", metavar="STAR",
                   help="STAR with the true angles and origins of these particles (rmfn simulate writes "
                   "true_poses.star); pose and offset errors are reported only with it")
    p.add_argument("--box", type=int, metavar="D",
                   help="Fourier-crop the particles to D px (even, <= their box) on read; the pixel size "
                   "grows by box/D and maps are written at D")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small",
                   help="cpu-small (default: minutes on a CPU, 32^3 data), paper (the paper's "
                   "protocol, for a GPU), tiny (seconds, smoke test)")
    p.add_argument("--mode", choices=MODES, default="coarse-to-fine",
                   help="coarse-to-fine (default); full-scale (finest scale only, from scratch); "
                   "oracle-poses (poses and offsets fixed at --true-poses, else at the STAR's)")
    p.add_argument("--pose-init", choices=POSE_INITS, default=None,
                   help="initial poses: auto (default: the STAR's angles if it has them, else random), "
                   "star, perturb (45-90 deg from the true poses or the STAR's: the paper's protocol; "
                   "needs angles), random")
    p.add_argument("--shift-range", type=float, metavar="PX",
                   help="estimate in-plane offsets within +-PX px of the working box (global search "
                   "grid and pose steps); 0 keeps the STAR's origins (cpu-small: 3)")
    p.add_argument("--epochs", type=positive_ints, help="epochs per stage, e.g. 15,15,70")
    p.add_argument("--batch", type=int, help="particles per batch")
    p.add_argument("--layers", type=int, help="network layers (= scales = stages)")
    p.add_argument("--hidden", type=int, help="network width")
    p.add_argument("--lambdas", type=float, nargs=2, metavar=("L1", "L2"), help="init lambda1 lambda2")
    p.add_argument("--lr-structure", type=float, help="Adam lr of the network")
    p.add_argument("--lr-pose", type=float, help="Adam lr of the poses")
    p.add_argument("--pose-search", choices=tuple(POSE_SEARCH_MODES), default=None,
                   help="per-epoch global pose search: in the coarse stages only, then local "
                   "gradient refinement at the finest (so never in a full-scale run); in every "
                   "stage including the finest (cpu-small); or off, gradient steps only (paper)")
    p.add_argument("--max-particles", type=int, help="use only the first N particles")
    p.add_argument("--invert-contrast", action="store_true", help="multiply images by -1 (dark particles)")
    p.add_argument("--no-align", action="store_true", help="FSC without aligning to the reference first")
    p.add_argument("--device", default="auto", help="auto (default: a CUDA GPU if there is one, else the "
                   "CPU), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="precision of the hidden layers' matrix products only: float32 (default), tf32 "
                   "(CUDA), bf16 (CUDA, or a CPU with bfloat16 units)")
    p.add_argument("--compile", action="store_true",
                   help="evaluate the network through torch.compile (for a GPU; the first batch of each "
                   "stage waits for the compiler)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; per process "
                   "with --nproc)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel over N processes on this machine (torch.distributed: one per GPU "
                   "with NCCL, else CPU processes with gloo); the same as torchrun --standalone "
                   "--nproc-per-node N -m rmfn_napari.cli reconstruct ... (use torchrun itself for "
                   "several machines). --batch is the global batch, split between the processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ReconstructConfig:
    """Build the run settings from the preset and the explicit flags."""
    overrides = {"mode": args.mode, "device": args.device, "seed": args.seed,
                 "invert_contrast": args.invert_contrast, "align_for_fsc": not args.no_align}
    mapping = {"pose_init": args.pose_init, "epochs_per_stage": args.epochs, "batch_size": args.batch,
               "n_layers": args.layers, "hidden": args.hidden,
               "lambdas": tuple(args.lambdas) if args.lambdas else None,
               "lr_structure": args.lr_structure, "lr_pose": args.lr_pose,
               "max_particles": args.max_particles, "box": args.box,
               "shift_range_px": args.shift_range, "precision": args.precision,
               "compile_render": True if args.compile else None}
    overrides.update({k: v for k, v in mapping.items() if v is not None})
    if args.pose_search is not None:
        overrides.update(POSE_SEARCH_MODES[args.pose_search])
    if args.layers and not args.epochs:
        base = PRESETS[args.preset]["epochs_per_stage"]
        overrides["epochs_per_stage"] = tuple(base[min(i, len(base) - 1)] for i in range(args.layers))
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
    if args.nproc > 1 and launched_world() == 1:  # launch the ranks; each runs this command
        if args.nproc > cfg.batch_size:
            raise InputError(f"--nproc {args.nproc} is more processes than the batch has particles "
                             f"({cfg.batch_size}); --batch is the global batch")
        load_dataset(args.star, cfg.box)  # a bad STAR or stack is said once, before the launch
        check_output_dir(args.out, 0, "reconstruct")  # and so is a bad --out
        return launch_local(args.nproc, strip_nproc(args.argv), "reconstruct",
                            f"the last checkpoint in {args.out} is kept (--resume continues it)")
    ranks = start(cfg.device)
    try:
        return _run_rank(args, cfg, ranks)
    finally:
        stop(ranks)


def _run_rank(args: argparse.Namespace, cfg: ReconstructConfig, ranks) -> int:
    """The run in this process (one of the ranks of a data-parallel run, or the only one)."""
    # --out checked (a file, not writable, too little space), locked against a second run and
    # cleared of dead runs' temps before the data are read; the box is known here only with --box
    need = estimate_reconstruct_bytes(box=cfg.box, n_layers=cfg.n_layers, hidden=cfg.hidden)
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
    if m.get("pose_errors"):
        pe = m["pose_errors"]
        summary.update(pose_median_deg=pe["median_deg"], pose_frac_under_5deg=pe["frac_under_5deg"],
                       pose_frac_under_10deg=pe["frac_under_10deg"], shift_median_px=pe["shift_median_px"])
    print(json.dumps(summary))
    if not args.quiet:
        print(f"outputs in {args.out}", file=sys.stderr)
    return signalled.exit_status  # 130 after Ctrl-C, 143 after SIGTERM (a clean stop), else 0
