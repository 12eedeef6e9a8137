"""Errors raised at the project's public boundary.

Every problem with user input (a file, a parameter) is raised as :class:`InputError`
with a message that names the file or parameter and says what is wrong, so that the CLI
and the widgets can show it as one line instead of a traceback from deep inside torch.
"""


class InputError(ValueError):
    """Bad user input: a missing/truncated/malformed file or an invalid parameter.

    The message names the file (or parameter) and the problem.
    """

    def __init__(self, message: str, path=None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class OutputDirError(InputError):
    """An output folder cannot be used: a file, not writable, too little free space, locked
    by another run, or a write into it failed (disk full). The message names the folder.

    Raised by :mod:`rmfn_napari.engine.outdir` (and imported from there), by the run lock
    (:mod:`~rmfn_napari.engine.runlock`) and by the atomic writes
    (:mod:`~rmfn_napari.engine.atomic`)."""


class DiskFullError(OutputDirError, OSError):
    """A file could not be written for want of room (disk full, quota exceeded, file too large;
    or ``torch.save``'s failed write). The message names the file and the free space.

    Both an :class:`InputError` (the CLI's one line and exit status 2) and an ``OSError`` (with
    ``errno`` ENOSPC or the original errno, and ``strerror``), so the callers that catch a
    failed write as ``OSError`` keep working. Raised by
    :func:`rmfn_napari.engine.atomic.atomic_path`."""

    def __init__(self, message: str, path=None, errno_: int | None = None):
        import errno as _errno

        super().__init__(message, path)
        self._line = f"{self.path}: {message}" if self.path else message
        self.errno = _errno.ENOSPC if errno_ is None else errno_
        self.strerror = message
        self.filename = self.path

    def __str__(self) -> str:  # the one line (not OSError's "[Errno 28] ...: 'path'")
        return self._line
