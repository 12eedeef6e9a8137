"""Projector: Fourier-slice and real-space paths against analytic Gaussian projections."""

import math

import numpy as np
import pytest
import torch

from rmfn_napari.cryoem.projector import (fft2_centered, fourier_slices, ifft2_centered, project,
                                          project_real_space, volume_fourier)
from rmfn_napari.cryoem.rotations import axis_angle_to_matrix, euler_to_matrix, random_rotations

D = 32
BLOBS = [((3.0, -5.0, 7.0), 2.0, 1.0), ((-6.0, 4.0, -2.0), 1.6, 0.7), ((0.0, 1.0, 0.0), 2.5, 0.5)]


def _coords(n):
    return torch.arange(n, dtype=torch.float64) - n // 2


def gaussian_volume(blobs=BLOBS):
    c = _coords(D)
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    return sum(a * torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s))
               for p, s, a in blobs)


def analytic_projection(R, blobs=BLOBS):
    """A 3D Gaussian a·exp(-|x-p|²/2σ²) projects along z to a·√(2π)σ·exp(-|xy-(Rp)_xy|²/2σ²)."""
    c = _coords(D)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    out = []
    for Rb in R:
        img = torch.zeros(D, D, dtype=torch.float64)
        for p, s, a in blobs:
            q = Rb @ torch.tensor(p, dtype=torch.float64)
            img += a * math.sqrt(2 * math.pi) * s * torch.exp(-((xx - q[0]) ** 2 + (yy - q[1]) ** 2) / (2 * s * s))
        out.append(img)
    return torch.stack(out)


@pytest.fixture(scope="module")
def setup():
    R = random_rotations(6, generator=11)
    return gaussian_volume(), R, analytic_projection(R)


def test_fourier_slice_matches_analytic(setup):
    V, R, truth = setup
    img = project(V.float(), R.float())
    assert img.shape == (6, D, D) and img.dtype == torch.float32
    err = (img.double() - truth).abs().max() / truth.abs().max()
    assert err < 0.025, err


def test_real_space_matches_analytic(setup):
    V, R, truth = setup
    img = project_real_space(V, R)
    err = (img - truth).abs().max() / truth.abs().max()
    assert err < 0.05, err


def test_paths_agree_with_each_other(setup):
    V, R, _ = setup
    a = project(V, R)
    b = project_real_space(V, R)
    assert ((a - b).abs().max() / b.abs().max()) < 0.05
    # and correlate almost perfectly
    cc = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    assert cc > 0.999


def test_gridding_correction_helps(setup):
    V, R, truth = setup
    plain = fourier_slices(volume_fourier(V, grid_correct=False), R, D)
    corrected = fourier_slices(volume_fourier(V), R, D)
    e_plain = (ifft2_centered(plain).real - truth).abs().max()
    e_corr = (ifft2_centered(corrected).real - truth).abs().max()
    assert e_corr < e_plain


@pytest.mark.parametrize("path", [project, project_real_space])
def test_blob_convention(path):
    # a blob at p = (0, 0, 6) (x, y, z) with RELION angles (90, 90, 0): A p = (-6, 0, 0)
    V = gaussian_volume([((0.0, 0.0, 6.0), 1.5, 1.0)])
    A = torch.as_tensor(euler_to_matrix(90.0, 90.0, 0.0))
    img = path(V, A[None])[0]
    j, i = np.unravel_index(int(img.argmax()), img.shape)
    assert (i - D // 2, j - D // 2) == (-6, 0)
    # identity: a blob at (4, -3, 5) appears at x = 4, y = -3
    V = gaussian_volume([((4.0, -3.0, 5.0), 1.5, 1.0)])
    img = path(V, torch.eye(3, dtype=torch.float64)[None])[0]
    j, i = np.unravel_index(int(img.argmax()), img.shape)
    assert (i - D // 2, j - D // 2) == (4, -3)


def test_centered_fft_conventions():
    img = torch.zeros(D, D, dtype=torch.float64)
    img[D // 2, D // 2] = 1.0  # delta at the origin -> constant, real spectrum
    ft = fft2_centered(img)
    torch.testing.assert_close(ft, torch.ones(D, D, dtype=torch.complex128))
    # a shift by +1 pixel in x gives phase exp(-2πi kx/D) with kx = j - D/2
    img2 = torch.roll(img, 1, dims=1)
    k = _coords(D)
    torch.testing.assert_close(fft2_centered(img2)[0], torch.exp(-2j * math.pi * k / D).to(torch.complex128))
    torch.testing.assert_close(ifft2_centered(ft).real, img)


def test_differentiable_in_volume_and_rotation():
    V = gaussian_volume().requires_grad_(True)
    v = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    target = analytic_projection(axis_angle_to_matrix(torch.tensor([0.35, -0.15, 0.45], dtype=torch.float64))[None])

    def loss_fn(vv, VV):
        return ((project(VV, axis_angle_to_matrix(vv)[None]) - target) ** 2).sum()

    loss = loss_fn(v, V)
    loss.backward()
    assert torch.isfinite(V.grad).all() and V.grad.abs().sum() > 0
    # the rotation gradient matches central finite differences
    eps = 1e-5
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = eps
        fd = (loss_fn(v.detach() + e, V.detach()) - loss_fn(v.detach() - e, V.detach())) / (2 * eps)
        assert float(v.grad[i]) == pytest.approx(float(fd), rel=1e-3, abs=1e-6)
