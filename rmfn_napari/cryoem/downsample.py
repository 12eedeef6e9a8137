"""Fourier cropping: downsample images and maps from a box of ``D`` px to ``D'`` px.

The centred Fourier transform (index ``j`` ↔ ``k = j − D/2`` cycles/box) is cropped to its
central ``D' × D'`` (``× D'``) window, ``k ∈ [−D'/2, D'/2)`` cycles/box, and transformed back
on the ``D'`` grid. The pixel size grows to ``apix' = apix·D/D'`` Å, so the field of view
``D·apix`` Å is kept and the new Nyquist is ``2·apix'`` Å. Values are scaled by ``(D'/D)²``
(images) or ``(D'/D)³`` (maps) so that the pixel values of a band-limited signal are kept:
a constant stays the same constant, a cosine below the new Nyquist keeps its amplitude.

Particle origins in Å (``rlnOriginXAngst/YAngst``) do not change (in px they scale by
``D'/D``). The CTF evaluated on the ``D'`` grid at ``apix'`` equals the central crop of the
``D``-grid CTF at ``apix``, since both grids sample the same frequencies ``k/(D·apix)`` 1/Å.
Stacks are cropped batch by batch (:class:`CroppedParticles`); the full-size stack is never
held in memory.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .particles import DatasetBase, ParticleDataset

__all__ = [
    "fourier_crop_images",
    "fourier_crop_volume",
    "cropped_pixel_size",
    "validate_box",
    "CroppedParticles",
    "crop_dataset",
]

MIN_BOX = 8


def _window(ft: torch.Tensor, new_box: int, ndim: int) -> torch.Tensor:
    """Central ``new_box`` window of the last ``ndim`` axes of a centred transform."""
    lo = ft.shape[-1] // 2 - new_box // 2
    return ft[(..., *[slice(lo, lo + new_box)] * ndim)]


def _fourier_crop(arr, new_box: int, ndim: int) -> np.ndarray:
    """Fourier-crop the last ``ndim`` axes of ``arr`` to ``new_box``, keeping the values of a
    band-limited signal (× ``(D'/D)^ndim``); the input itself (float32) when nothing is cut."""
    arr = np.require(arr, np.float32, "W")  # torch wants a writable array
    D = _check_sizes(arr, int(new_box), ndim)
    if new_box == D:
        return arr
    dims = tuple(range(-ndim, 0))
    t = torch.from_numpy(arr)
    ft = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(t, dim=dims), dim=dims), dim=dims)
    ft = _window(ft, int(new_box), ndim)
    out = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(ft, dim=dims), dim=dims), dim=dims)
    return (out.real * (new_box / D) ** ndim).numpy()


def _check_sizes(arr: np.ndarray, new_box: int, ndim: int) -> int:
    """``D`` of a ``(k, D, D)`` stack (``ndim`` 2) or a ``(D, D, D)`` map (``ndim`` 3)."""
    D = arr.shape[-1]
    if arr.ndim != 3 or arr.shape[-ndim:] != (D,) * ndim or D % 2:
        raise ValueError(f"expected {'(k, D, D) images' if ndim == 2 else 'a (D, D, D) map'} "
                         f"with D even, got shape {arr.shape}")
    if new_box % 2 or not 0 < new_box <= D:
        raise ValueError(f"the new box must be even and in 2..{D} px, got {new_box}")
    return D


def fourier_crop_images(images, new_box: int) -> np.ndarray:
    """Fourier-crop a batch of images from ``D`` to ``new_box`` px.

    Parameters
    ----------
    images : array_like, shape ``(k, D, D)``
        Images ``[y, x]`` with ``D`` even; the centre (rotation centre) is index ``D/2``.
    new_box : int
        ``D'`` in px, even, ``≤ D``. The frequencies kept are ``k ∈ [−D'/2, D'/2)`` cycles/box.

    Returns
    -------
    ndarray, float32, shape ``(k, D', D')``
        Pixel size ``apix·D/D'`` Å; values of a band-limited image preserved (the result is
        multiplied by ``(D'/D)²``). ``D' == D`` returns the input (as float32).
    """
    return _fourier_crop(images, new_box, 2)


def fourier_crop_volume(volume, new_box: int) -> np.ndarray:
    """Fourier-crop a map from ``D³`` to ``new_box³`` voxels.

    Parameters
    ----------
    volume : array_like, shape ``(D, D, D)``
        Density ``[z, y, x]``, ``D`` even, centre at index ``D/2``.
    new_box : int
        ``D'`` in voxels, even, ``≤ D``.

    Returns
    -------
    ndarray, float32, shape ``(D', D', D')``
        Voxel size ``apix·D/D'`` Å; voxel values of a band-limited map preserved (the result is
        multiplied by ``(D'/D)³``, so the sum over voxels scales by ``(D'/D)³``).
    """
    return _fourier_crop(volume, new_box, 3)


def cropped_pixel_size(apix: float, box: int, new_box: int) -> float:
    """Pixel size in Å after cropping a ``box``-px image of pixel size ``apix`` Å to ``new_box`` px."""
    return float(apix) * int(box) / int(new_box)


def validate_box(new_box: int, box: int, source=None) -> None:
    """Check a requested crop size ``new_box`` (px) against the images' box ``box`` (px).

    Raises
    ------
    InputError
        ``new_box`` odd, smaller than 8 px or larger than ``box``; ``source`` (e.g. the STAR
        path) is named in the message.
    """
    if new_box % 2:
        msg = f"--box {new_box} is odd; an even box is required"
    elif new_box < MIN_BOX:
        msg = f"--box {new_box} is smaller than the minimum of {MIN_BOX} px"
    elif new_box > box:
        msg = f"--box {new_box} is larger than the particles' {box} px box"
    else:
        return
    raise InputError(msg, source)


class CroppedParticles(DatasetBase):
    """A :class:`~rmfn_napari.cryoem.particles.ParticleDataset` seen at a smaller box, Fourier-cropped.

    Same interface as the dataset it wraps (what the reconstruction engine uses), at the new
    box: ``box`` = ``D'`` px and ``apix`` = ``apix·D/D'`` Å. Poses, origins in Å
    (``shifts_A``), CTF parameters (evaluate them on the ``D'`` grid at the new ``apix``),
    names and tables are the source's. :meth:`images` reads at most ``batch`` source images at
    a time and crops them.

    Attributes
    ----------
    source : ParticleDataset
        The wrapped dataset (``source_box`` px, ``source_apix`` Å).
    box : int
        ``D'``, px.
    apix : float
        Pixel size after cropping, Å.
    batch : int
        Source images read per step.
    """

    def __init__(self, source: ParticleDataset, new_box: int, batch: int = 256):
        validate_box(int(new_box), source.box, source.star_path)
        self.source, self.batch = source, int(batch)
        self.source_box, self.source_apix = source.box, source.apix
        self.box = int(new_box)
        self.apix = cropped_pixel_size(source.apix, source.box, self.box)
        for name in ("star_path", "n", "rotations", "euler", "has_poses", "shifts_A", "ctf",
                     "image_names", "particles", "optics", "notes"):
            setattr(self, name, getattr(source, name))

    def images(self, indices=None) -> np.ndarray:
        """Read and Fourier-crop images, ``batch`` at a time.

        Parameters
        ----------
        indices : int, slice, sequence of ints or None
            Particle indices (0-based, STAR row order); None reads all.

        Returns
        -------
        ndarray, float32, shape ``(k, D', D')``
        """
        idx = self.indices_of(indices)
        out = np.empty((len(idx), self.box, self.box), dtype=np.float32)
        for i in range(0, len(idx), self.batch):
            out[i:i + self.batch] = fourier_crop_images(self.source.images(idx[i:i + self.batch]),
                                                        self.box)
        return out

    def check_pixels(self, chunk: int = 2000) -> None:
        """Scan the source images for NaN/Inf (see :meth:`ParticleDataset.check_pixels`)."""
        self.source.check_pixels(chunk)

    def close(self) -> None:
        """Close the source dataset."""
        self.source.close()

    def __repr__(self) -> str:
        return f"CroppedParticles({self.source!r}, box={self.box}, apix={self.apix:.4g})"


def crop_dataset(ds, new_box: int | None):
    """``ds`` itself when ``new_box`` is None or ``ds.box``, else ``CroppedParticles(ds, new_box)``.

    Raises
    ------
    InputError
        An invalid ``new_box`` (see :func:`validate_box`).
    """
    if new_box is None or int(new_box) == ds.box:
        return ds
    return CroppedParticles(ds, int(new_box))
