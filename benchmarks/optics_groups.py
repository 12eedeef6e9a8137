"""Two optics groups of different pixel sizes, boxes and defoci, merged, against one group
(issue 28, "Real files" A, "Done when").

One atomic model (4AKE chain A, ``shared/pdb``-style bundled copy in ``sample_data/pdb``) is
turned into a map at each group's pixel size (:func:`rmfn_napari.cryoem.maps.map_from_model`:
the same density sampled twice, not one map resampled), and ``rmfn simulate`` writes

* group 1: 1.0 Å/px, 96 px, 300 kV, Cs 2.7 mm, amplitude contrast 0.10, defocus 1.0-1.5 µm;
* group 2: 1.2 Å/px, 80 px, 200 kV, Cs 2.0 mm, amplitude contrast 0.07, defocus 1.5-2.0 µm;
* the control: one group like group 1, with as many particles as both groups together.

The two groups' STARs are merged as a RELION 3.1 optics table (two ``data_optics`` rows), and
each stack is reconstructed as a user would run it::

    rmfn reconstruct STAR --box 32 --mode oracle-poses --true-poses TRUE.star \\
        --reference map_1.0A.mrc --preset cpu-small --epochs E1,E2,E3 --device cpu

Both groups span 96 Å (``--boxes 96,80``), so at ``--box 32`` both runs work at 3.0 Å/px, each
group Fourier-cropped; ``--boxes 80,64`` gives group 2 a 76.8 Å field of view, zero-padded to
80 Å (2.5 Å/px): the case docs/real-files.md reports as a limitation. The table gives the truth FSC₀.₅ of the
network's finest map (``metrics.json``) and of the training-free backprojection with the same
oracle poses (``map.mrc`` against the reference at the working grid), and the ratio merged /
single. "Done when": the merged run within 10 % of the single group's.

Usage::

    python benchmarks/optics_groups.py                 # 2 × 1000 particles, SNR 0.1
    python benchmarks/optics_groups.py --n 400 --epochs 2,2,4

One CPU thread (``torch.set_num_threads(1)``); work files in ``--work`` (default
``bench_out/optics_groups``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from optics_data import merge_stars  # noqa: E402

from rmfn_napari.cli import main as cli_main  # noqa: E402
from rmfn_napari.cryoem.io import read_map, write_map  # noqa: E402
from rmfn_napari.cryoem.maps import map_from_model  # noqa: E402
from rmfn_napari.cryoem.metrics import fsc, resolution_at  # noqa: E402
from rmfn_napari.cryoem.optics_groups import resample_volume  # noqa: E402

GROUPS = (  # apix Å, box px (--boxes), kV, Cs mm, amplitude contrast, defocus range Å
    (1.0, 96, 300.0, 2.7, 0.10, (10000.0, 15000.0)),
    (1.2, 80, 200.0, 2.0, 0.07, (15000.0, 20000.0)),
)


def _simulate(map_path, out, n, seed, snr, kv, cs, q0, df):
    code = cli_main(["simulate", "--map", str(map_path), "--quiet", "--out", str(out), "--n", str(n), "--snr", str(snr),
                     "--seed", str(seed), "--voltage", str(kv), "--cs", str(cs), "--amp-contrast", str(q0),
                     "--defocus-min", str(df[0]), "--defocus-max", str(df[1]), "--overwrite"])
    assert code == 0, f"simulate {out} failed"
    return out / "particles.star", out / "true_poses.star"


def _run(star, truth, reference, out, epochs, box):
    t0 = time.perf_counter()
    code = cli_main(["reconstruct", str(star), "--box", str(box), "--mode", "oracle-poses", "--true-poses",
                     str(truth), "--reference", str(reference), "--preset", "cpu-small", "--epochs", epochs,
                     "--device", "cpu", "--out", str(out), "--overwrite"])
    assert code == 0, f"reconstruct {out} failed"
    seconds = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    bp, apix = read_map(out / "map.mrc")
    ref = resample_volume(read_map(reference)[0], read_map(reference)[1], bp.shape[0], apix)
    freqs, curve = fsc(bp, ref)
    log = (out / "run.log").read_text().split("--- new run")[-1].splitlines()  # this run's (appended)
    return dict(network_A=metrics["resolution_A"], backprojection_A=resolution_at(freqs, curve, 0.5, bp.shape[0], apix),
                seconds=seconds, apix=apix, box=bp.shape[0], groups=[line.split("] ")[-1] for line in log
                                                                    if "optics group" in line])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="particles per group (the control has twice this)")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--epochs", default="3,3,6", help="epochs per stage of the cpu-small preset")
    p.add_argument("--box", type=int, default=32, help="--box of both runs (px)")
    p.add_argument("--boxes", default="96,80", help="the two groups' boxes (px): 96,80 = 96 Å each; "
                   "80,64 = 80 and 76.8 Å (group 2 padded to 80 Å)")
    p.add_argument("--work", type=Path, default=ROOT / "bench_out" / "optics_groups")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    work = args.work
    boxes = [int(b) for b in args.boxes.split(",")]
    groups = [(g[0], b, *g[2:]) for g, b in zip(GROUPS, boxes)]
    work.mkdir(parents=True, exist_ok=True)
    pdb = ROOT / "sample_data" / "pdb" / "4ake.pdb"
    maps = []
    for apix, box, *_ in groups:
        vol = map_from_model(pdb, box, apix, resolution=4.0, chains=["A"])
        maps.append(write_map(work / f"map_{apix:g}A.mrc", vol, apix))
    stars = [_simulate(maps[k], work / f"group{k + 1}", args.n, 11 + k, args.snr, *g[2:])
             for k, g in enumerate(groups)]
    merged = merge_stars([s for s, _ in stars], work / "merged.star")
    merged_truth = merge_stars([t for _, t in stars], work / "merged_true_poses.star")
    single = _simulate(maps[0], work / "single", 2 * args.n, 21, args.snr, *groups[0][2:])
    rows = {"merged (2 groups)": _run(merged, merged_truth, maps[0], work / "run_merged", args.epochs, args.box),
            "single group": _run(*single, maps[0], work / "run_single", args.epochs, args.box)}
    m, s = rows["merged (2 groups)"], rows["single group"]
    print(f"\ngroups {groups[0][:2]} and {groups[1][:2]} (Å/px, px); {2 * args.n} particles each, SNR {args.snr:g}, oracle poses, --box {args.box} "
          f"(working grid {m['box']} px at {m['apix']:.3g} Å/px), cpu-small --epochs {args.epochs}\n")
    print("| stack | truth FSC0.5, network (Å) | truth FSC0.5, backprojection (Å) | run (s) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['network_A']:.2f} | {r['backprojection_A']:.2f} | {r['seconds']:.0f} |")
    ratio_net, ratio_bp = m["network_A"] / s["network_A"], m["backprojection_A"] / s["backprojection_A"]
    print(f"| merged / single | {ratio_net:.3f} | {ratio_bp:.3f} | |")
    print("\nrun.log of the merged run:\n" + "\n".join(f"    {g}" for g in m["groups"]))
    ok = abs(ratio_net - 1) <= 0.10
    print(f"\nverdict: merged within 10 % of the single group's truth FSC (network): {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
