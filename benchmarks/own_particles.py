"""Ab initio on particles shaped like a researcher's own: off-centre, large box, no angles.

The protocol of issue 11's "Done when":

1. a 96 px, 1.2 Å/px map of 1OL5 is made from the bundled model (``sample_data/pdb/1ol5.pdb``,
   chains A and B, 2.4 Å Gaussian atoms — the bundled 64³ map's recipe at another box and
   pixel size);
2. ``rmfn simulate``: ``--n`` particles, up to 4 px off-centre (RELION origins, in
   ``true_poses.star`` only), defocus 0.8–2.5 µm, astigmatism up to 500 Å, SNR 0.05; the
   ``particles.star`` it writes has **no angles and no origins**;
3. ``rmfn reconstruct particles.star --box 32 --preset cpu-small`` with no reference and no
   true poses (what a researcher runs), once with the offset search on (the preset's ±3 px) and
   once with ``--shift-range 0``; and an oracle run (``--mode oracle-poses --true-poses``) on
   the same cropped data;
4. each run's ``scale_3.mrc`` is evaluated afterwards against the truth: FSC at 0.5 after
   alignment (rotation, shift, hand) against the reference cropped to 32 px, and pose and
   offset errors of ``poses.star`` against ``true_poses.star``.

Usage::

    python benchmarks/own_particles.py                 # 3000 particles, all three runs (~35 min, 2 cores)
    python benchmarks/own_particles.py --runs random   # one run

Runs go two at a time, one torch thread each. Writes ``benchmarks/results/own_particles.md``
and ``.json``.

``--filters sine|gabor`` passes ``--filters`` to every run (issue 30), runs in ``<work>/<run>-<filters>``
and writes ``benchmarks/results/own_particles_filters.md`` and ``.json`` instead, one row per run
and filter kind, e.g. the sine and Gabor oracles one at a time::

    python benchmarks/own_particles.py --runs oracle --jobs 1 --filters sine --work /tmp/gabor_op
    python benchmarks/own_particles.py --runs oracle --jobs 1 --filters gabor --work /tmp/gabor_op
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

# key: (table label, extra reconstruct flags)
RUNS = {
    "random": ("random start, offset search ±3 px", []),
    "random-noshift": ("random start, offset search off", ["--shift-range", "0"]),
    "oracle": ("oracle poses and offsets", ["--mode", "oracle-poses", "--true-poses", "{truth}"]),
}


def make_data(out: Path, n: int, seed: int) -> Path:
    """The 96 px map and the simulated stack; returns the particle STAR."""
    from rmfn_napari.cryoem.io import write_map
    from rmfn_napari.cryoem.maps import map_from_model

    star = out / "data" / "particles.star"
    if star.exists():
        return star
    out.mkdir(parents=True, exist_ok=True)
    vol = map_from_model(ROOT / "sample_data/pdb/1ol5.pdb", box=96, apix=1.2, resolution=2.4, chains=["A", "B"])
    write_map(out / "1ol5_96_1.2A.mrc", vol, 1.2)
    subprocess.run([sys.executable, "-m", "rmfn_napari.cli", "simulate", "--map", str(out / "1ol5_96_1.2A.mrc"),
                    "--n", str(n), "--snr", "0.05", "--max-shift", "4", "--defocus-min", "8000",
                    "--defocus-max", "25000", "--astig-min", "0", "--astig-max", "500", "--seed", str(seed),
                    "--out", str(out / "data"), "--quiet"], check=True, cwd=ROOT)
    return star


def run_dir(key: str, filters: str | None) -> str:
    """A run's folder name under ``--work``: the run, and the filter kind when one was given."""
    return key if filters is None else f"{key}-{filters}"


def run_one(key: str, star: Path, out: Path, seed: int, filters: str | None = None) -> dict:
    label, flags = RUNS[key]
    truth = star.parent / "true_poses.star"
    flags = [f.replace("{truth}", str(truth)) for f in flags]
    if filters is not None:
        flags, label = flags + ["--filters", filters], f"{label}, {filters} filters"
    key_dir = run_dir(key, filters)
    cmd = [sys.executable, "-m", "rmfn_napari.cli", "reconstruct", "--overwrite", str(star), "--box", "32", "--preset",
           "cpu-small", "--out", str(out / key_dir), "--seed", str(seed), "--threads", "1", "--quiet", *flags]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    row = {"run": key, "label": label, "flags": flags, "wall_s": wall, "filters": filters or "sine"}
    if proc.returncode != 0:
        row["error"] = proc.stderr[-2000:]
        return row
    row.update(evaluate(out / key_dir, star))
    return row


def evaluate(run_dir: Path, star: Path) -> dict:
    """FSC against the cropped truth, pose and offset errors against true_poses.star."""
    from rmfn_napari.cryoem.downsample import fourier_crop_volume
    from rmfn_napari.cryoem.ground_truth import read_true_poses
    from rmfn_napari.cryoem.io import read_map
    from rmfn_napari.cryoem.particles import read_particles
    from rmfn_napari.cryoem.metrics import align_map, fsc, pose_error_stats, pose_errors, resolution_at
    from rmfn_napari.cryoem.offsets import shift_errors

    vol, apix = read_map(run_dir / "scale_3.mrc")
    ref_full, _ = read_map(star.parent / "reference.mrc")
    ref = fourier_crop_volume(ref_full, vol.shape[0])
    aligned, alignment = align_map(vol, ref, apix)
    freqs, curve = fsc(aligned, ref)
    res = resolution_at(freqs, curve, 0.5, vol.shape[0], apix)
    est = read_particles(run_dir / "poses.star")
    truth = read_true_poses(star.parent / "true_poses.star", est)
    err = pose_errors(est.rotations, truth.rotations, allow_flip=True)
    stats = pose_error_stats(err)
    shift_err, _ = shift_errors(est.shifts_A / apix, truth.shifts_A / apix, est.rotations, inliers=err < 10)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"resolution_A": res, "pose_median_deg": stats["median_deg"],
            "pose_frac_under_10deg": stats["frac_under_10deg"], "pose_frac_under_5deg": stats["frac_under_5deg"],
            "shift_median_px": float(np.median(shift_err)), "shift_frac_under_1px": float(np.mean(shift_err < 1)),
            "engine_seconds": metrics["seconds"], "hand_flipped": bool(alignment.flipped),
            "gold_standard_A": metrics.get("gold_standard_resolution_A")}


def table(rows: list[dict], n: int) -> str:
    """The Markdown table; "× oracle" divides by the oracle of the same filter kind."""
    oracles = {r.get("filters", "sine"): r for r in rows if r["run"] == "oracle" and "resolution_A" in r}
    lines = [f"1OL5, 96 px at 1.2 Å/px cropped to 32 px (3.6 Å/px, Nyquist 7.2 Å); {n} particles, SNR 0.05, "
             "offsets up to 4 px (1.33 px at 32), defocus 0.8–2.5 µm; preset cpu-small, one thread per run, "
             "two runs at a time on 2 cores. Offsets in px of the 32 px box.", "",
             "| run | FSC₀.₅ vs truth (Å) | × oracle | gold standard FSC₀.₁₄₃ (Å) | pose median (°) | poses < 10° "
             "| < 5° | offset median (px) | offsets < 1 px | wall (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error'].strip().splitlines()[-1]} |||||||| {r['wall_s']:.0f} |")
            continue
        oracle = oracles.get(r.get("filters", "sine"))
        res, ores = r["resolution_A"], oracle["resolution_A"] if oracle else None
        ratio = f"{res / ores:.2f}" if res is not None and ores is not None else "–"
        res_txt = f"{res:.1f}" if res is not None else "not resolved"  # resolution_at: None = not resolved
        gs = "–" if r.get("gold_standard_A") is None else f"{r['gold_standard_A']:.1f}"
        lines.append(f"| {r['label']} | {res_txt} | {ratio} | {gs} | {r['pose_median_deg']:.1f} | "
                     f"{100 * r['pose_frac_under_10deg']:.0f}% | {100 * r['pose_frac_under_5deg']:.0f}% | "
                     f"{r['shift_median_px']:.2f} | {100 * r['shift_frac_under_1px']:.0f}% | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--work", default="/tmp/rmfn_own_particles")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--fresh", action="store_true", help="write only this invocation's runs")
    p.add_argument("--filters", choices=("sine", "gabor"), default=None,
                   help="pass --filters to every run; results go to own_particles_filters.md/.json")
    p.add_argument("--evaluate-only", action="store_true",
                   help="evaluate the runs' existing output folders again (wall time from their run.log)")
    args = p.parse_args()
    out = Path(args.work)
    star = make_data(out, args.n, args.seed)
    keys = [k for k in args.runs.split(",") if k]
    name = "own_particles" if args.filters is None else "own_particles_filters"
    if args.evaluate_only:  # the runs' folders exist: evaluate them again (e.g. after a metrics change)
        saved = ROOT / "benchmarks" / "results" / f"{name}.json"
        walls = {r["run"]: r.get("wall_s") for r in json.loads(saved.read_text())} if saved.exists() else {}
        rows = []
        for k in keys:
            row = {"run": k, "label": RUNS[k][0], "flags": RUNS[k][1]}
            if args.filters is not None:
                row.update(filters=args.filters, label=f"{RUNS[k][0]}, {args.filters} filters")
            row.update(evaluate(out / run_dir(k, args.filters), star))
            # the process's wall time is not in the folder: keep the measured one, else the engine's
            row["wall_s"] = walls.get(k) or row["engine_seconds"]
            rows.append(row)
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(lambda k: run_one(k, star, out, args.seed, args.filters), keys))
    for r in rows:
        r["date"] = time.strftime("%Y-%m-%d")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    saved = results / f"{name}.json"
    done = {(r["run"], r.get("filters", "sine")) for r in rows}
    if saved.exists() and not args.fresh:  # keep the rows of runs not repeated this time
        old = [r for r in json.loads(saved.read_text()) if (r["run"], r.get("filters", "sine")) not in done]
        rows = sorted(old + rows, key=lambda r: (list(RUNS).index(r["run"]), r.get("filters", "sine")))
    text = table(rows, args.n)
    print(text)
    (results / f"{name}.md").write_text(f"# own particles\n\n{text}\n")
    (results / f"{name}.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
