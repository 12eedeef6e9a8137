"""How precisely can poses be found on this data at all? Gradient pose refinement against
the TRUE map, per stage band (paper §6 low-pass), from starts 10°, 30° and 45–90° off the truth
(the paper's initial error).

This is the ceiling for "fraction of poses within 5°" that any reconstruction of the same
particles can reach (its map is at best the true one). A second table runs the bands in turn
(coarse to fine) against the finest band alone, from the paper's 45–90° start: the paper's
claim about local minima, measured on the pose landscape with the map taken out of the
question. Usage::

    python benchmarks/cryoem.py --config cpu --runs oracle   # simulates bench_out/cpu/data once
    python benchmarks/pose_floor.py                           # then this (~3 min, 1 thread)

and at the paper's size (64³, 1 Å/px; first band 2.9 cycles/box instead of 1.5)::

    rmfn simulate --map sample_data/maps/1ol5_64_1.0A.mrc --n 1000 --out bench_out/paper64/data
    python benchmarks/pose_floor.py --data bench_out/paper64/data --n 400 \
        --out benchmarks/results/pose_floor_64.md                # ~5 min, 1 thread

The true map is scaled to the images' units by one least-squares amplitude (fitted with the
true poses); pose steps are the engine's own (:func:`rmfn_napari.cryoem.reconstruct.pose_steps`,
Adam lr 1e-2, betas (0.9, 0.9)); errors are geodesic degrees. Prints a table and writes
``benchmarks/results/pose_floor_cpu.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from rmfn_napari.cryoem.io import read_map
    from rmfn_napari.cryoem.particles import read_particles
    from rmfn_napari.cryoem.projector import volume_fourier
    from rmfn_napari.cryoem.reconstruct import (
        ForwardModel, ReconstructConfig, StageData, image_scale, pose_steps, stage_sigma,
    )
    from rmfn_napari.cryoem.rotations import geodesic_distance, perturb_rotations
    from rmfn_napari.model import scale_band_limits

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "bench_out" / "cpu" / "data"),
                   help="folder with true_poses.star and reference.mrc (from benchmarks/cryoem.py)")
    p.add_argument("--n", type=int, default=600, help="particles used (default 600)")
    p.add_argument("--steps", type=int, default=200, help="pose steps (default 200)")
    p.add_argument("--starts", nargs="+", default=["10", "30", "45-90"],
                   help="start errors in degrees: a value or a range lo-hi (uniform; default 10 30 45-90)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pose_floor_cpu.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = Path(args.data).resolve()
    ds = read_particles(data / "true_poses.star")  # the same images, with the true angles
    ref, apix = read_map(data / "reference.mrc")
    box, n = ds.box, min(args.n, ds.n)
    cfg = ReconstructConfig.from_preset("cpu-small")
    scale_img = image_scale(ds, ds.n, cfg)
    bands = [b / (2 * np.pi) for b in scale_band_limits(box, cfg.n_layers, cfg.lambdas)]  # cycles/box
    idx = np.arange(n)
    R_true = torch.as_tensor(ds.rotations[:n], dtype=torch.float64)
    vol_true = volume_fourier(torch.as_tensor(ref), pad=cfg.pad) / box
    stage = {}  # scale -> (forward model, observed, ctf, scaled true-map spectrum)
    for scale in range(cfg.n_layers):
        sigma = stage_sigma(scale, cfg.n_layers, box, cfg.lambdas)
        # the true map is given on the full grid
        fwd = ForwardModel(box, apix, scale, bands[scale], sigma, cfg.pad, None, render_n=box)
        obs, ctf = StageData(ds, n, fwd.freqs, scale_img, cfg, "cpu", budget_bytes=2**34).get(idx)  # centred stacks
        model = fwd.slices(vol_true, R_true.float()) * ctf
        w2 = fwd.freqs.weight**2
        amp = float((model.conj() * obs * w2).real.sum() / ((model.abs() ** 2) * w2).sum())
        stage[scale] = (fwd, obs, ctf, vol_true * amp)

    def refine(scales, lo: float, hi: float) -> np.ndarray:
        """Errors (degrees) after pose steps at each band of ``scales`` in turn."""
        R = perturb_rotations(R_true, lo, hi, generator=torch.Generator().manual_seed(1)).float()
        for scale in scales:
            fwd, obs, ctf, vol_ft = stage[scale]
            R, _, _ = pose_steps(vol_ft, fwd, obs, ctf, R, args.steps, cfg.lr_pose, cfg.pose_betas)
            R = R.float()
        return geodesic_distance(R.double(), R_true).numpy()

    def row(label: str, start: str, err: np.ndarray) -> tuple:
        print(f"{label}, start {start}°: median {np.median(err):.1f}°", flush=True)
        return (label, start, float(np.median(err)), float(np.mean(err < 5)), float(np.mean(err < 15)))

    rows = []
    for scale in range(cfg.n_layers):
        for start in args.starts:
            lo, _, hi = start.partition("-")
            rows.append(row(f"{scale + 1} ({bands[scale]:.2f} cycles/box)", start,
                            refine([scale], float(lo), float(hi or lo))))
    # the paper's claim on the pose landscape alone: the same steps per band, coarse to fine
    # versus the finest band only, from the paper's 45-90 degree start
    finest = cfg.n_layers - 1
    ladders = [("finest only (full-scale)", [finest]),
               ("2 -> 3", list(range(1, cfg.n_layers))),
               ("1 -> 2 -> 3 (coarse-to-fine)", list(range(cfg.n_layers)))]
    ladder_rows = [row(label, "45-90", refine(scales, 45.0, 90.0)) for label, scales in ladders]
    shown = data.relative_to(ROOT) if data.is_relative_to(ROOT) else data
    head = ["| {} | start (°) | median error (°) | < 5° | < 15° |", "|---|---|---|---|---|"]
    lines = [f"## Pose precision against the true map ({box}³ at {apix:.3g} Å/px, {shown}, {n} particles, "
             f"{args.steps} pose steps per band)", "", "### One band", "", head[0].format("stage band"), head[1]]
    lines += [f"| {lab} | {st} | {med:.1f} | {100 * f5:.0f}% | {100 * f15:.0f}% |" for lab, st, med, f5, f15 in rows]
    lines += ["", f"### Bands in turn ({args.steps} steps each), from the paper's 45-90° start", "",
              head[0].format("bands"), head[1]]
    lines += [f"| {lab} | {st} | {med:.1f} | {100 * f5:.0f}% | {100 * f15:.0f}% |"
              for lab, st, med, f5, f15 in ladder_rows]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
