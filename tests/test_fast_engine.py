"""The engine's fast path (issue 13) against independent constructions: Friedel-halved losses
against the full window of real images, the chunked backward on the mask's support against one
autograd graph over the whole cube, streamed stage data against resident, the scope of the
reduced precision, the device choice, and a reconstruction that must improve the map."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from analytic_maps import write_sample_map_16
from rmfn_napari.cryoem.metrics.fsc import fsc
from rmfn_napari.cryoem.io import read_map
from rmfn_napari.cryoem.projector import fourier_slices, volume_fourier
from rmfn_napari.cryoem.reconstruct import (
    ForwardModel, FrequencySet, ReconstructConfig, StageData, SupportGrid, image_scale, load_dataset,
    reconstruct, render_volume, stage_sigma,
)
from rmfn_napari.cryoem.rotations import random_rotations
from rmfn_napari.cryoem.simulate import simulate_particles
from rmfn_napari.engine import RunFinished
from rmfn_napari.engine.devices import available_devices, resolve_device
from rmfn_napari.errors import InputError
from rmfn_napari.model import ResidualMFN


def _symmetric_window_weight(box: int, window: int, sigma: float) -> torch.Tensor:
    """The Gaussian on the centred ``window``² grid, zero outside ``|kx|, |ky| ≤ window/2 − 1``
    and outside the open Nyquist disc: the full-plane set the half-plane set stands for."""
    k = torch.arange(window, dtype=torch.float32) - window // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    k2 = kx**2 + ky**2
    inside = (kx.abs() <= window // 2 - 1) & (ky.abs() <= window // 2 - 1) & (k2 < (box / 2) ** 2)
    return torch.exp(-k2 / (2 * sigma**2)) * inside


@pytest.mark.parametrize("box,window", [(16, 16), (32, 14), (15 + 1, 6)])
def test_friedel_half_set_gives_the_full_window_loss(box, window):
    """For real images and an even CTF, the weighted error over the half-plane set equals the
    error over the whole symmetric window, computed with numpy's FFT (independent of the engine)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, box, box)), rng.normal(size=(3, box, box))
    ctf_full = np.cos(0.3 * np.hypot(*np.meshgrid(np.arange(box) - box // 2, np.arange(box) - box // 2)))
    fa = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(a, axes=(-2, -1))), axes=(-2, -1))
    fb = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(b, axes=(-2, -1))), axes=(-2, -1))
    sigma = 2.5
    lo = box // 2 - window // 2
    crop = (slice(None), slice(lo, lo + window), slice(lo, lo + window))
    w = _symmetric_window_weight(box, window, sigma).numpy()
    full = (np.abs((ctf_full[crop[1:]] * fa[crop] - fb[crop]) * w) ** 2).sum((-1, -2))
    freqs = FrequencySet(box, window, sigma)
    pa, pb = freqs.take(torch.from_numpy(fa)), freqs.take(torch.from_numpy(fb))
    c = freqs.take(torch.from_numpy(ctf_full))
    half = ((pa * c - pb) * freqs.weight).abs().pow(2).sum(-1).numpy()
    assert np.allclose(half, full, rtol=1e-5)
    # about half of the window's samples, none beyond Nyquist
    assert len(freqs) <= (window - 1) ** 2 // 2 + 1
    assert float(freqs.k.norm(dim=1).max()) < box / 2


def test_chunked_backward_on_the_support_equals_one_graph_over_the_cube():
    """Loss and parameter gradients of a structure step: rendered on the mask's support and
    back-propagated chunk by chunk, against the whole cube rendered in one autograd graph
    (separable filters, square window, full-plane weights)."""
    torch.manual_seed(0)
    box, scale = 16, 2
    net = ResidualMFN(3, 16, 3, resolution=box, head_activation="relu", seed=3, new_head_scale=0.5)
    sigma = stage_sigma(scale, 3, box, (0.3, 2.0))
    fwd = ForwardModel(box, 1.0, scale, net.band_limits[scale], sigma, pad=2, mask_radius=0.35, chunk=300)
    assert not fwd.support.single_chunk and len(fwd.support) < 0.3 * box**3
    R = random_rotations(5, generator=torch.Generator().manual_seed(1)).float()
    obs = torch.complex(torch.randn(5, box, box), torch.randn(5, box, box))
    obs = obs + obs.flip(-1, -2).roll((1, 1), (-1, -2)).conj()  # Hermitian, like real images
    ctf = torch.ones(5, box, box)

    fwd.structure_backward(net, fwd.freqs.take(obs), fwd.freqs.take(ctf), R)
    chunked = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)

    vol = render_volume(net, fwd.render_n, scale, 0.35)
    vol_ft = volume_fourier(vol, pad=2) * ((box / fwd.render_n) ** 3 / box)
    pred = fourier_slices(vol_ft, R, fwd.render_n, crop=fwd.window)
    lo = box // 2 - fwd.window // 2
    sl = slice(lo, lo + fwd.window)
    w = _symmetric_window_weight(box, fwd.window, sigma)
    ((pred * ctf[:, sl, sl] - obs[:, sl, sl]) * w).abs().pow(2).sum((-1, -2)).mean().backward()
    for name_p, g_chunked in zip(net.named_parameters(), chunked):
        name, p = name_p
        scale_g = float(p.grad.abs().max()) + 1e-12
        assert torch.allclose(g_chunked, p.grad, atol=2e-4 * scale_g, rtol=2e-3), name


def test_support_holds_the_voxels_the_mask_keeps():
    grid = SupportGrid(32, 0.45)
    # the mask reaches 0.45 + 0.05 box: a ball of radius 16 voxels, 4/3 pi 16^3 of 32^3
    assert len(grid) / 32**3 == pytest.approx(4 / 3 * math.pi * 0.5**3, abs=0.01)
    vol = grid.volume(torch.ones(len(grid)))
    assert vol[16, 16, 16] == 1.0 and vol[0, 0, 0] == 0.0 and vol[16, 16, 0] == 0.0
    assert len(SupportGrid(8, None)) == 8**3


@pytest.fixture(scope="module")
def clean_stack(tmp_path_factory):
    """200 noise-free CTF particles of the 16^3 sample map (4 Å/px), with true poses."""
    root = tmp_path_factory.mktemp("clean")
    res = simulate_particles(write_sample_map_16(root / "map16.mrc"), root / "sim", n=200, seed=2,
                             noise_free=True)
    return res


def test_stage_data_streamed_equals_resident(clean_stack):
    ds = load_dataset(clean_stack.star, None)
    cfg = ReconstructConfig.from_preset("tiny")
    fwd = ForwardModel(ds.box, ds.apix, 2, 8.0, 5.0, 2, 0.45)
    scale_img = image_scale(ds, ds.n, cfg)
    resident = StageData(ds, ds.n, fwd.freqs, scale_img, cfg, "cpu", budget_bytes=1e9, chunk=64)
    streamed = StageData(ds, ds.n, fwd.freqs, scale_img, cfg, "cpu", budget_bytes=0, chunk=64)
    assert resident.resident and not streamed.resident
    batches = [np.array([3, 7, 150]), np.arange(20, 60), np.array([199])]
    for (i1, o1, c1), (i2, o2, c2) in zip(resident.batches(batches), streamed.batches(batches)):
        assert np.array_equal(i1, i2) and torch.equal(o1, o2) and torch.equal(c1, c2)
    # against the images' own FFT at one frequency: k = (1, 2) cycles/box, the CTF's value there
    img = torch.as_tensor(ds.images(np.array([5])), dtype=torch.float64)[0] / scale_img
    x = torch.arange(ds.box, dtype=torch.float64) - ds.box // 2
    phase = torch.exp(-2j * math.pi * (1 * x[None, :] + 2 * x[:, None]) / ds.box)
    expected = (img * phase).sum() / ds.box
    j = int(torch.nonzero((fwd.freqs.k == torch.tensor([1.0, 2.0])).all(-1))[0])
    obs, ctf = resident.get(np.array([5]))
    assert complex(obs[0, j]) == pytest.approx(complex(expected), rel=1e-4, abs=1e-6)
    from rmfn_napari.cryoem.ctf import ctf_2d

    p = ds.ctf.subset([5])
    full = ctf_2d(ds.box, ds.apix, p.defocus_u, p.defocus_v, p.defocus_angle, p.voltage, p.cs,
                  p.amplitude_contrast, p.phase_shift, p.bfactor)
    assert float(ctf[0, j]) == pytest.approx(float(full[0, ds.box // 2 + 2, ds.box // 2 + 1]), abs=1e-6)


def test_reduced_precision_reaches_the_hidden_products_only():
    torch.manual_seed(0)
    net = ResidualMFN(3, 64, 3, resolution=32, head_activation=None, seed=1)
    coords = torch.rand(500, 3) - 0.5
    exact = net(coords)[-1]
    filters_exact = [f(coords) for f in net.filters]
    net.hidden_precision = "bf16"
    reduced = net(coords)[-1]
    # bf16 keeps 8 bits of mantissa: the outputs move by ~1%, not more
    rel = float(((reduced - exact).norm() / exact.norm()).detach())
    assert 1e-5 < rel < 3e-2
    # the filters (phases up to hundreds of radians) are untouched
    assert all(torch.equal(f(coords), e) for f, e in zip(net.filters, filters_exact))
    reduced.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    with pytest.raises(InputError, match="tf32"):
        list(reconstruct("does-not-matter.star", ReconstructConfig.from_preset("tiny", precision="tf32", device="cpu")))
    with pytest.raises(InputError, match="precision"):
        ReconstructConfig.from_preset("tiny", precision="fp8").validate()


def test_auto_never_picks_a_device_the_engine_cannot_run_on(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto", needs_float64=True).type == "cpu"
    assert "mps" not in available_devices(needs_float64=True)
    with pytest.raises(InputError, match="float64"):
        resolve_device("mps", needs_float64=True)
    # the 2D image fitter needs no float64: MPS stays its first choice
    assert resolve_device("auto").type == "mps"


def test_reconstruction_improves_the_map(clean_stack, tmp_path):
    """Oracle poses on a small noise-free stack: the map must reach the reference's detail. A
    broken forward model, CTF, crop or Friedel weighting leaves the FSC far below these values;
    a wrong CTF sign is checked here. (On a shorter schedule, 3/3/8 epochs, the engine before issue
    13 gives the identical curve.)"""
    cfg = ReconstructConfig.from_preset("tiny", mode="oracle-poses", epochs_per_stage=(3, 3, 30), batch_size=50,
                                        hidden=64, structure_steps=5, device="cpu", snapshot_interval_s=1e9,
                                        align_for_fsc=False, seed=1, check_contrast=False,
                                        split_at="3")  # one network throughout: the forward model alone
    ref, _ = read_map(clean_stack.reference)

    def final_fsc(config, name):
        events = list(reconstruct(clean_stack.star, config, reference=clean_stack.reference,
                                  true_poses=clean_stack.true_poses, out_dir=tmp_path / name))
        assert isinstance(events[-1], RunFinished)
        vol, _ = read_map(tmp_path / name / "scale_3.mrc")
        return fsc(vol, ref)[1], events[-1].metrics

    f, metrics = final_fsc(cfg, "right")
    # 16 px at 4 Å, shells k = 1..8 at 64/k Å: measured 1.0 to shell 3, 0.99, 0.97, 0.90 at
    # shells 4-6 (16, 12.8, 10.7 Å), FSC 0.5 at 8.4 Å
    assert float(np.min(f[1:7])) > 0.85, f
    assert metrics["resolution_A"] is not None and metrics["resolution_A"] < 9.5, metrics["resolution_A"]
    # the same training with the CTF's sign wrong (the images inverted) learns nothing: with the
    # right sign, 8 finest epochs already give FSC 0.99 and 0.95 at shells 1 and 2
    wrong, _ = final_fsc(dataclasses.replace(cfg, invert_contrast=True, epochs_per_stage=(3, 3, 8)), "wrong")
    assert not float(np.nanmax(wrong[1:3])) > 0.5, wrong
