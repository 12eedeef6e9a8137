"""Atomic writes: one implementation of the temp name, the fsyncs and the rename that put a file
in place all-or-nothing, and the clean-up of the temps that dead runs left behind.

Writes go through :func:`atomic_path`: a temp name in the same folder (:func:`temp_path_for`,
``.NAME.tmp-PID``), fsync, :func:`os.replace` (:func:`replace_synced`), fsync of the folder.
:func:`replace_no_clobber` puts a file in place only if nothing is there (a hard link, atomic),
for runs that must not replace outputs. Writers of several files that must appear all or none
write every temp first, then move each with :func:`replace_synced` or
:func:`replace_no_clobber`, then :func:`fsync_dir` once.

:func:`clean_stale_temps` removes the temp files that dead runs left in a folder: names from
:func:`temp_path_for` (used by ``cryoem.io.atomic_path``, the simulated stack
``.particles.mrcs.tmp-PID``, the fit-image and reconstruction outputs) when PID is not alive;
and pid-less temps (``tempfile.mkstemp`` names of earlier versions: the reconstruction's
``.checkpoint.*.pt`` and ``.metrics.*.json``) when they are older than the lock this run took.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..errors import DiskFullError, OutputDirError
from .runlock import _held_lock, _pid_alive, _pid_started_after

__all__ = [
    "NO_ROOM_ERRNOS", "atomic_path", "clean_stale_temps", "fsync_dir", "fsync_file",
    "replace_no_clobber", "replace_synced", "temp_path_for", "write_failure",
]

log = logging.getLogger(__name__)


def temp_path_for(path) -> Path:
    """The temp name a write of ``path`` uses: ``.NAME.tmp-PID`` in the same folder (the pid
    lets :func:`clean_stale_temps` tell a dead run's temp from a live one's)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_file(path) -> None:
    """Flush ``path``'s data to the disk (file systems that cannot are ignored)."""
    try:
        fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    """Flush a folder's entries (a rename in it) to the disk; best effort, POSIX only."""
    if os.name == "nt":  # pragma: no cover
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_synced(tmp, final) -> None:
    """Move the finished temp ``tmp`` onto ``final`` (:func:`os.replace`, atomic), its data
    fsynced first. The caller fsyncs the folder (:func:`fsync_dir`) after its last move."""
    fsync_file(tmp)
    os.replace(tmp, final)


#: errno values of a write that failed for want of room: disk full, quota exceeded, file too big
_EDQUOT = getattr(errno, "EDQUOT", errno.ENOSPC)
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, _EDQUOT, errno.EFBIG})
#: how torch.save (its PytorchStreamWriter, inline_container.cc) reports a failed write: a
#: RuntimeError without an errno ("file write failed", "unexpected pos 64 vs 0")
_TORCH_WRITE_FAILED = re.compile(
    r"PytorchStreamWriter|inline_container|file write failed|unexpected pos|iostream error", re.IGNORECASE)


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def write_failure(exc: BaseException, path) -> DiskFullError | None:
    """The one-line :class:`~rmfn_napari.errors.DiskFullError` naming ``path`` for a write of it
    that failed for want of room, or ``None`` when ``exc`` is something else (a bug, a refused
    value, Ctrl-C).

    Recognised: an ``OSError`` with ENOSPC, EDQUOT or EFBIG, and the ``RuntimeError`` that
    ``torch.save`` raises when its writes fail (no errno: "unexpected pos 64 vs 0", "file write
    failed", "iostream error"). The folder's free space is measured and said:
    ``PATH: disk full (0 bytes free): No space left on device; not written, ...``."""
    if isinstance(exc, OutputDirError):
        return None
    try:
        free_bytes = shutil.disk_usage(Path(path).absolute().parent).free
    except OSError:
        free_bytes = None
    free = "free space unknown" if free_bytes is None else f"{_size(free_bytes)} free"
    if isinstance(exc, OSError):
        if exc.errno not in NO_ROOM_ERRNOS:
            return None
        code = exc.errno
        cause = {errno.EFBIG: "file too large for the file system",
                 _EDQUOT: "disk quota exceeded"}.get(exc.errno, "disk full")
        detail = exc.strerror or os.strerror(exc.errno)
    elif isinstance(exc, RuntimeError) and _TORCH_WRITE_FAILED.search(str(exc)):
        code = errno.ENOSPC
        first = (str(exc).strip().splitlines() or ["write failed"])[0][:120]
        detail = f"torch.save failed ({first})"
        # no errno: a full disk when it has (almost) no room left, else say only what failed
        cause = "disk full" if free_bytes is None or free_bytes < 16 * 2**20 else "write failed"
    else:
        return None
    return DiskFullError(f"{cause} ({free}): {detail}; not written, its earlier version (if any) "
                         "untouched", path, code)


@contextmanager
def atomic_path(path):
    """Yield a temp path next to ``path`` (:func:`temp_path_for`); on success it is fsynced and
    renamed onto ``path`` (:func:`replace_synced`). On any exception (KeyboardInterrupt too) the
    temp file is removed and ``path`` is left untouched.

    A write that fails for want of room (:func:`write_failure`: ENOSPC, EDQUOT, EFBIG, or
    ``torch.save``'s RuntimeError on a failed write) is raised as one :class:`OutputDirError`
    line naming ``path``: "disk full (N free)"."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        yield tmp
        replace_synced(tmp, path)
    except BaseException as exc:
        failure = write_failure(exc, path)  # measured before the temp's space is given back
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if failure is not None:
            raise failure from exc
        raise
    fsync_dir(path.parent)


def replace_no_clobber(tmp, final) -> None:
    """Move ``tmp`` to ``final`` only if ``final`` does not exist, atomically (a hard link, then
    the temp name removed). Where hard links are not supported, the existence check and the
    rename are two steps.

    Raises
    ------
    OutputDirError
        ``final`` exists (another run wrote it meanwhile); ``tmp`` is left in place.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_file(tmp)
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise OutputDirError("was written by another run meanwhile; not replacing it (use overwrite)",
                             final) from None
    except (OSError, NotImplementedError, AttributeError):  # no hard links here
        if os.path.lexists(final):
            raise OutputDirError("was written by another run meanwhile; not replacing it "
                                 "(use overwrite)", final) from None
        os.replace(tmp, final)
    else:
        os.unlink(tmp)
    fsync_dir(final.parent)


# ---------------------------------------------------------------------------- stale temps
#: temps named by :func:`temp_path_for` (``.NAME.tmp-PID``) and the write probe of
#: :func:`rmfn_napari.engine.outdir.check_output_dir`
_PID_TEMPS = (re.compile(r"^\..+\.tmp-(\d+)$"), re.compile(r"^\.rmfn-probe-(\d+)-[0-9a-f]+$"))
#: temps without a pid: tempfile.mkstemp names of earlier versions of the reconstruction
#: (checkpoint, metrics) and of the fit-image writer
_ANON_TEMPS = (
    re.compile(r"^\.checkpoint\.[A-Za-z0-9_]+\.pt$"),
    re.compile(r"^\.metrics\.[A-Za-z0-9_]+\.json$"),
    re.compile(r"^\.(?:scale|spectrum)_\d+\.tif\.[A-Za-z0-9_]+\.tif$"),
    re.compile(r"^\.metrics\.json\.[A-Za-z0-9_]+\.json$"),
)


def clean_stale_temps(path, before: float | None = None, dead_pids=()) -> list[Path]:
    """Remove the temp files that dead runs left in folder ``path`` (not in sub-folders).

    * ``.NAME.tmp-PID`` (:func:`temp_path_for`) and write probes: removed when PID is not alive
      on this host, is in ``dead_pids`` (the owner of a stale lock just taken over), or now
      belongs to a process started after the file was last written (the pid was reused) —
      never this process's own.
    * ``.checkpoint.*.pt``, ``.metrics.*.json`` (no pid in the name): removed when last written
      before ``before`` — the time the current run took the folder's lock, so they can only be
      a dead run's. Default: the ``acquired_at`` of the lock this process holds on ``path``;
      without one they are left alone.

    Returns
    -------
    list of Path
        The files removed (a warning in the log names them).
    """
    folder = Path(path)
    if before is None:
        held = _held_lock(folder)
        before = None if held is None else held.acquired_at
    dead = {int(p) for p in dead_pids}
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            name = entry.name
            stale = False
            m = next((m for m in (r.match(name) for r in _PID_TEMPS) if m), None)
            if m is not None:
                pid = int(m.group(1))
                if pid != os.getpid():
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                    stale = pid in dead or not _pid_alive(pid) or _pid_started_after(pid, mtime)
            elif before is not None and any(r.match(name) for r in _ANON_TEMPS):
                stale = entry.stat(follow_symlinks=False).st_mtime < before
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("%s: cannot remove stale temp file %s (%s)", folder, entry.name, exc.strerror)
    if removed:
        log.warning("%s: removed %d temp file(s) left by runs that ended without finishing: %s",
                    folder, len(removed), ", ".join(p.name for p in removed))
    return removed
