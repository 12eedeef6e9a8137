"""Simulator + RELION I/O: round trips, conventions, reproducibility, atomicity, bad input."""

import json
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from rmfn_napari.cli import main as cli_main
from rmfn_napari.cryoem.ctf import ctf_2d
from rmfn_napari.cryoem.io import read_map, write_map, write_particles_star, write_star
from rmfn_napari.cryoem.particles import read_particles
from rmfn_napari.cryoem.projector import fourier_slices, project, slices_to_images, volume_fourier
from rmfn_napari.cryoem.rotations import euler_to_matrix, geodesic_distance, random_rotations
from rmfn_napari.cryoem.simulate import simulate_particles
from rmfn_napari.errors import InputError

MAP32 = Path(__file__).resolve().parents[1] / "sample_data" / "maps" / "1ol5_32_2.0A.mrc"


@pytest.fixture(scope="module")
def clean_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    # strong astigmatism so that a wrong astigmatism angle would be obvious
    res = simulate_particles(MAP32, out, n=24, seed=5, noise_free=True, chunk=7,
                             astig_range=(3000.0, 4000.0), defocus_range=(8000.0, 10000.0))
    return res


def test_noise_free_reprojection_through_star_is_exact(clean_sim):
    """Simulate-side and fit-side CTF/projection are the same function of the STAR's values."""
    ds = read_particles(clean_sim.true_poses)
    vol, apix = read_map(clean_sim.reference)
    idx = np.arange(ds.n)
    stored = ds.images(idx)
    ft = fourier_slices(volume_fourier(torch.from_numpy(vol)), torch.as_tensor(ds.rotations), ds.box)
    ctf = ds.ctf.evaluate(ds.box, ds.apix)  # the reconstruction-side call
    again = slices_to_images(ft * ctf).numpy()
    scale = np.abs(stored).max()
    assert np.abs(again - stored).max() <= 1e-5 * scale
    # the test is sensitive: the astigmatism angle turned by 90° (an x/y swap) changes the images
    wrong = ctf_2d(ds.box, ds.apix, torch.as_tensor(ds.ctf.defocus_u), torch.as_tensor(ds.ctf.defocus_v),
                   torch.as_tensor(90.0 - ds.ctf.defocus_angle), 300.0, 2.7, 0.1)
    swapped = slices_to_images(ft * wrong).numpy()
    assert np.abs(swapped - stored).max() > 0.05 * scale
    ds.close()


def test_star_reads_with_starfile_and_round_trips(clean_sim):
    blocks = starfile.read(clean_sim.star, always_dict=True)
    optics, parts = blocks["optics"], blocks["particles"]
    # particles.star is what picking + extraction gives: no angles, origins or half-sets
    for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
              "rlnRandomSubset"):
        assert c not in parts.columns
    assert float(optics["rlnImagePixelSize"][0]) == pytest.approx(2.0)
    assert int(optics["rlnImageSize"][0]) == 32 and int(optics["rlnImageDimensionality"][0]) == 2
    for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnOpticsGroup"):
        assert c in optics.columns
    assert parts["rlnImageName"][0] == "000001@particles.mrcs"
    ds = read_particles(clean_sim.star)
    assert (ds.n, ds.box, ds.apix) == (24, 32, 2.0)
    assert ds.has_poses is False
    with mrcfile.open(clean_sim.stack) as m:
        raw = np.array(m.data)
        assert float(m.voxel_size.x) == pytest.approx(2.0)
        assert m.header.dmax == pytest.approx(raw.max())
    np.testing.assert_array_equal(ds.images(), raw)
    np.testing.assert_array_equal(ds.images([5, 2]), raw[[5, 2]])
    np.testing.assert_allclose(ds.ctf.defocus_u, parts["rlnDefocusU"])
    np.testing.assert_allclose(ds.ctf.defocus_angle, parts["rlnDefocusAngle"])
    assert np.all(ds.ctf.defocus_u - ds.ctf.defocus_v >= 3000.0 - 1e-6)
    np.testing.assert_allclose(ds.ctf.voltage, 300.0)
    # true_poses.star: the same rows (names, CTF) plus the true angles, origins and half-sets
    truth = starfile.read(clean_sim.true_poses, always_dict=True)["particles"]
    assert list(truth["rlnImageName"]) == list(parts["rlnImageName"])
    for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
        np.testing.assert_array_equal(truth[c], parts[c])
    assert list(truth["rlnRandomSubset"]) == [1, 2] * 12
    tp = read_particles(clean_sim.true_poses)
    assert tp.has_poses and tp.n == ds.n
    R = euler_to_matrix(truth["rlnAngleRot"], truth["rlnAngleTilt"], truth["rlnAnglePsi"])
    np.testing.assert_allclose(tp.rotations, R, atol=1e-12)
    np.testing.assert_allclose(tp.shifts_A, 0.0)  # max_shift = 0: centred particles
    np.testing.assert_array_equal(tp.images(), raw)
    ref, apix = read_map(clean_sim.reference)
    np.testing.assert_array_equal(ref, read_map(MAP32)[0])
    meta = json.loads(clean_sim.metadata.read_text())
    assert meta["max_shift_px"] == 0.0 and meta["true_poses"] == "true_poses.star"
    ds.close()
    tp.close()


def test_reproducible_chunk_independent_and_snr(tmp_path):
    a = simulate_particles(MAP32, tmp_path / "a", n=30, snr=0.1, seed=3, chunk=30)
    calls = []
    b = simulate_particles(MAP32, tmp_path / "b", n=30, snr=0.1, seed=3, chunk=4,
                           progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (30, 30) and len(calls) == 8
    ia, ib = read_particles(a.star).images(), read_particles(b.star).images()
    np.testing.assert_array_equal(ia, ib)
    c = simulate_particles(MAP32, tmp_path / "c", n=30, seed=3, noise_free=True)
    clean = read_particles(c.star).images()
    # same seed -> same poses and CTFs; the difference is the noise: var(noise)/var(clean) = 1/SNR
    ratio = (ia - clean).reshape(30, -1).var(1) / clean.reshape(30, -1).var(1)
    assert ratio.mean() == pytest.approx(10.0, rel=0.05)
    d = simulate_particles(MAP32, tmp_path / "d", n=30, seed=4, noise_free=True)
    assert not np.array_equal(read_particles(d.star).images(), clean)


def test_no_ctf_gives_plain_projections(tmp_path):
    res = simulate_particles(MAP32, tmp_path, n=6, seed=1, noise_free=True, apply_ctf=False)
    assert read_particles(res.star).ctf is None
    ds = read_particles(res.true_poses)
    assert ds.ctf is None
    vol, _ = read_map(res.reference)
    np.testing.assert_allclose(ds.images(), project(torch.from_numpy(vol), torch.as_tensor(ds.rotations)).numpy(),
                               atol=1e-5 * float(np.abs(ds.images()).max()))


def test_interrupted_run_leaves_nothing(tmp_path):
    def boom(done, total):
        if done >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_particles(MAP32, tmp_path / "x", n=40, chunk=5, progress=boom)
    assert list((tmp_path / "x").iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    simulate_particles(MAP32, tmp_path, n=2)
    with pytest.raises(InputError, match="exists"):
        simulate_particles(MAP32, tmp_path, n=2)
    (tmp_path / "particles.star").unlink()  # any one output left blocks a new run
    with pytest.raises(InputError, match="true_poses.star"):
        simulate_particles(MAP32, tmp_path, n=2)
    simulate_particles(MAP32, tmp_path, n=3, overwrite=True)
    assert read_particles(tmp_path / "particles.star").n == 3
    assert read_particles(tmp_path / "true_poses.star").n == 3


def test_cli(tmp_path, capsys):
    rc = cli_main(["simulate", "--map", str(MAP32), "--n", "5", "--out", str(tmp_path / "o"),
                   "--seed", "2", "--quiet", "--max-shift", "2.5"])
    assert rc == 0 and read_particles(tmp_path / "o" / "particles.star").n == 5
    truth = read_particles(tmp_path / "o" / "true_poses.star")
    r_px = np.hypot(*truth.shifts_A.T) / truth.apix
    assert r_px.max() <= 2.5 + 1e-6 and r_px.min() > 0
    assert f"ground truth (angles, origins) for --true-poses: {tmp_path / 'o' / 'true_poses.star'}" \
        in capsys.readouterr().out
    for bad in ("-1", "nan", "8"):  # 8 px is box/4 for the 32-px map
        rc = cli_main(["simulate", "--map", str(MAP32), "--n", "5", "--out", str(tmp_path / "s"),
                       "--max-shift", bad])
        err = capsys.readouterr().err
        assert rc == 2 and "--max-shift" in err and err.count("\n") == 1, err
    assert not (tmp_path / "s" / "particles.star").exists()
    rc = cli_main(["simulate", "--map", str(tmp_path / "nope.mrc"), "--n", "5", "--out", str(tmp_path / "p")])
    assert rc == 2 and "not found" in capsys.readouterr().err
    rc = cli_main(["simulate", "--map", str(MAP32), "--n", "0", "--out", str(tmp_path / "q")])
    assert rc == 2


def test_write_particles_star_with_new_poses(clean_sim, tmp_path):
    ds = read_particles(clean_sim.star)
    newR = random_rotations(ds.n, generator=9).numpy()
    (tmp_path / "sub").mkdir()
    out = write_particles_star(tmp_path / "sub" / "est.star", ds, rotations=newR)
    back = read_particles(out)
    assert geodesic_distance(back.rotations, newR).max() < 1e-4
    np.testing.assert_array_equal(back.images(), ds.images())  # image names re-rooted
    np.testing.assert_allclose(back.ctf.defocus_u, ds.ctf.defocus_u)
    assert back.apix == ds.apix and back.box == ds.box


def _stack(path, data, apix=1.0):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, dtype=np.float32))
        m.voxel_size = apix
    return path


def _star(path, names, optics=True, **extra):
    parts = pd.DataFrame({"rlnImageName": names, "rlnAngleRot": 0.0, "rlnAngleTilt": 0.0,
                          "rlnAnglePsi": 0.0, "rlnOpticsGroup": 1, **extra})
    blocks = {"particles": parts}
    if optics:
        blocks = {"optics": pd.DataFrame([{"rlnOpticsGroup": 1, "rlnVoltage": 300.0,
                                           "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
                                           "rlnImagePixelSize": 1.5, "rlnImageSize": 8}]), **blocks}
    write_star(path, blocks)
    return path


def test_several_stacks_relative_paths_and_relion30(tmp_path):
    (tmp_path / "stacks").mkdir()
    s1 = _stack(tmp_path / "stacks" / "a.mrcs", np.arange(3 * 64).reshape(3, 8, 8))
    s2 = _stack(tmp_path / "stacks" / "b.mrcs", -np.arange(2 * 64).reshape(2, 8, 8))
    star = _star(tmp_path / "p.star", ["2@stacks/b.mrcs", "1@stacks/a.mrcs", "3@stacks/a.mrcs"])
    ds = read_particles(star)
    img = ds.images()
    np.testing.assert_array_equal(img[0], mrcfile.read(s2)[1])
    np.testing.assert_array_equal(img[2], mrcfile.read(s1)[2])
    assert ds.apix == 1.5 and ds.ctf is None
    # RELION 3.0: one table, optics per particle, pixel size from the stacks' header
    star30 = tmp_path / "old.star"
    starfile.write(pd.DataFrame({"rlnImageName": ["1@stacks/a.mrcs"], "rlnDefocusU": [10000.0],
                                 "rlnDefocusV": [9000.0], "rlnDefocusAngle": [5.0], "rlnVoltage": [200.0],
                                 "rlnSphericalAberration": [2.0], "rlnAmplitudeContrast": [0.07]}), star30)
    old = read_particles(star30)
    assert old.apix == 1.0 and old.ctf.voltage[0] == 200.0 and old.n == 1


# ----------------------------------------------------------------------- bad input
def test_bad_maps(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_map(tmp_path / "none.mrc")
    good = _stack(tmp_path / "g.mrc", np.ones((8, 8, 8)))
    trunc = tmp_path / "t.mrc"
    trunc.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated") as e:
        read_map(trunc)
    assert "t.mrc" in str(e.value)
    with pytest.raises(InputError, match="not cubic"):
        read_map(_stack(tmp_path / "nc.mrc", np.ones((8, 8, 6))))
    with pytest.raises(InputError, match="odd"):
        read_map(_stack(tmp_path / "odd.mrc", np.ones((7, 7, 7))))
    nan = np.ones((8, 8, 8))
    nan[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        read_map(_stack(tmp_path / "nan.mrc", nan))
    with pytest.raises(InputError, match="voxel size"):
        read_map(_stack(tmp_path / "zero.mrc", np.ones((8, 8, 8)), apix=0.0))
    # the simulator refuses them too and writes nothing
    with pytest.raises(InputError):
        simulate_particles(tmp_path / "odd.mrc", tmp_path / "out", n=2)
    assert not (tmp_path / "out" / "particles.star").exists()
    with pytest.raises(InputError, match="voxel size"):
        write_map(tmp_path / "w.mrc", np.ones((8, 8, 8)), 0.0)
    assert not (tmp_path / "w.mrc").exists()


def test_bad_particles(tmp_path):
    _stack(tmp_path / "s.mrcs", np.zeros((3, 8, 8)))
    with pytest.raises(InputError, match="STAR file not found"):
        read_particles(tmp_path / "none.star")
    with pytest.raises(InputError, match="past the end") as e:
        read_particles(_star(tmp_path / "past.star", ["1@s.mrcs", "4@s.mrcs"]))
    assert "s.mrcs" in str(e.value) and "4@s.mrcs" in str(e.value)
    with pytest.raises(InputError, match="not found"):
        read_particles(_star(tmp_path / "miss.star", ["1@gone.mrcs"]))
    good = (tmp_path / "s.mrcs").read_bytes()
    (tmp_path / "tr.mrcs").write_bytes(good[:-50])
    with pytest.raises(InputError, match="truncated"):
        read_particles(_star(tmp_path / "tr.star", ["1@tr.mrcs"]))
    _stack(tmp_path / "big.mrcs", np.zeros((2, 10, 10)))
    with pytest.raises(InputError, match="differs"):
        read_particles(_star(tmp_path / "mix.star", ["1@s.mrcs", "1@big.mrcs"]))
    with pytest.raises(InputError, match="rlnImageSize"):
        read_particles(_star(tmp_path / "sz.star", ["1@big.mrcs"]))
    _stack(tmp_path / "rect.mrcs", np.zeros((2, 8, 10)))
    with pytest.raises(InputError, match="not square"):
        read_particles(_star(tmp_path / "rect.star", ["1@rect.mrcs"]))
    nan = np.zeros((3, 8, 8))
    nan[2, 1, 1] = np.inf
    _stack(tmp_path / "nan.mrcs", nan)
    ds = read_particles(_star(tmp_path / "nan.star", ["1@nan.mrcs", "3@nan.mrcs"]))
    ds.images([0])  # fine
    with pytest.raises(InputError, match="NaN/Inf") as e:
        ds.images([1])
    assert "nan.mrcs" in str(e.value)
    with pytest.raises(InputError, match="NaN/Inf"):
        read_particles(tmp_path / "nan.star", check_pixels=True)
    star0 = tmp_path / "zero.star"
    _star(star0, ["1@s.mrcs"])
    star0.write_text(star0.read_text().replace("1.500000", "0.000000"))
    with pytest.raises(InputError, match="pixel size"):
        read_particles(star0)
    (tmp_path / "junk.star").write_text("data_\nloop_\n_rlnFoo #1\n")
    with pytest.raises(InputError):
        read_particles(tmp_path / "junk.star")
