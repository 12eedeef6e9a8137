"""Optics groups of different pixel sizes and boxes, brought to one working grid on read.

A STAR merged from two sessions or microscopes holds optics groups whose images differ in pixel
size ``a_g`` (Å) and box ``D_g`` (px). The reconstruction needs one box ``D`` and one pixel size
``a`` for every particle; as RELION does when such data are merged, each group is rescaled in
Fourier space and re-windowed in real space to it, here on read, batch by batch.

Working grid (:func:`working_grid`), with ``F = max_g D_g·a_g`` the widest field of view (Å):

* ``--box B`` and ``--apix A``: ``D = B``, ``a = A`` (a group wider than ``A·B`` Å is windowed);
* ``--box B`` alone: ``a = F / B``, the coarsest group's pixel size after cropping to ``B`` px
  (for one group: the Fourier crop of :mod:`~rmfn_napari.cryoem.downsample`);
* ``--apix A`` alone: ``D`` = the smallest even box holding ``F`` at ``A`` Å/px;
* neither: ``a`` = the coarsest group's pixel size, ``D`` as for ``--apix``.

A pixel size finer than every group's is refused (it adds no information).

Resampling (:func:`resampling_matrix`): each image is the trigonometric (band-limited)
interpolant of its own samples, its frequencies beyond the working Nyquist ``1/(2a)`` 1/Å cut
(Fourier crop) or none cut (Fourier padding when ``a < a_g``), evaluated at the working pixel
centres ``(j − D/2)·a`` Å; the group's centre pixel ``D_g/2`` and the working centre ``D/2``
are the same point, so origins in Å are unchanged. Working pixels outside the group's field of
view are 0 (padding); a narrower working field of view is a window. When ``D_g·a_g = D·a``
this is the Fourier crop of :func:`~rmfn_napari.cryoem.downsample.fourier_crop_images` but for
one term, the (Nyquist, Nyquist) corner, which the crop keeps one-sided and this keeps as the
mean of its ± pair (separable).
It is separable: an image is ``M · I · Mᵀ`` with ``M`` a ``(D, D_g)`` matrix, a map is ``M``
applied along each of its three axes.

The CTF of a particle is evaluated on the working grid (``D``, ``a``) with its own group's
voltage, Cs, amplitude contrast and defoci (the per-particle :class:`~rmfn_napari.cryoem.ctf.CTFParams`
the STAR reader merges from its optics group): the frequencies kept are physical (1/Å), so
the group's CTF at them is the CTF of the resampled image.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputError
from .downsample import MIN_BOX
from .particles import DatasetBase, ParticleDataset

__all__ = ["working_grid", "resampling_matrix", "resample_images", "resample_volume",
           "ResampledParticles"]

_TOL = 1e-6


def _even_box(fov_A: float, apix: float) -> int:
    """The smallest even box (px) holding a field of view of ``fov_A`` Å at ``apix`` Å/px."""
    return 2 * int(math.ceil(fov_A / (2 * apix) - _TOL))


def working_grid(geometries, box: int | None = None, apix: float | None = None,
                 source=None) -> tuple[int, float]:
    """The working ``(box px, pixel size Å)`` of particles in ``geometries`` (see the module
    docstring).

    Parameters
    ----------
    geometries : iterable of ``(apix Å, box px)``
        One per group of particles sharing a pixel size and a box.
    box : int, optional
        ``--box`` (px, even).
    apix : float, optional
        ``--apix`` (Å, > 0).
    source : path, optional
        Named in the error messages (the STAR).

    Raises
    ------
    InputError
        A pixel size finer than every group's; a box under 8 px or odd.
    """
    geoms = [(float(a), int(d)) for a, d in geometries]
    fov = max(a * d for a, d in geoms)
    finest = min(a for a, _ in geoms)
    if apix is not None and not (math.isfinite(apix) and apix > 0):
        raise InputError(f"--apix must be a finite number > 0 Å, got {apix}", source)
    if box is not None and (int(box) % 2 or int(box) < MIN_BOX):
        raise InputError(f"--box {box} must be even and at least {MIN_BOX} px", source)
    if apix is None and box is not None:
        apix = fov / int(box)
        if apix < finest * (1 - _TOL):
            raise InputError(f"--box {box} is larger than the particles' box: the {fov:.4g} Å field of "
                             f"view at {box} px would be {apix:.4g} Å/px, finer than every optics "
                             f"group's (finest {finest:.4g} Å/px)", source)
    elif apix is None:
        apix = max(a for a, _ in geoms)
    elif apix < finest * (1 - _TOL):
        raise InputError(f"--apix {apix:g} Å is finer than every optics group's pixel size (finest "
                         f"{finest:.4g} Å/px): resampling would add no information", source)
    if box is None:
        box = _even_box(fov, apix)
        if box < MIN_BOX:
            raise InputError(f"--apix {apix:g} Å leaves a {box} px box for the {fov:.4g} Å field of view "
                             f"(at least {MIN_BOX} px)", source)
    return int(box), float(apix)


def resampling_matrix(box_in: int, apix_in: float, box_out: int, apix_out: float) -> np.ndarray:
    """``M`` ``(box_out, box_in)`` float64: one axis of the resampling of the module docstring.

    ``M[j, i] = (1/D_in) Σ_k w_k cos(2π s_k (y_j − x_i))`` with ``x_i = (i − D_in/2)·apix_in``,
    ``y_j = (j − D_out/2)·apix_out`` (Å), ``s_k = k/(D_in·apix_in)`` 1/Å for ``k`` in
    ``[−D_in/2, D_in/2)``, ``w_k = 1`` below the output Nyquist ``1/(2·apix_out)``, ½ for a
    ``±k`` pair exactly at it, 0 above; rows ``j`` outside the input field of view are 0.
    """
    D, Dp = int(box_in), int(box_out)
    k = np.arange(D) - D // 2
    s = k / (D * apix_in)
    nyq = 1.0 / (2 * apix_out)
    w = np.where(np.abs(s) < nyq * (1 - 1e-9), 1.0, 0.0)
    at = np.abs(np.abs(s) - nyq) <= 1e-9 * nyq
    paired = np.isin(-k, k)  # k = −D/2 has no +D/2 partner: its real part is the whole term
    w[at] = np.where(paired[at], 0.5, 1.0)
    x = (np.arange(D) - D // 2) * apix_in
    y = (np.arange(Dp) - Dp // 2) * apix_out
    phase = 2 * np.pi * s[None, None, :] * (y[:, None, None] - x[None, :, None])
    M = (np.cos(phase) * w).sum(-1) / D
    u = y / apix_in + D // 2  # the output centres in input pixels
    M[(u < -0.5 - 1e-9) | (u >= D - 0.5 - 1e-9)] = 0.0
    return M


def resample_images(images, apix_in: float, box_out: int, apix_out: float) -> np.ndarray:
    """Resample images ``(k, D, D)`` at ``apix_in`` Å to ``(k, box_out, box_out)`` at
    ``apix_out`` Å (float32; see :func:`resampling_matrix`)."""
    imgs = torch.as_tensor(np.asarray(images, dtype=np.float32))
    M = torch.as_tensor(resampling_matrix(imgs.shape[-1], apix_in, box_out, apix_out), dtype=torch.float32)
    return (M @ imgs @ M.T).numpy()


def resample_volume(volume, apix_in: float, box_out: int, apix_out: float) -> np.ndarray:
    """Resample a map ``(D, D, D)`` ``[z, y, x]`` at ``apix_in`` Å to ``box_out³`` at
    ``apix_out`` Å (float32), the same operation along each axis."""
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float64))
    M = torch.as_tensor(resampling_matrix(vol.shape[-1], apix_in, box_out, apix_out))
    vol = torch.tensordot(M, vol, dims=([1], [0]))                      # z: (a, y, x)
    vol = torch.tensordot(M, vol, dims=([1], [1])).permute(1, 0, 2)     # y: (a, b, x)
    vol = torch.tensordot(vol, M, dims=([2], [1]))                      # x: (a, b, c)
    return vol.to(torch.float32).numpy()


class ResampledParticles(DatasetBase):
    """A :class:`~rmfn_napari.cryoem.particles.ParticleDataset` seen on one working grid.

    Same interface as the dataset it wraps (what the reconstruction engine uses): ``box`` and
    ``apix`` are the working grid's (:func:`working_grid`); poses, origins in Å, CTF
    parameters (per particle, from each particle's optics group), names and tables are the
    source's. :meth:`images` reads at most ``batch`` source images at a time, group by group,
    and resamples them.

    Attributes
    ----------
    source : ParticleDataset
    box : int
        Working box, px.
    apix : float
        Working pixel size, Å.
    group_lines : list of str
        For the run's log: what each optics group became (pixel size and box before → after).
    """

    def __init__(self, source: ParticleDataset, box: int | None = None, apix: float | None = None,
                 batch: int = 256):
        self.source, self.batch = source, int(batch)
        pa, pb = source.particle_apix, source.particle_box
        geoms = sorted({(round(float(a), 6), int(b)) for a, b in zip(pa, pb)})
        self.box, self.apix = working_grid(geoms, box, apix, source.star_path)
        self._geom_of = np.array([geoms.index((round(float(a), 6), int(b))) for a, b in zip(pa, pb)])
        self._geoms = geoms
        self._mats: dict[int, torch.Tensor] = {}
        for name in ("star_path", "n", "rotations", "euler", "has_poses", "shifts_A", "ctf",
                     "image_names", "particles", "optics", "notes", "group", "group_names"):
            setattr(self, name, getattr(source, name))
        self.group_lines = self._describe()

    def _describe(self) -> list[str]:
        lines = []
        for g in np.unique(self.group):
            mine = self.group == g
            for k in np.unique(self._geom_of[mine]):
                a, d = self._geoms[k]
                count = int(np.sum(mine & (self._geom_of == k)))
                if abs(a - self.apix) <= _TOL * a and d == self.box:
                    how = "unchanged"
                else:
                    how = ("Fourier-cropped" if a < self.apix * (1 - _TOL) else
                           "Fourier-padded (no information beyond its own Nyquist)" if a > self.apix * (1 + _TOL)
                           else "pixel size kept")
                    fov, fov_w = a * d, self.apix * self.box
                    if fov_w > fov * (1 + _TOL):
                        how += f", field of view {fov:.4g} → {fov_w:.4g} Å (padded with zeros)"
                    elif fov_w < fov * (1 - _TOL):
                        how += f", field of view {fov:.4g} → {fov_w:.4g} Å (windowed)"
                lines.append(f"optics group {int(g)} ({self.group_names.get(int(g), '')}, {count} particles): "
                             f"{a:.4g} Å/px, {d} px → {self.apix:.4g} Å/px, {self.box} px ({how})")
        return lines

    def _matrix(self, k: int) -> torch.Tensor:
        if k not in self._mats:
            a, d = self._geoms[k]
            self._mats[k] = torch.as_tensor(resampling_matrix(d, a, self.box, self.apix), dtype=torch.float32)
        return self._mats[k]

    def images(self, indices=None) -> np.ndarray:
        """Read and resample images to the working grid, ``batch`` at a time.

        Parameters
        ----------
        indices : int, slice, sequence of ints or None
            Particle indices (0-based, STAR row order); None reads all.

        Returns
        -------
        ndarray, float32, shape ``(k, box, box)``
        """
        idx = self.indices_of(indices)
        out = np.empty((len(idx), self.box, self.box), dtype=np.float32)
        geom = self._geom_of[idx % self.n] if idx.size else idx
        for k in np.unique(geom):
            sel = np.flatnonzero(geom == k)
            M = self._matrix(int(k))
            for i in range(0, len(sel), self.batch):
                part = sel[i:i + self.batch]
                imgs = torch.from_numpy(self.source.images(idx[part]))
                out[part] = (M @ imgs @ M.T).numpy()
        return out

    def image_keys(self) -> list[tuple[str, int]]:
        """The source's image identities (see :meth:`ParticleDataset.image_keys`)."""
        return self.source.image_keys()

    def check_pixels(self, chunk: int = 2000) -> None:
        """Scan the source images for NaN/Inf (group by group)."""
        for k in np.unique(self._geom_of):
            sel = np.flatnonzero(self._geom_of == k)
            for i in range(0, len(sel), chunk):
                self.source.images(sel[i:i + chunk])

    def close(self) -> None:
        """Close the source dataset."""
        self.source.close()

    def __repr__(self) -> str:
        return f"ResampledParticles({self.source!r}, box={self.box}, apix={self.apix:.4g})"
