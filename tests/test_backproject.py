"""Direct Fourier reconstruction (:mod:`rmfn_napari.cryoem.backproject`) against independent truths.

* the insertion is the exact adjoint of the projector's trilinear slicing (autograd of
  ``fourier_slices``, i.e. ``grid_sample``'s backward — code the backprojector does not share);
* a known map of Gaussian blobs, projected at uniform random views, comes back with the same
  shape and scale; a real-space projector (no Fourier gridding at all) checks the gridding
  correction on an off-centre blob;
* controls that must fail: transposed rotations, an ignored CTF, ignored or sign-flipped
  particle origins.
Sizes are small (D ≤ 32, ≤ 2000 images) so the file runs in seconds on one CPU thread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmfn_napari.cryoem.backproject import FourierBackprojector, backproject_dataset, insert_dataset
from rmfn_napari.cryoem.ctf import CTFParams
from rmfn_napari.cryoem.downsample import crop_dataset, fourier_crop_volume
from rmfn_napari.cryoem.io import write_map
from rmfn_napari.cryoem.particles import read_particles
from rmfn_napari.cryoem.projector import (fft2_centered, fourier_slices, project, project_real_space,
                                          slices_to_images, volume_fourier)
from rmfn_napari.cryoem.rotations import random_rotations
from rmfn_napari.cryoem.simulate import simulate_particles

D, APIX = 32, 2.0


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _blobs(specs, box=D) -> torch.Tensor:
    """Sum of isotropic Gaussians ``(x, y, z, σ, amplitude)`` (voxels from index box/2), ``[z, y, x]``."""
    c = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    v = torch.zeros(box, box, box, dtype=torch.float64)
    for px, py, pz, s, a in specs:
        v += a * torch.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) / (2 * s * s))
    return v.float()


# an asymmetric arrangement: any error of axis order, handedness or rotation convention shows
BLOBS = [(4, 0, -3, 2.0, 1.0), (-5, 3, 2, 1.5, 0.8), (0, -6, 4, 2.5, 0.6), (2, 5, 6, 1.8, 1.2),
         (-3, -3, -5, 2.0, 0.9)]


def _corr(a, b) -> float:
    a = torch.as_tensor(a).double().flatten()
    b = torch.as_tensor(b).double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def _scale(v, ref) -> float:
    """Least-squares ``s`` in ``v ≈ s·ref``."""
    v, ref = torch.as_tensor(v).double(), torch.as_tensor(ref).double()
    return float((v * ref).sum() / (ref * ref).sum())


def _recon(images, R, ctf=None, tikhonov=0.01, batch=256) -> torch.Tensor:
    bp = FourierBackprojector(images.shape[-1])
    for a in range(0, len(R), batch):
        bp.insert(fft2_centered(images[a:a + batch]), None if ctf is None else ctf[a:a + batch],
                  R[a:a + batch])
    return bp.reconstruct(tikhonov)


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    return _blobs(BLOBS)


@pytest.fixture(scope="module")
def views(volume):
    """2000 uniform rotations and the noise-free, CTF-free projections of ``volume``."""
    R = random_rotations(2000, generator=3).float()
    return R, project(volume, R)


def _ctf_params(n, seed=0) -> CTFParams:
    rng = np.random.default_rng(seed)
    mean, astig = rng.uniform(10000, 20000, n), rng.uniform(100, 500, n)
    return CTFParams(defocus_u=mean + astig / 2, defocus_v=mean - astig / 2,
                     defocus_angle=rng.uniform(0, 360, n), voltage=300.0, cs=2.7,
                     amplitude_contrast=0.1, phase_shift=0.0, bfactor=0.0)


# ----------------------------------------------------------------------------- the operator
def test_insert_is_the_adjoint_of_fourier_slices():
    """num and weight equal the autograd adjoint of trilinear slicing over the whole disc."""
    box, B = 16, 6
    g = torch.Generator().manual_seed(7)
    R = random_rotations(B, generator=11)
    spectra = fft2_centered(torch.randn(B, box, box, generator=g, dtype=torch.float64))
    ctf = 0.3 + torch.rand(B, box, box, generator=g, dtype=torch.float64)
    ctf = 0.5 * (ctf + torch.roll(torch.flip(ctf, (1, 2)), (1, 1), (1, 2)))  # CTF(−k) = CTF(k)
    k = torch.arange(box) - box // 2
    disc = (k[:, None] ** 2 + k[None, :] ** 2) <= (box // 2 - 1) ** 2  # off the Nyquist edge
    spectra, ctf = spectra * disc, ctf * disc

    bp = FourierBackprojector(box, pad=2)
    bp.insert(spectra, ctf, R)
    num, wgt = bp.spectra()

    P = 2 * box
    xr = torch.zeros(P, P, P, dtype=torch.float64, requires_grad=True)
    xi = torch.zeros(P, P, P, dtype=torch.float64, requires_grad=True)
    out = fourier_slices(torch.complex(xr, xi), R, box)
    G = ctf * spectra
    ((G.real * out.real).sum() + (G.imag * out.imag).sum()).backward()
    torch.testing.assert_close(num.real, xr.grad, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(num.imag, xi.grad, atol=1e-9, rtol=1e-9)

    xw = torch.zeros(P, P, P, dtype=torch.float64, requires_grad=True)
    (fourier_slices(torch.complex(xw, torch.zeros_like(xw)), R, box).real * ctf ** 2).sum().backward()
    torch.testing.assert_close(wgt, xw.grad, atol=1e-9, rtol=1e-9)


def test_accumulators_add_and_validate():
    a, b = FourierBackprojector(8), FourierBackprojector(8)
    R = random_rotations(3, generator=1)
    s = fft2_centered(torch.randn(3, 8, 8))
    a.insert(s[:2], None, R[:2])
    b.insert(s[2:], None, R[2:])
    both = FourierBackprojector(8)
    both.insert(s, None, R)
    torch.testing.assert_close((a + b).reconstruct(), both.reconstruct())
    assert (a + b).n_images == 3
    with pytest.raises(ValueError):
        FourierBackprojector(7)
    with pytest.raises(ValueError):
        a.insert(torch.zeros(1, 6, 6, dtype=torch.complex64), None, R[:1])
    assert torch.count_nonzero(FourierBackprojector(8).reconstruct()) == 0  # empty → zeros


# ----------------------------------------------------------------------------- known maps
def test_reconstructs_projected_map_with_its_scale(volume, views):
    R, imgs = views
    rec = _recon(imgs, R)
    assert rec.shape == (D, D, D) and rec.dtype == torch.float32
    assert _corr(rec, volume) > 0.98
    assert abs(_scale(rec, volume) - 1) < 0.05


def test_transposed_rotations_fail(volume, views):
    """Rᵀ instead of R (the commonest convention slip) must not reconstruct the map."""
    R, imgs = views
    good = _corr(_recon(imgs, R), volume)
    wrong = _corr(_recon(imgs, R.transpose(1, 2)), volume)
    assert wrong < 0.85 and good - wrong > 0.2


def test_gridding_correction_on_an_off_centre_blob():
    """Real-space projections (rotate + sum, no Fourier gridding): the mass of a blob 11.6
    voxels from the centre comes back within 4 %; without the sinc² correction it is ~12 % low.
    (The blob stays inside the box's inscribed sphere, so no view loses mass.)"""
    centre = (8, -6, 6)
    vol = _blobs([(*centre, 1.5, 1.0)])
    R = random_rotations(1000, generator=5).float()
    imgs = project_real_space(vol, R, batch=16)
    assert float(imgs.sum(dim=(1, 2)).min() / vol.sum()) > 0.99
    rec = _recon(imgs, R)
    c = torch.arange(D) - D // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    near = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) <= 5 ** 2
    ratio = float(rec[near].double().sum() / vol[near].double().sum())
    assert abs(ratio - 1) < 0.04
    g = torch.sinc(c.double() / (2 * D)) ** 2
    apod = (g[:, None, None] * g[None, :, None] * g[None, None, :]).float()
    uncorrected = float((rec * apod)[near].double().sum() / vol[near].double().sum())
    assert uncorrected < 0.92  # the test can tell a missing correction


def test_ctf_weighted_reconstruction(volume, views):
    R, _ = views
    ctf = _ctf_params(len(R)).evaluate(D, APIX)
    imgs = slices_to_images(fourier_slices(volume_fourier(volume), R, D) * ctf)
    rec = _recon(imgs, R, ctf)
    assert _corr(rec, volume) > 0.95
    assert abs(_scale(rec, volume) - 1) < 0.05
    assert _corr(_recon(imgs, R, None), volume) < 0.8  # the CTF really is corrected


# ----------------------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def sim(tmp_path_factory, volume):
    """Noise-free CTF'd particles placed off-centre (|o| ≤ 3 px) by the simulator, read back."""
    d = tmp_path_factory.mktemp("bp_sim")
    write_map(d / "blobs.mrc", volume.numpy(), APIX)
    res = simulate_particles(d / "blobs.mrc", d / "sim", n=1500, seed=4, noise_free=True,
                             max_shift=3.0)
    ds = read_particles(res.true_poses)
    assert np.abs(ds.shifts_A).max() > 2.0 * APIX  # the origins are not negligible
    return ds


def test_origins_are_removed_with_relions_sign(sim, volume):
    shifts_px = sim.shifts_A / sim.apix
    with_origins = _corr(backproject_dataset(sim, sim.rotations, shifts_px), volume)
    ignored = _corr(backproject_dataset(sim, sim.rotations, None), volume)
    flipped = _corr(backproject_dataset(sim, sim.rotations, -shifts_px), volume)
    assert with_origins > 0.98
    assert ignored < with_origins - 0.03
    assert flipped < 0.8


def test_half_sets_agree_and_add_up_to_the_full_map(sim, volume):
    shifts_px = sim.shifts_A / sim.apix
    half1 = sim.particles["rlnRandomSubset"].to_numpy() == 1
    m1 = backproject_dataset(sim, sim.rotations, shifts_px, subset=half1)  # boolean mask
    m2 = backproject_dataset(sim, sim.rotations, shifts_px, subset=np.flatnonzero(~half1))
    assert _corr(m1, m2) > 0.98
    assert min(_corr(m1, volume), _corr(m2, volume)) > 0.97

    bp1, bp2 = FourierBackprojector(D), FourierBackprojector(D)
    insert_dataset(bp1, sim, sim.rotations, shifts_px, subset=half1, batch=100)
    insert_dataset(bp2, sim, sim.rotations, shifts_px, subset=~half1, batch=333)
    full = backproject_dataset(sim, sim.rotations, shifts_px)
    torch.testing.assert_close((bp1 + bp2).reconstruct(), full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        backproject_dataset(sim, sim.rotations, shifts_px, subset=np.arange(200), invert_contrast=True),
        -backproject_dataset(sim, sim.rotations, shifts_px, subset=np.arange(200)))


def test_fourier_cropped_dataset(sim, volume):
    """CroppedParticles: CTF on the cropped grid at the new pixel size, origins in its px."""
    small = crop_dataset(sim, 24)
    rec = backproject_dataset(small, small.rotations, small.shifts_A / small.apix)
    assert rec.shape == (24, 24, 24)
    assert _corr(rec, fourier_crop_volume(volume.numpy(), 24)) > 0.97


def test_dataset_argument_checks(sim):
    with pytest.raises(ValueError):
        backproject_dataset(sim, sim.rotations[:10], None)
    with pytest.raises(ValueError):
        backproject_dataset(sim, sim.rotations, None, subset=np.ones(3, bool))
    with pytest.raises(IndexError):
        backproject_dataset(sim, sim.rotations, None, subset=[sim.n])
