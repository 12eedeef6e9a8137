"""Evaluation metrics for cryo-EM reconstructions: FSC, resolution, map alignment, pose errors.

Conventions (DESIGN.md §2)
--------------------------
* Volumes are float32 arrays indexed ``[z, y, x]`` in a cubic box of even size ``D`` with voxel
  size ``apix`` in Å. The rotation centre is the voxel with index ``D/2`` on every axis, and a
  point ``p = (x, y, z)`` in voxels relative to that centre is the array element
  ``[z + D/2, y + D/2, x + D/2]`` (``x`` is the fastest axis).
* Fourier space is used centred (``fftshift``): index ``j`` along an axis is the spatial
  frequency ``k = j - D/2`` cycles/box. A shell of radius ``k`` cycles/box corresponds to a
  resolution of ``D * apix / k`` Å; Nyquist is ``D/2`` cycles/box, i.e. ``2 * apix`` Å.
* Rotations are 3×3 matrices acting on column vectors ``(x, y, z)``. A particle image with pose
  ``R`` is the projection along z of ``V(Rᵀ x)``. The geodesic distance between two rotations is
  ``degrees(arccos(clip((tr(R1ᵀ R2) - 1) / 2, -1, 1)))``.
* The hand flip (mirror) used throughout is ``J = diag(1, 1, -1)`` acting on ``(x, y, z)``,
  i.e. ``z -> -z`` about the box centre.

Only numpy and torch are needed (no Qt, no scipy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "fsc",
    "resolution_at",
    "fsc_report",
    "Alignment",
    "align_map",
    "apply_alignment",
    "geodesic_distance_deg",
    "global_rotation_between",
    "pose_errors",
    "pose_error_stats",
    "MIRROR",
]

#: The reflection used for the hand flip: ``z -> -z`` on column vectors ``(x, y, z)``.
MIRROR = np.diag([1.0, 1.0, -1.0])


# ----------------------------------------------------------------------------------------------
# FSC and resolution
# ----------------------------------------------------------------------------------------------
def _to_numpy(x):
    """Arrays, lists or (CPU/GPU) torch tensors -> numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_pair(map_a, map_b):
    a = _to_numpy(map_a)
    b = _to_numpy(map_b)
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"maps must be 3D and of the same shape, got {a.shape} and {b.shape}")
    if len(set(a.shape)) != 1:
        raise ValueError(f"maps must be cubic, got {a.shape}")
    if a.shape[0] % 2:
        raise ValueError(f"box size must be even, got {a.shape[0]}")
    return a, b


def _shell_index(box: int) -> np.ndarray:
    """Integer shell index ``round(|k|)`` (k in cycles/box) on the centred D³ Fourier grid."""
    k = np.arange(box) - box // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(np.int64)


def fsc(map_a, map_b):
    """Fourier shell correlation between two maps.

    Parameters
    ----------
    map_a, map_b : array_like, shape (D, D, D)
        Real maps indexed ``[z, y, x]`` on the same cubic grid (D even).

    Returns
    -------
    freq : ndarray of float, shape (D/2 + 1,)
        Shell radii in cycles/box: ``0, 1, ..., D/2``. Nyquist (``D/2``) is **included**. A voxel
        of the centred Fourier grid with frequency vector ``k`` belongs to shell ``round(|k|)``
        (shells are 1 voxel wide); voxels with ``round(|k|) > D/2`` (the corners of the cube)
        are ignored. The Nyquist shell is therefore only partly populated.
    fsc : ndarray of float, shape (D/2 + 1,)
        ``Re Σ F_a F_b* / sqrt(Σ |F_a|² Σ |F_b|²)`` over each shell. Shell 0 holds only the
        DC term (so it is ``±1`` unless a map has zero mean). A shell where either map has zero
        power is NaN.
    """
    a, b = _check_pair(map_a, map_b)
    box = a.shape[0]
    fa = np.fft.fftshift(np.fft.fftn(a.astype(np.float64)))
    fb = np.fft.fftshift(np.fft.fftn(b.astype(np.float64)))
    shells = _shell_index(box).ravel()
    keep = shells <= box // 2
    shells = shells[keep]
    nshell = box // 2 + 1
    cross = np.bincount(shells, weights=(fa * np.conj(fb)).real.ravel()[keep], minlength=nshell)
    pa = np.bincount(shells, weights=(np.abs(fa) ** 2).ravel()[keep], minlength=nshell)
    pb = np.bincount(shells, weights=(np.abs(fb) ** 2).ravel()[keep], minlength=nshell)
    denom = np.sqrt(pa * pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), np.nan)
    return np.arange(nshell, dtype=np.float64), curve


def _crossing(freqs, curve, threshold):
    """First crossing below ``threshold`` as (k in cycles/box, crossed?). NaN counts as 0."""
    freqs = np.asarray(freqs, dtype=np.float64)
    curve = np.nan_to_num(np.asarray(curve, dtype=np.float64), nan=0.0)
    if freqs.ndim != 1 or freqs.shape != curve.shape or freqs.size < 2:
        raise ValueError("freqs and fsc must be 1D arrays of the same length (>= 2)")
    below = np.nonzero(curve < threshold)[0]
    if below.size == 0:
        return float(freqs[-1]), False
    i = int(below[0])
    if i == 0:
        return 0.0, True
    f0, f1 = curve[i - 1], curve[i]
    k0, k1 = freqs[i - 1], freqs[i]
    k = k0 + (f0 - threshold) / (f0 - f1) * (k1 - k0)
    return float(k), True


def resolution_at(freqs, fsc, threshold, box, apix):
    """Resolution (Å) at which an FSC curve first drops below a threshold.

    Parameters
    ----------
    freqs : array_like, shape (n,)
        Shell radii in cycles/box, increasing (as returned by :func:`fsc`).
    fsc : array_like, shape (n,)
        FSC values per shell. NaN entries are treated as 0 (no correlation).
    threshold : float
        0.5 against a ground-truth reference, 0.143 between half-maps.
    box : int
        Box size D in voxels.
    apix : float
        Voxel size in Å.

    Returns
    -------
    float
        ``D * apix / k*`` in Å, where ``k*`` (cycles/box) is the first crossing: the first shell
        ``i`` with ``fsc[i] < threshold`` is found and ``k*`` is linearly interpolated between
        shells ``i-1`` and ``i``. If the curve **never** drops below the threshold, the
        resolution of the last shell is returned, i.e. the Nyquist resolution ``2 * apix`` Å for
        a curve from :func:`fsc` (use :func:`fsc_report`'s ``"crossed"`` flag to tell the two
        cases apart). If the very first shell is already below, ``inf`` is returned.
    """
    if box <= 0 or apix <= 0:
        raise ValueError("box and apix must be positive")
    k, _ = _crossing(freqs, fsc, threshold)
    if k <= 0:
        return math.inf
    return float(box * apix / k)


def fsc_report(map, reference, apix, threshold=0.5, align=True, **align_kwargs):  # noqa: A002
    """FSC of a map against a reference, optionally after aligning it, with its resolution.

    Parameters
    ----------
    map : array_like, shape (D, D, D)
        The map to evaluate (e.g. a reconstruction), ``[z, y, x]``.
    reference : array_like, shape (D, D, D)
        The reference (e.g. ground truth) on the same grid.
    apix : float
        Voxel size in Å.
    threshold : float, optional
        FSC threshold (0.5 against a reference, 0.143 for half-maps).
    align : bool, optional
        If true, :func:`align_map` first finds the rotation, translation and hand that best
        superimpose ``map`` onto ``reference`` and the FSC is computed on the aligned map.
    **align_kwargs
        Passed on to :func:`align_map`.

    Returns
    -------
    dict
        ``freq_cycles_per_box`` (list), ``resolution_per_shell_A`` (list, ``inf`` at k=0),
        ``fsc`` (list), ``threshold``, ``resolution_A`` (float, Å), ``crossed`` (bool: false
        means the curve stayed above the threshold up to Nyquist and ``resolution_A`` is the
        Nyquist limit ``2·apix``), ``box``, ``apix``, and ``alignment`` (``None`` or the
        :meth:`Alignment.to_dict` of the alignment applied). Everything is JSON-serialisable
        except ``inf``/``nan`` floats.
    """
    m, ref = _check_pair(map, reference)
    box = m.shape[0]
    alignment = None
    if align:
        m, alignment = align_map(m, ref, apix, **align_kwargs)
    freqs, curve = fsc(m, ref)
    k, crossed = _crossing(freqs, curve, threshold)
    res = resolution_at(freqs, curve, threshold, box, apix)
    with np.errstate(divide="ignore"):
        per_shell = np.where(freqs > 0, box * apix / np.where(freqs > 0, freqs, 1.0), np.inf)
    return {
        "freq_cycles_per_box": freqs.tolist(),
        "resolution_per_shell_A": per_shell.tolist(),
        "fsc": curve.tolist(),
        "threshold": float(threshold),
        "resolution_A": res,
        "crossing_cycles_per_box": k,
        "crossed": bool(crossed),
        "box": int(box),
        "apix": float(apix),
        "alignment": None if alignment is None else alignment.to_dict(),
    }


# ----------------------------------------------------------------------------------------------
# Rotation helpers (private; self-contained so the metrics do not depend on other modules)
# ----------------------------------------------------------------------------------------------
def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    m = np.empty(q.shape[:-1] + (3, 3))
    m[..., 0, 0] = 1 - 2 * (y * y + z * z)
    m[..., 0, 1] = 2 * (x * y - w * z)
    m[..., 0, 2] = 2 * (x * z + w * y)
    m[..., 1, 0] = 2 * (x * y + w * z)
    m[..., 1, 1] = 1 - 2 * (x * x + z * z)
    m[..., 1, 2] = 2 * (y * z - w * x)
    m[..., 2, 0] = 2 * (x * z - w * y)
    m[..., 2, 1] = 2 * (y * z + w * x)
    m[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return m


def _super_fibonacci_rotations(n: int) -> np.ndarray:
    """``n`` near-uniform rotations (super-Fibonacci spiral on S³, Alexa 2022), shape (n, 3, 3)."""
    phi = math.sqrt(2.0)
    psi = 1.533751168755204288118041
    s = np.arange(n) + 0.5
    r = np.sqrt(s / n)
    big_r = np.sqrt(1.0 - s / n)
    alpha = 2 * np.pi * s / phi
    beta = 2 * np.pi * s / psi
    q = np.stack([r * np.sin(alpha), r * np.cos(alpha), big_r * np.sin(beta), big_r * np.cos(beta)], -1)
    return _quat_to_matrix(q)


def _rotvec_to_matrix(v: np.ndarray) -> np.ndarray:
    """Rodrigues' formula, batched: rotation vectors (radians) of shape (..., 3) -> (..., 3, 3)."""
    v = np.asarray(v, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1)[..., None, None]
    kx, ky, kz = v[..., 0], v[..., 1], v[..., 2]
    zero = np.zeros_like(kx)
    k = np.stack([np.stack([zero, -kz, ky], -1), np.stack([kz, zero, -kx], -1),
                  np.stack([-ky, kx, zero], -1)], -2)
    small = theta < 1e-12
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0, np.sin(safe) / safe)
    b = np.where(small, 0.5, (1 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * k + b * (k @ k)


def _project_so3(m: np.ndarray) -> np.ndarray:
    """Closest rotation (Frobenius) to a 3×3 matrix, via SVD."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def geodesic_distance_deg(r1, r2) -> np.ndarray:
    """Geodesic (angular) distance between rotations, in degrees.

    Parameters
    ----------
    r1, r2 : array_like, shape (..., 3, 3)
        Rotation matrices (broadcast against each other).

    Returns
    -------
    ndarray or float
        ``degrees(arccos(clip((tr(R1ᵀ R2) - 1) / 2, -1, 1)))`` in [0, 180] degrees.
    """
    r1 = np.asarray(r1, dtype=np.float64)
    r2 = np.asarray(r2, dtype=np.float64)
    tr = np.einsum("...ij,...ij->...", r1, r2)  # tr(R1ᵀ R2)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


# ----------------------------------------------------------------------------------------------
# Map alignment
# ----------------------------------------------------------------------------------------------
@dataclass
class Alignment:
    """The rigid transform (plus optional hand flip) that aligns a map to a reference.

    The aligned map is ``aligned(x) = moving(M Rᵀ (x − t))`` for ``x = (x, y, z)`` in voxels
    relative to the box centre (index D/2), where ``R = rotation``, ``t = shift_voxels`` and
    ``M = diag(1, 1, −1)`` if ``flipped`` else the identity. Equivalently, the point ``y`` of
    the moving map is carried to ``x = R M y + t`` of the reference frame.

    Attributes
    ----------
    rotation : ndarray, shape (3, 3)
        Proper rotation R acting on ``(x, y, z)`` column vectors.
    shift_voxels : ndarray, shape (3,)
        Translation t, ``(x, y, z)`` order, in voxels.
    flipped : bool
        Whether the hand was flipped (``z -> -z`` of the moving map, before R).
    correlation : float
        Pearson correlation (over the whole box) of the aligned map with the reference.
    """

    rotation: np.ndarray
    shift_voxels: np.ndarray
    flipped: bool
    correlation: float
    timings_s: dict = field(default_factory=dict)

    @property
    def matrix(self) -> np.ndarray:
        """The linear part ``R M`` (det −1 when flipped) of ``y -> R M y + t``."""
        return self.rotation @ (MIRROR if self.flipped else np.eye(3))

    def to_dict(self) -> dict:
        """A JSON-serialisable dictionary (rotation as nested lists, shift in voxels)."""
        return {
            "rotation": np.asarray(self.rotation, dtype=float).tolist(),
            "shift_voxels": np.asarray(self.shift_voxels, dtype=float).tolist(),
            "flipped": bool(self.flipped),
            "correlation": float(self.correlation),
            "convention": "aligned(x) = moving(M R^T (x - t)), M = diag(1,1,-1) if flipped; "
                          "x = (x, y, z) in voxels about index D/2",
            "timings_s": {k: float(v) for k, v in self.timings_s.items()},
        }


def _positions(box: int) -> torch.Tensor:
    """(box, box, box, 3) tensor of voxel positions (x, y, z) relative to index box/2."""
    c = torch.arange(box, dtype=torch.float32) - box // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def _resample(vol: torch.Tensor, mats: torch.Tensor, offs: torch.Tensor, pos=None) -> torch.Tensor:
    """Trilinear resampling ``out_n(x) = vol(mats_n x + offs_n)``, zeros outside the box.

    vol: (D, D, D); mats: (N, 3, 3); offs: (N, 3) in voxels. Returns (N, D, D, D).
    """
    box = vol.shape[0]
    if pos is None:
        pos = _positions(box)
    src = torch.einsum("nij,zyxj->nzyxi", mats, pos) + offs[:, None, None, None, :]
    grid = (src + box // 2) * (2.0 / (box - 1)) - 1.0
    n = mats.shape[0]
    inp = vol[None, None].expand(n, 1, box, box, box)
    out = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0]


def _fourier_crop(vol: np.ndarray, small: int) -> np.ndarray:
    """Downsample a D³ map to ``small``³ by Fourier cropping with a soft Gaussian taper.

    The centre voxel (index D/2) maps to index small/2, so rotation centres agree; the voxel
    size grows by D/small.
    """
    box = vol.shape[0]
    f = np.fft.fftshift(np.fft.fftn(vol.astype(np.float64)))
    if small < box:
        lo = box // 2 - small // 2
        f = f[lo:lo + small, lo:lo + small, lo:lo + small].copy()
        f[0, :, :] = 0
        f[:, 0, :] = 0
        f[:, :, 0] = 0
    k = np.arange(small) - small // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    sigma = small / 4.0
    f *= np.exp(-(kx**2 + ky**2 + kz**2) / (2 * sigma**2))
    out = np.fft.ifftn(np.fft.ifftshift(f)).real * (small / box) ** 3
    return out.astype(np.float32)


def _gaussian_lowpass(vol: np.ndarray, k_half: float) -> np.ndarray:
    """Gaussian low-pass whose amplitude is 0.5 at ``k_half`` cycles/box."""
    box = vol.shape[0]
    k = np.fft.fftfreq(box) * box
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    sigma = k_half / math.sqrt(2 * math.log(2))
    filt = np.exp(-(kx**2 + ky**2 + kz**2) / (2 * sigma**2))
    return np.fft.ifftn(np.fft.fftn(vol.astype(np.float64)) * filt).real.astype(np.float32)


def _soft_sphere(box: int, radius: float, width: float) -> np.ndarray:
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    m = np.clip((radius + width - r) / width, 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * m)).astype(np.float32)


class _Level:
    """One resolution level of the search: a reference spectrum and a moving map on a d³ grid."""

    def __init__(self, moving: np.ndarray, reference: np.ndarray, small: int, scale: float):
        self.d = small
        self.scale = scale  # full-box voxels per level voxel
        mask = _soft_sphere(small, 0.42 * small, 0.06 * small + 1)
        mov = _fourier_crop(moving, small) if small != moving.shape[0] else moving.astype(np.float32)
        ref = _fourier_crop(reference, small) if small != moving.shape[0] else reference.astype(np.float32)
        mov = mov * mask
        ref = (ref - ref.mean()) * mask
        ref = ref - ref.mean()
        self.mov = torch.from_numpy(np.ascontiguousarray(mov))
        ref_t = torch.from_numpy(np.ascontiguousarray(ref))
        self.ref = ref_t
        self.ref_norm = float(torch.linalg.vector_norm(ref_t))
        self.ref_ft = torch.fft.rfftn(ref_t)
        self.pos = _positions(small)

    def score(self, mats: np.ndarray, chunk: int = 256):
        """For each linear map A (N,3,3): best circular-shift correlation of moving(A x) vs ref.

        Returns scores (N,) and shifts (N, 3) in level voxels, (x, y, z), with subvoxel
        parabolic refinement; the aligned map is rotated(x - t).
        """
        d = self.d
        scores = np.empty(len(mats))
        shifts = np.empty((len(mats), 3))
        for s in range(0, len(mats), chunk):
            a = torch.as_tensor(mats[s:s + chunk], dtype=torch.float32)
            rot = _resample(self.mov, a, torch.zeros(a.shape[0], 3), self.pos)
            rot = rot - rot.mean(dim=(1, 2, 3), keepdim=True)
            norm = torch.linalg.vector_norm(rot.reshape(rot.shape[0], -1), dim=1)
            cc = torch.fft.irfftn(self.ref_ft[None] * torch.conj(torch.fft.rfftn(rot, dim=(1, 2, 3))),
                                  s=(d, d, d), dim=(1, 2, 3))
            cc = cc / (norm[:, None, None, None] * self.ref_norm + 1e-20)
            flat = cc.reshape(cc.shape[0], -1)
            best, idx = flat.max(dim=1)
            iz, iy, ix = np.unravel_index(idx.numpy(), (d, d, d))
            n = np.arange(cc.shape[0])
            ccn = cc.numpy()
            sub, peak_gain = [], []
            for axis_idx, (jz, jy, jx) in enumerate([(1, 0, 0), (0, 1, 0), (0, 0, 1)]):
                cm = ccn[n, (iz - jz) % d, (iy - jy) % d, (ix - jx) % d]
                cp = ccn[n, (iz + jz) % d, (iy + jy) % d, (ix + jx) % d]
                c0 = ccn[n, iz, iy, ix]
                den = cm - 2 * c0 + cp
                sub.append(np.where(den < 0, 0.5 * (cm - cp) / np.where(den < 0, den, -1.0), 0.0))
                # the parabola's maximum exceeds the sampled peak by (cm - cp)² / (-8 den)
                peak_gain.append(np.where(den < 0, (cm - cp) ** 2 / (-8.0 * np.where(den < 0, den, -1.0)), 0.0))
            sub_z, sub_y, sub_x = [np.clip(v, -0.5, 0.5) for v in sub]
            wrap = lambda i: ((i + d // 2) % d) - d // 2  # noqa: E731
            shifts[s:s + chunk] = np.stack([wrap(ix) + sub_x, wrap(iy) + sub_y, wrap(iz) + sub_z], -1)
            scores[s:s + chunk] = best.numpy() + np.sum(peak_gain, axis=0)
        return scores, shifts

    def score_real(self, mats: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """Real-space Pearson correlation of moving(A_n (x - t_n)) with ref (t in level voxels)."""
        a = torch.as_tensor(mats, dtype=torch.float32)
        offs = -torch.einsum("nij,nj->ni", a, torch.as_tensor(shifts, dtype=torch.float32))
        out = _resample(self.mov, a, offs, self.pos)
        out = out - out.mean(dim=(1, 2, 3), keepdim=True)
        num = (out * self.ref[None]).sum(dim=(1, 2, 3))
        norm = torch.linalg.vector_norm(out.reshape(out.shape[0], -1), dim=1)
        return (num / (norm * self.ref_norm + 1e-20)).numpy()


def _local_offsets(step_deg: float) -> np.ndarray:
    g = np.array([-1.0, 0.0, 1.0])
    v = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    return _rotvec_to_matrix(v * np.radians(step_deg))


def _refine_local(level: _Level, rot: np.ndarray, mirror: np.ndarray, steps_deg, max_moves: int = 4):
    """Greedy descent over a 3×3×3 grid of small left-multiplied rotations, step by step."""
    best_score, best_shift = level.score((rot @ mirror).T[None])
    best_score, best_shift = float(best_score[0]), best_shift[0]
    for step in steps_deg:
        offs = _local_offsets(step)
        for _ in range(max_moves):
            cands = offs @ rot
            mats = np.transpose(cands @ mirror, (0, 2, 1))
            sc, sh = level.score(mats)
            i = int(np.argmax(sc))
            if sc[i] <= best_score + 1e-9:
                break
            best_score, best_shift, rot = float(sc[i]), sh[i], cands[i]
    return rot, best_shift, best_score


def _refine_joint(level: _Level, rot, mirror, shift, schedule=((0.5, 0.25), (0.25, 0.1), (0.1, 0.05)),
                  max_moves: int = 3):
    """Alternate 3×3×3 pattern searches over rotation (deg) and subvoxel shift (voxels) in
    real space, the score being the Pearson correlation at the current shift / rotation."""
    g = np.array([-1.0, 0.0, 1.0])
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    centre = 13  # index of (0, 0, 0) in the grid
    for step_deg, step_vox in schedule:
        offs = _rotvec_to_matrix(grid * np.radians(step_deg))
        for _ in range(max_moves):
            moved = False
            cands = offs @ rot
            mats = np.transpose(cands @ mirror, (0, 2, 1))
            i = int(np.argmax(level.score_real(mats, np.repeat(shift[None], 27, 0))))
            if i != centre:
                rot, moved = cands[i], True
            mat = (rot @ mirror).T
            cand_t = shift + grid * step_vox
            i = int(np.argmax(level.score_real(np.repeat(mat[None], 27, 0), cand_t)))
            if i != centre:
                shift, moved = cand_t[i], True
            if not moved:
                break
    return rot, shift


def apply_alignment(moving, alignment: Alignment) -> np.ndarray:
    """Resample a map with an :class:`Alignment` (trilinear, zeros outside the box).

    Parameters
    ----------
    moving : array_like, shape (D, D, D)
        Map to transform, ``[z, y, x]``.
    alignment : Alignment
        ``aligned(x) = moving(M Rᵀ (x − t))``, ``x`` in voxels about index D/2.

    Returns
    -------
    ndarray, float32, shape (D, D, D)
    """
    mov = torch.as_tensor(np.ascontiguousarray(moving, dtype=np.float32))
    b = alignment.matrix.T  # (R M)^T = M R^T
    a = torch.as_tensor(b[None], dtype=torch.float32)
    off = -torch.as_tensor(b @ np.asarray(alignment.shift_voxels, dtype=np.float64), dtype=torch.float32)
    return _resample(mov, a, off[None])[0].numpy()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 0.0


def align_map(moving, reference, apix=1.0, *, lowpass_A=None, n_rotations=4000, allow_flip=True,
              coarse_box=None, mid_box=32, n_candidates=6):
    """Align a map to a reference: rotation, translation (voxels) and handedness.

    Method: (1) both maps are Fourier-cropped to a coarse box (16³ for D ≤ 32, else 20³),
    low-passed and softly masked; ``n_rotations`` near-uniform rotations (a super-Fibonacci
    spiral on the unit quaternions, ≈ 10° spacing for 4000) are scored for each hand, the best
    translation for each rotation coming from an FFT cross-correlation; (2) the
    ``n_candidates`` best, mutually distinct (> 20°) orientations (half per hand) are refined by a greedy local
    search on 3×3×3 grids of small rotations (8°, 4°, 2° steps) at the coarse size, and the two
    best of those (plus the best of the other hand) again at ``mid_box``³ (2°, 1°, 0.5°);
    (3) the best orientation of each hand is refined at full size:
    a 0.5° local search with the FFT translation (parabolic subvoxel peak), then alternating
    3×3×3 pattern searches over rotation (0.5° → 0.1°) and subvoxel shift (0.25 → 0.05 voxel)
    on the real-space correlation; the hand whose aligned map correlates best with the
    reference wins.

    Parameters
    ----------
    moving : array_like, shape (D, D, D)
        Map to align, ``[z, y, x]``, rotation centre at index D/2.
    reference : array_like, shape (D, D, D)
        Reference map on the same grid.
    apix : float, optional
        Voxel size in Å (used only to convert ``lowpass_A``; the search works in voxels).
    lowpass_A : float, optional
        If given, both maps are low-passed for the search (not for the returned map) by a
        Gaussian whose amplitude is 0.5 at this resolution in Å. Setting it near the moving
        map's resolution keeps noise beyond it from perturbing the search.
    n_rotations : int, optional
        Size of the global rotation grid (per hand).
    allow_flip : bool, optional
        Also search the mirrored hand (``z -> -z`` of ``moving``).
    coarse_box, mid_box : int, optional
        Box sizes (even) of the coarse and intermediate search levels.
    n_candidates : int, optional
        Number of coarse solutions refined locally (split evenly between the hands).

    Returns
    -------
    aligned : ndarray, float32, shape (D, D, D)
        ``aligned(x) = moving(M Rᵀ (x − t))`` resampled trilinearly (zeros outside the box),
        where ``x = (x, y, z)`` are voxel positions relative to index D/2, ``R`` and ``t`` are
        ``alignment.rotation`` and ``alignment.shift_voxels``, and ``M = diag(1, 1, −1)`` when
        ``alignment.flipped`` (identity otherwise). So the moving map's point ``y`` lands on
        ``R M y + t``; if ``moving(y) = reference(R M y + t)`` the alignment recovers ``R, t, M``.
    alignment : Alignment
        The transform found, with the Pearson correlation of ``aligned`` and ``reference`` and
        the wall time of each phase (``timings_s``).

    Notes
    -----
    Wall time on the 2-core development CPU (torch's default 2 threads): about 2 s for 32³ and
    6–9 s for 64³ when the machine is otherwise idle; 12–25 s and 28–46 s while other jobs
    keep it loaded (load average ≈ 7). Typical accuracy on maps of sums of Gaussians or of
    1OL5 / 4AKE low-passed to ~D/8 cycles/box with noise: < 1° and < 0.3 voxel, hand right.
    At very low resolution (≲ D/20 cycles/box) maps become nearly featureless blobs and both
    the orientation (several degrees) and the hand become ill-determined.
    """
    import time

    mov, ref = _check_pair(moving, reference)
    if apix <= 0:
        raise ValueError("apix must be positive")
    box = mov.shape[0]
    mov = mov.astype(np.float32)
    ref = ref.astype(np.float32)
    if coarse_box is None:
        coarse_box = 16 if box <= 32 else 20
    coarse_box = min(int(coarse_box), box)
    mid_box = min(int(mid_box), box)
    if coarse_box % 2 or mid_box % 2:
        raise ValueError("coarse_box and mid_box must be even")
    timings = {}
    t0 = time.perf_counter()
    mov_search, ref_search = mov, ref
    if lowpass_A is not None:
        if lowpass_A <= 0:
            raise ValueError("lowpass_A must be positive")
        k_half = box * apix / float(lowpass_A)  # cycles/box where the filter is 0.5
        mov_search = _gaussian_lowpass(mov, k_half)
        ref_search = _gaussian_lowpass(ref, k_half)

    hands = [np.eye(3)] + ([MIRROR] if allow_flip else [])
    rots = _super_fibonacci_rotations(int(n_rotations))
    coarse = _Level(mov_search, ref_search, coarse_box, box / coarse_box)
    per_hand = max(1, -(-int(n_candidates) // len(hands)))
    chosen = []  # (score, hand index, rotation): the best mutually distinct ones of each hand
    for h, m in enumerate(hands):
        mats = np.transpose(rots @ m, (0, 2, 1))  # (R M)^T = M R^T
        sc, _ = coarse.score(mats)
        mine = []
        for i in np.argsort(sc)[::-1]:
            if all(geodesic_distance_deg(rots[i], r2) > 20.0 for _, _, r2 in mine):
                mine.append((float(sc[i]), h, rots[i]))
            if len(mine) >= per_hand:
                break
        chosen += mine
    timings["coarse"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    refined = []
    for _, h, r in chosen:
        r2, _, sc = _refine_local(coarse, r, hands[h], [8.0, 4.0, 2.0])
        refined.append((sc, h, r2))
    refined.sort(key=lambda r: -r[0])
    timings["refine_coarse"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    mid = coarse if mid_box == coarse_box else _Level(mov_search, ref_search, mid_box, box / mid_box)
    # the two best overall, plus the best of the other hand, go on to the finer levels
    todo = refined[:2]
    for h in range(len(hands)):
        if all(c[1] != h for c in todo):
            todo += [c for c in refined if c[1] == h][:1]
    finalists = {}
    for _, h, r in todo:
        r2, _, sc = _refine_local(mid, r, hands[h], [2.0, 1.0, 0.5])
        if h not in finalists or sc > finalists[h][0]:
            finalists[h] = (sc, r2)
    timings["refine_mid"] = time.perf_counter() - t1

    # the best of each hand is refined at full size; the hand is decided by the correlation
    # of the aligned (unfiltered) map with the reference
    t2 = time.perf_counter()
    full = mid if mid_box == box else _Level(mov_search, ref_search, box, 1.0)
    best = None
    for h, (_, r) in finalists.items():
        r, shift, _ = _refine_local(full, r, hands[h], [0.5], max_moves=2)
        r, shift = _refine_joint(full, r, hands[h], shift)
        cand = Alignment(rotation=r, shift_voxels=np.asarray(shift, dtype=np.float64),
                         flipped=bool(h == 1), correlation=0.0)
        aligned = apply_alignment(mov, cand)
        cand.correlation = _pearson(aligned, ref)
        if best is None or cand.correlation > best[0].correlation:
            best = (cand, aligned)
    alignment, aligned = best
    timings["refine_full"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    alignment.timings_s = timings
    return aligned, alignment


# ----------------------------------------------------------------------------------------------
# Pose errors
# ----------------------------------------------------------------------------------------------
def _check_rotations(r, name):
    r = np.asarray(r, dtype=np.float64)
    if r.ndim != 3 or r.shape[1:] != (3, 3):
        raise ValueError(f"{name} must have shape (N, 3, 3), got {r.shape}")
    return r


def global_rotation_between(R_est, R_true, *, inlier_fraction=0.5, n_iter=3):
    """The single rotation G with ``R_est_i ≈ R_true_i · G`` for all images, robustly.

    Why G sits on the right: an image with pose R is the projection of ``V(Rᵀ x)``. If the
    reconstruction is the true map rotated by Q, ``V'(x) = V(Qᵀ x)``, then
    ``V'(R'ᵀ x) = V(Qᵀ R'ᵀ x)`` equals ``V(Rᵀ x)`` for every x iff ``R' Q = R``, i.e. the poses
    that explain the same images in the reconstruction's frame are ``R'_i = R_i Qᵀ``. So
    ``R_est_i = R_true_i G`` with ``G = Qᵀ`` (the inverse of the rotation relating the maps).

    Parameters
    ----------
    R_est, R_true : array_like, shape (N, 3, 3)
        Estimated and true poses (rotation matrices on ``(x, y, z)`` column vectors).
    inlier_fraction : float, optional
        After the first fit on all poses, G is refitted ``n_iter`` times on this fraction of
        poses with the smallest residual errors, so a minority of wild poses does not bias it.
    n_iter : int, optional
        Number of inlier refits.

    Returns
    -------
    G : ndarray, shape (3, 3)
        The chordal-L2 mean rotation: ``argmax_G tr(Gᵀ Σ R_true_iᵀ R_est_i)`` (SVD projection
        onto SO(3)) over the inliers.
    """
    r_est = _check_rotations(R_est, "R_est")
    r_true = _check_rotations(R_true, "R_true")
    if r_est.shape != r_true.shape or len(r_est) == 0:
        raise ValueError("R_est and R_true must have the same non-zero length")
    if not 0 < inlier_fraction <= 1:
        raise ValueError("inlier_fraction must be in (0, 1]")
    rel = np.einsum("nji,njk->nik", r_true, r_est)  # R_true_iᵀ R_est_i  (≈ G)
    g = _project_so3(rel.sum(0))
    n_keep = max(1, int(round(inlier_fraction * len(rel))))
    for _ in range(int(n_iter)):
        err = geodesic_distance_deg(rel, g[None])
        keep = np.argsort(err)[:n_keep]
        g = _project_so3(rel[keep].sum(0))
    return g


def pose_errors(R_est, R_true, allow_flip=True, *, return_transform=False, inlier_fraction=0.5):
    """Per-image pose errors (degrees) after removing the best global rotation (and hand).

    Parameters
    ----------
    R_est, R_true : array_like, shape (N, 3, 3)
        Estimated and true poses.
    allow_flip : bool, optional
        Also try the mirrored hand. A map mirrored by ``J = diag(1, 1, −1)``, ``V'(x) = V(J x)``,
        produces the same images as V with poses ``J R J`` (``J R'ᵀ x = Rᵀ J x`` and the
        projection along z does not see the sign of z). So when the reconstruction came out
        mirrored, ``J R_est_i J ≈ R_true_i G``; the hand with the smaller median error wins.
    return_transform : bool, optional
        Also return ``G`` and whether the hand was flipped.
    inlier_fraction : float, optional
        See :func:`global_rotation_between`.

    Returns
    -------
    errors_deg : ndarray, shape (N,)
        ``geodesic(R_true_i G, R_est_i)`` (or with ``J R_est_i J``) in degrees.
    G : ndarray, shape (3, 3)
        Only if ``return_transform``.
    flipped : bool
        Only if ``return_transform``.
    """
    r_est = _check_rotations(R_est, "R_est")
    r_true = _check_rotations(R_true, "R_true")
    options = [(False, r_est)]
    if allow_flip:
        options.append((True, MIRROR @ r_est @ MIRROR))
    best = None
    for flipped, cand in options:
        g = global_rotation_between(cand, r_true, inlier_fraction=inlier_fraction)
        err = geodesic_distance_deg(r_true @ g, cand)
        if best is None or np.median(err) < np.median(best[0]):
            best = (err, g, flipped)
    if return_transform:
        return best
    return best[0]


def pose_error_stats(errors_deg, n_bins=36):
    """Summary statistics of pose errors.

    Parameters
    ----------
    errors_deg : array_like, shape (N,)
        Per-image errors in degrees (from :func:`pose_errors`).
    n_bins : int, optional
        Number of histogram bins over 0–180 degrees (36 gives 5° bins).

    Returns
    -------
    dict
        ``n``, ``median_deg``, ``mean_deg``, ``frac_under_5deg``, ``frac_under_10deg``,
        ``frac_under_15deg`` (fractions in [0, 1], strict ``<``), ``hist_counts`` (list of ints)
        and ``hist_edges_deg`` (list of ``n_bins + 1`` floats), all JSON-serialisable.
    """
    e = np.asarray(errors_deg, dtype=np.float64).ravel()
    if e.size == 0:
        raise ValueError("errors_deg is empty")
    counts, edges = np.histogram(np.clip(e, 0.0, 180.0), bins=int(n_bins), range=(0.0, 180.0))
    return {
        "n": int(e.size),
        "median_deg": float(np.median(e)),
        "mean_deg": float(np.mean(e)),
        "frac_under_5deg": float(np.mean(e < 5.0)),
        "frac_under_10deg": float(np.mean(e < 10.0)),
        "frac_under_15deg": float(np.mean(e < 15.0)),
        "hist_counts": counts.astype(int).tolist(),
        "hist_edges_deg": edges.tolist(),
    }
