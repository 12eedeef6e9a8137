"""fit-image resume (issue 29 item 7): a fit stopped, or killed after a periodic checkpoint,
and resumed ends bit for bit where an uninterrupted fit does (one thread, seeded); a changed
setting or image is refused in one line, by the API and by ``rmfn fit-image --resume``."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from rmfn_napari.engine.control import RunControl
from rmfn_napari.engine.events import Progress, RunFinished
from rmfn_napari.errors import InputError
from rmfn_napari.fitting.image_fitting import FitImageConfig, fit_image, run_to_completion

SCHEDULE = (6, 6, 6)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image(n=24):
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:n, 0:n] / n
    img = 0.5 + 0.3 * np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 2 * y) + 0.05 * rng.standard_normal((n, n))
    return np.clip(img, 0, 1).astype(np.float32)


def _config(**overrides) -> FitImageConfig:
    settings = dict(schedule=SCHEDULE, hidden=16, downsample=1, device="cpu", seed=3,
                    snapshot_interval_s=0.0)
    settings.update(overrides)
    return FitImageConfig.from_preset("cpu", **settings)


def _outputs(folder) -> dict[str, np.ndarray]:
    return {f"{kind}_{k}": tifffile.imread(folder / f"{kind}_{k}.tif")
            for kind in ("scale", "spectrum") for k in range(1, len(SCHEDULE) + 1)}


def _assert_same_outputs(a, b, finished_a: RunFinished, finished_b: RunFinished) -> None:
    outputs_a, outputs_b = _outputs(a), _outputs(b)
    for name, arr in outputs_a.items():
        assert arr.tobytes() == outputs_b[name].tobytes(), name  # bit for bit
    assert finished_a.steps_done == finished_b.steps_done == sum(SCHEDULE)
    assert finished_a.metrics["psnr_db_per_stage"] == finished_b.metrics["psnr_db_per_stage"]
    assert finished_a.metrics["spectrum_drift"] == finished_b.metrics["spectrum_drift"]


def test_a_stopped_and_resumed_fit_ends_bit_for_bit_as_an_uninterrupted_one(tmp_path, one_thread):
    image, cfg = _image(), _config()
    full = run_to_completion(fit_image(image, cfg, out_dir=tmp_path / "full"))

    control = RunControl()
    stopped = None
    for ev in fit_image(image, cfg, control, out_dir=tmp_path / "run"):
        if isinstance(ev, Progress) and ev.step == 8:  # stage 2, after its step 2
            control.request_stop()
        stopped = ev
    assert stopped.stopped and stopped.steps_done == 8
    assert (tmp_path / "run" / "checkpoint.pt").is_file()

    events = list(fit_image(image, cfg, out_dir=tmp_path / "run", resume=True))
    resumed = events[-1]
    assert not resumed.stopped
    assert [ev.step for ev in events if isinstance(ev, Progress)] == list(range(9, sum(SCHEDULE) + 1))
    _assert_same_outputs(tmp_path / "full", tmp_path / "run", full, resumed)


def test_a_fit_killed_after_a_periodic_checkpoint_resumes_from_it(tmp_path, one_thread):
    """No stop: the generator is dropped mid-stage (as a killed process), after the checkpoint
    taken every 4 steps at step 4 of stage 2 and before the next."""
    image, cfg = _image(), _config()
    full = run_to_completion(fit_image(image, cfg, out_dir=tmp_path / "full", checkpoint_every=4))
    run = fit_image(image, cfg, out_dir=tmp_path / "run", checkpoint_every=4)
    for ev in run:
        if isinstance(ev, Progress) and ev.step == 11:  # stage 2, step 5: last checkpoint after step 4
            break
    run.close()
    events = list(fit_image(image, cfg, out_dir=tmp_path / "run", resume=True, checkpoint_every=4))
    assert [ev.step for ev in events if isinstance(ev, Progress)][0] == 11  # stage 2's step 5 again
    _assert_same_outputs(tmp_path / "full", tmp_path / "run", full, events[-1])


def test_a_changed_setting_or_image_is_refused_in_one_line(tmp_path, capsys):
    image, cfg = _image(), _config(schedule=(3, 3))
    control = RunControl()
    for ev in fit_image(image, cfg, control, out_dir=tmp_path / "run"):
        if isinstance(ev, Progress) and ev.step == 2:
            control.request_stop()
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()

    with pytest.raises(InputError) as refused:
        list(fit_image(image, _config(schedule=(3, 3), lr=1e-3), out_dir=tmp_path / "run", resume=True))
    assert str(refused.value) == ("--resume: lr was 0.005 in the checkpoint, now 0.001; start a new --out "
                                  "or drop --resume")
    other = image.copy()
    other[0, 0] = 1.0 - other[0, 0]
    with pytest.raises(InputError, match="the hash of the image's pixels was [0-9a-f]+ in the checkpoint"):
        list(fit_image(other, cfg, out_dir=tmp_path / "run", resume=True))
    # a safe change (the device's) is a note, not a refusal; nothing was touched by the refusals
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before

    # the CLI: one line on stderr, exit status 2, no traceback
    from rmfn_napari.cli import main

    tifffile.imwrite(tmp_path / "image.tif", image)
    args = ["fit-image", str(tmp_path / "image.tif"), "--out", str(tmp_path / "cli"), "--quiet",
            "--preset", "cpu", "--schedule", "3,3", "--hidden", "16", "--downsample", "1",
            "--device", "cpu", "--seed", "3"]
    assert main(args) == 0
    capsys.readouterr()
    status = main(args + ["--resume", "--hidden", "32"])
    err = capsys.readouterr().err.strip()
    assert status != 0 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--resume: hidden was 16 in the checkpoint, now 32" in err


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(InputError, match="no checkpoint.pt in .*drop --resume to start a new one"):
        list(fit_image(_image(), _config(), out_dir=tmp_path / "empty", resume=True))
