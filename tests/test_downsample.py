"""Fourier cropping (rmfn_napari.cryoem.downsample) against independent constructions, and the
positioned-read path of ParticleDataset.images (dtype, byte order, extended header, 2D files)."""

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from rmfn_napari.cryoem.ctf import ctf_2d
from rmfn_napari.cryoem.downsample import (CroppedParticles, crop_dataset, cropped_pixel_size,
                                           fourier_crop_images, fourier_crop_volume, validate_box)
from rmfn_napari.cryoem.io import write_particles_star, write_star
from rmfn_napari.cryoem.particles import read_particles
from rmfn_napari.cryoem.simulate import simulate_particles
from rmfn_napari.errors import InputError

MAP32 = Path(__file__).resolve().parents[1] / "sample_data" / "maps" / "1ol5_32_2.0A.mrc"


def _grid(D: int, ndim: int):
    """Pixel positions in box units, ``(j − D/2)/D``, as arrays ``[.., y, x]`` (x last)."""
    u = (np.arange(D) - D // 2) / D
    return np.meshgrid(*[u] * ndim, indexing="ij")


def _centroid(a: np.ndarray) -> np.ndarray:
    """Centre of mass in px from the centre (index D/2), per array axis."""
    D = a.shape[-1]
    return np.array([(a * (g * D)).sum() / a.sum() for g in _grid(D, a.ndim)])


# ------------------------------------------------------------------------- pure functions
def test_band_limited_image_keeps_its_values():
    def f(y, x):  # integer frequencies (cycles/box) all below the new Nyquist of 16
        return (1.5 + np.cos(2 * np.pi * (3 * x + 5 * y) + 0.3)
                + 0.7 * np.sin(2 * np.pi * (-7 * x + 2 * y))
                + 0.4 * np.cos(2 * np.pi * 15 * y) + 0.2 * np.sin(2 * np.pi * (11 * x - 13 * y)))

    big = np.stack([f(*_grid(64, 2)), 2 * f(*_grid(64, 2))]).astype(np.float32)
    out = fourier_crop_images(big, 32)
    want = np.stack([f(*_grid(32, 2)), 2 * f(*_grid(32, 2))])
    assert out.dtype == np.float32 and out.shape == (2, 32, 32)
    assert np.abs(out - want).max() < 1e-5
    assert fourier_crop_images(big, 64) is big


def test_blob_centroid_scales_with_the_box():
    D, x0, y0, sigma = 96, 12.0, -21.0, 4.0  # px from the centre; x = last axis
    yy, xx = (g * D for g in _grid(D, 2))
    blob = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma ** 2))[None].astype(np.float32)
    out = fourier_crop_images(blob, 32)[0]
    cy, cx = _centroid(out)
    assert cx == pytest.approx(x0 * 32 / 96, abs=1e-3) and cy == pytest.approx(y0 * 32 / 96, abs=1e-3)


@pytest.mark.parametrize("dfu, dfv, angle", [(15000.0, 15000.0, 0.0), (18000.0, 17600.0, 33.0),
                                             (9000.0, 6000.0, 250.0)])
def test_ctf_on_the_cropped_grid_is_the_crop_of_the_ctf(dfu, dfv, angle):
    D, apix, Dc = 96, 1.1, 40
    full = ctf_2d(D, apix, dfu, dfv, angle, 300.0, 2.7, 0.1, bfactor=50.0)
    lo = D // 2 - Dc // 2
    small = ctf_2d(Dc, cropped_pixel_size(apix, D, Dc), dfu, dfv, angle, 300.0, 2.7, 0.1, bfactor=50.0)
    assert torch.allclose(small, full[:, lo:lo + Dc, lo:lo + Dc], atol=1e-6)
    assert not torch.allclose(small, full[:, lo + 1:lo + 1 + Dc, lo:lo + Dc], atol=1e-2)


def test_volume_blob_keeps_values_mass_and_position():
    D, Dc, sigma, c = 64, 32, 3.0, np.array([6.0, -8.0, 10.0])  # voxels from the centre, [z, y, x]

    def blob(n):  # the same continuous function sampled on an n³ grid over the same box
        g = [a * D for a in _grid(n, 3)]  # positions in voxels of the D grid
        return np.exp(-sum((gi - ci) ** 2 for gi, ci in zip(g, c)) / (2 * sigma ** 2))

    vol = blob(D).astype(np.float32)
    out = fourier_crop_volume(vol, Dc)
    assert out.dtype == np.float32 and out.shape == (Dc,) * 3
    assert np.abs(out - blob(Dc)).max() < 1e-4  # voxel values preserved
    assert out.sum() == pytest.approx(vol.sum() * (Dc / D) ** 3, rel=1e-5)
    np.testing.assert_allclose(_centroid(out), c * Dc / D, atol=1e-4)


@pytest.mark.parametrize("box, word", [(33, "odd"), (128, "larger"), (6, "smaller")])
def test_validate_box_errors(box, word):
    with pytest.raises(InputError, match=word) as err:
        validate_box(box, 96, source="particles.star")
    assert f"--box {box}" in str(err.value) and "particles.star" in str(err.value)
    validate_box(32, 96)


# ------------------------------------------------------------------------ cropped datasets
@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_particles(MAP32, tmp_path_factory.mktemp("sim"), n=10, seed=3, noise_free=True)


def test_cropped_particles_interface_and_batched_reads(sim, monkeypatch):
    src = read_particles(sim.star)
    assert crop_dataset(src, None) is src and crop_dataset(src, src.box) is src
    ds = crop_dataset(src, 16)
    assert isinstance(ds, CroppedParticles) and ds.source is src
    assert (ds.n, len(ds), ds.box, ds.apix) == (10, 10, 16, pytest.approx(4.0))
    assert (ds.source_box, ds.source_apix) == (32, pytest.approx(2.0))
    np.testing.assert_array_equal(ds.shifts_A, src.shifts_A)
    np.testing.assert_array_equal(ds.rotations, src.rotations)
    assert ds.ctf is src.ctf and ds.image_names == src.image_names and ds.has_poses == src.has_poses

    idx = [1, 4, 5, 7, 8, 9, 0]
    np.testing.assert_allclose(ds.images(idx), fourier_crop_images(src.images(idx), 16), atol=1e-6)

    asked = []
    real = src.images
    monkeypatch.setattr(src, "images", lambda i: (asked.append(len(i)), real(i))[1])
    ds.batch = 3
    assert ds.images(idx).shape == (7, 16, 16) and asked == [3, 3, 1]
    asked.clear()
    assert ds.images().shape == (10, 16, 16) and max(asked) == 3 and sum(asked) == 10
    with pytest.raises(InputError, match="odd"):
        CroppedParticles(src, 15)
    ds.close()


def _as_relion30(star: Path, out: Path) -> Path:
    """The same particles as one RELION 3.0 table (optics columns per particle)."""
    blocks = starfile.read(star, always_dict=True)
    og = blocks["optics"].set_index("rlnOpticsGroup")
    p = blocks["particles"].copy()
    for c in og.columns:
        if c not in p.columns:
            p[c] = p["rlnOpticsGroup"].map(og[c]).to_numpy()
    p["rlnImageName"] = [f"{n.split('@')[0]}@{star.parent / n.split('@')[1]}" for n in p["rlnImageName"]]
    return write_star(out, {"particles": p.drop(columns="rlnOpticsGroup")})


@pytest.mark.parametrize("relion30", [False, True])
def test_written_star_describes_the_original_stack(sim, tmp_path, relion30):
    star = _as_relion30(Path(sim.star), tmp_path / "in30.star") if relion30 else sim.star
    src = read_particles(star)
    ds = CroppedParticles(src, 16)
    shifts = src.shifts_A + np.array([4.0, -2.0])  # Å; box-independent
    (tmp_path / "sub").mkdir()
    out = write_particles_star(tmp_path / "sub" / "poses.star", ds, rotations=src.rotations[::-1].copy(),
                               shifts_A=shifts)
    back = read_particles(out)
    assert (back.n, back.box, back.apix) == (src.n, 32, pytest.approx(2.0))
    np.testing.assert_array_equal(back.images(), src.images())
    np.testing.assert_allclose(back.shifts_A, shifts, atol=1e-5)
    np.testing.assert_allclose(back.rotations, src.rotations[::-1], atol=1e-5)


# ------------------------------------------------------------- positioned reads (io.py)
@pytest.mark.parametrize("dtype", [">i2", "<f4", ">f4", "<u2"])
def test_positioned_reads_honour_dtype_byte_order_and_extended_header(tmp_path, dtype):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(7, 8, 8)).astype(dtype)
    with mrcfile.new(tmp_path / "s.mrcs") as m:
        m.set_data(data)
        m.set_extended_header(np.zeros(3, dtype=[("v", "<f4", (40,))]))  # 480 bytes
        m.set_image_stack()
        m.voxel_size = 1.5
    with mrcfile.new(tmp_path / "one.mrc") as m:  # a single 2D image
        m.set_data(data[2].copy())
        m.voxel_size = 1.5
    names = [f"{k}@s.mrcs" for k in (6, 1, 2, 3, 7, 3)] + ["one.mrc"]
    star = write_star(tmp_path / "p.star", {"particles": pd.DataFrame({"rlnImageName": names})})
    ds = read_particles(star)
    got = ds.images()
    assert got.dtype == np.float32
    want = np.concatenate([data[[5, 0, 1, 2, 6, 2]], data[2][None]]).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ds.images([4, 0]), want[[4, 0]])
