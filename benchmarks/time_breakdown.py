"""Where a reconstruction's time goes (issue 27 item 2): seconds per stage and per part — the
stage's data, the global search, structure steps, pose steps, in-stage snapshots, the stage-end
evaluation (maps, half-maps, FSCs, the halves' frame check, post-processing, writing), the
``--advance auto`` checks and checkpoints — from ``metrics.json`` (``stages[i].time_s``, written
by every run: :mod:`rmfn_napari.engine.part_times`), as a table.

    python benchmarks/time_breakdown.py RUN_DIR [RUN_DIR ...]   # runs already made
    python benchmarks/time_breakdown.py --simulate 32            # simulate the demo's stack, run cpu-small, print
    python benchmarks/time_breakdown.py --simulate 64 --epochs 2,2,2,2,2   # the paper preset at 64^3, a few epochs

"other" is the stage's wall time not in a named part: the loop's own work and the time the
consumer of the run's events (the CLI printing, napari's worker signals) holds each event.
One torch thread (``--threads``), as the other CPU benchmarks. Times on a CPU are exact per part;
on a GPU see the module doc of ``part_times`` (asynchronous kernels).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPS = {32: "sample_data/maps/1ol5_32_2.0A.mrc", 64: "sample_data/maps/1ol5_64_1.0A.mrc"}
PRESET = {32: "cpu-small", 64: "paper"}
PARTS = ("stage data", "global search", "structure steps", "pose steps", "snapshots", "stage-end evaluation",
         "advance checks", "checkpoints")


def table(run: Path) -> str:
    """The markdown table of one run folder's ``metrics.json``."""
    m = json.loads((run / "metrics.json").read_text())
    rows = [f"**{run}** — {m.get('n_particles')} particles, {m.get('box')}³, preset {m.get('preset')}, "
            f"{m.get('seconds', 0):.0f} s in all", "",
            "| stage | epochs | seconds | " + " | ".join(PARTS) + " | other |",
            "|---|---|---|" + "---|" * (len(PARTS) + 1)]
    totals = dict.fromkeys(PARTS, 0.0)
    total_other = total_s = 0.0
    for s in m.get("stages", []):
        t = s.get("time_s") or {}
        named = sum(t.get(p, 0.0) for p in PARTS)
        other = max(s["seconds"] - named + t.get("stage data", 0.0), 0.0)  # stage data is before the clock
        cells = [f"{t.get(p, 0.0):.1f} ({100 * t.get(p, 0.0) / max(s['seconds'], 1e-9):.0f}%)" for p in PARTS]
        rows.append(f"| {s['stage']} | {s.get('epochs_done')} | {s['seconds']:.1f} | " + " | ".join(cells)
                    + f" | {other:.1f} |")
        for p in PARTS:
            totals[p] += t.get(p, 0.0)
        total_other += other
        total_s += s["seconds"]
    rows.append(f"| all | | {total_s:.1f} | " + " | ".join(
        f"{totals[p]:.1f} ({100 * totals[p] / max(total_s, 1e-9):.0f}%)" for p in PARTS) + f" | {total_other:.1f} |")
    return "\n".join(rows)


def simulate_and_run(D: int, work: Path, epochs: str | None, threads: int) -> Path:
    """The demo's simulation (3000 particles, SNR 0.1, up to 2 px off-centre) at box ``D`` and
    one ``rmfn reconstruct`` with the box's preset; the run folder."""
    data = work / f"data_{D}"
    if not (data / "particles.star").exists():
        subprocess.run([sys.executable, "-m", "rmfn_napari.cli", "simulate", "--map", str(ROOT / MAPS[D]),
                        "--n", "3000", "--snr", "0.1", "--max-shift", "2", "--defocus-min", "8000",
                        "--defocus-max", "25000", "--astig-min", "0", "--astig-max", "500", "--seed", "0",
                        "--out", str(data)], check=True)
    run = work / f"run_{D}"
    cmd = [sys.executable, "-m", "rmfn_napari.cli", "reconstruct", str(data / "particles.star"), "--overwrite",
           "--preset", PRESET[D], "--out", str(run), "--threads", str(threads), "--quiet",
           "--reference", str(data / "reference.mrc"), "--true-poses", str(data / "true_poses.star")]
    if epochs:
        cmd += ["--epochs", *epochs.split(",")]
    subprocess.run(cmd, check=True)
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="run folders (with metrics.json)")
    p.add_argument("--simulate", type=int, choices=sorted(MAPS), help="simulate and run at this box first")
    p.add_argument("--epochs", help="epochs per stage for --simulate, e.g. 2,2,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=ROOT / "bench_out" / "time_breakdown")
    args = p.parse_args(argv)
    runs = list(args.runs)
    if args.simulate:
        args.work.mkdir(parents=True, exist_ok=True)
        runs.append(simulate_and_run(args.simulate, args.work, args.epochs, args.threads))
    if not runs:
        p.error("give run folders or --simulate")
    for run in runs:
        print(table(run) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
