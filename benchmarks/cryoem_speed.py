"""Engine speed before and after issue 13, side by side in one run: seconds per batch of every
stage (data, structure and pose phases apart) and peak memory, at D = 32 (``cpu-small``) and
D = 64 (``paper``); optionally the 32³ demo end to end and the cpu benchmark's runs with both
engines (time and results).

"Before" is the engine at a pinned commit (``--before``, default the last commit before the
issue), exported with ``git archive`` into the work folder; "after" is this checkout. Each
measurement is its own process with one engine on its ``PYTHONPATH`` (the worker checks that it
imported the engine it was given), so both run on the same data, the same settings and the same
number of threads; cells alternate before/after so that a busy machine slows both alike.

    python benchmarks/cryoem_speed.py                      # the per-stage table (~10 min, 1 thread)
    python benchmarks/cryoem_speed.py --demo --seeds 0,1,2 # + the demo and the cpu benchmark's c2f runs
    python benchmarks/cryoem_speed.py --device cuda --engines after   # on a GPU (gpu_check.sh)
    python benchmarks/cryoem_speed.py --dry-run            # seconds: tiny sizes, CI's check

Writes ``benchmarks/results/cryoem_speed.md`` and ``.json`` (not in ``--dry-run``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "f0f0b2f"  # main before issue 13: the engine as split out of cryoem/reconstruct.py
MAPS = {32: "sample_data/maps/1ol5_32_2.0A.mrc", 64: "sample_data/maps/1ol5_64_1.0A.mrc"}
PRESET = {32: "cpu-small", 64: "paper"}
DEMO_SIM = ["--n", "3000", "--snr", "0.1", "--max-shift", "2", "--defocus-min", "8000", "--defocus-max", "25000",
            "--astig-min", "0", "--astig-max", "500", "--seed", "0"]


# ----------------------------------------------------------------------------- worker
def worker(args) -> dict:
    """Time ``args.batches`` batches of one stage with the engine on ``sys.path`` (a process)."""
    import numpy as np
    import torch

    import rmfn_napari
    from rmfn_napari.cryoem.reconstruct import ForwardModel, ReconstructConfig, image_scale, load_dataset, stage_sigma
    from rmfn_napari.cryoem.reconstruct import pose_steps, structure_steps
    from rmfn_napari.cryoem.rotations import random_rotations
    from rmfn_napari.model import ResidualMFN

    engine = Path(args.engine).resolve()
    if engine not in Path(rmfn_napari.__file__).resolve().parents:
        raise SystemExit(f"worker imported {rmfn_napari.__file__}, not the engine in {engine}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = ReconstructConfig.from_preset(PRESET[args.D] if not args.dry_run else "tiny", device=args.device)
    if args.precision != "float32":  # (the engine before issue 13 has no such setting)
        cfg = dataclasses.replace(cfg, precision=args.precision)
    batch = cfg.batch_size if not args.dry_run else 16
    ds = load_dataset(args.star, None)
    n = min(ds.n, batch * (args.batches + 1))
    torch.manual_seed(0)
    net = ResidualMFN(3, cfg.hidden, cfg.n_layers, out_dim=1, init="residual", residual=True,
                      lambdas=cfg.lambdas, resolution=ds.box, head_activation="relu", seed=0,
                      new_head_scale=cfg.new_head_scale).to(device)
    if args.precision != "float32":
        net.hidden_precision = args.precision
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr_structure)
    scale = args.stage
    band, sigma = net.band_limits[scale], stage_sigma(scale, cfg.n_layers, ds.box, cfg.lambdas)
    rotations = random_rotations(n, generator=torch.Generator().manual_seed(1)).float().to(device)
    shifts = torch.zeros(n, 2, device=device)
    lr_shift = cfg.lr_shift if cfg.shift_range_px > 0 else 0.0
    scale_img = image_scale(ds, n, cfg)
    new_engine = hasattr(rmfn_napari.cryoem.reconstruct, "StageData")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    if new_engine:
        from rmfn_napari.cryoem.reconstruct import StageData

        fwd = ForwardModel(ds.box, ds.apix, scale, band, sigma, cfg.pad, cfg.mask_radius, device)
        data = StageData(ds, n, fwd.freqs, scale_img, cfg, device, cfg.stage_data_gb * 2**30)
        get = data.get

        def structure(obs, ctf, R, sh):
            structure_steps(net, opt, fwd, fwd.centre(obs, sh), ctf, R, cfg.structure_steps)

        def poses(obs, ctf, R, sh):
            pose_steps(fwd.volume_ft(net), fwd, obs, ctf, R, cfg.pose_steps, cfg.lr_pose, cfg.pose_betas,
                       shifts_px=sh, lr_shift=lr_shift)
    else:  # the pinned engine's public names (its API is fixed by the pin)
        from rmfn_napari.cryoem.offsets import centre_spectra
        from rmfn_napari.cryoem.reconstruct import gaussian_weight, observed_spectra

        fwd = ForwardModel(ds.box, ds.apix, scale, band, sigma, cfg.pad, cfg.mask_radius)
        weight = gaussian_weight(fwd.window, sigma, device, nyquist=ds.box / 2)

        def get(idx):
            return observed_spectra(ds, idx, ds.ctf, fwd.window, scale_img, cfg, device)

        def structure(obs, ctf, R, sh):
            structure_steps(net, opt, fwd, weight, centre_spectra(obs, ds.box, sh), ctf, R, cfg.structure_steps)

        def poses(obs, ctf, R, sh):
            with torch.no_grad():
                vol_ft = fwd.volume_ft(net)
            pose_steps(vol_ft, fwd, weight, obs, ctf, R, cfg.pose_steps, cfg.lr_pose, cfg.pose_betas,
                       shifts_px=sh, lr_shift=lr_shift)
    sync()
    stage_setup = time.perf_counter() - t0
    times = {"data": [], "structure": [], "pose": []}
    for b in range(args.batches + 1):  # batch 0 warms up and is not counted
        idx = np.unique(np.arange(b * batch, (b + 1) * batch) % n)  # wraps round a small stack
        t = time.perf_counter()
        obs, ctf = get(idx)
        sync()
        t_data = time.perf_counter()
        structure(obs, ctf, rotations[idx], shifts[idx])
        sync()
        t_struct = time.perf_counter()
        poses(obs, ctf, rotations[idx], shifts[idx])
        sync()
        t_pose = time.perf_counter()
        if b > 0:
            times["data"].append(t_data - t)
            times["structure"].append(t_struct - t_data)
            times["pose"].append(t_pose - t_struct)
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        import resource

        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"D": args.D, "stage": scale + 1, "batch": batch, "stage_setup_s": stage_setup,
            "window": fwd.window, "render_n": fwd.render_n, "peak_mib": peak_mib,
            **{f"{k}_s": float(np.mean(v)) for k, v in times.items()}}


# ----------------------------------------------------------------------------- driver
def export_engine(commit: str, work: Path) -> Path:
    """The package at ``commit``, exported once into ``work/engine_<commit>``."""
    dest = work / f"engine_{commit}"
    if not (dest / "rmfn_napari" / "__init__.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "rmfn_napari"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def engine_env(engine: Path, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(engine), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def simulate(D: int, out: Path, extra: list[str]) -> Path:
    star = out / "particles.star"
    if not star.exists():
        subprocess.run([sys.executable, "-m", "rmfn_napari.cli", "simulate", "--map", str(ROOT / MAPS[D]),
                        "--out", str(out), "--quiet", *extra], check=True, cwd=ROOT)
    return star


def measure(engine: Path, star: Path, D: int, stage: int, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--engine", str(engine), "--star", str(star),
           "--D", str(D), "--stage", str(stage), "--batches", str(args.batches), "--device", args.device,
           "--threads", str(args.threads), "--precision", args.precision] + (["--dry-run"] if args.dry_run else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=engine, env=engine_env(engine, args.threads))
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({engine.name}, D={D}, stage {stage + 1}): {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def end_to_end(engine: Path, star: Path, out: Path, flags: list[str], threads: int) -> dict:
    """One ``rmfn reconstruct`` with ``engine``: wall time and final metrics."""
    cmd = [sys.executable, "-m", "rmfn_napari.cli", "reconstruct", str(star), "--reference",
           str(star.parent / "reference.mrc"), "--true-poses", str(star.parent / "true_poses.star"),
           "--out", str(out), "--threads", str(threads), "--device", "cpu", "--quiet", *flags]
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)  # a fresh run (the pinned engine has no --overwrite)
    t0 = time.perf_counter()
    with open(out.parent / f"{out.name}.stderr", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=engine, env=engine_env(engine, threads))
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time, whatever else runs
    wall = time.perf_counter() - t0
    cpu = usage.ru_utime + usage.ru_stime
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": (out.parent / f"{out.name}.stderr").read_text().strip()[-500:], "wall_s": wall, "cpu_s": cpu}
    m = json.loads((out / "metrics.json").read_text())
    pe = m.get("pose_errors") or {}
    return {"wall_s": wall, "cpu_s": cpu, "fsc_A": m.get("resolution_A"), "pose_median_deg": pe.get("median_deg"),
            "frac_under_5deg": pe.get("frac_under_5deg"), "gold_standard_A": m.get("gold_standard_resolution_A")}


def fmt(v, spec=".2f") -> str:
    return "–" if v is None else format(v, spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default=BEFORE, help=f"commit of the engine before (default {BEFORE})")
    p.add_argument("--after", default=None, help="commit of the engine after (default: this checkout's "
                   "working tree; a commit keeps long runs safe from edits made meanwhile)")
    p.add_argument("--engines", default="before,after", help="which engines to time")
    p.add_argument("--sizes", default="32,64", help="box sizes D")
    p.add_argument("--batches", type=int, default=2, help="timed batches per stage (after one warm-up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="float32", help="hidden-layer precision of the engine after "
                   "(float32, tf32, bf16)")
    p.add_argument("--demo", action="store_true", help="also the 32³ demo end to end with both engines")
    p.add_argument("--seeds", default="", help="also the cpu benchmark's coarse-to-fine runs with these seeds")
    p.add_argument("--sequential", action="store_true", help="end-to-end runs one at a time (an idle "
                   "machine's times), not before and after side by side")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, nothing written (CI)")
    p.add_argument("--work", default=str(ROOT / "bench_out" / "cryoem_speed"))
    # worker mode
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--star", help=argparse.SUPPRESS)
    p.add_argument("--D", type=int, help=argparse.SUPPRESS)
    p.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    work = Path(args.work).resolve()  # the runs start in the engine's folder
    work.mkdir(parents=True, exist_ok=True)
    engines = {"before": None, "after": ROOT if args.after is None else export_engine(args.after, work)}
    chosen = args.engines.split(",")
    if "before" in chosen:
        engines["before"] = export_engine(args.before, work)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows = []
    for D in sizes:
        n_sim = 64 if args.dry_run else (1800 if D == 64 else 600)
        star = simulate(D, work / f"data{D}_{n_sim}", ["--n", str(n_sim), "--snr", "0.1", "--seed", "0"])
        for stage in range(3):
            cell = {}
            for name in chosen:
                cell[name] = measure(engines[name], star, D, stage, args)
            rows.append(cell)
            r = cell[chosen[-1]]
            print(f"D={D} stage {stage + 1}: " + "; ".join(
                f"{k} data {v['data_s']:.3f} structure {v['structure_s']:.3f} pose {v['pose_s']:.3f} s, "
                f"{v['peak_mib']:.0f} MiB" for k, v in cell.items()) + f" (window {r['window']})", flush=True)
    runs = []
    if args.demo or args.seeds:
        jobs = []
        if args.demo:
            star = simulate(32, work / "demo_data", DEMO_SIM)
            jobs += [("demo", name, star, ["--preset", "cpu-small"]) for name in chosen]
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            star = simulate(32, work / "cpu_data", ["--n", "3000", "--snr", "0.1", "--seed", "0"])
            flags = ["--preset", "cpu-small", "--pose-init", "perturb", "--seed", str(seed)]
            jobs += [(f"cpu c2f seed {seed}", name, star, flags) for name in chosen]
        # before and after of one job side by side, or one at a time on an otherwise idle machine
        with ThreadPoolExecutor(max_workers=1 if args.sequential else 2) as pool:
            results = pool.map(lambda j: end_to_end(engines[j[1]], j[2], work / "runs" / f"{j[0]}_{j[1]}".replace(" ", "_"),
                                                    j[3], args.threads), jobs)
            for (label, name, _, _), res in zip(jobs, results):
                runs.append({"run": label, "engine": name, **res})
                print(label, name, res, flush=True)
    text = markdown(rows, runs, chosen, args)
    print(text)
    if not args.dry_run:  # the per-stage table and the end-to-end runs each keep their own file
        res = ROOT / "benchmarks" / "results"
        res.mkdir(parents=True, exist_ok=True)
        tag = "" if args.device == "cpu" and args.precision == "float32" else \
            f"_{args.device.replace(':', '')}_{args.precision}"
        for name, part in (("", {"stages": rows}), ("_runs", {"runs": runs})):
            if next(iter(part.values())):
                (res / f"cryoem_speed{tag}{name}.json").write_text(json.dumps(
                    {**part, "before": args.before, "device": args.device, "threads": args.threads,
                     "measured": time.strftime("%Y-%m-%d %H:%M")}, indent=1))
                (res / f"cryoem_speed{tag}{name}.md").write_text(
                    markdown(part.get("stages", []), part.get("runs", []), chosen, args))
    return 0


def markdown(rows: list[dict], runs: list[dict], chosen: list[str], args) -> str:
    lines = [f"## Engine speed, {args.device}, {args.threads} thread(s), after at {args.precision}: "
             f"before = {args.before}, after = {args.after or 'this checkout'}",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    if rows:
        lines += [f"Seconds per batch (mean of {args.batches} after a warm-up).", "",
                  "\"data\" is per batch before (FFT and CTF of every batch) and once per stage after (the stage's "
                  "spectra and CTFs of the timed particles, kept on the device), so the batch total leaves it out "
                  "for both.", "",
                  "| D | stage | batch | engine | data (s) | structure (s) | pose (s) | batch total (s) | peak memory (MiB) | speed-up |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    for cell in rows:
        base = cell.get("before")
        for name in chosen:
            r = cell[name]
            total = r["structure_s"] + r["pose_s"]
            up = ""
            if base is not None and name != "before":
                b_total = base["structure_s"] + base["pose_s"]
                up = (f"{b_total / total:.1f}× (structure {base['structure_s'] / r['structure_s']:.1f}×, "
                      f"pose {base['pose_s'] / r['pose_s']:.1f}×)")
            data = f"{r['data_s']:.3f} / batch" if name == "before" else f"{r['stage_setup_s']:.2f} / stage"
            lines.append(f"| {r['D']} | {r['stage']} | {r['batch']} | {name} | {data} | {r['structure_s']:.3f} | "
                         f"{r['pose_s']:.3f} | {total:.3f} | {r['peak_mib']:.0f} | {up} |")
    if runs:
        lines += ["", ("The runs went one at a time on an otherwise idle machine. " if args.sequential else
                       "Each job's before and after ran side by side. ") +
                  "CPU time is the run's own (one thread); the speed-up is its ratio.", "",
                  "| run | engine | CPU (min) | wall (min) | FSC₀.₅ vs truth (Å) | pose median (°) | poses < 5° | "
                  "gold standard (Å) | speed-up | ΔFSC (Å) |", "|---|---|---|---|---|---|---|---|---|---|"]
        before = {r["run"]: r for r in runs if r["engine"] == "before" and "error" not in r}
        for r in runs:
            if "error" in r:
                lines.append(f"| {r['run']} | {r['engine']} | failed: {r['error'].splitlines()[-1]} | | | | | | | |")
                continue
            up = delta = ""
            b = before.get(r["run"])
            if b is not None and r["engine"] != "before":
                up = f"{b['cpu_s'] / r['cpu_s']:.2f}×"
                if b["fsc_A"] is not None and r["fsc_A"] is not None:
                    delta = f"{r['fsc_A'] - b['fsc_A']:+.2f}"
            lines.append(f"| {r['run']} | {r['engine']} | {r['cpu_s'] / 60:.1f} | {r['wall_s'] / 60:.1f} | {fmt(r['fsc_A'])} | "
                         f"{fmt(r['pose_median_deg'], '.1f')} | {fmt(None if r['frac_under_5deg'] is None else 100 * r['frac_under_5deg'], '.0f')}% | "
                         f"{fmt(r['gold_standard_A'])} | {up} | {delta} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
