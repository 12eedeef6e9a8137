"""Rotations on SO(3): RELION Euler angles, uniform sampling, geodesic distance, perturbation.

Convention
----------
A rotation is a 3x3 matrix ``R`` acting on column vectors ``(x, y, z)`` (``x`` is the fastest
array axis of a volume). A particle image is the projection along ``z`` of the rotated volume
``V(Rᵀx)``, so a density blob at position ``p`` in the volume appears in the image at
``(R p)_x, (R p)_y``, and in Fourier space ``F_image(kx, ky) = F_V(Rᵀ (kx, ky, 0))``.

``R`` is exactly RELION's matrix ``A`` built by ``Euler_angles2matrix(rot, tilt, psi)``
(``src/euler.cpp``) from ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi`` (degrees)::

    A = [[ cψ cθ cφ − sψ sφ,   cψ cθ sφ + sψ cφ,  −cψ sθ],
         [−sψ cθ cφ − cψ sφ,  −sψ cθ sφ + cψ cφ,   sψ sθ],
         [ sθ cφ,              sθ sφ,              cθ  ]]

with ``φ = rot``, ``θ = tilt``, ``ψ = psi``. Equivalently ``A = (Rz(φ) Ry(θ) Rz(ψ))ᵀ`` with the
active right-handed rotations ``Rz``, ``Ry``.

Worked example (``rot, tilt, psi = 90°, 90°, 0°``)::

    cφ = 0, sφ = 1, cθ = 0, sθ = 1, cψ = 1, sψ = 0
    A = [[ 0, 0, -1],
         [-1, 0,  0],
         [ 0, 1,  0]]

so a blob at ``p = (0, 0, 1)`` (on the z axis of the map) lands at ``A p = (-1, 0, 0)``, on
the negative x axis of the image.

Geodesic distance (degrees) is ``arccos((tr(R₁ᵀR₂) − 1)/2)``, with the argument clamped to
``[-1, 1]``.

Functions accept numpy arrays or torch tensors; the Euler conversions and the geodesic
distance return the type they were given, the samplers return torch tensors.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "euler_to_matrix",
    "matrix_to_euler",
    "quaternion_to_matrix",
    "random_rotations",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "geodesic_distance",
    "perturb_rotations",
]


def _is_torch(*xs) -> bool:
    return any(isinstance(x, torch.Tensor) for x in xs)


def euler_to_matrix(rot, tilt, psi):
    """RELION ``Euler_angles2matrix``: ZYZ Euler angles (degrees) to rotation matrices.

    Parameters
    ----------
    rot, tilt, psi : float, array_like or torch.Tensor
        ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi`` in degrees; broadcast together.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape ``(..., 3, 3)``
        RELION's matrix ``A`` (see the module docstring for the formula and a worked example);
        a torch tensor if any input is one (dtype/device of that input), else float64 numpy.
    """
    if _is_torch(rot, tilt, psi):
        ref = next(x for x in (rot, tilt, psi) if isinstance(x, torch.Tensor))
        dt = ref.dtype if ref.is_floating_point() else torch.float64
        a, b, g = (torch.as_tensor(v, dtype=dt, device=ref.device) for v in (rot, tilt, psi))
        a, b, g = torch.broadcast_tensors(a, b, g)
        a, b, g = torch.deg2rad(a), torch.deg2rad(b), torch.deg2rad(g)
        ca, cb, cg, sa, sb, sg = a.cos(), b.cos(), g.cos(), a.sin(), b.sin(), g.sin()
        stack = torch.stack
    else:
        a, b, g = np.broadcast_arrays(*(np.deg2rad(np.asarray(v, dtype=np.float64))
                                        for v in (rot, tilt, psi)))
        ca, cb, cg, sa, sb, sg = np.cos(a), np.cos(b), np.cos(g), np.sin(a), np.sin(b), np.sin(g)
        stack = np.stack
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        stack([sc, ss, cb], -1),
    ]
    return stack(rows, -2)


def matrix_to_euler(R):
    """Rotation matrices to RELION ZYZ Euler angles (degrees), inverse of :func:`euler_to_matrix`.

    Parameters
    ----------
    R : array_like or torch.Tensor, shape ``(..., 3, 3)``

    Returns
    -------
    rot, tilt, psi : arrays of shape ``(...)`` in degrees
        ``rot, psi`` in ``(-180, 180]``, ``tilt`` in ``[0, 180]``. At the gimbal lock
        (``tilt`` 0 or 180) ``rot`` is set to 0 and the whole in-plane angle goes to ``psi``,
        as RELION's ``Euler_matrix2angles`` does.
    """
    is_t = isinstance(R, torch.Tensor)
    lib = torch if is_t else np
    A = R if is_t else np.asarray(R, dtype=np.float64)
    sb = lib.sqrt(A[..., 0, 2] ** 2 + A[..., 1, 2] ** 2)
    regular = sb > 16 * np.finfo(np.float32).eps
    rot = lib.where(regular, lib.arctan2(A[..., 2, 1], A[..., 2, 0]), lib.zeros_like(sb))
    tilt = lib.arctan2(sb, A[..., 2, 2])
    psi_reg = lib.arctan2(A[..., 1, 2], -A[..., 0, 2])
    up = A[..., 2, 2] > 0
    psi_lock = lib.where(up, lib.arctan2(-A[..., 1, 0], A[..., 0, 0]),
                         lib.arctan2(A[..., 1, 0], -A[..., 0, 0]))
    psi = lib.where(regular, psi_reg, psi_lock)
    tilt = lib.where(regular, tilt, lib.where(up, lib.zeros_like(sb), lib.full_like(sb, math.pi)))
    return lib.rad2deg(rot), lib.rad2deg(tilt), lib.rad2deg(psi)


def quaternion_to_matrix(q):
    """Unit quaternions ``(w, x, y, z)`` to rotation matrices (active, right-handed).

    Parameters
    ----------
    q : torch.Tensor or array_like, shape ``(..., 4)``
        Normalised internally.

    Returns
    -------
    Same type as ``q``, shape ``(..., 3, 3)``.
    """
    is_t = isinstance(q, torch.Tensor)
    lib = torch if is_t else np
    q = q if is_t else np.asarray(q, dtype=np.float64)
    q = q / lib.sqrt((q * q).sum(-1))[..., None]
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        lib.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        lib.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        lib.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return lib.stack(rows, -2)


def _normal(shape, generator, dtype, device) -> torch.Tensor:
    """Standard normal draws from a torch.Generator, a numpy Generator, an int seed or None."""
    if isinstance(generator, np.random.Generator):
        return torch.as_tensor(generator.standard_normal(shape), dtype=dtype, device=device)
    if isinstance(generator, (int, np.integer)):
        generator = torch.Generator().manual_seed(int(generator))
    out = torch.randn(shape, generator=generator, dtype=torch.float64)
    return out.to(dtype=dtype, device=device)


def _uniform(shape, generator, dtype, device) -> torch.Tensor:
    if isinstance(generator, np.random.Generator):
        return torch.as_tensor(generator.random(shape), dtype=dtype, device=device)
    if isinstance(generator, (int, np.integer)):
        generator = torch.Generator().manual_seed(int(generator))
    return torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)


def random_rotations(n: int, generator=None, dtype=torch.float64, device=None) -> torch.Tensor:
    """Draw ``n`` rotations uniformly (Haar measure) on SO(3).

    A 4D standard normal vector normalised to unit length is a uniform unit quaternion,
    which maps to a uniform rotation.

    Parameters
    ----------
    n : int
        Number of rotations.
    generator : torch.Generator, numpy.random.Generator, int or None
        Source of randomness (an int is a seed); None uses torch's global generator.
    dtype, device
        Of the returned tensor.

    Returns
    -------
    torch.Tensor, shape ``(n, 3, 3)``
    """
    q = _normal((int(n), 4), generator, torch.float64, None)
    return quaternion_to_matrix(q).to(dtype=dtype, device=device)


def _skew(v: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(v[..., 0])
    return torch.stack([
        torch.stack([z, -v[..., 2], v[..., 1]], -1),
        torch.stack([v[..., 2], z, -v[..., 0]], -1),
        torch.stack([-v[..., 1], v[..., 0], z], -1),
    ], -2)


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: rotation vectors (axis × angle in radians) to matrices.

    Differentiable everywhere, including at ``v = 0`` (a Taylor expansion is used for
    small angles).

    Parameters
    ----------
    v : torch.Tensor, shape ``(..., 3)``
        Rotation vectors; the norm is the angle in radians (right-hand rule).

    Returns
    -------
    torch.Tensor, shape ``(..., 3, 3)``
    """
    v = torch.as_tensor(v)
    theta2 = (v * v).sum(-1)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    safe = torch.sqrt(safe2)
    a = torch.where(small, 1 - theta2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(safe)) / safe2)
    K = _skew(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(K.shape)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to rotation vectors (axis × angle in radians, angle in ``[0, π]``).

    Parameters
    ----------
    R : torch.Tensor, shape ``(..., 3, 3)``

    Returns
    -------
    torch.Tensor, shape ``(..., 3)``
    """
    R = torch.as_tensor(R)
    q = _matrix_to_quaternion(R)
    w = q[..., 0].clamp(-1, 1)
    xyz = q[..., 1:]
    n = xyz.norm(dim=-1)
    angle = 2 * torch.atan2(n, w)
    scale = torch.where(n > 1e-12, angle / n.clamp_min(1e-12), torch.full_like(n, 2.0))
    return xyz * scale[..., None]


def _matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Numerically stable matrix → unit quaternion ``(w, x, y, z)`` with ``w ≥ 0``."""
    m = R
    t = torch.stack([
        1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],
        1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
        1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
    ], -1)
    best = t.argmax(-1, keepdim=True)
    # four candidate quaternions, each well conditioned when its own t is largest
    r = torch.sqrt(t.clamp_min(1e-30))
    c0 = torch.stack([r[..., 0], (m[..., 2, 1] - m[..., 1, 2]) / r[..., 0],
                      (m[..., 0, 2] - m[..., 2, 0]) / r[..., 0], (m[..., 1, 0] - m[..., 0, 1]) / r[..., 0]], -1)
    c1 = torch.stack([(m[..., 2, 1] - m[..., 1, 2]) / r[..., 1], r[..., 1],
                      (m[..., 0, 1] + m[..., 1, 0]) / r[..., 1], (m[..., 0, 2] + m[..., 2, 0]) / r[..., 1]], -1)
    c2 = torch.stack([(m[..., 0, 2] - m[..., 2, 0]) / r[..., 2], (m[..., 0, 1] + m[..., 1, 0]) / r[..., 2],
                      r[..., 2], (m[..., 1, 2] + m[..., 2, 1]) / r[..., 2]], -1)
    c3 = torch.stack([(m[..., 1, 0] - m[..., 0, 1]) / r[..., 3], (m[..., 0, 2] + m[..., 2, 0]) / r[..., 3],
                      (m[..., 1, 2] + m[..., 2, 1]) / r[..., 3], r[..., 3]], -1)
    cands = torch.stack([c0, c1, c2, c3], -2) * 0.5
    q = torch.gather(cands, -2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = q * torch.where(q[..., :1] < 0, -1.0, 1.0).to(q.dtype)
    return q / q.norm(dim=-1, keepdim=True)


def geodesic_distance(R1, R2):
    """Geodesic (angular) distance between rotations, in degrees.

    ``arccos((tr(R₁ᵀR₂) − 1)/2)`` with the argument clamped to ``[-1, 1]``.

    Parameters
    ----------
    R1, R2 : array_like or torch.Tensor, shape ``(..., 3, 3)`` (broadcast)

    Returns
    -------
    Array or tensor of shape ``(...)``, degrees in ``[0, 180]``.
    """
    if _is_torch(R1, R2):
        ref = R1 if isinstance(R1, torch.Tensor) else R2
        R1 = torch.as_tensor(R1, dtype=ref.dtype, device=ref.device)
        R2 = torch.as_tensor(R2, dtype=ref.dtype, device=ref.device)
        tr = (R1 * R2).sum((-1, -2))
        return torch.rad2deg(torch.arccos(((tr - 1) / 2).clamp(-1.0, 1.0)))
    R1, R2 = np.asarray(R1, dtype=np.float64), np.asarray(R2, dtype=np.float64)
    tr = (R1 * R2).sum((-1, -2))
    return np.rad2deg(np.arccos(np.clip((tr - 1) / 2, -1.0, 1.0)))


def random_unit_vectors(n: int, generator=None, dtype=torch.float64, device=None) -> torch.Tensor:
    """``n`` unit vectors uniform on the sphere, shape ``(n, 3)``."""
    v = _normal((int(n), 3), generator, torch.float64, None)
    return (v / v.norm(dim=-1, keepdim=True)).to(dtype=dtype, device=device)


def perturb_rotations(R, min_deg: float, max_deg: float, generator=None) -> torch.Tensor:
    """Rotate each ``R`` by a random axis and a geodesic angle uniform in ``[min_deg, max_deg]``.

    ``R' = exp(θ [u]×) R`` with ``u`` uniform on the sphere and ``θ ~ U(min_deg, max_deg)``,
    so ``geodesic_distance(R, R') == θ`` exactly (the paper starts poses 45–90° from the truth).

    Parameters
    ----------
    R : torch.Tensor or array_like, shape ``(n, 3, 3)``
    min_deg, max_deg : float
        Range of the geodesic angle, degrees, ``0 <= min_deg <= max_deg <= 180``.
    generator : torch.Generator, numpy.random.Generator, int or None

    Returns
    -------
    torch.Tensor, shape ``(n, 3, 3)``, dtype/device of ``R`` (float64 for numpy input).
    """
    if not 0 <= min_deg <= max_deg <= 180:
        raise ValueError(f"need 0 <= min_deg <= max_deg <= 180, got {min_deg}, {max_deg}")
    R = torch.as_tensor(R)
    if not R.is_floating_point():
        R = R.double()
    n = R.shape[0]
    if isinstance(generator, (int, np.integer)):
        generator = torch.Generator().manual_seed(int(generator))
    u = random_unit_vectors(n, generator)
    theta = torch.deg2rad(min_deg + (max_deg - min_deg) * _uniform((n,), generator, torch.float64, None))
    dR = axis_angle_to_matrix(u * theta[:, None])
    return (dR.to(R) @ R)
