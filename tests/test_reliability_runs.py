"""Runs that fail, stop or resume do so cleanly (issue 14). One test per class:

* ``--resume`` continues only the same run: a changed setting or dataset is refused with one
  line naming what changed (the folder untouched); safe changes (more epochs from the current
  stage on, snapshot interval, device, ...) are applied and logged, and the result is the run
  that had them from the start; a finished run is reported and left untouched; no checkpoint
  is one clear line. ``run.log`` is appended to, never replaced.
* Divergence is caught within its batch (a non-finite or exploding loss): one line naming the
  stage, the step and the learning rate, exit status 2, the last checkpoint kept as it was,
  never a NaN/Inf map, image or stack (reconstruct, fit-image, simulate).
* Bad numbers in the settings are one line (API: InputError; CLI: exit status 2).
* Ctrl-C exits 130 and SIGTERM 143 after a clean stop (outputs written, marked stopped);
  a stop during the end-of-stage evaluation never starts the next stage.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from rmfn_napari.cli import main as cli_main
from rmfn_napari.cryoem.io import read_map
from rmfn_napari.cryoem.reconstruct import ReconstructConfig, driver, reconstruct
from rmfn_napari.cryoem.simulate import simulate_particles
from rmfn_napari.engine import Log, Progress, RunControl, RunFinished, ScaleSnapshot, StageStarted
from rmfn_napari.errors import InputError

from analytic_maps import write_sample_map_16

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """120 noisy CTF particles of a 16^3 map, a second dataset of the same size and box (other
    seed), and a finished tiny run of the first (copy it before changing it)."""
    root = tmp_path_factory.mktemp("reliability")
    map_path = write_sample_map_16(root / "map16.mrc")
    a = simulate_particles(map_path, root / "sim_a", n=120, snr=0.5, seed=3)
    b = simulate_particles(map_path, root / "sim_b", n=120, snr=0.5, seed=5)
    finished = root / "finished"
    end = _run(a.star, _cfg(), finished, true_poses=a.true_poses)[-1]
    assert isinstance(end, RunFinished) and not end.stopped
    return {"a": a, "b": b, "finished": finished, "map": map_path}


def _cfg(**kw) -> ReconstructConfig:
    base = dict(epochs_per_stage=(1, 1, 1), batch_size=40, device="cpu", snapshot_interval_s=1e9,
                align_for_fsc=False, seed=4, pose_init="random")
    base.update(kw)
    return ReconstructConfig.from_preset("tiny", **base)


def _run(star, cfg, out, control=None, **kw) -> list:
    return list(reconstruct(star, cfg, control, out_dir=out, **kw))


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run folder (lock and temp files aside): its bytes and mtime."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _assert_maps_finite(folder: Path) -> None:
    for p in folder.glob("*.mrc"):
        vol, _ = read_map(p)
        assert np.all(np.isfinite(vol)), f"{p.name} has NaN/Inf voxels"


def _cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rmfn_napari.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _tiny_cli(star, out, *extra):
    return ("reconstruct", star, "--out", out, "--preset", "tiny", "--epochs", "1,1,1", "--batch", "40",
            "--device", "cpu", "--seed", "4", "--pose-init", "random", "--threads", "1", "--no-align", "--quiet",
            *extra)


# ------------------------------------------------------------------------ resume: refusals
def _rewrite_one_defocus(star: Path) -> None:
    blocks = starfile.read(star, always_dict=True)
    blocks["particles"].loc[7, "rlnDefocusU"] += 100.0
    starfile.write(blocks, star, overwrite=True)


@pytest.mark.parametrize("change, expected", [
    ("lr", "lr_structure was 0.001 in the checkpoint, now 0.01"),
    ("mode", "mode was coarse-to-fine in the checkpoint, now full-scale"),
    ("finished epochs", "epochs_per_stage was (1, 1, 1) in the checkpoint, now (2, 1, 1)"),
    ("other dataset", "the particle STAR was"),
    ("rows", "the hash of the particle rows"),
    ("no true poses", "--true-poses was"),
])
def test_resume_refuses_a_changed_setting_or_dataset(data, tmp_path, change, expected):
    """Each change is named in one InputError line; the run's folder is left as it was."""
    a, b = data["a"], data["b"]
    star, truth, cfg = a.star, a.true_poses, _cfg()
    if change == "lr":
        cfg = replace(cfg, lr_structure=0.01)
    elif change == "mode":
        cfg = replace(cfg, mode="full-scale")
    elif change == "finished epochs":  # stages 1-2 are done: only the last may grow
        cfg = replace(cfg, epochs_per_stage=(2, 1, 1))
    elif change == "other dataset":  # same particle count and box, other particles
        star, truth = b.star, b.true_poses
    elif change == "rows":  # the same STAR path, one defocus changed
        sim = _copy_run(a.star.parent, tmp_path / "sim")
        star, truth = sim / "particles.star", sim / "true_poses.star"
        out = tmp_path / "rows_run"
        _run(star, cfg, out, true_poses=truth)
        _rewrite_one_defocus(star)
    elif change == "no true poses":
        truth = None
    out = tmp_path / "rows_run" if change == "rows" else _copy_run(data["finished"], tmp_path / "run")
    before = _files(out)
    with pytest.raises(InputError, match="--resume: ") as err:
        _run(star, cfg, out, resume=True, true_poses=truth)
    msg = str(err.value)
    assert expected in msg and "start a new --out or drop --resume" in msg and "\n" not in msg
    assert _files(out) == before


def test_cli_refused_resume_is_one_line_with_exit_status_2(data, tmp_path):
    out = _copy_run(data["finished"], tmp_path / "run")
    before = _files(out)
    res = _cli(*_tiny_cli(data["a"].star, out, "--true-poses", data["a"].true_poses, "--lr-structure", "0.01",
                          "--resume"))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "lr_structure was 0.001 in the checkpoint, now 0.01" in lines[0]
    assert "Traceback" not in res.stderr and _files(out) == before


def test_resume_without_a_checkpoint_is_one_clear_line(data, tmp_path):
    with pytest.raises(InputError, match="no checkpoint.pt in .*drop --resume"):
        _run(data["a"].star, _cfg(), tmp_path / "empty", resume=True)
    with pytest.raises(InputError, match="--resume needs the output directory"):
        list(reconstruct(data["a"].star, _cfg(), resume=True))
    res = _cli(*_tiny_cli(data["a"].star, tmp_path / "empty2", "--resume"))
    assert res.returncode == 2 and "no checkpoint.pt" in res.stderr and "Traceback" not in res.stderr


# --------------------------------------------------------------- resume: finished, safe changes
def test_resume_of_a_finished_run_says_so_and_changes_nothing(data, tmp_path):
    out = _copy_run(data["finished"], tmp_path / "run")
    before = _files(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fsc"] == {} and metrics["pose_errors"]["n"] == 120
    # a resolution or None ("not resolved beyond the shared band", other frames) and why
    assert "gold_standard_resolution_A" in metrics and metrics["gold_standard"]["verdict"]
    events = _run(data["a"].star, _cfg(), out, resume=True, true_poses=data["a"].true_poses)
    assert any(isinstance(e, Log) and "this run finished" in e.message for e in events)
    end = events[-1]
    assert isinstance(end, RunFinished) and not end.stopped and end.metrics == metrics
    assert {"scale_3", "poses", "metrics", "log", "checkpoint"} <= set(end.outputs)
    assert not any(isinstance(e, (Progress, StageStarted)) for e in events)
    assert _files(out) == before  # metrics.json, maps, run.log, checkpoint: bytes and mtimes
    res = _cli(*_tiny_cli(data["a"].star, out, "--true-poses", data["a"].true_poses, "--resume"))
    assert res.returncode == 0, res.stderr
    assert _files(out) == before


def test_safe_changes_are_applied_logged_and_end_where_a_fresh_run_does(data, tmp_path):
    """A finished (1, 1, 1) run resumed with (1, 1, 2) epochs and another snapshot interval ends
    bit-identical to a fresh (1, 1, 2) run; run.log keeps the first run's lines and adds the
    resumed run's, with the changes it applied."""
    a = data["a"]
    out = _copy_run(data["finished"], tmp_path / "run")
    log_before = (out / "run.log").read_text()
    longer = _cfg(epochs_per_stage=(1, 1, 2))
    events = _run(a.star, replace(longer, snapshot_interval_s=1e8), out, resume=True, true_poses=a.true_poses)
    end = events[-1]
    fresh = tmp_path / "fresh"
    fresh_end = _run(a.star, longer, fresh, true_poses=a.true_poses)[-1]
    # the same batches as a fresh run: after the half-set split each batch holds one half's particles
    assert not end.stopped and end.steps_done == fresh_end.steps_done > 3 * 4
    assert [e.stage for e in events if isinstance(e, StageStarted)] == [2]
    log = (out / "run.log").read_text()
    assert log.startswith(log_before) and len(log) > len(log_before)
    assert "applied the change epochs_per_stage (1, 1, 1) -> (1, 1, 2)" in log
    assert "applied the change snapshot_interval_s 1e+09 -> 1e+08" in log
    for k in (1, 2, 3):
        assert np.array_equal(read_map(out / f"scale_{k}.mrc")[0], read_map(fresh / f"scale_{k}.mrc")[0])
    m_res, m_fresh = (json.loads((d / "metrics.json").read_text()) for d in (out, fresh))
    assert len(m_res["stages"]) == len(m_fresh["stages"]) == 3  # the reopened stage's summary replaced
    assert m_res["pose_errors"]["median_deg"] == m_fresh["pose_errors"]["median_deg"]
    # resumed again with nothing more to do: finished, untouched
    before = _files(out)
    again = _run(a.star, longer, out, resume=True, true_poses=a.true_poses)
    assert any(isinstance(e, Log) and "this run finished" in e.message for e in again)
    assert _files(out) == before


# ------------------------------------------------------------------------------- divergence
def test_cli_exploding_learning_rate_stops_at_the_first_batch(data, tmp_path):
    """--lr-structure 1e3 used to write a map of maximum 4e15 with exit 0."""
    out = tmp_path / "run"
    res = _cli(*_tiny_cli(data["a"].star, out, "--lr-structure", "1e3"))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "stage 1, epoch 1, batch 1 (step 1)" in lines[0] and "diverged" in lines[0]
    assert "--lr-structure than 1000" in lines[0]
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    _assert_maps_finite(out)


def test_a_stop_excuses_a_nan_loss_only_where_the_batch_honoured_it():
    """A NaN placeholder from a batch cut short by its stop is not a divergence; in a
    data-parallel run (no control: every rank takes every step, and the losses are the ranks'
    average) a NaN is one on every rank, whatever stop one rank was asked for — a rank that
    skipped the check would wait for the others in the next collective until the timeout."""
    from rmfn_napari.cryoem.reconstruct.divergence import check_losses
    from rmfn_napari.engine.control import RunControl

    stopping = RunControl()
    stopping.request_stop()
    cfg = _cfg()
    check_losses(float("nan"), float("nan"), 1.0, cfg, stopping, True, "here")  # excused
    for control in (None, RunControl()):
        with pytest.raises(InputError, match="here: the structure loss is nan"):
            check_losses(float("nan"), 0.5, 1.0, cfg, control, True, "here")
        with pytest.raises(InputError, match="here: the pose loss is 2e\\+08, over"):
            check_losses(0.5, 2e8, 1.0, cfg, control, True, "here")
        check_losses(0.5, 2e8, 1.0, cfg, control, False, "here")  # no pose steps: not checked
        check_losses(0.5, 0.5, 1.0, cfg, control, True, "here")


@pytest.mark.parametrize("mode", ["coarse-to-fine", "oracle-poses"])
def test_nan_mid_run_keeps_the_last_finite_checkpoint(data, tmp_path, monkeypatch, mode):
    """A step that turns the network NaN (here: forced at batch 5, stage 2 epoch 1, after two
    checkpoints) stops the run in that batch; the checkpoint of stage 1 stays as it was, all
    finite, and no map of the diverged state is written."""
    a = data["a"]
    calls = {"n": 0}
    real = driver.train_batch

    def poisoned(net, *args, **kw):
        calls["n"] += 1
        losses = real(net, *args, **kw)
        if calls["n"] == 5:
            with torch.no_grad():
                for p in net.parameters():
                    p.fill_(float("nan"))
            return float("nan"), float("nan")
        return losses

    monkeypatch.setattr(driver, "train_batch", poisoned)
    out = tmp_path / "run"
    snap = {}
    with pytest.raises(InputError, match=r"stage 2, epoch 1, batch 2 \(step 5\): the structure loss is nan"):
        for ev in reconstruct(a.star, _cfg(mode=mode), out_dir=out, true_poses=a.true_poses):
            if isinstance(ev, StageStarted) and ev.stage == 1:
                snap = _files(out)  # the checkpoint of stage 1's end, and its maps
    assert calls["n"] == 5 and snap["checkpoint.pt"] == _files(out)["checkpoint.pt"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["stage"] == 1 and ckpt["state"]["step"] == 3
    assert all(torch.isfinite(t).all() for t in ckpt["net"].values())
    assert not (out / "metrics.json").exists() and not (out / "scale_2.mrc").exists()
    _assert_maps_finite(out)


def test_weights_gone_nan_inside_a_batch_stop_before_the_pose_update(data, tmp_path, monkeypatch):
    """The last structure step's update turns the network NaN while the loss it reports (taken
    before that update) is finite: the pose steps then see a NaN map. That used to end in a
    linalg.svd traceback; now the poses stay as they were and the run stops in that batch."""
    from rmfn_napari.cryoem.reconstruct import poses

    a = data["a"]
    calls = {"n": 0}
    real = poses.structure_steps

    def poisoned(net, *args, **kw):
        calls["n"] += 1
        loss = real(net, *args, **kw)
        if calls["n"] == 2:
            with torch.no_grad():
                for p in net.parameters():
                    p.fill_(float("nan"))
        return loss

    monkeypatch.setattr(poses, "structure_steps", poisoned)
    out = tmp_path / "run"
    with pytest.raises(InputError, match=r"stage 1, epoch 1, batch 2 \(step 2\): the pose loss is nan.*--lr-pose"):
        _run(a.star, _cfg(), out, true_poses=a.true_poses)
    assert not (out / "checkpoint.pt").exists() and not list(out.glob("*.mrc"))


def test_fit_image_divergence_and_bad_lr(tmp_path):
    """fit-image --lr 1e9 used to write all-NaN images with exit status 0."""
    import tifffile

    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, (0.5 + 0.5 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.float32))
    out = tmp_path / "fit"
    common = ("fit-image", img, "--schedule", "10,10", "--hidden", "16", "--device", "cpu", "--quiet")
    res = _cli(*common, "--lr", "1e9", "--out", out)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "diverged" in res.stderr and "--lr than 1e+09" in res.stderr and "stage 1, step" in res.stderr
    assert not list(out.glob("*.tif")) and not (out / "metrics.json").exists()
    for bad in ("inf", "nan", "-1"):
        assert cli_main([*map(str, common), "--lr", bad, "--out", str(out)]) == 2
    assert cli_main([*map(str, common), "--lambdas", "nan", "2", "--out", str(out)]) == 2
    assert not list(out.glob("*.tif"))


def test_simulate_refuses_non_finite_stacks(data, tmp_path):
    """simulate --snr 1e-300 used to write a stack of Inf."""
    out = tmp_path / "sim"
    res = _cli("simulate", "--map", data["map"], "--n", "10", "--snr", "1e-300", "--out", out, "--quiet")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "--snr 1e-300 is too small" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (out / "particles.mrcs").exists() and not (out / "particles.star").exists()
    for bad in ("0", "-1", "nan", "inf"):
        res = _cli("simulate", "--map", data["map"], "--n", "10", "--snr", bad, "--out", out, "--quiet")
        assert res.returncode == 2 and "--snr" in res.stderr and "Traceback" not in res.stderr
    with pytest.raises(InputError, match="too small"):
        simulate_particles(data["map"], tmp_path / "api", n=5, snr=1e-300)


# ------------------------------------------------------------------------- bad numbers
@pytest.mark.parametrize("settings, name", [
    (dict(lr_structure=float("inf")), "--lr-structure"), (dict(lr_structure=-1.0), "--lr-structure"),
    (dict(lr_structure=float("nan")), "--lr-structure"), (dict(lr_pose=0.0), "--lr-pose"),
    (dict(max_particles=-1), "--max-particles"), (dict(max_particles=float("nan")), "--max-particles"),
    (dict(lambdas=(float("nan"), 2.0)), "--lambdas"), (dict(pad=0), "pad"),
    (dict(search_rotations=0), "search_rotations"), (dict(perturb_deg=(90.0, 45.0)), "perturb_deg"),
    (dict(perturb_deg=(-5.0, 45.0)), "perturb_deg"), (dict(perturb_deg=(10.0, 200.0)), "perturb_deg"),
    (dict(mask_radius=-0.1), "mask_radius"), (dict(mask_radius=0.7), "mask_radius"),
    (dict(batch_size=0), "batch"), (dict(seed=-1), "seed"), (dict(epochs_per_stage=(1, 1.5, 1)), "epochs"),
    (dict(pose_betas=(0.9, 1.0)), "pose_betas"), (dict(snapshot_interval_s=float("nan")), "snapshot_interval_s"),
])
def test_bad_numbers_are_one_line(settings, name):
    with pytest.raises(InputError, match=name):
        _cfg(**settings).validate()


@pytest.mark.parametrize("flags, name", [
    (("--lr-structure", "inf"), "--lr-structure"), (("--lr-structure", "-1"), "--lr-structure"),
    (("--max-particles", "-1"), "--max-particles"), (("--lambdas", "nan", "2"), "--lambdas"),
    (("--threads", "-3"), "--threads"), (("--lr-pose", "0"), "--lr-pose"),
])
def test_cli_bad_numbers_exit_2_before_any_work(data, tmp_path, capsys, flags, name):
    out = tmp_path / "run"
    assert cli_main([str(a) for a in _tiny_cli(data["a"].star, out, *flags)]) == 2
    err = capsys.readouterr().err
    assert name in err and len(err.strip().splitlines()) == 1
    assert not (out / "checkpoint.pt").exists() and not list(out.glob("*.mrc"))


# ---------------------------------------------------------------------------------- signals
def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, f"no {path.name} after {timeout} s"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the run did not stop within 120 s of the signal")
    return proc.returncode, err


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"])
def test_reconstruct_signal_stops_cleanly_with_its_exit_status(data, tmp_path, signum, status):
    """Sent once the first checkpoint is written (the run would take minutes): outputs written,
    metrics.json marked stopped, no NaN map, exit status 128 + the signal's number; the run
    resumes from there."""
    out = tmp_path / "run"
    args = list(_tiny_cli(data["a"].star, out))
    args[args.index("--epochs") + 1] = "300,300,300"
    proc = subprocess.Popen([sys.executable, "-m", "rmfn_napari.cli", *map(str, args)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoint.pt", proc)
    code, err = _stop(proc, signum)
    assert code == status, err
    assert "Traceback" not in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] is True and 0 < metrics["batches"] < 2700
    assert (out / "scale_1.mrc").exists() and (out / "poses.star").exists()
    _assert_maps_finite(out)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert not ckpt["state"]["finished"]


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"])
def test_fit_image_signal_stops_cleanly_with_its_exit_status(tmp_path, signum, status):
    import tifffile

    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.random.default_rng(0).random((64, 64)).astype(np.float32))
    out = tmp_path / "fit"
    proc = subprocess.Popen([sys.executable, "-m", "rmfn_napari.cli", "fit-image", str(img), "--schedule",
                             "100000,100000", "--hidden", "16", "--downsample", "2", "--device", "cpu",
                             "--out", str(out)],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = ""
    while "training on" not in line:  # the run has started its steps
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "fit-image ended before training"
    time.sleep(1.0)
    code, err = _stop(proc, signum)
    assert code == status, err
    assert "Traceback" not in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] is True and 0 < metrics["steps_done"] < 200000
    image = tifffile.imread(out / "scale_1.tif")
    assert image.shape == (32, 32) and np.all(np.isfinite(image))


def test_stop_during_the_stage_end_evaluation_never_starts_the_next_stage(data, tmp_path):
    """Stop asked while stage 1's maps are being evaluated: stage 2 never starts (its untrained
    head is not written as the result), the outputs are marked stopped, and resuming ends where
    an uninterrupted run does."""
    a = data["a"]
    out = tmp_path / "run"
    control = RunControl()
    events = []
    for ev in reconstruct(a.star, _cfg(), control, out_dir=out, true_poses=a.true_poses):
        events.append(ev)
        if isinstance(ev, ScaleSnapshot) and ev.final and ev.stage == 0:
            control.request_stop()
    assert [e.stage for e in events if isinstance(e, StageStarted)] == [0]
    assert events[-1].stopped
    assert json.loads((out / "metrics.json").read_text())["stopped"] is True
    assert (out / "scale_1.mrc").exists() and not (out / "scale_2.mrc").exists()
    resumed = _run(a.star, _cfg(), out, resume=True, true_poses=a.true_poses)[-1]
    assert not resumed.stopped and resumed.steps_done == json.loads((data["finished"] / "metrics.json").read_text())["batches"]
    for k in (1, 2, 3):
        assert np.array_equal(read_map(out / f"scale_{k}.mrc")[0], read_map(data["finished"] / f"scale_{k}.mrc")[0])


def test_fit_image_refuses_a_training_grid_the_machine_cannot_hold(tmp_path):
    """An 8000 x 8000 image at the default width would need ~20 x 16M x 256 x 4 bytes: refused
    from its header (one line naming --downsample, exit 2), the image never decoded, and the
    refusal's peak memory under 300 MB above the same process's import baseline."""
    import os
    import subprocess
    import sys

    import imageio.v3 as iio

    path = tmp_path / "huge.png"
    iio.imwrite(path, np.zeros((8000, 8000), np.uint8))  # compresses to a few hundred KB
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def child(args):
        proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        return os.waitstatus_to_exitcode(status), proc.stderr.read(), usage.ru_maxrss / 1024

    _, _, baseline = child(["-c", "import rmfn_napari.cli, rmfn_napari.fitting, imageio.v3, torch"])
    code, err, peak = child(["-m", "rmfn_napari.cli", "fit-image", str(path), "--preset", "paper",
                             "--out", str(tmp_path / "out")])
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1, err
    assert "--downsample" in lines[0] and "huge.png" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert peak - baseline < 300, (peak, baseline)
