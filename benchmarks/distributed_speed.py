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
    """One ``rmfn reconstruct`` (``--nproc`` processes, one thread each): wall time, metrics."""
    cmd = [sys.executable, "-m", "rmfn_napari.cli", "reconstruct", str(star), "--reference",
           str(star.parent / "reference.mrc"), "--true-poses", str(star.parent / "true_poses.star"),
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
    pe = m.get("pose_errors") or {}
    return {"processes": nproc, "global_batch": batch, "seed": seed, "wall_s": wall,
            "particles_per_s": m["n_particles"] * epochs / wall, "world_size": m["world_size"],
            "fsc_A": m.get("resolution_A"), "gold_standard_A": m.get("gold_standard_resolution_A"),
            "pose_median_deg": pe.get("median_deg"), "frac_under_5deg": pe.get("frac_under_5deg")}


def fmt(v, spec=".2f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(rows: list[dict], batch: int) -> str:
    lines = [f"## Data-parallel reconstruction, CPU, 1 thread per process (measured {time.strftime('%Y-%m-%d %H:%M')})",
             "", f"B = {batch}. Runs one after another, each alone on the machine. Particles per second = "
             "particles × epochs / wall time of the whole run (stage-end evaluation included).", "",
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
    p.add_argument("--runs", default="1xB,2xB,1x2B", help="which runs")
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
    rows = []
    jobs = [(int(s), key) for s in args.seeds.split(",") for key in args.runs.split(",")]
    jobs += [(int(s), "1x2B") for s in args.spread_seeds.split(",") if s]
    for seed, key in jobs:
        label, nproc, global_batch = plan[key]
        out = work / "runs" / f"{key}_seed{seed}"
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        r = one_run(star, out, nproc, global_batch, seed, preset, extra)
        rows.append({"label": label, **r})
        print(f"{label} seed {seed}: {r}", flush=True)
    text = markdown(rows, batch)
    print(text)
    if args.dry_run:
        assert all(r["world_size"] == r["processes"] for r in rows)
        print("dry run passed")
        return 0
    res = ROOT / "benchmarks" / "results"
    (res / "distributed_speed.json").write_text(json.dumps({"rows": rows, "batch": batch,
                                                             "measured": time.strftime("%Y-%m-%d %H:%M")}, indent=1))
    (res / "distributed_speed.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
