"""Cryo-EM benchmark: coarse-to-fine vs full-scale vs oracle poses (paper §6), and the
speed of the fast forward model against the real-space reference, stage by stage.

Usage::

    python benchmarks/cryoem.py --config cpu    # 1OL5 32^3 at 2 Å, 3000 particles, all 7 runs (~45 min, 2 cores)
    python benchmarks/cryoem.py --config cpu --runs full,c2f,oracle   # the three modes (~20 min)
    python benchmarks/cryoem.py --config paper  # 1OL5 64^3 at 1 Å, 50,000 particles, 100 epochs (GPU)

Each run of :data:`RUNS` (coarse-to-fine with three seeds, full-scale with the same pose
search, both modes with the paper's gradient-only poses, both with the search at the coarse
bands only, oracle poses) is its own
``rmfn reconstruct`` process (``--jobs`` at a time, one torch thread each on the CPU); the
table reads their ``metrics.json``. Writes ``benchmarks/results/cryoem_<config>.md`` and
``.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
CONFIGS = {
    "cpu": dict(map="sample_data/maps/1ol5_32_2.0A.mrc", n=3000, preset="cpu-small", threads=1),
    "paper": dict(map="sample_data/maps/1ol5_64_1.0A.mrc", n=50000, preset="paper", threads=0),
}
# key: (table label, --mode, seed offset, extra reconstruct flags)
RUNS = {
    "c2f": ("coarse-to-fine", "coarse-to-fine", 0, []),
    "c2f-seed1": ("coarse-to-fine, seed 1", "coarse-to-fine", 1, []),
    "c2f-seed2": ("coarse-to-fine, seed 2", "coarse-to-fine", 2, []),
    "full": ("full-scale (same search)", "full-scale", 0, []),
    "c2f-gradient": ("coarse-to-fine, gradient-only poses (paper)", "coarse-to-fine", 0, ["--pose-search", "off"]),
    "full-gradient": ("full-scale, gradient-only poses (paper)", "full-scale", 0, ["--pose-search", "off"]),
    "c2f-coarse": ("coarse-to-fine, search at stage 2 only, local at the finest", "coarse-to-fine", 0,
                   ["--pose-search", "coarse", "--epochs", "10,60,30"]),
    "full-coarse": ("full-scale, local at the finest (no coarse band to search)", "full-scale", 0,
                    ["--pose-search", "coarse", "--epochs", "10,60,30"]),
    "oracle": ("oracle-poses", "oracle-poses", 0, []),
}


def simulate(cfg: dict, out: Path, seed: int) -> Path:
    star = out / "data" / "particles.star"
    if not star.exists():
        subprocess.run([sys.executable, "-m", "rmfn_napari.cli", "simulate", "--map", str(ROOT / cfg["map"]),
                        "--n", str(cfg["n"]), "--snr", "0.1", "--seed", str(seed), "--out",
                        str(out / "data"), "--quiet"], check=True, cwd=ROOT)
    return star


def run_one(key: str, star: Path, cfg: dict, out: Path, device: str, seed: int, extra: list[str]) -> dict:
    """One ``rmfn reconstruct`` process for run ``key`` of :data:`RUNS`; its metrics.json."""
    label, mode, seed_offset, flags = RUNS[key]
    mode_dir = out / key
    # the paper's protocol: poses start 45-90 deg from the truth, which true_poses.star holds
    cmd = [sys.executable, "-m", "rmfn_napari.cli", "reconstruct", "--overwrite", str(star), "--reference",
           str(star.parent / "reference.mrc"), "--true-poses", str(star.parent / "true_poses.star"),
           "--pose-init", "perturb", "--out", str(mode_dir), "--preset", cfg["preset"],
           "--mode", mode, "--device", device, "--seed", str(seed + seed_offset), "--quiet", *flags, *extra]
    if cfg["threads"]:
        cmd += ["--threads", str(cfg["threads"])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"run": key, "label": label, "mode": mode, "error": proc.stderr[-2000:], "wall_s": wall}
    metrics = json.loads((mode_dir / "metrics.json").read_text())
    metrics.update(run=key, label=label, wall_s=wall, flags=flags)
    return metrics


def forward_speed(box: int, n_images: int = 8, repeats: int = 3) -> list[dict]:
    """Seconds per structure step (forward + backward) of the fast path vs the reference."""
    from rmfn_napari.cryoem.reconstruct import ForwardModel, forward_images_real_space, stage_sigma
    from rmfn_napari.cryoem.rotations import random_rotations
    from rmfn_napari.model import ResidualMFN

    net = ResidualMFN(3, 64, 3, resolution=box, head_activation="relu")
    R = random_rotations(n_images, generator=torch.Generator().manual_seed(0)).float()
    rows = []
    for scale in range(3):
        sigma = stage_sigma(scale, 3, box, (0.3, 2.0))
        fwd = ForwardModel(box, 1.0, scale, net.band_limits[scale], sigma, pad=2)

        obs = torch.zeros(n_images, len(fwd.freqs), dtype=torch.complex64)
        ctf = torch.ones(n_images, len(fwd.freqs))

        def fast():
            fwd.structure_backward(net, obs, ctf, R)

        def slow():
            forward_images_real_space(net, R, box, scale).sum().backward()

        times = {}
        for name, fn in (("fast", fast), ("reference", slow)):
            fn()
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[name] = (time.perf_counter() - t0) / repeats
        rows.append(dict(stage=scale + 1, render=fwd.render_n, window=fwd.window, images=n_images,
                         fast_s=times["fast"], reference_s=times["reference"],
                         speedup=times["reference"] / times["fast"]))
    return rows


def markdown(results: list[dict], speed: list[dict], cfg_name: str, cfg: dict, device: str) -> str:
    lines = [f"## Cryo-EM benchmark ({cfg_name}: {Path(cfg['map']).name}, {cfg['n']} particles, "
             f"SNR 0.1, preset {cfg['preset']}, device {device})", "",
             "| run | FSC0.5 scale 1 (Å) | scale 2 (Å) | scale 3 (Å) | × oracle | pose median (°) | poses < 5° | wall (s) "
             "| measured |",
             "|---|---|---|---|---|---|---|---|---|"]
    oracle = next((r.get("resolution_A") for r in results if r.get("mode") == "oracle-poses" and "error" not in r), None)
    for r in results:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error'].splitlines()[-1] if r['error'] else '?'} | | | | | | | |")
            continue
        fsc = r.get("fsc", {})
        res = [fsc.get(f"scale{k}", {}).get("resolution_A") for k in (1, 2, 3)]
        if r["mode"] == "full-scale":  # one stage: the single trained scale is the finest
            res = [None, None, fsc.get("scale3", {}).get("resolution_A")]
        pe = r.get("pose_errors") or {}
        cells = [f"{v:.1f}" if isinstance(v, (int, float)) else "–" for v in res]
        ratio = f"{res[2] / oracle:.2f}" if oracle and isinstance(res[2], (int, float)) else "–"
        lines.append(f"| {r['label']} | {' | '.join(cells)} | {ratio} | {pe.get('median_deg', float('nan')):.1f} | "
                     f"{100 * pe.get('frac_under_5deg', float('nan')):.0f}% | {r['wall_s']:.0f} | "
                     f"{r.get('measured', 'earlier')} |")
    lines += ["", "Forward model, seconds per structure step (forward + backward), fast path vs "
              "real-space reference (one network pass per rotated voxel per image):", "",
              "| stage | render grid | Fourier window | images | fast (s) | reference (s) | speed-up |",
              "|---|---|---|---|---|---|---|"]
    for s in speed:
        lines.append(f"| {s['stage']} | {s['render']}³ | {s['window']}² | {s['images']} | {s['fast_s']:.4f} | "
                     f"{s['reference_s']:.3f} | {s['speedup']:.0f}× |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    p.add_argument("--runs", default="full,full-gradient,c2f,c2f-seed1,c2f-seed2,c2f-gradient,oracle",
                   help=f"comma-separated, from {', '.join(RUNS)} (longest first keeps both jobs busy)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="bench_out", help="where data and runs go (default bench_out/)")
    p.add_argument("--fresh", action="store_true",
                   help="write only this invocation's runs (default: keep the other runs' rows from "
                   "the last results file, each with the date it was measured)")
    p.add_argument("--extra", default="", help="extra flags for rmfn reconstruct, e.g. '--epochs 5,8,5'")
    args = p.parse_args(argv)
    cfg = CONFIGS[args.config]
    out = ROOT / args.work / args.config
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    star = simulate(cfg, out, args.seed)
    keys = args.runs.split(",")
    unknown = [k for k in keys if k not in RUNS]
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda k: run_one(k, star, cfg, out, args.device, args.seed,
                                                  args.extra.split()), keys))
    stamp = time.strftime("%Y-%m-%d %H:%M")
    for r in results:
        r["measured"] = stamp
    res_dir = ROOT / "benchmarks" / "results"
    res_json = res_dir / f"cryoem_{args.config}.json"
    if res_json.exists() and not args.fresh:  # keep the rows of runs not repeated this time
        kept = {r["run"]: r for r in json.loads(res_json.read_text())["results"] if r.get("run") in RUNS}
        kept.update({r["run"]: r for r in results})
        results = list(kept.values())
    results.sort(key=lambda r: list(RUNS).index(r["run"]))  # table order, whatever the run order
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    box = 32 if args.config == "cpu" else 64
    speed = forward_speed(box)
    text = markdown(results, speed, args.config, cfg, args.device)
    text += f"\nTotal wall time {time.perf_counter() - t0:.0f} s.\n"
    print(text)
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / f"cryoem_{args.config}.md").write_text(text)
    res_json.write_text(json.dumps(
        {"results": [{k: v for k, v in r.items() if k != "stages"} | {"stages": r.get("stages")} for r in results],
         "speed": speed}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
