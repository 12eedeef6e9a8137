"""Projections of a volume under rotations: Fourier-slice (fast) and real-space (reference).

Conventions: volumes ``[z, y, x]`` with the rotation centre at index ``D/2``; Fourier grids
centred (index ``j`` ↔ ``k = j − D/2`` cycles/box); a rotation ``R`` gives the image
``I(x, y) = Σ_z V(Rᵀ (x, y, z))``, i.e. ``F_I(kx, ky) = F_V(Rᵀ (kx, ky, 0))``
(see :mod:`rmfn_napari.cryoem.rotations`).

The Fourier path zero-pads the volume by ``pad`` (default 2), takes its centred 3D FFT, and
samples the central slice of every rotation at the frequencies of the ``D``-box
(``k`` cycles/box ↔ ``pad·k`` on the padded grid) by trilinear interpolation
(``torch.nn.functional.grid_sample``), differentiable in the volume and the rotations. The
trilinear kernel multiplies real space by ``sinc²(x/P)`` per axis (``P = pad·D``); the volume
is divided by that factor before the FFT (gridding correction, as RELION does), so both
paths agree to about a percent for content inside the box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .offsets import window_points

__all__ = [
    "fft2_centered",
    "ifft2_centered",
    "fft3_centered",
    "volume_fourier",
    "fourier_slices",
    "fourier_slices_at",
    "slices_to_images",
    "project",
    "project_real_space",
]


def fft2_centered(images: torch.Tensor) -> torch.Tensor:
    """Centred 2D DFT over the last two axes (origin at index ``D/2`` in both domains)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1))), dim=(-2, -1))


def ifft2_centered(ft: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2_centered` (complex result; take ``.real`` for real images)."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(ft, dim=(-2, -1))), dim=(-2, -1))


def fft3_centered(volume: torch.Tensor) -> torch.Tensor:
    """Centred 3D DFT over the last three axes."""
    dims = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(volume, dim=dims), dim=dims), dim=dims)


def _sinc(x: torch.Tensor) -> torch.Tensor:
    return torch.sinc(x)  # sin(πx)/(πx)


def volume_fourier(volume, pad: int = 2, grid_correct: bool = True) -> torch.Tensor:
    """Centred 3D Fourier transform of a zero-padded volume, ready for :func:`fourier_slices`.

    Parameters
    ----------
    volume : torch.Tensor or array_like, shape ``(D, D, D)``
        Density ``[z, y, x]``, rotation centre at index ``D/2``.
    pad : int
        Padding factor; the padded box is ``P = pad·D`` with the volume's index ``D/2`` at the
        padded index ``P/2``.
    grid_correct : bool
        Divide by the real-space apodisation of trilinear Fourier interpolation,
        ``sinc²(x/P) sinc²(y/P) sinc²(z/P)`` (x in voxels from the centre), before the FFT.

    Returns
    -------
    torch.Tensor, complex, shape ``(P, P, P)``
        Centred: index ``j`` ↔ ``j − P/2`` cycles per padded box (= ``(j − P/2)/pad``
        cycles/box of the original volume). Differentiable with respect to ``volume``.
    """
    v = torch.as_tensor(volume)
    if not v.is_floating_point():
        v = v.float()
    D = v.shape[-1]
    if v.shape[-3:] != (D, D, D) or D % 2:
        raise ValueError(f"volume must be a cubic box of even size, got shape {tuple(v.shape)}")
    P = int(pad * D)
    if grid_correct:
        c = (torch.arange(D, dtype=torch.float64, device=v.device) - D // 2) / P
        g = _sinc(c) ** 2
        corr = (g[:, None, None] * g[None, :, None] * g[None, None, :]).to(v.dtype)
        v = v / corr
    lo = P // 2 - D // 2
    hi = P - lo - D
    vp = F.pad(v, (lo, hi, lo, hi, lo, hi))
    return fft3_centered(vp)


def fourier_slices(vol_ft: torch.Tensor, rotations, box: int, crop: int | None = None) -> torch.Tensor:
    """Central slices of a padded centred volume FT: centred 2D FTs of the projections.

    Parameters
    ----------
    vol_ft : torch.Tensor, complex, shape ``(P, P, P)``
        From :func:`volume_fourier` (``P = pad·box``).
    rotations : torch.Tensor, shape ``(B, 3, 3)`` (or ``(3, 3)``)
        RELION matrices ``A``; differentiable.
    box : int
        Output image size ``D`` (the volume's box; ``P = pad·D``).
    crop : int, optional
        Return only the central ``crop × crop`` frequencies (``k = j − crop/2``
        cycles/box); default ``D`` (all). Used to compare low-passed data cheaply.

    Returns
    -------
    torch.Tensor, complex, shape ``(B, D, D)`` (``(B, crop, crop)`` with ``crop``)
        ``out[b, j, i] = F_V(Rᵀ (kx, ky, 0))`` with ``kx = i − D/2``, ``ky = j − D/2`` cycles/box,
        i.e. the centred 2D DFT of the projection ``Σ_z V(Rᵀx)``. Frequencies that fall outside
        the padded grid (only beyond the Nyquist circle) are zero.
    """
    C = int(box) if crop is None else int(crop)
    out = fourier_slices_at(vol_ft, rotations, box, window_points(C, vol_ft.device, torch.float64))
    return out.reshape(out.shape[0], C, C)


def fourier_slices_at(vol_ft: torch.Tensor, rotations, box: int, k_points: torch.Tensor) -> torch.Tensor:
    """Central-slice values at chosen 2D frequencies: ``F_V(Rᵀ (kx, ky, 0))``, ``(B, K)`` complex.

    ``k_points`` ``(K, 2)`` are ``(kx, ky)`` in cycles/box of the ``box``-pixel images; ``vol_ft``,
    ``rotations`` as in :func:`fourier_slices` (which calls this on the square grid); ``vol_ft``
    may also be given as :func:`channels_first` of it (to lay it out once for many calls).
    Trilinear interpolation on the padded grid (``grid_sample``), differentiable in both.
    """
    volume = channels_first(vol_ft) if vol_ft.is_complex() else vol_ft
    P = volume.shape[-1]
    ratio = P / int(box)
    real_dtype = volume.dtype
    R = torch.as_tensor(rotations).to(device=volume.device, dtype=real_dtype)
    if R.ndim == 2:
        R = R[None]
    B, K = R.shape[0], k_points.shape[0]
    k = k_points.to(device=volume.device, dtype=real_dtype) * ratio
    plane = torch.cat([k, torch.zeros_like(k[:, :1])], -1)  # (K, 3) as (x, y, z)
    # q = Rᵀ k for each rotation (row vectors: q_b = plane @ R_b), then the align_corners=True
    # normalisation, in place (matmul's backward does not need its output, so this is
    # autograd-safe and saves two (B, K, 3) temporaries)
    grid = (plane[None] @ R).add_(P // 2).mul_(2.0 / (P - 1)).sub_(1.0)
    grid = grid.reshape(1, B, K, 1, 3)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out[0, :, :, :, 0]  # (2, B, K)
    return torch.complex(out[0], out[1])


def channels_first(vol_ft: torch.Tensor) -> torch.Tensor:
    """A complex ``(P, P, P)`` volume as the real ``(1, 2, P, P, P)`` input of ``grid_sample``,
    contiguous (real and imaginary planes apart)."""
    return torch.view_as_real(vol_ft).permute(3, 0, 1, 2)[None].contiguous()


def slices_to_images(slices: torch.Tensor) -> torch.Tensor:
    """Real-space images ``(B, D, D)`` from centred 2D FTs (real part of the centred inverse DFT)."""
    return ifft2_centered(slices).real


def project(volume, rotations, pad: int = 2) -> torch.Tensor:
    """Projections by the Fourier slice theorem.

    Parameters
    ----------
    volume : torch.Tensor, shape ``(D, D, D)``
    rotations : torch.Tensor, shape ``(B, 3, 3)``
    pad : int
        Zero-padding factor of the 3D FFT.

    Returns
    -------
    torch.Tensor, shape ``(B, D, D)``
        Images ``Σ_z V(Rᵀx)`` (sum over voxels, not scaled by the voxel size); differentiable
        in ``volume`` and ``rotations``.
    """
    v = torch.as_tensor(volume)
    D = v.shape[-1]
    return slices_to_images(fourier_slices(volume_fourier(v, pad), rotations, D))


def project_real_space(volume, rotations, batch: int = 8) -> torch.Tensor:
    """Reference projections: rotate by trilinear resampling, then sum along z.

    ``I_b(x, y) = Σ_z V(R_bᵀ (x, y, z))`` with coordinates in voxels from the centre (index
    ``D/2``); samples outside the box are zero.

    Parameters
    ----------
    volume : torch.Tensor, shape ``(D, D, D)``
    rotations : torch.Tensor, shape ``(B, 3, 3)``
    batch : int
        Rotations resampled at once (memory ``batch·D³``).

    Returns
    -------
    torch.Tensor, shape ``(B, D, D)``
    """
    v = torch.as_tensor(volume)
    if not v.is_floating_point():
        v = v.float()
    D = v.shape[-1]
    R = torch.as_tensor(rotations).to(device=v.device, dtype=v.dtype)
    if R.ndim == 2:
        R = R[None]
    c = torch.arange(D, dtype=v.dtype, device=v.device) - D // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    pts = torch.stack([x, y, z], -1).reshape(-1, 3)  # output-frame coordinates (x, y, z)
    out = []
    for i in range(0, R.shape[0], batch):
        Rb = R[i:i + batch]
        src = pts[None] @ Rb  # row-vector form of Rᵀ x
        grid = ((src + D // 2) * (2.0 / (D - 1)) - 1.0).reshape(Rb.shape[0], D, D, D, 3)
        vol = v[None, None].expand(Rb.shape[0], 1, D, D, D)
        rot = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out.append(rot[:, 0].sum(1))
    return torch.cat(out, 0)
