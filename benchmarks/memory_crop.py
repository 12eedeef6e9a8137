"""Peak memory of reconstructing from a large stack Fourier-cropped on read (``--box``).

Builds a 128³ map at 1 Å by zero-padding ``sample_data/maps/1ol5_64_1.0A.mrc``, simulates
``--n`` particles from it (a 128 px stack: 20,000 particles = 1.3 GB on disk), then runs, each
in its own process, and reports that process's peak resident set size (``ru_maxrss`` from
``os.wait4``, so file-backed pages of memory-mapped files count) against the target:

* the imports alone (torch, numpy, the engine: the floor of every row);
* ``rmfn simulate`` (for reference);
* a read pass: every particle through ``CroppedParticles(read_particles(star), box).images``,
  200 at a time (the positioned-read path of ``ParticleDataset.images``);
* the same pass through ``mrcfile.mmap`` slices (the earlier read path, for comparison);
* ``rmfn reconstruct STAR --box 32 --preset tiny --pose-init random --threads 1 --quiet``.

Usage::

    python benchmarks/memory_crop.py                      # 20,000 particles, work in a temp dir
    python benchmarks/memory_crop.py --n 2000 --work /tmp/memcrop --keep

Prints a markdown table and writes ``benchmarks/results/memory_crop.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

MAP64 = ROOT / "sample_data" / "maps" / "1ol5_64_1.0A.mrc"
READ_PASS = """
import sys, numpy as np
from rmfn_napari.cryoem.downsample import CroppedParticles
from rmfn_napari.cryoem.particles import read_particles
ds = CroppedParticles(read_particles(sys.argv[1]), int(sys.argv[2]))
for i in range(0, ds.n, 200):
    ds.images(np.arange(i, min(i + 200, ds.n)))
"""
MMAP_PASS = """
import sys, mrcfile, numpy as np
from rmfn_napari.cryoem.downsample import fourier_crop_images
with mrcfile.mmap(sys.argv[1].replace("particles.star", "particles.mrcs"), mode="r") as m:
    for i in range(0, len(m.data), 200):
        fourier_crop_images(np.asarray(m.data[i:i + 200], dtype=np.float32), int(sys.argv[2]))
"""


def measured(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, the child's peak RSS in MiB). Raises on failure."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024  # KiB on Linux


def padded_map(work: Path) -> Path:
    """The 64³ 1OL5 map zero-padded to 128³ at the same voxel size (1 Å), centre kept at D/2."""
    from rmfn_napari.cryoem.io import read_map, write_map

    vol, apix = read_map(MAP64)
    big = np.zeros((128,) * 3, dtype=np.float32)
    big[32:96, 32:96, 32:96] = vol
    return write_map(work / "1ol5_128_1.0A.mrc", big, apix)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="particles (default 20000)")
    ap.add_argument("--box", type=int, default=32, help="crop size, px (default 32)")
    ap.add_argument("--target-gb", type=float, default=1.5, help="peak RSS target, GB (default 1.5)")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="memory_crop_", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    py = [sys.executable]
    mapped = str(padded_map(work))
    star = work / "sim" / "particles.star"
    steps = [
        ("imports only (baseline)", py + ["-c", "import rmfn_napari.cryoem.reconstruct"]),
        ("rmfn simulate (128 px)", py + ["-m", "rmfn_napari.cli", "simulate", "--map", mapped,
                                         "--n", str(args.n), "--out", str(star.parent),
                                         "--overwrite", "--quiet"]),
        (f"read + crop to {args.box} px, 200 at a time", py + ["-c", READ_PASS, str(star), str(args.box)]),
        ("same pass through mrcfile.mmap (earlier read path)",
         py + ["-c", MMAP_PASS, str(star), str(args.box)]),
        (f"rmfn reconstruct --box {args.box} --preset tiny",
         py + ["-m", "rmfn_napari.cli", "reconstruct", "--overwrite", str(star), "--box", str(args.box),
               "--preset", "tiny", "--pose-init", "random", "--out", str(work / "run"),
               "--threads", "1", "--quiet"]),
    ]
    rows = []
    for label, cmd in steps:
        wall, rss = measured(cmd)
        rows.append((label, wall, rss))
        print(f"{label}: {wall:.0f} s, {rss:.0f} MiB", flush=True)
    stack_gb = (star.parent / "particles.mrcs").stat().st_size / 1e9
    target_mib = args.target_gb * 1e9 / 2 ** 20

    lines = [f"# Peak memory with --box {args.box}: {args.n} particles of 128 px",
             "",
             f"Stack on disk: {stack_gb:.2f} GB. Target: peak RSS < {args.target_gb} GB "
             f"({target_mib:.0f} MiB) per process. Command: `python benchmarks/memory_crop.py "
             f"--n {args.n} --box {args.box}`; {os.cpu_count()} CPUs.",
             "",
             "| process | wall (s) | peak RSS (MiB) | under target |",
             "|---|---:|---:|:---:|"]
    lines += [f"| {label} | {wall:.0f} | {rss:.0f} | {'yes' if rss < target_mib else 'no'} |"
              for label, wall, rss in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results" / "memory_crop.md"
    out.write_text(text)
    print(f"wrote {out}")
    if args.work is None and not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
