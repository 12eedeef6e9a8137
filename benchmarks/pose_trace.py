"""Pose and offset errors after every global search of a run: where a protocol gains or loses.

The measurement behind "The 45–90° regression" in docs/results.md (issue 27): the same simulated
stack, the paper's start (poses 45–90° from the truth, origins from the truth), ``cpu-small``,
with settings varied by ``--set``; after each global search the pose errors (median, fraction
under 10°, after the best global rotation) and the offsets' median error are printed, and at
each stage end the stage's pose errors.

Usage::

    python benchmarks/pose_trace.py --n 3000 --epochs 10,15,1               # the default engine
    python benchmarks/pose_trace.py --n 3000 --epochs 10,15,1 --set shift_prior_px=0   # no prior
    python benchmarks/pose_trace.py --n 3000 --epochs 10,15,1 --set shift_range_px=0   # no offsets

One torch thread; data simulated once per ``--work`` folder (1OL5, 32 px, 2 Å/px, SNR 0.1).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--epochs", default="10,15,1")
    p.add_argument("--pose-init", default="perturb")
    p.add_argument("--set", action="append", default=[], help="FIELD=VALUE of ReconstructConfig (repeatable)")
    p.add_argument("--work", default="bench_out/pose_trace")
    args = p.parse_args()
    torch.set_num_threads(1)
    import rmfn_napari.cryoem.reconstruct.driver as driver
    from rmfn_napari.cryoem.ground_truth import read_true_poses
    from rmfn_napari.cryoem.particles import read_particles
    from rmfn_napari.cryoem.reconstruct import ReconstructConfig, reconstruct
    from rmfn_napari.cryoem.reconstruct.outputs import pose_error_metrics
    from rmfn_napari.engine.events import Metrics

    data = Path(args.work) / f"data_{args.n}"
    if not (data / "particles.star").exists():
        subprocess.run([sys.executable, "-m", "rmfn_napari.cli", "simulate", "--map",
                        str(ROOT / "sample_data/maps/1ol5_32_2.0A.mrc"), "--n", str(args.n), "--snr", "0.1",
                        "--seed", "0", "--out", str(data), "--quiet"], check=True, cwd=ROOT)
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = ast.literal_eval(value)
    cfg = ReconstructConfig.from_preset("cpu-small", pose_init=args.pose_init,
                                        epochs_per_stage=tuple(int(e) for e in args.epochs.split(",")),
                                        **overrides)
    ds = read_particles(data / "particles.star")
    truth = read_true_poses(data / "true_poses.star", ds, ds.n)
    search = driver.global_pose_search
    t0 = time.perf_counter()

    def traced(fwd, vol_ft, batches, rotations, shifts_px, *a, **k):
        moved = search(fwd, vol_ft, batches, rotations, shifts_px, *a, **k)
        v = pose_error_metrics(rotations, shifts_px, truth, ds.apix, ds.box).values
        print(f"  search: moved {moved[0]:5d}/{moved[1]}  median {v['median_deg']:6.1f}°  "
              f"<10° {100 * v['frac_under_10deg']:4.1f}%  offset error {v['shift_median_px']:.2f} px", flush=True)
        return moved

    driver.global_pose_search = traced  # each half-set's search is traced after its own call
    print(f"{args.n} particles, {cfg.pose_init} start, settings {overrides or 'cpu-small'}", flush=True)
    for ev in reconstruct(data / "particles.star", cfg, true_poses=data / "true_poses.star"):
        if isinstance(ev, Metrics) and ev.name == "pose_errors":
            v = ev.values
            print(f"stage {ev.stage + 1} end: median {v['median_deg']:.1f}°, <5° {100 * v['frac_under_5deg']:.1f}%, "
                  f"offset error {v['shift_median_px']:.2f} px  [{time.perf_counter() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
