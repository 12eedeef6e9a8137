"""One run at a time in an output folder: the lock file ``.rmfn.lock``, and the pid checks that
tell a live owner from a dead one.

:class:`RunLock` creates ``.rmfn.lock`` in the folder with ``O_CREAT | O_EXCL`` (atomic), holding
the owner's pid, host name and start time. A second run on the folder fails at once naming the
pid that holds it. A lock whose pid is no longer alive on this host (or whose pid now belongs to
a process started after the lock) is stale: it is taken over with a warning in the log. The lock
is removed when the run ends, on an exception too. A lock made on another host is never taken
over (its pid cannot be checked from here): delete it by hand. Within one process the lock is
re-entrant for the thread holding it (the CLI takes it, then the API entry point it calls takes
it again) and refused to other threads.

The pid helpers (:func:`_pid_alive`, :func:`_pid_started_after`) are shared with
:func:`rmfn_napari.engine.atomic.clean_stale_temps`, which uses them to tell a dead run's temp
files from a live one's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from ..errors import OutputDirError

__all__ = ["LOCK_NAME", "RunLock"]

log = logging.getLogger(__name__)

#: Name of the lock file a run keeps in its output folder.
LOCK_NAME = ".rmfn.lock"
_TAKEOVER_NAME = LOCK_NAME + ".takeover"


# ------------------------------------------------------------------------------ processes
def _proc_stat(pid: int):
    """``(state, start time in seconds since the epoch)`` from /proc, or None off Linux."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        ticks = os.sysconf("SC_CLK_TCK")
        return fields[0].decode(), btime + int(fields[19]) / ticks
    except (OSError, IndexError, ValueError, StopIteration, AttributeError):
        return None


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) would terminate it on Windows
        try:
            import psutil
        except ImportError:
            return True  # cannot tell: assume alive (a lock is then removed by hand)
        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    stat = _proc_stat(pid)
    return stat is None or stat[0] != "Z"


def _pid_started_after(pid: int, t: float, tolerance: float = 2.0) -> bool:
    """Whether the process now holding ``pid`` started after time ``t`` (so the pid was reused
    since ``t``). False when it cannot be told (no /proc)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[1] > t + tolerance


# ---------------------------------------------------------------------------------- lock
_held: dict = {}  # realpath of a folder -> {"thread", "depth", "lock"} for locks of this process
_held_guard = threading.Lock()


def _hostname() -> str:
    return socket.gethostname()


def _when(t) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "an unknown time"


class RunLock:
    """One run at a time in an output folder: the lock file ``.rmfn.lock``.

    Use as a context manager (``with RunLock(folder) as lock:``). Attributes after entry:
    ``acquired_at`` (time.time() when taken), ``took_over`` (the stale lock's content when
    one was taken over, else None), ``path`` (the lock file).

    Raises
    ------
    OutputDirError
        On entry, when another live run holds the folder (the message names its pid, host and
        start time), or when the lock file cannot be created.
    """

    #: an unreadable lock file older than this (s) is stale (a crash between create and write)
    corrupt_after_s = 10.0
    #: a takeover guard file older than this (s) is stale
    guard_after_s = 30.0

    def __init__(self, path):
        self.folder = Path(path)
        self.path = self.folder / LOCK_NAME
        self.acquired_at: float | None = None
        self.took_over: dict | None = None
        self.token: str | None = None
        self._key = None
        self._nested = False

    # -- context manager
    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- acquire
    def acquire(self) -> None:
        """Take the lock (see the class doc)."""
        key = os.path.realpath(self.folder)
        me = threading.get_ident()
        with _held_guard:
            entry = _held.get(key)
            if entry is not None:
                if entry["thread"] != me:
                    raise OutputDirError(
                        f"another run in this process (pid {os.getpid()}) is writing into this "
                        f"folder; wait for it to end or choose another --out", self.folder)
                entry["depth"] += 1
                outer = entry["lock"]
                self._key, self._nested = key, True
                self.acquired_at, self.took_over, self.token = outer.acquired_at, outer.took_over, outer.token
                return
            _held[key] = {"thread": me, "depth": 1, "lock": self}
        self._key = key
        try:
            self._acquire_file()
        except BaseException:
            with _held_guard:
                _held.pop(key, None)
            self._key = None
            raise

    def _acquire_file(self) -> None:
        token = uuid.uuid4().hex
        deadline = time.monotonic() + 5.0
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self._read()
                if info is None:  # removed meanwhile: try again
                    if time.monotonic() > deadline:
                        raise OutputDirError(f"cannot create the lock file {LOCK_NAME}: the name "
                                             f"exists but cannot be read", self.folder) from None
                    continue
                reason = self._stale_reason(info)
                if reason is None:
                    raise OutputDirError(self._held_message(info), self.folder) from None
                if self._take_over(info, reason):
                    continue
                if time.monotonic() > deadline:
                    raise OutputDirError(self._held_message(info), self.folder) from None
                time.sleep(0.05)
                continue
            except OSError as exc:
                raise OutputDirError(f"cannot create the lock file {LOCK_NAME} "
                                     f"({exc.strerror or exc})", self.folder) from None
            now = time.time()
            content = {"pid": os.getpid(), "host": _hostname(), "started": now,
                       "started_text": _when(now), "token": token,
                       "command": " ".join(sys.argv)[:300]}
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(content, f)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                try:
                    self.path.unlink()
                except OSError:
                    pass
                raise OutputDirError(f"cannot write the lock file {LOCK_NAME} "
                                     f"({exc.strerror or exc})", self.folder) from None
            self.acquired_at, self.token = now, token
            return

    def _read(self):
        """The lock file's content (dict; ``{"corrupt": True, ...}`` when unreadable after a
        short wait for its writer), or None when it no longer exists."""
        for _ in range(20):
            try:
                raw = self.path.read_bytes()
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            except OSError:
                raw, mtime = b"", time.time()
            try:
                info = json.loads(raw.decode())
                if isinstance(info, dict) and isinstance(info.get("pid"), int):
                    info["_raw"] = raw
                    return info
            except (ValueError, UnicodeDecodeError):
                pass
            time.sleep(0.05)  # its owner may be between creating and writing it
        return {"corrupt": True, "_raw": raw, "mtime": mtime}

    def _stale_reason(self, info: dict) -> str | None:
        if info.get("corrupt"):
            age = time.time() - info["mtime"]
            return "its lock file is unreadable" if age > self.corrupt_after_s else None
        pid, host = info["pid"], info.get("host")
        if host != _hostname():
            return None  # another machine's pid cannot be checked from here
        if pid == os.getpid():
            # this process holds no other lock on the folder (the registry says so): the file
            # was left by an earlier process that had the same pid (e.g. a restarted container)
            return f"pid {pid} was an earlier process"
        if not _pid_alive(pid):
            return f"pid {pid} is no longer running"
        started = info.get("started")
        if _pid_started_after(pid, float(started) if isinstance(started, (int, float)) else 0.0):
            return f"pid {pid} now belongs to another process"
        return None

    def _held_message(self, info: dict) -> str:
        if info.get("corrupt"):
            return (f"another run is creating its lock file {LOCK_NAME} in this folder; wait for "
                    f"it to end or choose another --out")
        host = info.get("host")
        other = "" if host == _hostname() else " (another machine: cannot tell if it still runs)"
        return (f"another run (pid {info['pid']} on {host}{other}, started "
                f"{_when(info.get('started'))}) is writing into this folder; wait for it to end "
                f"or choose another --out (if no such run exists, delete {self.path})")

    def _take_over(self, info: dict, reason: str) -> bool:
        """Remove a stale lock under a guard file (so two runs cannot both take it over);
        True when removed (then try to create the lock again)."""
        guard = self.folder / _TAKEOVER_NAME
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > self.guard_after_s:
                    guard.unlink()
            except OSError:
                pass
            return False
        except OSError as exc:
            raise OutputDirError(f"cannot take over a stale lock ({exc.strerror or exc})",
                                 self.folder) from None
        try:
            os.close(fd)
            now = self._read()
            if now is None:
                return True
            if now.get("_raw") != info.get("_raw"):
                return False  # someone else took it over first: look again
            self.path.unlink()
            self.took_over = {k: v for k, v in info.items() if k != "_raw"}
            log.warning("%s: took over the lock of an earlier run (%s, started %s): %s",
                        self.folder, f"pid {info.get('pid', '?')} on {info.get('host', '?')}",
                        _when(info.get("started")), reason)
            return True
        finally:
            try:
                guard.unlink()
            except OSError:
                pass

    # -- release
    def release(self) -> None:
        """Release the lock (remove the file if it is still ours)."""
        if self._key is None:
            return
        with _held_guard:
            entry = _held.get(self._key)
            if self._nested:
                if entry is not None:
                    entry["depth"] -= 1
                self._key = None
                return
        try:
            info = self._read()
            if info is not None and info.get("token") == self.token:
                self.path.unlink()
            elif info is not None:
                log.warning("%s: the lock file was replaced by another run; leaving it", self.folder)
        except OSError:
            pass
        finally:
            with _held_guard:
                _held.pop(self._key, None)
            self._key = None


def _held_lock(folder) -> RunLock | None:
    with _held_guard:
        entry = _held.get(os.path.realpath(folder))
    return None if entry is None else entry["lock"]
