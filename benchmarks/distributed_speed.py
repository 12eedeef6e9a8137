"""Data-parallel reconstruction on this machine: processes × threads against particles per second
and the map each run ends with, side by side in one invocation.

On the demo's data (1OL5 32³ at 2 Å, 3000 off-centre CTF particles, SNR 0.1, no angles: ab
initio with the ``cpu-small`` preset and its batch B = 200), one thread per process:

| run | processes | global batch | per process |
|---|---|---|---|
| 1 × B | 1 | B | B |
| 2 × B | 2 | 2B | B |
| 1 × 2B | 1 | 2B | 2B |

"2 × B" is measured against "1 × B" for speed (particles per second: particles × epochs over the
run's wall time) and against "1 × 2B" (the same global batch, so the same optimisation) for the
map. ``--seeds 0,1`` repeats every run per seed; ``--spread-seeds 1,2`` adds "1 × 2B" runs alone,
for the seed-to-seed spread of the resolution. Runs go one after another (each has the machine to itself).

    python benchmarks/distributed_speed.py                  # ~45 min on 2 cores
    python benchmarks/distributed_speed.py --spread-seeds 1 # and the spread (~10 min more)
    python benchmarks/distributed_speed.py --dry-run        # seconds: a 16³ toy, nothing written

Writes ``benchmarks/results/distributed_speed.md`` and ``.json`` (not in ``--dry-run``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_SIM = ["--n", "3000", "--snr", "0.1", "--max-shift", "2", "--defocus-min", "8000", "--defocus-max", "25000",
            "--astig-min", "0", "--astig-max", "500", "--seed", "0"]


def simulate(out: Path, dry_run: bool) -> Path:
    star = out / "particles.star"
    if not star.exists():
        if dry_run:
            sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
            from analytic_maps import write_sample_map_16

            mp = write_sample_map_16(out.parent / "map16.mrc")
            args = ["--map", str(mp), "--n", "96", "--snr", "1", "--max-shift", "1", "--seed", "0"]
        else:
            args = ["--map", str(ROOT / "sample_data/maps/1ol5_32_2.0A.mrc"), *DEMO_SIM]
        subprocess.run([sys.executable, "-m", "rmfn_napari.cli", "simulate", *args, "--out", str(out), "--quiet"],
                       check=True, cwd=ROOT)
    return star


def one_run(star: Path, out: Path, nproc: int, batch: int, seed: int, preset: str, extra: list[str]) -> dict:
    """One ``rmfn reconstruct`` (``--nproc`` processes, one thread each) as a researcher runs it:
    no reference and no true poses (their evaluation is a benchmark's, not a run's, and rank 0
    would do it alone at every stage end); the wall time, then the map and poses it wrote scored
    against the truth (:func:`quality`)."""
    cmd = [sys.executable, "-m", "rmfn_napari.cli", "reconstruct", "--overwrite", str(star),
           "--out", str(out), "--preset", preset, "--batch", str(batch), "--seed", str(seed), "--threads", "1",
           "--device", "cpu", "--nproc", str(nproc), "--quiet", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({nproc} x batch {batch}, seed {seed}): {proc.stderr.strip()[-800:]}")
    m = json.loads((out / "metrics.json").read_text())
    epochs = sum(s["epochs_done"] for s in m["stages"])
    return {"processes": nproc, "global_batch": batch, "seed": seed, "wall_s": wall,
            "particles_per_s": m["n_particles"] * epochs / wall, "world_size": m["world_size"],
            "gold_standard_A": m.get("gold_standard_resolution_A"), **quality(star, out, preset)}


def quality(star: Path, out: Path, preset: str) -> dict:
    """The run's finest map (``scale_L.mrc``) against the simulation's reference — FSC at 0.5
    with the preset's mask and alignment, as the run itself reports with ``--reference`` — and its
    ``poses.star`` against ``true_poses.star``, as with ``--true-poses``."""
    import torch
    from rmfn_napari.cryoem.ground_truth import read_true_poses
    from rmfn_napari.cryoem.io import read_map
    from rmfn_napari.cryoem.particles import read_particles
    from rmfn_napari.cryoem.reconstruct import ReconstructConfig, load_dataset
    from rmfn_napari.cryoem.reconstruct.data import load_reference
    from rmfn_napari.cryoem.reconstruct.outputs import pose_error_metrics, reference_fsc

    torch.set_num_threads(1)
    ds = load_dataset(star, None)
    finest = sorted(out.glob("scale_*.mrc"), key=lambda p: int(p.stem.split("_")[1]))[-1]
    vol, _ = read_map(finest)
    ref = load_reference(star.parent / "reference.mrc", ds)
    cfg = ReconstructConfig.from_preset(preset)
    fsc_ev = reference_fsc([vol], ref, ds.apix, cfg.mask_radius, cfg.align_for_fsc)[0]
    est = read_particles(out / "poses.star")
    truth = read_true_poses(star.parent / "true_poses.star", ds)
    pe = pose_error_metrics(torch.as_tensor(est.rotations), torch.as_tensor(est.shifts_A / ds.apix), truth,
                            ds.apix, ds.box).values
    return {"fsc_A": fsc_ev.values["resolution_A"], "pose_median_deg": pe["median_deg"],
            "frac_under_5deg": pe["frac_under_5deg"]}


STEPS_WORKER = """
import json, sys, time, numpy as np, torch
torch.set_num_threads(1)
from rmfn_napari.engine.distributed import start, stop
from rmfn_napari.cryoem.reconstruct import ForwardModel, ReconstructConfig, StageData, image_scale, load_dataset, stage_sigma
from rmfn_napari.cryoem.reconstruct.poses import train_batch
from rmfn_napari.model import ResidualMFN
star, per_rank, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ranks = start("cpu")
ds = load_dataset(star, None)
cfg = ReconstructConfig.from_preset("cpu-small", shift_range_px=3.0)
n, scale, D = ds.n, 2, ds.box
net = ResidualMFN(3, cfg.hidden, cfg.n_layers, out_dim=1, init="residual", residual=True, lambdas=cfg.lambdas,
                  resolution=D, head_activation="relu", seed=0)
fwd = ForwardModel(D, ds.apix, scale, net.band_limits[scale], stage_sigma(scale, cfg.n_layers, D, cfg.lambdas),
                   cfg.pad, cfg.mask_radius, "cpu", ranks=ranks)
owned = ranks.shard(n)
data = StageData(ds, owned, fwd.freqs, image_scale(ds, n, cfg), cfg, "cpu", 4 * 2**30)
model = ranks.wrap(net, uses_every_parameter=True)
opt = torch.optim.Adam(net.parameters(), lr=cfg.lr_structure)
rot = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
sh = torch.zeros(n, 2, dtype=torch.float64)
times = []
for b in range(batches + 1):
    idx = owned[(b * per_rank) % (len(owned) - per_rank):][:per_rank]
    obs, ctf = data.get(idx)
    t0 = time.perf_counter()
    train_batch(model, opt, fwd, obs, ctf, rot, sh, sh.clone(), idx, cfg, None, "cpu", True,
                1.0 / per_rank, ranks.mean)
    times.append(time.perf_counter() - t0)
if ranks.is_main:
    print(json.dumps({"s_per_batch": float(np.mean(times[1:]))}))
stop(ranks)
"""


def steps(star: Path, per_rank: int, batches: int) -> list[dict]:
    """Seconds per finest-stage batch (structure + pose steps, ``per_rank`` particles per process):
    one process; two independent processes at once (what the machine gives two processes that
    never talk); two ranks of one DistributedDataParallel run."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    worker = star.parent / "steps_worker.py"  # torchrun runs a file
    worker.write_text(STEPS_WORKER)
    args = [str(worker), str(star), str(per_rank), str(batches)]
    script = [sys.executable, *args]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]

    def run(cmds):
        procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in cmds]
        outs = [p.communicate() for p in procs]
        for p, (o, e) in zip(procs, outs):
            if p.returncode != 0:
                raise SystemExit(f"steps worker failed: {e.strip()[-800:]}")
        return [json.loads(o.strip().splitlines()[-1])["s_per_batch"] for o, _ in outs]

    solo = run([script])[0]
    pair = run([script, script])
    dist = run([ddp])[0]
    rows = [{"how": "1 process", "processes": 1, "s_per_batch": solo, "particles_per_s": per_rank / solo},
            {"how": "2 independent processes at once", "processes": 2, "s_per_batch": max(pair),
             "particles_per_s": sum(per_rank / t for t in pair)},
            {"how": "2 ranks, DistributedDataParallel", "processes": 2, "s_per_batch": dist,
             "particles_per_s": 2 * per_rank / dist}]
    for r in rows:
        r["ratio"] = r["particles_per_s"] / rows[0]["particles_per_s"]
    return rows


def fmt(v, spec=".2f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(rows: list[dict], batch: int, step_rows: list[dict] | None = None) -> str:
    lines = []
    if step_rows:
        lines += [f"## One finest-stage batch (32³, {batch} particles per process, structure + pose steps)", "",
                  "| how | processes | s per batch (slowest) | particles/s | vs 1 process |", "|---|---|---|---|---|"]
        lines += [f"| {r['how']} | {r['processes']} | {r['s_per_batch']:.3f} | {r['particles_per_s']:.0f} | "
                  f"{r['ratio']:.2f}× |" for r in step_rows]
        lines.append("")
    if not rows:
        return "\n".join(lines) + "\n"
    lines += [f"## Data-parallel reconstruction, CPU, 1 thread per process (measured {time.strftime('%Y-%m-%d %H:%M')})",
             "", f"B = {batch}. Runs one after another, each alone on the machine. Particles per second = "
             "particles × epochs / wall time of the whole run (gold-standard half-maps at every stage end "
             "included). The runs have no reference and no true poses, as a researcher's; their map and poses "
             "are scored against the truth afterwards.", "",
             "| run | seed | processes | global batch | wall (min) | particles/s | speed-up vs 1 × B | "
             "FSC₀.₅ vs truth (Å) | gold standard (Å) | pose median (°) | poses < 5° |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["seed"]: r for r in rows if r["label"] == "1 × B"}
    for r in rows:
        b = base.get(r["seed"])
        up = f"{r['particles_per_s'] / b['particles_per_s']:.2f}×" if b is not None else ""
        lines.append(f"| {r['label']} | {r['seed']} | {r['processes']} | {r['global_batch']} | {r['wall_s'] / 60:.1f} | "
                     f"{r['particles_per_s']:.0f} | {up} | {fmt(r['fsc_A'])} | {fmt(r['gold_standard_A'])} | "
                     f"{fmt(r['pose_median_deg'], '.1f')} | "
                     f"{fmt(None if r['frac_under_5deg'] is None else 100 * r['frac_under_5deg'], '.0f')}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0", help="seeds of the three runs, e.g. 0,1")
    p.add_argument("--spread-seeds", default="", help="more seeds of 1 × 2B alone (the seed-to-seed spread)")
    p.add_argument("--batch", type=int, default=200, help="B, particles per process")
    p.add_argument("--epochs", default=None, help="epochs per stage (default: the preset's)")
    p.add_argument("--runs", default="1xB,2xB,1x2B", help="which end-to-end runs ('' for none)")
    p.add_argument("--steps", type=int, default=6, help="finest-stage batches timed per process "
                   "(one process, two independent, two DDP ranks); 0: none")
    p.add_argument("--dry-run", action="store_true", help="a 16³ toy in seconds, nothing written (CI)")
    p.add_argument("--work", default=str(ROOT / "bench_out" / "distributed"))
    args = p.parse_args(argv)
    work = Path(args.work).resolve()
    if args.dry_run:
        work = work / "dry"
    work.mkdir(parents=True, exist_ok=True)
    star = simulate(work / "data", args.dry_run)
    preset, batch = ("tiny", 24) if args.dry_run else ("cpu-small", args.batch)
    extra = ["--epochs", "1,1,1"] if args.dry_run else (["--epochs", args.epochs] if args.epochs else [])
    plan = {"1xB": ("1 × B", 1, batch), "2xB": ("2 × B", 2, 2 * batch), "1x2B": ("1 × 2B", 1, 2 * batch)}
    step_rows = steps(star, 24 if args.dry_run else batch, 2 if args.dry_run else args.steps) if args.steps else []
    if step_rows:
        print(markdown([], batch, step_rows), flush=True)
    rows = []
    jobs = [(int(s), key) for s in args.seeds.split(",") for key in args.runs.split(",") if key]
    jobs += [(int(s), "1x2B") for s in args.spread_seeds.split(",") if s]
    for seed, key in jobs:
        label, nproc, global_batch = plan[key]
        out = work / "runs" / f"{key}_seed{seed}"
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        r = one_run(star, out, nproc, global_batch, seed, preset, extra)
        rows.append({"label": label, **r})
        print(f"{label} seed {seed}: {r}", flush=True)
    text = markdown(rows, batch, step_rows)
    print(text)
    if args.dry_run:
        assert all(r["world_size"] == r["processes"] for r in rows)
        print("dry run passed")
        return 0
    res = ROOT / "benchmarks" / "results"
    (res / "distributed_speed.json").write_text(json.dumps({"rows": rows, "steps": step_rows, "batch": batch,
                                                             "measured": time.strftime("%Y-%m-%d %H:%M")}, indent=1))
    (res / "distributed_speed.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
