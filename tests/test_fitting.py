"""2D coarse-to-fine fitting: metrics against hand-computed values, the staged engine,
run control (pause / next stage / stop) and the ``rmfn fit-image`` CLI."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

from rmfn_napari.cli import main as cli_main
from rmfn_napari.engine import (
    Metrics, Progress, RunControl, RunFinished, RunPaused, RunStarted, ScaleSnapshot,
    StageFinished, StageStarted,
)
from rmfn_napari.fitting import FitImageConfig, fit_image, psnr, spectrum_drift
from rmfn_napari.fitting.image_fitting import _axis_for_upsampled, run_to_completion
from rmfn_napari.fitting.images import downsample, normalize_image
from rmfn_napari.fitting.metrics import amplitude_spectrum, log_spectrum
from rmfn_napari.errors import InputError


def smooth_image(n=32, seed=0):
    """A smooth, non-trivial test image in [0, 1] (sum of a few low-frequency cosines)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n] / n
    img = np.zeros((n, n))
    for _ in range(6):
        kx, ky = rng.integers(0, 4, size=2)
        img += rng.normal() * np.cos(2 * np.pi * (kx * x + ky * y) + rng.uniform(0, 2 * np.pi))
    return normalize_image(img)


def test_psnr_hand_computed():
    ref = np.zeros((10, 10))
    est = np.full((10, 10), 0.1)  # MSE = 0.01 -> 20 dB
    assert psnr(est, ref) == pytest.approx(20.0)


def test_amplitude_spectrum_of_a_cosine():
    n, a, k = 16, 0.25, 3
    x = np.arange(n) / n
    img = a * np.cos(2 * np.pi * k * x)[None, :].repeat(n, 0)
    spec = amplitude_spectrum(img)
    # unnormalised FFT: a cosine of amplitude a on an n x n grid has two peaks of a*n*n/2
    assert spec[n // 2, n // 2 + k] == pytest.approx(a * n * n / 2)
    assert spec[n // 2, n // 2 - k] == pytest.approx(a * n * n / 2)
    assert spec.sum() == pytest.approx(a * n * n)
    assert spectrum_drift(img, img) == 0.0
    # doubling the image adds its spectrum: drift = mean |A| = a*n*n / (n*n) = a
    assert spectrum_drift(img, 2 * img) == pytest.approx(a)
    assert log_spectrum(img).dtype == np.float32


def test_downsample_and_fine_grid_alignment():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert np.allclose(downsample(img, 2), [[2.5, 4.5], [10.5, 12.5]])
    # original pixel centres, in the training frame, average to the training centres
    n, f = 8, 2
    fine = _axis_for_upsampled(n, f, "cpu").numpy()
    coarse = (np.arange(n) - n // 2) / n
    assert np.allclose(fine.reshape(n, f).mean(axis=1), coarse)


def test_normalize_rejects_bad_images():
    with pytest.raises(InputError, match="NaN"):
        normalize_image(np.full((16, 16), np.nan))
    with pytest.raises(InputError, match="constant"):
        normalize_image(np.ones((16, 16)))
    with pytest.raises(InputError, match="too small"):
        normalize_image(np.random.rand(4, 4))
    assert normalize_image(np.tile(np.array([0, 255], dtype=np.uint8), (16, 8))).max() == 1.0


def _small_config(method="rmfn", schedule=(30, 30, 60)):
    return FitImageConfig(method=method, schedule=schedule, hidden=32, device="cpu",
                          snapshot_interval_s=0.0, seed=1)


@pytest.mark.parametrize("method", ["rmfn", "res-bacon", "bacon"])
def test_staged_fit_event_stream_and_learning(method):
    img = smooth_image(64)  # 32x32 training grid: every method's coarsest band is > 1 cycle
    events = list(fit_image(img, _small_config(method)))
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    stages = [e.stage for e in events if isinstance(e, StageStarted)]
    assert stages == [0, 1, 2]
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert steps == list(range(1, 121))
    finals = [e for e in events if isinstance(e, ScaleSnapshot) and e.final]
    # one at each stage end, and every scale once more at the end of the run
    assert [s.scale for s in finals] == [0, 1, 2, 0, 1, 2]
    assert all(s.data.shape == (32, 32) and s.spectrum.shape == (32, 32) for s in finals)
    psnrs = [e.values["psnr_db"] for e in events if isinstance(e, Metrics) and e.name == "psnr"]
    # finer scales fit the image better (120 steps only: the absolute level is modest)
    assert len(psnrs) == 3 and psnrs[-1] > psnrs[0] + 3.0
    result = events[-1]
    assert result.metrics["psnr_db"] > 15.0
    drift = result.metrics["spectrum_drift"]
    assert len(drift) == 3 and drift[-1] == 0.0 and all(d >= 0 for d in drift)


def test_next_stage_and_stop_requests():
    img = smooth_image(32)
    control = RunControl()
    seen = []
    for ev in fit_image(img, _small_config(schedule=(50, 50, 50)), control):
        seen.append(ev)
        if isinstance(ev, Progress) and ev.stage == 0 and ev.stage_step == 5:
            control.request_next_stage()
        if isinstance(ev, Progress) and ev.stage == 1 and ev.stage_step == 7:
            control.request_stop()
    finished = [e for e in seen if isinstance(e, StageFinished)]
    assert finished[0].steps_done == 5 and finished[0].skipped_early
    assert finished[1].steps_done == 7
    end = seen[-1]
    assert isinstance(end, RunFinished) and end.stopped and end.steps_done == 12
    assert not any(isinstance(e, StageStarted) and e.stage == 2 for e in seen)


def test_pause_holds_the_step_count():
    img = smooth_image(32)
    control = RunControl()
    progress = []
    paused_events = []

    def consume():
        for ev in fit_image(img, _small_config(schedule=(400, 400, 400)), control):
            if isinstance(ev, Progress):
                progress.append(ev.step)
            if isinstance(ev, RunPaused):
                paused_events.append(ev)

    worker = threading.Thread(target=consume)
    worker.start()
    while len(progress) < 5:
        time.sleep(0.01)
    control.pause()
    time.sleep(0.3)
    held = len(progress)
    time.sleep(0.5)
    assert len(progress) == held, "steps ran while paused"
    assert paused_events
    control.resume()
    time.sleep(0.3)
    assert len(progress) > held
    control.request_stop()
    worker.join(timeout=30)
    assert not worker.is_alive()


def test_pause_at_stage_end():
    control = RunControl(pause_at_stage_end=True)
    events = []
    for ev in fit_image(smooth_image(32), _small_config(schedule=(5, 5)), control):
        events.append(ev)
        if isinstance(ev, RunPaused):
            assert control.paused
            control.resume()  # the consumer would normally be a person
    paused = [e for e in events if isinstance(e, RunPaused)]
    assert len(paused) == 1 and paused[0].step == 5


def test_cli_fit_image_writes_outputs(tmp_path):
    import imageio.v3 as iio
    import tifffile

    src = tmp_path / "img.png"
    iio.imwrite(src, (smooth_image(32) * 255).astype(np.uint8))
    out = tmp_path / "out"
    code = cli_main(["fit-image", str(src), "--method", "rmfn", "--schedule", "10,10,20",
                     "--hidden", "16", "--downsample", "2", "--device", "cpu", "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"psnr_db", "spectrum_drift"}
    assert len(metrics["spectrum_drift"]) == 3
    for k in range(1, 4):
        assert tifffile.imread(out / f"scale_{k}.tif").shape == (16, 16)
        assert tifffile.imread(out / f"spectrum_{k}.tif").shape == (16, 16)


def test_cli_bad_input_names_the_file(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_main(["fit-image", str(tmp_path / "missing.png"), "--out", str(out)])
    assert code == 2
    assert "missing.png" in capsys.readouterr().err
    assert not out.exists()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = cli_main(["fit-image", str(bad), "--out", str(out)])
    assert code == 2 and "bad.png" in capsys.readouterr().err
    assert not out.exists()


def test_fit_uses_seed_reproducibly():
    img = smooth_image(32)
    a = run_to_completion(fit_image(img, _small_config(schedule=(5, 5))))
    b = run_to_completion(fit_image(img, _small_config(schedule=(5, 5))))
    assert a.metrics["psnr_db"] == b.metrics["psnr_db"]
    torch.manual_seed(0)
