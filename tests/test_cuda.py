"""The engine on a CUDA GPU (skipped without one; `benchmarks/gpu_check.sh` runs these).

Against the CPU engine on the same data and seed: the same map to float32 rounding, the stage data
kept on the GPU, the reduced-precision settings close to float32, ``torch.compile`` equal to
eager, and no host synchronisation inside a batch's structure and pose steps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from analytic_maps import write_sample_map_16
    from rmfn_napari.cryoem.simulate import simulate_particles

    root = tmp_path_factory.mktemp("cuda")
    return simulate_particles(write_sample_map_16(root / "map16.mrc"), root / "sim", n=200, seed=2, snr=1.0)


def _run(stack, out, **kw):
    from rmfn_napari.cryoem.io import read_map
    from rmfn_napari.cryoem.reconstruct import ReconstructConfig, reconstruct

    cfg = ReconstructConfig.from_preset("tiny", mode="oracle-poses", epochs_per_stage=(2, 2, 4), batch_size=50,
                                        hidden=32, snapshot_interval_s=1e9, align_for_fsc=False, seed=1, **kw)
    events = list(reconstruct(stack.star, cfg, reference=stack.reference, true_poses=stack.true_poses, out_dir=out))
    vol, _ = read_map(out / "scale_3.mrc")
    return vol, events


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_gpu_run_matches_the_cpu_run(stack, tmp_path):
    cpu, _ = _run(stack, tmp_path / "cpu", device="cpu")
    gpu, events = _run(stack, tmp_path / "gpu", device="cuda")
    assert events[-1].metrics["n_particles"] == 200
    assert _corr(cpu, gpu) > 0.999


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_stays_close_to_float32(stack, tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bfloat16 on this GPU")
    exact, _ = _run(stack, tmp_path / "f32", device="cuda")
    reduced, _ = _run(stack, tmp_path / precision, device="cuda", precision=precision)
    assert np.isfinite(reduced).all() and _corr(exact, reduced) > 0.99


def test_compiled_render_equals_eager():
    from rmfn_napari.cryoem.reconstruct import SupportGrid
    from rmfn_napari.model import ResidualMFN

    net = ResidualMFN(3, 32, 3, resolution=32, head_activation="relu").cuda()
    eager = SupportGrid(32, 0.45, "cuda", chunk=4096)
    compiled = SupportGrid(32, 0.45, "cuda", chunk=4096, compile=True)
    a, b = eager.values(net, 2), compiled.values(net, 2)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_stage_data_stays_on_the_gpu_and_batches_never_wait_for_it(stack):
    from rmfn_napari.cryoem.reconstruct import (
        ForwardModel, ReconstructConfig, StageData, image_scale, load_dataset, pose_steps, structure_steps,
    )
    from rmfn_napari.cryoem.rotations import random_rotations
    from rmfn_napari.model import ResidualMFN

    ds = load_dataset(stack.star, None)
    cfg = dataclasses.replace(ReconstructConfig.from_preset("tiny"), device="cuda")
    net = ResidualMFN(3, 32, 3, resolution=ds.box, head_activation="relu").cuda()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    fwd = ForwardModel(ds.box, ds.apix, 2, net.band_limits[2], 5.0, 2, 0.45, "cuda")
    data = StageData(ds, ds.n, fwd.freqs, image_scale(ds, ds.n, cfg), cfg, "cuda", budget_bytes=2**30)
    assert data.resident and data.obs.device.type == "cuda"
    idx = np.arange(50)
    obs, ctf = data.get(idx)
    R = random_rotations(50, generator=torch.Generator().manual_seed(0)).float().cuda()
    shifts = torch.zeros(50, 2, device="cuda")
    structure_steps(net, opt, fwd, fwd.centre(obs, shifts), ctf, R, 1)  # warm-up (allocations)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = structure_steps(net, opt, fwd, fwd.centre(obs, shifts), ctf, R, 3)
        new_R, new_shifts, pose_loss = pose_steps(fwd.volume_ft(net), fwd, obs, ctf, R, 5, 1e-2,
                                                  shifts_px=shifts, lr_shift=0.05)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert loss.device.type == "cuda" and new_R.device.type == "cuda"
    assert torch.isfinite(torch.stack([loss, pose_loss])).all()
