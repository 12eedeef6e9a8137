"""Particle stacks described by RELION STAR files: read (lazily) and validate.

* Particle STAR files follow RELION 3.1+ (``data_optics`` + ``data_particles``); RELION 3.0
  files (one table, optics columns per particle) are read too. ``rlnImageName`` entries are
  ``index@stack.mrcs`` (1-based index); a name without ``index@`` is a single-image file, as
  in RELION (refused when the file holds more than one image). Relative stack paths are
  resolved against the STAR file's directory (then the working directory, as RELION does).
  Angles, origins, CTF and pixel-size columns must hold finite numbers. The stacks' headers
  are read through :mod:`rmfn_napari.cryoem.mrc`.
* Origins must put each particle's centre inside its box (``|origin| < box/2`` px on each
  axis): a few particles (≤ 1 %) with impossible origins are left out, with a note in
  ``ParticleDataset.notes`` that the run logs as a warning; more, and the STAR is refused.
* Every problem with an input file raises :class:`rmfn_napari.errors.InputError` naming the
  file and the problem. A STAR with new poses is written by
  :func:`rmfn_napari.cryoem.io.write_particles_star`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from .ctf import CTFParams
from .mrc import _stack_transposed, read_mrc_header
from .rotations import euler_to_matrix

__all__ = ["DatasetBase", "ParticleDataset", "read_particles"]


_NAME_RE = re.compile(r"^\s*(\d+)@(.+?)\s*$")

#: STAR columns read as numbers: each value must parse as a finite number.
_NUMERIC_COLUMNS = (
    "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
    "rlnOriginX", "rlnOriginY", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
    "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnPhaseShift", "rlnCtfBfactor",
    "rlnImagePixelSize", "rlnDetectorPixelSize", "rlnMagnification", "rlnImageSize",
)


def _check_numeric(table, table_name: str, star_path: Path) -> None:
    """Make the :data:`_NUMERIC_COLUMNS` of ``table`` numeric in place (columns read as text
    become float64, or int64 when every value is whole).

    Raises
    ------
    InputError
        Naming the STAR, the table, the column and the first row (1-based) whose value is
        not a number or is NaN/Inf.
    """
    import pandas as pd

    for col in (c for c in _NUMERIC_COLUMNS if c in table.columns):
        raw = table[col]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            r = int(bad[0])
            text = np.isnan(values[r]) and not pd.isna(raw.iloc[r])
            what = "is not a number" if text else "is not finite"
            raise InputError(f"column {col} of data_{table_name}, row {r + 1}: value "
                             f"{raw.iloc[r]!r} {what} ({bad.size} bad rows)", star_path)
        if not pd.api.types.is_numeric_dtype(raw):
            whole = col == "rlnImageSize" and np.all(values == np.round(values))
            table[col] = values.astype(np.int64) if whole else values


def _check_complete(table, table_name: str, star_path: Path) -> None:
    """InputError naming the first row (1-based) and column of ``table`` without a value: a row
    that lost fields (a truncated or damaged file; the reader fills them with NaN), which would
    otherwise pass for data (a half-set lost: a random split instead of the STAR's)."""
    missing = table.isna().to_numpy()
    if not missing.any():
        return
    rows = np.flatnonzero(missing.any(axis=1))
    r = int(rows[0])
    cols = [str(c) for c, m in zip(table.columns, missing[r]) if m]
    raise InputError(f"row {r + 1} of data_{table_name} has {len(table.columns) - len(cols)} of "
                     f"{len(table.columns)} fields ({', '.join(cols[:3])}{'…' if len(cols) > 3 else ''} "
                     f"missing; {len(rows)} such row(s)): a truncated or damaged row", star_path)


class DatasetBase:
    """What every particle dataset shares: a context manager that calls ``close()``, and
    ``len()`` = ``n``; ``notes``, warnings about the data for the run's log (e.g. particles
    left out), none by default."""

    n: int
    notes: tuple | list = ()

    def close(self) -> None:  # pragma: no cover - overridden
        """Release what the dataset holds."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return self.n


class ParticleDataset(DatasetBase):
    """A RELION particle STAR file with its image stacks, validated on open, read lazily.

    Attributes
    ----------
    star_path : Path
    n : int
        Number of particles.
    box : int
        Image size in pixels.
    apix : float
        Pixel size, Å.
    rotations : ndarray ``(n, 3, 3)`` float64
        RELION matrices ``A`` from ``rlnAngleRot/Tilt/Psi`` (identity where absent; see
        ``has_poses``).
    euler : ndarray ``(n, 3)``
        ``(rot, tilt, psi)`` in degrees.
    shifts_A : ndarray ``(n, 2)``
        ``(rlnOriginXAngst, rlnOriginYAngst)`` in Å (0 where absent).
    ctf : CTFParams or None
        None when the STAR has no ``rlnDefocusU`` (no CTF).
    image_names : list of str
        ``rlnImageName`` as written in the STAR.
    particles, optics : pandas.DataFrame
        The tables as read (``optics`` None for RELION 3.0 files), less the rows left out
        (impossible origins, see ``notes``).
    notes : list of str
        Warnings about the STAR for the run's log: particles left out and why.
    """

    def __init__(self, star_path, particles, optics, stacks, layouts, stack_of, index_in_stack,
                 box, apix):
        self.star_path = Path(star_path)
        self.particles = particles
        self.optics = optics
        self._stack_paths = stacks
        self._layouts = layouts
        self._stack_of = stack_of
        self._index = index_in_stack
        self.box, self.apix = int(box), float(apix)
        self.n = len(particles)
        self.image_names = [str(s) for s in particles["rlnImageName"]]
        cols = particles.columns
        self.has_poses = all(c in cols for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
        if self.has_poses:
            self.euler = particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64)
            if not np.all(np.isfinite(self.euler)):
                raise InputError("non-finite Euler angles", self.star_path)
        else:
            self.euler = np.zeros((self.n, 3))
        self.rotations = euler_to_matrix(self.euler[:, 0], self.euler[:, 1], self.euler[:, 2])
        if "rlnOriginXAngst" in cols:
            self.shifts_A = particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(np.float64)
        elif "rlnOriginX" in cols:
            self.shifts_A = particles[["rlnOriginX", "rlnOriginY"]].to_numpy(np.float64) * self.apix
        else:
            self.shifts_A = np.zeros((self.n, 2))
        self.ctf = self._read_ctf(particles)

    def _read_ctf(self, p):
        if "rlnDefocusU" not in p.columns:
            return None

        def col(name, default):
            if name in p.columns:
                return p[name].to_numpy(np.float64)
            if default is None:
                raise InputError(f"column {name} is missing (needed for the CTF)", self.star_path)
            return np.full(self.n, float(default))

        ctf = CTFParams(
            defocus_u=col("rlnDefocusU", None),
            defocus_v=col("rlnDefocusV", None) if "rlnDefocusV" in p.columns else col("rlnDefocusU", None),
            defocus_angle=col("rlnDefocusAngle", 0.0),
            voltage=col("rlnVoltage", None),
            cs=col("rlnSphericalAberration", None),
            amplitude_contrast=col("rlnAmplitudeContrast", None),
            phase_shift=col("rlnPhaseShift", 0.0),
            bfactor=col("rlnCtfBfactor", 0.0),
        )
        for name in ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs",
                     "amplitude_contrast", "phase_shift", "bfactor"):
            if not np.all(np.isfinite(getattr(ctf, name))):
                raise InputError(f"non-finite CTF parameter {name}", self.star_path)
        if np.any(ctf.voltage <= 0):
            raise InputError("voltage must be > 0 kV", self.star_path)
        return ctf

    # -- lazy image access
    def _read_rows(self, s: int, rows: np.ndarray) -> np.ndarray:
        """Images ``rows`` (sorted, unique, 0-based) of stack ``s`` as float32 ``(k, D, D)``.

        One positioned read per contiguous run of rows, straight into the result when the
        stack holds native float32 (else through a buffer of the run, then converted). No
        memory map: pages of a mapped stack would stay in the resident set after the read.
        Images of a stack stored with ``mapc, mapr = 2, 1`` are transposed to ``[y, x]``.
        """
        offset, dtype, transposed = self._layouts[s]
        nbytes = self.box * self.box * dtype.itemsize
        out = np.empty((len(rows), self.box, self.box), dtype=np.float32)
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
        direct = dtype == out.dtype
        with open(self._stack_paths[s], "rb") as f:
            for a, b in zip(starts, [*starts[1:], len(rows)]):
                buf = out[a:b] if direct else np.empty((b - a, self.box, self.box), dtype)
                f.seek(offset + int(rows[a]) * nbytes)
                if f.readinto(buf) != buf.nbytes:
                    raise InputError(f"stack is truncated (reading image {int(rows[b - 1]) + 1})",
                                     self._stack_paths[s])
                if not direct:
                    out[a:b] = buf
        return np.ascontiguousarray(out.transpose(0, 2, 1)) if transposed else out

    def images(self, indices=None) -> np.ndarray:
        """Read images as float32 ``(k, D, D)``, with memory use of the order of the batch.

        Parameters
        ----------
        indices : int, slice, sequence of ints or None
            Particle indices (0-based, STAR row order); None reads all.

        Raises
        ------
        InputError
            If any returned pixel is NaN/Inf (naming the stack and particle).
        """
        if indices is None:
            idx = np.arange(self.n)
        elif isinstance(indices, slice):
            idx = np.arange(self.n)[indices]
        else:
            idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if idx.size and (idx.min() < -self.n or idx.max() >= self.n):
            raise IndexError(f"particle index out of range 0..{self.n - 1}")
        idx = idx % self.n if idx.size else idx
        out = np.empty((len(idx), self.box, self.box), dtype=np.float32)
        stacks = self._stack_of[idx]
        for s in np.unique(stacks):
            sel = np.nonzero(stacks == s)[0]
            rows, inverse = np.unique(self._index[idx[sel]], return_inverse=True)
            out[sel] = self._read_rows(int(s), rows)[inverse]
            bad = ~np.isfinite(out[sel]).all(axis=(1, 2))
            if bad.any():
                first = int(idx[sel][bad][0])
                raise InputError(f"NaN/Inf pixels in image {self.image_names[first]} "
                                 f"(particle {first}; {int(bad.sum())} bad images in this read)",
                                 self._stack_paths[int(s)])
        return out

    def image_keys(self) -> list[tuple[str, int]]:
        """``(resolved stack path, 0-based index in it)`` of every particle: its identity,
        whatever the STAR's row order or the way its ``rlnImageName`` spells the path."""
        paths = [str(Path(p).resolve()) for p in self._stack_paths]
        return [(paths[int(s)], int(k)) for s, k in zip(self._stack_of, self._index)]

    def check_pixels(self, chunk: int = 2000) -> None:
        """Scan every image for NaN/Inf (raises :class:`InputError` on the first bad one)."""
        for i in range(0, self.n, chunk):
            self.images(np.arange(i, min(i + chunk, self.n)))

    def close(self) -> None:
        """Nothing to release: each read opens and closes the stack files it needs."""

    def __repr__(self) -> str:
        return (f"ParticleDataset({str(self.star_path)!r}, n={self.n}, box={self.box}, "
                f"apix={self.apix}, stacks={len(self._stack_paths)}, ctf={self.ctf is not None})")


#: at most this fraction of a STAR's particles may have impossible origins (beyond the box):
#: they are left out with a note; more, and the STAR is refused
MAX_EXCLUDED_FRACTION = 0.01


def _possible_origins(particles, box: int, apix: float, star_path: Path):
    """Which particles' origins are possible: their centre inside the image, ``|origin| < box/2``
    px on each axis (``rlnOriginXAngst/YAngst`` in Å, or ``rlnOriginX/Y`` in px before RELION
    3.1). Returns ``(keep, note)``: ``keep`` a boolean mask and ``note`` None when all are
    possible, else a sentence for the log naming the STAR and the count left out.

    Raises
    ------
    InputError
        More than :data:`MAX_EXCLUDED_FRACTION` of the particles (or all of them) have
        impossible origins: a unit mix-up (px written as Å?) or a damaged file.
    """
    cols = particles.columns
    if {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(cols):
        names, to_px = "rlnOriginXAngst/YAngst", 1.0 / apix
        o = particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(np.float64)
    elif {"rlnOriginX", "rlnOriginY"} <= set(cols):
        names, to_px = "rlnOriginX/Y", 1.0
        o = particles[["rlnOriginX", "rlnOriginY"]].to_numpy(np.float64)
    else:
        return None, None
    with np.errstate(over="ignore", invalid="ignore"):
        px = np.abs(o) * to_px
        bad = ~np.all(np.isfinite(px) & (px < box / 2), axis=1)
    n_bad, n = int(bad.sum()), len(bad)
    if n_bad == 0:
        return None, None
    first = int(np.flatnonzero(bad)[0])
    unit = "Å" if to_px != 1.0 else "px"
    why = (f"{names} put the centre outside the {box} px box (row {first + 1}: ({o[first, 0]:.4g}, "
           f"{o[first, 1]:.4g}) {unit}; each must be under {box / 2:g} px = {box / 2 * apix:.4g} Å)")
    if n_bad == n or n_bad > MAX_EXCLUDED_FRACTION * n:
        raise InputError(f"impossible origins: {n_bad} of {n} particles' {why}; check the columns "
                         f"and their units (more than {MAX_EXCLUDED_FRACTION:.0%} of the particles: "
                         "none left out)", star_path)
    return ~bad, f"{star_path}: warning: left out {n_bad} of {n} particles whose {why}"


def _duplicates(stack_of: np.ndarray, index: np.ndarray, names, star_path: Path) -> str | None:
    """A warning for the log when rows name an image already named by an earlier row (each
    copy is used as one more particle: weighted twice), else None."""
    keys = stack_of.astype(np.int64) * (int(index.max()) + 1 if index.size else 1) + index
    unique, first, counts = np.unique(keys, return_index=True, return_counts=True)
    n_dup = int(len(keys) - len(first))
    if n_dup == 0:
        return None
    seen = np.zeros(len(keys), dtype=bool)
    seen[first] = True
    row = int(np.flatnonzero(~seen)[0])  # the first copy, and the row it copies
    orig = int(first[np.searchsorted(unique, keys[row])])
    return (f"{star_path}: warning: {n_dup} row(s) repeat an image of an earlier row (rows "
            f"{orig + 1} and {row + 1}: {str(names[row]).strip()!r}; {int((counts > 1).sum())} image(s) listed "
            "more than once); each copy is used as another particle")


def _resolve_stack(name: str, star_dir: Path) -> Path:
    p = Path(name)
    if p.is_absolute():
        return p
    cand = star_dir / p
    if cand.exists() or not Path(name).exists():
        return cand
    return Path(name).resolve()


def read_particles(star_path, check_pixels: bool = False) -> ParticleDataset:
    """Open a RELION particle STAR file and its stacks, validating everything but the pixels.

    Parameters
    ----------
    star_path : str or Path
        RELION 3.1+ (optics + particles tables) or 3.0 (single table) STAR file.
    check_pixels : bool
        Also scan all pixels for NaN/Inf now (otherwise checked on every read).

    Returns
    -------
    ParticleDataset

    Raises
    ------
    InputError
        Missing/unparsable STAR, missing columns, missing/truncated stacks, image indices
        past the end of a stack, non-square or mismatched image sizes, pixel size ≤ 0.
    """
    import starfile

    star_path = Path(star_path)
    if star_path.is_dir():
        raise InputError("is a folder, not a STAR file", star_path)
    if not star_path.is_file():
        raise InputError("STAR file not found", star_path)
    try:
        blocks = starfile.read(star_path, always_dict=True)
    except Exception as exc:
        raise InputError(f"cannot parse STAR file ({exc})", star_path) from exc
    blocks = {k: v for k, v in blocks.items() if hasattr(v, "columns")}
    optics = blocks.get("optics")
    particles = blocks.get("particles")
    if particles is None:
        particles = next((b for b in blocks.values() if "rlnImageName" in b.columns), None)
    if particles is None or "rlnImageName" not in particles.columns:
        raise InputError("no particle table with an rlnImageName column", star_path)
    if len(particles) == 0:
        raise InputError("particle table is empty", star_path)
    particles = particles.reset_index(drop=True).copy()
    _check_numeric(particles, "particles", star_path)  # (a "nan" written in these: "not finite")
    _check_complete(particles, "particles", star_path)
    if optics is not None:
        optics = optics.reset_index(drop=True).copy()
        _check_numeric(optics, "optics", star_path)
        _check_complete(optics, "optics", star_path)

    # merge optics-group columns into the particle rows (RELION 3.1+)
    group_apix = None
    if optics is not None and len(optics):
        if "rlnOpticsGroup" not in optics.columns or "rlnOpticsGroup" not in particles.columns:
            raise InputError("optics table without rlnOpticsGroup", star_path)
        og = optics.set_index("rlnOpticsGroup")
        missing = set(particles["rlnOpticsGroup"]) - set(og.index)
        if missing:
            raise InputError(f"particles refer to undefined optics groups {sorted(missing)}", star_path)
        for colname in og.columns:
            if colname not in particles.columns and colname.startswith("rln"):
                particles[colname] = particles["rlnOpticsGroup"].map(og[colname]).to_numpy()
        if "rlnImagePixelSize" in og.columns:
            group_apix = og["rlnImagePixelSize"].to_numpy(np.float64)
    else:
        optics = None

    # pixel size
    if group_apix is None and "rlnImagePixelSize" in particles.columns:
        group_apix = particles["rlnImagePixelSize"].to_numpy(np.float64)
    if group_apix is None and {"rlnDetectorPixelSize", "rlnMagnification"} <= set(particles.columns):
        group_apix = (particles["rlnDetectorPixelSize"].to_numpy(np.float64) * 1e4
                      / particles["rlnMagnification"].to_numpy(np.float64))
    if group_apix is not None:
        if not np.all(np.isfinite(group_apix)) or np.any(group_apix <= 0):
            raise InputError(f"pixel size must be > 0 Å, got {np.unique(group_apix).tolist()}", star_path)
        if not np.allclose(group_apix, group_apix[0], rtol=1e-5):
            raise InputError(f"mixed pixel sizes {np.unique(group_apix).tolist()} are not supported", star_path)
        apix = float(group_apix[0])
    else:
        apix = None

    # image names -> (stack, index); a name without "index@" is a single-image file (RELION)
    names = particles["rlnImageName"].astype(str).to_numpy()
    stack_ids: dict[str, int] = {}
    stack_of = np.empty(len(names), dtype=np.int64)
    index = np.empty(len(names), dtype=np.int64)
    bare = np.zeros(len(names), dtype=bool)
    for i, name in enumerate(names):
        m = _NAME_RE.match(name)
        if m:
            k, fname = int(m.group(1)), m.group(2)
        elif "@" in name:
            raise InputError(f"row {i + 1}: rlnImageName {name!r} is not index@stack", star_path)
        else:
            k, fname, bare[i] = 1, name.strip(), True
        if k < 1:
            raise InputError(f"row {i + 1}: image index must be >= 1 in {name!r}", star_path)
        s = stack_ids.setdefault(fname, len(stack_ids))
        stack_of[i], index[i] = s, k - 1
    stacks = [_resolve_stack(f, star_path.parent) for f in stack_ids]

    # each stack's header: existence, size, shape, index range, pixel size (no data read)
    box, layouts = None, []
    for s, sp in enumerate(stacks):
        lay = read_mrc_header(sp)
        if len(lay.shape) == 4:
            raise InputError(f"a stack of volumes (space group {lay.ispg}), not of images", sp)
        layouts.append((lay.offset, lay.dtype, _stack_transposed(lay)))
        n_img = lay.shape[0] if len(lay.shape) == 3 else 1
        ny, nx = lay.shape[-2:]
        if ny != nx:
            raise InputError(f"images are not square ({ny} x {nx})", sp)
        if box is None:
            box = nx
        elif nx != box:
            raise InputError(f"image size {nx} differs from {box} in {stacks[0]}", sp)
        mine = stack_of == s
        if n_img != 1 and np.any(bare & mine):
            r = int(np.nonzero(bare & mine)[0][0])
            raise InputError(
                f"row {r + 1}: rlnImageName {names[r]!r} has no 'index@' prefix, which names a "
                f"single-image file, but {sp} holds {n_img} images; write it as "
                f"'<index>@{names[r].strip()}'", star_path)
        if index[mine].max() >= n_img:
            bad = int(np.nonzero(mine & (index >= n_img))[0][0])
            raise InputError(
                f"STAR row {bad + 1} ({names[bad]!r}) points past the end of the stack, "
                f"which holds {n_img} images", sp)
        if apix is None:
            apix = lay.voxel[0]
            if not np.isfinite(apix) or apix <= 0:
                raise InputError(f"voxel size in the header is {apix} Å; it must be > 0", sp)
    if box % 2:
        raise InputError(f"image size {box} is odd; an even box is required", stacks[0])
    if "rlnImageSize" in particles.columns:
        sizes = np.unique(particles["rlnImageSize"].to_numpy())
        if len(sizes) != 1 or int(sizes[0]) != box:
            raise InputError(f"rlnImageSize {sizes.tolist()} does not match the stacks' {box}", star_path)
    notes = [dup] if (dup := _duplicates(stack_of, index, names, star_path)) else []  # STAR row numbers
    keep, note = _possible_origins(particles, box, apix, star_path)
    if note:
        particles = particles[keep].reset_index(drop=True)
        stack_of, index = stack_of[keep], index[keep]
        notes.append(note)
    ds = ParticleDataset(star_path, particles, optics, stacks, layouts, stack_of, index, box, apix)
    ds.notes = notes
    if check_pixels:
        ds.check_pixels()
    return ds
