"""What a particle STAR file says, read without opening its image stacks.

:func:`parse_star` reads a RELION particle STAR (3.0: one table with optics columns per
particle; 3.1+: ``data_optics`` + ``data_particles``; the extra columns of RELION 4/5,
cryoSPARC exports, Warp/M and cryoDRGN are carried along untouched) into a
:class:`StarParticles`: the particle rows with their optics group's columns merged in, each
particle's optics group and pixel size (Å), Euler angles (°), origins (Å, or px until the
pixel size is known), CTF parameters and where its image is (``index@stack``).
:func:`rmfn_napari.cryoem.particles.read_particles` adds the stacks' headers to it.

Conventions checked here (the tests in ``tests/test_star_flavours.py`` hold real files):

* pixel size: ``rlnImagePixelSize`` (optics group, RELION 3.1+; or a particle column), else
  ``rlnDetectorPixelSize`` (µm) · 10⁴ / ``rlnMagnification`` (RELION 3.0 and the cryoSPARC
  exports that imitate it), else unknown here (the stack header's voxel size is used);
* origins: ``rlnOriginXAngst/YAngst`` in Å (3.1+), else ``rlnOriginX/Y`` in px of the
  particle's own image (3.0), converted to Å with the particle's own pixel size;
* CTF: ``rlnDefocusU/V`` Å, ``rlnDefocusAngle`` °, ``rlnVoltage`` kV,
  ``rlnSphericalAberration`` mm, ``rlnAmplitudeContrast`` (0 if absent, as RELION's
  ``CTF::read``; a note says so), ``rlnPhaseShift`` ° (0 if absent), ``rlnCtfBfactor`` Å²
  (0 if absent; RELION's envelope ``exp(−B s²/4)``, a note names B < 0) and
  ``rlnCtfScalefactor`` (1 if absent; RELION multiplies the CTF by it, Warp's particle
  series write cos(tilt) there); per particle, from the particle's row or its group.

Every problem raises :class:`rmfn_napari.errors.InputError` naming the STAR and the problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .ctf import CTFParams

__all__ = ["StarParticles", "parse_star", "NUMERIC_COLUMNS"]

_NAME_RE = re.compile(r"^\s*(\d+)@(.+?)\s*$")

#: STAR columns read as numbers: each value must parse as a finite number.
NUMERIC_COLUMNS = (
    "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
    "rlnOriginX", "rlnOriginY", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
    "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnPhaseShift", "rlnCtfBfactor",
    "rlnImagePixelSize", "rlnDetectorPixelSize", "rlnMagnification", "rlnImageSize",
    "rlnCtfScalefactor",
)


def _check_numeric(table, table_name: str, star_path: Path) -> None:
    """Make the :data:`NUMERIC_COLUMNS` of ``table`` numeric in place (columns read as text
    become float64, or int64 when every value is whole).

    Raises
    ------
    InputError
        Naming the STAR, the table, the column and the first row (1-based) whose value is
        not a number or is NaN/Inf.
    """
    import pandas as pd

    for col in (c for c in NUMERIC_COLUMNS if c in table.columns):
        raw = table[col]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            r = int(bad[0])
            value = raw.iloc[r]
            empty = table.iloc[r].isna().to_numpy()
            if pd.isna(value) and empty.sum() >= 2 and empty[-int(empty.sum()):].all():
                _check_complete(table, table_name, star_path)  # its last fields lost: a truncated row
            text = np.isnan(values[r]) and not pd.isna(value)
            what = "is not a number" if text else "is not finite"
            shown = repr(value) if isinstance(value, str) else f"{float(values[r]):g}"  # nan, not np.float64(nan)
            raise InputError(f"column {col} of data_{table_name}, row {r + 1}: value "
                             f"{shown} {what} ({bad.size} bad rows)", star_path)
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


@dataclass
class StarParticles:
    """A particle STAR's contents, its images not opened.

    Attributes
    ----------
    star_path : Path
    particles : pandas.DataFrame
        The particle rows, each with its optics group's ``rln`` columns merged in (a column
        the particle table has itself is kept).
    optics : pandas.DataFrame or None
        ``data_optics`` as read (None for a single-table STAR).
    group : ndarray ``(n,)`` int64
        ``rlnOpticsGroup`` of each particle (1 when the STAR has none).
    group_names : dict
        ``{group: rlnOpticsGroupName}`` (``"opticsGroupN"`` where the STAR names none).
    apix : ndarray ``(n,)`` float64 or None
        Each particle's pixel size in Å from the STAR (None: the STAR gives none).
    image_size : ndarray ``(n,)`` int64 or None
        ``rlnImageSize`` (px) of each particle's group, None where absent.
    image_names : list of str
        ``rlnImageName`` as written.
    stack_names : list of str
        The stacks named, in order of first appearance (as written, not resolved).
    stack_of, index : ndarray ``(n,)`` int64
        Each particle's stack (into ``stack_names``) and 0-based index in it.
    bare : ndarray ``(n,)`` bool
        Names without ``index@``: single-image files.
    has_poses : bool
        The STAR has ``rlnAngleRot/Tilt/Psi``.
    euler : ndarray ``(n, 3)``
        ``(rot, tilt, psi)`` in degrees (0 where absent).
    origin_unit : str or None
        ``"Å"`` (``rlnOriginXAngst/YAngst``), ``"px"`` (``rlnOriginX/Y``, RELION 3.0) or None.
    origins : ndarray ``(n, 2)``
        The origin columns as written (unit ``origin_unit``; 0 where absent).
    ctf : CTFParams or None
        None when the STAR has no ``rlnDefocusU``.
    notes : list of str
        Warnings about the STAR for the run's log (a CTF value defaulted, B-factors < 0).
    """

    star_path: Path
    particles: object
    optics: object
    group: np.ndarray
    group_names: dict
    apix: np.ndarray | None
    image_size: np.ndarray | None
    image_names: list
    stack_names: list
    stack_of: np.ndarray
    index: np.ndarray
    bare: np.ndarray
    has_poses: bool
    euler: np.ndarray
    origin_unit: str | None
    origins: np.ndarray
    ctf: CTFParams | None = field(default=None)
    notes: list = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of particles."""
        return len(self.particles)

    def shifts_A(self, apix=None) -> np.ndarray:
        """Origins ``(n, 2)`` in Å: as written when in Å, else px × each particle's pixel size
        (``apix``: Å, scalar or ``(n,)``; default the STAR's own)."""
        if self.origin_unit != "px":
            return self.origins.copy()
        a = self.apix if apix is None else np.broadcast_to(np.asarray(apix, np.float64), (self.n,))
        if a is None:
            raise ValueError("origins in px need a pixel size")
        return self.origins * np.asarray(a, np.float64)[:, None]

    def subset(self, keep: np.ndarray) -> "StarParticles":
        """The particles where the boolean mask ``keep`` is True (tables re-indexed)."""
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        return StarParticles(
            self.star_path, self.particles[keep].reset_index(drop=True), self.optics,
            self.group[keep], self.group_names, pick(self.apix), pick(self.image_size),
            [s for s, k in zip(self.image_names, keep) if k], self.stack_names, self.stack_of[keep],
            self.index[keep], self.bare[keep], self.has_poses, self.euler[keep], self.origin_unit,
            self.origins[keep], None if self.ctf is None else self.ctf.subset(keep), list(self.notes))


def _read_tables(star_path: Path):
    """``(particles, optics)`` DataFrames of a STAR, checked: numeric columns, complete rows."""
    import starfile

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
    if optics is not None and len(optics):
        optics = optics.reset_index(drop=True).copy()
        _check_numeric(optics, "optics", star_path)
        _check_complete(optics, "optics", star_path)
    else:
        optics = None
    return particles, optics


def _merge_optics(particles, optics, star_path: Path):
    """Copy each optics group's ``rln`` columns into its particles' rows (in place); return
    ``(group (n,), {group: name})``."""
    n = len(particles)
    if optics is None:
        g = (particles["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in particles.columns
             else np.ones(n))
        groups = np.asarray(g, dtype=np.int64)
        return groups, {int(k): f"opticsGroup{int(k)}" for k in np.unique(groups)}
    if "rlnOpticsGroup" not in optics.columns or "rlnOpticsGroup" not in particles.columns:
        raise InputError("optics table without rlnOpticsGroup", star_path)
    og = optics.set_index("rlnOpticsGroup")
    if not og.index.is_unique:
        raise InputError(f"optics groups defined twice: {sorted(og.index[og.index.duplicated()].tolist())}",
                         star_path)
    missing = set(particles["rlnOpticsGroup"]) - set(og.index)
    if missing:
        raise InputError(f"particles refer to undefined optics groups {sorted(missing)}", star_path)
    for colname in og.columns:
        if colname not in particles.columns and colname.startswith("rln"):
            particles[colname] = particles["rlnOpticsGroup"].map(og[colname]).to_numpy()
    names = (og["rlnOpticsGroupName"].astype(str).to_dict() if "rlnOpticsGroupName" in og.columns
             else {k: f"opticsGroup{k}" for k in og.index})
    return (particles["rlnOpticsGroup"].to_numpy().astype(np.int64),
            {int(k): str(v) for k, v in names.items()})


def _pixel_sizes(particles, star_path: Path):
    """Each particle's pixel size (Å) from the STAR, or None (see the module docstring)."""
    cols = set(particles.columns)
    if "rlnImagePixelSize" in cols:
        apix = particles["rlnImagePixelSize"].to_numpy(np.float64)
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= cols:
        with np.errstate(divide="ignore", invalid="ignore"):
            apix = (particles["rlnDetectorPixelSize"].to_numpy(np.float64) * 1e4
                    / particles["rlnMagnification"].to_numpy(np.float64))
    else:
        return None
    if not np.all(np.isfinite(apix)) or np.any(apix <= 0):
        raise InputError(f"pixel size must be > 0 Å, got {np.unique(apix).tolist()}", star_path)
    return apix


def _image_locations(names, star_path: Path):
    """``rlnImageName`` entries -> ``(stack names, stack_of, index (0-based), bare)``; a name
    without ``index@`` is a single-image file (RELION)."""
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
        stack_of[i], index[i] = stack_ids.setdefault(fname, len(stack_ids)), k - 1
    return list(stack_ids), stack_of, index, bare


def _read_ctf(p, star_path: Path):
    """``(CTFParams or None, notes)``: per-particle CTF parameters (RELION units) from the
    merged rows, and warnings for the log.

    Absent columns take RELION's ``CTF::read`` defaults where a real pipeline leaves them out
    (``rlnAmplitudeContrast`` 0, noted: pyem's csparc2star writes none when cryoSPARC's file
    has none; ``rlnPhaseShift`` 0, ``rlnCtfBfactor`` 0, ``rlnCtfScalefactor`` 1); defoci,
    voltage and Cs must be there.
    """
    if "rlnDefocusU" not in p.columns:
        return None, []
    n = len(p)
    notes = []

    def col(name, default):
        if name in p.columns:
            return p[name].to_numpy(np.float64)
        if default is None:
            raise InputError(f"column {name} is missing (needed for the CTF)", star_path)
        return np.full(n, float(default))

    if "rlnAmplitudeContrast" not in p.columns:
        notes.append(f"{star_path}: warning: no rlnAmplitudeContrast column: amplitude contrast 0 "
                     f"is used, as RELION reads such a STAR (typical values are 0.07-0.1)")
    ctf = CTFParams(
        defocus_u=col("rlnDefocusU", None),
        defocus_v=col("rlnDefocusV", None) if "rlnDefocusV" in p.columns else col("rlnDefocusU", None),
        defocus_angle=col("rlnDefocusAngle", 0.0),
        voltage=col("rlnVoltage", None),
        cs=col("rlnSphericalAberration", None),
        amplitude_contrast=col("rlnAmplitudeContrast", 0.0),
        phase_shift=col("rlnPhaseShift", 0.0),
        bfactor=col("rlnCtfBfactor", 0.0),
        scale=col("rlnCtfScalefactor", 1.0),
    )
    if np.any(ctf.voltage <= 0):
        raise InputError("voltage must be > 0 kV", star_path)
    if np.any(ctf.scale <= 0):
        r = int(np.flatnonzero(ctf.scale <= 0)[0])
        raise InputError(f"column rlnCtfScalefactor, row {r + 1}: value {ctf.scale[r]:g} must be > 0 "
                         f"(the CTF is multiplied by it)", star_path)
    neg = ctf.bfactor < 0
    if neg.any():
        notes.append(f"{star_path}: warning: rlnCtfBfactor < 0 on {int(neg.sum())} of {n} particles "
                     f"(down to {ctf.bfactor.min():g} Å²): RELION's envelope exp(-B s²/4) amplifies "
                     f"their high frequencies (Warp's particle series write -4 × the dose there, "
                     f"meant as a decay)")
    return ctf, notes


def parse_star(star_path) -> StarParticles:
    """Read a particle STAR file into a :class:`StarParticles` without opening any image.

    Parameters
    ----------
    star_path : str or Path
        RELION 3.1+ (optics + particles tables) or 3.0 (single table) particle STAR.

    Raises
    ------
    InputError
        Missing/unparsable STAR, no particle table, a non-numeric or missing value, undefined
        optics groups, pixel size ≤ 0, a bad ``rlnImageName``, CTF columns missing.
    """
    star_path = Path(star_path)
    particles, optics = _read_tables(star_path)
    group, group_names = _merge_optics(particles, optics, star_path)
    apix = _pixel_sizes(particles, star_path)
    size = particles["rlnImageSize"].to_numpy().astype(np.int64) if "rlnImageSize" in particles.columns else None
    names = particles["rlnImageName"].astype(str).to_numpy()
    stack_names, stack_of, index, bare = _image_locations(names, star_path)
    cols = set(particles.columns)
    has_poses = {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= cols
    euler = (particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64)
             if has_poses else np.zeros((len(particles), 3)))
    if {"rlnOriginXAngst", "rlnOriginYAngst"} <= cols:
        unit, origins = "Å", particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(np.float64)
    elif {"rlnOriginX", "rlnOriginY"} <= cols:
        unit, origins = "px", particles[["rlnOriginX", "rlnOriginY"]].to_numpy(np.float64)
    else:
        unit, origins = None, np.zeros((len(particles), 2))
    ctf, notes = _read_ctf(particles, star_path)
    return StarParticles(star_path, particles, optics, group, group_names, apix, size,
                         [str(s) for s in names], stack_names, stack_of, index, bare, has_poses,
                         euler, unit, origins, ctf, notes)
