"""SO(3) utilities: RELION Euler convention (worked examples), sampling, distances."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from rmfn_napari.cryoem.rotations import (axis_angle_to_matrix, euler_to_matrix, geodesic_distance,
                                          matrix_to_axis_angle, matrix_to_euler, perturb_rotations,
                                          quaternion_to_matrix, random_rotations)


def _rz(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _ry(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def test_worked_example_90_90_0():
    # hand evaluation of RELION's Euler_angles2matrix(90, 90, 0) (module docstring)
    A = euler_to_matrix(90.0, 90.0, 0.0)
    expected = np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], dtype=float)
    np.testing.assert_allclose(A, expected, atol=1e-12)
    # a point on the map's z axis lands on the image's -x axis
    np.testing.assert_allclose(A @ np.array([0, 0, 1.0]), [-1, 0, 0], atol=1e-12)


def test_generic_angles_match_zyz_composition_and_relion_terms():
    rot, tilt, psi = 30.0, 40.0, 50.0
    a, b, g = np.deg2rad([rot, tilt, psi])
    A = euler_to_matrix(rot, tilt, psi)
    # independent construction: A = (Rz(rot) Ry(tilt) Rz(psi))^T
    np.testing.assert_allclose(A, (_rz(a) @ _ry(b) @ _rz(g)).T, atol=1e-12)
    # individual RELION entries, numerically: A(0,2) = -cos(psi) sin(tilt), A(2,0) = sin(tilt) cos(rot)
    assert A[0, 2] == pytest.approx(-math.cos(g) * math.sin(b))
    assert A[1, 2] == pytest.approx(math.sin(g) * math.sin(b))
    assert A[2, 0] == pytest.approx(0.5566704, abs=1e-7)  # sin 40° cos 30° = 0.6427876 * 0.8660254
    assert A[2, 1] == pytest.approx(0.3213938, abs=1e-7)  # sin 40° sin 30°
    assert A[2, 2] == pytest.approx(0.7660444, abs=1e-7)  # cos 40°


def test_torch_and_numpy_agree_and_round_trip():
    rng = np.random.default_rng(0)
    ang = np.stack([rng.uniform(-180, 180, 200), rng.uniform(0, 180, 200), rng.uniform(-180, 180, 200)], 1)
    A = euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    At = euler_to_matrix(*torch.as_tensor(ang).T)
    np.testing.assert_allclose(At.numpy(), A, atol=1e-12)
    np.testing.assert_allclose(A @ np.swapaxes(A, 1, 2), np.broadcast_to(np.eye(3), A.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(A), 1.0, atol=1e-12)
    back = matrix_to_euler(A)
    np.testing.assert_allclose(np.stack(back, 1), ang, atol=1e-8)
    # gimbal lock: tilt 0 and 180 still give the same matrix
    for t in (0.0, 180.0):
        B = euler_to_matrix(25.0, t, 70.0)
        np.testing.assert_allclose(euler_to_matrix(*matrix_to_euler(B)), B, atol=1e-12)


def test_random_rotations_are_haar_uniform():
    R = random_rotations(20000, generator=1).numpy()
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    # E[R] = 0 and E[tr(R)^2] = 1 for the Haar measure
    assert np.abs(R.mean(0)).max() < 0.02
    tr = np.trace(R, axis1=1, axis2=2)
    assert abs((tr ** 2).mean() - 1.0) < 0.05
    # the viewing direction (third row) is uniform on the sphere: its z component is U(-1, 1)
    assert stats.kstest(R[:, 2, 2], "uniform", args=(-1, 2)).pvalue > 1e-3
    # same seed, same draws
    np.testing.assert_array_equal(random_rotations(5, generator=7).numpy(), random_rotations(5, generator=7).numpy())


def test_geodesic_distance():
    R1 = _rz(0.0)
    R2 = _rz(np.deg2rad(30.0))
    assert geodesic_distance(R1, R2) == pytest.approx(30.0)
    assert geodesic_distance(R2, R2) == pytest.approx(0.0, abs=1e-5)  # clamped, no NaN
    assert geodesic_distance(_ry(np.pi), np.eye(3)) == pytest.approx(180.0)
    t = geodesic_distance(torch.as_tensor(R1), torch.as_tensor(R2))
    assert isinstance(t, torch.Tensor) and float(t) == pytest.approx(30.0)


def test_perturbation_angles_and_axis_angle():
    R = random_rotations(2000, generator=3)
    P = perturb_rotations(R, 45.0, 90.0, generator=4)
    d = geodesic_distance(R, P).numpy()
    assert d.min() >= 45.0 - 1e-6 and d.max() <= 90.0 + 1e-6
    assert abs(d.mean() - 67.5) < 1.0
    v = matrix_to_axis_angle(R)
    torch.testing.assert_close(axis_angle_to_matrix(v), R, atol=1e-10, rtol=0)
    # Rodrigues: rotation by 90° about z maps x to y
    Rz = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    torch.testing.assert_close(Rz @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               torch.tensor([0.0, 1, 0], dtype=torch.float64))
    # differentiable at zero
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    axis_angle_to_matrix(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_quaternion_matches_axis_angle():
    th = 0.7
    q = np.array([math.cos(th / 2), 0, 0, math.sin(th / 2)])
    np.testing.assert_allclose(quaternion_to_matrix(q), _rz(th), atol=1e-12)
