"""Map alignment: the rotation, translation and hand that superimpose a map on a reference.

Conventions (DESIGN.md §2)
--------------------------
* Volumes are float32 arrays indexed ``[z, y, x]`` in a cubic box of even size ``D``. The
  rotation centre is the voxel with index ``D/2`` on every axis, and a point ``p = (x, y, z)``
  in voxels relative to that centre is the array element ``[z + D/2, y + D/2, x + D/2]``
  (``x`` is the fastest axis).
* Rotations are 3×3 matrices acting on column vectors ``(x, y, z)``
  (:mod:`rmfn_napari.cryoem.rotations`).
* The hand flip (mirror) is ``J = diag(1, 1, -1)`` acting on ``(x, y, z)``, i.e. ``z -> -z``
  about the box centre (:data:`MIRROR`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..rotations import axis_angle_to_matrix, geodesic_distance, quaternion_to_matrix
from ._common import MIRROR, _check_pair, _gaussian_lowpass
from .masks import soft_sphere_mask

__all__ = ["Alignment", "align_map", "apply_alignment", "MIRROR"]


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
    return quaternion_to_matrix(q)


def _grid27() -> np.ndarray:
    """The 3×3×3 grid of offsets ``{-1, 0, 1}³`` (27, 3); row 13 is ``(0, 0, 0)``."""
    g = np.array([-1.0, 0.0, 1.0])
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)


def _small_rotations(step_deg: float) -> np.ndarray:
    """The 27 rotations ``exp(step · g)`` for rotation vectors ``g`` in ``{-1, 0, 1}³`` (numpy)."""
    v = torch.from_numpy(_grid27() * np.radians(step_deg))
    return axis_angle_to_matrix(v).numpy()


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


class _Level:
    """One resolution level of the search: a reference spectrum and a moving map on a d³ grid."""

    def __init__(self, moving: np.ndarray, reference: np.ndarray, small: int, scale: float):
        self.d = small
        self.scale = scale  # full-box voxels per level voxel
        mask = soft_sphere_mask(small, 0.42 * small, 0.06 * small + 1)
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


def _refine_local(level: _Level, rot: np.ndarray, mirror: np.ndarray, steps_deg, max_moves: int = 4):
    """Greedy descent over a 3×3×3 grid of small left-multiplied rotations, step by step."""
    best_score, best_shift = level.score((rot @ mirror).T[None])
    best_score, best_shift = float(best_score[0]), best_shift[0]
    for step in steps_deg:
        offs = _small_rotations(step)
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
    grid = _grid27()
    centre = 13  # index of (0, 0, 0) in the grid
    for step_deg, step_vox in schedule:
        offs = _small_rotations(step_deg)
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
              coarse_box=None, mid_box=32, n_candidates=6, polish=True):
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
    polish : bool, optional
        Refine at full size (step 3). Without it the result is the ``mid_box`` level's, good to
        about a degree and half a voxel (the hand still chosen by the full maps' correlation),
        in a fraction of the time: enough to tell whether two maps share a frame and a hand.

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
            if all(geodesic_distance(rots[i], r2) > 20.0 for _, _, r2 in mine):
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
    full = mid if (mid_box == box or not polish) else _Level(mov_search, ref_search, box, 1.0)
    best = None
    for h, (_, r) in finalists.items():
        if polish:
            r, shift, _ = _refine_local(full, r, hands[h], [0.5], max_moves=2)
            r, shift = _refine_joint(full, r, hands[h], shift)
        else:  # the mid level's shift, in full-box voxels
            shift = np.asarray(mid.score((r @ hands[h]).T[None])[1][0]) * mid.scale
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
