"""Data-parallel reconstruction over processes (torch.distributed, gloo on the CPU).

- Two ranks and one process with the same global batch end with the same map (FSC >= 0.999 up
  to the finest band) and the same poses (within 0.1°) and offsets (0.01 px) — the global batch,
  its order, the search candidates and the loss normalisation do not depend on the ranks.
- A rank killed mid-run stops the whole run with a line naming the rank
  and the cause; the last checkpoint loads and resumes in one process.
- The pieces: shards cover every particle once; ``--nproc`` is stripped from the relaunched
  command; a rank's line names it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rmfn_napari.cli import build_parser
from rmfn_napari.cli_commands._launch import strip_nproc
from rmfn_napari.cli_commands.reconstruct import config_from_args
from rmfn_napari.cryoem.io import read_map
from rmfn_napari.cryoem.particles import read_particles
from rmfn_napari.cryoem.metrics import fsc
from rmfn_napari.cryoem.reconstruct import reconstruct
from rmfn_napari.cryoem.reconstruct.outputs import load_checkpoint
from rmfn_napari.cryoem.simulate import simulate_particles
from rmfn_napari.engine import Log, Progress, RunControl, RunFinished
from rmfn_napari.engine.distributed import Ranks

from analytic_maps import write_sample_map_16

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """160 off-centre CTF particles of a 16^3 map, with their true poses."""
    root = tmp_path_factory.mktemp("distributed")
    map_path = write_sample_map_16(root / "map16.mrc")
    return simulate_particles(map_path, root / "sim", n=160, snr=1.0, seed=11, max_shift=1.0)


def _args(star, out, *extra):
    return ["reconstruct", str(star), "--out", str(out), "--preset", "tiny", "--epochs", "2,2,2",
            "--batch", "40", "--device", "cpu", "--seed", "3", "--pose-init", "random",
            "--pose-search", "all", "--shift-range", "1", "--threads", "1", "--no-align", "--quiet", *extra]


def _cli(args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rmfn_napari.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _angles_between(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """Rotation angle of Ra Rbᵀ in degrees, per particle."""
    tr = np.einsum("nij,nij->n", Ra, Rb)
    return np.degrees(np.arccos(np.clip((tr - 1) / 2, -1, 1)))


def test_two_ranks_end_where_one_process_does(data, tmp_path):
    one = _cli(_args(data.star, tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = _cli(_args(data.star, tmp_path / "two", "--nproc", "2"))
    assert two.returncode == 0, two.stderr
    assert "Traceback" not in two.stderr
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert m1["global_batch"] == m2["global_batch"] == 40
    assert m1["batches"] == m2["batches"] == 3 * 2 * 4  # 3 stages x 2 epochs x 4 global batches
    # the map: FSC between the two runs' finest scales, every shell up to the finest band
    a, _ = read_map(tmp_path / "one" / "scale_3.mrc")
    b, _ = read_map(tmp_path / "two" / "scale_3.mrc")
    _, curve = fsc(a, b)
    band = int(np.floor(m1["band_limits_cycles"][-1]))
    assert curve[1:band + 1].min() >= 0.999, curve  # the issue asks for 0.99; they agree to float precision
    # the poses and offsets of every particle
    p1 = read_particles(tmp_path / "one" / "poses.star")
    p2 = read_particles(tmp_path / "two" / "poses.star")
    dtheta = _angles_between(np.asarray(p1.rotations), np.asarray(p2.rotations))
    assert np.median(dtheta) < 0.01 and dtheta.max() < 0.1, np.sort(dtheta)[-10:]  # measured: < 1e-4°
    dshift = np.abs(np.asarray(p1.shifts_A) - np.asarray(p2.shifts_A)) / p1.apix
    assert dshift.max() < 0.01, np.sort(dshift.ravel())[-10:]  # px; measured: 5e-7
    # the half-maps: each rank backprojected its own particles and rank 0 summed them, so they
    # hold every particle of each half, as one process's do (to float rounding and the poses' 1e-4°)
    for name in ("half_map_1", "half_map_2", "map"):
        h1, _ = read_map(tmp_path / "one" / f"{name}.mrc")
        h2, _ = read_map(tmp_path / "two" / f"{name}.mrc")
        assert np.abs(h1 - h2).max() <= 1e-3 * np.abs(h1).max(), name
    assert m2["gold_standard_resolution_A"] == pytest.approx(m1["gold_standard_resolution_A"], rel=1e-3)
    assert "Warning" not in two.stderr, two.stderr
    # rank 0 alone wrote the files and the log says how the run was split
    log = (tmp_path / "two" / "run.log").read_text()
    assert "data parallel: 2 processes (gloo), global batch 40 (~20 per rank)" in log
    assert log.count("--- new run") == 1


def _children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (from /proc)."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return pid
    return None


def _start_long_run(data, out: Path):
    """A 2-rank run of minutes (it is stopped long before its end), once its first checkpoint is
    written: the process and its arguments."""
    args = _args(data.star, out, "--nproc", "2")
    args[args.index("--epochs") + 1] = "200,200,200"
    proc = subprocess.Popen([sys.executable, "-m", "rmfn_napari.cli", *args], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (out / "checkpoint.pt").exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint within 180 s: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    return proc, args


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the ranks through /proc")
def test_a_killed_rank_stops_every_rank_and_the_checkpoint_resumes(data, tmp_path):
    out = tmp_path / "run"
    proc, args = _start_long_run(data, out)
    try:
        rank_pids = [_rank_pid(proc.pid, r) for r in (0, 1)]
        assert None not in rank_pids, "ranks not found"
        os.kill(rank_pids[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)  # a hang guard, not a timing
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert "rank 1 of 2 was killed by SIGKILL; every rank was stopped" in err, err
    assert "Traceback" not in err
    assert not any(Path(f"/proc/{pid}").exists() for pid in rank_pids)  # no rank left behind
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert not ckpt["state"]["finished"] and ckpt["state"]["step"] > 0
    # the checkpoint of 2 ranks continues in 1 process (any number of ranks): a few batches
    cfg = config_from_args(build_parser().parse_args(args))
    control = RunControl()
    events = []
    for ev in reconstruct(data.star, cfg, control, out_dir=out, resume=True):
        events.append(ev)
        if isinstance(ev, Progress) and ev.step >= ckpt["state"]["step"] + 2:
            control.request_stop()
    assert any(isinstance(e, Log) and e.message.startswith(
        f"resumed at stage {ckpt['state']['stage'] + 1}, epoch {ckpt['state']['epoch_in_stage']}") for e in events)
    end = events[-1]
    assert isinstance(end, RunFinished) and end.stopped and end.steps_done == ckpt["state"]["step"] + 2
    assert end.metrics["world_size"] == 1


def test_ctrl_c_on_the_launcher_stops_every_rank_cleanly(data, tmp_path):
    """The ranks run in sessions of their own (a terminal's Ctrl-C reaches only the launcher):
    the launcher passes SIGINT on; they finish their batch, rank 0 writes the outputs."""
    out = tmp_path / "run"
    proc, _ = _start_long_run(data, out)
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.count("SIGINT: stopping after this step") == 1, err  # rank 0 speaks for the run
    assert "Traceback" not in err and "death signal" not in err, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped"] is True and m["world_size"] == 2 and 0 < m["batches"] < 3 * 200 * 4
    assert (out / "scale_1.mrc").exists() and (out / "poses.star").exists()


def test_shards_cover_every_particle_once():
    for n, world in [(10, 3), (7, 2), (1000, 8), (3, 4)]:
        parts = [Ranks(rank=r, world=world).shard(n) for r in range(world)]
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_nproc_is_stripped_from_the_ranks_command():
    assert strip_nproc(["reconstruct", "s.star", "--nproc", "2", "--out", "o"]) == ["reconstruct", "s.star", "--out", "o"]
    assert strip_nproc(["reconstruct", "--nproc=4", "x"]) == ["reconstruct", "x"]


def test_nproc_refuses_more_processes_than_the_batch(data, tmp_path):
    res = _cli(_args(data.star, tmp_path / "o", "--nproc", "50"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "rmfn reconstruct: error: --nproc 50 is more processes than the batch has particles (40); "
        "--batch is the global batch"]


def test_distributed_benchmark_dry_run(tmp_path):
    """CI runs the benchmark's dry mode: the same script, a 16³ toy, every row."""
    proc = subprocess.run([sys.executable, "benchmarks/distributed_speed.py", "--dry-run", "--work", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    for row in ("| 1 process | 1 |", "| 2 independent processes at once | 2 |", "| 2 ranks, DistributedDataParallel | 2 |",
                "| 1 × B | 0 | 1 | 24 |", "| 2 × B | 0 | 2 | 48 |", "| 1 × 2B | 0 | 1 | 48 |"):
        assert row in out, out
    assert "dry run passed" in out


def test_nproc_says_a_bad_star_once_before_launching(tmp_path):
    res = _cli(["reconstruct", str(tmp_path / "missing.star"), "--out", str(tmp_path / "o"), "--nproc", "2"])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.star" in lines[0] and "rank" not in lines[0], res.stderr
