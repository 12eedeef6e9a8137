"""MRC headers read and validated before anything is allocated; data read in ``[z, y, x]`` order.

One implementation for every reader (maps, particle stacks, napari): :func:`read_mrc_header`
checks each field that sizes something (``nx, ny, nz``, ``mode``, ``nsymbt``, ``mz``) and the
axis order (``mapc/mapr/maps``) against the file size, reading only the 1024-byte header;
:func:`read_mrc_data` then reads (or memory-maps) exactly the announced data block and puts
its axes in ``[z, y, x]`` order. Problems are one :class:`~rmfn_napari.errors.InputError` line
naming the file. mrcfile is used for the header layout only (and, elsewhere, for writing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["MMAP_THRESHOLD_BYTES", "MRC_MODES", "MrcLayout", "read_mrc_header", "read_mrc_data"]

#: MRC data modes read here, as numpy dtypes (mode 6 is unsigned 16-bit, 12 is float16).
MRC_MODES = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2"}
MRC_HEADER_BYTES = 1024
#: The readers (napari's, a run folder's) memory-map a data block larger than this instead of
#: reading it (``read_mrc_data(..., mmap_bytes=MMAP_THRESHOLD_BYTES)``).
MMAP_THRESHOLD_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class MrcLayout:
    """An MRC file's header, checked against the file's size before anything is allocated.

    Attributes
    ----------
    path : Path
    shape : tuple of int
        Data block as stored: ``(sections, rows, columns)``; ``(rows, columns)`` for a single
        image (space group 0, one section); ``(volumes, mz, rows, columns)`` for a volume stack
        (space group 401–630).
    dtype : numpy.dtype
        Voxel type, in the file's byte order.
    offset, nbytes : int
        Bytes before the data block (1024 + the ``nsymbt`` bytes of extended header), and in it.
    voxel : (float, float, float)
        Voxel size ``(x, y, z)`` in Å (``cella / mx`` …; 0 where the header leaves it unset).
    axis_order : (int, int, int)
        ``(mapc, mapr, maps)``: the axis (1 = x, 2 = y, 3 = z) along columns, rows, sections.
    origin : (float, float, float)
        Header origin ``(x, y, z)`` in Å.
    ispg : int
        Space group (0 = image stack).
    """

    path: Path
    shape: tuple
    dtype: np.dtype
    offset: int
    nbytes: int
    voxel: tuple
    axis_order: tuple
    origin: tuple
    ispg: int


def read_mrc_header(path) -> MrcLayout:
    """Read and validate the 1024-byte header of an MRC file; reads nothing else.

    Every field that sizes something (``nx, ny, nz``, ``mode``, ``nsymbt``, ``mz``) and the
    axis order are checked, and the data block they announce must fit in the file, so a
    corrupt or hostile header costs 1 KiB of memory, never an allocation of what it declares.

    Raises
    ------
    InputError
        One line naming the file and the first problem found.
    """
    from mrcfile.dtypes import HEADER_DTYPE

    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder, not an MRC file", path)
    if not path.is_file():
        raise InputError("file not found", path)
    size = path.stat().st_size
    if size < MRC_HEADER_BYTES:
        raise InputError(f"not an MRC file: {size} bytes, shorter than the 1024-byte header", path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MRC_HEADER_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror})", path) from None
    h = np.frombuffer(raw, dtype=HEADER_DTYPE)[0]
    if bytes(h["map"])[:3] != b"MAP":
        raise InputError("not an MRC file (no 'MAP' identifier at byte 208)", path)
    stamp = tuple(int(b) for b in h["machst"][:2])
    if stamp[0] == 0x44 and stamp[1] in (0x44, 0x41):
        order = "<"
    elif stamp == (0x11, 0x11):
        order = ">"
    else:
        raise InputError(f"unrecognised machine stamp {stamp} (byte order unknown)", path)
    h = np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder(order))[0]
    fields = ("nx", "ny", "nz", "mode", "mz", "ispg", "nsymbt")
    nx, ny, nz, mode, mz, ispg, ext = (int(h[k]) for k in fields)
    if min(nx, ny, nz) < 1:
        raise InputError(f"header declares nx, ny, nz = {nx}, {ny}, {nz}; each must be >= 1", path)
    if mode not in MRC_MODES:
        raise InputError(f"unsupported data mode {mode} (supported: {sorted(MRC_MODES)})", path)
    if ext < 0 or MRC_HEADER_BYTES + ext > size:
        raise InputError(f"header declares a {ext}-byte extended header (nsymbt) but the file "
                         f"has {size} bytes", path)
    axes = tuple(int(h[k]) for k in ("mapc", "mapr", "maps"))
    if axes == (0, 0, 0):  # unset: the default order
        axes = (1, 2, 3)
    if sorted(axes) != [1, 2, 3]:
        raise InputError(f"invalid axis order mapc, mapr, maps = {axes} "
                         "(must be a permutation of 1, 2, 3)", path)
    if 401 <= ispg <= 630:  # volume stack
        if mz < 1 or nz % mz:
            raise InputError(f"volume stack with nz = {nz} not a multiple of mz = {mz}", path)
        shape = (nz // mz, mz, ny, nx)
    else:
        shape = (ny, nx) if ispg == 0 and nz == 1 else (nz, ny, nx)
    dtype = np.dtype(MRC_MODES[mode]).newbyteorder(order)
    offset = MRC_HEADER_BYTES + ext
    nbytes = nx * ny * nz * dtype.itemsize  # Python ints: no overflow
    if offset + nbytes > size:
        raise InputError(f"truncated file or wrong header: {'x'.join(map(str, shape))} "
                         f"{dtype.name} voxels need {offset + nbytes} bytes, the file has {size}", path)
    m = (int(h["mx"]), int(h["my"]), int(h["mz"]))
    cell = (float(h["cella"]["x"]), float(h["cella"]["y"]), float(h["cella"]["z"]))
    voxel = tuple(c / k if k > 0 else 0.0 for c, k in zip(cell, m))
    origin = tuple(float(h["origin"][k]) for k in ("x", "y", "z"))
    return MrcLayout(path, shape, dtype, offset, nbytes, voxel, axes, origin, ispg)


def _stack_transposed(lay: MrcLayout) -> bool:
    """Whether a stack's images are stored transposed (``mapc, mapr = 2, 1``); refuses a
    stack whose sections are not images (``maps != 3``)."""
    if lay.axis_order[2] != 3:
        raise InputError(f"axis order mapc, mapr, maps = {lay.axis_order} stores x or y along "
                         "sections; an image stack needs maps = 3", lay.path)
    return lay.axis_order[:2] == (2, 1)


def read_mrc_data(lay: MrcLayout, stack: bool = False, mmap_bytes: int | None = None) -> np.ndarray:
    """The data block of a validated MRC file, with its axes in ``[z, y, x]`` order.

    Parameters
    ----------
    lay : MrcLayout
        From :func:`read_mrc_header`.
    stack : bool
        Read as an image stack ``[image, y, x]`` (see :func:`_stack_transposed`); otherwise the
        header's ``mapc/mapr/maps`` put the trailing three axes in ``[z, y, x]`` order (a 2D
        image: the lower-numbered axis along columns).
    mmap_bytes : int, optional
        Memory-map (read-only, file byte order) instead of reading when the block is larger.

    Returns
    -------
    ndarray
        A view (possibly transposed) of the data in its stored dtype, native byte order unless
        memory-mapped.
    """
    if mmap_bytes is not None and lay.nbytes > mmap_bytes:
        data = np.memmap(lay.path, dtype=lay.dtype, mode="r", offset=lay.offset, shape=lay.shape)
    else:
        data = np.empty(lay.shape, dtype=lay.dtype)
        with open(lay.path, "rb") as f:
            f.seek(lay.offset)
            if f.readinto(data) != lay.nbytes:  # the file shrank since its header was read
                raise InputError("truncated file (changed while being read)", lay.path)
        if not lay.dtype.isnative:
            data = data.byteswap(inplace=True).view(lay.dtype.newbyteorder("="))
    c, r, s = lay.axis_order
    if stack or data.ndim == 2:
        swap = _stack_transposed(lay) if stack else c > r
        return data.swapaxes(-1, -2) if swap else data
    if (c, r, s) == (1, 2, 3):
        return data
    stored = {s: 0, r: 1, c: 2}  # stored axis (0 = sections, 1 = rows, 2 = columns) of x, y, z
    lead = tuple(range(data.ndim - 3))
    return data.transpose(lead + tuple(len(lead) + stored[a] for a in (3, 2, 1)))
