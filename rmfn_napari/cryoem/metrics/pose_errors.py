"""Pose errors: per-image angular errors after removing the global rotation (and hand) that
relates an estimated set of poses to the true one.

Conventions (DESIGN.md §2): rotations are 3×3 matrices acting on column vectors
``(x, y, z)``; a particle image with pose ``R`` is the projection along z of ``V(Rᵀ x)``; the
geodesic distance between two rotations is ``degrees(arccos(clip((tr(R1ᵀ R2) − 1) / 2, −1, 1)))``
(:func:`rmfn_napari.cryoem.rotations.geodesic_distance`); the hand flip is
``J = diag(1, 1, −1)`` (``MIRROR``). Inputs and outputs are numpy arrays.
"""

from __future__ import annotations

import numpy as np

from ..rotations import geodesic_distance
from ._common import MIRROR, _to_numpy

__all__ = ["geodesic_distance_deg", "global_rotation_between", "pose_errors", "pose_error_stats"]


def _project_so3(m: np.ndarray) -> np.ndarray:
    """Closest rotation (Frobenius) to a 3×3 matrix, via SVD."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def geodesic_distance_deg(r1, r2) -> np.ndarray:
    """Geodesic (angular) distance between rotations, in degrees (numpy in and out).

    Parameters
    ----------
    r1, r2 : array_like, shape (..., 3, 3)
        Rotation matrices (broadcast against each other); torch tensors are converted.

    Returns
    -------
    ndarray or float
        ``degrees(arccos(clip((tr(R1ᵀ R2) - 1) / 2, -1, 1)))`` in [0, 180] degrees, computed by
        :func:`rmfn_napari.cryoem.rotations.geodesic_distance` in float64.
    """
    r1 = np.asarray(_to_numpy(r1), dtype=np.float64)
    r2 = np.asarray(_to_numpy(r2), dtype=np.float64)
    return geodesic_distance(r1, r2)


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
