"""Cryo-EM reconstruction engine: forward model against its real-space reference, pose
refinement against a known map, staging/baselines, resume determinism, outputs, CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from rmfn_napari.cli import main as cli_main
from rmfn_napari.cryoem.io import read_map, write_map
from rmfn_napari.cryoem.particles import read_particles
from rmfn_napari.cryoem.projector import fft2_centered
from rmfn_napari.cryoem.reconstruct import (
    ForwardModel, ReconstructConfig, forward_images_real_space, gaussian_weight,
    pose_steps, reconstruct, stage_sigma, stage_window,
)
from rmfn_napari.cryoem.rotations import geodesic_distance, perturb_rotations, random_rotations
from rmfn_napari.cryoem.simulate import simulate_particles
from rmfn_napari.engine import Log, Metrics, Progress, RunControl, RunFinished, ScaleSnapshot, StageStarted
from rmfn_napari.errors import InputError
from rmfn_napari.model import ResidualMFN

from analytic_maps import GaussianBlobs, write_sample_map_16

SAMPLE_32 = "sample_data/maps/1ol5_32_2.0A.mrc"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """120 noisy CTF particles of a 16^3 version of the 1OL5 sample map (4 Å/px)."""
    root = tmp_path_factory.mktemp("tiny")
    map_path = write_sample_map_16(root / "map16.mrc")
    res = simulate_particles(map_path, root / "sim", n=120, snr=0.5, seed=3)
    return res.star, res.reference, res.true_poses


def _tiny_config(**kw):
    base = dict(epochs_per_stage=(1, 1, 1), batch_size=40, device="cpu", snapshot_interval_s=1e9,
                align_for_fsc=False, seed=4, pose_init="random")
    base.update(kw)
    return ReconstructConfig.from_preset("tiny", **base)


@pytest.mark.parametrize("scale", [0, 1, 2])
def test_fast_forward_model_matches_real_space_projection(scale):
    """Render on the stage's grid + pad + FFT + central slice == rotate and sum in real space,
    for a compact density (sigma = 1.4 voxels at D = 16), on the stage's weighted window.

    The early stages render on a coarser grid, which is exact only for a density
    band-limited to that grid (the network's scales are, up to their ReLU); these blobs are
    not, so the tolerance is 5%: what aliasing of their tails costs."""
    box = 16
    blobs = GaussianBlobs()
    R = random_rotations(3, generator=torch.Generator().manual_seed(0)).float()
    net = ResidualMFN(3, 8, 3, resolution=box)
    sigma = stage_sigma(scale, 3, box, (0.3, 2.0))
    fwd = ForwardModel(box, 1.0, scale, net.band_limits[scale], sigma, pad=2)
    with torch.no_grad():
        fast = fwd.slices(fwd.volume_ft(blobs), R)
        ref = fwd.freqs.take(fft2_centered(forward_images_real_space(blobs, R, box, scale)))
    w = fwd.freqs.weight
    err = ((fast - ref) * w).abs().pow(2).sum() / (ref * w).abs().pow(2).sum()
    assert err.sqrt() < 0.05, f"relative error {float(err.sqrt()):.4f}"


def test_stage_windows_follow_the_bands():
    # 32^3, g = 3.3: sigma = band * D / 3 with band = 1/3.3^2, 1/3.3, 1
    sig = [stage_sigma(s, 3, 32, (0.3, 2.0)) for s in range(3)]
    assert sig == pytest.approx([32 / 3 / 3.3**2, 32 / 3 / 3.3, 32 / 3])
    net = ResidualMFN(3, 8, 3, resolution=32)
    wins = [stage_window(b, s, 32) for b, s in zip(net.band_limits, sig)]
    assert wins[0] < wins[1] < wins[2] == 32
    assert all(w % 2 == 0 for w in wins)
    w = gaussian_weight(8, 1.0, "cpu")
    assert w[4, 4] == 1.0 and w[4, 5] == pytest.approx(np.exp(-0.5))


def test_pose_steps_recover_a_10_degree_perturbation():
    """With the true map fixed, gradient pose refinement walks back to the true poses."""
    box = 16
    net = ResidualMFN(3, 32, 3, resolution=box, head_activation="relu", seed=2)
    scale = 1
    sigma = stage_sigma(scale, 3, box, (0.3, 2.0))
    fwd = ForwardModel(box, 1.0, scale, net.band_limits[scale], sigma, pad=2)
    gen = torch.Generator().manual_seed(5)
    R_true = random_rotations(32, generator=gen).float()
    with torch.no_grad():
        vol_ft = fwd.volume_ft(net)
        obs = fwd.slices(vol_ft, R_true)
    ctf = torch.ones(obs.shape)
    R0 = perturb_rotations(R_true.double(), 10, 10, generator=gen).float()
    before = geodesic_distance(R0.double(), R_true.double())
    R1, no_shifts, _ = pose_steps(vol_ft, fwd, obs, ctf, R0, steps=150, lr=1e-2)
    assert no_shifts is None
    after = geodesic_distance(R1, R_true.double())
    assert float(before.median()) == pytest.approx(10, abs=1e-3)
    assert float(after.median()) < 1.0, f"median error {float(after.median()):.2f} deg"


def test_run_events_outputs_and_baselines(tiny_dataset, tmp_path):
    star, ref, truth = tiny_dataset
    events = list(reconstruct(star, _tiny_config(), reference=ref, out_dir=tmp_path / "c2f", true_poses=truth))
    assert [e.stage for e in events if isinstance(e, StageStarted)] == [0, 1, 2]
    snaps = [e for e in events if isinstance(e, ScaleSnapshot) and e.final]
    assert {s.scale for s in snaps} == {0, 1, 2}
    assert all(s.data.shape == (16, 16, 16) and s.voxel_size == pytest.approx(4.0) for s in snaps)
    fscs = [e for e in events if isinstance(e, Metrics) and e.name == "fsc"]
    assert len(fscs) == 1 + 2 + 3  # every scale so far, at every stage end
    # never coarser than the box (64 Å) nor finer than Nyquist (8 Å); None = not resolved
    assert all(f.values["resolution_A"] is None or 8.0 - 1e-9 <= f.values["resolution_A"] <= 64.0 for f in fscs)
    poses = [e for e in events if isinstance(e, Metrics) and e.name == "pose_errors"]
    assert len(poses) == 3 and poses[-1].arrays["errors_deg"].shape == (120,)
    end = events[-1]
    assert isinstance(end, RunFinished) and not end.stopped
    out = tmp_path / "c2f"
    for k in (1, 2, 3):
        vol, apix = read_map(out / f"scale_{k}.mrc")
        assert vol.shape == (16, 16, 16) and apix == pytest.approx(4.0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["fsc"]) == {"scale1", "scale2", "scale3"}
    assert metrics["pose_errors"]["n"] == 120
    est = read_particles(out / "poses.star")
    assert est.n == 120 and np.allclose(est.images([0, 5]), read_particles(star).images([0, 5]))
    assert (out / "checkpoint.pt").exists() and (out / "run.log").read_text()

    full = list(reconstruct(star, _tiny_config(mode="full-scale"), reference=ref, true_poses=truth))
    assert [e.band_cycles for e in full if isinstance(e, StageStarted)] == [pytest.approx(8.0)]
    oracle = list(reconstruct(star, _tiny_config(mode="oracle-poses"), reference=ref, true_poses=truth))
    pose_err = [e for e in oracle if isinstance(e, Metrics) and e.name == "pose_errors"][-1]
    assert pose_err.values["median_deg"] < 1e-3


@pytest.mark.parametrize("settings", [
    dict(epochs_per_stage=(2, 1, 1)),
    # the cpu-small recipe: map-only first stage, global pose search from stage 2
    dict(epochs_per_stage=(2, 2, 1), pose_from_stage=1, pose_search=True, search_rotations=300),
], ids=["paper-steps", "search"])
def test_resume_ends_where_an_uninterrupted_run_does(tiny_dataset, tmp_path, settings):
    star, _, truth = tiny_dataset
    cfg = _tiny_config(**settings, shift_range_px=1.0)
    full = [e for e in reconstruct(star, cfg, out_dir=tmp_path / "a", true_poses=truth)][-1]
    control = RunControl()
    for ev in reconstruct(star, cfg, control, out_dir=tmp_path / "b", true_poses=truth):
        if isinstance(ev, Progress) and ev.step == 5:  # mid-way through stage 1, epoch 2
            control.request_stop()
    assert ev.stopped
    resumed = [e for e in reconstruct(star, cfg, out_dir=tmp_path / "b", resume=True, true_poses=truth)][-1]
    assert not resumed.stopped and resumed.steps_done == full.steps_done
    if cfg.pose_search:  # the searches really ran, in the uninterrupted and the resumed run
        for run in ("a", "b"):
            assert "global search moved" in (tmp_path / run / "run.log").read_text()
    for k in (1, 2, 3):
        a, _ = read_map(tmp_path / "a" / f"scale_{k}.mrc")
        b, _ = read_map(tmp_path / "b" / f"scale_{k}.mrc")
        assert np.allclose(a, b, atol=1e-5 * np.abs(a).max())
    pa, pb = (read_particles(tmp_path / run / "poses.star") for run in ("a", "b"))
    assert np.allclose(pa.rotations, pb.rotations, atol=1e-5)
    assert np.allclose(pa.shifts_A, pb.shifts_A, atol=1e-5)
    assert np.abs(pa.shifts_A).max() > 0  # the offsets were estimated, and written as origins


def test_pose_from_stage_keeps_the_poses_of_earlier_stages(tiny_dataset):
    """Stage 1 without pose steps ends with exactly the initial poses; later stages move them."""
    star, _, truth = tiny_dataset
    cfg = _tiny_config(pose_from_stage=1, pose_search=False)
    events = list(reconstruct(star, cfg, true_poses=truth))
    medians = [e.values["median_deg"] for e in events if isinstance(e, Metrics) and e.name == "pose_errors"]
    from rmfn_napari.cryoem.metrics import pose_errors
    from rmfn_napari.cryoem.ground_truth import read_true_poses
    from rmfn_napari.cryoem.reconstruct import initial_rotations

    ds = read_particles(star)
    true = read_true_poses(truth, ds)
    start = pose_errors(initial_rotations(ds, ds.n, cfg, true)[0].numpy(), true.rotations, allow_flip=True)
    assert medians[0] == pytest.approx(float(np.median(start)), abs=1e-6)
    assert medians[1] != pytest.approx(medians[0], abs=1e-3)
    # a full-scale run has a single stage, which refines poses whatever pose_from_stage says
    full = list(reconstruct(star, replace(cfg, mode="full-scale"), true_poses=truth))
    m_full = [e.values["median_deg"] for e in full if isinstance(e, Metrics) and e.name == "pose_errors"]
    assert m_full[0] != pytest.approx(medians[0], abs=1e-3)


def _stages_that_searched(events) -> set[int]:
    """0-based stages in which a global pose search logged its work."""
    stage, searched = None, set()
    for ev in events:
        if isinstance(ev, StageStarted):
            stage = ev.stage
        elif isinstance(ev, Log) and "global search moved" in ev.message:
            searched.add(stage)
    return searched


def test_search_in_finest_decides_where_the_global_search_runs(tiny_dataset):
    """Off: the coarse stages search and the finest refines locally, so a full-scale run (the
    finest stage only) never searches; on: the finest stage searches too."""
    star, _, _ = tiny_dataset
    cfg = _tiny_config(epochs_per_stage=(2, 2, 2), pose_search=True, search_rotations=200,
                       search_from_stage=1, search_in_finest=False)
    assert _stages_that_searched(reconstruct(star, cfg)) == {1}
    assert _stages_that_searched(reconstruct(star, replace(cfg, search_in_finest=True))) == {1, 2}
    full = replace(cfg, mode="full-scale", epochs_per_stage=(1, 1, 1))  # one stage of 3 epochs
    assert _stages_that_searched(reconstruct(star, full)) == set()
    assert _stages_that_searched(reconstruct(star, replace(full, search_in_finest=True))) == {0}


def test_cli_pose_search_flag_overrides_the_preset():
    from rmfn_napari.cli import build_parser
    from rmfn_napari.cli_commands.reconstruct import config_from_args

    parser = build_parser()

    def config(*flags):
        return config_from_args(parser.parse_args(["reconstruct", "x.star", "--out", "o", *flags]))

    preset, off = config(), config("--pose-search", "off")
    coarse, every = config("--pose-search", "coarse"), config("--pose-search", "all")
    assert preset.pose_search and not off.pose_search
    assert coarse.pose_search and not coarse.search_in_finest
    assert every.pose_search and every.search_in_finest


@pytest.mark.parametrize("resident", [True, False])
def test_particles_are_read_once_per_stage_or_in_batches(tiny_dataset, monkeypatch, resident):
    """Each stage reads every particle once (chunks of at most 1000) when its spectra fit in the
    budget, else batch by batch; never the whole stack at once beyond a chunk."""
    star, _, _ = tiny_dataset
    ds = read_particles(star)
    sizes = []
    original = ds.images

    def spy(indices=None):
        out = original(indices)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(ds, "images", spy)
    budget = {} if resident else {"stage_data_gb": 0.0}
    list(reconstruct(ds, _tiny_config(batch_size=30, **budget)))
    # the first read samples the intensity scale, the second checks the contrast; then the
    # stages' data and one read per half-set (60) for the half-maps at each stage's end
    assert sizes[:2] == [120, 120]
    if resident:  # 3 stages x (one chunk of 120) + 2 half-sets
        assert sizes[2:] == [120, 60, 60] * 3
    else:  # 3 stages x 4 batches of 30 + 2 half-sets
        assert sizes[2:] == [30, 30, 30, 30, 60, 60] * 3


def test_cli_reconstruct_and_bad_input(tiny_dataset, tmp_path, capsys):
    star, ref, _ = tiny_dataset
    out = tmp_path / "cli"
    code = cli_main(["reconstruct", str(star), "--reference", str(ref), "--out", str(out),
                     "--preset", "tiny", "--epochs", "1,1,1", "--device", "cpu", "--no-align", "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["mode"] == "coarse-to-fine" and "resolution_A" in summary
    assert summary["resolution_A"] is None or 8.0 - 1e-9 <= summary["resolution_A"] <= 64.0
    assert (out / "scale_3.mrc").exists()

    code = cli_main(["reconstruct", str(tmp_path / "nope.star"), "--out", str(tmp_path / "x")])
    assert code == 2 and "nope.star" in capsys.readouterr().err
    bad_ref = write_map(tmp_path / "ref32.mrc", np.zeros((32, 32, 32), np.float32), 4.0)
    with pytest.raises(InputError, match="ref32.mrc"):
        list(reconstruct(star, _tiny_config(), reference=bad_ref))
    with pytest.raises(InputError, match="epochs_per_stage"):
        _tiny_config(epochs_per_stage=(1, 1)).validate()
    with pytest.raises(InputError, match="pose_from_stage"):
        _tiny_config(pose_from_stage=-1).validate()


def test_search_scores_equal_the_per_image_loss():
    from rmfn_napari.cryoem.pose_search import residual_loss as _residual_loss
    from rmfn_napari.cryoem.pose_search import score_rotations

    g = torch.Generator().manual_seed(0)
    S = torch.complex(torch.randn(7, 6, 6, generator=g), torch.randn(7, 6, 6, generator=g))
    obs = torch.complex(torch.randn(4, 6, 6, generator=g), torch.randn(4, 6, 6, generator=g))
    ctf = torch.randn(4, 6, 6, generator=g)
    w = gaussian_weight(6, 1.5, "cpu")
    scores = score_rotations(S, obs, ctf, w)
    for b in range(4):
        direct = _residual_loss(S, obs[b:b + 1].expand(7, -1, -1), ctf[b:b + 1].expand(7, -1, -1), w)
        assert torch.allclose(scores[b], direct, rtol=1e-4, atol=1e-4)


def test_global_search_finds_poses_from_random_starts():
    """Noise-free images of a known density; random starting poses; one search pass."""
    from rmfn_napari.cryoem.pose_search import global_pose_search

    box = 16
    blobs = GaussianBlobs(seed=3, n=6, sigma=0.07)
    net = ResidualMFN(3, 8, 3, resolution=box)
    sigma = stage_sigma(2, 3, box, (0.3, 2.0))
    fwd = ForwardModel(box, 1.0, 2, net.band_limits[2], sigma, pad=2)
    gen = torch.Generator().manual_seed(1)
    R_true = random_rotations(40, generator=gen)
    with torch.no_grad():
        obs = fwd.slices(fwd.volume_ft(blobs), R_true.float())
    ctf = torch.ones(obs.shape)
    rotations = random_rotations(40, generator=gen)
    start = geodesic_distance(rotations, R_true)
    shifts = torch.zeros(40, 2, dtype=torch.float64)
    with torch.no_grad():
        vol_ft = fwd.volume_ft(blobs)
    moved, total = global_pose_search(fwd, vol_ft, [(np.arange(40), obs, ctf)], rotations, shifts,
                                      4000, 16, torch.zeros(1, 2), torch.Generator().manual_seed(2), "cpu")
    after = geodesic_distance(rotations, R_true)
    assert total == 40 and moved > 30
    assert float(start.median()) > 60 and float(after.median()) < 20


def test_spherical_mask():
    from rmfn_napari.cryoem.reconstruct import spherical_mask

    m = spherical_mask(32, 0.45)
    assert m[16, 16, 16] == 1.0 and m[0, 0, 0] == 0.0 and m[16, 16, 0] == 0.0
    assert m[16, 16, 16 + 14] == 1.0  # 14/32 = 0.4375 < 0.45
    assert spherical_mask(8, None) is None
