"""The paper's claim in the joint problem at the paper's size, on a CPU (issue 13, item 7).

1OL5 at 64³ and 1 Å/px, ``--n`` particles (default 10,000; the paper used 50,000), SNR 0.1,
poses starting 45–90° from the truth and refined by the paper's gradient steps alone
(``--pose-search off``), the ``paper`` preset (3 scales, width 128, batch 600, 5 structure and
20 pose steps per batch). Two ``rmfn reconstruct`` processes side by side, one thread each:

* coarse-to-fine: stages 1 and 2 in full (15 epochs each), the finest stage ``--finest`` epochs;
* full-scale: the finest scale from the start for ``--full-epochs`` epochs (chosen so that both
  runs take about the same time).

Prints, after each stage, the median pose error, the fraction of poses within 5° and the
FSC₀.₅ against the truth; writes ``benchmarks/results/paper_size.md`` and ``.json``.

    python benchmarks/paper_size.py                       # ~35 min on 2 cores
    python benchmarks/paper_size.py --n 2000 --finest 1 --full-epochs 2 --work /tmp/ps   # a look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "sample_data" / "maps" / "1ol5_64_1.0A.mrc"


def simulate(out: Path, n: int, seed: int) -> Path:
    """The particle stack (reused when it is there)."""
    star = out / "data" / "particles.star"
    if not star.exists():
        subprocess.run([sys.executable, "-m", "rmfn_napari.cli", "simulate", "--map", str(MAP), "--n", str(n),
                        "--snr", "0.1", "--seed", str(seed), "--out", str(out / "data"), "--quiet"],
                       check=True, cwd=ROOT)
    return star


def run(name: str, star: Path, out: Path, mode: str, epochs: str, seed: int) -> dict:
    """One ``rmfn reconstruct`` (one thread); its metrics.json and wall time."""
    d = out / name
    cmd = [sys.executable, "-m", "rmfn_napari.cli", "reconstruct", "--overwrite", str(star),
           "--reference", str(star.parent / "reference.mrc"), "--true-poses", str(star.parent / "true_poses.star"),
           "--pose-init", "perturb", "--pose-search", "off", "--preset", "paper", "--mode", mode,
           "--epochs", epochs, "--out", str(d), "--threads", "1", "--device", "cpu", "--seed", str(seed), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"run": name, "error": proc.stderr.strip().splitlines()[-1:] or ["?"], "wall_s": wall}
    metrics = json.loads((d / "metrics.json").read_text())
    return {"run": name, "mode": mode, "epochs": epochs, "wall_s": wall, "stages": metrics["stages"]}


def table(results: list[dict], n: int) -> str:
    lines = [f"## 1OL5 64³ at 1 Å/px, {n} particles, SNR 0.1, poses from 45–90°, gradient-only (paper preset, CPU, 1 thread each)",
             "", "| run | stage | epochs | pose median (°) | poses < 5° | poses < 10° | FSC₀.₅ (Å) | stage time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['run']} | failed: {r['error'][0]} | | | | | | |")
            continue
        for s in r["stages"]:
            fsc = s.get(f"fsc_resolution_A_scale{s['scale']}")
            lines.append(f"| {r['run']} | {s['stage']} (scale {s['scale']}) | {s['epochs_done']} | "
                         f"{s.get('pose_median_deg', float('nan')):.1f} | {100 * s.get('pose_frac_under_5deg', float('nan')):.0f}% | "
                         f"{100 * s.get('pose_frac_under_10deg', float('nan')):.0f}% | "
                         f"{'not resolved' if fsc is None else f'{fsc:.1f}'} | {s['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--finest", type=int, default=6, help="epochs of the coarse-to-fine run's finest stage")
    p.add_argument("--full-epochs", type=int, default=9, help="epochs of the full-scale run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(ROOT / "bench_out" / "paper_size"))
    args = p.parse_args(argv)
    out = Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    star = simulate(out, args.n, args.seed)
    # a full-scale run trains one stage for the sum of the three epoch counts
    if args.full_epochs < 3:
        p.error("--full-epochs must be at least 3")
    jobs = [("coarse-to-fine", "coarse-to-fine", f"15,15,{args.finest}"),
            ("full-scale", "full-scale", f"{args.full_epochs - 2},1,1")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda j: run(j[0], star, out, j[1], j[2], args.seed), jobs))
    text = table(results, args.n)
    print(text)
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "paper_size.md").write_text(text + f"\nMeasured {time.strftime('%Y-%m-%d %H:%M')}.\n")
    (res / "paper_size.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
