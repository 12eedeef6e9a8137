"""Simulated particle stacks: uniform poses, off-centre placement, Fourier-slice projection,
CTF, noise at a target SNR.

Output (in ``out_dir``):

* ``particles.mrcs`` — float32 image stack ``(N, D, D)`` with the pixel size in the header;
* ``particles.star`` — what a particle picker and extraction give: a RELION 3.1+ STAR
  (``data_optics`` + ``data_particles``) with image names ``000001@particles.mrcs``, defocus
  U/V/angle (Å, °), phase shift and B-factor (0) — and *no* angles, origins or half-set
  column; with ``apply_ctf=False`` the CTF columns are left out too;
* ``true_poses.star`` — the ground truth: the same rows (same image names, same CTF) plus
  ``rlnAngleRot/Tilt/Psi`` (°, RELION's convention, so RELION, cryoDRGN or any reader
  projecting the reference through them gets the same images), ``rlnOriginXAngst/YAngst``
  (Å) and ``rlnRandomSubset`` 1/2 alternating;
* ``reference.mrc`` — the map the particles were projected from;
* ``simulation.json`` — the parameters of the run (``max_shift_px`` among them).

Image model (per particle ``i``, Fourier space on the centred grid, ``k`` in cycles/box,
origin ``o_i`` in px)::

    F_clean_i(k) = CTF_i(k) · F_V(R_iᵀ (kx, ky, 0)) · exp(+2πi k·o_i / D)
    image_i      = clean_i + n_i,    n_i ~ N(0, var(clean_i) / SNR)  (white, per image)

The phase factor places the particle at ``−o_i``: ``I(x) = P(x + o_i)`` (RELION's origin
convention, DESIGN.md §2), so a particle with origin (6, 10) px sits 6 px left of and 10 px
above the box centre, at column ``D/2 − 6``, row ``D/2 − 10``. Origins are drawn uniformly in
the disc ``|o| ≤ max_shift`` px.

All values written to the STARs (angles, origins in Å, defoci) are rounded to the STAR's
precision (6 decimals) *before* they are used, so re-projecting through ``true_poses.star``
reproduces the stored noise-free images to float precision.

Randomness: ``numpy.random.SeedSequence(seed)`` spawns four streams — poses, CTF
parameters, noise, origins (the last only drawn from when ``max_shift > 0``, so the other
outputs do not depend on it); the noise is drawn chunk after chunk in particle order, so the
output does not depend on the chunk size.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..engine.atomic import fsync_dir, replace_no_clobber, replace_synced
from ..engine.outdir import estimate_simulate_bytes, prepare_run_dir
from ..errors import InputError
from .ctf import CTFParams
from .io import StackWriter, _tmp_name, read_map, read_mrc_header, star_round, write_map, write_star
from .offsets import centring_phase
from .projector import fourier_slices, slices_to_images, volume_fourier
from .rotations import euler_to_matrix, matrix_to_euler, random_rotations

__all__ = ["SimulationConfig", "SimulationResult", "simulate_particles", "draw_ctf_params",
           "draw_origins"]


@dataclass
class SimulationConfig:
    """Parameters of a simulation (defaults: the paper's §6 protocol, DESIGN.md §3).

    Attributes
    ----------
    n : int
        Number of particles.
    snr : float
        Signal-to-noise ratio per image: var(clean CTF image) / noise variance.
    seed : int
    noise_free : bool
        Write the clean (CTF-applied) images.
    apply_ctf : bool
        Multiply by the CTF (False: pure projections, no CTF columns in the STAR).
    chunk : int
        Particles simulated and written at once.
    defocus_min, defocus_max : float
        Range of the mean defocus (Å), uniform.
    astig_min, astig_max : float
        Range of ``dfU − dfV`` (Å), uniform; ``dfU/V = mean ± astig/2``.
    voltage : float
        kV.
    cs : float
        mm.
    amp_contrast : float
        Amplitude contrast fraction.
    pad : int
        Zero-padding factor of the projector.
    max_shift : float
        Largest particle origin ``|o|`` (px); origins are uniform in that disc (0: centred).
    """

    n: int = 1000
    snr: float = 0.1
    seed: int = 0
    noise_free: bool = False
    apply_ctf: bool = True
    chunk: int = 1000
    defocus_min: float = 15000.0
    defocus_max: float = 20000.0
    astig_min: float = 100.0
    astig_max: float = 500.0
    voltage: float = 300.0
    cs: float = 2.7
    amp_contrast: float = 0.1
    pad: int = 2
    max_shift: float = 0.0

    def validate(self, box: int | None = None) -> None:
        """Raise :class:`InputError` for an invalid parameter (``box``: the map's size in px,
        which bounds ``max_shift`` to less than ``box/4``)."""
        if int(self.n) != self.n or self.n < 1:
            raise InputError(f"--n must be a positive integer, got {self.n}")
        if not self.noise_free and not (np.isfinite(self.snr) and self.snr > 0):
            raise InputError(f"--snr must be a finite number > 0 (--noise-free for no noise), got {self.snr}")
        if int(self.chunk) != self.chunk or self.chunk < 1:
            raise InputError(f"--chunk must be a positive integer, got {self.chunk}")
        if not 0 <= self.defocus_min <= self.defocus_max:
            raise InputError(f"need 0 <= defocus-min <= defocus-max, got {self.defocus_min}, {self.defocus_max}")
        if not 0 <= self.astig_min <= self.astig_max:
            raise InputError(f"need 0 <= astig-min <= astig-max, got {self.astig_min}, {self.astig_max}")
        if not self.voltage > 0:
            raise InputError(f"--voltage must be > 0 kV, got {self.voltage}")
        if not self.cs >= 0:
            raise InputError(f"--cs must be >= 0 mm, got {self.cs}")
        if not 0 <= self.amp_contrast < 1:
            raise InputError(f"--amp-contrast must be in [0, 1), got {self.amp_contrast}")
        if not (np.isfinite(self.max_shift) and self.max_shift >= 0):
            raise InputError(f"--max-shift must be a finite number of px >= 0, got {self.max_shift}")
        if box is not None and box < 8:  # the smallest box a reconstruction takes (downsample.MIN_BOX)
            raise InputError(f"the map is {box} px a side: too small to simulate particles from (at least 8 px)")
        if box is not None and not self.max_shift < box / 4:
            raise InputError(f"--max-shift must be < box/4 = {box / 4:g} px for a {box}-px box, "
                             f"got {self.max_shift:g}")


@dataclass
class SimulationResult:
    """Paths written by :func:`simulate_particles` and the dataset's shape.

    ``star`` is the picked-particle STAR (no angles, no origins); ``true_poses`` the same
    particles with their true angles, origins and half-sets (the ground truth).
    """

    star: Path
    true_poses: Path
    stack: Path
    reference: Path
    metadata: Path
    n: int
    box: int
    apix: float
    extra: dict = field(default_factory=dict)


def draw_ctf_params(n: int, cfg: SimulationConfig, rng: np.random.Generator) -> CTFParams:
    """Per-particle CTF parameters: mean defocus and astigmatism uniform in their ranges,
    angle uniform in [0, 360)°, rounded to the STAR's precision."""
    mean = rng.uniform(cfg.defocus_min, cfg.defocus_max, n)
    astig = rng.uniform(cfg.astig_min, cfg.astig_max, n)
    angle = rng.uniform(0.0, 360.0, n)
    return CTFParams(
        defocus_u=star_round(mean + astig / 2),
        defocus_v=star_round(mean - astig / 2),
        defocus_angle=star_round(angle),
        voltage=np.full(n, float(cfg.voltage)),
        cs=np.full(n, float(cfg.cs)),
        amplitude_contrast=np.full(n, float(cfg.amp_contrast)),
        phase_shift=np.zeros(n),
        bfactor=np.zeros(n),
    )


def draw_origins(n: int, max_shift: float, apix: float, rng: np.random.Generator) -> np.ndarray:
    """Particle origins ``(n, 2)`` = ``(rlnOriginXAngst, rlnOriginYAngst)`` in Å, uniform in the
    disc of radius ``max_shift`` px, rounded to the STAR's precision (zeros, without drawing,
    when ``max_shift`` is 0)."""
    if max_shift <= 0:
        return np.zeros((n, 2))
    r = max_shift * np.sqrt(rng.uniform(0.0, 1.0, n))
    theta = rng.uniform(0.0, 2 * np.pi, n)
    return star_round(np.stack([r * np.cos(theta), r * np.sin(theta)], 1) * apix)


def _star_tables(cfg: SimulationConfig, euler: np.ndarray, origins_A: np.ndarray, ctf: CTFParams,
                 box: int, apix: float, stack_name: str):
    """``(optics, picked, truth)``: the optics table, the picked-particle table (image names,
    CTF) and the same rows with the true angles (°), origins (Å) and half-sets."""
    import pandas as pd

    n = len(euler)
    width = max(6, len(str(n)))
    optics = pd.DataFrame([{
        "rlnOpticsGroupName": "opticsGroup1",
        "rlnOpticsGroup": 1,
        "rlnVoltage": float(cfg.voltage),
        "rlnSphericalAberration": float(cfg.cs),
        "rlnAmplitudeContrast": float(cfg.amp_contrast),
        "rlnImagePixelSize": float(apix),
        "rlnImageSize": int(box),
        "rlnImageDimensionality": 2,
    }])
    names = [f"{i + 1:0{width}d}@{stack_name}" for i in range(n)]
    ctf_cols = {}
    if cfg.apply_ctf:
        ctf_cols = dict(rlnDefocusU=ctf.defocus_u, rlnDefocusV=ctf.defocus_v,
                        rlnDefocusAngle=ctf.defocus_angle, rlnPhaseShift=ctf.phase_shift,
                        rlnCtfBfactor=ctf.bfactor)
    group = np.ones(n, dtype=np.int64)
    picked = pd.DataFrame({"rlnImageName": names, **ctf_cols, "rlnOpticsGroup": group})
    truth = pd.DataFrame({
        "rlnImageName": names,
        "rlnAngleRot": euler[:, 0],
        "rlnAngleTilt": euler[:, 1],
        "rlnAnglePsi": euler[:, 2],
        "rlnOriginXAngst": origins_A[:, 0],
        "rlnOriginYAngst": origins_A[:, 1],
        **ctf_cols,
        "rlnOpticsGroup": group,
        "rlnRandomSubset": (np.arange(n) % 2 + 1).astype(np.int64),
    })
    return optics, picked, truth


_COMPUTE_BATCH = 256


def _simulate_batch(vol_ft, R, origins_px, ctf, idx, box, apix, apply_ctf, noise_free, snr, rng_noise,
                    map_path):
    """Images of particles ``idx``: slice, origin shift (px), CTF, inverse FFT, noise (drawn in
    particle order)."""
    with torch.no_grad():
        ft = fourier_slices(vol_ft, R, box)
        if np.any(origins_px):
            # place the particle at −o: exp(+2πi k·o/D), the inverse of centring an origin o
            ft = ft * centring_phase(box, -torch.as_tensor(origins_px), box).to(ft.dtype)
        if apply_ctf:
            ft = ft * ctf.evaluate(box, apix, idx, dtype=torch.float32)
        clean = slices_to_images(ft).numpy()
    if noise_free:
        return clean
    var = clean.reshape(len(clean), -1).var(axis=1, dtype=np.float64)
    if np.any(var <= 0):
        raise InputError("the map projects to a constant image (empty map?)", map_path)
    sigma = np.sqrt(var / snr)
    noise = rng_noise.standard_normal(clean.shape)
    noise *= sigma[:, None, None]
    noise += clean
    return noise


def _check_finite_images(images: np.ndarray, first: int, snr: float, noise_free: bool, map_path) -> None:
    """Refuse images (particles ``first``, ...) that are not finite in float32, the stack's type:
    nothing of the run is then written."""
    ok = (np.abs(images) <= np.finfo(np.float32).max).all(axis=(1, 2))  # False for NaN too
    if ok.all():
        return
    bad = first + int(np.flatnonzero(~ok)[0])
    why = "" if noise_free else (f" (--snr {snr:g} is too small: the noise std, std(image)/sqrt(snr), "
                                 f"overflows float32)")
    raise InputError(f"simulated particle {bad + 1} has NaN/Inf pixels{why}; nothing written", map_path)


def simulate_particles(map_path, out_dir, n: int = 1000, snr: float = 0.1, *, seed: int = 0,
                       noise_free: bool = False, apply_ctf: bool = True, chunk: int = 1000,
                       defocus_range=(15000.0, 20000.0), astig_range=(100.0, 500.0),
                       voltage: float = 300.0, cs: float = 2.7, amp_contrast: float = 0.1,
                       max_shift: float = 0.0, overwrite: bool = False,
                       progress: Optional[Callable[[int, int], None]] = None) -> SimulationResult:
    """Simulate a particle stack from a map and write it with a RELION STAR file.

    Parameters
    ----------
    map_path : str or Path
        Reference map (MRC, cubic, even box; voxel size in the header, Å).
    out_dir : str or Path
        Output directory (created if needed).
    n : int
        Number of particles.
    snr : float
        Per-image SNR: noise variance = variance of the clean CTF image / snr.
    seed : int
        Seed of all randomness (poses, CTF parameters, noise).
    noise_free : bool
        Skip the noise.
    apply_ctf : bool
        Apply the CTF (RELION convention, :func:`rmfn_napari.cryoem.ctf.ctf_2d`).
    chunk : int
        Particles per chunk (memory ~ chunk·D² complex values).
    defocus_range : (float, float)
        Mean defocus range in Å.
    astig_range : (float, float)
        ``dfU − dfV`` range in Å.
    voltage, cs, amp_contrast : float
        kV, mm, fraction.
    max_shift : float
        Place each particle off-centre by an origin drawn uniformly in the disc of this radius
        (px, < D/4); the origins go to ``true_poses.star`` (Å). 0: every particle centred.
    overwrite : bool
        Replace existing outputs. Otherwise an existing output file is an error, checked
        before any work and again, under the folder's lock, right before the files are moved
        into place (one another run finished meanwhile is never replaced).
    progress : callable(done, total), optional
        Called after each chunk with the number of particles written.

    Returns
    -------
    SimulationResult
        Paths of ``particles.star``, ``true_poses.star``, ``particles.mrcs``, ``reference.mrc``,
        ``simulation.json``. All files are written under temporary names and renamed at the
        very end (the STARs last), so an interrupted run leaves none of them half-written.

    Raises
    ------
    InputError
        A bad parameter or map. :class:`~rmfn_napari.engine.outdir.OutputDirError` (a subclass)
        before any work when ``out_dir`` is a file, is not writable, has too little free space
        (:func:`~rmfn_napari.engine.outdir.estimate_simulate_bytes`) or is locked by another
        run; and when the disk fills up while writing (no output of this run is left).
    """
    cfg = SimulationConfig(n=n, snr=snr, seed=seed, noise_free=noise_free, apply_ctf=apply_ctf,
                           chunk=chunk, defocus_min=defocus_range[0], defocus_max=defocus_range[1],
                           astig_min=astig_range[0], astig_max=astig_range[1], voltage=voltage,
                           cs=cs, amp_contrast=amp_contrast, max_shift=max_shift)
    cfg.validate()
    # the output folder before any work: a file, not writable, too little space, another run
    lay = read_mrc_header(map_path)  # 1 KiB: the box size for the estimate
    out_dir = Path(out_dir)
    need = estimate_simulate_bytes(int(n), max(lay.shape))
    with prepare_run_dir(out_dir, need, f"simulate ({int(n)} particles of {max(lay.shape)} px)"):
        return _simulate_into(out_dir, map_path, cfg, overwrite, progress)


def _simulate_into(out_dir: Path, map_path, cfg: SimulationConfig, overwrite: bool,
                   progress) -> SimulationResult:
    """The simulation proper, in a folder this run holds the lock of."""
    n, snr, seed, noise_free, apply_ctf, chunk = (cfg.n, cfg.snr, cfg.seed, cfg.noise_free,
                                                  cfg.apply_ctf, cfg.chunk)
    volume, apix = read_map(map_path)
    box = volume.shape[0]
    cfg.validate(box)
    finals = {k: out_dir / name for k, name in (("stack", "particles.mrcs"), ("star", "particles.star"),
                                                  ("true_poses", "true_poses.star"),
                                                  ("reference", "reference.mrc"),
                                                  ("metadata", "simulation.json"))}
    if not overwrite:
        existing = [str(p) for p in finals.values() if p.exists()]
        if existing:
            raise InputError(f"output exists: {', '.join(existing)} (use overwrite)", out_dir)

    ss = np.random.SeedSequence(int(seed))
    rng_pose, rng_ctf, rng_noise, rng_shift = (np.random.default_rng(s) for s in ss.spawn(4))
    n = int(n)
    R0 = random_rotations(n, generator=rng_pose)
    rot, tilt, psi = matrix_to_euler(R0.numpy())
    euler = np.stack([star_round(rot), star_round(tilt), star_round(psi)], 1)
    R = torch.as_tensor(euler_to_matrix(euler[:, 0], euler[:, 1], euler[:, 2]))
    ctf = draw_ctf_params(n, cfg, rng_ctf)
    origins_A = draw_origins(n, float(cfg.max_shift), apix, rng_shift)
    origins_px = origins_A / apix

    vol_ft = volume_fourier(torch.from_numpy(volume), pad=cfg.pad)
    tmps = {k: _tmp_name(p) for k, p in finals.items()}
    placed: list[Path] = []
    try:
        writer = StackWriter(tmps["stack"], n, box, apix)
        try:
            for i in range(0, n, int(chunk)):
                j = min(i + int(chunk), n)
                buf = np.empty((j - i, box, box), dtype=np.float32)
                for a in range(i, j, _COMPUTE_BATCH):  # bounded temporaries, whatever the chunk
                    b = min(a + _COMPUTE_BATCH, j)
                    images = _simulate_batch(vol_ft, R[a:b], origins_px[a:b], ctf, np.arange(a, b), box,
                                             apix, apply_ctf, noise_free, snr, rng_noise, map_path)
                    _check_finite_images(images, a, snr, noise_free, map_path)
                    buf[a - i:b - i] = images
                writer.write(buf)
                del buf
                if progress is not None:
                    progress(j, n)
        finally:
            writer._f.close()
        writer.close()
        optics, picked, truth = _star_tables(cfg, euler, origins_A, ctf, box, apix, finals["stack"].name)
        write_star(tmps["star"], {"optics": optics, "particles": picked})
        write_star(tmps["true_poses"], {"optics": optics, "particles": truth})
        write_map(tmps["reference"], volume, apix)
        meta = asdict(cfg)
        meta["max_shift_px"] = meta.pop("max_shift")
        meta.update(map=str(Path(map_path).resolve()), box=box, apix=apix,
                    true_poses=finals["true_poses"].name,
                    noise_model="white Gaussian, variance = var(clean image)/snr per image",
                    ctf_convention="RELION (CTF(0)=+amplitude contrast)",
                    origin_convention="RELION: the particle's centre sits at -origin, I(x) = P(x + o)")
        tmps["metadata"].write_text(json.dumps(meta, indent=2))
        # the STARs last: they name the rest. Without overwrite, a file another run finished
        # meanwhile is never replaced: checked again now, and each move fails if the name exists
        order = ("stack", "reference", "metadata", "true_poses", "star")
        if not overwrite:
            existing = [str(finals[k]) for k in order if os.path.lexists(finals[k])]
            if existing:
                raise InputError(f"output exists: {', '.join(existing)}, written by another run "
                                 f"meanwhile; nothing replaced (use overwrite)", out_dir)
        for k in order:
            if overwrite:
                replace_synced(tmps[k], finals[k])
            else:
                replace_no_clobber(tmps[k], finals[k])
            placed.append(finals[k])
        fsync_dir(out_dir)
    except BaseException:
        for p in tmps.values():
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        if not overwrite:  # a partial set would mix this run's files with another's
            for p in placed:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
        raise
    return SimulationResult(star=finals["star"], true_poses=finals["true_poses"], stack=finals["stack"],
                            reference=finals["reference"], metadata=finals["metadata"], n=n, box=box,
                            apix=apix)
