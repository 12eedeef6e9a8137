"""The output folder a run owns: checked before any work, then locked and cleared of dead runs'
temps, as one step (:func:`prepare_run_dir`).

A run (``rmfn reconstruct``, ``simulate``, ``fit-image`` and their Python entry points) calls
:func:`prepare_run_dir` before it reads its data or trains:

1. :func:`check_output_dir` refuses, with one :class:`OutputDirError` line naming the folder,
   an ``--out`` that is a file, a folder (or, for a new one, its nearest existing parent) that
   cannot be written — ``os.access`` *and* a real probe file, since root ignores mode bits but
   a read-only mount does not — or a file system with less free space than the run's
   estimated outputs (the ``estimate_*`` functions below); then it creates the folder.
2. :class:`~rmfn_napari.engine.runlock.RunLock` takes ``.rmfn.lock`` in the folder (one run at
   a time; stale locks of dead runs taken over with a warning).
3. :func:`~rmfn_napari.engine.atomic.clean_stale_temps` removes the temp files that dead runs
   left in the folder.

Writes into the folder go through :func:`rmfn_napari.engine.atomic.atomic_path`.

Disk-space estimates (bytes; each is checked against ``shutil.disk_usage(folder).free``)
---------------------------------------------------------------------------------------
``D`` box (px), ``n`` particles, ``L`` scales (layers), ``h`` hidden width; an MRC header is
1024 bytes; every estimate adds 64 KiB of slack for small files and file-system blocks.

* simulate: stack ``1024 + 4·n·D²`` + reference map ``1024 + 4·D³`` + the two STARs
  ``512·n + 8 KiB`` (a particles.star row is ~150 bytes, a true_poses.star row ~300).
* reconstruct: maps ``(L + 4)·(1024 + 4·D³)`` (``scale_1..L.mrc``, the two half-maps,
  ``map.mrc``, ``mask_auto.mrc``) + the checkpoint twice (the new one is written beside the
  old: ``2·(12·L·(h² + 8h) + 88·n + 64 KiB)``: network weights and two Adam moments in float32,
  rotations and offsets in float64) + ``poses.star`` ``400·n`` + 1 MiB for metrics.json and
  run.log. An unknown ``D`` or ``n`` (before the STAR is read) counts as 0, so the estimate
  is a lower bound until the driver repeats the check with the dataset's box and size.
* fit-image: per scale, ``scale_k.tif`` ``4·h'·w'·C`` and ``spectrum_k.tif`` ``4·h'·w'``
  (``h' × w'`` the training image, ``C`` 1 or 3 channels) + 8 KiB of TIFF header each,
  metrics.json, and the checkpoint twice (``2·(L·(4·h'·w'·C + 12·(h² + 8h)) + 64 KiB)``: each
  stage's image at its end, the network's weights and two Adam moments).
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputDirError
from .atomic import _EDQUOT, NO_ROOM_ERRNOS, _size, clean_stale_temps
from .runlock import RunLock, _hostname

__all__ = [
    "OutputDirError", "RESULT_PATTERNS", "check_output_dir", "estimate_fit_image_bytes",
    "estimate_reconstruct_bytes", "estimate_simulate_bytes", "existing_results", "new_run_dir",
    "next_free_dir", "prepare_run_dir", "runs_home",
]

_MRC_HEADER = 1024
_SLACK = 64 * 2**10
#: errno values of a write that failed because the disk (or quota) is full or read-only.
_NO_ROOM = NO_ROOM_ERRNOS | {errno.EROFS}


# ------------------------------------------------------------------------------ estimates
def estimate_simulate_bytes(n: int, box: int) -> int:
    """Bytes ``rmfn simulate`` writes for ``n`` particles of ``box`` px (see the module doc)."""
    n, box = int(n), int(box)
    stack = _MRC_HEADER + 4 * n * box * box
    reference = _MRC_HEADER + 4 * box**3
    stars = 512 * n + 8 * 2**10
    return stack + reference + stars + _SLACK


def estimate_reconstruct_bytes(box: int | None = None, n_particles: int | None = None,
                               n_layers: int = 1, hidden: int = 256) -> int:
    """Bytes ``rmfn reconstruct`` writes (see the module doc); an unknown ``box`` or
    ``n_particles`` (None) counts as 0, which makes it a lower bound."""
    d = int(box or 0)
    n = int(n_particles or 0)
    L, h = max(int(n_layers), 1), max(int(hidden), 1)
    maps = (L + 4) * (_MRC_HEADER + 4 * d**3) if d else 0
    checkpoint = 12 * L * (h * h + 8 * h) + 88 * n + _SLACK
    return maps + 2 * checkpoint + 400 * n + 2**20 + _SLACK


def estimate_fit_image_bytes(shape, downsample: int, n_scales: int, hidden: int = 256) -> int:
    """Bytes ``rmfn fit-image`` writes for an image of ``shape`` ``(H, W[, C])`` trained at
    ``H/downsample × W/downsample`` with ``n_scales`` scales of width ``hidden`` (see the module
    doc): per scale its image and spectrum, and ``checkpoint.pt`` twice (it is replaced through
    a temp): each scale's image at its stage end and the network's weights with Adam's two
    moments (12 bytes per weight, about ``hidden² + 8·hidden`` weights a scale)."""
    f = max(int(downsample), 1)
    h, w = int(shape[0]) // f, int(shape[1]) // f
    channels = 3 if len(shape) == 3 and int(shape[2]) in (3, 4) else 1
    per_scale = 4 * h * w * channels + 4 * h * w + 2 * 8 * 2**10
    checkpoint = int(n_scales) * (4 * h * w * channels + 12 * (int(hidden) ** 2 + 8 * int(hidden))) + 64 * 2**10
    return int(n_scales) * per_scale + 2 * checkpoint + _SLACK


# --------------------------------------------------------------------------- folder check
def _probe_writable(anc: Path, folder: Path) -> None:
    """Create and delete a file in ``anc``: the only test that also catches a read-only mount,
    an immutable folder or a full disk when running as root."""
    what = "folder is not writable" if anc == folder.absolute() else \
        f"cannot create the folder: {anc} is not writable"
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputDirError(f"{what} (permission denied)", folder)
    probe = anc / f".rmfn-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, _EDQUOT):
            raise OutputDirError(f"no free space left on the file system of {anc}", folder) from None
        raise OutputDirError(f"{what} ({exc.strerror or exc})", folder) from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:  # pragma: no cover - we just created it
        pass


def check_output_dir(path, needed_bytes: int = 0, what: str = "the outputs") -> Path:
    """Check that ``path`` can take a run's outputs, then create it.

    Parameters
    ----------
    path : str or Path
        The output folder (``--out``).
    needed_bytes : int
        Estimated size of the outputs (``estimate_*``); 0 skips the free-space check.
    what : str
        What the outputs are, for the message (e.g. ``"simulate (2000 particles of 64 px)"``).

    Returns
    -------
    Path
        The folder (created if needed).

    Raises
    ------
    OutputDirError
        One line naming the folder: it exists as a file; it (or, when it does not exist yet,
        its nearest existing parent) is not writable; its file system has less free space
        than ``needed_bytes``; it cannot be created.
    """
    if path is None or not str(path).strip():
        raise OutputDirError("no output folder given (--out is empty)")
    folder = Path(path)  # as the writers will use it (no ~ expansion: the shell does that)
    if folder.exists() and not folder.is_dir():
        raise OutputDirError("exists and is a file, not a folder; choose another --out", folder)
    if folder.is_symlink() and not folder.exists():
        raise OutputDirError("is a broken symbolic link", folder)
    anc = folder.absolute()
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise OutputDirError(f"cannot create the folder: {anc} is a file", folder)
    _probe_writable(anc, folder)
    if needed_bytes and needed_bytes > 0:
        try:
            free = shutil.disk_usage(anc).free
        except OSError as exc:  # pragma: no cover - the probe passed
            raise OutputDirError(f"cannot read the free space ({exc.strerror})", folder) from None
        if free < needed_bytes:
            raise OutputDirError(f"not enough free space for {what}: {_size(free)} free, about "
                                 f"{_size(needed_bytes)} needed", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create the folder ({exc.strerror or exc})", folder) from None
    return folder


# ------------------------------------------------------------------------------ together
@contextmanager
def prepare_run_dir(path, needed_bytes: int = 0, what: str = "the outputs"):
    """Everything a run does with its output folder before any work, as one context manager.

    :func:`check_output_dir` (refusals are one :class:`OutputDirError` line), :class:`RunLock`
    for the whole block, :func:`clean_stale_temps`; yields the lock. Inside the block an
    ``OSError`` of a full disk, quota or read-only file system becomes one
    :class:`OutputDirError` line naming the folder. When the block fails with an exception (a
    refused input, a full disk; not Ctrl-C) and the folder did not exist before, it is removed
    again if empty.
    """
    existed = path is not None and Path(path).exists()
    folder = check_output_dir(path, needed_bytes, what)
    try:
        with RunLock(folder) as lock:
            stale = lock.took_over or {}
            dead = [stale["pid"]] if stale.get("host") == _hostname() and "pid" in stale else []
            clean_stale_temps(folder, before=lock.acquired_at, dead_pids=dead)
            try:
                yield lock
            except OSError as exc:
                if exc.errno not in _NO_ROOM or isinstance(exc, OutputDirError):
                    raise  # (a DiskFullError from an atomic write already names its file)
                where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
                raise OutputDirError(f"cannot write {what}: {exc.strerror or exc}{where}", folder) from exc
    except Exception:  # refused or failed (not interrupted: Ctrl-C keeps the folder, as before)
        if not existed:
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


# ------------------------------------------------------------------- where runs go by default
#: File names (glob patterns) that mark a folder as holding a run's results.
RESULT_PATTERNS = (
    "metrics.json", "run.log", "checkpoint.pt", "poses.star", "map.mrc", "half_map_*.mrc",
    "mask_auto.mrc", "reference.mrc", "scale_*.mrc", "scale_*.tif", "spectrum_*.tif",
)


def runs_home() -> Path:
    """The folder that holds the runs' default output folders: ``$RMFN_NAPARI_HOME`` when set,
    else ``~/rmfn-napari`` (not created here)."""
    env = os.environ.get("RMFN_NAPARI_HOME", "").strip()
    return Path(env).expanduser() if env else Path.home() / "rmfn-napari"


def next_free_dir(folder) -> Path:
    """``folder`` if nothing exists there, else the first free ``<folder>-2``, ``-3``, …"""
    folder = Path(folder)
    if not folder.exists():
        return folder
    k = 2
    while (folder.parent / f"{folder.name}-{k}").exists():
        k += 1
    return folder.parent / f"{folder.name}-{k}"


def new_run_dir(task: str, when: float | None = None) -> Path:
    """A fresh (not yet created) output folder for a run of ``task`` starting at ``when``
    (seconds since the epoch, default now): ``runs_home() / "<task>-YYYYmmdd-HHMMSS"``, with
    ``-2``, ``-3``… appended if that name is taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return next_free_dir(runs_home() / f"{task}-{stamp}")


def existing_results(folder, patterns=RESULT_PATTERNS) -> list[str]:
    """Sorted names of the files in ``folder`` that a run would write or overwrite (those
    matching ``patterns``); empty when the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = {p.name for pattern in patterns for p in folder.glob(pattern) if p.is_file()}
    return sorted(found)
