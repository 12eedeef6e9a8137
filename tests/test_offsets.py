"""Particle offsets (RELION ``rlnOriginXAngst/YAngst``): simulate, write and read agree.

RELION's convention (DESIGN.md §2): the particle's centre sits at **−origin** in the image,
``I(x) = P(x + o)``; a particle with origin (6, 10) px appears at column ``D/2 − 6``, row
``D/2 − 10`` (x = the last array axis). The sign is proven here against an independent
construction: a Gaussian blob at the box centre projects to a centred blob under any rotation,
so the simulated image's intensity centroid must sit at ``(D/2 − ox, D/2 − oy)`` px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from rmfn_napari.cryoem.io import read_map, star_round, write_map, write_particles_star


from rmfn_napari.cryoem.particles import read_particles
from rmfn_napari.cryoem.projector import fft2_centered, fourier_slices, slices_to_images, volume_fourier
from rmfn_napari.cryoem.rotations import random_rotations
from rmfn_napari.cryoem.simulate import simulate_particles
from rmfn_napari.errors import InputError

MAP32 = Path(__file__).resolve().parents[1] / "sample_data" / "maps" / "1ol5_32_2.0A.mrc"
D, APIX = 32, 2.0


@pytest.fixture(scope="module")
def blob_map(tmp_path_factory) -> Path:
    """A narrow 3D Gaussian (σ = 1.5 px) centred on index D/2 of every axis, 2 Å voxels."""
    c = np.arange(D) - D // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.exp(-(x**2 + y**2 + z**2) / (2 * 1.5**2)).astype(np.float32)
    path = tmp_path_factory.mktemp("blob") / "blob.mrc"
    write_map(path, vol, APIX)
    return path


def _centroids(images: np.ndarray) -> np.ndarray:
    """Intensity centroids ``(n, 2)`` as (column, row) in px."""
    idx = np.arange(images.shape[-1], dtype=np.float64)
    total = images.sum(axis=(1, 2), dtype=np.float64)
    col = (images.sum(axis=1, dtype=np.float64) * idx).sum(1) / total
    row = (images.sum(axis=2, dtype=np.float64) * idx).sum(1) / total
    return np.stack([col, row], 1)


def _true_origins_px(true_poses: Path) -> tuple[list, np.ndarray]:
    """(image names, origins (n, 2) px) read straight from the STAR with starfile."""
    blocks = starfile.read(true_poses, always_dict=True)
    apix = float(blocks["optics"]["rlnImagePixelSize"][0])
    parts = blocks["particles"]
    origins = parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(np.float64) / apix
    return list(parts["rlnImageName"]), origins


def test_simulated_particle_sits_at_minus_origin(blob_map, tmp_path):
    res = simulate_particles(blob_map, tmp_path, n=24, seed=2, noise_free=True, apply_ctf=False,
                             max_shift=4.0)
    names, o = _true_origins_px(res.true_poses)
    picked = read_particles(res.star)
    assert picked.image_names == names
    r = np.hypot(o[:, 0], o[:, 1])
    assert r.max() <= 4.0 + 1e-6 and r.max() > 2.5  # inside the disc, and far from trivial
    got = _centroids(picked.images())
    np.testing.assert_allclose(got, D / 2 - o, atol=0.1)
    # the opposite sign would be off by 2|o|, far beyond the tolerance
    assert np.abs(got - (D / 2 + o)).max() > 4.0


def test_zero_origin_is_centred(blob_map, tmp_path):
    res = simulate_particles(blob_map, tmp_path, n=4, seed=2, noise_free=True, apply_ctf=False)
    _, o = _true_origins_px(res.true_poses)
    np.testing.assert_array_equal(o, 0.0)
    np.testing.assert_allclose(_centroids(read_particles(res.star).images()), D / 2, atol=0.1)


def test_reprojection_through_true_poses_and_centring(tmp_path):
    """Images = CTF · slice · exp(+2πi k·o/D) through the STAR's values, exactly; centring with
    exp(−2πi k·o/D) gives the same seed's centred images (the other random streams are
    untouched by ``max_shift``)."""
    kw = dict(n=12, seed=7, noise_free=True, defocus_range=(8000.0, 10000.0))
    shifted = simulate_particles(MAP32, tmp_path / "s", max_shift=3.0, **kw)
    centred = simulate_particles(MAP32, tmp_path / "c", **kw)
    ds = read_particles(shifted.true_poses)
    ds0 = read_particles(centred.true_poses)
    np.testing.assert_array_equal(ds.euler, ds0.euler)
    np.testing.assert_array_equal(ds.ctf.defocus_u, ds0.ctf.defocus_u)
    o = ds.shifts_A / ds.apix
    assert np.hypot(*o.T).max() > 1.0
    k = np.arange(D) - D // 2
    kx, ky = k[None, None, :], k[None, :, None]
    phase = 2 * np.pi * (o[:, 0, None, None] * kx + o[:, 1, None, None] * ky) / D  # rad
    vol, _ = read_map(shifted.reference)
    ft = fourier_slices(volume_fourier(torch.from_numpy(vol)), torch.as_tensor(ds.rotations), D)
    ft = ft * ds.ctf.evaluate(D, ds.apix) * torch.as_tensor(np.exp(1j * phase)).to(torch.complex64)
    stored = ds.images()
    scale = np.abs(stored).max()
    assert np.abs(slices_to_images(ft).numpy() - stored).max() <= 1e-5 * scale
    # centre the shifted images; compare all but the Nyquist row/column (a sub-pixel shift of the
    # unpaired Nyquist terms is not undone by taking the real part)
    back = fft2_centered(torch.from_numpy(stored).double()).numpy() * np.exp(-1j * phase)
    ref = fft2_centered(torch.from_numpy(ds0.images()).double()).numpy()
    inner = (slice(None), slice(1, None), slice(1, None))
    assert np.abs(back[inner] - ref[inner]).max() <= 1e-4 * np.abs(ref).max()


def test_noise_and_picked_star_do_not_depend_on_max_shift(tmp_path):
    a = simulate_particles(MAP32, tmp_path / "a", n=6, seed=3)
    b = simulate_particles(MAP32, tmp_path / "b", n=6, seed=3, max_shift=2.0)
    pa = starfile.read(a.star, always_dict=True)["particles"]
    pb = starfile.read(b.star, always_dict=True)["particles"]
    pd.testing.assert_frame_equal(pa, pb)
    images_a, images_b = read_particles(a.star).images(), read_particles(b.star).images()
    assert not np.array_equal(images_a, images_b)
    # the noise (noisy minus noise-free) is the same draw with and without the shift
    clean_a = read_particles(simulate_particles(MAP32, tmp_path / "ca", n=6, seed=3, noise_free=True).star).images()
    clean_b = read_particles(simulate_particles(MAP32, tmp_path / "cb", n=6, seed=3, noise_free=True,
                                                max_shift=2.0).star).images()
    noise_a, noise_b = images_a - clean_a, images_b - clean_b
    assert np.abs(noise_a).max() > 0
    assert np.allclose(noise_a * np.std(clean_b, axis=(1, 2))[:, None, None] / np.std(clean_a, axis=(1, 2))[:, None, None],
                       noise_b, rtol=1e-3, atol=1e-3 * np.abs(noise_b).max())


def test_origins_round_trip_through_write_particles_star(tmp_path):
    res = simulate_particles(MAP32, tmp_path, n=10, seed=1, noise_free=True)
    ds = read_particles(res.star)
    rng = np.random.default_rng(0)
    S = rng.uniform(-9.0, 9.0, (ds.n, 2)) / 3.0  # Å, many decimals
    out = write_particles_star(tmp_path / "out.star", ds,
                               rotations=random_rotations(ds.n, generator=4).numpy(), shifts_A=S)
    back = read_particles(out)
    np.testing.assert_array_equal(back.shifts_A, star_round(S))
    assert np.abs(back.shifts_A - S).max() <= 5e-7


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), 8.0])
def test_max_shift_must_be_finite_non_negative_and_below_a_quarter_box(tmp_path, bad):
    with pytest.raises(InputError, match="max-shift"):
        simulate_particles(MAP32, tmp_path, n=2, max_shift=bad)
    assert not (tmp_path / "particles.star").exists()
