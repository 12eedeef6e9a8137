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

from pathlib import Path

import numpy as np

from ..errors import InputError
from .mrc import _stack_transposed, read_mrc_header
from .rotations import euler_to_matrix
from .star import StarParticles, parse_star

__all__ = ["DatasetBase", "ParticleDataset", "read_particles"]


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

    def indices_of(self, indices=None) -> np.ndarray:
        """Particle indices (0-based, STAR row order) as an int64 array: ``None`` for all, a
        slice of ``range(n)``, or an int or a sequence of ints (not range-checked here)."""
        if indices is None:
            return np.arange(self.n)
        if isinstance(indices, slice):
            return np.arange(self.n)[indices]
        return np.atleast_1d(np.asarray(indices, dtype=np.int64))


class ParticleDataset(DatasetBase):
    """A RELION particle STAR file with its image stacks, validated on open, read lazily.

    Attributes
    ----------
    star_path : Path
    n : int
        Number of particles.
    box : int or None
        Image size in pixels (None when the optics groups' images differ in size or pixel
        size: see ``mixed``).
    apix : float or None
        Pixel size, Å (None when ``mixed``).
    particle_box : ndarray ``(n,)`` int64
        Each particle's image size (px, its stack's).
    particle_apix : ndarray ``(n,)`` float64
        Each particle's pixel size (Å, its optics group's; else its stack header's).
    group : ndarray ``(n,)`` int64
        ``rlnOpticsGroup`` of each particle (1 without one); ``group_names`` names them.
    mixed : bool
        The particles do not all share one box and pixel size (optics groups merged from
        several sessions): :func:`read_particles` returns them resampled to one working grid
        (:mod:`rmfn_napari.cryoem.optics_groups`); :meth:`images` here reads only particles
        of one box.
    rotations : ndarray ``(n, 3, 3)`` float64
        RELION matrices ``A`` from ``rlnAngleRot/Tilt/Psi`` (identity where absent; see
        ``has_poses``).
    euler : ndarray ``(n, 3)``
        ``(rot, tilt, psi)`` in degrees.
    shifts_A : ndarray ``(n, 2)``
        Origins in Å: ``rlnOriginXAngst/YAngst``, or ``rlnOriginX/Y`` (px) × the particle's
        own pixel size (0 where absent).
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

    def __init__(self, star: StarParticles, stacks, layouts, boxes, apix):
        self.star_path = Path(star.star_path)
        self.particles, self.optics = star.particles, star.optics
        self._stack_paths = stacks
        self._layouts = layouts
        self._boxes = [int(b) for b in boxes]
        self._stack_of, self._index = star.stack_of, star.index
        self.n = star.n
        self.particle_box = np.asarray(self._boxes, np.int64)[self._stack_of]
        self.particle_apix = np.asarray(apix, np.float64)
        self.group, self.group_names = star.group, star.group_names
        self.mixed = bool(len(np.unique(self.particle_box)) > 1
                          or not np.allclose(self.particle_apix, self.particle_apix[0], rtol=1e-5))
        self.box = None if self.mixed else int(self.particle_box[0])
        self.apix = None if self.mixed else float(self.particle_apix[0])
        self.image_names = list(star.image_names)
        self.has_poses, self.euler = star.has_poses, star.euler
        self.rotations = euler_to_matrix(self.euler[:, 0], self.euler[:, 1], self.euler[:, 2])
        self.shifts_A = star.shifts_A(self.particle_apix)
        self.ctf = star.ctf

    # -- lazy image access
    def _read_rows(self, s: int, rows: np.ndarray) -> np.ndarray:
        """Images ``rows`` (sorted, unique, 0-based) of stack ``s`` as float32 ``(k, D, D)``.

        One positioned read per contiguous run of rows, straight into the result when the
        stack holds native float32 (else through a buffer of the run, then converted). No
        memory map: pages of a mapped stack would stay in the resident set after the read.
        Images of a stack stored with ``mapc, mapr = 2, 1`` are transposed to ``[y, x]``.
        """
        offset, dtype, transposed = self._layouts[s]
        box = self._boxes[s]
        nbytes = box * box * dtype.itemsize
        out = np.empty((len(rows), box, box), dtype=np.float32)
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
        direct = dtype == out.dtype
        with open(self._stack_paths[s], "rb") as f:
            for a, b in zip(starts, [*starts[1:], len(rows)]):
                buf = out[a:b] if direct else np.empty((b - a, box, box), dtype)
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
        ValueError
            If the particles asked for differ in box (a ``mixed`` dataset: read it through
            :class:`~rmfn_napari.cryoem.optics_groups.ResampledParticles`).
        """
        idx = self.indices_of(indices)
        if idx.size and (idx.min() < -self.n or idx.max() >= self.n):
            raise IndexError(f"particle index out of range 0..{self.n - 1}")
        idx = idx % self.n if idx.size else idx
        boxes = np.unique(self.particle_box[idx]) if idx.size else self.particle_box[:1]
        if len(boxes) > 1:
            raise ValueError(f"particles of different boxes {boxes.tolist()} px in one read")
        box = int(boxes[0])
        out = np.empty((len(idx), box, box), dtype=np.float32)
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
        for box in np.unique(self.particle_box):
            sel = np.flatnonzero(self.particle_box == box)
            for i in range(0, len(sel), chunk):
                self.images(sel[i:i + chunk])

    def close(self) -> None:
        """Nothing to release: each read opens and closes the stack files it needs."""

    def __repr__(self) -> str:
        return (f"ParticleDataset({str(self.star_path)!r}, n={self.n}, box={self.box}, "
                f"apix={self.apix}, stacks={len(self._stack_paths)}, ctf={self.ctf is not None}"
                f"{', mixed optics groups' if self.mixed else ''})")


#: at most this fraction of a STAR's particles may have impossible origins (beyond the box):
#: they are left out with a note; more, and the STAR is refused
MAX_EXCLUDED_FRACTION = 0.01


def _possible_origins(star: StarParticles, box: np.ndarray, apix: np.ndarray):
    """Which particles' origins are possible: their centre inside the image, ``|origin| < box/2``
    px on each axis (``rlnOriginXAngst/YAngst`` in Å, or ``rlnOriginX/Y`` in px before RELION
    3.1), each particle against its own ``box`` (px) and pixel size ``apix`` (Å). Returns
    ``(keep, note)``: ``keep`` a boolean mask and ``note`` None when all are possible, else a
    sentence for the log naming the STAR and the count left out.

    Raises
    ------
    InputError
        More than :data:`MAX_EXCLUDED_FRACTION` of the particles (or all of them) have
        impossible origins: a unit mix-up (px written as Å?) or a damaged file.
    """
    if star.origin_unit is None:
        return None, None
    o = star.origins
    angst = star.origin_unit == "Å"
    names = "rlnOriginXAngst/YAngst" if angst else "rlnOriginX/Y"
    with np.errstate(over="ignore", invalid="ignore"):
        px = np.abs(o) / (apix[:, None] if angst else 1.0)
        bad = ~np.all(np.isfinite(px) & (px < box[:, None] / 2), axis=1)
    n_bad, n = int(bad.sum()), len(bad)
    if n_bad == 0:
        return None, None
    first = int(np.flatnonzero(bad)[0])
    b, a = int(box[first]), float(apix[first])
    why = (f"{names} put the centre outside the {b} px box (row {first + 1}: ({o[first, 0]:.4g}, "
           f"{o[first, 1]:.4g}) {star.origin_unit}; each must be under {b / 2:g} px = {b / 2 * a:.4g} Å)")
    if n_bad == n or n_bad > MAX_EXCLUDED_FRACTION * n:
        raise InputError(f"impossible origins: {n_bad} of {n} particles' {why}; check the columns "
                         f"and their units (more than {MAX_EXCLUDED_FRACTION:.0%} of the particles: "
                         "none left out)", star.star_path)
    return ~bad, f"{star.star_path}: warning: left out {n_bad} of {n} particles whose {why}"


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
    star_path = Path(star_path)
    star = parse_star(star_path)
    stacks = [_resolve_stack(f, star_path.parent) for f in star.stack_names]
    names, stack_of, index, bare = star.image_names, star.stack_of, star.index, star.bare

    # each stack's header: existence, size, shape, index range, pixel size (no data read)
    boxes, layouts, header_apix = [], [], []
    for s, sp in enumerate(stacks):
        lay = read_mrc_header(sp)
        if len(lay.shape) == 4:
            raise InputError(f"a stack of volumes (space group {lay.ispg}), not of images", sp)
        layouts.append((lay.offset, lay.dtype, _stack_transposed(lay)))
        n_img = lay.shape[0] if len(lay.shape) == 3 else 1
        ny, nx = lay.shape[-2:]
        if ny != nx:
            raise InputError(f"images are not square ({ny} x {nx})", sp)
        if nx % 2:
            raise InputError(f"image size {nx} is odd; an even box is required", sp)
        boxes.append(int(nx))
        header_apix.append(float(lay.voxel[0]))
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
    box = np.asarray(boxes, np.int64)[stack_of]
    # one box per optics group (RELION's rlnImageSize is a group's); groups may differ
    for g in np.unique(star.group):
        mine = star.group == g
        sizes = np.unique(box[mine])
        if len(sizes) > 1:
            s1, s2 = (int(np.flatnonzero(mine & (box == v))[0]) for v in sizes[:2])
            raise InputError(f"image size {int(sizes[1])} differs from {int(sizes[0])} in "
                             f"{stacks[stack_of[s1]]} within optics group {int(g)}", stacks[stack_of[s2]])
    if star.image_size is not None and np.any(star.image_size != box):
        r = int(np.flatnonzero(star.image_size != box)[0])
        raise InputError(f"rlnImageSize {np.unique(star.image_size).tolist()} does not match the stacks' "
                         f"{np.unique(box).tolist()} (row {r + 1})", star_path)
    if star.apix is not None:
        apix = star.apix
    else:  # the stacks' headers
        apix = np.asarray(header_apix, np.float64)[stack_of]
        if not np.all(np.isfinite(apix)) or np.any(apix <= 0):
            bad = int(np.flatnonzero(~(np.isfinite(apix) & (apix > 0)))[0])
            raise InputError(f"voxel size in the header is {apix[bad]} Å; it must be > 0",
                             stacks[stack_of[bad]])
    notes = list(star.notes)  # the STAR layer's (a CTF value defaulted, B-factors < 0)
    if dup := _duplicates(stack_of, index, names, star_path):  # STAR row numbers
        notes.append(dup)
    keep, note = _possible_origins(star, box, apix)
    if note:
        star, apix = star.subset(keep), apix[keep]
        notes.append(note)
    ds = ParticleDataset(star, stacks, layouts, boxes, apix)
    ds.notes = notes
    if check_pixels:
        ds.check_pixels()
    if ds.mixed:  # one working box and pixel size for every group
        from .optics_groups import ResampledParticles
        return ResampledParticles(ds)
    return ds
