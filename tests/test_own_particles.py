"""A researcher's own particles: RELION offsets (centring against hand-placed blobs), offset
estimation (search grid and pose steps), ground truth only from --true-poses, pose-init
rules, the contrast check, and Fourier-cropped runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rmfn_napari.cli import main as cli_main
from rmfn_napari.cryoem.io import read_map, write_star
from rmfn_napari.cryoem.particles import read_particles
from rmfn_napari.cryoem.offsets import centre_spectra, shift_errors, shift_grid
from rmfn_napari.cryoem.pose_search import global_pose_search
from rmfn_napari.cryoem.projector import fft2_centered, ifft2_centered
from rmfn_napari.cryoem.reconstruct import (
    ForwardModel, ReconstructConfig, pose_steps, reconstruct, stage_sigma,
)
from rmfn_napari.cryoem.rotations import random_rotations
from rmfn_napari.cryoem.simulate import simulate_particles
from rmfn_napari.engine import Log, Metrics, RunFinished
from rmfn_napari.errors import InputError
from rmfn_napari.model import ResidualMFN

from analytic_maps import GaussianBlobs, write_sample_map_16

SAMPLE_32 = "sample_data/maps/1ol5_32_2.0A.mrc"


def _blob_image(box, cx, cy, sigma=1.5):
    """A Gaussian blob centred at (cx, cy) px from the box centre (x = last axis)."""
    c = np.arange(box) - box // 2
    return np.exp(-((c[None, :] - cx) ** 2 + (c[:, None] - cy) ** 2) / (2 * sigma**2)).astype(np.float32)


def _centroid(img):
    box = img.shape[-1]
    c = np.arange(box) - box // 2
    w = np.clip(img, 0, None)
    return float((w.sum(0) * c).sum() / w.sum()), float((w.sum(1) * c).sum() / w.sum())


@pytest.mark.parametrize("origin", [(6.0, 10.0), (-3.0, 5.0), (2.5, -4.25)])
def test_centring_a_hand_placed_particle_with_its_relion_origin(origin):
    """RELION: a particle with origin o sits at -o; centring with o brings it to the centre."""
    box = 48
    ox, oy = origin
    img = _blob_image(box, -ox, -oy)  # placed by hand where RELION says it is
    ft = fft2_centered(torch.from_numpy(img)[None])
    centred = ifft2_centered(centre_spectra(ft, box, torch.tensor([[ox, oy]]))).real[0].numpy()
    cx, cy = _centroid(centred)
    assert abs(cx) < 0.05 and abs(cy) < 0.05, (cx, cy)
    # the opposite sign (the engine's old bug) would leave it at -2o
    wrong = ifft2_centered(centre_spectra(ft, box, torch.tensor([[-ox, -oy]]))).real[0].numpy()
    assert _centroid(wrong) == pytest.approx((-2 * ox, -2 * oy), abs=0.1)


def test_shift_grid_is_symmetric_and_holds_zero():
    g = shift_grid(3.0, 1.2)
    assert g.shape == (49, 2) and torch.any((g == 0).all(-1))
    assert float(g.abs().max()) == pytest.approx(3.0) and torch.allclose(g.sum(0), torch.zeros(2), atol=1e-5)
    assert shift_grid(0.0, 1.0).tolist() == [[0.0, 0.0]]


def test_shift_errors_remove_the_maps_translation():
    """Origins that differ only by a 3D translation of the map have zero error after the fit."""
    gen = torch.Generator().manual_seed(0)
    R = random_rotations(50, generator=gen).numpy()
    rng = np.random.default_rng(1)
    true = rng.uniform(-3, 3, (50, 2))
    t = np.array([1.5, -0.5, 2.0])
    est = true + np.einsum("nij,j->ni", R[:, :2, :], t)
    err, fitted = shift_errors(est, true, R)
    assert np.allclose(fitted, t, atol=1e-9) and err.max() < 1e-9
    est[:10] += [0.6, 0.8]  # ten particles 1 px off
    err, _ = shift_errors(est, true, R, inliers=np.arange(50) >= 10)
    assert np.allclose(err[:10], 1.0, atol=1e-9) and err[10:].max() < 1e-9


def _shifted_observations(n, box=16, seed=1, max_shift=2.0):
    blobs = GaussianBlobs(seed=3, n=6, sigma=0.07)
    net = ResidualMFN(3, 8, 3, resolution=box)
    sigma = stage_sigma(2, 3, box, (0.3, 2.0))
    fwd = ForwardModel(box, 1.0, 2, net.band_limits[2], sigma, pad=2)
    gen = torch.Generator().manual_seed(seed)
    R_true = random_rotations(n, generator=gen)
    origins = (torch.rand(n, 2, generator=gen) * 2 - 1) * max_shift
    with torch.no_grad():
        vol_ft = fwd.volume_ft(blobs)
        centred = fwd.slices(vol_ft, R_true.float())
        # placing at -o is the inverse of centring with o
        obs = centred / fwd.centre(torch.ones_like(centred), origins)
    return fwd, vol_ft, R_true, origins.double(), obs


def test_global_search_finds_rotations_and_offsets():
    fwd, vol_ft, R_true, origins, obs = _shifted_observations(40)
    gen = torch.Generator().manual_seed(5)
    rotations = random_rotations(40, generator=gen)
    shifts = torch.zeros(40, 2, dtype=torch.float64)
    grid = shift_grid(2.0, 0.5)
    # under a Gaussian prior of half their range: offsets the data pay for are found all the same
    moved, _ = global_pose_search(fwd, vol_ft, [(np.arange(40), obs, torch.ones(obs.shape))], rotations,
                                  shifts, 4000, 16, grid, torch.Generator().manual_seed(2), "cpu",
                                  centres=torch.zeros(40, 2, dtype=torch.float64),
                                  prior_centres=torch.zeros(40, 2, dtype=torch.float64),
                                  prior_px=1.0)
    from rmfn_napari.cryoem.rotations import geodesic_distance

    assert moved > 30
    assert float(geodesic_distance(rotations, R_true).median()) < 20
    good = geodesic_distance(rotations, R_true) < 20
    err = (shifts - origins).norm(dim=1)[good]
    assert float(err.median()) < 0.5, float(err.median())
    # without offsets in the candidates, the same search cannot place them
    rot0, sh0 = random_rotations(40, generator=torch.Generator().manual_seed(5)), torch.zeros(40, 2, dtype=torch.float64)
    global_pose_search(fwd, vol_ft, [(np.arange(40), obs, torch.ones(obs.shape))], rot0, sh0, 4000, 16,
                       torch.zeros(1, 2), torch.Generator().manual_seed(2), "cpu")
    assert float((sh0 - origins).norm(dim=1).median()) > 1.0


def test_offset_prior_keeps_centred_particles_centred_where_the_map_cannot_tell():
    """The cause of the 45-90° regression (issue 27): against a map that cannot tell the
    particles' rotations apart (here a map of other blobs), a maximum-likelihood search over
    rotations x offsets moves centred particles' offsets to fit the noise; under the Gaussian
    prior they stay where they started."""
    box, n = 16, 200
    fwd, _, R_true, _, _ = _shifted_observations(n, box=box, max_shift=0.0)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        truth_ft = fwd.volume_ft(GaussianBlobs(seed=3, n=6, sigma=0.07))
        clean = fwd.slices(truth_ft, R_true.float())
        noise = torch.randn(clean.shape, generator=gen) + 1j * torch.randn(clean.shape, generator=gen)
        obs = clean + noise * clean.abs().pow(2).mean().sqrt() * (10 ** 0.5)  # SNR 0.1, centred
        wrong_ft = fwd.volume_ft(GaussianBlobs(seed=9, n=6, sigma=0.07))
    grid = shift_grid(3.0, 0.75)
    moved = {}
    for prior in (None, 0.5):
        rotations = random_rotations(n, generator=torch.Generator().manual_seed(5))
        shifts = torch.zeros(n, 2, dtype=torch.float64)
        global_pose_search(fwd, wrong_ft, [(np.arange(n), obs, torch.ones(obs.shape))], rotations, shifts, 2000,
                           box, grid, torch.Generator().manual_seed(2), "cpu", centres=torch.zeros(n, 2, dtype=torch.float64),
                           prior_centres=torch.zeros(n, 2, dtype=torch.float64), prior_px=prior)
        moved[prior] = float(shifts.norm(dim=1).median())
    assert moved[None] > 1.0, moved  # maximum likelihood: the noise moves them
    assert moved[0.5] < 0.4, moved


def test_pose_steps_refine_offsets_with_rotations():
    fwd, vol_ft, R_true, origins, obs = _shifted_observations(24, max_shift=1.5)
    start = origins + torch.tensor([0.6, -0.5], dtype=torch.float64)
    R, sh, _ = pose_steps(vol_ft, fwd, obs, torch.ones(obs.shape), R_true.float(), steps=80, lr=1e-3,
                          shifts_px=start.float(), lr_shift=0.05)
    after = (sh - origins).norm(dim=1)  # from math.hypot(0.6, 0.5) = 0.78 px off
    assert float(after.median()) < 0.1, float(after.median())


# ------------------------------------------------------------------ runs on simulated stacks
@pytest.fixture(scope="module")
def shifted_pair(tmp_path_factory):
    """The same 1OL5 particles (16 px, 4 Å) simulated centred and up to 2 px off-centre."""
    root = tmp_path_factory.mktemp("pair")
    map_path = write_sample_map_16(root / "map16.mrc")
    kw = dict(n=200, seed=3, noise_free=True)
    return (simulate_particles(map_path, root / "centred", **kw),
            simulate_particles(map_path, root / "shifted", max_shift=2.0, **kw))


def test_oracle_reconstruction_of_a_shifted_stack_matches_the_centred_one(shifted_pair, tmp_path):
    centred, shifted = shifted_pair
    origins = read_particles(shifted.true_poses).shifts_A / 4.0
    assert np.abs(origins).max() > 1.0  # really off-centre
    # the control: the same shifted particles with their origins thrown away
    truth = read_particles(shifted.true_poses)
    rows = truth.particles.copy()
    rows["rlnOriginXAngst"], rows["rlnOriginYAngst"] = 0.0, 0.0
    rows["rlnImageName"] = [f"{int(s.split('@')[0]):06d}@{shifted.stack}" for s in rows["rlnImageName"]]
    write_star(tmp_path / "no_origins.star", {"optics": truth.optics, "particles": rows})
    maps, backprojected = [], []
    for res, truth_star, name in ((centred, centred.true_poses, "c"), (shifted, shifted.true_poses, "s"),
                                  (shifted, tmp_path / "no_origins.star", "zero")):
        cfg = ReconstructConfig.from_preset("tiny", mode="oracle-poses", epochs_per_stage=(2, 2, 4), batch_size=50,
                                            device="cpu", snapshot_interval_s=1e9, align_for_fsc=False)
        list(reconstruct(res.star, cfg, out_dir=tmp_path / name, true_poses=truth_star))
        maps.append(read_map(tmp_path / name / "scale_3.mrc")[0])
        backprojected.append(read_map(tmp_path / name / "map.mrc")[0])

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    # the network's maps and the training-free backprojections agree; without origins they do not
    # (measured: 0.99999 with the origins, 0.964 without, for the network's maps)
    assert corr(maps[0], maps[1]) > 0.999, corr(maps[0], maps[1])
    assert corr(backprojected[0], backprojected[1]) > 0.99, corr(backprojected[0], backprojected[1])
    assert corr(maps[0], maps[2]) < 0.99, corr(maps[0], maps[2])
    assert corr(backprojected[0], backprojected[2]) < 0.9, corr(backprojected[0], backprojected[2])


def test_ground_truth_only_from_true_poses_and_pose_init_rules(shifted_pair, tmp_path):
    _, shifted = shifted_pair
    cfg = ReconstructConfig.from_preset("tiny", epochs_per_stage=(1, 1, 1), device="cpu", snapshot_interval_s=1e9,
                                        align_for_fsc=False)
    assert not read_particles(shifted.star).has_poses
    events = list(reconstruct(shifted.star, cfg))  # no angles, no truth: random start, no pose errors
    assert not any(isinstance(e, Metrics) and e.name == "pose_errors" for e in events)
    assert any(isinstance(e, Log) and "random poses (the STAR has no angles)" in e.message for e in events)
    with pytest.raises(InputError, match="perturb"):
        list(reconstruct(shifted.star, ReconstructConfig.from_preset("tiny", pose_init="perturb", device="cpu")))
    with pytest.raises(InputError, match="oracle-poses needs"):
        list(reconstruct(shifted.star, ReconstructConfig.from_preset("tiny", mode="oracle-poses", device="cpu")))
    # the truth is matched by image, not by row: a reversed copy gives the same errors
    truth = read_particles(shifted.true_poses)
    rows = truth.particles.iloc[::-1].copy()
    rows["rlnImageName"] = [f"{int(s.split('@')[0]):06d}@{shifted.stack}" for s in rows["rlnImageName"]]
    write_star(tmp_path / "reversed.star", {"optics": truth.optics, "particles": rows})
    a = [e for e in reconstruct(shifted.star, cfg, true_poses=shifted.true_poses)
         if isinstance(e, Metrics) and e.name == "pose_errors"][-1]
    b = [e for e in reconstruct(shifted.star, cfg, true_poses=tmp_path / "reversed.star")
         if isinstance(e, Metrics) and e.name == "pose_errors"][-1]
    assert a.values["median_deg"] == pytest.approx(b.values["median_deg"], abs=1e-9)
    assert "shift_median_px" in a.values
    write_star(tmp_path / "short.star", {"optics": truth.optics, "particles": rows.iloc[:5]})
    with pytest.raises(InputError, match="short.star"):
        list(reconstruct(shifted.star, cfg, true_poses=tmp_path / "short.star"))


def test_dark_particles_stop_with_a_message_naming_invert_contrast(shifted_pair, monkeypatch):
    centred, _ = shifted_pair
    ds = read_particles(centred.star)
    bright = ds.images
    monkeypatch.setattr(ds, "images", lambda idx=None: -bright(idx))
    cfg = ReconstructConfig.from_preset("tiny", epochs_per_stage=(1, 1, 1), device="cpu")
    with pytest.raises(InputError, match="dark.*rerun with --invert-contrast"):
        list(reconstruct(ds, cfg))
    ok = list(reconstruct(ds, ReconstructConfig.from_preset("tiny", epochs_per_stage=(1, 1, 1), device="cpu",
                                                             invert_contrast=True)))
    assert any(isinstance(e, Log) and "(bright, as expected)" in e.message for e in ok)
    assert isinstance(ok[-1], RunFinished)


def test_cli_box_crops_particles_and_reference(tmp_path, capsys):
    """64 px particles at 1 Å cropped to 32: maps at 32 px and 2 Å, origins kept in Å."""
    res = simulate_particles("sample_data/maps/1ol5_64_1.0A.mrc", tmp_path / "sim", n=64, snr=1.0, seed=2,
                             max_shift=3.0)
    out = tmp_path / "run"
    code = cli_main(["reconstruct", str(res.star), "--box", "32", "--reference", str(res.reference),
                     "--true-poses", str(res.true_poses), "--out", str(out), "--preset", "tiny",
                     "--device", "cpu", "--no-align", "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "shift_median_px" in summary and "resolution_A" in summary
    assert summary["resolution_A"] is None or 4.0 - 1e-9 <= summary["resolution_A"] <= 64.0
    vol, apix = read_map(out / "scale_3.mrc")
    assert vol.shape == (32, 32, 32) and apix == pytest.approx(2.0)
    poses = read_particles(out / "poses.star")
    assert poses.box == 64 and poses.apix == pytest.approx(1.0)  # describes the original images
    m = json.loads((out / "metrics.json").read_text())
    assert m["box"] == 32 and m["source_box"] == 64 and m["apix"] == pytest.approx(2.0)
    for flags, msg in ((["--box", "33"], "odd"), (["--box", "128"], "larger"),
                       (["--box", "32", "--shift-range", "8"], "quarter")):
        code = cli_main(["reconstruct", str(res.star), *flags, "--out", str(tmp_path / "bad"), "--quiet"])
        assert code == 2 and msg in capsys.readouterr().err
    # oracle poses on the cropped data: the true origins (Å) come back in poses.star, unchanged
    code = cli_main(["reconstruct", str(res.star), "--box", "32", "--mode", "oracle-poses", "--true-poses",
                     str(res.true_poses), "--out", str(tmp_path / "oracle"), "--preset", "tiny", "--device", "cpu",
                     "--quiet"])
    assert code == 0
    written = read_particles(tmp_path / "oracle" / "poses.star").shifts_A
    true = read_particles(res.true_poses).shifts_A
    assert np.abs(true).max() > 1.5 and np.allclose(written, true, atol=1e-5)


def test_offsets_stay_within_the_range_around_the_stars_origins(tmp_path):
    """A STAR's own origins (here up to 6 px) are the centre of the offset range, not 0."""
    res = simulate_particles(SAMPLE_32, tmp_path / "sim", n=80, snr=1.0, seed=4, max_shift=6.0)
    cfg = ReconstructConfig.from_preset("tiny", epochs_per_stage=(1, 2, 1), device="cpu", snapshot_interval_s=1e9,
                                        align_for_fsc=False, shift_range_px=1.0, pose_search=True,
                                        search_rotations=100)
    end = list(reconstruct(res.true_poses, cfg, out_dir=tmp_path / "run"))[-1]
    assert isinstance(end, RunFinished)
    start = read_particles(res.true_poses).shifts_A / 2.0  # px at 2 Å
    final = read_particles(tmp_path / "run" / "poses.star").shifts_A / 2.0
    assert np.abs(start).max() > 4.0
    assert np.abs(final - start).max() <= 1.0 + 1e-6
    assert np.abs(final - start).max() > 0.05  # they did move


def test_half_maps_and_gold_standard_without_a_reference(shifted_pair, tmp_path, capsys):
    """Oracle poses on noise-free off-centre particles: the half-maps agree to near Nyquist
    (8 Å); everything is reported without a reference, and the half-sets are written."""
    _, shifted = shifted_pair
    out = tmp_path / "gs"
    code = cli_main(["reconstruct", str(shifted.star), "--mode", "oracle-poses", "--true-poses",
                     str(shifted.true_poses), "--out", str(out), "--preset", "tiny", "--device", "cpu", "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = json.loads((out / "metrics.json").read_text())
    gold = m["gold_standard"]
    assert summary["gold_standard_resolution_A"] == m["gold_standard_resolution_A"] == gold["resolution_A"]["auto"]
    assert set(gold["curves"]) == {"unmasked", "sphere", "auto"} and gold["threshold"] == 0.143
    assert gold["resolution_A"]["unmasked"] < 10.0, gold["resolution_A"]
    assert "resolution_A" not in m and m["fsc"] == {}  # no reference, no FSC against one
    for name in ("half_map_1", "half_map_2", "map", "mask_auto"):
        vol, apix = read_map(out / f"{name}.mrc")
        assert vol.shape == (16, 16, 16) and apix == pytest.approx(4.0)
    # the full map is the truth's backprojection: it correlates with the reference map
    ref, _ = read_map(shifted.reference)
    full, _ = read_map(out / "map.mrc")
    assert np.corrcoef(full.ravel(), ref.ravel())[0, 1] > 0.95
    halves = read_particles(out / "poses.star").particles["rlnRandomSubset"].to_numpy()
    assert sorted(set(halves)) == [1, 2] and (halves == 1).sum() == 100  # a seeded split in two
    assert not np.array_equal(halves, np.arange(200) % 2 + 1)
    # a STAR that has half-sets keeps them (true_poses.star alternates 1, 2, 1, ...)
    code = cli_main(["reconstruct", str(shifted.true_poses), "--mode", "oracle-poses", "--out", str(tmp_path / "gs2"),
                     "--preset", "tiny", "--epochs", "1,1,1", "--device", "cpu", "--quiet"])
    assert code == 0
    kept = read_particles(tmp_path / "gs2" / "poses.star").particles["rlnRandomSubset"].to_numpy()
    assert np.array_equal(kept, np.arange(200) % 2 + 1)
