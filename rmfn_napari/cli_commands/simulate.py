"""``rmfn simulate``: a synthetic particle stack + RELION STAR from a density map."""

from __future__ import annotations

import sys
import time


def register(subparsers) -> None:
    """Add the ``simulate`` sub-command to the ``rmfn`` parser."""
    p = subparsers.add_parser(
        "simulate",
        help="simulate cryo-EM particles (poses, CTF, noise) from a map",
        description="Project a map under uniformly random poses, optionally off-centre, apply "
        "RELION-convention CTFs, add white Gaussian noise at a target SNR, and write "
        "DIR/particles.mrcs, DIR/particles.star (RELION 3.1: image names and CTFs, as a picker "
        "gives them), DIR/true_poses.star (the same particles with their true angles, origins and "
        "half-sets: pass it to `rmfn reconstruct --true-poses`), DIR/reference.mrc and "
        "DIR/simulation.json.",
    )
    p.add_argument("--map", required=True, help="reference map (MRC; cubic, even box)")
    p.add_argument("--n", type=int, required=True, help="number of particles")
    p.add_argument("--snr", type=float, default=0.1, help="per-image SNR (default 0.1)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--noise-free", action="store_true", help="no noise")
    p.add_argument("--no-ctf", action="store_true", help="no CTF (and no CTF columns in the STAR)")
    p.add_argument("--chunk", type=int, default=1000, help="particles per chunk (default 1000)")
    p.add_argument("--defocus-min", type=float, default=15000.0, help="Å (default 15000)")
    p.add_argument("--defocus-max", type=float, default=20000.0, help="Å (default 20000)")
    p.add_argument("--astig-min", type=float, default=100.0, help="dfU-dfV, Å (default 100)")
    p.add_argument("--astig-max", type=float, default=500.0, help="dfU-dfV, Å (default 500)")
    p.add_argument("--voltage", type=float, default=300.0, help="kV (default 300)")
    p.add_argument("--cs", type=float, default=2.7, help="spherical aberration, mm (default 2.7)")
    p.add_argument("--amp-contrast", type=float, default=0.1, help="amplitude contrast (default 0.1)")
    p.add_argument("--max-shift", type=float, default=0.0, metavar="PX",
                   help="place particles off-centre by up to PX pixels, with the matching RELION "
                   "origins in true_poses.star (default 0: centred; must be < box/4)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the simulation described by parsed ``args``; returns the exit code."""
    from ..cryoem.io import read_mrc_header
    from ..engine.outdir import estimate_simulate_bytes, prepare_run_dir

    box = max(read_mrc_header(args.map).shape)  # the header only (1 KiB), for the estimate
    need = estimate_simulate_bytes(args.n, box) if args.n > 0 else 0
    # --out checked, locked and cleared of dead runs' temps before the map is read
    with prepare_run_dir(args.out, need, f"simulate ({args.n} particles of {box} px)"):
        return _simulate(args)


def _simulate(args) -> int:
    from ..cryoem.simulate import simulate_particles

    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if args.quiet or (done < total and now - last[0] < 1.0):
            return
        last[0] = now
        print(f"\rsimulate: {done}/{total} particles ({now - t0:.1f} s)", end="" if done < total else "\n",
              file=sys.stderr, flush=True)

    res = simulate_particles(
        args.map, args.out, n=args.n, snr=args.snr, seed=args.seed, noise_free=args.noise_free,
        apply_ctf=not args.no_ctf, chunk=args.chunk,
        defocus_range=(args.defocus_min, args.defocus_max),
        astig_range=(args.astig_min, args.astig_max), voltage=args.voltage, cs=args.cs,
        amp_contrast=args.amp_contrast, max_shift=args.max_shift, overwrite=args.overwrite,
        progress=progress)
    print(f"wrote {res.n} particles ({res.box}x{res.box}, {res.apix:g} Å/px): {res.star}, {res.stack}, "
          f"{res.reference} in {time.perf_counter() - t0:.1f} s; ground truth (angles, origins) "
          f"for --true-poses: {res.true_poses}")
    return 0
